//! The gateway with browser sign-in, everything real: the OpenID provider
//! of [`crate::idp`] (oidc-provider under Node.js) with the gateway
//! registered as a client, the gateway's HTTPS listener on a port chosen up
//! front (the provider must know the callback URLs before the gateway
//! starts), and the steps of a sign-in done with an HTTP client whose
//! cookies are carried by hand, so tests can replay, swap and alter them.

use reqwest::{Response, header};

use crate::{
    gateway::{HOSTS, Harness},
    idp::{Idp, IdpClient},
};

/// The gateway's client id at the provider.
pub const CLIENT_ID: &str = "gateway";
/// A second client at the same provider (the `partner` provider, and the
/// "token for another client" attack).
pub const OTHER_CLIENT_ID: &str = "other-client";
const CLIENT_SECRET: &str = "gateway-client-secret";
const OTHER_CLIENT_SECRET: &str = "other-client-secret";

/// A gateway configured for sign-in, not started yet.
pub struct SignInSetup {
    /// Certificates, relay, upstream, the gateway process.
    pub harness: Harness,
    /// The identity provider.
    pub idp: Idp,
    /// The gateway's HTTPS port.
    pub port: u16,
}

impl Default for SignInSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl SignInSetup {
    /// The provider with both clients registered for the callback URLs of
    /// every test host on a free port.
    pub fn new() -> Self {
        let harness = Harness::new();
        let port = crate::nginx::free_port();
        let redirect_uris: Vec<String> = HOSTS
            .iter()
            .map(|host| format!("https://{host}:{port}/cdn-cgi/access/callback"))
            .collect();
        let idp = Idp::start(
            &harness.ca,
            &[
                IdpClient {
                    client_id: CLIENT_ID.into(),
                    client_secret: CLIENT_SECRET.into(),
                    redirect_uris: redirect_uris.clone(),
                },
                IdpClient {
                    client_id: OTHER_CLIENT_ID.into(),
                    client_secret: OTHER_CLIENT_SECRET.into(),
                    redirect_uris,
                },
            ],
        );
        idp.write_ca(&harness.path("idp-ca.pem"));
        std::fs::write(harness.path("corp.secret"), format!("{CLIENT_SECRET}\n")).expect("secret");
        std::fs::write(harness.path("partner.secret"), OTHER_CLIENT_SECRET).expect("secret");
        Self { harness, idp, port }
    }

    /// The harness's base configuration on the fixed port, with providers
    /// `corp` (client [`CLIENT_ID`]) and `partner` (client
    /// [`OTHER_CLIENT_ID`], same provider), then `apps`.
    pub fn config(&self, apps: &str) -> String {
        let p = |name: &str| self.harness.path(name).display().to_string();
        let provider = |name: &str, client: &str, label: &str| {
            format!(
                "\n[[oidc]]\nname = \"{name}\"\ndisplay_name = \"{label}\"\nissuer = \"{issuer}\"\n\
                 client_id = \"{client}\"\nclient_secret_file = \"{secret}\"\nca_file = \"{ca}\"\n\
                 scopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n",
                issuer = self.idp.issuer(),
                secret = p(&format!("{name}.secret")),
                ca = p("idp-ca.pem"),
            )
        };
        self.harness.base_config().replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{}\"", self.port),
            1,
        ) + &provider("corp", CLIENT_ID, "Corp SSO")
            + &provider("partner", OTHER_CLIENT_ID, "Partner <SSO>")
            + apps
    }

    /// Writes `config(apps)` and starts the gateway.
    pub fn start(&mut self, apps: &str) {
        let config = self.config(apps);
        self.harness.start(&config);
    }

    /// `https://host:port/path`.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// A client for the provider's pages: its own cookies (the provider's
    /// session), the test CA, no redirects followed.
    pub fn idp_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.harness.ca.client_config(&[b"http/1.1"]))
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .no_proxy()
            .build()
            .expect("client")
    }
}

/// A sign-in started at the gateway: where the browser was sent, and the
/// login cookie it was given.
#[derive(Clone, Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub authorize_url: String,
    /// The login cookie's value.
    pub login_cookie: String,
}

/// GETs `url` as a browser without a session (HTML accepted), expecting the
/// redirect to the provider with a login cookie.
pub async fn start(client: &reqwest::Client, url: &str) -> Started {
    let response = browser_get(client, url, None).await;
    assert_eq!(response.status(), 302, "{url} did not redirect to sign in");
    let cookie = set_cookie(&response, "CF_Access_Login").expect("a login cookie");
    assert!(
        cookie.contains("Path=/cdn-cgi/access/")
            && cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=Lax")
            && !cookie.contains("Domain"),
        "{cookie}"
    );
    Started {
        authorize_url: location(&response),
        login_cookie: cookie_value(&cookie),
    }
}

/// GETs `url` as a browser would: HTML accepted, `cookie` sent as the
/// `Cookie` header.
pub async fn browser_get(client: &reqwest::Client, url: &str, cookie: Option<&str>) -> Response {
    let mut request = client
        .get(url)
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.send().await.expect("request to the gateway")
}

/// Starts a sign-in at `url`, signs in at the provider as `user`, and
/// returns the callback URL and the login cookie.
pub async fn through_provider(setup: &SignInSetup, url: &str, user: &str) -> (String, String) {
    let started = start(&setup.harness.client(false), url).await;
    let callback = crate::idp::sign_in(&setup.idp_client(), &started.authorize_url, user).await;
    (callback, started.login_cookie)
}

/// A full sign-in at `url` as `user`: the callback's response.
pub async fn sign_in(setup: &SignInSetup, url: &str, user: &str) -> Response {
    let (callback, login) = through_provider(setup, url, user).await;
    let cookie = format!("CF_Access_Login={login}");
    browser_get(&setup.harness.client(false), &callback, Some(&cookie)).await
}

/// The session cookie a successful callback set (its value).
pub fn session(response: &Response) -> String {
    assert_eq!(response.status(), 302, "the callback failed: {response:?}");
    cookie_value(&set_cookie(response, "CF_Authorization").expect("a session cookie"))
}

/// The whole `Set-Cookie` value for cookie `name`, if set.
pub fn set_cookie(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value part of a `Set-Cookie`.
pub fn cookie_value(set_cookie: &str) -> String {
    let pair = set_cookie.split(';').next().unwrap_or_default();
    pair.split_once('=').map_or("", |(_, v)| v).to_owned()
}

/// The `Location` of a redirect.
pub fn location(response: &Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Location in {response:?}"))
        .to_owned()
}
