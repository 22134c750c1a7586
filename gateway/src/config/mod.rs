//! The configuration model: a TOML file parsed into [`RawConfig`] (serde,
//! unknown keys rejected), then validated into [`Config`] before any socket
//! or kernel call. Every error names the offending key.
//!
//! This module holds the file, the XDP and admin sections; [`http`] holds the
//! identity gateway's sections (listeners, relay, sessions, tokens, apps
//! and their policies), [`oidc`] the sign-in providers, [`audit`] the audit
//! log's.
//!
//! ```toml
//! [xdp]
//! interfaces = ["eth0"]
//! mode = "ports"            # or "strict"
//! monitor = false
//! protected_ports = [80, 443]
//! management_ports = [22]
//!
//! [[xdp.relay]]
//! url = "https://www.cloudflare.com/ips-v4"
//! refresh_secs = 3600
//!
//! [[xdp.management]]
//! cidrs = ["198.51.100.7/32"]
//!
//! [admin]                   # metrics, health, status; loopback only
//! listen = "127.0.0.1:9180"
//! ```

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::paths;

pub mod audit;
pub mod http;
pub mod oidc;

pub use audit::AuditConfig;
pub use http::{App, HttpConfig};

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value that parses but makes no sense.
    #[error("invalid config: `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `xdp.relay[1].url`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The XDP lock-down.
    pub xdp: Option<RawXdp>,
    /// The identity gateway's listeners and limits.
    pub http: Option<http::RawHttp>,
    /// The relay's token issuer.
    pub relay: Option<http::RawRelay>,
    /// The gateway's own session tokens.
    pub sessions: Option<http::RawSessions>,
    /// The service-token store.
    pub tokens: Option<http::RawTokens>,
    /// OpenID Connect providers for sign-in.
    #[serde(default)]
    pub oidc: Vec<oidc::RawOidc>,
    /// The audit log.
    pub audit: Option<audit::RawAudit>,
    /// Applications.
    #[serde(default)]
    pub app: Vec<http::RawApp>,
    /// The loopback admin endpoint.
    pub admin: Option<RawAdmin>,
}

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Loopback address of `/metrics`, `/healthz`, `/readyz`, `/status`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Serve the endpoint at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

fn default_true() -> bool {
    true
}

/// Where the admin endpoint listens unless `admin.listen` says otherwise
/// (and where `gateway status` looks for it).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);

/// `[xdp]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// `ports` (default) or `strict`.
    #[serde(default)]
    pub mode: FilterMode,
    /// Count and report, drop nothing.
    #[serde(default)]
    pub monitor: bool,
    /// `auto` (default: native, falling back to generic), `native` or `generic`.
    #[serde(default)]
    pub attach: AttachMode,
    /// TCP and UDP ports that only relay and management sources may reach.
    #[serde(default = "default_protected_ports")]
    pub protected_ports: Vec<u16>,
    /// TCP and UDP ports that only management sources may reach.
    #[serde(default)]
    pub management_ports: Vec<u16>,
    /// Where the program, links and maps are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Accept `0.0.0.0/0` or `::/0` in a range list (off: such a list is
    /// treated as a broken update).
    #[serde(default)]
    pub allow_any: bool,
    /// Relay range sources.
    #[serde(default)]
    pub relay: Vec<RawSource>,
    /// Management range sources.
    #[serde(default)]
    pub management: Vec<RawSource>,
}

fn default_protected_ports() -> Vec<u16> {
    vec![80, 443]
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(paths::DEFAULT_PIN_DIR)
}

/// One range source as written: exactly one of `cidrs`, `file`, `url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Inline prefixes.
    pub cidrs: Option<Vec<String>>,
    /// A file with one prefix per line (`#` comments allowed).
    pub file: Option<PathBuf>,
    /// An HTTPS URL serving a list or Cloudflare's JSON (`ipv4_cidrs`, `ipv6_cidrs`).
    pub url: Option<String>,
    /// How often a file or URL is read again (default 3600 s).
    pub refresh_secs: Option<u64>,
    /// PEM file of extra CA certificates to trust for `url`.
    pub ca_file: Option<PathBuf>,
}

/// Which destination ports the filter guards.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Guard the protected and management ports; pass everything else.
    #[default]
    Ports,
    /// Guard everything, except replies to this host's own connections and
    /// the ICMP, neighbour discovery and DHCP a host needs.
    Strict,
}

/// How to attach the program.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only: slower, works on every interface.
    Generic,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The XDP lock-down, if configured.
    pub xdp: Option<XdpConfig>,
    /// The identity gateway, if configured.
    pub http: Option<HttpConfig>,
    /// The audit log (always kept).
    pub audit: AuditConfig,
    /// The admin endpoint's address; `None` when disabled.
    pub admin: Option<SocketAddr>,
}

