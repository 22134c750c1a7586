//! The certs cache against a real HTTPS server on loopback: fail closed
//! before any key, last good keys on a bad refresh, at most one fetch per
//! cooldown under a flood of unknown key ids, and key rotation picked up.

use std::time::Duration;

use base64::Engine as _;
use gateway::jwt::{
    Expectations,
    certs::{CertsCache, CertsError},
};
use gateway_tests::https::{HttpsServer, Reply};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const ISS: &str = "https://team.cloudflareaccess.example";
const AUD: &str = "aud-tag-1";

struct Key {
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kid": kid, "kty": "EC", "crv": "P-256", "alg": "ES256",
                    "x": b64(&public[1..33]), "y": b64(&public[33..65])}),
    }
}

fn certs(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn token(key: &Key, kid: &str) -> String {
    let now = gateway::unix_now();
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::ES256)
    };
    let claims = json!({"iss": ISS, "aud": [AUD], "sub": "u", "email": "alice@corp.example",
                        "iat": now, "nbf": now, "exp": now + 300, "type": "app"});
    encode(&header, &claims, &key.encoding).unwrap()
}

fn expect() -> Expectations {
    Expectations::new(ISS, AUD, "app", 30)
}

fn cache(server: &HttpsServer, dir: &tempfile::TempDir, cooldown: Duration) -> CertsCache {
    let ca = dir.path().join("ca.pem");
    server.write_ca(&ca);
    CertsCache::new(server.url("/cdn-cgi/access/certs"), Some(ca), cooldown)
}

#[tokio::test]
async fn fails_closed_until_keys_load_then_keeps_the_last_good_set() {
    let server = HttpsServer::start(Reply {
        status: 503,
        body: "down".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let certs_cache = cache(&server, &dir, Duration::ZERO);
    let a = key("a");
    let error = certs_cache
        .verify(&token(&a, "a"), &expect())
        .await
        .unwrap_err();
    assert!(matches!(error, CertsError::NoKeys { .. }), "{error}");

    server.set(200, &certs(&[&a]));
    certs_cache.refresh().await.unwrap();
    assert!(certs_cache.verify(&token(&a, "a"), &expect()).await.is_ok());

    for (status, body) in [
        (500, "oops"),
        (200, "<html>login</html>"),
        (200, r#"{"keys":[]}"#),
    ] {
        server.set(status, body);
        assert!(certs_cache.refresh().await.is_err(), "{body} is refused");
        assert!(
            certs_cache.verify(&token(&a, "a"), &expect()).await.is_ok(),
            "the last good keys stay after {body}"
        );
    }
}

#[tokio::test]
async fn unknown_kids_cost_at_most_one_fetch_per_cooldown() {
    let a = key("a");
    let server = HttpsServer::start(Reply {
        status: 200,
        body: certs(&[&a]),
    });
    let dir = tempfile::tempdir().unwrap();
    let certs_cache = cache(&server, &dir, Duration::from_secs(60));
    certs_cache.refresh().await.unwrap();
    let before = server.requests();
    for i in 0..200 {
        let kid = format!("random-{i}");
        let error = certs_cache
            .verify(&token(&a, &kid), &expect())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("unknown key id"), "{error}");
    }
    assert!(
        server.requests() - before <= 1,
        "{} fetches for 200 unknown kids",
        server.requests() - before
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let (a, b) = (key("a"), key("b"));
    let server = HttpsServer::start(Reply {
        status: 200,
        body: certs(&[&a]),
    });
    let dir = tempfile::tempdir().unwrap();
    let certs_cache = cache(&server, &dir, Duration::from_millis(10));
    certs_cache.refresh().await.unwrap();
    server.set(200, &certs(&[&a, &b]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claims = certs_cache
        .verify(&token(&b, "b"), &expect())
        .await
        .unwrap();
    assert_eq!(claims.email.as_deref(), Some("alice@corp.example"));
    assert_eq!(certs_cache.keys().unwrap().ids(), vec!["a", "b"]);
    // A token signed by another key under a known kid is still refused.
    let forged = token(&key("b"), "b");
    assert!(certs_cache.verify(&forged, &expect()).await.is_err());
}
