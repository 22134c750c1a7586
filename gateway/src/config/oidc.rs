//! `[[oidc]]`: the OpenID Connect providers the gateway signs people in
//! with, for apps that list them in `login`.
//!
//! ```toml
//! [[oidc]]
//! name = "corp"                          # used in `app.login` and URLs
//! display_name = "Corp SSO"              # shown on the provider picker
//! issuer = "https://sso.corp.example"    # discovery: issuer + /.well-known/openid-configuration
//! client_id = "gateway"
//! client_secret_file = "/etc/gateway/oidc-corp.secret"
//! scopes = ["openid", "email", "profile", "groups"]
//! groups_claim = "groups"
//! claims = ["department"]                # more claims for `claim` selectors
//! ```
//!
//! The callback every provider must allow is
//! `https://<app hostname>/cdn-cgi/access/callback`.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, invalid};

/// One `[[oidc]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// Short name, used by `app.login` and in the login URLs.
    pub name: String,
    /// Shown on the provider picker (default: the name).
    pub display_name: Option<String>,
    /// Exact issuer; discovery is fetched from it.
    pub issuer: String,
    /// The gateway's client id at the provider.
    pub client_id: String,
    /// File holding the client secret (none: a public client, PKCE only).
    pub client_secret_file: Option<PathBuf>,
    /// PEM file of extra CA certificates to trust for the provider.
    pub ca_file: Option<PathBuf>,
    /// Scopes requested; must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim holding the email.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// The ID-token claim holding the groups (a string or a list).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Further ID-token claims carried into the session for policies.
    #[serde(default)]
    pub claims: Vec<String>,
    /// Clock skew allowed on `exp` and `iat`, seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway_secs() -> u64 {
    30
}

/// One validated provider.
#[derive(Clone, Debug, PartialEq)]
pub struct OidcProviderConfig {
    /// Short name.
    pub name: String,
    /// Picker label.
    pub display_name: String,
    /// Exact issuer (https).
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret file, for a confidential client.
    pub client_secret_file: Option<PathBuf>,
    /// Extra CAs.
    pub ca_file: Option<PathBuf>,
    /// Scopes, `openid` first.
    pub scopes: Vec<String>,
    /// Email claim name.
    pub email_claim: String,
    /// Groups claim name.
    pub groups_claim: String,
    /// Further claims copied into sessions.
    pub claims: Vec<String>,
    /// Clock skew.
    pub leeway: Duration,
}

/// Claims a provider's token may not set in the gateway's session: they
/// belong to the session itself or are set from the mapped ones.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "sub",
    "exp",
    "iat",
    "nbf",
    "jti",
    "type",
    "email",
    "groups",
    "common_name",
    "country",
    "idp",
    "amr",
    "nonce",
];

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
}

/// Validates every `[[oidc]]`.
pub fn validate(raw: Vec<RawOidc>) -> Result<Vec<OidcProviderConfig>, ConfigError> {
    let mut providers: Vec<OidcProviderConfig> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("oidc[{i}].{field}");
        if !name_ok(&raw.name) {
            return Err(invalid(
                key("name"),
                "1-32 lowercase letters, digits, '-', '_'",
            ));
        }
        if providers.iter().any(|p| p.name == raw.name) {
            return Err(invalid(
                key("name"),
                format!("`{}` is used twice", raw.name),
            ));
        }
        super::http::https_url(&key("issuer"), &raw.issuer)?;
        if raw.client_id.is_empty() {
            return Err(invalid(key("client_id"), "is empty"));
        }
        for (field, path) in [
            ("client_secret_file", &raw.client_secret_file),
            ("ca_file", &raw.ca_file),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key(field), "must be an absolute path"));
            }
        }
        if !raw.scopes.iter().any(|s| s == "openid") {
            return Err(invalid(key("scopes"), "must include `openid`"));
        }
        if let Some(scope) = raw
            .scopes
            .iter()
            .find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        {
            return Err(invalid(key("scopes"), format!("`{scope}` is not a scope")));
        }
        for (field, claim) in [
            ("email_claim", &raw.email_claim),
            ("groups_claim", &raw.groups_claim),
        ] {
            if claim.is_empty() {
                return Err(invalid(key(field), "is empty"));
            }
        }
        if let Some(claim) = raw
            .claims
            .iter()
            .find(|c| c.is_empty() || RESERVED_CLAIMS.contains(&c.as_str()))
        {
            return Err(invalid(
                key("claims"),
                format!("`{claim}` is empty or a claim the session sets itself"),
            ));
        }
        let leeway = super::http::leeway(&key("leeway_secs"), raw.leeway_secs)?;
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(raw.scopes.into_iter().filter(|s| s != "openid"));
        providers.push(OidcProviderConfig {
            display_name: raw.display_name.unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            issuer: raw.issuer,
            client_id: raw.client_id,
            client_secret_file: raw.client_secret_file,
            ca_file: raw.ca_file,
            scopes,
            email_claim: raw.email_claim,
            groups_claim: raw.groups_claim,
            claims: raw.claims,
            leeway,
        });
    }
    Ok(providers)
}
