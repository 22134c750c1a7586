//! `cargo xtask bench gateway`: the identity gateway's throughput, latency
//! and memory against nginx as a plain reverse proxy, measured in the same
//! run with wrk on loopback. Writes `bench-results/gateway.json`.
//!
//! One upstream for every case: nginx answering 200 `ok`. wrk (one thread)
//! and the upstream are pinned to CPU 0; the proxy under test (nginx with
//! one worker, or the real gateway binary, whose runtime is then
//! single-threaded) has CPU 1 to itself, so both proxies get the same core.
//! Cases, over plain HTTP/1.1 keep-alive:
//! (a) the upstream directly; (b) nginx proxying without any
//! authentication; (c) the gateway with one valid relay JWT (verified once,
//! then served from the verified-token cache); (d) the gateway with a new
//! relay JWT on every request (tokens signed beforehand, so every request
//! costs an RS256 signature check); (e) the gateway with service-token
//! headers on every request. The gateway authenticates, applies the
//! policy and writes an audit event for every request (checked at the end).
//!
//! Throughput is the best of three 5 s runs at 50 connections ((d): three
//! 2 s runs, each with tokens of its own, so none is served from the
//! cache). Over those runs, the CPU time each proxy spent per request is
//! split, from `/proc`, into user space and the kernel, where both proxies
//! pay the same loopback TCP work, with the gateway's audit writer thread's
//! share of the two reported apart. Latency is measured with one
//! connection (no queueing: the time a request spends in the proxy),
//! median of three 3 s runs. Memory: the gateway's peak RSS after the
//! load, and its RSS holding 10,000 idle keep-alive connections that have
//! each made one request, plain and TLS, once the last one has been idle
//! long enough to be parked (`PARK_AFTER` × 2 plus 0.5 s). Every response
//! must be a 200: a run with errors or other statuses fails the benchmark.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use gateway_tests::{
    daemon::{Daemon, token_credentials},
    gateway::{AUD, Harness, ISSUER, Relay},
    nginx::Nginx,
    report::{self, Row, publish},
    wrk::{
        CONNECTIONS, LATENCY_SECONDS, LOAD_CPU, Load, SECONDS, SERVER_CPU, TRIES, Wrk, best_rps,
        median_by_p99,
    },
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};
use serde_json::{Value, json};

const IDLE_CONNECTIONS: usize = 10_000;
/// Tokens signed for each run of case (d), and how long it runs: enough
/// for 30,000 signature checks a second, more than one core can do.
const FRESH_TOKENS: usize = 60_000;
const FRESH_SECONDS: u32 = 2;
const HOST: &str = "app.test";
const EMAIL: &str = "alice@corp.example";
const MIB: f64 = 1024.0 * 1024.0;

/// Verification rates of `token` (RS256, the relay's key) on this thread's
/// CPU, best of three 1 s runs each: `jsonwebtoken` decoding and checking it
/// with the gateway's validation rules and its stock provider (the floor
/// for case (d)), and the bare signature check with the key parsed once
/// (the gateway's own verifier, `gateway::jwt::crypto`: no JSON, no
/// claims).
fn raw_verify_rates(relay: &Relay, token: &str) -> (f64, f64) {
    let jwk: Jwk = serde_json::from_value(relay.jwk().clone()).expect("relay JWK");
    let key = DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUD]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud"]);
    let decode = best_rate(|| {
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("valid token");
    });
    let (message, signature) = token.rsplit_once('.').expect("a JWT");
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64 signature");
    let verifier = gateway::jwt::crypto::verifier(&Algorithm::RS256, &key).expect("verifier");
    let signature_only = best_rate(|| {
        verifier
            .verify(message.as_bytes(), &signature)
            .expect("valid signature");
    });
    (decode, signature_only)
}

