//! Browser sign-in through the running gateway against a real OpenID
//! provider (oidc-provider on Node.js): the whole flow with the identity
//! reaching the upstream, API clients, the picker, logout, and the attacks
//! of reliability.md's REDIR and COOK sections and on the callback (state,
//! replayed code, nonce, another client's token, expiry, issuer).
//!
//! HTTP clients here carry the gateway's cookies by hand so a test can
//! replay, swap or alter them; `browser.rs` does the same flow in Chromium.

use gateway_tests::signin::{
    self, CLIENT_ID, SignInSetup, browser_get, cookie_value, location, session, set_cookie,
};
use serde_json::{Value, json};

/// `wiki` on app.test: corp's users in group engineering. `other` on
/// other.test: two providers (a picker), group finance only.
fn apps(setup: &SignInSetup) -> String {
    let h = &setup.harness;
    h.app(
        "wiki",
        "app.test",
        "/",
        "login = [\"corp\"]\nsession_lifetime_secs = 3600",
        "[[app.policy]]\nname = \"engineers\"\naction = \"allow\"\ninclude = [{ group = \"engineering\" }]\n",
    ) + &h.app(
        "other",
        "other.test",
        "/",
        "login = [\"corp\", \"partner\"]",
        "[[app.policy]]\nname = \"finance\"\naction = \"allow\"\ninclude = [{ group = \"finance\" }]\n",
    )
}

fn started() -> SignInSetup {
    let mut setup = SignInSetup::new();
    let apps = apps(&setup);
    setup.start(&apps);
    setup
}

