//! Keep-alive connections over real sockets: an idle HTTP/1.1 connection
//! is parked (hyper's buffers freed) and serves its next request as if
//! nothing happened, over plain TCP and TLS, even when that request had
//! started to arrive before the parking; parked connections still close
//! after the header timeout and at shutdown; HTTP/2 with prior knowledge
//! still works on the plain listener.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::proxy::serve::PARK_AFTER;
use gateway_tests::gateway::{Harness, OPEN_POLICY};
use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};

const HEADER_TIMEOUT_SECS: u64 = 4;

fn start() -> Harness {
    let mut h = Harness::new();
    let config = h.base_config().replacen(
        "[http]\n",
        &format!("[http]\nheader_timeout_secs = {HEADER_TIMEOUT_SECS}\n"),
        1,
    ) + &h.app("public", "app.test", "/", "", OPEN_POLICY);
    h.start(&config);
    h
}

/// Long enough for any quiet connection to have been parked.
fn until_parked() {
    std::thread::sleep(2 * PARK_AFTER + Duration::from_millis(500));
}

fn plain(h: &Harness) -> TcpStream {
    let tcp = TcpStream::connect(h.plain_addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    tcp
}

fn tls(h: &Harness) -> StreamOwned<ClientConnection, TcpStream> {
    let config = Arc::new(h.ca.client_config(&[b"http/1.1"]));
    let name = ServerName::try_from("app.test").expect("server name");
    let tcp = TcpStream::connect(h.https_addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    StreamOwned::new(ClientConnection::new(config, name).expect("client"), tcp)
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: app.test\r\n\r\n").into_bytes()
}

/// One response (head and `content-length` body) from a keep-alive stream:
/// its status and whether it asked to close the connection.
fn response(stream: &mut impl Read) -> (u16, bool) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read a response");
        assert_eq!(n, 1, "connection closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)
        .expect("text head")
        .to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("length"))
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    (status, head.contains("connection: close"))
}

/// The gauge `name` of the gateway's metrics.
fn gauge(h: &Harness, name: &str) -> u64 {
    let (status, _, metrics) = h.admin_get("/metrics");
    assert_eq!(status, 200);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} gauge in {metrics}"))
}

/// The gateway's count of parked connections.
fn parked(h: &Harness) -> u64 {
    gauge(h, "gateway_http_connections_parked")
}

/// The gateway's count of open client connections.
fn open(h: &Harness) -> u64 {
    gauge(h, "gateway_http_connections")
}

/// Three requests on one connection with a parking before each of the
/// last two; the second is sent in two parts, and a connection that has
/// read part of a request head is not parked before the request starts.
fn serves_across_parking(stream: &mut (impl Read + Write), h: &Harness) {
    stream.write_all(&request("/first")).expect("send");
    assert_eq!(response(stream), (200, false));
    until_parked();
    assert_eq!(parked(h), 1);
    let second = request("/second");
    let (part, rest) = second.split_at(10);
    stream.write_all(part).expect("send");
    stream.flush().expect("flush");
    until_parked();
    assert_eq!(parked(h), 0, "parked in the middle of a request head");
    stream.write_all(rest).expect("send");
    assert_eq!(response(stream), (200, false));
    until_parked();
    assert_eq!((parked(h), open(h)), (1, 1), "parked, still open");
    stream.write_all(&request("/third")).expect("send");
    assert_eq!(response(stream), (200, false));
    assert_eq!(parked(h), 0);
    let paths: Vec<String> = h
        .upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert!(
        paths.ends_with(&["/first".into(), "/second".into(), "/third".into()]),
        "the upstream saw {paths:?}"
    );
}

#[test]
fn an_idle_plain_connection_is_parked_and_serves_its_next_request() {
    let h = start();
    serves_across_parking(&mut plain(&h), &h);
}

#[test]
fn an_idle_tls_connection_is_parked_and_serves_its_next_request() {
    let h = start();
    serves_across_parking(&mut tls(&h), &h);
}

#[test]
fn a_parked_connection_closes_after_the_header_timeout() {
    let h = start();
    let mut stream = plain(&h);
    stream.write_all(&request("/")).expect("send");
    assert_eq!(response(&mut stream), (200, false));
    let idle = Instant::now();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        read.is_ok() && rest.is_empty(),
        "expected a clean close, got {read:?} and {rest:?}"
    );
    assert!(
        idle.elapsed() >= Duration::from_secs(HEADER_TIMEOUT_SECS),
        "closed after {:?}, before the header timeout",
        idle.elapsed()
    );
    // Closed from its parked task: no longer counted open or parked.
    assert_eq!((open(&h), parked(&h)), (0, 0));
}

#[test]
fn shutdown_closes_parked_connections_without_waiting_for_them() {
    let mut h = start();
    let mut streams = vec![plain(&h)];
    for stream in &mut streams {
        stream.write_all(&request("/")).expect("send");
        assert_eq!(response(stream), (200, false));
    }
    let mut tls = tls(&h);
    tls.write_all(&request("/")).expect("send");
    assert_eq!(response(&mut tls), (200, false));
    until_parked();
    let stopping = Instant::now();
    let daemon = h.daemon.as_mut().expect("started");
    assert!(daemon.stop().success(), "the gateway did not stop cleanly");
    // The drain waits up to its timeout for connections that do not close.
    assert!(
        stopping.elapsed() < Duration::from_secs(HEADER_TIMEOUT_SECS),
        "stopping took {:?}",
        stopping.elapsed()
    );
    let mut rest = Vec::new();
    assert_eq!(streams[0].read_to_end(&mut rest).ok(), Some(0));
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_on_the_plain_listener() {
    let h = start();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        // reqwest wants a TLS configuration even for plain HTTP.
        .use_preconfigured_tls(h.ca.client_config(&[b"h2"]))
        .resolve("app.test", h.plain_addr())
        .build()
        .expect("client");
    let url = format!("http://app.test:{}/h2c", h.plain_addr().port());
    for _ in 0..2 {
        let response = client.get(&url).send().await.expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
    }
    assert_eq!(h.upstream.last().target, "/h2c");
}