/// The validated `[xdp]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct XdpConfig {
    /// Interfaces to attach to (non-empty, no duplicates).
    pub interfaces: Vec<String>,
    /// Which ports are guarded.
    pub mode: FilterMode,
    /// Count, never drop.
    pub monitor: bool,
    /// How to attach.
    pub attach: AttachMode,
    /// Ports reachable from relay and management sources only.
    pub protected_ports: BTreeSet<u16>,
    /// Ports reachable from management sources only.
    pub management_ports: BTreeSet<u16>,
    /// Pin directory on bpffs.
    pub pin_dir: PathBuf,
    /// Whether `0.0.0.0/0` and `::/0` are acceptable in a list.
    pub allow_any: bool,
    /// Relay range sources (at least one).
    pub relay: Vec<Source>,
    /// Management range sources.
    pub management: Vec<Source>,
}

/// Where a list of prefixes comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Prefixes written in the config.
    Inline(Vec<IpNet>),
    /// A local file, read again every `refresh`.
    File {
        /// The file.
        path: PathBuf,
        /// Re-read interval.
        refresh: Duration,
    },
    /// An HTTPS URL, fetched again every `refresh`.
    Url {
        /// The URL (https only).
        url: String,
        /// Re-fetch interval.
        refresh: Duration,
        /// Extra CA certificates (PEM).
        ca_file: Option<PathBuf>,
    },
}

impl Source {
    /// A short human name for logs: the file, the URL or "inline".
    pub fn describe(&self) -> String {
        match self {
            Source::Inline(nets) => format!("inline ({} prefixes)", nets.len()),
            Source::File { path, .. } => path.display().to_string(),
            Source::Url { url, .. } => url.clone(),
        }
    }
}

/// Default refresh of file and URL sources.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// The shortest refresh accepted: ranges change rarely, and the relay's
/// servers should not be hammered.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.validate()
    }
}

impl RawConfig {
    /// Checks everything that can be checked without side effects.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let xdp = self.xdp.map(RawXdp::validate).transpose()?;
        let audit = self
            .audit
            .unwrap_or_default()
            .validate(audit::system_host)?;
        let http = match self.http {
            Some(raw) => Some(http::validate(http::RawSections {
                http: raw,
                relay: self.relay,
                sessions: self.sessions,
                tokens: self.tokens,
                oidc: self.oidc,
                audit_overflow: audit.http_overflow,
                apps: self.app,
            })?),
            None => {
                let orphan = [
                    ("relay", self.relay.is_some()),
                    ("sessions", self.sessions.is_some()),
                    ("tokens", self.tokens.is_some()),
                    ("oidc", !self.oidc.is_empty()),
                    ("app", !self.app.is_empty()),
                ];
                if let Some((key, _)) = orphan.iter().find(|(_, given)| *given) {
                    return Err(invalid(
                        *key,
                        "only applies with an [http] section (listeners)",
                    ));
                }
                None
            }
        };
        if xdp.is_none() && http.is_none() {
            return Err(invalid(
                "xdp",
                "nothing to run: configure [xdp], [http] or both",
            ));
        }
        let admin = self.admin.unwrap_or_default();
        if admin.enabled && !admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                format!(
                    "{} is not a loopback address: the admin endpoint has no authentication",
                    admin.listen
                ),
            ));
        }
        Ok(Config {
            xdp,
            http,
            audit,
            admin: admin.enabled.then_some(admin.listen),
        })
    }
}

impl RawXdp {
    fn validate(self) -> Result<XdpConfig, ConfigError> {
        if self.interfaces.is_empty() {
            return Err(invalid("xdp.interfaces", "list at least one interface"));
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            let key = format!("xdp.interfaces[{i}]");
            // IFNAMSIZ is 16 with the NUL; names are also pin file names.
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', '\0'])
                || name == "."
                || name == ".."
            {
                return Err(invalid(
                    key,
                    format!("`{name}` is not a valid interface name"),
                ));
            }
            if !seen.insert(name) {
                return Err(invalid(key, format!("`{name}` is listed twice")));
            }
        }
        let protected_ports: BTreeSet<u16> = self.protected_ports.iter().copied().collect();
        let management_ports: BTreeSet<u16> = self.management_ports.iter().copied().collect();
        for (key, ports) in [
            ("xdp.protected_ports", &protected_ports),
            ("xdp.management_ports", &management_ports),
        ] {
            if ports.contains(&0) {
                return Err(invalid(key, "port 0 cannot be guarded"));
            }
        }
        if let Some(port) = protected_ports.intersection(&management_ports).next() {
            return Err(invalid(
                "xdp.management_ports",
                format!("port {port} is also in xdp.protected_ports"),
            ));
        }
        if !self.pin_dir.is_absolute() {
            return Err(invalid("xdp.pin_dir", "must be an absolute path on bpffs"));
        }
        if self.relay.is_empty() {
            return Err(invalid(
                "xdp.relay",
                "list at least one relay range source (cidrs, file or url)",
            ));
        }
        let relay = validate_sources("xdp.relay", self.relay, self.allow_any)?;
        let management = validate_sources("xdp.management", self.management, self.allow_any)?;
        Ok(XdpConfig {
            interfaces: self.interfaces,
            mode: self.mode,
            monitor: self.monitor,
            attach: self.attach,
            protected_ports,
            management_ports,
            pin_dir: self.pin_dir,
            allow_any: self.allow_any,
            relay,
            management,
        })
    }
}