/// Calls of `check` per second, best of three 1 s runs.
fn best_rate(mut check: impl FnMut()) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..TRIES {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..100 {
                check();
                calls += 1;
            }
        }
        best = best.max(calls as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// `count` distinct valid relay tokens, one per line, shared equally among
/// the files of `paths`, signed on every CPU. Returns the signing rate.
fn sign_tokens(relay: &Relay, count: usize, paths: &[PathBuf]) -> f64 {
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let lines: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let mut claims = Relay::user_claims(EMAIL);
                            claims["sub"] = json!(format!("bench-{i}"));
                            relay.sign(&claims)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    });
    for (path, share) in paths.iter().zip(lines.chunks(count.div_ceil(paths.len()))) {
        std::fs::write(path, share.join("\n") + "\n").expect("write tokens");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn request_bytes(token: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nCf-Access-Jwt-Assertion: {token}\r\n\r\n")
        .into_bytes()
}

/// Sends one request on `stream` and reads its whole (small) response.
fn one_request(stream: &mut (impl Read + Write), request: &[u8]) {
    stream.write_all(request).expect("send");
    stream.flush().expect("flush");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.ends_with(b"\r\n\r\nok\n") {
        let n = stream.read(&mut buf).expect("read response");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&received)
    );
}

/// The CPU time a proxy spent on the runs of one case, to tell where each
/// request's time goes: the proxy's own code, or the kernel (system calls,
/// and on loopback the TCP work of the side receiving what it writes).
#[derive(Default)]
struct CpuCost {
    user: f64,
    kernel: f64,
    writer: f64,
    requests: u64,
}

impl CpuCost {
    /// Runs `load`, adding what `pid` spent during it.
    fn measure(&mut self, pid: u32, load: impl FnOnce() -> Load) -> Load {
        let thread = analytics::writer::THREAD_NAME;
        let (before, writer_before) = gateway_tests::process_cpu_seconds(pid, thread);
        let load = load();
        let (after, writer_after) = gateway_tests::process_cpu_seconds(pid, thread);
        self.user += after[0] - before[0];
        self.kernel += after[1] - before[1];
        self.writer += writer_after[0] + writer_after[1] - writer_before[0] - writer_before[1];
        self.requests += load.requests;
        load
    }

    /// Microseconds a request: in user space, in the audit writer's thread
    /// (user space and kernel: part of the other two), and in the kernel.
    fn per_request_us(&self) -> [f64; 3] {
        [self.user, self.writer, self.kernel].map(|s| s * 1e6 / self.requests.max(1) as f64)
    }
}

/// RSS of a process holding idle connections, and just before they were
/// opened.
struct IdleRss {
    holding: f64,
    before: f64,
}

impl IdleRss {
    /// What one connection adds, KiB (the allocator's and the audit
    /// writer's swings included, so a rough figure).
    fn per_connection_kib(&self) -> f64 {
        (self.holding - self.before) / IDLE_CONNECTIONS as f64 / 1024.0
    }
}

/// Opens `IDLE_CONNECTIONS` keep-alive connections to `addr` (TLS when
/// `tls` is given), each making one request, and returns `pid`'s RSS while
/// they are all open and idle, and before.
fn idle_rss(
    pid: u32,
    addr: SocketAddr,
    request: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> IdleRss {
    let before = gateway_tests::process_memory(pid, "VmRSS");
    let connect = || {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tcp
    };
    let rss = match tls {
        None => hold_idle(pid, request, connect),
        Some(config) => {
            let name = ServerName::try_from(HOST).expect("server name");
            hold_idle(pid, request, || {
                let connection =
                    ClientConnection::new(config.clone(), name.clone()).expect("TLS client");
                StreamOwned::new(connection, connect())
            })
        }
    };
    // The connections were dropped (closed) above; let the server notice.
    settle();
    IdleRss {
        holding: rss,
        before,
    }
}

/// Holds `IDLE_CONNECTIONS` streams from `open`, each after one request,
/// and reads `pid`'s RSS while they are idle.
fn hold_idle<S: Read + Write>(pid: u32, request: &[u8], mut open: impl FnMut() -> S) -> f64 {
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let mut stream = open();
        one_request(&mut stream, request);
        held.push(stream);
    }
    // Idle for longer than the gateway takes to park a quiet connection.
    std::thread::sleep(2 * gateway::proxy::serve::PARK_AFTER);
    settle();
    gateway_tests::process_memory(pid, "VmRSS")
}

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

