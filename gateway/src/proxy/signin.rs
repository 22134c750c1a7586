//! Browser sign-in on every app host that lists providers in `login`
//! (the OpenID Connect side is [`crate::oidc`]):
//!
//! - a browser (`Accept: text/html`, GET or HEAD, no API credentials)
//!   without a valid session is sent to the app's provider, or to the
//!   picker at [`LOGIN_PATH`] when the app has several; API clients get the
//!   401 JSON instead;
//! - [`LOGIN_PATH`]`?redirect=/path[&provider=name]` starts a sign-in (or
//!   shows the picker); the return path must pass
//!   [`login::safe_return_path`], or nothing starts (400);
//! - [`CALLBACK_PATH`] finishes it: the sealed state from the browser's
//!   cookie must match the provider's `state`, the code is exchanged, the ID
//!   token checked; then the gateway signs a session (`CF_Authorization`,
//!   host-only, the app's path, HttpOnly, SameSite=Lax, Secure over TLS)
//!   and sends the browser back;
//! - [`LOGOUT_PATH`] signs the session out (its `jti` is refused until it
//!   expires) and clears the cookies of the host's apps.
//!
//! Each is one audit event: `login_required`, `login`, `logout`, or the
//! reason a callback failed.

use std::time::Instant;

use analytics::{Decision, Event};
use http::{HeaderValue, Method, Response, StatusCode, header, request::Parts};

use super::{Body, Gateway, Snapshot, identity, refusal::Refusal};
use crate::{
    config::App,
    credentials,
    jwt::JwtError,
    oidc::{
        OidcError, Provider,
        login::{self, LOGIN_COOKIE, LOGIN_TTL_SECS, LoginState, LoginStateError},
    },
};

/// Starts a sign-in, or shows the provider picker.
pub const LOGIN_PATH: &str = "/cdn-cgi/access/login";
/// Where providers send browsers back (register
/// `https://<app hostname>/cdn-cgi/access/callback` at the provider).
pub const CALLBACK_PATH: &str = "/cdn-cgi/access/callback";
/// Signs the session out.
pub const LOGOUT_PATH: &str = "/cdn-cgi/access/logout";
/// The login cookie is sent back only to the sign-in endpoints.
const LOGIN_COOKIE_PATH: &str = "/cdn-cgi/access/";

/// A request to one of the sign-in endpoints, or a browser to sign in.
pub struct SignIn<'a> {
    /// Shared state.
    pub gateway: &'a Gateway,
    /// Apps and providers in force.
    pub snapshot: &'a Snapshot,
    /// The request head.
    pub parts: &'a Parts,
    /// The normalized host.
    pub host: &'a str,
    /// The `Host` as sent (with any port), for the callback URL.
    pub host_header: &'a str,
    /// Whether the connection is TLS (cookies are then `Secure`).
    pub tls: bool,
    /// Whether the client is a browser (takes HTML).
    pub wants_html: bool,
}

