//! `cargo xtask bench sso`: what browser sign-in costs. Writes
//! `bench-results/sso.json`.
//!
//! One gateway process (the real binary) with one app that accepts both
//! the relay's JWTs and its own sign-in sessions, a real OpenID provider
//! (oidc-provider on Node.js), nginx answering 200 `ok` as the upstream.
//! As in the gateway benchmark, wrk (one thread), nginx and the provider
//! share CPU 0 and the gateway has CPU 1 to itself.
//!
//! 1. **Sign-in**: complete sign-ins, each as a new browser would do it
//!    (its own provider session, the login form posted), timed step by
//!    step: the first request (redirect to the provider), the provider's
//!    pages, the callback, the first request with the session. The
//!    gateway's time is its three steps less what it waited on the
//!    provider during the callback (its own
//!    `gateway_oidc_provider_duration_seconds`, scraped before and after);
//!    the provider's time is its pages plus that wait.
//! 2. **Established session** against the identity-gateway benchmark's case
//!    (c), a cached relay JWT, in the same run on the same gateway:
//!    throughput (best of three 5 s runs, 50 connections) and latency
//!    (median of three 3 s runs, one connection), the two cases taking turns.

use std::time::{Duration, Instant};

use gateway_tests::{
    gateway::{AUD, Relay},
    idp,
    nginx::Nginx,
    report::{self, Row, publish},
    signin::{self, SignInSetup},
    wrk::{
        CONNECTIONS, LATENCY_SECONDS, LOAD_CPU, SECONDS, SERVER_CPU, TRIES, Wrk, best_rps,
        median_by_p99,
    },
};
use serde_json::json;

const WARM_UP_SIGN_INS: usize = 10;
const SIGN_INS: usize = 50;
const HOST: &str = "app.test";
const USER: &str = "alice";
const EMAIL: &str = "alice@corp.test";

/// Milliseconds of one sign-in's steps.
#[derive(Default)]
struct SignInTimes {
    /// First request → redirect to the provider (gateway).
    redirect: f64,
    /// The provider's pages, to the redirect back (provider).
    provider: f64,
    /// The callback (gateway, including its wait on the provider).
    callback: f64,
    /// First request with the session (gateway and upstream).
    first_request: f64,
}

