//! Range sources: inline prefixes, files and HTTPS URLs, and the rules that
//! decide whether a new list is trusted.
//!
//! A list is refused as a whole (and the last good one kept) when it is
//! empty, holds a line that is not a prefix, holds `0.0.0.0/0` or `::/0`
//! without `allow_any`, or holds more prefixes than the kernel tables take.
//! The formats accepted are Cloudflare's: one prefix per line
//! (`/ips-v4`, `/ips-v6`; `#` comments and bare addresses allowed) and the API
//! JSON (`{"result": {"ipv4_cidrs": [...], "ipv6_cidrs": [...]}}`, or the same
//! keys at the top level).

use std::{path::Path, time::Duration};

use tokio::time::Instant;

use ipnet::IpNet;
use serde::Deserialize;

use super::ranges::RangeSet;
use crate::config::Source;

/// The most prefixes one list may hold: the kernel's long-prefix table holds
/// `maps::PREFIXES_MAX` entries over two generations and two families.
pub const MAX_PREFIXES_PER_LIST: usize = 256 * 1024;

/// Why a list was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong (status or transport error chain).
        message: String,
    },
    /// The content is not a usable list.
    #[error("{origin}: {message}")]
    Content {
        /// File, URL or "inline".
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses one prefix. A bare address means a host prefix; a prefix with host
/// bits set is refused (it is almost always a typo for something else).
pub fn parse_prefix(text: &str, allow_any: bool) -> Result<IpNet, String> {
    let text = text.trim();
    let net: IpNet = match text.parse() {
        Ok(net) => net,
        Err(_) => match text.parse::<std::net::IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(format!("`{text}` is not an IP prefix")),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    if net.prefix_len() == 0 && !allow_any {
        return Err(format!(
            "`{text}` allows every address; set xdp.allow_any = true if that is really meant"
        ));
    }
    Ok(net)
}

#[derive(Deserialize)]
struct CloudflareIps {
    #[serde(default)]
    ipv4_cidrs: Vec<String>,
    #[serde(default)]
    ipv6_cidrs: Vec<String>,
}

#[derive(Deserialize)]
struct CloudflareEnvelope {
    result: CloudflareIps,
}

/// Parses a fetched or read list (text lines or Cloudflare's JSON) and
/// applies the trust rules.
pub fn parse_list(origin: &str, text: &str, allow_any: bool) -> Result<Vec<IpNet>, SourceError> {
    let content = |message: String| SourceError::Content {
        origin: origin.to_owned(),
        message,
    };
    let trimmed = text.trim_start();
    let entries: Vec<String> = if trimmed.starts_with('{') {
        let ips = serde_json::from_str::<CloudflareEnvelope>(trimmed)
            .map(|e| e.result)
            .or_else(|_| serde_json::from_str::<CloudflareIps>(trimmed))
            .map_err(|e| content(format!("JSON without ipv4_cidrs/ipv6_cidrs: {e}")))?;
        ips.ipv4_cidrs.into_iter().chain(ips.ipv6_cidrs).collect()
    } else {
        text.lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if entries.is_empty() {
        return Err(content("no prefixes".into()));
    }
    if entries.len() > MAX_PREFIXES_PER_LIST {
        return Err(content(format!(
            "{} prefixes, more than the {MAX_PREFIXES_PER_LIST} a list may hold",
            entries.len()
        )));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            parse_prefix(entry, allow_any).map_err(|m| content(format!("entry {}: {m}", i + 1)))
        })
        .collect()
}

/// Reads a source once. Inline sources never fail (they were validated with
/// the config).
pub async fn load(source: &Source, allow_any: bool) -> Result<Vec<IpNet>, SourceError> {
    match source {
        Source::Inline(nets) => Ok(nets.clone()),
        Source::File { path, .. } => {
            let text = read_file(path).await?;
            parse_list(&path.display().to_string(), &text, allow_any)
        }
        Source::Url { url, ca_file, .. } => {
            let text = crate::fetch::fetch(url, ca_file.as_deref())
                .await
                .map_err(|message| SourceError::Fetch {
                    url: url.clone(),
                    message,
                })?;
            parse_list(url, &text, allow_any)
        }
    }
}

async fn read_file(path: &Path) -> Result<String, SourceError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| SourceError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// How often a source is read again (`None` for inline sources).
pub fn refresh_interval(source: &Source) -> Option<Duration> {
    match source {
        Source::Inline(_) => None,
        Source::File { refresh, .. } | Source::Url { refresh, .. } => Some(*refresh),
    }
}

/// The relay and management sources with the last good list of each.
#[derive(Debug)]
pub struct RangeSources {
    relay: Vec<Tracked>,
    management: Vec<Tracked>,
    allow_any: bool,
}

#[derive(Debug)]
struct Tracked {
    source: Source,
    last_good: Vec<IpNet>,
    next_refresh: Option<Instant>,
}

impl RangeSources {
    /// Reads every source once. All must succeed: starting with part of the
    /// relay ranges missing would drop legitimate relay traffic.
    pub async fn load(
        relay: &[Source],
        management: &[Source],
        allow_any: bool,
    ) -> Result<Self, SourceError> {
        async fn track(sources: &[Source], allow_any: bool) -> Result<Vec<Tracked>, SourceError> {
            let mut out = Vec::with_capacity(sources.len());
            for source in sources {
                out.push(Tracked {
                    last_good: load(source, allow_any).await?,
                    next_refresh: refresh_interval(source).map(|every| Instant::now() + every),
                    source: source.clone(),
                });
            }
            Ok(out)
        }
        Ok(Self {
            relay: track(relay, allow_any).await?,
            management: track(management, allow_any).await?,
            allow_any,
        })
    }

    /// The union of the last good lists.
    pub fn set(&self) -> RangeSet {
        let collect = |tracked: &[Tracked]| -> Vec<IpNet> {
            tracked
                .iter()
                .flat_map(|t| t.last_good.iter().copied())
                .collect()
        };
        RangeSet::new(collect(&self.relay), collect(&self.management))
    }

    /// When the next refresh is due, if any source refreshes.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.relay
            .iter()
            .chain(&self.management)
            .filter_map(|t| t.next_refresh)
            .min()
    }

    /// Re-reads every source that is due (or all, with `force`). A failed or
    /// refused list keeps the last good one and is reported in the outcome.
    /// Returns whether any list changed.
    pub async fn refresh(&mut self, force: bool) -> Refreshed {
        let now = Instant::now();
        let allow_any = self.allow_any;
        let mut refreshed = Refreshed::default();
        for tracked in self.relay.iter_mut().chain(self.management.iter_mut()) {
            let Some(due) = tracked.next_refresh else {
                continue;
            };
            if !force && due > now {
                continue;
            }
            let every = refresh_interval(&tracked.source).unwrap_or(crate::config::DEFAULT_REFRESH);
            tracked.next_refresh = Some(now + every);
            match load(&tracked.source, allow_any).await {
                Ok(list) if list == tracked.last_good => {}
                Ok(list) => {
                    tracked.last_good = list;
                    refreshed.changed = true;
                }
                Err(error) => refreshed.failures.push((tracked.source.describe(), error)),
            }
        }
        refreshed
    }
}

/// The outcome of [`RangeSources::refresh`].
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Some list differs from before.
    pub changed: bool,
    /// Sources whose update was refused; their last good list stays.
    pub failures: Vec<(String, SourceError)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_accept_comments_and_bare_addresses() {
        let list = parse_list(
            "test",
            "# Cloudflare\n173.245.48.0/20\n\n2400:cb00::/32 # v6\n192.0.2.1\n",
            false,
        )
        .unwrap();
        let expected: Vec<IpNet> = ["173.245.48.0/20", "2400:cb00::/32", "192.0.2.1/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(list, expected);
    }

    #[test]
    fn cloudflare_api_json_in_both_shapes() {
        let api = r#"{"result":{"ipv4_cidrs":["198.51.100.0/24"],"ipv6_cidrs":["2001:db8::/32"],"etag":"x"},"success":true,"errors":[],"messages":[]}"#;
        assert_eq!(parse_list("api", api, false).unwrap().len(), 2);
        let bare = r#"{"ipv4_cidrs":["198.51.100.0/24"]}"#;
        assert_eq!(parse_list("bare", bare, false).unwrap().len(), 1);
    }

    #[test]
    fn suspicious_lists_are_refused_whole() {
        let cases = [
            ("", "no prefixes"),
            ("# only a comment\n", "no prefixes"),
            ("192.0.2.0/24\n0.0.0.0/0\n", "allows every address"),
            ("2001:db8::/32\n::/0\n", "allows every address"),
            ("192.0.2.0/24\n<html>\n", "entry 2"),
            ("192.0.2.1/24\n", "host bits"),
            (
                r#"{"result":{"ipv4_cidrs":[],"ipv6_cidrs":[]}}"#,
                "no prefixes",
            ),
            (r#"{"error":"rate limited"}"#, "no prefixes"),
            ("{not json", "JSON"),
        ];
        for (text, needle) in cases {
            let message = parse_list("t", text, false).unwrap_err().to_string();
            assert!(message.contains(needle), "{text:?}: {message}");
        }
        assert!(parse_list("t", "0.0.0.0/0\n", true).is_ok());
    }

    #[test]
    fn oversized_lists_are_refused() {
        let text: String = (0..=MAX_PREFIXES_PER_LIST as u32)
            .map(|i| format!("{}/32\n", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let message = parse_list("big", &text, false).unwrap_err().to_string();
        assert!(message.contains("more than"), "{message}");
    }
}
