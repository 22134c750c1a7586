//! OpenID Connect sign-in: the gateway as a relying party of the team's
//! identity provider (Okta, Google, Keycloak, ...), for apps without a
//! relay in front that signs people in.
//!
//! The authorization-code flow with PKCE (S256), `state` and `nonce`:
//! discovery from `<issuer>/.well-known/openid-configuration` (its `issuer`
//! must be the configured one, exactly), the code exchanged at the token
//! endpoint with the client's secret (`client_secret_basic`), the ID token
//! checked by the same rules as relay tokens ([`crate::jwt`]: keys only from
//! the provider's `jwks_uri`, one algorithm per key, no `jku`/`x5u`/`jwk`/
//! `x5c`), then issuer, audience (and `azp` when several audiences), expiry,
//! `iat` and `nonce`. The verified claims are mapped into a gateway session
//! ([`Provider::session_identity`]).
//!
//! # Layout
//! - this module: [`Provider`] (discovery, code exchange, ID token checks,
//!   claims mapping) and [`OidcError`];
//! - [`login`]: the state kept across the redirect, PKCE, return paths.

pub mod login;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    config::oidc::OidcProviderConfig,
    jwt::{Claims, JwtError, certs::CertsCache},
};

/// Least time between two discovery attempts while the provider is down.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);
/// Least time between two key fetches caused by unknown key ids.
const KID_COOLDOWN: Duration = Duration::from_secs(30);

/// Why a sign-in could not go on.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The client secret file could not be read.
    #[error("cannot read the client secret {path}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Discovery failed or said something unacceptable.
    #[error("discovery of {issuer} failed: {message}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What went wrong.
        message: String,
    },
    /// The token endpoint could not be reached or answered garbage.
    #[error("token endpoint unreachable: {0}")]
    TokenEndpoint(String),
    /// The token endpoint refused the code (replayed, expired, wrong
    /// verifier or client).
    #[error("the provider refused the code ({status}: {error})")]
    CodeRejected {
        /// HTTP status.
        status: u16,
        /// The OAuth error code (`invalid_grant`, ...), sanitized.
        error: String,
    },
    /// The provider's keys could not be loaded.
    #[error("the provider's signing keys are unavailable: {0}")]
    Keys(String),
    /// The ID token failed a check.
    #[error("ID token refused")]
    IdToken(#[source] JwtError),
    /// The ID token's `nonce` is not this sign-in's.
    #[error("ID token nonce mismatch")]
    Nonce,
    /// `azp` is not this client (or missing with several audiences).
    #[error("ID token issued to another party")]
    AuthorizedParty,
}

