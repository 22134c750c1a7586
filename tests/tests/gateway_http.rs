//! The identity gateway end to end: the real binary on loopback, real TLS
//! (h1 and h2 by ALPN), a relay key server, an upstream recording what it
//! receives, and the audit log. Refused requests are checked three ways:
//! status, audit event, and an upstream that saw nothing.

use gateway_tests::gateway::{AUD, Harness, ISSUER, Relay};
use serde_json::{Value, json};

/// The main test app: Allow alice and anyone in `corp.example` except the
/// `contractors` group; Block `mallory@corp.example`.
fn main_app(h: &Harness) -> String {
    h.app(
        "wiki",
        "app.test",
        "/",
        &format!("aud = \"{AUD}\""),
        r#"
[[app.policy]]
name = "no-mallory"
action = "block"
include = [{ email = "mallory@corp.example" }]

[[app.policy]]
name = "staff"
action = "allow"
include = [{ email_domain = "corp.example" }, { email = "alice@partner.example" }]
exclude = [{ group = "contractors" }]
"#,
    )
}

fn started(apps: impl Fn(&Harness) -> String) -> Harness {
    let mut h = Harness::new();
    let config = h.base_config() + &apps(&h);
    h.start(&config);
    h
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_relay_token_reaches_the_upstream_with_only_the_gateways_identity_headers() {
    let h = started(main_app);
    let token = h.relay.user_token("alice@corp.example");
    for h2 in [false, true] {
        let client = h.client(h2);
        let before = h.upstream.count();
        let (status, headers, body) = get(
            &client,
            "https://app.test/docs/page?x=1",
            &[
                ("cf-access-jwt-assertion", &token),
                // Spoofed identity and forwarding headers, in several spellings.
                ("cf-access-authenticated-user-email", "admin@corp.example"),
                ("x-forwarded-for", "203.0.113.66"),
                ("x-forwarded-host", "evil.test"),
                ("x-real-ip", "203.0.113.66"),
                ("forwarded", "for=203.0.113.66"),
                ("x-original-url", "/admin"),
                ("cf-connecting-ip", "203.0.113.66"),
                ("x-request-id", "spoofed"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "upstream ok\n");
        assert_eq!(h.upstream.count(), before + 1);
        let seen = h.upstream.last();
        assert_eq!(seen.target, "/docs/page?x=1");
        assert_eq!(seen.one("host"), "app.test");
        assert_eq!(
            seen.one("cf-access-authenticated-user-email"),
            "alice@corp.example"
        );
        assert_eq!(seen.one("cf-access-jwt-assertion"), token);
        assert_eq!(seen.one("x-forwarded-for"), "127.0.0.1");
        assert_eq!(seen.one("cf-connecting-ip"), "127.0.0.1");
        assert_eq!(seen.one("x-forwarded-proto"), "https");
        assert_eq!(seen.one("x-forwarded-host"), "app.test");
        assert_eq!(seen.one("x-request-id"), request_id(&headers));
        assert_eq!(seen.one("cf-ipcountry"), "PT");
        for absent in ["x-real-ip", "forwarded", "x-original-url"] {
            assert!(
                seen.values(absent).is_empty(),
                "{absent} reached the upstream"
            );
        }
        let event = h.audit_event(&request_id(&headers));
        assert_eq!(event["layer"], "http");
        assert_eq!(event["decision"], "allow");
        assert_eq!(event["reason"], "policy");
        assert_eq!(event["app"], "wiki");
        assert_eq!(event["policy"], "staff");
        assert_eq!(event["email"], "alice@corp.example");
        assert_eq!(event["auth_method"], "jwt");
        assert_eq!(event["token_issuer"], ISSUER);
        assert_eq!(event["key_id"], "relay-1");
        assert_eq!(event["status"], 200);
        assert_eq!(event["path"], "/docs/page");
        assert_eq!(event["protocol"], if h2 { "HTTP/2.0" } else { "HTTP/1.1" });
        // The token itself is never recorded.
        let line = event.to_string();
        assert!(!line.contains(&token[token.len() - 20..]));
    }
}

/// A header list, and what the gateway must answer and record.
struct Refused {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    reason: &'static str,
}

fn b64(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_identities_never_reach_the_upstream() {
    let h = started(main_app);
    let relay = &h.relay;
    let now = gateway::unix_now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = Relay::user_claims("alice@corp.example");
        change(&mut claims);
        relay.sign(&claims)
    };
    let valid = relay.user_token("alice@corp.example");
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "relay-1"})),
        parts[1]
    );
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("relay-1".into());
        let n = relay.jwk()["n"].as_str().unwrap();
        jsonwebtoken::encode(
            &header,
            &Relay::user_claims("alice@corp.example"),
            &jsonwebtoken::EncodingKey::from_secret(n.as_bytes()),
        )
        .unwrap()
    };
    let jku = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("relay-1".into());
        header.jku = Some("https://attacker.test/keys".into());
        jsonwebtoken::encode(
            &header,
            &Relay::user_claims("alice@corp.example"),
            &jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
                "../../gateway/testdata/rsa-test-key.der"
            )),
        )
        .unwrap()
    };
    let jwt = |token: String| vec![("cf-access-jwt-assertion", token)];
    let cases = vec![
        Refused {
            name: "no credentials",
            headers: vec![],
            status: 401,
            reason: "no_credentials",
        },
        Refused {
            name: "expired",
            headers: jwt(with(&|c| {
                c["exp"] = json!(now - 120);
                c["iat"] = json!(now - 600);
                c["nbf"] = json!(now - 600);
            })),
            status: 401,
            reason: "jwt_expired",
        },
        Refused {
            name: "not yet valid",
            headers: jwt(with(&|c| c["nbf"] = json!(now + 600))),
            status: 401,
            reason: "jwt_not_yet_valid",
        },
        Refused {
            name: "exp as a string",
            headers: jwt(with(&|c| c["exp"] = json!((now + 300).to_string()))),
            status: 401,
            reason: "jwt_invalid",
        },
        Refused {
            name: "other app's audience",
            headers: jwt(with(&|c| c["aud"] = json!(["aud-other"]))),
            status: 401,
            reason: "jwt_wrong_audience",
        },
        Refused {
            name: "other issuer",
            headers: jwt(with(&|c| c["iss"] = json!("https://evil.relay.test"))),
            status: 401,
            reason: "jwt_wrong_issuer",
        },
        Refused {
            name: "issuer with trailing slash",
            headers: jwt(with(&|c| c["iss"] = json!(format!("{ISSUER}/")))),
            status: 401,
            reason: "jwt_wrong_issuer",
        },
        Refused {
            name: "org token",
            headers: jwt(with(&|c| c["type"] = json!("org"))),
            status: 401,
            reason: "jwt_wrong_type",
        },
        Refused {
            name: "alg none",
            headers: jwt(forged_none),
            status: 401,
            reason: "jwt_malformed",
        },
        Refused {
            name: "HS256 with the public key",
            headers: jwt(hs256),
            status: 401,
            reason: "jwt_algorithm",
        },
        Refused {
            name: "jku header",
            headers: jwt(jku),
            status: 401,
            reason: "jwt_forbidden_header",
        },
        Refused {
            name: "signature stripped",
            headers: jwt(format!("{}.{}.", parts[0], parts[1])),
            status: 401,
            reason: "jwt_bad_signature",
        },
        Refused {
            name: "garbage",
            headers: jwt("not.a.jwt".into()),
            status: 401,
            reason: "jwt_malformed",
        },
        Refused {
            name: "two assertion headers",
            headers: vec![
                ("cf-access-jwt-assertion", valid.clone()),
                ("cf-access-jwt-assertion", valid.clone()),
            ],
            status: 401,
            reason: "credential_duplicate",
        },
        Refused {
            name: "comma-joined assertion",
            headers: jwt(format!("{valid},{valid}")),
            status: 401,
            reason: "credential_duplicate",
        },
        Refused {
            name: "cookie when the app does not enable it",
            headers: vec![("cookie", format!("CF_Authorization={valid}"))],
            status: 401,
            reason: "cookie_not_enabled",
        },
        Refused {
            name: "email with two @",
            headers: jwt(with(&|c| c["email"] = json!("a@evil.example@corp.example"))),
            status: 401,
            reason: "jwt_bad_email",
        },
        Refused {
            name: "user outside the policy",
            headers: jwt(relay.user_token("eve@elsewhere.example")),
            status: 403,
            reason: "policy_no_match",
        },
        Refused {
            name: "excluded group",
            headers: jwt(with(&|c| {
                c["email"] = json!("carol@corp.example");
                c["groups"] = json!(["contractors"]);
            })),
            status: 403,
            reason: "policy_no_match",
        },
        Refused {
            name: "blocked user",
            headers: jwt(relay.user_token("mallory@corp.example")),
            status: 403,
            reason: "policy_block",
        },
        Refused {
            name: "service token partial",
            headers: vec![("cf-access-client-id", "x".into())],
            status: 401,
            reason: "service_token_partial",
        },
        Refused {
            name: "unknown service token",
            headers: vec![
                ("cf-access-client-id", "nobody.access".into()),
                ("cf-access-client-secret", "s".repeat(64)),
            ],
            status: 401,
            reason: "service_token_refused",
        },
    ];
    let client = h.client(false);
    let before = h.upstream.count();
    for case in cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, response_headers, body) = get(&client, "https://app.test/", &headers).await;
        assert_eq!(status, case.status, "{}: {body}", case.name);
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{}: not JSON: {body}", case.name));
        let id = request_id(&response_headers);
        assert_eq!(json["request_id"], id.as_str(), "{}", case.name);
        let event = h.audit_event(&id);
        assert_eq!(event["decision"], "deny", "{}", case.name);
        assert_eq!(event["reason"], case.reason, "{}: {event}", case.name);
        assert_eq!(event["status"], case.status, "{}", case.name);
        assert_eq!(
            h.upstream.count(),
            before,
            "{}: the upstream saw a refused request",
            case.name
        );
    }
    // Browsers get a page, not JSON.
    let (status, headers, body) =
        get(&client, "https://app.test/", &[("accept", "text/html,*/*")]).await;
    assert_eq!(status, 401);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains(&request_id(&headers)));
    assert_eq!(h.upstream.count(), before);
    // The relay's certs document was fetched once, at start-up: no refused
    // token made the gateway fetch anything.
    assert_eq!(h.relay.server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_client_address_is_believed_only_from_a_trusted_peer() {
    let mut h = Harness::new();
    // The test client connects from 127.0.0.1: make it a trusted relay.
    let config = h
        .base_config()
        .replacen("[http]\n", "[http]\ntrusted_relays = [\"127.0.0.1/32\"]\n", 1)
        + &h.app(
            "wiki",
            "app.test",
            "/",
            &format!("aud = \"{AUD}\""),
            "[[app.policy]]\nname = \"office\"\naction = \"allow\"\ninclude = [{ email_domain = \"corp.example\" }]\nrequire = [{ ip = [\"203.0.113.0/24\"] }]\n",
        );
    h.start(&config);
    let client = h.client(false);
    let token = h.relay.user_token("alice@corp.example");
    let jwt = ("cf-access-jwt-assertion", token.as_str());

    let (status, headers, _) = get(
        &client,
        "https://app.test/",
        &[jwt, ("cf-connecting-ip", "203.0.113.9")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h.upstream.last().one("x-forwarded-for"), "203.0.113.9");
    assert_eq!(
        h.audit_event(&request_id(&headers))["client_ip"],
        "203.0.113.9"
    );

    let before = h.upstream.count();
    for (value, status_code, reason) in [
        ("198.51.100.9", 403, "policy_no_match"),
        ("203.0.113.9, 198.51.100.9", 400, "duplicate_relay_header"),
        ("not-an-address", 400, "bad_relay_header"),
    ] {
        let (status, headers, body) = get(
            &client,
            "https://app.test/",
            &[jwt, ("cf-connecting-ip", value)],
        )
        .await;
        assert_eq!(status, status_code, "{value}: {body}");
        assert_eq!(
            h.audit_event(&request_id(&headers))["reason"],
            reason,
            "{value}"
        );
    }
    assert_eq!(h.upstream.count(), before);
}
