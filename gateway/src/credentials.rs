//! Finding the credentials in a request's headers, strictly: one place for
//! each, never ambiguous.
//!
//! - The relay's token comes from `Cf-Access-Jwt-Assertion`. The
//!   `CF_Authorization` cookie is read only when the app enables it, and only
//!   when the header is absent: a present-but-bad header never falls back to
//!   the cookie.
//! - A service token comes from `CF-Access-Client-Id` + `CF-Access-Client-Secret`
//!   (both or neither), or, when the app names a header for it, from that
//!   header holding `{"cf-access-client-id": "...", "cf-access-client-secret": "..."}`.
//! - A header sent twice, or a value joined with commas (how proxies merge
//!   duplicates), is refused: two values for one credential is an attack or a
//!   bug, and picking one would let the two sides of a proxy disagree.

use http::{HeaderMap, HeaderName, header::COOKIE};

/// `Cf-Access-Jwt-Assertion`. (Header names are `HeaderName`s, not
/// strings: a lookup by string parses and classifies the name on every
/// request.)
pub const JWT_HEADER: HeaderName = HeaderName::from_static("cf-access-jwt-assertion");
/// `CF_Authorization`.
pub const JWT_COOKIE: &str = "CF_Authorization";
/// `CF-Access-Client-Id`.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("cf-access-client-id");
/// `CF-Access-Client-Secret`.
pub const CLIENT_SECRET_HEADER: HeaderName = HeaderName::from_static("cf-access-client-secret");

/// Why the credentials in a request are refused before any check.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The header appears more than once, or holds comma-joined values.
    #[error("`{0}` is present more than once")]
    Duplicate(String),
    /// The cookie appears more than once.
    #[error("cookie `{0}` is present more than once")]
    DuplicateCookie(String),
    /// Empty or not visible ASCII.
    #[error("`{0}` is malformed")]
    Malformed(String),
    /// A client id without a secret, or the reverse.
    #[error("a service token needs both `CF-Access-Client-Id` and `CF-Access-Client-Secret`")]
    Partial,
    /// Both the two-header and the single-header form.
    #[error("service-token credentials are given twice")]
    Ambiguous,
}

/// Where a relay token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// The `Cf-Access-Jwt-Assertion` header.
    Header,
    /// The `CF_Authorization` cookie.
    Cookie,
}

/// A presented service token, not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCredentials {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

/// The single value of `name`, if present: refused when repeated,
/// comma-joined, empty or not visible ASCII. Also used for the relay's
/// client-address and country headers.
pub(crate) fn single_value<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Duplicate(name.as_str().into()));
    }
    // The common case, a value of visible characters only (often a whole
    // JWT), is settled in one pass without an early exit, which the
    // compiler vectorizes (a tenth of the time of `to_str`'s); anything
    // else takes the checks below, in their order.
    let bytes = first.as_bytes();
    let visible = bytes.iter().fold(true, |all, b| all & b.is_ascii_graphic());
    if visible && !bytes.is_empty() {
        let text = std::str::from_utf8(bytes).expect("visible ASCII is UTF-8");
        if text.contains(',') {
            return Err(CredentialError::Duplicate(name.as_str().into()));
        }
        return Ok(Some(text));
    }
    let text = first
        .to_str()
        .map_err(|_| CredentialError::Malformed(name.as_str().into()))?
        .trim();
    if text.contains(',') {
        return Err(CredentialError::Duplicate(name.as_str().into()));
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CredentialError::Malformed(name.as_str().into()));
    }
    Ok(Some(text))
}

/// The value of cookie `name` in any `Cookie` header, refused when it
/// appears twice: a sibling host may have tossed its own, and picking one
/// would let the two sides disagree.
pub(crate) fn single_cookie(
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<String>, CredentialError> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    return Err(CredentialError::DuplicateCookie(name.into()));
                }
                found = Some(value.trim().to_owned());
            }
        }
    }
    Ok(found)
}

