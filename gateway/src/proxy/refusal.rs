//! Every way the gateway refuses a request, mapped to its status, its audit
//! reason and its response body in this one place.
//!
//! Bodies never echo anything the client sent and never carry a token or a
//! secret: a short title, the request id, and for browsers a minimal page.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::Body;
use crate::{
    credentials::CredentialError,
    jwt::{JwtError, certs::CertsError},
};

/// Why a request was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed or ambiguous (path, host, framing); the
    /// reason names what.
    BadRequest(&'static str),
    /// The TLS server name and the `Host` differ.
    Misdirected,
    /// No application is configured for this host and path.
    NoApp,
    /// No credentials were presented and no Bypass policy matched.
    NoCredentials,
    /// Credentials were presented and failed; the reason names how.
    BadCredentials(&'static str),
    /// Valid credentials, but the policies refuse (`policy_block` or
    /// `policy_no_match`).
    Forbidden(&'static str),
    /// A sign-in callback that cannot complete; the reason names why
    /// (state, code, ID token).
    SignInFailed(&'static str),
    /// No signing keys could ever be loaded: fail closed.
    KeysUnavailable,
    /// The identity provider cannot be reached for a sign-in.
    ProviderUnavailable,
    /// The audit log cannot take the decision (fail-closed overflow).
    AuditUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream could not be reached or answered with broken HTTP.
    UpstreamFailed,
}

impl Refusal {
    /// The status sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoApp => StatusCode::NOT_FOUND,
            Refusal::NoCredentials | Refusal::BadCredentials(_) | Refusal::SignInFailed(_) => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::KeysUnavailable | Refusal::AuditUnavailable | Refusal::ProviderUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::UpstreamFailed => StatusCode::BAD_GATEWAY,
        }
    }

    /// The machine-readable reason recorded in the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadRequest(reason)
            | Refusal::BadCredentials(reason)
            | Refusal::SignInFailed(reason)
            | Refusal::Forbidden(reason) => reason,
            Refusal::Misdirected => "sni_host_mismatch",
            Refusal::NoApp => "no_app",
            Refusal::NoCredentials => "no_credentials",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::ProviderUnavailable => "provider_unavailable",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamFailed => "upstream_failed",
        }
    }

    /// Whether the connection must be closed after the response: after a
    /// framing problem the next bytes on it cannot be trusted.
    fn closes(self) -> bool {
        matches!(self, Refusal::BadRequest(_))
    }

    /// The response: JSON for API clients, a small page for browsers.
    pub fn response(self, request_id: &str, wants_html: bool) -> Response<Body> {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let (content_type, body) = if wants_html {
            (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\
                     <body><h1>{code} {title}</h1><p>{hint}</p><p><small>Request id: {request_id}</small></p></body></html>\n",
                    code = status.as_u16(),
                    hint = self.hint(),
                ),
            )
        } else {
            (
                "application/json",
                serde_json::json!({
                    "status": status.as_u16(),
                    "error": self.reason(),
                    "request_id": request_id,
                })
                .to_string()
                    + "\n",
            )
        };
        let mut response = Response::new(super::full_body(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(super::forward::REQUEST_ID, id);
        }
        if self.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    fn hint(self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "The request could not be understood.",
            Refusal::Misdirected => "This connection is for another host.",
            Refusal::NoApp => "No application is served here.",
            Refusal::NoCredentials | Refusal::BadCredentials(_) => {
                "Sign in through your organization's access portal to reach this application."
            }
            Refusal::SignInFailed(_) => {
                "Signing in did not complete. Go back to the application to try again."
            }
            Refusal::Forbidden(_) => {
                "You are signed in, but not allowed to reach this application."
            }
            Refusal::ProviderUnavailable => {
                "The sign-in service cannot be reached. Try again shortly."
            }
            Refusal::KeysUnavailable | Refusal::AuditUnavailable => {
                "The gateway cannot check requests right now. Try again shortly."
            }
            Refusal::UpstreamTimeout | Refusal::UpstreamFailed => {
                "The application did not answer. Try again shortly."
            }
        }
    }
}

impl From<CredentialError> for Refusal {
    fn from(error: CredentialError) -> Self {
        Refusal::BadCredentials(match error {
            CredentialError::Duplicate(_) | CredentialError::DuplicateCookie(_) => {
                "credential_duplicate"
            }
            CredentialError::Malformed(_) => "credential_malformed",
            CredentialError::Partial => "service_token_partial",
            CredentialError::Ambiguous => "credential_ambiguous",
        })
    }
}

impl From<&JwtError> for Refusal {
    fn from(error: &JwtError) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        Refusal::BadCredentials(match error {
            JwtError::CertsFormat(_) | JwtError::NoKeys => "jwt_invalid",
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::ForbiddenHeader(_) => "jwt_forbidden_header",
            JwtError::NoKid | JwtError::UnknownKid(_) => "jwt_unknown_key",
            JwtError::AlgorithmMismatch { .. } => "jwt_algorithm",
            JwtError::WrongType { .. } => "jwt_wrong_type",
            JwtError::Invalid(error) => match error.kind() {
                ErrorKind::ExpiredSignature => "jwt_expired",
                ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
                ErrorKind::InvalidAudience => "jwt_wrong_audience",
                ErrorKind::InvalidIssuer => "jwt_wrong_issuer",
                ErrorKind::InvalidSignature => "jwt_bad_signature",
                ErrorKind::MissingRequiredClaim(_) => "jwt_missing_claim",
                _ => "jwt_invalid",
            },
        })
    }
}

impl From<&CertsError> for Refusal {
    fn from(error: &CertsError) -> Self {
        match error {
            CertsError::NoKeys { .. } | CertsError::Fetch { .. } | CertsError::Document { .. } => {
                Refusal::KeysUnavailable
            }
            CertsError::Token(error) => error.into(),
        }
    }
}