/// A `Set-Cookie` value: host-only (no `Domain`), HttpOnly, SameSite=Lax,
/// Secure over TLS. `max_age` 0 deletes the cookie.
pub fn cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn redirect(location: &str) -> Result<Response<Body>, Refusal> {
    let mut response = Response::new(super::full_body(""));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(location).map_err(|_| Refusal::BadRequest("bad_redirect"))?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(super::full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

/// Text made safe inside HTML, attribute values included.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The single value of query parameter `name`; a repeated one is refused.
fn param(parts: &Parts, name: &str) -> Result<Option<String>, Refusal> {
    let mut found = None;
    for (key, value) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(Refusal::BadRequest("duplicate_parameter"));
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

fn login_url(return_to: &str, provider: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("redirect", return_to);
    if let Some(provider) = provider {
        query.append_pair("provider", provider);
    }
    format!("{LOGIN_PATH}?{}", query.finish())
}

impl SignIn<'_> {
    /// Whether a refused request should be sent to sign in rather than get
    /// a 401: a browser navigating (GET or HEAD, HTML accepted) to an app
    /// with providers, carrying no API credentials.
    pub fn should_sign_in(&self, app: &App) -> bool {
        let parts = self.parts;
        !app.login.is_empty()
            && self.wants_html
            && matches!(parts.method, Method::GET | Method::HEAD)
            && !parts.headers.contains_key(&credentials::JWT_HEADER)
            && !parts.headers.contains_key(&credentials::CLIENT_ID_HEADER)
    }

    /// Serves `path` if it is a sign-in endpoint; `None` otherwise (also
    /// when no provider is configured: the path then belongs to the apps).
    pub async fn serve(
        &self,
        path: &str,
        event: &mut Event,
    ) -> Option<Result<(Response<Body>, Decision), Refusal>> {
        if self.snapshot.providers.is_empty() {
            return None;
        }
        Some(match path {
            LOGIN_PATH => self.login(event).await,
            CALLBACK_PATH => Ok(self.callback(event).await),
            LOGOUT_PATH => self.logout(event),
            _ => return None,
        })
    }

    /// Sends a browser that needs a session to sign in to `app`, returning
    /// afterwards to `path` (normalized) and the request's query.
    pub async fn require(
        &self,
        app: &App,
        path: &str,
        event: &mut Event,
    ) -> Result<(Response<Body>, Decision), Refusal> {
        let return_to = match self.parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        // The path is normalized already; a query that is not plain ASCII
        // returns to the bare path.
        let return_to = login::safe_return_path(&return_to).unwrap_or(path);
        event.reason = "login_required".into();
        let response = match app.login.as_slice() {
            [only] => self.begin(app, only, return_to).await?,
            _ => redirect(&login_url(return_to, None))?,
        };
        Ok((response, Decision::Deny))
    }

    /// [`LOGIN_PATH`]: the picker, or the redirect to the provider.
    async fn login(&self, event: &mut Event) -> Result<(Response<Body>, Decision), Refusal> {
        let return_to = param(self.parts, "redirect")?.unwrap_or_else(|| "/".into());
        let return_to = login::safe_return_path(&return_to)
            .ok_or(Refusal::BadRequest("bad_redirect"))?
            .to_owned();
        let path = return_to.split('?').next().unwrap_or("/");
        let app = self
            .snapshot
            .route(self.host, path)
            .filter(|app| !app.login.is_empty())
            .ok_or(Refusal::NoApp)?;
        event.app = Some(app.name.clone());
        event.reason = "login_required".into();
        let chosen = param(self.parts, "provider")?;
        let response = match (chosen.as_deref(), app.login.as_slice()) {
            (Some(name), _) if app.login.iter().any(|p| p == name) => {
                self.begin(app, name, &return_to).await?
            }
            (Some(_), _) => return Err(Refusal::BadRequest("unknown_provider")),
            (None, [only]) => self.begin(app, only, &return_to).await?,
            (None, _) => self.picker(app, &return_to),
        };
        Ok((response, Decision::Deny))
    }

    fn picker(&self, app: &App, return_to: &str) -> Response<Body> {
        let links: String = app
            .login
            .iter()
            .filter_map(|name| self.snapshot.provider(name))
            .map(|provider| {
                format!(
                    "<li><a href=\"{}\">{}</a></li>",
                    escape(&login_url(return_to, Some(&provider.config.name))),
                    escape(&provider.config.display_name)
                )
            })
            .collect();
        html(
            StatusCode::OK,
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in</title></head>\
                 <body><h1>Sign in to {}</h1><ul>{links}</ul></body></html>\n",
                escape(&app.name)
            ),
        )
    }

    /// Redirects to `provider` with a fresh sealed state in the cookie.
    async fn begin(
        &self,
        app: &App,
        provider: &str,
        return_to: &str,
    ) -> Result<Response<Body>, Refusal> {
        let provider = self
            .snapshot
            .provider(provider)
            .ok_or(Refusal::ProviderUnavailable)?;
        let metadata = provider.metadata().await.map_err(|e| {
            tracing::warn!(provider = %provider.config.name, error = %crate::error_chain(&e), "sign-in unavailable");
            Refusal::ProviderUnavailable
        })?;
        let state = LoginState::new(
            &app.name,
            &provider.config.name,
            self.host_header,
            return_to,
            crate::unix_now(),
        );
        let location = provider.authorization_url(&metadata, &self.callback_url(), &state);
        let mut response = redirect(&location)?;
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(
                LOGIN_COOKIE,
                &self.gateway.sealer.seal(&state),
                LOGIN_COOKIE_PATH,
                LOGIN_TTL_SECS,
                self.tls,
            ),
        );
        Ok(response)
    }

    fn callback_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{CALLBACK_PATH}", self.host_header)
    }

    /// [`CALLBACK_PATH`]: whatever happens, the login cookie is cleared.
    async fn callback(&self, event: &mut Event) -> (Response<Body>, Decision) {
        let outcome = self.finish(event).await;
        let (mut response, decision) = match outcome {
            Ok(response) => (response, Decision::Allow),
            Err(refusal) => {
                event.reason = refusal.reason().into();
                let request_id = event.request_id.clone().unwrap_or_default();
                (
                    refusal.response(&request_id, self.wants_html),
                    Decision::Deny,
                )
            }
        };
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(LOGIN_COOKIE, "", LOGIN_COOKIE_PATH, 0, self.tls),
        );
        (response, decision)
    }

    async fn finish(&self, event: &mut Event) -> Result<Response<Body>, Refusal> {
        let sealed = credentials::single_cookie(&self.parts.headers, LOGIN_COOKIE)
            .map_err(|_| Refusal::SignInFailed("login_state_duplicate"))?
            .ok_or(Refusal::SignInFailed("login_no_state"))?;
        let state = self
            .gateway
            .sealer
            .open(&sealed, crate::unix_now())
            .map_err(|e| match e {
                LoginStateError::Expired => Refusal::SignInFailed("login_expired"),
                LoginStateError::Unreadable => Refusal::SignInFailed("login_state_invalid"),
            })?;
        event.app = Some(state.app.clone().into());
        let returned = param(self.parts, "state")?.unwrap_or_default();
        if !login::same_secret(&returned, &state.state) || state.host != self.host_header {
            return Err(Refusal::SignInFailed("login_state_mismatch"));
        }
        if param(self.parts, "error")?.is_some() {
            return Err(Refusal::SignInFailed("login_provider_error"));
        }
        let code = param(self.parts, "code")?.ok_or(Refusal::SignInFailed("login_no_code"))?;
        let app = self
            .snapshot
            .config
            .apps
            .iter()
            .find(|a| a.name == state.app && a.hostname == self.host)
            .filter(|a| a.login.contains(&state.provider))
            .ok_or(Refusal::SignInFailed("login_state_invalid"))?;
        let provider = self
            .snapshot
            .provider(&state.provider)
            .ok_or(Refusal::SignInFailed("login_state_invalid"))?;

        let waited = Instant::now();
        let claims = self.redeem(provider, &code, &state).await;
        self.gateway
            .metrics
            .record_provider(&provider.config.name, waited.elapsed().as_secs_f64());
        let claims = claims.map_err(|e| {
            tracing::debug!(provider = %provider.config.name, error = %crate::error_chain(&e), "sign-in refused");
            sign_in_refusal(&e)
        })?;

        let identity = provider.session_identity(&claims);
        event.subject = Some(claims.sub.clone());
        event.email = identity
            .get("email")
            .and_then(|e| e.as_str())
            .map(str::to_owned);
        event.auth_method = Some("oidc".into());
        event.token_issuer = Some(claims.iss.clone());
        event.key_id = Some(claims.key_id.clone());
        let sessions = self
            .gateway
            .sessions
            .as_ref()
            .ok_or(Refusal::KeysUnavailable)?;
        let (token, _) = sessions
            .issue_user(
                &identity::session_audience(app),
                identity,
                app.session_lifetime.as_secs(),
                crate::unix_now(),
            )
            .map_err(|_| Refusal::KeysUnavailable)?;
        event.reason = "login".into();
        let mut response = redirect(&state.return_to)?;
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(
                credentials::JWT_COOKIE,
                &token,
                &app.path,
                app.session_lifetime.as_secs(),
                self.tls,
            ),
        );
        Ok(response)
    }

    async fn redeem(
        &self,
        provider: &Provider,
        code: &str,
        state: &LoginState,
    ) -> Result<crate::jwt::Claims, OidcError> {
        let metadata = provider.metadata().await?;
        let id_token = provider
            .exchange(&metadata, code, &self.callback_url(), &state.verifier)
            .await?;
        provider
            .verify_id_token(&metadata, &id_token, &state.nonce)
            .await
    }

    /// [`LOGOUT_PATH`]: revokes the session if one is presented and clears
    /// the session cookies of every signing-in app on this host.
    fn logout(&self, event: &mut Event) -> Result<(Response<Body>, Decision), Refusal> {
        let apps: Vec<&App> = self
            .snapshot
            .config
            .apps
            .iter()
            .filter(|a| a.hostname == self.host && !a.login.is_empty())
            .collect();
        if apps.is_empty() {
            return Err(Refusal::NoApp);
        }
        event.reason = "logout".into();
        if let (Some(sessions), Ok(Some((_, token)))) = (
            &self.gateway.sessions,
            credentials::relay_token(&self.parts.headers, true),
        ) {
            let now = crate::unix_now();
            let signed_in = apps.iter().find_map(|app| {
                let claims = sessions
                    .verify(&token, &identity::session_audience(app))
                    .ok()?;
                Some((app, claims))
            });
            if let Some((app, claims)) = signed_in {
                if let Some(jti) = claims.other.get("jti").and_then(|j| j.as_str()) {
                    sessions.revoke(jti, claims.exp, now);
                }
                event.app = Some(app.name.clone());
                event.subject = Some(claims.sub.clone());
                event.email = claims.email.clone();
            }
        }
        let mut response = if self.wants_html {
            html(
                StatusCode::OK,
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed out</title></head>\
                     <body><h1>You are signed out</h1><p><a href=\"{}\">Sign in again</a></p></body></html>\n",
                    escape(&login_url(&apps[0].path, None))
                ),
            )
        } else {
            let mut response = Response::new(super::full_body("{\"status\":\"signed_out\"}\n"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        };
        for app in &apps {
            response.headers_mut().append(
                header::SET_COOKIE,
                cookie(credentials::JWT_COOKIE, "", &app.path, 0, self.tls),
            );
        }
        Ok((response, Decision::Allow))
    }
}

