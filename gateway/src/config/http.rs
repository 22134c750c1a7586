//! The identity gateway's part of the configuration: listeners, the relay's
//! token issuer, the gateway's own sessions, the token store, the audit
//! hand-off and the applications with their policies.
//!
//! ```toml
//! [http]
//! trusted_relays = ["192.0.2.0/24"]   # peers whose client-IP header is believed
//! [[http.https]]
//! listen = "0.0.0.0:443"
//! cert = "/etc/gateway/tls/cert.pem"
//! key = "/etc/gateway/tls/key.pem"
//!
//! [relay]
//! issuer = "https://team.cloudflareaccess.com"
//!
//! [[app]]
//! name = "wiki"
//! hostname = "wiki.example.com"
//! upstream = "http://127.0.0.1:8081"
//! aud = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
//!
//! [[app.policy]]
//! name = "staff"
//! action = "allow"
//! include = [{ email_domain = "corp.example" }]
//! ```

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use analytics::Label;
use http::{HeaderName, Uri};
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    ConfigError, invalid,
    oidc::{OidcProviderConfig, RawOidc},
};
use crate::{
    paths,
    policy::{Action, Policy, PolicySet, Selector},
};

/// `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// TLS listeners.
    #[serde(default)]
    pub https: Vec<RawHttps>,
    /// Plain-HTTP listeners (behind a relay that terminates TLS on the host,
    /// or for local tests).
    #[serde(default)]
    pub plain: Vec<RawPlain>,
    /// Peers (the relay's egress ranges) whose client-IP and country headers
    /// are believed. Anyone else is judged by the TCP peer address.
    #[serde(default)]
    pub trusted_relays: Vec<String>,
    /// Header carrying the client address from a trusted relay.
    #[serde(default = "default_client_ip_header")]
    pub client_ip_header: String,
    /// Header carrying the client country from a trusted relay.
    #[serde(default = "default_country_header")]
    pub country_header: String,
    /// Largest request head (request line and headers), bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request headers.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has to send a request head, seconds.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Time the upstream has to answer with response headers, seconds.
    #[serde(default = "default_upstream_timeout_secs")]
    pub upstream_timeout_secs: u64,
    /// How long idle upstream connections stay pooled, seconds.
    #[serde(default = "default_pool_idle_secs")]
    pub pool_idle_secs: u64,
    /// Certificate files are checked for changes this often, seconds.
    #[serde(default = "default_cert_reload_secs")]
    pub cert_reload_secs: u64,
    /// Memory for tokens already verified (relay and session JWTs), MiB.
    #[serde(default = "default_token_cache_mib")]
    pub token_cache_mib: u64,
}

fn default_client_ip_header() -> String {
    "cf-connecting-ip".into()
}
fn default_country_header() -> String {
    "cf-ipcountry".into()
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_upstream_timeout_secs() -> u64 {
    60
}
fn default_token_cache_mib() -> u64 {
    16
}
fn default_pool_idle_secs() -> u64 {
    90
}
fn default_cert_reload_secs() -> u64 {
    60
}

/// One `[[http.https]]` listener as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttps {
    /// Address and port.
    pub listen: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One `[[http.plain]]` listener as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlain {
    /// Address and port.
    pub listen: String,
}

/// `[relay]` as written: who signs the tokens the relay forwards.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// Exact `iss` of relay tokens, e.g. `https://team.cloudflareaccess.com`.
    pub issuer: String,
    /// Where the signing keys are published (default: issuer +
    /// `/cdn-cgi/access/certs`).
    pub certs_url: Option<String>,
    /// PEM file of extra CA certificates to trust for `certs_url`.
    pub ca_file: Option<PathBuf>,
    /// Background refresh of the keys, seconds.
    #[serde(default = "default_certs_refresh_secs")]
    pub refresh_secs: u64,
    /// Least time between two fetches caused by unknown key ids, seconds.
    #[serde(default = "default_kid_cooldown_secs")]
    pub kid_cooldown_secs: u64,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Expected `type` claim.
    #[serde(default = "default_token_type")]
    pub token_type: String,
}

