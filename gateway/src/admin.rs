//! The admin endpoint: plain HTTP/1.1 on a loopback address (the config
//! refuses any other), for the host's own monitoring.
//!
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]);
//! - `GET /healthz`: 200 while the process serves at all;
//! - `GET /readyz`: 200 once started and while the audit log can be
//!   written, else 503 with the reason;
//! - `GET /status`: the [`Status`](crate::status::Status) as JSON, which
//!   `gateway status` prints.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};
use tracing::debug;

use crate::{
    metrics::{self, Metrics},
    status::{Status, StatusSources},
};

/// Why the admin endpoint could not start, or `gateway status` failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on {address} (admin.listen)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's endpoint could not be reached.
    #[error("cannot reach the gateway's admin endpoint at {address}; is the daemon running?")]
    Connect {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request failed half-way.
    #[error("the admin endpoint at {address} did not answer")]
    Request {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The answer was not a status document.
    #[error("unexpected answer from the admin endpoint at {address}: {message}")]
    Answer {
        /// The address.
        address: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

/// A slow or idle monitoring client is cut off after this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The running endpoint; stopped on [`AdminServer::stop`] or drop.
#[derive(Debug)]
pub struct AdminServer {
    address: SocketAddr,
    tasks: JoinSet<()>,
}

impl AdminServer {
    /// Binds `listen` and serves in the background.
    pub async fn start(
        listen: SocketAddr,
        sources: Arc<StatusSources>,
    ) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| AdminError::Bind {
                address: listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| AdminError::Bind {
            address: listen,
            source,
        })?;
        let metrics = Arc::new(Metrics::new(sources.clone()));
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, sources, metrics));
        Ok(Self { address, tasks })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn accept(listener: TcpListener, sources: Arc<StatusSources>, metrics: Arc<Metrics>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (sources, metrics) = (sources.clone(), metrics.clone());
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&request, &sources, &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        connections.spawn(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service),
        );
        while connections.try_join_next().is_some() {}
    }
}

fn respond(
    request: &Request<Incoming>,
    sources: &StatusSources,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("valid static response")
    };
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, text, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" => reply(StatusCode::OK, text, "ok\n".into()),
        "/readyz" => match sources.not_ready() {
            None => reply(StatusCode::OK, text, "ready\n".into()),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => match serde_json::to_string_pretty(&sources.snapshot()) {
            Ok(json) => reply(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, format!("{e}\n")),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics, /healthz, /readyz or /status\n".into(),
        ),
    }
}

/// Fetches the daemon's status from its admin endpoint (`gateway status`).
pub async fn fetch_status(address: SocketAddr) -> Result<Status, AdminError> {
    let stream = tokio::time::timeout(HEADER_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(|source| AdminError::Connect { address, source })?;
    let request_error = |source| AdminError::Request { address, source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(request_error)?;
    tokio::spawn(connection);
    let request = Request::get("/status")
        .header(header::HOST, address.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("valid static request");
    let response = sender.send_request(request).await.map_err(request_error)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(request_error)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(AdminError::Answer {
            address,
            message: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| AdminError::Answer {
        address,
        message: e.to_string(),
    })
}
