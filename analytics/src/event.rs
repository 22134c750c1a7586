//! The audit record: one type for every decision of every layer, so a single
//! table answers "who reached what, who was refused, who hammered the
//! origin".
//!
//! Fields that do not apply to a layer are `None` (HTTP identity for an XDP
//! drop record, packet counts for an HTTP request). Names are stable,
//! lowercase and SQL-friendly: they are the column names of the stored logs.

use std::{borrow::Cow, net::IpAddr};

use serde::{Deserialize, Serialize};

/// The value of a low-cardinality field (a dictionary column): reasons,
/// methods, protocols, names from the configuration. Most are fixed
/// strings, which as `Cow::Borrowed` cost no allocation on the request path
/// and no free on the writer's thread.
pub type Label = Cow<'static, str>;

/// Most bytes [`label`] keeps for the life of the process.
const LABEL_BYTES: usize = 1 << 20;

/// `text` as a label that costs no allocation to copy and no free on the
/// writer's thread: names from the configuration, issuers and key ids of
/// verified keys, service-token names. Each distinct text is kept once for
/// the life of the process (a configuration reloaded with the same names
/// adds nothing); past 1 MiB in all, texts are copied instead.
/// Not for text a client chooses.
pub fn label(text: &str) -> Label {
    use std::{collections::BTreeSet, sync::Mutex};
    static KEPT: Mutex<(BTreeSet<&'static str>, usize)> = Mutex::new((BTreeSet::new(), 0));
    let mut kept = KEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (texts, bytes) = &mut *kept;
    if let Some(&kept) = texts.get(text) {
        return Label::Borrowed(kept);
    }
    if *bytes + text.len() > LABEL_BYTES {
        return Label::Owned(text.to_owned());
    }
    let kept: &'static str = Box::leak(text.into());
    texts.insert(kept);
    *bytes += text.len();
    Label::Borrowed(kept)
}

/// An ISO 3166 country code (two upper-case ASCII letters) as a label
/// without allocating or keeping anything; other text is copied.
pub fn country_label(code: &str) -> Label {
    /// Every pair of letters, `AA` to `ZZ`.
    static PAIRS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        (b'A'..=b'Z')
            .flat_map(|a| (b'A'..=b'Z').flat_map(move |b| [char::from(a), char::from(b)]))
            .collect()
    });
    match code.as_bytes() {
        &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => {
            let at = 2 * (usize::from(a - b'A') * 26 + usize::from(b - b'A'));
            Label::Borrowed(&PAIRS[at..at + 2])
        }
        _ => Label::Owned(code.to_owned()),
    }
}

/// The layer that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The XDP program (aggregated drop records).
    Xdp,
    /// The HTTP gateway (one record per request).
    Http,
}

impl Layer {
    /// The lowercase name used in logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Xdp => "xdp",
            Layer::Http => "http",
        }
    }
}

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through after authentication and authorization.
    Allow,
    /// Let through without authentication by a Bypass policy (logged anyway).
    Bypass,
    /// Refused.
    Deny,
}

impl Decision {
    /// The lowercase name used in logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Bypass => "bypass",
            Decision::Deny => "deny",
        }
    }
}

/// One decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the decision was made, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Which layer decided.
    pub layer: Option<Layer>,
    /// What it decided.
    pub decision: Option<Decision>,
    /// Machine-readable reason, e.g. `policy`, `jwt_expired`, `no_credentials`,
    /// `dropped_not_allowed`.
    pub reason: Label,
    /// The application (HTTP).
    pub app: Option<Label>,
    /// The deciding policy, if one matched.
    pub policy: Option<Label>,
    /// Index of the include rule that matched in that policy.
    pub rule: Option<u32>,
    /// Verified email of the user.
    pub email: Option<String>,
    /// Verified subject of the user.
    pub subject: Option<String>,
    /// How the request authenticated: `jwt`, `cookie`, `service_token`,
    /// `gateway_session`.
    pub auth_method: Option<Label>,
    /// Service token client id (never its secret).
    pub token_client_id: Option<Label>,
    /// Service token name.
    pub token_name: Option<Label>,
    /// Country of the client (token claim or trusted relay header).
    pub country: Option<Label>,
    /// The client address (the relay's header only from a trusted relay).
    pub client_ip: Option<IpAddr>,
    /// The TCP peer's port.
    pub client_port: Option<u16>,
    /// `HTTP/1.1`, `HTTP/2`, or for XDP `tcp`, `udp`, ...
    pub protocol: Option<Label>,
    /// HTTP method.
    pub method: Option<Label>,
    /// The request's normalized host name (`host`, the column, is the
    /// machine that decided).
    pub hostname: Option<Label>,
    /// Normalized path (the one policies saw and the upstream got).
    pub path: Option<String>,
    /// HTTP status sent to the client.
    pub status: Option<u16>,
    /// Time from request to response headers, microseconds.
    pub latency_us: Option<u64>,
    /// Bytes (response body for HTTP, packet bytes for XDP).
    pub bytes: Option<u64>,
    /// The request id also sent to the client and the upstream.
    pub request_id: Option<String>,
    /// Issuer of the token that authenticated.
    pub token_issuer: Option<Label>,
    /// Key id that signed it.
    pub key_id: Option<Label>,
    /// XDP: destination port of the dropped packets.
    pub dst_port: Option<u16>,
    /// XDP: packets over the record's interval; `audit_overflow`: events
    /// lost.
    pub packets: Option<u64>,
    /// XDP: time from the record's first packet to its last, microseconds.
    pub interval_us: Option<u64>,
}

impl Event {
    /// The current time in the unit of [`Event::time_us`].
    pub fn now_us() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_kept_once_and_shared() {
        let name = String::from("billing-admins");
        let (first, second) = (label(&name), label("billing-admins"));
        let (Label::Borrowed(a), Label::Borrowed(b)) = (&first, &second) else {
            panic!("labels are borrowed: {first:?}, {second:?}");
        };
        assert_eq!(*a, "billing-admins");
        assert!(std::ptr::eq(*a, *b), "the same text is kept once");
    }

    #[test]
    fn country_codes_are_borrowed_and_other_text_is_copied() {
        for code in ["AA", "DE", "US", "ZZ"] {
            let label = country_label(code);
            assert!(
                matches!(label, Label::Borrowed(c) if c == code),
                "{label:?}"
            );
        }
        for text in ["de", "D1", "DEU", "", "É"] {
            let label = country_label(text);
            assert!(matches!(&label, Label::Owned(c) if c == text), "{label:?}");
        }
    }
}
