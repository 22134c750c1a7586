//! One request, phase by phase:
//!
//! 1. **client**: the client address (the relay's header only from a trusted
//!    relay peer) and the relay's country header;
//! 2. **framing**: host and authority agreement, TLS server name against
//!    `Host` (message framing is hyper's, which refuses malformed lengths);
//! 3. **target**: normalized host and path ([`super::request`]);
//! 4. **route**: the app for host and path; built-in endpoints;
//! 5. **bypass**: Bypass policies, which need no identity, are tried before
//!    any credential is looked at;
//! 6. **identity** ([`super::identity`]) and **policy** evaluation;
//! 7. **audit room**: with the fail-closed policy, no room in the audit
//!    channel refuses the request before anything is forwarded;
//! 8. **forward** ([`super::forward`]): hygiene, session exchange, upstream
//!    request, upgrade tunnel;
//! 9. **record**: one audit event per request, refused or not.
//!
//! A refusal at any phase is an [`Refusal`], turned into a response in one
//! place; refused requests never reach the upstream.

use std::{convert::Infallible, net::IpAddr, sync::Arc, time::Instant};

use analytics::{Decision, Event, Label, Layer, Overflow, Slot};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
    request::Parts,
};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{
    Body, Gateway, Snapshot,
    forward::{self, REQUEST_ID},
    identity::{self, Identity},
    listener::Connection,
    refusal::Refusal,
    request,
    signin::{self, SignIn},
};
use crate::{
    config::App,
    credentials::{self, CredentialError},
    policy::eval::{self, Effect},
};

/// Where the gateway publishes its session keys (Cloudflare's path).
pub const CERTS_PATH: &str = "/cdn-cgi/access/certs";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");
const CF_IPCOUNTRY: HeaderName = HeaderName::from_static("cf-ipcountry");
const USER_EMAIL: HeaderName = HeaderName::from_static("cf-access-authenticated-user-email");

/// Serves one request; never fails (every error is a response).
pub async fn handle(
    gateway: Arc<Gateway>,
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let request_id = new_request_id();
    let snapshot = gateway.snapshot.load_full();
    let wants_html = wants_html(request.headers());
    let mut event = Event {
        time_us: Event::now_us(),
        layer: Some(Layer::Http),
        client_ip: Some(connection.peer.ip().to_canonical()),
        client_port: Some(connection.peer.port()),
        protocol: Some(version_label(request.version())),
        method: Some(method_label(request.method())),
        request_id: Some(request_id.clone()),
        ..Event::default()
    };
    let mut slot = None;
    let outcome = phases(
        &gateway,
        &snapshot,
        &connection,
        request,
        &request_id,
        &mut event,
        &mut slot,
    )
    .await;
    let response = match outcome {
        Ok((response, decision)) => {
            event.decision = Some(decision);
            response
        }
        Err(refusal) => {
            event.decision = Some(Decision::Deny);
            event.reason = refusal.reason().into();
            refusal.response(&request_id, wants_html)
        }
    };
    event.status = Some(response.status().as_u16());
    event.latency_us = Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    event.bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    gateway.metrics.record(
        event.app.as_deref().unwrap_or(""),
        event.decision.map_or("-", Decision::as_str),
        &event.reason,
        started.elapsed().as_secs_f64(),
    );
    debug!(
        request_id = %request_id,
        app = event.app.as_deref().unwrap_or("-"),
        decision = event.decision.map_or("-", Decision::as_str),
        reason = %event.reason,
        status = event.status,
        "request"
    );
    // A refusal is sent whether or not the audit channel has room (a full
    // channel counts it as lost); an allowed request already holds its slot.
    let slot = slot.or_else(|| gateway.audit.reserve(Overflow::CountAndDrop).ok());
    if let Some(slot) = slot {
        slot.send(event);
    }
    Ok(response)
}

