//! The upstream side: which headers the application may see, the pooled
//! client, and WebSocket/Upgrade tunnelling.
//!
//! Header hygiene, in order:
//! 1. hop-by-hop headers and every header the client's `Connection` names
//!    are removed (they concern this hop only);
//! 2. every header the gateway manages (identity, relay, forwarding) is
//!    removed, whatever its spelling: names are compared after lowercasing
//!    and turning `_` and `.` into `-`, so `X_Forwarded_For` or
//!    `CF.Access.Authenticated.User.Email` cannot slip through;
//! 3. the gateway's own values are added: `X-Forwarded-*` rebuilt from what
//!    it verified, the verified assertion, the user's email, the request id.
//!
//! Managed headers are added after the `Connection` list is applied, so a
//! client cannot make the gateway drop them by naming them there.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::Body;

/// `X-Request-Id`: the id the client, the audit log and the upstream share.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers meaningful for one hop only (RFC 9110 §7.6.1, plus the
/// de-facto ones).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers only the gateway may set, in normalized spelling.
const MANAGED: [&str; 17] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-server",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-ipcountry",
    "x-request-id",
];

/// Prefixes only the gateway may set: every Access header, including the
/// service-token secret, and the gateway's own.
const MANAGED_PREFIXES: [&str; 2] = ["cf-access-", "x-gateway-"];

/// A header-name byte as the most lenient server might read it.
fn lenient(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether `a` and `b` name the same header to the most lenient server
/// (compared byte by byte: this runs for every header of every request).
fn same_lenient(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| lenient(x) == lenient(y))
}

/// Whether `name` (any spelling) is a header only the gateway sets.
/// `extra` holds the configured relay headers (client IP, country).
pub fn is_managed(name: &str, extra: &[&HeaderName]) -> bool {
    let name = name.as_bytes();
    MANAGED.iter().any(|m| same_lenient(name, m.as_bytes()))
        || MANAGED_PREFIXES.iter().any(|p| {
            name.get(..p.len())
                .is_some_and(|start| same_lenient(start, p.as_bytes()))
        })
        || extra
            .iter()
            .any(|e| same_lenient(name, e.as_str().as_bytes()))
}

/// Removes hop-by-hop headers and those `Connection` names. Returns the
/// `Upgrade` value when the client asked to switch protocols, which the
/// caller forwards only for WebSocket.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let upgrade = listed
        .contains(&header::UPGRADE)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    upgrade
}

/// Removes every managed header, whatever its spelling.
pub fn strip_managed(headers: &mut HeaderMap, extra: &[&HeaderName]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_managed(name.as_str(), extra))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes the `CF_Authorization` cookie, keeping the others.
pub fn strip_auth_cookie(headers: &mut HeaderMap) {
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty()
                && pair.split_once('=').map_or(*pair, |(name, _)| name).trim()
                    != crate::credentials::JWT_COOKIE
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// The pooled HTTP/1.1 client to local applications.
pub type UpstreamClient = Client<HttpConnector, Body>;

/// A client with keep-alive pooling.
pub fn client(pool_idle: Duration, connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn managed_headers_are_stripped_in_every_spelling() {
        let country = HeaderName::from_static("x-country");
        let mut headers = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x.forwarded.host", "evil"),
            ("cf_access_authenticated_user_email", "admin@corp.example"),
            ("cf.access.jwt.assertion", "x"),
            ("cf-access-client-secret", "s"),
            ("x-gateway-user", "admin"),
            ("forwarded", "for=6.6.6.6"),
            ("x-country", "PT"),
            ("x_country", "PT"),
            ("accept", "*/*"),
            ("authorization", "Bearer app-token"),
        ]);
        strip_managed(&mut headers, &[&country]);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "authorization"]);
    }

    #[test]
    fn managed_names_match_in_any_case_and_only_whole() {
        let country = HeaderName::from_static("x-country");
        for name in [
            "X_Forwarded_For",
            "CF.ACCESS.Client.Secret",
            "X.Country",
            "Forwarded",
        ] {
            assert!(is_managed(name, &[&country]), "{name}");
        }
        for name in [
            "x-forwarded-fo",
            "x-forwarded-forx",
            "cf-acces",
            "cf",
            "",
            "x-countryx",
        ] {
            assert!(!is_managed(name, &[&country]), "{name}");
        }
    }

    #[test]
    fn connection_names_are_removed_and_upgrade_is_reported() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret, Upgrade"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("accept", "*/*"),
        ]);
        let upgrade = strip_hop_by_hop(&mut headers);
        assert_eq!(upgrade.unwrap(), "websocket");
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    #[test]
    fn the_auth_cookie_is_removed_and_others_kept() {
        let mut headers = map(&[
            ("cookie", "a=1; CF_Authorization=tok; b=2"),
            ("cookie", "CF_Authorization=x"),
        ]);
        strip_auth_cookie(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(headers[header::COOKIE], "a=1; b=2");
    }
}