fn default_certs_refresh_secs() -> u64 {
    300
}
fn default_kid_cooldown_secs() -> u64 {
    30
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_token_type() -> String {
    "app".into()
}

/// `[sessions]` as written: the gateway's own signed tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    /// `iss` of the gateway's tokens (an https URL naming this gateway).
    pub issuer: String,
    /// Where the signing keys are kept.
    #[serde(default = "default_key_dir")]
    pub key_dir: PathBuf,
    /// Lifetime of a session token, seconds.
    #[serde(default = "default_session_secs")]
    pub lifetime_secs: u64,
    /// A new signing key is made this often, seconds; the previous one stays
    /// published until every token it signed has expired.
    #[serde(default = "default_key_rotation_secs")]
    pub key_rotation_secs: u64,
}

fn default_key_dir() -> PathBuf {
    PathBuf::from(paths::DEFAULT_KEY_DIR)
}
fn default_session_secs() -> u64 {
    15 * 60
}
fn default_key_rotation_secs() -> u64 {
    7 * 24 * 3600
}

/// `[tokens]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// The store `gateway token` writes.
    #[serde(default = "default_token_store")]
    pub store: PathBuf,
}

fn default_token_store() -> PathBuf {
    PathBuf::from(paths::DEFAULT_TOKEN_STORE)
}

/// One `[[app]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    /// Unique name, used in decisions.
    pub name: String,
    /// Host name the app is served on.
    pub hostname: String,
    /// Path prefix (whole segments), default `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// `http://host:port` of the local application.
    pub upstream: String,
    /// The relay's AUD tag for this app; required unless every policy is a
    /// Bypass or Service Auth policy.
    pub aud: Option<String>,
    /// Accept the `CF_Authorization` cookie when the header is absent.
    #[serde(default)]
    pub cookie: bool,
    /// Pass the `CF_Authorization` cookie on to the upstream.
    #[serde(default)]
    pub forward_cookie: bool,
    /// A header holding service-token credentials as one JSON object.
    pub service_token_header: Option<String>,
    /// Paths differing only in case are the same path.
    #[serde(default)]
    pub case_insensitive_paths: bool,
    /// `[[oidc]]` providers that sign people in to this app (more than
    /// one: a picker page).
    #[serde(default)]
    pub login: Vec<String>,
    /// Lifetime of the session after a sign-in, seconds.
    #[serde(default = "default_login_session_secs")]
    pub session_lifetime_secs: u64,
    /// Policies, in order.
    #[serde(default)]
    pub policy: Vec<RawPolicy>,
}

fn default_login_session_secs() -> u64 {
    24 * 3600
}

fn default_path() -> String {
    "/".into()
}

/// One `[[app.policy]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Unique name in the app.
    pub name: String,
    /// `allow`, `block`, `bypass` or `service_auth`.
    pub action: RawAction,
    /// Any must match.
    #[serde(default)]
    pub include: Vec<RawSelector>,
    /// All must match.
    #[serde(default)]
    pub require: Vec<RawSelector>,
    /// None may match.
    #[serde(default)]
    pub exclude: Vec<RawSelector>,
}

/// A policy action as written.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawAction {
    /// [`Action::Allow`].
    Allow,
    /// [`Action::Block`].
    Block,
    /// [`Action::Bypass`].
    Bypass,
    /// [`Action::ServiceAuth`].
    ServiceAuth,
}

/// A selector as written: `"everyone"`, `"any_service_token"`, or a table
/// with one key.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawSelector {
    /// Every request.
    Everyone,
    /// `{ email = "a@corp.example" }`.
    Email(String),
    /// `{ email_domain = "corp.example" }`.
    EmailDomain(String),
    /// `{ emails = ["a@corp.example", ...] }`.
    Emails(Vec<String>),
    /// `{ group = "engineering" }`.
    Group(String),
    /// `{ claim = { name = "department", value = "ops" } }`.
    Claim {
        /// Claim name.
        name: String,
        /// Expected value.
        value: String,
    },
    /// `{ ip = ["198.51.100.0/24"] }`.
    Ip(Vec<String>),
    /// `{ country = ["PT", "DE"] }`.
    Country(Vec<String>),
    /// `{ service_token = "<client id>" }`.
    ServiceToken(String),
    /// Any valid service token.
    AnyServiceToken,
    /// `{ auth_method = "mfa" }`.
    AuthMethod(String),
}

