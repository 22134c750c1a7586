//! The identity gateway under test, with everything around it real: the
//! gateway binary as a process on loopback with TLS listeners (certificates
//! from a test CA), a relay key server (HTTPS, Cloudflare's certs shape), an
//! upstream that records what it receives, the audit log as JSON lines, and
//! HTTP clients (reqwest over h1 or h2, and raw TLS for malformed requests).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::{ClientConnection, pki_types::ServerName};
use serde_json::{Value, json};

use crate::{
    daemon::Daemon,
    https::{HttpsServer, Reply},
    pki::TestCa,
    upstream::Upstream,
};

/// The relay's issuer URL in tests.
pub const ISSUER: &str = "https://team.relay.test";
/// The AUD tag of the main test app.
pub const AUD: &str = "aud-app";
/// Host names with certificates.
pub const HOSTS: [&str; 2] = ["app.test", "other.test"];
/// A policy section that lets everyone through (Bypass), for tests about
/// anything but policies.
pub const OPEN_POLICY: &str =
    "[[app.policy]]\nname = \"open\"\naction = \"bypass\"\ninclude = [\"everyone\"]\n";

/// The relay: its RSA key (the throwaway test key) and its certs server.
pub struct Relay {
    key: EncodingKey,
    jwk: Value,
    /// Serves the certs document.
    pub server: HttpsServer,
}

impl Relay {
    /// A relay whose certs document holds its key as `kid` `relay-1`,
    /// served on loopback.
    pub fn start() -> Self {
        let jwk = Self::relay_jwk();
        let server = HttpsServer::start(Self::certs_reply(&jwk));
        Self::with_server(jwk, server)
    }

    /// [`Relay::start`] with the certs document served on `listener` (e.g.
    /// one bound in the relay host's namespace) with a certificate from `ca`
    /// for `names`.
    pub fn serve(listener: TcpListener, ca: &TestCa, names: &[&str]) -> Result<Self, String> {
        let jwk = Self::relay_jwk();
        let server = HttpsServer::serve(listener, ca, names, Self::certs_reply(&jwk))?;
        Ok(Self::with_server(jwk, server))
    }

    fn relay_jwk() -> Value {
        let n = include_str!("../../gateway/testdata/rsa-test-key.n").trim();
        json!({"kid": "relay-1", "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"})
    }

    /// Cloudflare's certs document shape, holding `jwk`.
    fn certs_reply(jwk: &Value) -> Reply {
        Reply {
            status: 200,
            body: json!({"keys": [jwk], "public_cert": {"kid": "relay-1", "cert": ""}, "public_certs": []}).to_string(),
        }
    }

    fn with_server(jwk: Value, server: HttpsServer) -> Self {
        let der = include_bytes!("../../gateway/testdata/rsa-test-key.der");
        Self {
            key: EncodingKey::from_rsa_der(der),
            jwk,
            server,
        }
    }

    /// The key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token with `claims`, signed RS256 with `kid` (normally `relay-1`).
    pub fn sign_with_kid(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    /// A token with `claims`, signed by the relay's key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid("relay-1", claims)
    }

    /// Valid user claims for `email` on the main app, 5 minutes.
    pub fn user_claims(email: &str) -> Value {
        let now = gateway::unix_now();
        json!({"iss": ISSUER, "aud": [AUD], "sub": format!("sub-{email}"), "email": email,
               "iat": now, "nbf": now, "exp": now + 300, "type": "app", "country": "PT",
               "groups": ["engineering"]})
    }

    /// A valid user token for `email`.
    pub fn user_token(&self, email: &str) -> String {
        self.sign(&Self::user_claims(email))
    }
}

/// Everything around one gateway process.
pub struct Harness {
    /// Config, certificates, token store, audit log.
    pub dir: tempfile::TempDir,
    /// The CA of the listener certificates.
    pub ca: TestCa,
    /// The relay.
    pub relay: Relay,
    /// The application.
    pub upstream: Upstream,
    /// The running gateway, once started.
    pub daemon: Option<Daemon>,
}

