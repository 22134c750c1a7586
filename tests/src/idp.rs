//! A real OpenID Provider for the login tests and benchmark:
//! `oidc-provider` (npm, pinned in `tests/idp/package-lock.json`, installed
//! by `cargo xtask setup`) run by the machine's Node.js over HTTPS on
//! loopback, with a certificate from the test CA. The provider is real
//! (discovery, JWKS, authorization code with PKCE, code replay refused);
//! `tests/idp/provider.mjs` adds only a minimal sign-in form and two test
//! tools: claim overrides for later ID tokens (re-signed, so they verify)
//! and the token endpoint's own serving time.
//!
//! The node process is killed on drop, and exits by itself when its stdin
//! closes: a test process that dies leaves no provider behind.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use reqwest::{StatusCode, Url, header::LOCATION};
use rustls::{ClientConfig, ClientConnection, StreamOwned, pki_types::ServerName};

use crate::pki::TestCa;

/// How long the provider may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The password [`sign_in`] types: the provider takes any non-empty one.
pub const PASSWORD: &str = "pw";

/// One client registered at the provider: the gateway, or a test acting as
/// one.
pub struct IdpClient {
    /// `client_id`.
    pub client_id: String,
    /// The secret for `client_secret_basic` at the token endpoint.
    pub client_secret: String,
    /// Exact redirect URIs the provider accepts for this client.
    pub redirect_uris: Vec<String>,
}

/// The provider process; killed on drop.
pub struct Idp {
    child: Child,
    issuer: String,
    addr: SocketAddr,
    ca_pem: String,
    tls: Arc<ClientConfig>,
    stderr_path: PathBuf,
    // The certificate, key and configuration the process reads; removed
    // after it is gone.
    _dir: tempfile::TempDir,
}

/// `tests/idp`, where `provider.mjs` and its `node_modules` are.
fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