fn main() {
    gateway_tests::require_root();
    // 10,000 client connections need more than the usual 1,024 descriptors.
    let limit = gateway::daemon::raise_open_file_limit().expect("raise the open-file limit");
    assert!(
        limit > IDLE_CONNECTIONS as u64 + 1000,
        "the open-file hard limit ({limit}) is too low for {IDLE_CONNECTIONS} connections"
    );
    let mut notes = Vec::new();

    let mut harness = Harness::new();
    let dir = harness.dir.path().to_path_buf();
    let tokens_files: Vec<_> = (0..TRIES)
        .map(|run| dir.join(format!("fresh-tokens-{run}.txt")))
        .collect();
    let sign_rate = sign_tokens(&harness.relay, FRESH_TOKENS * TRIES, &tokens_files);
    notes.push(format!(
        "(d) {} distinct relay tokens signed beforehand ({sign_rate:.0}/s on every CPU), \
         {FRESH_TOKENS} for each run",
        FRESH_TOKENS * TRIES
    ));

    // The upstream shares the load generator's CPU, so the proxy under test
    // has CPU 1 to itself. Processes started from here on inherit the CPU
    // this thread is pinned to.
    gateway_tests::pin_thread_to_cpu(LOAD_CPU);
    let upstream = Nginx::static_ok(&dir);
    gateway_tests::pin_thread_to_cpu(SERVER_CPU);
    let nginx = Nginx::proxy(&dir, upstream.addr);
    let (client_id, secret) = token_credentials(&harness.token_cli(&["create", "--name", "bench"]));
    let config = harness
        .base_config()
        // Idle connections are held open for the memory measurement.
        .replacen("[http]\n", "[http]\nheader_timeout_secs = 120\n", 1)
        // The audit log as deployed: Parquet only, without the JSON-lines
        // copy the functional tests read.
        .lines()
        .filter(|line| !line.starts_with("jsonl = "))
        .collect::<Vec<_>>()
        .join("\n")
        + &format!(
            r#"
[[app]]
name = "bench"
hostname = "{HOST}"
upstream = "http://{upstream}"
aud = "{AUD}"

[[app.policy]]
name = "ci"
action = "service_auth"
include = [{{ service_token = "{client_id}" }}]

[[app.policy]]
name = "staff"
action = "allow"
include = [{{ email_domain = "corp.example" }}]
"#,
            upstream = upstream.addr
        );
    harness.start(&config);
    let daemon: &Daemon = harness.daemon.as_ref().expect("started");
    let pid = daemon.pid();
    let gateway = harness.plain_addr();
    let token = harness.relay.user_token(EMAIL);

    let (raw_rate, signature_rate) = raw_verify_rates(&harness.relay, &token);

    let wrk = Wrk::new(&dir, LOAD_CPU);
    let host = [("Host", HOST)];
    let jwt = [("Host", HOST), ("Cf-Access-Jwt-Assertion", token.as_str())];
    let service = [
        ("Host", HOST),
        ("CF-Access-Client-Id", client_id.as_str()),
        ("CF-Access-Client-Secret", secret.as_str()),
    ];
    // Every request sent to the gateway, to check its audit log at the end.
    let mut sent_to_gateway = Vec::new();
    // Warm-up: connection pools, the token cache, the page cache.
    wrk.run(upstream.addr, CONNECTIONS, 1, &host);
    wrk.run(nginx.addr, CONNECTIONS, 1, &host);
    sent_to_gateway.push(wrk.run(gateway, CONNECTIONS, 1, &jwt));
    sent_to_gateway.push(wrk.run(gateway, CONNECTIONS, 1, &service));
    let (mut direct, mut plain_proxy, mut cached, mut tokens, mut fresh) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut cpu: [CpuCost; 4] = Default::default();
    let nginx_pid = nginx.worker_pid();
    for tokens_file in &tokens_files {
        direct.push(wrk.run(upstream.addr, CONNECTIONS, SECONDS, &host));
        plain_proxy.push(cpu[0].measure(nginx_pid, || {
            wrk.run(nginx.addr, CONNECTIONS, SECONDS, &host)
        }));
        cached.push(cpu[1].measure(pid, || wrk.run(gateway, CONNECTIONS, SECONDS, &jwt)));
        tokens.push(cpu[2].measure(pid, || wrk.run(gateway, CONNECTIONS, SECONDS, &service)));
        fresh.push(cpu[3].measure(pid, || {
            wrk.fresh(
                gateway,
                tokens_file,
                CONNECTIONS,
                FRESH_SECONDS,
                FRESH_TOKENS,
            )
        }));
    }
    let mut cpu_split = serde_json::Map::new();
    for (name, cost) in ["(b) nginx", "(c)", "(e)", "(d)"].iter().zip(&cpu) {
        let [user, writer, kernel] = cost.per_request_us();
        notes.push(format!(
            "{name} CPU a request: {user:.1} us in user space + {kernel:.1} us in the kernel, \
             {writer:.1} us of both in the audit writer's thread"
        ));
        cpu_split.insert(
            (*name).into(),
            json!({"user_us": user, "audit_writer_us": writer, "kernel_us": kernel}),
        );
    }
    sent_to_gateway.extend(cached.iter().chain(&tokens).chain(&fresh).copied());
    let (direct, plain_proxy, cached, tokens, fresh) = (
        best_rps(&direct),
        best_rps(&plain_proxy),
        best_rps(&cached),
        best_rps(&tokens),
        best_rps(&fresh),
    );

    let (mut direct_lat, mut nginx_lat, mut cached_lat) = (vec![], vec![], vec![]);
    for _ in 0..TRIES {
        direct_lat.push(wrk.run(upstream.addr, 1, LATENCY_SECONDS, &host));
        nginx_lat.push(wrk.run(nginx.addr, 1, LATENCY_SECONDS, &host));
        cached_lat.push(wrk.run(gateway, 1, LATENCY_SECONDS, &jwt));
    }
    sent_to_gateway.extend(&cached_lat);
    let (direct_lat, nginx_lat, cached_lat) = (
        median_by_p99(direct_lat),
        median_by_p99(nginx_lat),
        median_by_p99(cached_lat),
    );
    let peak_rss = gateway_tests::process_memory(pid, "VmHWM");
    let nginx_peak = gateway_tests::process_memory(nginx.worker_pid(), "VmHWM");

    // Memory with idle keep-alive connections (the bench's own work on the
    // load CPU).
    gateway_tests::pin_thread_to_cpu(LOAD_CPU);
    let request = request_bytes(&token);
    let idle_plain = idle_rss(pid, gateway, &request, None);
    let tls_config = Arc::new(harness.ca.client_config(&[b"http/1.1"]));
    let idle_tls = idle_rss(pid, harness.https_addr(), &request, Some(tls_config));
    let nginx_idle = idle_rss(nginx.worker_pid(), nginx.addr, &request, None);
    for (name, idle) in [
        ("plain", &idle_plain),
        ("TLS", &idle_tls),
        ("nginx, plain", &nginx_idle),
    ] {
        notes.push(format!(
            "10k idle {name}: {:.1} MiB, {:.1} MiB just before: {:.1} KiB a connection",
            idle.holding / MIB,
            idle.before / MIB,
            idle.per_connection_kib()
        ));
    }

    // Every request the gateway answered was audited: at least every
    // response wrk counted, at most those plus the ones in flight when each
    // run stopped.
    let served = {
        let d = harness.daemon.as_mut().expect("started");
        assert!(d.stop().success(), "the gateway did not stop cleanly");
        gateway_tests::audit::string_column(&harness.path("audit"), "decision")
            .iter()
            .filter(|decision| *decision == "allow")
            .count()
    };
    let counted: u64 =
        sent_to_gateway.iter().map(|l| l.requests).sum::<u64>() + 2 * IDLE_CONNECTIONS as u64;
    let in_flight = sent_to_gateway.len() as u64 * u64::from(CONNECTIONS);
    assert!(
        (counted..=counted + in_flight).contains(&(served as u64)),
        "{served} allow events in the audit log for {counted} responses counted"
    );
    notes.push(format!(
        "{served} allow events in the gateway's audit log, one per request served"
    ));

    let budget = |mib: f64| (format!("{mib:.0} MiB budget (issue 3)"), mib);
    let nginx_name = "nginx 1.22 plain reverse proxy, no auth (b)".to_string();
    let mut rows = vec![
        Row {
            metric: "throughput, cached relay JWT (c)".into(),
            unit: "req/s",
            ours: cached.rps,
            baseline: nginx_name.clone(),
            baseline_value: plain_proxy.rps,
            goal: "ratio >= 1.0".into(),
            note: format!("upstream direct (a): {:.0} req/s", direct.rps),
        },
        Row {
            metric: "throughput, new relay JWT every request (d)".into(),
            unit: "req/s",
            ours: fresh.rps,
            baseline: "jsonwebtoken RS256 decode+verify, one core, no proxy".into(),
            baseline_value: raw_rate,
            goal: "ratio >= 0.5".into(),
            note: format!(
                "{} requests; {:.2} of the bare signature check with a parsed key ({signature_rate:.0}/s)",
                fresh.requests,
                fresh.rps / signature_rate
            ),
        },
        Row {
            metric: "throughput, service-token headers every request (e)".into(),
            unit: "req/s",
            ours: tokens.rps,
            baseline: nginx_name.clone(),
            baseline_value: plain_proxy.rps,
            goal: "ratio >= 1.0".into(),
            note: "each request checks the secret and gets a session cookie".into(),
        },
    ];
    let (added_p50, added_p99) = (
        cached_lat.p50_ms - direct_lat.p50_ms,
        cached_lat.p99_ms - direct_lat.p99_ms,
    );
    for (metric, ours, peer) in [
        (
            "p50 latency added over direct, cached JWT, 1 connection",
            added_p50,
            nginx_lat.p50_ms - direct_lat.p50_ms,
        ),
        (
            "p99 latency added over direct, cached JWT, 1 connection",
            added_p99,
            nginx_lat.p99_ms - direct_lat.p99_ms,
        ),
    ] {
        rows.push(Row {
            metric: metric.into(),
            unit: "ms",
            ours,
            baseline: "1 ms budget (issue 3)".into(),
            baseline_value: 1.0,
            goal: "ratio <= 1.0".into(),
            note: format!("nginx adds {peer:.3} ms"),
        });
    }
    for (metric, ours, peer) in [
        (
            "peak RSS after all load cases",
            peak_rss,
            format!("nginx worker peak {:.1} MiB", nginx_peak / MIB),
        ),
        (
            "RSS with 10k idle keep-alive connections (plain HTTP)",
            idle_plain.holding,
            format!("nginx worker {:.1} MiB", nginx_idle.holding / MIB),
        ),
        (
            "RSS with 10k idle keep-alive connections (TLS)",
            idle_tls.holding,
            String::new(),
        ),
    ] {
        let (baseline, value) = budget(64.0);
        rows.push(Row {
            metric: metric.into(),
            unit: "MiB",
            ours: ours / MIB,
            baseline,
            baseline_value: value,
            goal: "ratio <= 1.0".into(),
            note: peer,
        });
    }
    for (name, load) in [
        ("(a) upstream direct", direct),
        ("(b) nginx proxy", plain_proxy),
        ("(c) gateway, cached JWT", cached),
        ("(d) gateway, new JWT each request", fresh),
        ("(e) gateway, service token", tokens),
    ] {
        notes.push(format!(
            "{name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms at {CONNECTIONS} connections",
            load.rps, load.p50_ms, load.p99_ms
        ));
    }
    for (name, load) in [("(a)", direct_lat), ("(b)", nginx_lat), ("(c)", cached_lat)] {
        notes.push(format!(
            "{name} one connection: p50 {:.3} ms, p99 {:.3} ms",
            load.p50_ms, load.p99_ms
        ));
    }
    notes.push(format!(
        "raw RS256 verification on one core: {raw_rate:.0}/s with jsonwebtoken's decode, \
         {signature_rate:.0}/s for the bare signature check with a parsed key"
    ));

    let mut extra = serde_json::Map::new();
    extra.insert("connections".into(), json!(CONNECTIONS));
    extra.insert("seconds".into(), json!(SECONDS));
    extra.insert("best_of".into(), json!(TRIES));
    extra.insert("rs256_signature_only_per_s".into(), json!(signature_rate));
    extra.insert("cpu_per_request".into(), Value::Object(cpu_split));
    publish(&report::out_dir(), "gateway", &rows, &notes, extra);
    drop(nginx);
    drop(upstream);
}