/// The relay token of a request. `cookie_enabled` is the app's setting.
pub fn relay_token(
    headers: &HeaderMap,
    cookie_enabled: bool,
) -> Result<Option<(TokenSource, String)>, CredentialError> {
    if let Some(token) = single_value(headers, &JWT_HEADER)? {
        return Ok(Some((TokenSource::Header, token.to_owned())));
    }
    // Any header value, even a malformed one, rules the cookie out.
    if headers.contains_key(&JWT_HEADER) || !cookie_enabled {
        return Ok(None);
    }
    match single_cookie(headers, JWT_COOKIE)? {
        Some(value) if value.is_empty() => Err(CredentialError::Malformed(JWT_COOKIE.into())),
        Some(value) => Ok(Some((TokenSource::Cookie, value))),
        None => Ok(None),
    }
}

/// The service-token credentials of a request; `single_header` is the
/// app's header for the JSON form, if it enables one.
pub fn service_token(
    headers: &HeaderMap,
    single_header: Option<&HeaderName>,
) -> Result<Option<ServiceCredentials>, CredentialError> {
    let id = single_value(headers, &CLIENT_ID_HEADER)?;
    let secret = single_value(headers, &CLIENT_SECRET_HEADER)?;
    let pair = match (id, secret) {
        (Some(id), Some(secret)) => Some(ServiceCredentials {
            client_id: id.to_owned(),
            client_secret: secret.to_owned(),
        }),
        (None, None) => None,
        _ => return Err(CredentialError::Partial),
    };
    let json = match single_header {
        Some(name) => json_credentials(headers, name)?,
        None => None,
    };
    match (pair, json) {
        (Some(_), Some(_)) => Err(CredentialError::Ambiguous),
        (pair, json) => Ok(pair.or(json)),
    }
}