/// The validated HTTP side.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpConfig {
    /// TLS listeners.
    pub https: Vec<HttpsListener>,
    /// Plain listeners.
    pub plain: Vec<SocketAddr>,
    /// Peers whose relay headers are believed.
    pub trusted_relays: Vec<IpNet>,
    /// Client address header from trusted relays.
    pub client_ip_header: HeaderName,
    /// Country header from trusted relays.
    pub country_header: HeaderName,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Deadline for a request head.
    pub header_timeout: Duration,
    /// Deadline for upstream response headers.
    pub upstream_timeout: Duration,
    /// Pooled idle upstream connections live this long.
    pub pool_idle: Duration,
    /// Certificate change check interval.
    pub cert_reload: Duration,
    /// Bytes of verified tokens remembered.
    pub token_cache_bytes: u64,
    /// The relay's token issuer, if relay tokens are accepted.
    pub relay: Option<RelayConfig>,
    /// The gateway's own sessions, if service tokens are exchanged for them.
    pub sessions: Option<SessionsConfig>,
    /// OpenID Connect providers.
    pub oidc: Vec<OidcProviderConfig>,
    /// The service-token store.
    pub token_store: PathBuf,
    /// What a full audit queue does to HTTP decisions.
    pub audit_overflow: analytics::Overflow,
    /// Applications, in configured order.
    pub apps: Vec<App>,
}

/// One validated TLS listener.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpsListener {
    /// Address.
    pub listen: SocketAddr,
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
}

/// The validated `[relay]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    /// Exact issuer.
    pub issuer: String,
    /// Certs document URL (https).
    pub certs_url: String,
    /// Extra CAs.
    pub ca_file: Option<PathBuf>,
    /// Background refresh.
    pub refresh: Duration,
    /// Unknown-kid fetch cooldown.
    pub kid_cooldown: Duration,
    /// Clock skew.
    pub leeway_secs: u64,
    /// Expected `type`.
    pub token_type: String,
}

/// The validated `[sessions]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionsConfig {
    /// Issuer of the gateway's tokens.
    pub issuer: String,
    /// Key directory.
    pub key_dir: PathBuf,
    /// Session token lifetime.
    pub lifetime: Duration,
    /// Signing key rotation.
    pub key_rotation: Duration,
    /// The longest lifetime of any session (service-token or sign-in):
    /// how long a retired key stays published.
    pub longest_lifetime: Duration,
}

/// One validated application.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// Name (a [`label`](analytics::label): every audit event of the app
    /// carries it without a copy).
    pub name: Label,
    /// Lowercase host name (a label, as `name`).
    pub hostname: Label,
    /// Normalized path prefix, `/` or `/a/b` (no trailing slash).
    pub path: String,
    /// Upstream base (`http://host:port`, no path).
    pub upstream: Uri,
    /// AUD tag.
    pub aud: Option<String>,
    /// Accept the cookie.
    pub cookie: bool,
    /// Forward the cookie.
    pub forward_cookie: bool,
    /// Single-header service-token form.
    pub service_token_header: Option<HeaderName>,
    /// Case-insensitive path matching.
    pub case_insensitive_paths: bool,
    /// Providers people sign in with (empty: no sign-in).
    pub login: Vec<String>,
    /// Session lifetime after a sign-in.
    pub session_lifetime: Duration,
    /// Policies.
    pub policies: PolicySet,
}

/// Every `[http]`-related section, as written, for [`validate`].
pub struct RawSections {
    /// `[http]`.
    pub http: RawHttp,
    /// `[relay]`.
    pub relay: Option<RawRelay>,
    /// `[sessions]`.
    pub sessions: Option<RawSessions>,
    /// `[tokens]`.
    pub tokens: Option<RawTokens>,
    /// `[[oidc]]`.
    pub oidc: Vec<RawOidc>,
    /// `audit.http_overflow`.
    pub audit_overflow: analytics::Overflow,
    /// `[[app]]`.
    pub apps: Vec<RawApp>,
}

fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, format!("`{text}` is not an address:port")))
}

fn positive(key: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(Duration::from_secs(value))
}

fn header_name(key: &str, text: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| invalid(key, format!("`{text}` is not a header name")))
}

/// A clock-skew allowance: more than 5 minutes would accept stale tokens.
pub(super) fn leeway(key: &str, secs: u64) -> Result<Duration, ConfigError> {
    if secs > 300 {
        return Err(invalid(key, "more than 300 s of skew is not a leeway"));
    }
    Ok(Duration::from_secs(secs))
}

