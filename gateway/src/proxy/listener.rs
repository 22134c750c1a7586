//! Sockets and connections: accept loops, TLS handshakes (with a
//! deadline), and graceful draining at shutdown. Serving a connection's
//! requests is [`super::serve`]'s.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    Gateway, ProxyError, handler,
    serve::{self, Activity, Protocol, Settings, Transport},
    tls::ReloadingCert,
};
use crate::{config::HttpConfig, error_chain};

/// What a connection knows about itself, for the handler.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The TLS server name the client asked for (lowercase).
    pub sni: Option<String>,
}

struct Bound {
    socket: TcpListener,
    tls: Option<(TlsAcceptor, Arc<ReloadingCert>)>,
}

/// The bound listeners, then their accept loops.
pub struct Listeners {
    bound: Vec<Bound>,
    addrs: Vec<SocketAddr>,
    certs: Vec<Arc<ReloadingCert>>,
    stop: watch::Sender<bool>,
    drained: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("addrs", &self.addrs)
            .finish()
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ProxyError::Bind { address, source })
}

impl Listeners {
    /// Loads certificates and binds every listener (nothing is served yet).
    pub async fn bind(config: &HttpConfig) -> Result<Self, ProxyError> {
        let mut bound = Vec::new();
        let mut certs = Vec::new();
        for listener in &config.https {
            let cert = Arc::new(ReloadingCert::load(&listener.cert, &listener.key)?);
            let acceptor = TlsAcceptor::from(Arc::new(super::tls::server_config(cert.clone())?));
            certs.push(cert.clone());
            bound.push(Bound {
                socket: bind(listener.listen).await?,
                tls: Some((acceptor, cert)),
            });
        }
        for address in &config.plain {
            bound.push(Bound {
                socket: bind(*address).await?,
                tls: None,
            });
        }
        let addrs = bound
            .iter()
            .filter_map(|b| b.socket.local_addr().ok())
            .collect();
        let (stop, _) = watch::channel(false);
        Ok(Self {
            bound,
            addrs,
            certs,
            stop,
            drained: Vec::new(),
        })
    }

    /// Bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Starts the accept loops, plus the certificate reload timer.
    pub fn spawn(&mut self, gateway: &Arc<Gateway>, tasks: &mut tokio::task::JoinSet<()>) {
        let config = &gateway.snapshot.load().config;
        let settings = Arc::new(Settings::new(config, gateway.metrics.parked.clone()));
        let header_timeout = config.header_timeout;
        let cert_reload = config.cert_reload;
        for bound in self.bound.drain(..) {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            self.drained.push(done_rx);
            tasks.spawn(accept_loop(
                bound,
                gateway.clone(),
                settings.clone(),
                header_timeout,
                self.stop.subscribe(),
                done_tx,
            ));
        }
        let certs = self.certs.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(cert_reload);
            loop {
                tick.tick().await;
                reload_certs(&certs);
            }
        });
    }

    /// Checks every certificate for changes now (SIGHUP).
    pub fn reload_certs(&self) {
        reload_certs(&self.certs);
    }

    /// Stops accepting and waits for open connections to finish their
    /// requests, at most `timeout`.
    pub async fn shutdown(&mut self, timeout: Duration) {
        let _ = self.stop.send(true);
        let receivers = std::mem::take(&mut self.drained);
        let drained = async {
            for receiver in receivers {
                let _ = receiver.await;
            }
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            warn!("connections still open after the drain timeout; closing them");
        }
    }
}

fn reload_certs(certs: &[Arc<ReloadingCert>]) {
    for cert in certs {
        match cert.reload_if_changed() {
            Ok(true) => info!(cert = %cert.cert_path().display(), "certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %error_chain(&e), "certificate reload failed; keeping the current one")
            }
        }
    }
}

async fn accept_loop(
    bound: Bound,
    gateway: Arc<Gateway>,
    settings: Arc<Settings>,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    // Every connection task holds a sender: the drain is over when the
    // receiver sees none left.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let local = bound.socket.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = bound.socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let Some(local) = local else { continue };
        let gateway = gateway.clone();
        let settings = settings.clone();
        let tls = bound.tls.as_ref().map(|(acceptor, _)| acceptor.clone());
        let (open, stop) = (open.clone(), stop.clone());
        // One task type per kind of listener: a task's size is that of its
        // largest state, and plain connections need not carry TLS's.
        match tls {
            None => {
                let connection = Connection {
                    peer,
                    local,
                    tls: false,
                    sni: None,
                };
                tokio::spawn(serve(
                    settings,
                    stream,
                    Protocol::Sniff,
                    gateway,
                    connection,
                    stop,
                    open,
                ));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // Boxed, the handshake's and the session's state take
                    // no room in the task of every idle connection.
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        Box::pin(acceptor.accept(stream)),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let session = stream.get_ref().1;
                    let sni = session.server_name().map(str::to_ascii_lowercase);
                    let protocol = match session.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        Some(_) => Protocol::Http1,
                        None => Protocol::Sniff,
                    };
                    let connection = Connection {
                        peer,
                        local,
                        tls: true,
                        sni,
                    };
                    serve(settings, stream, protocol, gateway, connection, stop, open).await;
                });
            }
        }
    }
    drop(bound);
    drop(open);
    let _ = all_closed.recv().await;
    let _ = done.send(());
}

/// A connection counted open, and the listener's drain kept waiting, until
/// this is dropped (the connection may end in another task than its first).
struct OpenConnection {
    connections: Gauge,
    _drain: mpsc::Sender<()>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.connections.dec();
    }
}

async fn serve<T: Transport>(
    settings: Arc<Settings>,
    stream: T,
    protocol: Protocol,
    gateway: Arc<Gateway>,
    connection: Connection,
    stop: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    let peer = connection.peer;
    let connection = Arc::new(connection);
    let activity = Arc::new(Activity::default());
    let requests = activity.clone();
    let connections = gateway.metrics.connections.clone();
    connections.inc();
    let open = OpenConnection {
        connections,
        _drain: drain,
    };
    let on_close: serve::OnClose = Box::new(move |result| {
        let _open = open;
        if let Err(e) = result {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    });
    // Boxed per request: hyper keeps room for one response future on every
    // connection, idle ones included, so a box keeps that room small.
    let service = service_fn(move |request| {
        let in_flight = requests.request();
        let response = handler::handle(gateway.clone(), connection.clone(), request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    });
    serve::serve(
        settings, stream, protocol, service, activity, stop, on_close,
    )
    .await;
}