async fn phases(
    gateway: &Gateway,
    snapshot: &Snapshot,
    connection: &Connection,
    request: Request<Incoming>,
    request_id: &str,
    event: &mut Event,
    slot: &mut Option<Slot>,
) -> Result<(Response<Body>, Decision), Refusal> {
    let config = &snapshot.config;
    let (mut parts, body) = request.into_parts();

    // 1. client
    let (client_ip, relay_country) = client_address(snapshot, connection, &parts.headers)?;
    event.client_ip = Some(client_ip);

    // 2-3. framing and target. Message framing itself (Content-Length and
    // Transfer-Encoding, chunk sizes) is hyper's: it refuses malformed
    // values and closes the connection after a request that had both.
    let (host, host_header) = request_host(&parts)?;
    event.hostname = Some(host.clone().into());
    if connection.tls
        && let Some(sni) = &connection.sni
        && *sni != host
    {
        return Err(Refusal::Misdirected);
    }
    let path =
        request::normalize_path(parts.uri.path()).map_err(|_| Refusal::BadRequest("bad_path"))?;
    event.path = Some(path.clone());

    // 4. route: sign-in endpoints, the certs document, then the apps
    let sign_in = SignIn {
        gateway,
        snapshot,
        parts: &parts,
        host: &host,
        host_header: host_header.to_str().unwrap_or_default(),
        tls: connection.tls,
        wants_html: wants_html(&parts.headers),
    };
    if let Some(outcome) = sign_in.serve(&path, event).await {
        return outcome;
    }
    if path == CERTS_PATH
        && let Some(sessions) = &gateway.sessions
    {
        event.reason = "certs_document".into();
        return Ok((
            certs_response(sessions.certs_json(), request_id),
            Decision::Allow,
        ));
    }
    let app = snapshot.route(&host, &path).ok_or(Refusal::NoApp)?;
    event.app = Some(app.name.clone());
    // The same name, kept once for the process rather than copied.
    event.hostname = Some(app.hostname.clone());

    // 5. bypass, 6. identity and policy
    let anonymous = eval::Request {
        user: None,
        service_token: None,
        client_ip,
        country: relay_country.as_deref(),
    };
    let bypass = eval::evaluate(&app.policies, &anonymous);
    let (identity, decision) = if bypass.effect == Effect::Bypass {
        (None, bypass)
    } else {
        let identity = match identity::authenticate(gateway, snapshot, app, &parts.headers).await {
            // Two session cookies (one tossed by a sibling host) would
            // come back after signing in: refused, not a redirect loop.
            Err(refusal @ Refusal::BadCredentials(reason))
                if reason != "credential_duplicate" && sign_in.should_sign_in(app) =>
            {
                debug!(
                    reason = refusal.reason(),
                    "credentials refused; signing in again"
                );
                return sign_in.require(app, &path, event).await;
            }
            other => other?,
        };
        if let Some(identity) = &identity {
            record_identity(event, identity);
        }
        let country = identity
            .as_ref()
            .and_then(|i| i.country.clone())
            .or(relay_country);
        event.country = country.clone();
        let evaluated = eval::evaluate(
            &app.policies,
            &eval::Request {
                user: identity.as_ref().and_then(|i| i.user.as_ref()),
                service_token: identity.as_ref().and_then(|i| i.service_token.as_ref()),
                client_ip,
                country: country.as_deref(),
            },
        );
        (identity, evaluated)
    };
    event.policy = decision.policy.cloned();
    event.rule = decision.include.and_then(|i| u32::try_from(i).ok());
    match decision.effect {
        Effect::Allow | Effect::ServiceAuth | Effect::Bypass => {}
        Effect::Block => return Err(Refusal::Forbidden("policy_block")),
        Effect::NoMatch if identity.is_none() => {
            if sign_in.should_sign_in(app) {
                return sign_in.require(app, &path, event).await;
            }
            return Err(Refusal::NoCredentials);
        }
        Effect::NoMatch => return Err(Refusal::Forbidden("policy_no_match")),
    }
    let outcome = if decision.effect == Effect::Bypass {
        event.reason = "bypass".into();
        Decision::Bypass
    } else {
        event.reason = "policy".into();
        Decision::Allow
    };

    // 7. audit room
    *slot = Some(
        gateway
            .audit
            .reserve(config.audit_overflow)
            .map_err(|_| Refusal::AuditUnavailable)?,
    );

    // 8. forward
    let mut assertion = identity.as_ref().and_then(|i| i.token.clone());
    let mut set_cookie = None;
    if let (Some(identity), Some(sessions)) = (&identity, &gateway.sessions)
        && identity.exchange
        && let Some(token) = &identity.service_token
    {
        let (session, _) = sessions
            .issue(
                &identity::session_audience(app),
                &token.client_id,
                crate::unix_now(),
            )
            .map_err(|_| Refusal::KeysUnavailable)?;
        set_cookie = Some(signin::cookie(
            credentials::JWT_COOKIE,
            &session,
            "/",
            sessions.lifetime_secs(),
            connection.tls,
        ));
        assertion = Some(session);
    }
    let upgrade = forward::strip_hop_by_hop(&mut parts.headers);
    forward::strip_managed(
        &mut parts.headers,
        &[&config.client_ip_header, &config.country_header],
    );
    if let Some(name) = &app.service_token_header
        && parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with('{'))
    {
        parts.headers.remove(name);
    }
    if !app.forward_cookie {
        forward::strip_auth_cookie(&mut parts.headers);
    }
    let headers = &mut parts.headers;
    headers.insert(header::HOST, host_header);
    if let Ok(value) = HeaderValue::from_str(&client_ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, value.clone());
        headers.insert(CF_CONNECTING_IP, value);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if connection.tls { "https" } else { "http" }),
    );
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(X_FORWARDED_HOST, value);
    }
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(connection.local.port()));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(country) = event
        .country
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(CF_IPCOUNTRY, country);
    }
    if let Some(token) = assertion
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert(credentials::JWT_HEADER, token);
    }
    if let Some(email) = identity.as_ref().and_then(|i| i.email_header.clone()) {
        headers.insert(USER_EMAIL, email);
    }
    let client_upgrade = match upgrade {
        Some(protocol)
            if parts.version == Version::HTTP_11
                && protocol.as_bytes().eq_ignore_ascii_case(b"websocket") =>
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        }
        _ => None,
    };
    parts.uri = upstream_uri(app, &path, parts.uri.query())?;
    parts.version = Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, body.boxed());
    let mut response = match tokio::time::timeout(
        config.upstream_timeout,
        gateway.client.request(upstream_request),
    )
    .await
    {
        Err(_) => return Err(Refusal::UpstreamTimeout),
        Ok(Err(e)) => {
            debug!(error = %crate::error_chain(&e), "upstream request failed");
            return Err(Refusal::UpstreamFailed);
        }
        Ok(Ok(response)) => response,
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Tunnel only after the upstream agreed, and only what was asked.
        let Some(client_upgrade) = client_upgrade else {
            return Err(Refusal::UpstreamFailed);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(upstream),
                )
                .await;
            }
        });
    } else {
        forward::strip_hop_by_hop(response.headers_mut());
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Some(cookie) = set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    let response = response.map(|body| body.boxed());
    Ok((response, outcome))
}

