//! From a request's credentials to a verified identity.
//!
//! Sources, each verified on its own; when several are present, every one
//! must be valid:
//! - the relay's JWT (header, or the cookie when the app enables it);
//! - a session JWT the gateway itself signed (header or cookie), after a
//!   service-token exchange; its service token must still be valid;
//! - service-token headers, checked against the local store.
//!
//! A relay token with an empty `sub` and a `common_name` is the relay's
//! service-token session: it identifies a service token, not a user.

use std::{borrow::Cow, sync::Arc};

use analytics::Label;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

use super::{Gateway, Snapshot, refusal::Refusal};
use crate::{
    config::App,
    credentials::{self, TokenSource},
    jwt::{Claims, verified::TokenKey},
    policy::eval::{ClaimValue, ServiceToken, User},
};

/// Who a request is, once verified.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The signed-in user.
    pub user: Option<User>,
    /// The service token.
    pub service_token: Option<ServiceToken>,
    /// `jwt`, `cookie`, `service_token` or `gateway_session`.
    pub method: &'static str,
    /// The verified JWT, forwarded upstream in the assertion header.
    pub token: Option<String>,
    /// Its issuer.
    pub issuer: Option<Label>,
    /// Its key id.
    pub key_id: Option<Label>,
    /// Country claim.
    pub country: Option<Label>,
    /// The user's email as a header value (checked to be a plain address).
    pub email_header: Option<HeaderValue>,
    /// Service-token headers were verified: exchange them for a session.
    pub exchange: bool,
}

/// The audience the gateway's sessions carry for `app`.
pub fn session_audience(app: &App) -> String {
    app.aud
        .clone()
        .unwrap_or_else(|| format!("app:{}", app.name))
}

