//! A small real HTTPS server for range-list sources and relay keys: rustls
//! with a certificate from a throwaway CA, serving whatever status and body
//! the test sets, one request per connection. On loopback by default, or on
//! any listener (e.g. one bound inside a test host's namespace).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

/// The running server; stopped on drop.
pub struct HttpsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// PEM of the CA that signed its certificate.
    pub ca_pem: String,
    reply: Arc<Mutex<Reply>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsServer {
    /// Starts serving `reply` on 127.0.0.1 with a certificate for
    /// `localhost` and 127.0.0.1 from a CA of its own.
    pub fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ca = crate::pki::TestCa::new();
        Self::serve(listener, &ca, &["localhost", "127.0.0.1"], reply)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Serves `reply` on `listener` with a certificate from `ca` for
    /// `names` (DNS names or IP literals).
    pub fn serve(
        listener: TcpListener,
        ca: &crate::pki::TestCa,
        names: &[&str],
        reply: Reply,
    ) -> Result<Self, String> {
        let issued = ca.issue(names);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(vec![issued.cert_der], issued.key_der)
            })
            .map_err(|e| format!("HTTPS server configuration: {e}"))?;
        let config = Arc::new(config);
        let addr = listener
            .set_nonblocking(true)
            .and_then(|()| listener.local_addr())
            .map_err(|e| format!("HTTPS server listener: {e}"))?;
        let reply = Arc::new(Mutex::new(reply));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, requests, stop) = (reply.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((tcp, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let Ok(conn) = ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = StreamOwned::new(conn, tcp);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    if request.is_empty() {
                        continue; // e.g. a client that refused our certificate
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    let Reply { status, body } = reply.lock().expect("lock").clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes());
                    let _ = tls.flush();
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            })
        };
        Ok(Self {
            addr,
            ca_pem: ca.pem(),
            reply,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// Changes what the next requests get.
    pub fn set(&self, status: u16, body: &str) {
        *self.reply.lock().expect("lock") = Reply {
            status,
            body: body.into(),
        };
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// `https://ADDRESS:PORT/path` (`https://127.0.0.1:PORT/path` for
    /// [`HttpsServer::start`]).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Writes the CA certificate to `path` (for `ca_file`).
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("write CA");
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