async fn json_body(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.unwrap()).expect("a JSON body")
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The audit event with `reason`, waiting for it.
fn event(setup: &SignInSetup, reason: &str) -> Value {
    let events = setup
        .harness
        .wait_for_audit(|events| events.iter().any(|e| e["reason"] == reason));
    events
        .into_iter()
        .rfind(|e| e["reason"] == reason)
        .expect("found above")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_reaches_the_app_as_itself_and_signs_out() {
    let setup = started();
    let gateway = setup.harness.client(false);
    let page = setup.url("app.test", "/docs/page?x=1");

    // An API client is told 401 in JSON, never redirected.
    let api = gateway.get(&page).send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert!(api.headers().get("location").is_none());
    let body = json_body(api).await;
    assert_eq!(body["error"], "no_credentials");

    // The browser is sent to the provider: code flow, PKCE S256, state,
    // nonce, the callback on this host.
    let started = signin::start(&gateway, &page).await;
    let authorize = url::Url::parse(&started.authorize_url).unwrap();
    assert!(started.authorize_url.starts_with(setup.idp.issuer()));
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        setup.url("app.test", "/cdn-cgi/access/callback")
    );
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["code_challenge"].len() == 43);
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    assert_eq!(event(&setup, "login_required")["decision"], "deny");

    // Signing in at the provider, then the callback: a session cookie for
    // this app only, and back to the page asked for.
    let callback =
        gateway_tests::idp::sign_in(&setup.idp_client(), &started.authorize_url, "alice").await;
    let response = browser_get(
        &gateway,
        &callback,
        Some(&format!("CF_Access_Login={}", started.login_cookie)),
    )
    .await;
    assert_eq!(location(&response), "/docs/page?x=1");
    let cookie = set_cookie(&response, "CF_Authorization").unwrap();
    for attribute in [
        "Path=/;",
        "Max-Age=3600",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Domain"), "host-only: {cookie}");
    let cleared = set_cookie(&response, "CF_Access_Login").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let token = cookie_value(&cookie);
    let session = claims(&token);
    assert_eq!(session["iss"], "https://gateway.test");
    assert_eq!(session["aud"], json!(["app:wiki"]));
    assert_eq!(session["email"], "alice@corp.test");
    assert_eq!(session["groups"], json!(["engineering"]));
    assert_eq!(session["sub"], "alice");
    assert_eq!(session["type"], "app");
    assert_eq!(session["idp"]["id"], "corp");
    assert_eq!(
        session["exp"].as_u64().unwrap() - session["iat"].as_u64().unwrap(),
        3600
    );
    let login = event(&setup, "login");
    assert_eq!(login["decision"], "allow");
    assert_eq!(login["email"], "alice@corp.test");
    assert_eq!(login["app"], "wiki");
    assert_eq!(login["auth_method"], "oidc");
    assert_eq!(login["token_issuer"], setup.idp.issuer());

    // The session reaches the upstream with the same token format a relay
    // would send, and no cookie.
    let cookie_header = format!("CF_Authorization={token}");
    let response = browser_get(&gateway, &page, Some(&cookie_header)).await;
    assert_eq!(response.status(), 200);
    let seen = setup.harness.upstream.last();
    assert_eq!(
        seen.one("cf-access-authenticated-user-email"),
        "alice@corp.test"
    );
    assert_eq!(seen.one("cf-access-jwt-assertion"), token);
    assert!(
        seen.values("cookie")
            .iter()
            .all(|c| !c.contains("CF_Authorization"))
    );
    // So does an API client holding the cookie.
    let api = gateway
        .get(&page)
        .header("cookie", &cookie_header)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);

    // Sign-out: the cookie is cleared and the token itself refused.
    let out = browser_get(
        &gateway,
        &setup.url("app.test", "/cdn-cgi/access/logout"),
        Some(&cookie_header),
    )
    .await;
    assert_eq!(out.status(), 200);
    let cleared = set_cookie(&out, "CF_Authorization").unwrap();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Path=/"),
        "{cleared}"
    );
    let logout = event(&setup, "logout");
    assert_eq!(logout["email"], "alice@corp.test");
    let after = gateway
        .get(&page)
        .header("cookie", &cookie_header)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    let body = json_body(after).await;
    assert_eq!(body["error"], "session_signed_out");
    // A browser holding it is sent to sign in again.
    let again = browser_get(&gateway, &page, Some(&cookie_header)).await;
    assert_eq!(again.status(), 302);
    assert!(location(&again).starts_with(setup.idp.issuer()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_see_the_mapped_identity() {
    let setup = started();
    let gateway = setup.harness.client(false);

    // Two providers: the picker, escaped, linking each with the return path.
    let first = browser_get(&gateway, &setup.url("other.test", "/books"), None).await;
    assert_eq!(first.status(), 302);
    let picker_url = location(&first);
    assert_eq!(picker_url, "/cdn-cgi/access/login?redirect=%2Fbooks");
    let picker = browser_get(&gateway, &setup.url("other.test", &picker_url), None).await;
    assert_eq!(picker.status(), 200);
    let page = picker.text().await.unwrap();
    assert!(
        page.contains("Corp SSO") && page.contains("Partner &lt;SSO&gt;"),
        "{page}"
    );
    assert!(page.contains("provider=partner"), "{page}");
    let partner = signin::start(
        &gateway,
        &setup.url(
            "other.test",
            "/cdn-cgi/access/login?redirect=%2Fbooks&provider=partner",
        ),
    )
    .await;
    assert!(partner.authorize_url.contains("client_id=other-client"));
    let unknown = browser_get(
        &gateway,
        &setup.url("other.test", "/cdn-cgi/access/login?provider=nope"),
        None,
    )
    .await;
    assert_eq!(unknown.status(), 400);

    // alice is in engineering: signed in to other.test, refused by its
    // policy with the 403 page.
    let url = setup.url(
        "other.test",
        "/cdn-cgi/access/login?redirect=%2Fbooks&provider=corp",
    );
    let token = session(&signin::sign_in(&setup, &url, "alice").await);
    let cookie = format!("CF_Authorization={token}");
    let refused = browser_get(&gateway, &setup.url("other.test", "/books"), Some(&cookie)).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("not allowed"));

    // mallory's provider says her email is unverified: she is in
    // engineering, so the group policy lets her in, but no email is
    // believed or forwarded.
    let response = signin::sign_in(&setup, &setup.url("app.test", "/"), "mallory").await;
    let token = session(&response);
    assert!(claims(&token).get("email").is_none());
    let ok = browser_get(
        &gateway,
        &setup.url("app.test", "/"),
        Some(&format!("CF_Authorization={token}")),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert!(
        setup
            .harness
            .upstream
            .last()
            .values("cf-access-authenticated-user-email")
            .is_empty()
    );
    // bob (sales) signs in but the wiki refuses him.
    let token = session(&signin::sign_in(&setup, &setup.url("app.test", "/"), "bob").await);
    let refused = browser_get(
        &gateway,
        &setup.url("app.test", "/"),
        Some(&format!("CF_Authorization={token}")),
    )
    .await;
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_scoped_to_their_app() {
    let setup = started();
    let gateway = setup.harness.client(false);
    let token = session(&signin::sign_in(&setup, &setup.url("app.test", "/"), "alice").await);

    // COOK-02: app.test's session sent to other.test is not a session there.
    let cookie = format!("CF_Authorization={token}");
    let api = gateway
        .get(setup.url("other.test", "/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let body = json_body(api).await;
    assert_eq!(body["error"], "jwt_wrong_audience");
    // COOK-03: two session cookies in one request are refused.
    let twice = gateway
        .get(setup.url("app.test", "/"))
        .header("cookie", format!("{cookie}; CF_Authorization={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
    // For a browser too: signing in again would not remove the other one.
    let twice = browser_get(
        &gateway,
        &setup.url("app.test", "/"),
        Some(&format!("{cookie}; CF_Authorization={token}")),
    )
    .await;
    assert_eq!(twice.status(), 401);
    // A forged session (signature altered) is refused, and a browser
    // presenting it is sent to sign in rather than let through.
    let forged = format!("CF_Authorization={}x", &token[..token.len() - 1]);
    let response = browser_get(&gateway, &setup.url("app.test", "/"), Some(&forged)).await;
    assert_eq!(response.status(), 302);
    assert!(
        setup.harness.upstream.requests().is_empty(),
        "nothing reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirects_are_refused_before_anything_starts() {
    let setup = started();
    let gateway = setup.harness.client(false);
    // REDIR-01: each encoded as the `redirect` parameter; REDIR-03: no
    // sign-in starts, no cookie is set.
    for target in [
        "//evil.com",
        "/\\evil.com",
        "\\/evil.com",
        "/%09/evil.com",
        "/%2F%2Fevil.com",
        "https:evil.com",
        "javascript:alert(1)",
        "https://ours@evil.com",
        "https://evil-app.test",
        "https://app.test.evil.com",
        "/a/../../evil",
        "/\r\nLocation: https://evil.com",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
        let response = browser_get(
            &gateway,
            &setup.url(
                "app.test",
                &format!("/cdn-cgi/access/login?redirect={encoded}"),
            ),
            None,
        )
        .await;
        assert_eq!(response.status(), 400, "{target:?}");
        assert!(response.headers().get("location").is_none(), "{target:?}");
        assert!(response.headers().get("set-cookie").is_none(), "{target:?}");
    }
    // A path on the same host is where the browser lands afterwards.
    let url = setup.url(
        "app.test",
        "/cdn-cgi/access/login?redirect=%2Fwiki%2Fa%3Fb%3Dc",
    );
    let response = signin::sign_in(&setup, &url, "alice").await;
    // REDIR-02: exactly the path, nothing signed in the URL.
    assert_eq!(location(&response), "/wiki/a?b=c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_that_were_not_ours_are_refused() {
    let setup = started();
    let gateway = setup.harness.client(false);
    let page = setup.url("app.test", "/");
    let refused = |response: &reqwest::Response| {
        assert_eq!(response.status(), 401, "{response:?}");
        assert!(set_cookie(response, "CF_Authorization").is_none());
    };

    // No login cookie (the callback URL carried to another browser: login
    // CSRF), an altered one, and a state that is not the cookie's.
    let (callback, login) = signin::through_provider(&setup, &page, "alice").await;
    let response = browser_get(&gateway, &callback, None).await;
    refused(&response);
    event(&setup, "login_no_state");
    let mut altered = login.clone().into_bytes();
    altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let response = browser_get(
        &gateway,
        &callback,
        Some(&format!("CF_Access_Login={altered}")),
    )
    .await;
    refused(&response);
    event(&setup, "login_state_invalid");
    let (other_callback, _) = signin::through_provider(&setup, &page, "alice").await;
    let response = browser_get(
        &gateway,
        &other_callback,
        Some(&format!("CF_Access_Login={login}")),
    )
    .await;
    refused(&response);
    event(&setup, "login_state_mismatch");

    // The genuine pair works once; the same code again is refused by the
    // provider (replay), even with the login cookie kept.
    let cookie = format!("CF_Access_Login={login}");
    let ok = browser_get(&gateway, &callback, Some(&cookie)).await;
    assert_eq!(ok.status(), 302);
    let replay = browser_get(&gateway, &callback, Some(&cookie)).await;
    refused(&replay);
    event(&setup, "login_code_rejected");

    // ID tokens the provider signs but that are not for this sign-in.
    for (overrides, reason) in [
        (json!({"nonce": "another-sign-in"}), "login_nonce_mismatch"),
        (json!({"nonce": null}), "login_nonce_mismatch"),
        (json!({"aud": "other-client"}), "login_token_audience"),
        (
            json!({"aud": [CLIENT_ID, "other-client"]}),
            "login_token_audience",
        ),
        (json!({"azp": "other-client"}), "login_token_audience"),
        (json!({"exp": 1000, "iat": 900}), "login_token_expired"),
        (json!({"iss": "https://evil.test"}), "login_token_issuer"),
    ] {
        setup.idp.tamper(overrides.clone());
        let response = signin::sign_in(&setup, &page, "alice").await;
        refused(&response);
        let failed = event(&setup, reason);
        assert_eq!(failed["decision"], "deny", "{overrides}");
    }
    setup.idp.tamper(json!({}));
    assert!(signin::sign_in(&setup, &page, "alice").await.status() == 302);

    // The provider saying no (the user cancelled).
    let started = signin::start(&gateway, &page).await;
    let state = url::Url::parse(&started.authorize_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let response = browser_get(
        &gateway,
        &setup.url(
            "app.test",
            &format!("/cdn-cgi/access/callback?error=access_denied&state={state}"),
        ),
        Some(&format!("CF_Access_Login={}", started.login_cookie)),
    )
    .await;
    refused(&response);
    event(&setup, "login_provider_error");
    assert!(
        setup.harness.upstream.requests().is_empty(),
        "nothing reached the app"
    );
}