pub(super) fn https_url(key: &str, text: &str) -> Result<(), ConfigError> {
    match text.parse::<Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(()),
        _ => Err(invalid(key, format!("`{text}` is not an https:// URL"))),
    }
}

/// Validates the HTTP-side sections.
pub fn validate(raw: RawSections) -> Result<HttpConfig, ConfigError> {
    let http = raw.http;
    if http.https.is_empty() && http.plain.is_empty() {
        return Err(invalid(
            "http",
            "list at least one listener ([[http.https]] or [[http.plain]])",
        ));
    }
    let mut addresses = BTreeSet::new();
    let mut https = Vec::new();
    for (i, listener) in http.https.into_iter().enumerate() {
        let key = format!("http.https[{i}]");
        let listen = parse_listen(&format!("{key}.listen"), &listener.listen)?;
        if listen.port() != 0 && !addresses.insert(listen) {
            return Err(invalid(format!("{key}.listen"), "address used twice"));
        }
        for (name, path) in [("cert", &listener.cert), ("key", &listener.key)] {
            if !path.is_absolute() {
                return Err(invalid(format!("{key}.{name}"), "must be an absolute path"));
            }
        }
        https.push(HttpsListener {
            listen,
            cert: listener.cert,
            key: listener.key,
        });
    }
    let mut plain = Vec::new();
    for (i, listener) in http.plain.into_iter().enumerate() {
        let key = format!("http.plain[{i}].listen");
        let listen = parse_listen(&key, &listener.listen)?;
        if listen.port() != 0 && !addresses.insert(listen) {
            return Err(invalid(key, "address used twice"));
        }
        plain.push(listen);
    }
    let trusted_relays = http
        .trusted_relays
        .iter()
        .enumerate()
        .map(|(i, text)| {
            crate::xdp::sources::parse_prefix(text, false)
                .map_err(|message| invalid(format!("http.trusted_relays[{i}]"), message))
        })
        .collect::<Result<_, _>>()?;
    if !(1024..=1024 * 1024).contains(&http.max_header_bytes) {
        return Err(invalid(
            "http.max_header_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    if !(8..=10_000).contains(&http.max_headers) {
        return Err(invalid("http.max_headers", "must be between 8 and 10000"));
    }

    let relay = raw.relay.map(validate_relay).transpose()?;
    let mut sessions = raw.sessions.map(validate_sessions).transpose()?;
    let oidc = super::oidc::validate(raw.oidc)?;
    let token_store = raw
        .tokens
        .map_or_else(default_token_store, |tokens| tokens.store);
    if !token_store.is_absolute() {
        return Err(invalid("tokens.store", "must be an absolute path"));
    }

    if raw.apps.is_empty() {
        return Err(invalid("app", "list at least one [[app]]"));
    }
    let mut apps: Vec<App> = Vec::new();
    for (i, raw_app) in raw.apps.into_iter().enumerate() {
        let key = format!("app[{i}]");
        let app = validate_app(&key, raw_app, relay.is_some())?;
        if let Some(name) = app
            .login
            .iter()
            .find(|n| !oidc.iter().any(|p| &p.name == *n))
        {
            return Err(invalid(
                format!("{key}.login"),
                format!("no [[oidc]] provider is named `{name}`"),
            ));
        }
        if !app.login.is_empty() {
            let Some(sessions) = sessions.as_mut() else {
                return Err(invalid(
                    format!("{key}.login"),
                    "sign-in needs a [sessions] section: the gateway signs the sessions",
                ));
            };
            if app.session_lifetime > sessions.key_rotation {
                return Err(invalid(
                    format!("{key}.session_lifetime_secs"),
                    "must be at most sessions.key_rotation_secs",
                ));
            }
            sessions.longest_lifetime = sessions.longest_lifetime.max(app.session_lifetime);
        }
        if apps.iter().any(|a| a.name == app.name) {
            return Err(invalid(
                format!("app[{i}].name"),
                format!("`{}` is used twice", app.name),
            ));
        }
        if apps
            .iter()
            .any(|a| a.hostname == app.hostname && a.path == app.path)
        {
            return Err(invalid(
                format!("app[{i}].path"),
                format!("{}{} belongs to another app", app.hostname, app.path),
            ));
        }
        apps.push(app);
    }

    Ok(HttpConfig {
        https,
        plain,
        trusted_relays,
        client_ip_header: header_name("http.client_ip_header", &http.client_ip_header)?,
        country_header: header_name("http.country_header", &http.country_header)?,
        max_header_bytes: http.max_header_bytes,
        max_headers: http.max_headers,
        header_timeout: positive("http.header_timeout_secs", http.header_timeout_secs)?,
        upstream_timeout: positive("http.upstream_timeout_secs", http.upstream_timeout_secs)?,
        pool_idle: positive("http.pool_idle_secs", http.pool_idle_secs)?,
        cert_reload: positive("http.cert_reload_secs", http.cert_reload_secs)?,
        token_cache_bytes: match http.token_cache_mib {
            0 => return Err(invalid("http.token_cache_mib", "must be greater than 0")),
            mib => mib
                .checked_mul(1 << 20)
                .ok_or_else(|| invalid("http.token_cache_mib", "is too large"))?,
        },
        relay,
        sessions,
        oidc,
        token_store,
        audit_overflow: raw.audit_overflow,
        apps,
    })
}

fn validate_relay(relay: RawRelay) -> Result<RelayConfig, ConfigError> {
    https_url("relay.issuer", &relay.issuer)?;
    let certs_url = relay.certs_url.unwrap_or_else(|| {
        format!(
            "{}/cdn-cgi/access/certs",
            relay.issuer.trim_end_matches('/')
        )
    });
    https_url("relay.certs_url", &certs_url)?;
    leeway("relay.leeway_secs", relay.leeway_secs)?;
    if relay.token_type.is_empty() {
        return Err(invalid("relay.token_type", "is empty"));
    }
    Ok(RelayConfig {
        issuer: relay.issuer,
        certs_url,
        ca_file: relay.ca_file,
        refresh: positive("relay.refresh_secs", relay.refresh_secs)?,
        kid_cooldown: positive("relay.kid_cooldown_secs", relay.kid_cooldown_secs)?,
        leeway_secs: relay.leeway_secs,
        token_type: relay.token_type,
    })
}

fn validate_sessions(sessions: RawSessions) -> Result<SessionsConfig, ConfigError> {
    https_url("sessions.issuer", &sessions.issuer)?;
    if !sessions.key_dir.is_absolute() {
        return Err(invalid("sessions.key_dir", "must be an absolute path"));
    }
    let lifetime = positive("sessions.lifetime_secs", sessions.lifetime_secs)?;
    let key_rotation = positive("sessions.key_rotation_secs", sessions.key_rotation_secs)?;
    if key_rotation < lifetime {
        return Err(invalid(
            "sessions.key_rotation_secs",
            "must be at least sessions.lifetime_secs",
        ));
    }
    Ok(SessionsConfig {
        issuer: sessions.issuer,
        key_dir: sessions.key_dir,
        lifetime,
        key_rotation,
        longest_lifetime: lifetime,
    })
}

fn validate_app(key: &str, app: RawApp, have_relay: bool) -> Result<App, ConfigError> {
    if app.name.is_empty()
        || app.name.len() > 64
        || !app
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            format!("{key}.name"),
            "1-64 letters, digits, '-', '_', '.'",
        ));
    }
    let hostname = crate::proxy::request::normalize_host(&app.hostname)
        .filter(|(_, port)| port.is_none())
        .map(|(host, _)| host)
        .ok_or_else(|| {
            invalid(
                format!("{key}.hostname"),
                format!("`{}` is not a host name", app.hostname),
            )
        })?;
    let path = match crate::proxy::request::normalize_path(&app.path) {
        Ok(path) if path == app.path && !path.contains([';', '%']) => {
            let trimmed = path.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            }
        }
        _ => {
            return Err(invalid(
                format!("{key}.path"),
                format!(
                    "`{}` is not a normalized absolute path (no dot segments, escapes or ';')",
                    app.path
                ),
            ));
        }
    };
    let upstream: Uri = app.upstream.parse().map_err(|_| {
        invalid(
            format!("{key}.upstream"),
            format!("`{}` is not a URL", app.upstream),
        )
    })?;
    if upstream.scheme_str() != Some("http")
        || upstream.host().is_none()
        || upstream.path_and_query().is_some_and(|p| p.as_str() != "/")
    {
        return Err(invalid(
            format!("{key}.upstream"),
            "must be http://host[:port] (a local application, no path)",
        ));
    }
    let service_token_header = app
        .service_token_header
        .as_deref()
        .map(|name| header_name(&format!("{key}.service_token_header"), name))
        .transpose()?;

    let mut policies = Vec::new();
    for (j, raw) in app.policy.into_iter().enumerate() {
        let pkey = format!("{key}.policy[{j}]");
        let selectors = |rule: &str, list: Vec<RawSelector>| {
            list.into_iter()
                .enumerate()
                .map(|(k, s)| selector(&format!("{pkey}.{rule}[{k}]"), s))
                .collect::<Result<Vec<_>, _>>()
        };
        policies.push(Policy {
            name: analytics::label(&raw.name),
            action: match raw.action {
                RawAction::Allow => Action::Allow,
                RawAction::Block => Action::Block,
                RawAction::Bypass => Action::Bypass,
                RawAction::ServiceAuth => Action::ServiceAuth,
            },
            include: selectors("include", raw.include)?,
            require: selectors("require", raw.require)?,
            exclude: selectors("exclude", raw.exclude)?,
        });
    }
    let needs_user_tokens = app.login.is_empty()
        && policies
            .iter()
            .any(|p| matches!(p.action, Action::Allow | Action::Block));
    if needs_user_tokens && app.aud.is_none() {
        return Err(invalid(
            format!("{key}.aud"),
            "Allow and Block policies need the relay's AUD tag for this app (or `login`)",
        ));
    }
    if needs_user_tokens && !have_relay {
        return Err(invalid(
            format!("{key}.policy"),
            "Allow and Block policies need a [relay] section to verify user tokens (or `login`)",
        ));
    }
    if app.aud.as_deref().is_some_and(str::is_empty) {
        return Err(invalid(format!("{key}.aud"), "is empty"));
    }
    let policies = PolicySet::new(policies)
        .map_err(|error| invalid(format!("{key}.policy"), error.to_string()))?;
    Ok(App {
        name: analytics::label(&app.name),
        hostname: analytics::label(&hostname),
        path,
        upstream,
        aud: app.aud,
        cookie: app.cookie,
        forward_cookie: app.forward_cookie,
        service_token_header,
        case_insensitive_paths: app.case_insensitive_paths,
        login: app.login,
        session_lifetime: positive(
            &format!("{key}.session_lifetime_secs"),
            app.session_lifetime_secs,
        )?,
        policies,
    })
}

