//! Service tokens through the running gateway: created with the real CLI,
//! exchanged for a gateway-signed session (cookie and upstream assertion,
//! verifiable with the published certs document), revoked and rotated while
//! the gateway runs.

use std::time::{Duration, Instant};

use gateway::jwt::{Expectations, KeySet};
use gateway_tests::{daemon::token_credentials, gateway::Harness};

async fn send(h: &Harness, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap) {
    let mut request = h.client(false).get("https://app.test/api");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.headers().clone())
}

/// Retries `check` for up to 5 s (the token store is re-read every second).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tokens_are_exchanged_for_sessions_and_their_lifecycle_applies_live() {
    let mut h = Harness::new();
    let (bot_id, bot_secret) = token_credentials(&h.token_cli(&["create", "--name", "bot"]));
    let (other_id, other_secret) = token_credentials(&h.token_cli(&["create", "--name", "other"]));
    let config = h.base_config()
        + &h.app(
            "api",
            "app.test",
            "/",
            "service_token_header = \"authorization\"",
            &format!(
                "[[app.policy]]\nname = \"bots\"\naction = \"service_auth\"\ninclude = [{{ service_token = \"{bot_id}\" }}]\n"
            ),
        );
    h.start(&config);

    // The two-header form: allowed, a session cookie comes back, and the
    // upstream gets a gateway-signed assertion but never the secret.
    let (status, headers) = send(
        &h,
        &[
            ("cf-access-client-id", &bot_id),
            ("cf-access-client-secret", &bot_secret),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("CF_Authorization="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Domain"), "{cookie} is not host-only");
    let session = cookie["CF_Authorization=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let seen = h.upstream.last();
    assert_eq!(seen.one("cf-access-jwt-assertion"), session);
    assert!(seen.values("cf-access-client-secret").is_empty());
    assert!(seen.values("cf-access-client-id").is_empty());
    let event = h.audit_event(headers["x-request-id"].to_str().unwrap());
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["auth_method"], "service_token");
    assert_eq!(event["token_client_id"], bot_id.as_str());
    assert_eq!(event["token_name"], "bot");
    assert_eq!(event["policy"], "bots");

    // The session verifies against the keys the gateway publishes.
    let certs = h
        .client(false)
        .get("https://app.test/cdn-cgi/access/certs")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let keys = KeySet::from_certs_json(&certs).expect("certs document");
    let claims = gateway::jwt::verify(
        &session,
        &keys,
        &Expectations::new("https://gateway.test", "app:api", "app", 5),
    )
    .expect("the session verifies with the published keys");
    assert_eq!(claims.common_name.as_deref(), Some(bot_id.as_str()));

    // The session alone (cookie) works, without the secret.
    let (status, headers) = send(&h, &[("cookie", &format!("CF_Authorization={session}"))]).await;
    assert_eq!(status, 200);
    let event = h.audit_event(headers["x-request-id"].to_str().unwrap());
    assert_eq!(event["auth_method"], "gateway_session");

    // The single-header JSON form, stripped before the upstream.
    let json = format!(
        r#"{{"cf-access-client-id": "{bot_id}", "cf-access-client-secret": "{bot_secret}"}}"#
    );
    let (status, _) = send(&h, &[("authorization", &json)]).await;
    assert_eq!(status, 200);
    assert!(h.upstream.last().values("authorization").is_empty());

    // A valid token the policy does not name: 403. Wrong secret and unknown
    // id: the same 401.
    let before = h.upstream.count();
    let (status, _) = send(
        &h,
        &[
            ("cf-access-client-id", &other_id),
            ("cf-access-client-secret", &other_secret),
        ],
    )
    .await;
    assert_eq!(status, 403);
    let (wrong, wrong_headers) = send(
        &h,
        &[
            ("cf-access-client-id", &bot_id),
            ("cf-access-client-secret", &other_secret),
        ],
    )
    .await;
    let (unknown, unknown_headers) = send(
        &h,
        &[
            ("cf-access-client-id", "nobody.access"),
            ("cf-access-client-secret", &other_secret),
        ],
    )
    .await;
    assert_eq!((wrong, unknown), (401, 401));
    assert_eq!(
        wrong_headers["content-length"], unknown_headers["content-length"],
        "wrong secret and unknown id must look the same"
    );
    assert_eq!(h.upstream.count(), before);

    // Rotation with no grace: the old secret stops working without a
    // restart, the new one works.
    let (_, new_secret) = token_credentials(&h.token_cli(&["rotate", "bot", "--grace", "0s"]));
    eventually("the old secret is refused", async || {
        send(
            &h,
            &[
                ("cf-access-client-id", &bot_id),
                ("cf-access-client-secret", &bot_secret),
            ],
        )
        .await
        .0 == 401
    })
    .await;
    let (status, _) = send(
        &h,
        &[
            ("cf-access-client-id", &bot_id),
            ("cf-access-client-secret", &new_secret),
        ],
    )
    .await;
    assert_eq!(status, 200);

    // Revocation ends the token and every session made from it.
    let out = h.token_cli(&["revoke", "bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the revoked token is refused", async || {
        send(
            &h,
            &[
                ("cf-access-client-id", &bot_id),
                ("cf-access-client-secret", &new_secret),
            ],
        )
        .await
        .0 == 401
    })
    .await;
    let (status, headers) = send(&h, &[("cookie", &format!("CF_Authorization={session}"))]).await;
    assert_eq!(status, 401);
    let event = h.audit_event(headers["x-request-id"].to_str().unwrap());
    assert_eq!(event["reason"], "service_token_refused");

    // No secret anywhere in the log or the audit trail.
    let audit = std::fs::read_to_string(h.path("audit.jsonl")).unwrap();
    for secret in [&bot_secret, &new_secret, &other_secret] {
        assert!(!audit.contains(secret.as_str()));
        assert!(!h.log().contains(secret.as_str()));
    }
    assert!(!audit.contains(&session));
}