/// What discovery found.
#[derive(Debug)]
pub struct Metadata {
    /// Where browsers are sent.
    pub authorization_endpoint: url::Url,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// The provider's keys, from `jwks_uri`.
    pub keys: CertsCache,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

/// One provider: its settings, the metadata discovered from it, and an
/// HTTP client kept for its calls.
pub struct Provider {
    /// Its settings.
    pub config: OidcProviderConfig,
    client_secret: Option<String>,
    client: reqwest::Client,
    metadata: RwLock<Option<Arc<Metadata>>>,
    /// Held while discovering; when the last attempt started.
    discovering: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

fn discovery_error(issuer: &str, message: impl Into<String>) -> OidcError {
    OidcError::Discovery {
        issuer: issuer.to_owned(),
        message: message.into(),
    }
}

fn https(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
}

impl Provider {
    /// Reads the client secret and prepares the HTTP client; nothing is
    /// fetched yet ([`Provider::metadata`] discovers on first use).
    pub fn new(config: OidcProviderConfig) -> Result<Self, OidcError> {
        let client_secret = config
            .client_secret_file
            .as_ref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_owned())
                    .map_err(|source| OidcError::Secret {
                        path: path.clone(),
                        source,
                    })
            })
            .transpose()?;
        let client = crate::fetch::client(config.ca_file.as_deref())
            .map_err(|message| discovery_error(&config.issuer, message))?;
        Ok(Self {
            config,
            client_secret,
            client,
            metadata: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether `config` describes this same provider (kept across reloads,
    /// with what it discovered).
    pub fn same_as(&self, config: &OidcProviderConfig) -> bool {
        self.config == *config
    }

    /// The discovered metadata, discovering now if needed (at most one
    /// attempt per [`DISCOVERY_RETRY`] while the provider is down).
    pub async fn metadata(&self) -> Result<Arc<Metadata>, OidcError> {
        if let Some(metadata) = self.metadata.read().expect("oidc lock").clone() {
            return Ok(metadata);
        }
        let mut last = self.discovering.lock().await;
        if let Some(metadata) = self.metadata.read().expect("oidc lock").clone() {
            return Ok(metadata);
        }
        if last.is_some_and(|at| at.elapsed() < DISCOVERY_RETRY) {
            return Err(discovery_error(
                &self.config.issuer,
                "failed moments ago; retrying shortly",
            ));
        }
        *last = Some(Instant::now());
        let metadata = Arc::new(self.discover().await?);
        *self.metadata.write().expect("oidc lock") = Some(metadata.clone());
        Ok(metadata)
    }

    async fn discover(&self) -> Result<Metadata, OidcError> {
        let issuer = &self.config.issuer;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let text = crate::fetch::fetch_with(&self.client, &url)
            .await
            .map_err(|message| discovery_error(issuer, message))?;
        let document: Discovery = serde_json::from_str(&text)
            .map_err(|e| discovery_error(issuer, format!("not a discovery document: {e}")))?;
        if document.issuer != *issuer {
            return Err(discovery_error(
                issuer,
                format!("the document names issuer `{}`", document.issuer),
            ));
        }
        for (name, url) in [
            ("authorization_endpoint", &document.authorization_endpoint),
            ("token_endpoint", &document.token_endpoint),
            ("jwks_uri", &document.jwks_uri),
        ] {
            if !https(url) {
                return Err(discovery_error(
                    issuer,
                    format!("{name} `{url}` is not an https URL"),
                ));
            }
        }
        if document
            .code_challenge_methods_supported
            .is_some_and(|methods| !methods.iter().any(|m| m == "S256"))
        {
            return Err(discovery_error(
                issuer,
                "the provider does not offer PKCE S256",
            ));
        }
        let authorization_endpoint = url::Url::parse(&document.authorization_endpoint)
            .map_err(|e| discovery_error(issuer, e.to_string()))?;
        let keys = CertsCache::new(document.jwks_uri, self.config.ca_file.clone(), KID_COOLDOWN);
        Ok(Metadata {
            authorization_endpoint,
            token_endpoint: document.token_endpoint,
            keys,
        })
    }

    /// Where to send the browser: the authorization endpoint with this
    /// sign-in's `state`, `nonce` and PKCE challenge.
    pub fn authorization_url(
        &self,
        metadata: &Metadata,
        redirect_uri: &str,
        state: &login::LoginState,
    ) -> String {
        let mut url = metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", &state.state)
            .append_pair("nonce", &state.nonce)
            .append_pair("code_challenge", &state.challenge())
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// Exchanges `code` at the token endpoint and returns the ID token.
    pub async fn exchange(
        &self,
        metadata: &Metadata,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        // Built apart: the serializer must not live across an await.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code_verifier", verifier);
            if self.client_secret.is_none() {
                form.append_pair("client_id", &self.config.client_id);
            }
            form.finish()
        };
        let mut request = self
            .client
            .post(&metadata.token_endpoint)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(secret) = &self.client_secret {
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            request = request.basic_auth(
                form_encode(&self.config.client_id),
                Some(form_encode(secret)),
            );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::TokenEndpoint(crate::error_chain(&e)))?;
        let status = response.status();
        let body = crate::fetch::body_text(response)
            .await
            .map_err(OidcError::TokenEndpoint)?;
        if status != StatusCode::OK {
            let error = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "unknown".into());
            return Err(OidcError::CodeRejected {
                status: status.as_u16(),
                error,
            });
        }
        let tokens: TokenResponse = serde_json::from_str(&body)
            .map_err(|e| OidcError::TokenEndpoint(format!("not a token response: {e}")))?;
        tokens
            .id_token
            .ok_or_else(|| OidcError::TokenEndpoint("no id_token in the response".into()))
    }

    /// Checks `id_token` for this client and this sign-in's `nonce`.
    pub async fn verify_id_token(
        &self,
        metadata: &Metadata,
        id_token: &str,
        nonce: &str,
    ) -> Result<Claims, OidcError> {
        let config = &self.config;
        let claims = metadata
            .keys
            .verify_with(|keys| {
                crate::jwt::verify_id_token(
                    id_token,
                    keys,
                    &config.issuer,
                    &config.client_id,
                    config.leeway.as_secs(),
                )
            })
            .await
            .map_err(|e| match e {
                crate::jwt::certs::CertsError::Token(e) => OidcError::IdToken(e),
                other => OidcError::Keys(crate::error_chain(&other)),
            })?;
        let audiences = match claims.other.get("aud") {
            Some(Value::Array(list)) => list.len(),
            _ => 1,
        };
        match claims.other.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != config.client_id => return Err(OidcError::AuthorizedParty),
            None if audiences > 1 => return Err(OidcError::AuthorizedParty),
            _ => {}
        }
        let token_nonce = claims.other.get("nonce").and_then(Value::as_str);
        if !token_nonce.is_some_and(|n| login::same_secret(n, nonce)) {
            return Err(OidcError::Nonce);
        }
        Ok(claims)
    }

    /// The identity a session carries, from verified ID-token claims: `sub`,
    /// the email (only when the provider does not say it is unverified),
    /// the groups, `amr`, the provider, and the configured extra claims.
    pub fn session_identity(&self, claims: &Claims) -> Map<String, Value> {
        let config = &self.config;
        // `email` is parsed into its own field; every other claim is in
        // `other`.
        let claim = |name: &str| claims.other.get(name);
        let mut identity = Map::new();
        identity.insert("sub".into(), json!(claims.sub));
        let email = match config.email_claim.as_str() {
            "email" => claims.email.clone(),
            name => claim(name).and_then(Value::as_str).map(str::to_owned),
        };
        let verified = claims.other.get("email_verified") != Some(&Value::Bool(false));
        if let Some(email) = email.filter(|_| verified) {
            identity.insert("email".into(), json!(email));
        }
        let groups: Vec<&str> = match claim(&config.groups_claim) {
            Some(Value::String(group)) => vec![group.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        identity.insert("groups".into(), json!(groups));
        if let Some(amr) = claims.other.get("amr") {
            identity.insert("amr".into(), amr.clone());
        }
        identity.insert(
            "idp".into(),
            json!({"type": "oidc", "id": config.name, "issuer": config.issuer}),
        );
        for name in &config.claims {
            if let Some(value) = claim(name) {
                identity.insert(name.clone(), value.clone());
            }
        }
        identity
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
