//! The test OpenID Provider itself, driven by hand with reqwest (no
//! gateway): its discovery document, a full authorization-code flow with
//! PKCE and `client_secret_basic`, a replayed code refused, tampered ID
//! tokens that still verify against its JWKS, the token-endpoint stats, and
//! a refused sign-in. The login tests build on all of this.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use gateway_tests::{
    idp::{Idp, IdpClient, form_action, sign_in},
    pki::TestCa,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use reqwest::{StatusCode, Url, header::LOCATION};
use serde_json::{Value, json};

const CLIENT_ID: &str = "test-client";
const CLIENT_SECRET: &str = "test-client-secret";
const REDIRECT_URI: &str = "https://app.test/cdn-cgi/access/callback";

/// A browser-like client: cookies kept, redirects left to the caller, the
/// test CA trusted.
fn browser(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(ca.client_config(&[b"http/1.1"]))
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

fn random() -> String {
    let mut bytes = [0; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    serde_json::from_str(&response.text().await.expect("body")).expect("JSON")
}

/// One authorization request as the gateway would make it.
struct Authorization {
    url: String,
    state: String,
    nonce: String,
    verifier: String,
}

fn authorization(discovery: &Value) -> Authorization {
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let url = Url::parse_with_params(
        discovery["authorization_endpoint"]
            .as_str()
            .expect("authorization_endpoint"),
        [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("scope", "openid email profile groups"),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .expect("authorization URL");
    Authorization {
        url: url.into(),
        state,
        nonce,
        verifier,
    }
}

/// The code from the callback URL `sign_in` returned, after checking the
/// URL is the redirect URI with our state.
fn code_of(callback: &str, auth: &Authorization) -> String {
    let url = Url::parse(callback).expect("callback URL");
    assert!(
        callback.starts_with(&format!("{REDIRECT_URI}?")),
        "{callback}"
    );
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("state").as_deref(), Some(auth.state.as_str()));
    assert_eq!(param("error"), None, "{callback}");
    param("code").unwrap_or_else(|| panic!("no code in {callback}"))
}

/// The token endpoint's status and JSON body for `code`.
async fn redeem(
    client: &reqwest::Client,
    discovery: &Value,
    code: &str,
    verifier: &str,
) -> (StatusCode, Value) {
    let response = client
        .post(
            discovery["token_endpoint"]
                .as_str()
                .expect("token_endpoint"),
        )
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .expect("token request");
    let status = response.status();
    let body = response.text().await.expect("token body");
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("token body {body:?}: {e}")),
    )
}

/// A whole flow in `client`'s browser as `user`: the authorization (its
/// state, nonce and verifier) and the token endpoint's answer, which must
/// be 200.
async fn flow(client: &reqwest::Client, discovery: &Value, user: &str) -> (Authorization, Value) {
    let auth = authorization(discovery);
    let callback = sign_in(client, &auth.url, user).await;
    let (status, tokens) = redeem(
        client,
        discovery,
        &code_of(&callback, &auth),
        &auth.verifier,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    (auth, tokens)
}

/// The ID token's claims, its signature checked against the provider's
/// JWKS (with the issuer and audience; not the nonce, the tests do that).
fn verified_claims(id_token: &str, jwks: &JwkSet, issuer: &str) -> Value {
    let header = jsonwebtoken::decode_header(id_token).expect("ID token header");
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("ID token kid");
    let jwk = jwks
        .find(&kid)
        .unwrap_or_else(|| panic!("no key {kid} in the JWKS"));
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[CLIENT_ID]);
    jsonwebtoken::decode::<Value>(
        id_token,
        &DecodingKey::from_jwk(jwk).expect("decoding key"),
        &validation,
    )
    .expect("the ID token verifies against the JWKS")
    .claims
}

fn start() -> (TestCa, Idp) {
    let ca = TestCa::new();
    let idp = Idp::start(
        &ca,
        &[IdpClient {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uris: vec![REDIRECT_URI.into()],
        }],
    );
    (ca, idp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_with_pkce_replay_refused_and_tampered_tokens_still_signed() {
    let (ca, idp) = start();
    let issuer = idp.issuer().to_owned();
    assert_eq!(issuer, format!("https://{}", idp.addr()));
    let client = browser(&ca);

    let discovery = get_json(
        &client,
        &format!("{issuer}/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(discovery["issuer"], json!(issuer));
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(discovery["response_types_supported"], json!(["code"]));
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri");
    let jwks: JwkSet =
        serde_json::from_value(get_json(&client, jwks_uri).await).expect("a JWK set");

    // The full flow as alice.
    let auth = authorization(&discovery);
    let callback = sign_in(&client, &auth.url, "alice").await;
    let code = code_of(&callback, &auth);
    let (status, tokens) = redeem(&client, &discovery, &code, &auth.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let claims = verified_claims(
        tokens["id_token"].as_str().expect("id_token"),
        &jwks,
        &issuer,
    );
    assert_eq!(claims["iss"], json!(issuer));
    assert_eq!(claims["aud"], json!(CLIENT_ID));
    assert_eq!(claims["sub"], json!("alice"));
    assert_eq!(claims["nonce"], json!(auth.nonce));
    assert_eq!(claims["email"], json!("alice@corp.test"));
    assert_eq!(claims["email_verified"], json!(true));
    assert_eq!(claims["name"], json!("Alice"));
    assert_eq!(claims["groups"], json!(["engineering"]));

    // The same code again is refused.
    let (status, error) = redeem(&client, &discovery, &code, &auth.verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"], json!("invalid_grant"), "{error}");

    // A wrong verifier is refused too (PKCE is enforced).
    let auth = authorization(&discovery);
    let code_for_wrong_verifier = code_of(&sign_in(&client, &auth.url, "alice").await, &auth);
    let (status, error) = redeem(&client, &discovery, &code_for_wrong_verifier, &random()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"], json!("invalid_grant"), "{error}");

    // Tampered claims, as mallory (unverified email): the nonce replaced,
    // the name removed, the signature still the provider's.
    idp.tamper(json!({"nonce": "x", "name": null}));
    let browser_of_mallory = browser(&ca);
    let (_, tokens) = flow(&browser_of_mallory, &discovery, "mallory").await;
    let claims = verified_claims(tokens["id_token"].as_str().unwrap(), &jwks, &issuer);
    assert_eq!(claims["nonce"], json!("x"));
    assert!(claims.get("name").is_none(), "{claims}");
    assert_eq!(claims["sub"], json!("mallory"));
    assert_eq!(claims["email_verified"], json!(false));

    // Another audience and an expiry in the past: still the provider's
    // signature, but a relying party must refuse it for its claims.
    idp.tamper(json!({"aud": "other-client", "exp": 1000, "iat": 900}));
    let (auth, tokens) = flow(&browser_of_mallory, &discovery, "mallory").await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let jwk = jwks
        .find(&jsonwebtoken::decode_header(id_token).unwrap().kid.unwrap())
        .expect("the signing key");
    let mut signature_only = Validation::new(Algorithm::RS256);
    signature_only.validate_exp = false;
    signature_only.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(
        id_token,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &signature_only,
    )
    .expect("the signature still verifies")
    .claims;
    assert_eq!(claims["aud"], json!("other-client"));
    assert_eq!(
        (claims["exp"].clone(), claims["iat"].clone()),
        (json!(1000), json!(900))
    );
    assert_eq!(
        claims["nonce"],
        json!(auth.nonce),
        "earlier overrides replaced"
    );

    // Reset: the next ID token is untouched again (bob, in his own browser).
    idp.tamper(json!({}));
    let (auth, tokens) = flow(&browser(&ca), &discovery, "bob").await;
    let claims = verified_claims(tokens["id_token"].as_str().unwrap(), &jwks, &issuer);
    assert_eq!(claims["nonce"], json!(auth.nonce));
    assert_eq!(claims["groups"], json!(["sales"]));

    // alice's browser still has its session at the provider: no form.
    let auth = authorization(&discovery);
    let callback = client
        .get(&auth.url)
        .send()
        .await
        .expect("authorize with a session");
    assert!(callback.status().is_redirection());
    let location = callback.headers()[LOCATION].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT_URI}?")),
        "{location}"
    );

    // Every token request was counted, the refused ones included.
    let (requests, ms) = idp.token_stats();
    assert_eq!(requests, 6);
    assert!(ms > 0.0 && ms < 60_000.0, "{ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sign_in_shows_the_form_again_without_a_redirect() {
    let (ca, idp) = start();
    let client = browser(&ca);
    let discovery = get_json(
        &client,
        &format!("{}/.well-known/openid-configuration", idp.issuer()),
    )
    .await;
    let auth = authorization(&discovery);

    // authorize -> the interaction page with the form.
    let response = client.get(&auth.url).send().await.expect("authorize");
    assert!(response.status().is_redirection(), "{}", response.status());
    let page_url = Url::parse(&auth.url)
        .unwrap()
        .join(response.headers()[LOCATION].to_str().unwrap())
        .unwrap();
    let response = client.get(page_url.clone()).send().await.expect("form");
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    for part in [
        r#"<input name="login" id="login""#,
        r#"<input name="password" type="password" id="password">"#,
        r#"<button type="submit" id="submit">Sign in</button>"#,
    ] {
        assert!(page.contains(part), "{part} not in\n{page}");
    }
    let action = form_action(&page, &page_url);
    assert_eq!(action.path(), format!("{}/login", page_url.path()));

    // An unknown user, and a known one with an empty password: the form
    // again, with an error, and no redirect.
    for (login, password) in [("eve", "pw"), ("alice", "")] {
        let response = client
            .post(action.clone())
            .form(&[("login", login), ("password", password)])
            .send()
            .await
            .expect("post the form");
        assert_eq!(response.status(), StatusCode::OK, "{login}");
        assert!(response.headers().get(LOCATION).is_none());
        let page = response.text().await.unwrap();
        assert!(page.contains(r#"id="error""#), "{page}");
        assert!(page.contains(r#"id="password""#), "{page}");
    }

    // The same interaction still accepts the right user afterwards.
    let response = client
        .post(action)
        .form(&[("login", "alice"), ("password", "pw")])
        .send()
        .await
        .expect("post the form");
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(idp.token_stats(), (0, 0.0));
}
