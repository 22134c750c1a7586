//! Operating the running gateway: the loopback admin endpoint (metrics,
//! health, readiness, status), `gateway status`, JSON logs without secrets,
//! and the systemd readiness protocol (`Type=notify`).

use std::{
    os::unix::net::UnixDatagram,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{
    daemon::{gateway_bin, token_credentials},
    gateway::{AUD, Harness},
};

/// Alice is allowed by email; any valid service token gets in.
fn app(h: &Harness) -> String {
    h.app(
        "wiki",
        "app.test",
        "/",
        &format!("aud = \"{AUD}\""),
        "[[app.policy]]\nname = \"bots\"\naction = \"service_auth\"\ninclude = [\"any_service_token\"]\n\
         [[app.policy]]\nname = \"alice\"\naction = \"allow\"\ninclude = [{ email = \"alice@corp.example\" }]\n",
    )
}

/// GET https://app.test/ with `headers`, expecting `status`.
async fn get(client: &reqwest::Client, headers: &[(&str, &str)], status: u16) -> reqwest::Response {
    let mut request = client.get("https://app.test/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), status);
    response
}

/// The value of the sample `line_start` (metric name and labels) in an
/// exposition, if present.
fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .map(|v| v.parse().expect("numeric sample"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_health_describe_the_running_gateway() {
    let mut h = Harness::new();
    let (client_id, secret) = token_credentials(&h.token_cli(&["create", "--name", "ci-bot"]));
    let config = h.base_config() + &app(&h);
    h.start(&config);
    let client = h.client(false);
    let alice = h.relay.user_token("alice@corp.example");
    for _ in 0..3 {
        get(&client, &[("cf-access-jwt-assertion", &alice)], 200).await;
    }
    get(&client, &[], 401).await;
    let bot = [
        ("cf-access-client-id", client_id.as_str()),
        ("cf-access-client-secret", secret.as_str()),
    ];
    get(&client, &bot, 200).await;

    // Health and readiness.
    assert_eq!(h.admin_get("/healthz").0, 200);
    let (code, _, body) = h.admin_get("/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    assert_eq!(h.admin_get("/nothing").0, 404);

    // Metrics: conventional names, counts that match the traffic, and no
    // identity anywhere.
    let (code, content_type, metrics) = h.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let allowed = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gateway_http_requests_total{") && l.contains("decision=\"allow\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(allowed, 4.0, "{metrics}");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("gateway_http_requests_total{") && l.contains("decision=\"deny\""))
        .unwrap_or_else(|| panic!("no refusal counted:\n{metrics}"));
    assert!(
        refused.contains("app=\"wiki\"") && refused.ends_with(" 1"),
        "{refused}"
    );
    assert_eq!(
        sample(
            &metrics,
            "gateway_http_request_duration_seconds_count{app=\"wiki\"}"
        ),
        Some(5.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "gateway_service_tokens"), Some(1.0));
    assert_eq!(sample(&metrics, "gateway_relay_keys"), Some(1.0));
    assert!(sample(&metrics, "gateway_relay_keys_loaded_timestamp_seconds").unwrap() > 1.7e9);
    assert_eq!(sample(&metrics, "gateway_ready"), Some(1.0));
    assert_eq!(
        sample(&metrics, "gateway_audit_lost_events_total"),
        Some(0.0)
    );
    assert!(
        metrics.contains("gateway_build_info{version=\""),
        "{metrics}"
    );
    for secret_or_identity in ["alice", "corp.example", &client_id, "127.0.0.1", "ci-bot"] {
        assert!(
            !metrics.contains(secret_or_identity),
            "`{secret_or_identity}` in the metrics:\n{metrics}"
        );
    }
    // Durability shows up within a sync interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(
        &h.admin_get("/metrics").2,
        "gateway_audit_durable_events_total",
    ) < Some(5.0)
    {
        assert!(Instant::now() < deadline, "{}", h.admin_get("/metrics").2);
        std::thread::sleep(Duration::from_millis(100));
    }

    // `gateway status`, as an operator runs it, and its JSON.
    let text = h.daemon().status(false);
    assert!(text.contains(", ready"), "{text}");
    assert!(text.contains("1 apps; 1 service tokens"), "{text}");
    assert!(text.contains("relay keys: 1 from https://"), "{text}");
    assert!(text.contains("xdp:    not configured"), "{text}");
    assert!(text.contains("0 lost"), "{text}");
    let status: serde_json::Value = serde_json::from_str(&h.daemon().status(true)).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["pid"], h.daemon().pid());
    assert_eq!(status["http"]["listeners"].as_array().unwrap().len(), 2);
    assert!(status["audit"]["durable_events"].as_u64().unwrap() >= 5);

    // The token revoked: the count follows the store without a restart.
    let out = h.token_cli(&["revoke", "ci-bot"]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&h.admin_get("/metrics").2, "gateway_service_tokens") != Some(0.0) {
        assert!(Instant::now() < deadline, "token count never dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_without_a_daemon_says_so() {
    // Port 9 (discard) on loopback: nothing listens there.
    let out = Command::new(gateway_bin())
        .args(["status", "--admin", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "cannot reach the gateway's admin endpoint at 127.0.0.1:9; is the daemon running?"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_secrets_even_at_debug_level() {
    let mut h = Harness::new();
    let (client_id, secret) = token_credentials(&h.token_cli(&["create", "--name", "ci-bot"]));
    let config = h.base_config() + &app(&h);
    h.start_with_env(
        &config,
        &[
            ("GATEWAY_LOG_FORMAT", "json".into()),
            ("GATEWAY_LOG", "debug".into()),
        ],
    );
    let client = h.client(false);
    let alice = h.relay.user_token("alice@corp.example");
    get(&client, &[("cf-access-jwt-assertion", &alice)], 200).await;
    let bot = [
        ("cf-access-client-id", client_id.as_str()),
        ("cf-access-client-secret", secret.as_str()),
    ];
    let r = get(&client, &bot, 200).await;
    let cookie = r
        .headers()
        .get("set-cookie")
        .expect("a session cookie for the service token")
        .to_str()
        .unwrap()
        .to_owned();
    let session = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap();
    // Requests are logged at debug level once they are recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.log().matches("\"message\":\"request\"").count() < 2 {
        assert!(Instant::now() < deadline, "{}", h.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = h.log();
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    for (what, value) in [
        ("the relay JWT", alice.as_str()),
        ("the service-token secret", secret.as_str()),
        ("the session token", session.as_str()),
    ] {
        assert!(!log.contains(value), "{what} is in the log:\n{log}");
    }
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    let mut h = Harness::new();
    let socket_path = h.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = h.base_config() + &app(&h);
    h.start_with_env(
        &config,
        &[("NOTIFY_SOCKET", socket_path.display().to_string())],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let state = |message: String| message.lines().next().unwrap_or_default().to_owned();
    // READY=1 comes once everything is up: the listeners answer by then.
    assert_eq!(next(), "READY=1\n");
    assert_eq!(h.admin_get("/readyz").0, 200);
    h.reload();
    let reloading = next();
    assert_eq!(state(reloading.clone()), "RELOADING=1");
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    assert_eq!(next(), "READY=1\n");
    let status = h.daemon.as_mut().unwrap().stop();
    assert!(status.success());
    assert_eq!(next(), "STOPPING=1\n");
}