async fn sign_in_once(setup: &SignInSetup, gateway: &reqwest::Client, page: &str) -> SignInTimes {
    let mut times = SignInTimes::default();
    let t = Instant::now();
    let started = signin::start(gateway, page).await;
    times.redirect = ms(t);
    // A new browser: no session at the provider yet, so the form is used.
    let t = Instant::now();
    let callback = idp::sign_in(&setup.idp_client(), &started.authorize_url, USER).await;
    times.provider = ms(t);
    let t = Instant::now();
    let response = signin::browser_get(
        gateway,
        &callback,
        Some(&format!("CF_Access_Login={}", started.login_cookie)),
    )
    .await;
    let session = signin::session(&response);
    times.callback = ms(t);
    let t = Instant::now();
    let response =
        signin::browser_get(gateway, page, Some(&format!("CF_Authorization={session}"))).await;
    assert_eq!(response.status(), 200, "the session was refused");
    response.bytes().await.expect("body");
    times.first_request = ms(t);
    times
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// `gateway_oidc_provider_duration_seconds_sum` from the admin endpoint.
fn provider_wait_seconds(setup: &SignInSetup) -> f64 {
    let (status, _, body) = setup.harness.admin_get("/metrics");
    assert_eq!(status, 200, "metrics: {body}");
    body.lines()
        .find_map(|line| {
            line.strip_prefix("gateway_oidc_provider_duration_seconds_sum{provider=\"corp\"} ")
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn main() {
    gateway_tests::require_root();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut notes = Vec::new();

    // Everything but the gateway on the load CPU (processes inherit it).
    gateway_tests::pin_thread_to_cpu(LOAD_CPU);
    let mut setup = SignInSetup::new();
    let dir = setup.harness.dir.path().to_path_buf();
    let upstream = Nginx::static_ok(&dir);
    gateway_tests::pin_thread_to_cpu(SERVER_CPU);
    let apps = format!(
        r#"
[[app]]
name = "bench"
hostname = "{HOST}"
upstream = "http://{upstream}"
aud = "{AUD}"
login = ["corp"]

[[app.policy]]
name = "staff"
action = "allow"
include = [{{ email_domain = "corp.test" }}]
"#,
        upstream = upstream.addr
    );
    setup.start(&apps);
    gateway_tests::pin_thread_to_cpu(LOAD_CPU);

    // 1. Sign-ins.
    let gateway = setup.harness.client(false);
    let page = setup.url(HOST, "/");
    let (measured, provider_wait) = runtime.block_on(async {
        for _ in 0..WARM_UP_SIGN_INS {
            sign_in_once(&setup, &gateway, &page).await;
        }
        let before = provider_wait_seconds(&setup);
        let mut measured = Vec::with_capacity(SIGN_INS);
        for _ in 0..SIGN_INS {
            measured.push(sign_in_once(&setup, &gateway, &page).await);
        }
        (measured, (provider_wait_seconds(&setup) - before) * 1e3)
    });
    let n = SIGN_INS as f64;
    let mean = |f: fn(&SignInTimes) -> f64| measured.iter().map(f).sum::<f64>() / n;
    let (redirect, provider_pages, callback, first_request) = (
        mean(|t| t.redirect),
        mean(|t| t.provider),
        mean(|t| t.callback),
        mean(|t| t.first_request),
    );
    let waited = provider_wait / n;
    let gateway_added = redirect + callback - waited + first_request;
    let provider_own = provider_pages + waited;
    let (token_requests, token_ms) = setup.idp.token_stats();
    notes.push(format!(
        "per sign-in (mean of {SIGN_INS}, after {WARM_UP_SIGN_INS} warm-up): redirect to the provider {redirect:.2} ms, \
         provider pages {provider_pages:.2} ms, callback {callback:.2} ms of which {waited:.2} ms waiting on the provider \
         (code exchange), first request with the session {first_request:.2} ms"
    ));
    notes.push(format!(
        "the provider's own count: {token_requests} token requests, {:.2} ms each inside it",
        token_ms / token_requests.max(1) as f64
    ));

    // 2. Established session against a cached relay JWT.
    let session = runtime.block_on(async {
        let response = signin::sign_in(&setup, &page, USER).await;
        signin::session(&response)
    });
    let relay_token = setup.harness.relay.sign(&{
        let mut claims = Relay::user_claims(EMAIL);
        claims["exp"] = json!(gateway::unix_now() + 3600);
        claims
    });
    let wrk = Wrk::new(&dir, LOAD_CPU);
    let addr = setup.harness.plain_addr();
    let cookie = format!("CF_Authorization={session}");
    let jwt = [
        ("Host", HOST),
        ("Cf-Access-Jwt-Assertion", relay_token.as_str()),
    ];
    let browser = [("Host", HOST), ("Cookie", cookie.as_str())];
    wrk.run(addr, CONNECTIONS, 1, &jwt);
    wrk.run(addr, CONNECTIONS, 1, &browser);
    let (mut jwt_runs, mut session_runs) = (vec![], vec![]);
    for _ in 0..TRIES {
        jwt_runs.push(wrk.run(addr, CONNECTIONS, SECONDS, &jwt));
        session_runs.push(wrk.run(addr, CONNECTIONS, SECONDS, &browser));
    }
    let (mut jwt_lat, mut session_lat) = (vec![], vec![]);
    for _ in 0..TRIES {
        jwt_lat.push(wrk.run(addr, 1, LATENCY_SECONDS, &jwt));
        session_lat.push(wrk.run(addr, 1, LATENCY_SECONDS, &browser));
    }
    let (jwt_best, session_best) = (best_rps(&jwt_runs), best_rps(&session_runs));
    let (jwt_lat, session_lat) = (median_by_p99(jwt_lat), median_by_p99(session_lat));
    for (name, load) in [
        ("cached relay JWT", jwt_best),
        ("established session", session_best),
    ] {
        notes.push(format!(
            "{name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms at {CONNECTIONS} connections",
            load.rps, load.p50_ms, load.p99_ms
        ));
    }
    for (name, load) in [
        ("cached relay JWT", jwt_lat),
        ("established session", session_lat),
    ] {
        notes.push(format!(
            "{name}, one connection: p50 {:.3} ms, p99 {:.3} ms",
            load.p50_ms, load.p99_ms
        ));
    }

    let relay_case = "cached relay JWT, same gateway and run (gateway bench case c)".to_string();
    let rows = vec![
        Row {
            metric: "throughput, established browser session (cookie)".into(),
            unit: "req/s",
            ours: session_best.rps,
            baseline: relay_case.clone(),
            baseline_value: jwt_best.rps,
            goal: "ratio >= 0.95".into(),
            note: "a session costs no more than a relay JWT: at most 1.05x the time per request"
                .into(),
        },
        Row {
            metric: "p50 latency, established browser session, 1 connection".into(),
            unit: "ms",
            ours: session_lat.p50_ms,
            baseline: relay_case,
            baseline_value: jwt_lat.p50_ms,
            goal: "ratio <= 1.05".into(),
            note: format!(
                "p99 {:.3} ms vs {:.3} ms",
                session_lat.p99_ms, jwt_lat.p99_ms
            ),
        },
        Row {
            metric: "time the gateway adds to a full sign-in".into(),
            unit: "ms",
            ours: gateway_added,
            baseline: "the provider's own time in the same sign-ins".into(),
            baseline_value: provider_own,
            goal: "ratio <= 1.0".into(),
            note: format!(
                "redirect + callback (less {waited:.2} ms waiting on the provider) + first request; \
                 {SIGN_INS} sign-ins through the login form"
            ),
        },
    ];
    let mut extra = serde_json::Map::new();
    extra.insert("connections".into(), json!(CONNECTIONS));
    extra.insert("seconds".into(), json!(SECONDS));
    extra.insert("best_of".into(), json!(TRIES));
    extra.insert("sign_ins".into(), json!(SIGN_INS));
    publish(&report::out_dir(), "sso", &rows, &notes, extra);
    let stopped = setup
        .harness
        .daemon
        .as_mut()
        .expect("started")
        .stop_within(Duration::from_secs(15));
    assert!(
        stopped.is_ok_and(|s| s.success()),
        "the gateway did not stop cleanly"
    );
    drop(upstream);
}