impl Idp {
    /// Starts the provider on a free loopback port with a certificate from
    /// `ca` for 127.0.0.1, registering `clients`, and waits until it serves.
    pub fn start(ca: &TestCa, clients: &[IdpClient]) -> Self {
        let idp = idp_dir();
        assert!(
            idp.join("node_modules/oidc-provider/package.json").exists(),
            "{} has no node_modules/oidc-provider: run `cargo xtask setup` \
             (it runs `npm ci` there)",
            idp.display()
        );
        let dir = tempfile::tempdir().expect("a directory for the provider");
        let issued = ca.issue(&["127.0.0.1"]);
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &issued.cert_pem).expect("write the provider's certificate");
        std::fs::write(&key, &issued.key_pem).expect("write the provider's key");
        let config = serde_json::json!({
            "cert": cert,
            "key": key,
            "host": "127.0.0.1",
            "port": 0,
            "clients": clients.iter().map(|c| serde_json::json!({
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "redirect_uris": c.redirect_uris,
            })).collect::<Vec<_>>(),
        });
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).expect("write the provider's config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("create the provider's log");

        let mut child = Command::new("node")
            .arg(idp.join("provider.mjs"))
            .arg(&config_path)
            .current_dir(&idp)
            // Held open for the provider's lifetime: it exits when this closes.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot run node: `cargo xtask setup` installs Node.js");

        // The ready line, read on a thread so the wait can time out; the
        // thread then drains stdout until the process ends.
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = ready_tx.take_if(|_| line.starts_with("{\"issuer\"")) {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the OpenID Provider (node {}) did not get ready ({}; {status:?}); its stderr:\n{}",
                    idp.join("provider.mjs").display(),
                    match e {
                        mpsc::RecvTimeoutError::Timeout => "no ready line within 20 s",
                        mpsc::RecvTimeoutError::Disconnected => "its stdout closed",
                    },
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        let issuer = ready["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("ready line {line:?} has no issuer"))
            .to_owned();
        let url = Url::parse(&issuer).expect("the issuer is a URL");
        let addr = SocketAddr::new(
            url.host_str()
                .and_then(|h| h.parse().ok())
                .expect("the issuer's host is an IP address"),
            url.port().expect("the issuer has a port"),
        );
        Self {
            child,
            issuer,
            addr,
            ca_pem: ca.pem(),
            tls: Arc::new(ca.client_config(&[b"http/1.1"])),
            stderr_path,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT`, exactly as the provider puts it in `iss`
    /// and its discovery document.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the provider listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes the CA certificate (PEM) the provider's certificate chains to,
    /// for the gateway's `ca_file`.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Claim overrides for the ID tokens of later token responses: a value
    /// replaces the claim, `null` removes it, `json!({})` stops tampering.
    /// The token stays signed with the provider's key, so only the claims
    /// are wrong (a nonce mismatch, another audience, an expired token...).
    pub fn tamper(&self, overrides: serde_json::Value) {
        let (status, body) = self.control("POST", "/test/tamper", &overrides.to_string());
        assert_eq!(status, 204, "tamper with {overrides}: {body}");
    }

    /// Token-endpoint requests served so far and the milliseconds the
    /// provider spent serving them, so a benchmark can subtract them.
    pub fn token_stats(&self) -> (u64, f64) {
        let (status, body) = self.control("GET", "/test/stats", "");
        assert_eq!(status, 200, "token stats: {body}");
        let stats: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats {body:?}: {e}"));
        (
            stats["token_requests"].as_u64().expect("token_requests"),
            stats["token_ms_total"].as_f64().expect("token_ms_total"),
        )
    }

    /// One HTTP/1.1 request to a test endpoint over blocking TLS, so the
    /// test tools work in and outside an async runtime alike.
    fn control(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let failed = |what: &str| -> String {
            format!(
                "{method} {path} at the OpenID Provider: {what}; its stderr:\n{}",
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            )
        };
        let tcp =
            TcpStream::connect(self.addr).unwrap_or_else(|e| panic!("{}", failed(&e.to_string())));
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let name = ServerName::IpAddress(self.addr.ip().into());
        let connection = ClientConnection::new(self.tls.clone(), name).expect("TLS client");
        let mut tls = StreamOwned::new(connection, tcp);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        tls.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{}", failed(&e.to_string())));
        // Read up to the end of the body its Content-Length announces (the
        // provider always sends one), not to EOF: the close need not be clean.
        let mut response = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            if let Some((head, rest)) = split_head(&response) {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or_else(|| panic!("{}", failed("no Content-Length")));
                if rest.len() >= length {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| {
                            panic!("{}", failed(&format!("status line of {head:?}")))
                        });
                    return (
                        status,
                        String::from_utf8_lossy(&rest[..length]).into_owned(),
                    );
                }
            }
            match tls.read(&mut chunk) {
                Ok(0) => panic!("{}", failed("the connection closed mid-response")),
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{}", failed(&e.to_string())),
            }
        }
    }
}

/// The response head (as text) and what follows it, once the head is
/// complete.
fn split_head(response: &[u8]) -> Option<(String, &[u8])> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&response[..end]).into_owned(),
        &response[end + 4..],
    ))
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs in at the provider the way a browser would, without one: from
/// `authorize_url` (the gateway's redirect to the provider's authorization
/// endpoint) it follows the provider's redirects with `client`, posts the
/// sign-in form as `user` with [`PASSWORD`], and returns the first redirect
/// `Location` that leaves the provider: the gateway's callback URL with
/// `code` and `state`.
///
/// `client` needs a cookie store (the provider's interaction and session
/// cookies), redirects disabled, and trust in the test CA. A client that
/// already has a session at the provider is not shown the form: the code is
/// then for that session's user, whatever `user` says (use one client per
/// user). Panics when the provider refuses the sign-in or answers anything
/// unexpected.
pub async fn sign_in(client: &reqwest::Client, authorize_url: &str, user: &str) -> String {
    let mut url = Url::parse(authorize_url)
        .unwrap_or_else(|e| panic!("authorization URL {authorize_url:?}: {e}"));
    let provider = url.origin();
    let mut request = client.get(url.clone());
    let mut posted = false;
    // authorize -> interaction (form) -> login -> resume -> callback, with
    // room to spare.
    for _ in 0..10 {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("signing in {user:?}: {url}: {e}"));
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or_else(|| panic!("signing in {user:?}: {url} redirects nowhere"));
            let next = url
                .join(location)
                .unwrap_or_else(|e| panic!("redirect {location:?} from {url}: {e}"));
            if next.origin() != provider {
                return next.into();
            }
            url = next;
            request = client.get(url.clone());
            continue;
        }
        let page = response.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "signing in {user:?}: {url} answered {status}:\n{page}"
        );
        assert!(
            !posted,
            "the provider refused to sign in {user:?}: it showed its form again:\n{page}"
        );
        url = form_action(&page, &url);
        request = client
            .post(url.clone())
            .form(&[("login", user), ("password", PASSWORD)]);
        posted = true;
    }
    panic!("signing in {user:?}: more than 10 requests without leaving the provider (at {url})");
}

/// The absolute URL the sign-in form on `page` (served at `url`) posts to:
/// for tests that post the form themselves, to see a sign-in refused.
pub fn form_action(page: &str, url: &Url) -> Url {
    let action = page
        .split_once("<form")
        .and_then(|(_, form)| form.split_once("action=\"")?.1.split_once('"'))
        .map(|(action, _)| action.replace("&#38;", "&"))
        .unwrap_or_else(|| panic!("{url} answered 200 without a sign-in form:\n{page}"));
    url.join(&action)
        .unwrap_or_else(|e| panic!("form action {action:?} on {url}: {e}"))
}