/// The audit reason of a failed code exchange or ID token.
fn sign_in_refusal(error: &OidcError) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match error {
        OidcError::Secret { .. }
        | OidcError::Discovery { .. }
        | OidcError::TokenEndpoint(_)
        | OidcError::Keys(_) => Refusal::ProviderUnavailable,
        OidcError::CodeRejected { .. } => Refusal::SignInFailed("login_code_rejected"),
        OidcError::Nonce => Refusal::SignInFailed("login_nonce_mismatch"),
        OidcError::AuthorizedParty => Refusal::SignInFailed("login_token_audience"),
        OidcError::IdToken(JwtError::Invalid(e)) => Refusal::SignInFailed(match e.kind() {
            ErrorKind::ExpiredSignature => "login_token_expired",
            ErrorKind::ImmatureSignature => "login_token_not_yet_valid",
            ErrorKind::InvalidAudience => "login_token_audience",
            ErrorKind::InvalidIssuer => "login_token_issuer",
            ErrorKind::InvalidSignature => "login_token_signature",
            _ => "login_token_invalid",
        }),
        OidcError::IdToken(_) => Refusal::SignInFailed("login_token_invalid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_covers_attributes() {
        assert_eq!(
            escape("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn cookies_are_host_only_http_only_and_lax() {
        let value = cookie("CF_Authorization", "t", "/wiki", 60, true);
        assert_eq!(
            value.to_str().unwrap(),
            "CF_Authorization=t; Path=/wiki; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!value.to_str().unwrap().contains("Domain"));
    }
}