fn selector(key: &str, raw: RawSelector) -> Result<Selector, ConfigError> {
    let nonempty = |value: String| {
        if value.is_empty() {
            Err(invalid(key, "is empty"))
        } else {
            Ok(value)
        }
    };
    Ok(match raw {
        RawSelector::Everyone => Selector::Everyone,
        RawSelector::Email(email) => Selector::Email(nonempty(email)?.to_ascii_lowercase()),
        RawSelector::EmailDomain(domain) => {
            Selector::EmailDomain(nonempty(domain)?.to_ascii_lowercase())
        }
        RawSelector::Emails(list) => {
            if list.is_empty() {
                return Err(invalid(key, "is empty"));
            }
            Selector::EmailList(list.iter().map(|e| e.to_ascii_lowercase()).collect())
        }
        RawSelector::Group(group) => Selector::Group(nonempty(group)?),
        RawSelector::Claim { name, value } => Selector::Claim {
            name: nonempty(name)?,
            value,
        },
        RawSelector::Ip(list) => {
            if list.is_empty() {
                return Err(invalid(key, "is empty"));
            }
            Selector::IpRange(
                list.iter()
                    .map(|text| {
                        text.parse::<IpNet>()
                            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| invalid(key, format!("`{text}` is not an IP range")))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        RawSelector::Country(list) => {
            if list.is_empty() {
                return Err(invalid(key, "is empty"));
            }
            let mut countries = BTreeSet::new();
            for code in list {
                if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(invalid(
                        key,
                        format!("`{code}` is not a two-letter country code"),
                    ));
                }
                countries.insert(code.to_ascii_uppercase());
            }
            Selector::Country(countries)
        }
        RawSelector::ServiceToken(id) => Selector::ServiceToken(nonempty(id)?),
        RawSelector::AnyServiceToken => Selector::AnyServiceToken,
        RawSelector::AuthMethod(method) => Selector::AuthMethod(nonempty(method)?),
    })
}
