//! The gateway under operational stress: key-id floods, a relay whose keys
//! never load, key rotation at the relay, policy reloads on SIGHUP with a
//! connection open, certificate reloads, a dead upstream, and a daemon
//! limited to one CPU (single-threaded runtime).

use std::time::{Duration, Instant};

use gateway_tests::gateway::{AUD, Harness, Relay};
use serde_json::json;

fn alice_only(h: &Harness) -> String {
    h.app(
        "wiki",
        "app.test",
        "/",
        &format!("aud = \"{AUD}\""),
        "[[app.policy]]\nname = \"alice\"\naction = \"allow\"\ninclude = [{ email = \"alice@corp.example\" }]\n",
    )
}

async fn status(client: &reqwest::Client, token: &str) -> u16 {
    client
        .get("https://app.test/")
        .header("cf-access-jwt-assertion", token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A request with a valid token for alice: its status and audit event.
async fn as_alice(h: &Harness) -> (u16, serde_json::Value) {
    let response = h
        .client(false)
        .get("https://app.test/")
        .header(
            "cf-access-jwt-assertion",
            h.relay.user_token("alice@corp.example"),
        )
        .send()
        .await
        .expect("request");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (response.status().as_u16(), h.audit_event(&id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_key_ids_costs_at_most_one_fetch_per_cooldown() {
    let mut h = Harness::new();
    let config = h.base_config() + &alice_only(&h);
    h.start(&config);
    let client = h.client(true);
    let fetched_at_start = h.relay.server.requests();
    assert_eq!(fetched_at_start, 1);
    for i in 0..500 {
        let token = h.relay.sign_with_kid(
            &format!("random-{i}"),
            &Relay::user_claims("alice@corp.example"),
        );
        assert_eq!(status(&client, &token).await, 401);
    }
    // At most one fetch within the cooldown (the start-up fetch already
    // counts), however many unknown kids arrive.
    assert!(h.relay.server.requests() <= fetched_at_start + 1);
    assert_eq!(
        status(&client, &h.relay.user_token("alice@corp.example")).await,
        200
    );
    let unknown = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["reason"] == "jwt_unknown_key")
            .count()
    };
    let events = h.wait_for_audit(|events| unknown(events) >= 500);
    assert_eq!(unknown(&events), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_relay_keys_every_relay_token_is_refused_with_503() {
    let mut h = Harness::new();
    h.relay.server.set(500, "<html>maintenance</html>");
    let config = h.base_config().replace(
        "kid_cooldown_secs = 60",
        "kid_cooldown_secs = 60\nrefresh_secs = 1",
    ) + &alice_only(&h);
    h.start(&config);
    assert!(
        h.log().contains("relay signing keys not loaded"),
        "{}",
        h.log()
    );
    let (status_code, event) = as_alice(&h).await;
    assert_eq!(status_code, 503);
    assert_eq!(event["reason"], "keys_unavailable");
    assert_eq!(h.upstream.count(), 0);

    // Once the relay serves keys again, the background refresh loads them.
    h.relay
        .server
        .set(200, &json!({"keys": [h.relay.jwk().clone()]}).to_string());
    let token = h.relay.user_token("alice@corp.example");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&h.client(false), &token).await != 200 {
        assert!(Instant::now() < deadline, "keys never loaded:\n{}", h.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_policy_for_the_next_request_on_an_open_connection() {
    let mut h = Harness::new();
    let config = h.base_config() + &alice_only(&h);
    h.start(&config);
    // One client: its pooled connection stays open across the reload.
    let client = h.client(false);
    let bob = h.relay.user_token("bob@corp.example");
    let alice = h.relay.user_token("alice@corp.example");
    assert_eq!(status(&client, &alice).await, 200);
    assert_eq!(status(&client, &bob).await, 403);

    // A slow request in flight across the reload completes.
    let slow = {
        let client = client.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            client
                .get("https://app.test/slow")
                .header("cf-access-jwt-assertion", alice)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let reloaded = h.base_config()
        + &h.app(
            "wiki",
            "app.test",
            "/",
            &format!("aud = \"{AUD}\""),
            "[[app.policy]]\nname = \"bob\"\naction = \"allow\"\ninclude = [{ email = \"bob@corp.example\" }]\n",
        );
    h.rewrite(&reloaded);
    h.reload();
    assert_eq!(status(&client, &bob).await, 200);
    assert_eq!(status(&client, &alice).await, 403);
    assert_eq!(
        slow.await
            .unwrap()
            .expect("in-flight request survived the reload"),
        200
    );

    // Audit settings cannot change under a running writer: the reload
    // applies the rest and says so.
    const AUDIT_LATER: &str = "[audit] changes take effect at the next restart";
    assert!(!h.log().contains(AUDIT_LATER), "{}", h.log());
    let audit_changed =
        h.base_config() + "sync_interval_ms = 200\n" + &reloaded[h.base_config().len()..];
    h.rewrite(&audit_changed);
    h.reload();
    assert!(h.log().contains(AUDIT_LATER), "{}", h.log());
    assert_eq!(status(&client, &bob).await, 200);

    // A broken config is refused and the running one kept.
    h.rewrite("[http]\nbogus = 1\n");
    h.daemon.as_ref().unwrap().signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.log().contains("reload failed") {
        assert!(Instant::now() < deadline, "{}", h.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        h.log().contains("`bogus`") || h.log().contains("bogus"),
        "{}",
        h.log()
    );
    assert_eq!(status(&client, &bob).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_without_a_restart() {
    let mut h = Harness::new();
    let config = h.base_config() + &alice_only(&h);
    h.start(&config);
    let serial = |h: &Harness| {
        let config = std::sync::Arc::new(h.ca.client_config(&[b"http/1.1"]));
        let mut connection =
            rustls::ClientConnection::new(config, "app.test".try_into().unwrap()).unwrap();
        let mut tcp = std::net::TcpStream::connect(h.https_addr()).unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).unwrap();
        }
        connection.peer_certificates().unwrap()[0].to_vec()
    };
    let before = serial(&h);
    let issued = h.ca.issue(&["app.test", "other.test"]);
    std::fs::write(h.path("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(h.path("key.pem"), &issued.key_pem).unwrap();
    h.reload();
    let after = serial(&h);
    assert_ne!(before, after);
    assert_eq!(after, issued.cert_der.to_vec());
    assert!(h.log().contains("certificate reloaded"), "{}", h.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_a_502_and_is_recorded() {
    let mut h = Harness::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let config = h.base_config() + &alice_only(&h).replace(&h.upstream.url(), &dead_url);
    h.start(&config);
    let (status_code, event) = as_alice(&h).await;
    assert_eq!(status_code, 502);
    assert_eq!(event["reason"], "upstream_failed");
    assert_eq!(event["email"], "alice@corp.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_gateway_runs_single_threaded_and_serves_and_audits() {
    // The test body runs on this thread, and the daemon started from it
    // inherits its CPU mask: one CPU.
    gateway_tests::pin_thread_to_cpu(0);
    let mut h = Harness::new();
    let config = h.base_config() + &alice_only(&h);
    h.start(&config);
    assert!(h.log().contains("runtime=CurrentThread"), "{}", h.log());
    let (status, event) = as_alice(&h).await;
    assert_eq!(status, 200);
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["email"], "alice@corp.example");
}
