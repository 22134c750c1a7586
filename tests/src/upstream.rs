//! The application behind the gateway: a real HTTP/1.1 server (hyper) on
//! loopback (the test's own, or a test host's) that records exactly what it
//! received, so tests can assert what passed through and that refused
//! requests never arrived.
//!
//! Paths: any with `/ws` switches to an echo tunnel when asked to upgrade to
//! WebSocket; others (e.g. `/fake-upgrade`) answer 200 even to an upgrade
//! request; any with `/slow` answers after 3 s; anything else answers 200 `upstream ok`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target, exactly as received.
    pub target: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Every value of header `name`.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name`; panics if absent or repeated.
    pub fn one(&self, name: &str) -> &str {
        let values = self.values(name);
        assert_eq!(values.len(), 1, "{name}: {values:?} in {:?}", self.headers);
        values[0]
    }
}

/// The running upstream; stopped on drop.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn serve(
    request: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned());
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let wants_ws = parts
        .headers
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let body = if wants_ws {
        Vec::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default()
    };
    recorded.lock().expect("lock").push(Recorded {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    });
    if target.contains("/ws") && wants_ws {
        if let Some(upgrade) = upgrade {
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                }
            });
        }
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .expect("response"));
    }
    if target.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"upstream ok\n")))
        .expect("response"))
}

impl Upstream {
    /// Starts on 127.0.0.1, a free port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Self::serve(listener).expect("start the upstream")
    }

    /// Serves on `listener` (e.g. one bound inside a test host's namespace).
    pub fn serve(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let recorded = recorded.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        let (stream, _) = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok(pair) => pair,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let recorded = recorded.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |r| serve(r, recorded.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                });
            })
        };
        Ok(Self {
            addr,
            recorded,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.recorded.lock().expect("lock").len()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received nothing")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