/// The client address and the relay's country, believed only from a peer
/// inside the trusted relay ranges. A trusted peer sending an unparsable
/// address is refused rather than judged by its own address.
fn client_address(
    snapshot: &Snapshot,
    connection: &Connection,
    headers: &HeaderMap,
) -> Result<(IpAddr, Option<Label>), Refusal> {
    let config = &snapshot.config;
    let peer = connection.peer.ip().to_canonical();
    if !config.trusted_relays.iter().any(|net| net.contains(&peer)) {
        return Ok((peer, None));
    }
    let single = |name: &HeaderName| {
        credentials::single_value(headers, name).map_err(|e| match e {
            CredentialError::Duplicate(_) => Refusal::BadRequest("duplicate_relay_header"),
            _ => Refusal::BadRequest("bad_relay_header"),
        })
    };
    let client = match single(&config.client_ip_header)? {
        None => peer,
        Some(text) => text
            .parse::<IpAddr>()
            .map_err(|_| Refusal::BadRequest("bad_relay_header"))?
            .to_canonical(),
    };
    let country = single(&config.country_header)?
        .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|c| analytics::country_label(&c.to_ascii_uppercase()));
    Ok((client, country))
}

/// The normalized host (no port) and the `Host` value to send upstream.
/// HTTP/1.1 needs exactly one valid `Host`; an absolute-form target must
/// name the same host; HTTP/2's `:authority` must agree with any `Host`.
fn request_host(parts: &Parts) -> Result<(String, HeaderValue), Refusal> {
    let bad = || Refusal::BadRequest("bad_host");
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad());
    }
    let from_header = header
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(request::normalize_host)
                .map(|(host, _)| (host, v.clone()))
                .ok_or_else(bad)
        })
        .transpose()?;
    let from_authority = parts
        .uri
        .authority()
        .map(|a| {
            request::normalize_host(a.as_str())
                .map(|(host, _)| host)
                .ok_or_else(bad)
        })
        .transpose()?;
    match (from_header, from_authority) {
        (Some((host, value)), None) => Ok((host, value)),
        (Some((host, value)), Some(authority)) if host == authority => Ok((host, value)),
        (None, Some(authority)) if parts.version == Version::HTTP_2 => {
            let value = HeaderValue::from_str(parts.uri.authority().map_or("", |a| a.as_str()))
                .map_err(|_| bad())?;
            Ok((authority, value))
        }
        _ => Err(bad()),
    }
}