impl Harness {
    /// Relay, upstream and certificates; the gateway is not started yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        let issued = ca.issue(&HOSTS);
        std::fs::write(dir.path().join("cert.pem"), &issued.cert_pem).expect("cert");
        std::fs::write(dir.path().join("key.pem"), &issued.key_pem).expect("key");
        let relay = Relay::start();
        relay.server.write_ca(&dir.path().join("relay-ca.pem"));
        Self {
            dir,
            ca,
            relay,
            upstream: Upstream::start(),
            daemon: None,
        }
    }

    /// A path in the harness directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration every test shares: one HTTPS and one plain
    /// listener on free loopback ports, the relay, sessions, the token store
    /// and the audit file. Tests append their `[[app]]` sections.
    pub fn base_config(&self) -> String {
        let p = |name: &str| self.path(name).display().to_string();
        format!(
            r#"[http]
[[http.https]]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
[[http.plain]]
listen = "127.0.0.1:0"

[relay]
issuer = "{ISSUER}"
certs_url = "{certs}"
ca_file = "{ca}"
kid_cooldown_secs = 60

[sessions]
issuer = "https://gateway.test"
key_dir = "{keys}"
lifetime_secs = 600

[tokens]
store = "{store}"

[admin]
listen = "127.0.0.1:0"

[audit]
dir = "{audit_dir}"
jsonl = "{audit}"
"#,
            cert = p("cert.pem"),
            key = p("key.pem"),
            certs = self.relay.server.url("/cdn-cgi/access/certs"),
            ca = p("relay-ca.pem"),
            keys = p("keys"),
            store = p("tokens.json"),
            audit = p("audit.jsonl"),
            audit_dir = p("audit"),
        )
    }

    /// An app section for the upstream, with `extra` lines and `policies`
    /// (TOML `[[app.policy]]` blocks).
    pub fn app(&self, name: &str, host: &str, path: &str, extra: &str, policies: &str) -> String {
        format!(
            "\n[[app]]\nname = \"{name}\"\nhostname = \"{host}\"\npath = \"{path}\"\nupstream = \"{}\"\n{extra}\n{policies}\n",
            self.upstream.url()
        )
    }

    /// Writes `config` and starts the gateway.
    pub fn start(&mut self, config: &str) {
        self.start_with_env(config, &[]);
    }

    /// [`Harness::start`] with extra environment variables.
    pub fn start_with_env(&mut self, config: &str, env: &[(&str, String)]) {
        let path = self.path("gateway.toml");
        std::fs::write(&path, config).expect("write config");
        self.daemon = Some(Daemon::start_local_with_env(&path, env));
    }

    /// GETs `path` from the admin endpoint: status code, content type, body.
    pub fn admin_get(&self, path: &str) -> (u16, String, String) {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code} %{content_type}",
            ])
            .arg(format!("http://{}{path}", self.daemon().admin_addr()))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text.rsplit_once('\n').expect("curl's status line");
        let (code, content_type) = last.split_once(' ').unwrap_or((last, ""));
        (
            code.parse().unwrap_or(0),
            content_type.to_owned(),
            body.to_owned(),
        )
    }

    /// Rewrites the config file (for SIGHUP tests).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(self.path("gateway.toml"), config).expect("write config");
    }

    /// The running gateway process.
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("gateway not started")
    }

    /// The HTTPS listener.
    pub fn https_addr(&self) -> SocketAddr {
        self.daemon().listening()[0]
    }

    /// The plain listener.
    pub fn plain_addr(&self) -> SocketAddr {
        self.daemon().listening()[1]
    }

    /// A reqwest client trusting the test CA, resolving the test hosts to
    /// the HTTPS listener; `h2` picks HTTP/2 by ALPN, else HTTP/1.1.
    pub fn client(&self, h2: bool) -> reqwest::Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(self.ca.client_config(alpn))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        for host in HOSTS {
            builder = builder.resolve(host, self.https_addr());
        }
        builder.build().expect("client")
    }

    /// Sends raw bytes over TLS with server name `sni` and returns every
    /// byte received until the server closes or 3 s pass.
    pub fn raw(&self, sni: &str, request: &[u8]) -> String {
        let config = Arc::new(self.ca.client_config(&[b"http/1.1"]));
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        let mut tls = ClientConnection::new(config, name).expect("client connection");
        let mut tcp = TcpStream::connect(self.https_addr()).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        // The gateway may answer and close before a malformed request is
        // fully sent (a broken pipe then). What it answered is still read,
        // from the socket directly: reading through `rustls::Stream` would
        // first try to send the rest and fail again.
        let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
        let _ = stream.write_all(request).and_then(|()| stream.flush());
        let mut received = Vec::new();
        while let Ok(n) = tls.read_tls(&mut tcp) {
            let state = tls.process_new_packets();
            // Stops at "no more for now" (WouldBlock) or the end.
            let _ = tls.reader().read_to_end(&mut received);
            if n == 0 || state.is_err() {
                break;
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    }

    /// The audit events written so far (complete lines only: the writer
    /// may be in the middle of one).
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.path("audit.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// The audit event of request `request_id`, waiting up to 5 s for it.
    pub fn audit_event(&self, request_id: &str) -> Value {
        let events =
            self.wait_for_audit(|events| events.iter().any(|e| e["request_id"] == request_id));
        events
            .into_iter()
            .find(|e| e["request_id"] == request_id)
            .expect("found above")
    }

    /// The audit events once `done` holds for them, waiting up to 5 s (the
    /// writer runs behind the requests).
    pub fn wait_for_audit(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.audit();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the audit log never reached the expected state: {events:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The gateway's log.
    pub fn log(&self) -> String {
        self.daemon().log_text()
    }

    /// Sends SIGHUP and waits for the reload to be logged.
    pub fn reload(&self) {
        let before = self.log().matches("gateway configuration reloaded").count();
        self.daemon().signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("gateway configuration reloaded").count() == before {
            assert!(Instant::now() < deadline, "no reload:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `gateway token ARGS --store <the store>`.
    pub fn token_cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::daemon::gateway_bin())
            .arg("token")
            .arg("--store")
            .arg(self.path("tokens.json"))
            .args(args)
            .output()
            .expect("run gateway token")
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