/// The unverified `iss` of a token, to pick which verifier to use. Nothing
/// else is read from an unverified token.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// Verifies every credential in `headers` for `app`. `Ok(None)` when the
/// request carries none.
pub async fn authenticate(
    gateway: &Gateway,
    snapshot: &Snapshot,
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<Identity>, Refusal> {
    let service = credentials::service_token(headers, app.service_token_header.as_ref())?;
    let sessions = gateway.sessions.as_ref();
    let jwt = credentials::relay_token(headers, app.cookie || sessions.is_some())?;
    if service.is_none() && jwt.is_none() {
        return Ok(None);
    }
    let now = crate::unix_now();
    let mut identity = Identity::default();

    if let Some((source, token)) = jwt {
        let claims = verify_token(gateway, snapshot, app, source, &token, now).await?;
        let session = sessions.filter(|s| s.issuer() == claims.iss);
        if let Some(sessions) = session
            && let Some(jti) = claims.other.get("jti").and_then(|j| j.as_str())
            && sessions.is_revoked(jti)
        {
            return Err(Refusal::BadCredentials("session_signed_out"));
        }
        let session = session.is_some();
        identity.method = match (session, source) {
            (true, _) => "gateway_session",
            (false, TokenSource::Header) => "jwt",
            (false, TokenSource::Cookie) => "cookie",
        };
        if claims.sub.is_empty() {
            let Some(client_id) = claims.common_name.clone() else {
                return Err(Refusal::BadCredentials("jwt_no_subject"));
            };
            if identity.method == "gateway_session" {
                // A session lives no longer than the token it was made from.
                gateway
                    .tokens
                    .current()
                    .still_valid(&client_id, now)
                    .map_err(|_| Refusal::BadCredentials("service_token_refused"))?;
            }
            identity.service_token = Some(ServiceToken {
                name: client_id.clone(),
                client_id,
            });
        } else {
            identity.email_header = match &claims.email {
                None => None,
                Some(email) => {
                    Some(plain_email(email).ok_or(Refusal::BadCredentials("jwt_bad_email"))?)
                }
            };
            identity.user = Some(user(&claims));
        }
        identity.country = claims.country.clone();
        identity.issuer = Some(claims.iss.clone());
        identity.key_id = Some(claims.key_id.clone());
        identity.token = Some(token);
    }

    if let Some(presented) = service {
        let store = gateway.tokens.current();
        let token = store
            .verify(&presented.client_id, &presented.client_secret, now)
            .map_err(|_| Refusal::BadCredentials("service_token_refused"))?;
        if identity
            .service_token
            .as_ref()
            .is_some_and(|t| t.client_id != token.client_id)
        {
            return Err(Refusal::BadCredentials("credential_ambiguous"));
        }
        identity.service_token = Some(ServiceToken {
            client_id: token.client_id.clone().into(),
            name: token.name.clone().into(),
        });
        if identity.method.is_empty() {
            identity.method = "service_token";
        }
        identity.exchange = identity.token.is_none();
    }
    Ok(Some(identity))
}

/// The claims of a relay or session token that is valid for `app`: from
/// the verified-token cache when it was checked before, else verified now
/// (by the gateway's own keys when its unverified `iss` is the gateway's,
/// otherwise by the relay's) and remembered.
async fn verify_token(
    gateway: &Gateway,
    snapshot: &Snapshot,
    app: &App,
    source: TokenSource,
    token: &str,
    now: u64,
) -> Result<Arc<Claims>, Refusal> {
    let key = TokenKey::of(token);
    let cached = gateway.verified.get(&key, now);
    let unverified;
    let issuer = match &cached {
        Some(claims) => &*claims.iss,
        None => {
            unverified =
                unverified_issuer(token).ok_or(Refusal::BadCredentials("jwt_malformed"))?;
            unverified.as_str()
        }
    };
    // The gateway's own sessions, when the token names the gateway.
    let sessions = gateway.sessions.as_ref().filter(|s| s.issuer() == issuer);
    let audience: Cow<str> = match sessions {
        Some(_) => session_audience(app).into(),
        None => {
            if source == TokenSource::Cookie && !app.cookie {
                return Err(Refusal::BadCredentials("cookie_not_enabled"));
            }
            if snapshot.relay.is_none() {
                return Err(Refusal::BadCredentials("jwt_wrong_issuer"));
            }
            app.aud
                .as_deref()
                .ok_or(Refusal::BadCredentials("jwt_wrong_audience"))?
                .into()
        }
    };
    if let Some(claims) = cached {
        // Cached by token hash: a token verified for one app must still
        // name this app's audience.
        if claims_have_audience(&claims, &audience) {
            return Ok(claims);
        }
    }
    let claims = match sessions {
        Some(sessions) => sessions
            .verify(token, &audience)
            .map_err(|e| Refusal::from(&e))?,
        None => {
            let Some(relay) = snapshot.relay.as_ref() else {
                return Err(Refusal::BadCredentials("jwt_wrong_issuer"));
            };
            let expect = relay
                .expectations
                .get(&*audience)
                .ok_or(Refusal::BadCredentials("jwt_wrong_audience"))?;
            relay
                .certs
                .verify(token, expect)
                .await
                .map_err(|e| Refusal::from(&e))?
        }
    };
    let claims = Arc::new(claims);
    gateway.verified.insert(key, claims.clone());
    Ok(claims)
}

fn claims_have_audience(claims: &Claims, audience: &str) -> bool {
    match claims.other.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// The email as a header value: one `@`, printable ASCII only.
fn plain_email(email: &str) -> Option<HeaderValue> {
    let (local, host) = email.split_once('@')?;
    if local.is_empty()
        || host.is_empty()
        || host.contains('@')
        || !email.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    HeaderValue::from_str(email).ok()
}

/// The policy model's view of a user's claims.
fn user(claims: &Claims) -> User {
    let strings = |value: &serde_json::Value| -> Option<ClaimValue> {
        match value {
            serde_json::Value::String(text) => Some(ClaimValue::Text(text.clone())),
            serde_json::Value::Array(items) => Some(ClaimValue::List(
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect(),
            )),
            _ => None,
        }
    };
    let list = |name: &str| match claims.other.get(name).and_then(strings) {
        Some(ClaimValue::List(items)) => items,
        Some(ClaimValue::Text(text)) => vec![text],
        None => Vec::new(),
    };
    User {
        email: claims.email.clone(),
        subject: claims.sub.clone(),
        groups: list("groups"),
        auth_methods: list("amr"),
        claims: claims
            .other
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), strings(value)?)))
            .collect(),
    }
}