fn upstream_uri(app: &App, path: &str, query: Option<&str>) -> Result<Uri, Refusal> {
    let mut target = String::with_capacity(path.len() + query.map_or(0, str::len) + 1);
    target.push_str(path);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = app.upstream.clone().into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| Refusal::BadRequest("bad_path"))?,
    );
    Uri::from_parts(parts).map_err(|_| Refusal::BadRequest("bad_path"))
}

fn record_identity(event: &mut Event, identity: &Identity) {
    event.auth_method = Some(identity.method.into());
    if let Some(user) = &identity.user {
        event.email = user.email.clone();
        event.subject = Some(user.subject.clone());
    }
    if let Some(token) = &identity.service_token {
        event.token_client_id = Some(token.client_id.clone());
        event.token_name = Some(token.name.clone());
    }
    event.token_issuer = identity.issuer.clone();
    event.key_id = identity.key_id.clone();
}

/// The protocol column's value, as `Version`'s `Debug` spells it.
fn version_label(version: Version) -> Label {
    Label::Borrowed(match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        other => return format!("{other:?}").into(),
    })
}

/// The method column's value; the standard methods without an allocation.
fn method_label(method: &http::Method) -> Label {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.into_iter().find(|name| *name == method.as_str()) {
        Some(name) => Label::Borrowed(name),
        None => Label::Owned(method.as_str().to_owned()),
    }
}

fn certs_response(json: String, request_id: &str) -> Response<Body> {
    let mut response = Response::new(super::full_body(json));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    response
}

/// Whether the client is a browser (takes HTML), not an API client.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// 128 bits, hex: a random prefix drawn once per process, then a request
/// counter passed through a keyed bijection (so ids are unique within the
/// process and unique across restarts with overwhelming probability, yet
/// reveal neither the request count nor the next id). Not a secret; costs
/// no system call.
fn new_request_id() -> String {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static SEED: OnceLock<[u64; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let [prefix, key] = *SEED.get_or_init(|| {
        use aws_lc_rs::rand::SecureRandom as _;
        let mut bytes = [0u8; 16];
        if aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut bytes)
            .is_err()
        {
            // Uniqueness within the process still holds.
            bytes[..8].copy_from_slice(&Event::now_us().to_le_bytes());
        }
        let (a, b) = bytes.split_at(8);
        [
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}{:016x}", mix(n ^ key))
}

/// SplitMix64's finalizer: a bijection on u64 that scatters neighbours.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_hex_and_share_the_process_prefix() {
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 100_000);
        let first = ids.iter().next().unwrap();
        assert!(ids.iter().all(|id| id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && id[..16] == first[..16]));
    }

    #[test]
    fn protocol_and_method_labels_are_spelled_as_http_spells_them() {
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            let label = version_label(version);
            assert!(matches!(label, Label::Borrowed(_)));
            assert_eq!(label, format!("{version:?}"));
        }
        for method in [
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
        ] {
            let label = method_label(&method.parse().unwrap());
            assert!(matches!(label, Label::Borrowed(_)));
            assert_eq!(label, method);
        }
        let purge = method_label(&"PURGE".parse().unwrap());
        assert!(matches!(purge, Label::Owned(_)));
        assert_eq!(purge, "PURGE");
    }
}
