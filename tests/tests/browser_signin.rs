//! A real browser signs in: headless Chromium (Debian's, under
//! chromedriver) goes to an app behind the running gateway, is sent to the
//! real OpenID provider, fills its login form, lands back on the page it
//! asked for with the upstream seeing who it is; on a second app whose
//! policy refuses the user it picks a provider on the picker page and gets
//! the 403 page; then it signs out.

use std::net::{IpAddr, Ipv4Addr};

use gateway_tests::{browser::Browser, idp::PASSWORD, signin::SignInSetup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_and_is_refused_where_the_policy_says_so() {
    let mut setup = SignInSetup::new();
    let h = &setup.harness;
    let apps = h.app(
        "wiki",
        "app.test",
        "/",
        "login = [\"corp\"]",
        "[[app.policy]]\nname = \"engineers\"\naction = \"allow\"\ninclude = [{ group = \"engineering\" }]\n",
    ) + &h.app(
        "books",
        "other.test",
        "/",
        "login = [\"corp\", \"partner\"]",
        "[[app.policy]]\nname = \"finance\"\naction = \"allow\"\ninclude = [{ group = \"finance\" }]\n",
    );
    setup.start(&apps);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let browser = Browser::start(&[("app.test", loopback), ("other.test", loopback)]).await;

    // The app sends the browser to the provider's login form.
    let page = setup.url("app.test", "/hello?from=browser");
    browser.goto(&page).await;
    browser.wait_for_url(setup.idp.issuer()).await;
    browser.fill("#login", "alice").await;
    browser.fill("#password", PASSWORD).await;
    browser.click("#submit").await;

    // Back where it started, signed in; the upstream saw alice.
    browser.wait_for_url(&page).await;
    assert!(browser.text().await.contains("upstream ok"));
    // (Chromium asks for /favicon.ico too, with the session.)
    let seen = setup
        .harness
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.target == "/hello?from=browser")
        .expect("the page reached the app");
    assert_eq!(
        seen.one("cf-access-authenticated-user-email"),
        "alice@corp.test"
    );
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c.name == "CF_Authorization")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert!(session.http_only && session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    assert_eq!(session.path, "/");
    assert_eq!(seen.one("cf-access-jwt-assertion"), session.value);
    assert!(
        cookies.iter().all(|c| c.name != "CF_Access_Login"),
        "the login cookie is cleared: {cookies:?}"
    );

    // The second app offers two providers; alice picks corp, is already
    // signed in there, and her group is refused: the 403 page.
    browser.goto(&setup.url("other.test", "/books")).await;
    browser
        .wait_for_url(&setup.url("other.test", "/cdn-cgi/access/login"))
        .await;
    let picker = browser.text().await;
    assert!(
        picker.contains("Corp SSO") && picker.contains("Partner <SSO>"),
        "{picker}"
    );
    browser.click("a[href*='provider=corp']").await;
    browser
        .wait_for_url(&setup.url("other.test", "/books"))
        .await;
    let refused = browser.text().await;
    assert!(
        refused.contains("403") && refused.contains("not allowed"),
        "{refused}"
    );
    assert!(
        setup
            .harness
            .upstream
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/books")),
        "the refused app never saw the request"
    );

    // Signing out clears the session; the app asks to sign in again.
    browser
        .goto(&setup.url("app.test", "/cdn-cgi/access/logout"))
        .await;
    assert!(browser.text().await.contains("signed out"));
    assert!(
        browser
            .cookies()
            .await
            .iter()
            .all(|c| c.name != "CF_Authorization")
    );
    let events = setup.harness.wait_for_audit(|events| {
        ["login", "logout", "policy_no_match"]
            .iter()
            .all(|reason| events.iter().any(|e| e["reason"] == *reason))
    });
    let login = events.iter().find(|e| e["reason"] == "login").unwrap();
    assert_eq!(login["email"], "alice@corp.test");
    browser.close().await;
}
