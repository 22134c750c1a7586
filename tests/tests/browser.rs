//! The headless browser harness against a real HTTPS site: Chromium loads a
//! form from a server with a test-CA certificate under a name only the
//! browser's resolver rules know, a typed value is posted, the server sets
//! a cookie and answers 303, and the browser lands on the result page with
//! the cookie stored as set and sent back.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use gateway_tests::{browser::Browser, pki::TestCa};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// Typed into the form: a space, an ampersand (escaped in the form body)
/// and a non-ASCII letter (typed as a key, UTF-8 on the wire).
const NAME: &str = "Ada Lovelace & Zoë";

/// The site: `/` (the form), `POST /submit` (cookie and 303) and `/result`.
struct FormSite {
    port: u16,
    /// Every `name` posted to `/submit`, as the server decoded it.
    posted: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FormSite {
    /// Serves HTTPS on 127.0.0.1 with a certificate for `app.test`.
    async fn start() -> Self {
        let issued = TestCa::new().issue(&["app.test"]);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert_der], issued.key_der)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let posted = posted.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, posted) = (acceptor.clone(), posted.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |r| serve(r, posted.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            })
        };
        Self { port, posted, task }
    }
}

impl Drop for FormSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    request: Request<Incoming>,
    posted: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let response = Response::builder();
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/") => response
            .header("content-type", "text/html; charset=utf-8")
            .body(page(
                r#"<form method="post" action="/submit">
  <label for="name">Your name</label> <input id="name" name="name">
  <button id="send" type="submit">Send</button>
</form>"#,
            )),
        (&Method::POST, "/submit") => {
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let name = url::form_urlencoded::parse(&body)
                .find(|(key, _)| key == "name")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            posted.lock().expect("lock").push(name.clone());
            let query: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("name", &name)
                .finish();
            response
                .status(303)
                .header(
                    "set-cookie",
                    "seen=1; HttpOnly; Secure; SameSite=Lax; Path=/",
                )
                .header("location", format!("/result?{query}"))
                .body(Full::new(Bytes::new()))
        }
        (&Method::GET, "/result") => {
            let name = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .find(|(key, _)| key == "name")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            let cookie = parts
                .headers
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)");
            response
                .header("content-type", "text/html; charset=utf-8")
                .body(page(&format!(
                    "<p>Hello, {}!</p>\n<p>cookie header: {}</p>",
                    escape(&name),
                    escape(cookie)
                )))
        }
        _ => response.status(404).body(page("not found")),
    };
    Ok(response.expect("response"))
}

/// A whole HTML document around `body`.
fn page(body: &str) -> Full<Bytes> {
    Full::new(Bytes::from(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>form</title></head>\n\
         <body>\n{body}\n</body></html>\n"
    )))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_in_chromium_follows_the_303_and_keeps_the_cookie_as_set() {
    let site = FormSite::start().await;
    let started = Instant::now();
    let browser = Browser::start(&[("app.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]).await;
    eprintln!("browser started in {:?}", started.elapsed());
    let base = format!("https://app.test:{}", site.port);

    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.current_url().await, format!("{base}/"));
    let form = browser.text().await;
    assert!(form.contains("Your name"), "the form page shows: {form}");
    assert!(
        browser.cookies().await.is_empty(),
        "a fresh profile has no cookies"
    );

    browser.fill("#name", NAME).await;
    browser.click("#send").await;
    browser.wait_for_url(&format!("{base}/result?")).await;

    assert_eq!(
        *site.posted.lock().expect("lock"),
        [NAME],
        "the server received the typed value once"
    );
    let text = browser.text().await;
    assert!(
        text.contains(&format!("Hello, {NAME}!")),
        "the result page shows: {text}"
    );
    assert!(
        text.contains("cookie header: seen=1"),
        "the browser sent the new cookie with the redirected request: {text}"
    );
    let cookies = browser.cookies().await;
    let [seen] = cookies.as_slice() else {
        panic!("one cookie expected: {cookies:?}");
    };
    assert_eq!(
        (seen.name.as_str(), seen.value.as_str()),
        ("seen", "1"),
        "{seen:?}"
    );
    assert!(seen.http_only, "HttpOnly: {seen:?}");
    assert!(seen.secure, "Secure: {seen:?}");
    assert_eq!(seen.same_site.as_deref(), Some("Lax"), "{seen:?}");
    assert_eq!(seen.path, "/", "{seen:?}");
    assert_eq!(seen.domain, "app.test", "host-only: {seen:?}");
    assert_eq!(seen.expiry, None, "a session cookie: {seen:?}");

    browser.close().await;
    eprintln!("test done in {:?}", started.elapsed());
}