/// `{"cf-access-client-id": "...", "cf-access-client-secret": "..."}` in
/// `name`. Other values of that header (e.g. a `Bearer` Authorization) are
/// not service tokens and are ignored.
fn json_credentials(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<ServiceCredentials>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let Ok(text) = first.to_str() else {
        return Ok(None);
    };
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    if values.next().is_some() {
        return Err(CredentialError::Duplicate(name.as_str().into()));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Json {
        #[serde(rename = "cf-access-client-id")]
        id: String,
        #[serde(rename = "cf-access-client-secret")]
        secret: String,
    }
    let parsed: Json =
        serde_json::from_str(text).map_err(|_| CredentialError::Malformed(name.as_str().into()))?;
    if parsed.id.is_empty() || parsed.secret.is_empty() {
        return Err(CredentialError::Partial);
    }
    Ok(Some(ServiceCredentials {
        client_id: parsed.id,
        client_secret: parsed.secret,
    }))
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, header::AUTHORIZATION};

    use super::*;

    /// Headers, the app setting under test, and the expected outcome.
    type Case<'a, T> = (Vec<(&'a str, &'a str)>, bool, Result<T, CredentialError>);

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn relay_token_sources() {
        use TokenSource::*;
        let cases: Vec<Case<Option<(TokenSource, &str)>>> = vec![
            (vec![], true, Ok(None)),
            (
                vec![("Cf-Access-Jwt-Assertion", "a.b.c")],
                false,
                Ok(Some((Header, "a.b.c"))),
            ),
            (
                vec![("cookie", "x=1; CF_Authorization=d.e.f")],
                true,
                Ok(Some((Cookie, "d.e.f"))),
            ),
            (vec![("cookie", "CF_Authorization=d.e.f")], false, Ok(None)),
            (
                vec![
                    ("Cf-Access-Jwt-Assertion", "a.b.c"),
                    ("cookie", "CF_Authorization=d.e.f"),
                ],
                true,
                Ok(Some((Header, "a.b.c"))),
            ),
            (
                vec![
                    ("Cf-Access-Jwt-Assertion", "a.b.c"),
                    ("Cf-Access-Jwt-Assertion", "g.h.i"),
                ],
                true,
                Err(CredentialError::Duplicate(JWT_HEADER.as_str().into())),
            ),
            (
                vec![("Cf-Access-Jwt-Assertion", "a.b.c, g.h.i")],
                true,
                Err(CredentialError::Duplicate(JWT_HEADER.as_str().into())),
            ),
            (
                vec![("Cf-Access-Jwt-Assertion", "a.b.c,g.h.i")],
                true,
                Err(CredentialError::Duplicate(JWT_HEADER.as_str().into())),
            ),
            (
                vec![("Cf-Access-Jwt-Assertion", " a.b.c\t")],
                true,
                Ok(Some((Header, "a.b.c"))),
            ),
            (
                vec![("Cf-Access-Jwt-Assertion", "a.b c")],
                true,
                Err(CredentialError::Malformed(JWT_HEADER.as_str().into())),
            ),
            (
                // Not ASCII: malformed, whatever else it holds.
                vec![("Cf-Access-Jwt-Assertion", "a.b.c\u{e9}, g")],
                true,
                Err(CredentialError::Malformed(JWT_HEADER.as_str().into())),
            ),
            (
                vec![
                    ("Cf-Access-Jwt-Assertion", " "),
                    ("cookie", "CF_Authorization=d.e.f"),
                ],
                true,
                Err(CredentialError::Malformed(JWT_HEADER.as_str().into())),
            ),
            (
                vec![
                    ("cookie", "CF_Authorization=a"),
                    ("cookie", "CF_Authorization=b"),
                ],
                true,
                Err(CredentialError::DuplicateCookie(JWT_COOKIE.into())),
            ),
            (
                vec![("cookie", "CF_Authorization=a; CF_Authorization=b")],
                true,
                Err(CredentialError::DuplicateCookie(JWT_COOKIE.into())),
            ),
        ];
        for (pairs, cookie, expected) in cases {
            let got = relay_token(&headers(&pairs), cookie);
            let expected = expected.map(|o| o.map(|(s, t)| (s, t.to_owned())));
            assert_eq!(got, expected, "{pairs:?} cookie={cookie}");
        }
    }

    #[test]
    fn service_token_forms() {
        let creds = |id: &str, secret: &str| {
            Some(ServiceCredentials {
                client_id: id.into(),
                client_secret: secret.into(),
            })
        };
        let json = r#"{"cf-access-client-id": "id.access", "cf-access-client-secret": "gwsec_x"}"#;
        let cases: Vec<Case<Option<ServiceCredentials>>> = vec![
            (vec![], false, Ok(None)),
            (
                vec![
                    ("CF-Access-Client-Id", "id.access"),
                    ("CF-Access-Client-Secret", "gwsec_x"),
                ],
                false,
                Ok(creds("id.access", "gwsec_x")),
            ),
            (
                vec![("CF-Access-Client-Id", "id.access")],
                false,
                Err(CredentialError::Partial),
            ),
            (
                vec![("CF-Access-Client-Secret", "gwsec_x")],
                false,
                Err(CredentialError::Partial),
            ),
            (
                vec![
                    ("CF-Access-Client-Id", "id.access"),
                    ("CF-Access-Client-Id", "other.access"),
                    ("CF-Access-Client-Secret", "gwsec_x"),
                ],
                false,
                Err(CredentialError::Duplicate(CLIENT_ID_HEADER.as_str().into())),
            ),
            (
                vec![("Authorization", json)],
                true,
                Ok(creds("id.access", "gwsec_x")),
            ),
            (vec![("Authorization", json)], false, Ok(None)),
            (vec![("Authorization", "Bearer abc")], true, Ok(None)),
            (
                vec![("Authorization", r#"{"cf-access-client-id": "id.access"}"#)],
                true,
                Err(CredentialError::Malformed("authorization".into())),
            ),
            (
                vec![
                    ("Authorization", json),
                    ("CF-Access-Client-Id", "id.access"),
                    ("CF-Access-Client-Secret", "gwsec_x"),
                ],
                true,
                Err(CredentialError::Ambiguous),
            ),
        ];
        for (pairs, single_header, expected) in cases {
            let name = single_header.then_some(&AUTHORIZATION);
            assert_eq!(service_token(&headers(&pairs), name), expected, "{pairs:?}");
        }
    }
}