fn validate_sources(
    key: &str,
    sources: Vec<RawSource>,
    allow_any: bool,
) -> Result<Vec<Source>, ConfigError> {
    sources
        .into_iter()
        .enumerate()
        .map(|(i, raw)| raw.validate(&format!("{key}[{i}]"), allow_any))
        .collect()
}

impl RawSource {
    fn validate(self, key: &str, allow_any: bool) -> Result<Source, ConfigError> {
        let given = [
            self.cidrs.is_some(),
            self.file.is_some(),
            self.url.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(invalid(key, "set exactly one of `cidrs`, `file` or `url`"));
        }
        let refresh = match self.refresh_secs {
            None => DEFAULT_REFRESH,
            Some(secs) if Duration::from_secs(secs) < MIN_REFRESH => {
                return Err(invalid(
                    format!("{key}.refresh_secs"),
                    format!("must be at least {}", MIN_REFRESH.as_secs()),
                ));
            }
            Some(secs) => Duration::from_secs(secs),
        };
        if self.cidrs.is_some() && self.refresh_secs.is_some() {
            return Err(invalid(
                format!("{key}.refresh_secs"),
                "inline cidrs are not refreshed",
            ));
        }
        if self.ca_file.is_some() && self.url.is_none() {
            return Err(invalid(format!("{key}.ca_file"), "only applies to `url`"));
        }
        if let Some(cidrs) = self.cidrs {
            if cidrs.is_empty() {
                return Err(invalid(format!("{key}.cidrs"), "is empty"));
            }
            let nets = cidrs
                .iter()
                .enumerate()
                .map(|(j, text)| {
                    crate::xdp::sources::parse_prefix(text, allow_any)
                        .map_err(|message| invalid(format!("{key}.cidrs[{j}]"), message))
                })
                .collect::<Result<_, _>>()?;
            return Ok(Source::Inline(nets));
        }
        if let Some(path) = self.file {
            if !path.is_absolute() {
                return Err(invalid(format!("{key}.file"), "must be an absolute path"));
            }
            return Ok(Source::File { path, refresh });
        }
        let url = self.url.unwrap_or_default();
        if !url.starts_with("https://") {
            return Err(invalid(
                format!("{key}.url"),
                "must be an https:// URL: a range list fetched in clear could be rewritten on the way",
            ));
        }
        Ok(Source::Url {
            url,
            refresh,
            ca_file: self.ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    const BASE: &str =
        "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\ncidrs = [\"192.0.2.0/24\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = Config::parse(BASE).unwrap();
        let xdp = config.xdp.unwrap();
        assert_eq!(xdp.mode, FilterMode::Ports);
        assert!(!xdp.monitor);
        assert_eq!(xdp.attach, AttachMode::Auto);
        assert_eq!(xdp.protected_ports, BTreeSet::from([80, 443]));
        assert_eq!(xdp.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
        assert_eq!(
            xdp.relay,
            vec![Source::Inline(vec!["192.0.2.0/24".parse().unwrap()])]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[xdp]\ninterfaces = []\n", "`xdp.interfaces`"),
            ("[xdp]\ninterfaces = [\"eth0\"]\n", "`xdp.relay`"),
            (
                "[xdp]\ninterfaces = [\"eth0\", \"eth0\"]\n[[xdp.relay]]\ncidrs=[\"192.0.2.0/24\"]\n",
                "`xdp.interfaces[1]`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\ncidrs = [\"192.0.2.0/24\", \"bogus\"]\n",
                "`xdp.relay[0].cidrs[1]`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\ncidrs = [\"0.0.0.0/0\"]\n",
                "`xdp.relay[0].cidrs[0]`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\nurl = \"http://example.com/ips\"\n",
                "`xdp.relay[0].url`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\nfile = \"/x\"\nurl = \"https://x\"\n",
                "`xdp.relay[0]`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\nfile = \"/x\"\nrefresh_secs = 1\n",
                "`xdp.relay[0].refresh_secs`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\nprotected_ports = [443]\nmanagement_ports = [443]\n[[xdp.relay]]\ncidrs=[\"192.0.2.0/24\"]\n",
                "`xdp.management_ports`",
            ),
            (
                "[xdp]\ninterfaces = [\"eth0\"]\npin_dir = \"rel\"\n[[xdp.relay]]\ncidrs=[\"192.0.2.0/24\"]\n",
                "`xdp.pin_dir`",
            ),
        ];
        for (text, key) in cases {
            let message = err(text);
            assert!(message.contains(key), "{message:?} should name {key}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_rejected_with_their_name() {
        let message = err(&format!("{BASE}colour = \"blue\"\n"));
        assert!(message.contains("colour"), "{message}");
        let message = err("[xdp]\ninterfaces = [\"eth0\"]\nmode = \"paranoid\"\n");
        assert!(message.contains("mode"), "{message}");
        let message = err("[xdp]\ninterfaces = [\"eth0\"]\nprotected_ports = [70000]\n");
        assert!(message.contains("protected_ports"), "{message}");
    }

    #[test]
    fn allow_any_permits_the_whole_space() {
        let text =
            "[xdp]\ninterfaces = [\"eth0\"]\nallow_any = true\n[[xdp.relay]]\ncidrs = [\"::/0\"]\n";
        assert!(Config::parse(text).is_ok());
    }
}

#[cfg(test)]
mod oidc_tests {
    use super::*;

    const HTTP: &str = "[http]\n[[http.plain]]\nlisten = \"127.0.0.1:0\"\n";
    const SESSIONS: &str = "[sessions]\nissuer = \"https://gw.example\"\nkey_dir = \"/k\"\n";
    const PROVIDER: &str =
        "[[oidc]]\nname = \"corp\"\nissuer = \"https://sso.example\"\nclient_id = \"gw\"\n";
    const APP: &str = "[[app]]\nname = \"wiki\"\nhostname = \"wiki.example\"\nupstream = \"http://127.0.0.1:1\"\n";
    const ALLOW: &str =
        "[[app.policy]]\nname = \"staff\"\naction = \"allow\"\ninclude = [{ group = \"eng\" }]\n";

    #[test]
    fn sign_in_apps_need_no_relay_and_get_default_lifetimes() {
        let text = format!("{HTTP}{SESSIONS}{PROVIDER}{APP}login = [\"corp\"]\n{ALLOW}");
        let http = Config::parse(&text).unwrap().http.unwrap();
        let app = &http.apps[0];
        assert_eq!(app.login, ["corp"]);
        assert_eq!(app.session_lifetime, Duration::from_secs(86_400));
        assert_eq!(http.oidc[0].scopes, ["openid", "email", "profile"]);
        assert_eq!(http.oidc[0].display_name, "corp");
        // Retired keys stay published for the longest session.
        let sessions = http.sessions.unwrap();
        assert_eq!(sessions.longest_lifetime, app.session_lifetime);
    }

    #[test]
    fn sign_in_errors_name_the_key() {
        let cases = [
            (
                format!("{HTTP}{SESSIONS}{PROVIDER}{APP}login = [\"other\"]\n"),
                "`app[0].login`",
            ),
            (
                format!("{HTTP}{PROVIDER}{APP}login = [\"corp\"]\n{ALLOW}"),
                "`app[0].login`",
            ),
            (
                format!("{HTTP}{SESSIONS}{PROVIDER}scopes = [\"email\"]\n{APP}"),
                "`oidc[0].scopes`",
            ),
            (
                format!("{HTTP}{SESSIONS}{PROVIDER}{PROVIDER}{APP}"),
                "`oidc[1].name`",
            ),
            (
                format!(
                    "{HTTP}{SESSIONS}{}{APP}",
                    PROVIDER.replace("https://sso", "http://sso")
                ),
                "`oidc[0].issuer`",
            ),
            (
                format!("{HTTP}{SESSIONS}{PROVIDER}claims = [\"iss\"]\n{APP}"),
                "`oidc[0].claims`",
            ),
            (
                format!("{HTTP}{SESSIONS}{PROVIDER}client_secret_file = \"rel\"\n{APP}"),
                "`oidc[0].client_secret_file`",
            ),
            (
                format!(
                    "{HTTP}{SESSIONS}{PROVIDER}{APP}login = [\"corp\"]\nsession_lifetime_secs = 99999999\n"
                ),
                "`app[0].session_lifetime_secs`",
            ),
            (format!("{HTTP}{SESSIONS}{APP}{ALLOW}"), "`app[0].aud`"),
            (PROVIDER.to_owned(), "`oidc`"),
        ];
        for (text, key) in cases {
            let error = Config::parse(&text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}\n→ {error}");
        }
    }
}
