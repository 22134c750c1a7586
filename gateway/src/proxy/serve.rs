//! One accepted connection, from its first byte to its close: HTTP/2 (by
//! ALPN, or its preface where ALPN said nothing) or HTTP/1.1, whose idle
//! keep-alive connections are parked.
//!
//! hyper holds two 8 KiB buffers for every HTTP/1 connection, idle or not.
//! A relay keeps thousands of keep-alive connections open to an origin,
//! most of them idle, so those buffers would be most of the gateway's
//! memory. Once a connection has had no request in flight and no byte read
//! or written for [`PARK_AFTER`] to [`PARK_AFTER`] × 2, hyper closes it
//! without touching the socket and hands the socket back; the connection
//! then waits for its next request holding only the socket (and its TLS
//! state), in a task of its own sized for that alone (512 bytes; the task
//! that serves takes 896, and took 1.4 KiB while it also did the waiting),
//! and that request starts a new task and a new hyper connection on it.
//! Nothing a client sees changes: no `Connection: close`, no lost bytes
//! (any part of a next request hyper had already read is replayed first).

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::HttpService,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::server::TlsStream;

use super::Body;
use crate::config::HttpConfig;

/// How long an HTTP/1 connection stays quiet before it is parked (checked
/// once per period, so parking happens between one and two periods).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's byte stream, whose TCP socket can be waited on while the
/// connection is parked.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Transport for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<T: Transport> Transport for Box<T> {
    fn tcp(&self) -> &TcpStream {
        (**self).tcp()
    }
}

/// What both protocols need of the request handler (one service per
/// connection, cloned for each hyper connection on it).
pub trait Handler:
    HttpService<Incoming, ResBody = Body, Error = Infallible, Future: Send + 'static>
    + Clone
    + Unpin
    + Send
    + 'static
{
}

impl<S> Handler for S where
    S: HttpService<Incoming, ResBody = Body, Error = Infallible, Future: Send + 'static>
        + Clone
        + Unpin
        + Send
        + 'static
{
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
    /// Unknown until the first bytes: HTTP/2 if they are its preface.
    Sniff,
}

/// hyper's settings for both protocols, and how long a connection may wait
/// for a request.
pub struct Settings {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_timeout: Duration,
    /// Counts the connections parked.
    parked: Gauge,
}

impl Settings {
    /// The limits and timeouts of `config`; `parked` counts the
    /// connections parked.
    pub fn new(config: &HttpConfig, parked: Gauge) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_headers(config.max_headers)
            // hyper's floor for the read buffer is 8 KiB.
            .max_buf_size(config.max_header_bytes.max(8192))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1,
            http2,
            header_timeout: config.header_timeout,
            parked,
        }
    }
}

/// What the connection did since the last look, shared by the byte stream
/// hyper drives, the service and the serving loop (atomics: HTTP/2 runs
/// each request in a task of its own).
#[derive(Debug, Default)]
pub struct Activity {
    /// Set by every read that moved bytes and every write.
    busy: AtomicBool,
    /// Set by every read that moved bytes.
    read: AtomicBool,
    /// Requests whose response has not started yet.
    requests: AtomicUsize,
    /// Requests started on the connection so far.
    started: AtomicUsize,
    /// hyper is closing the connection to park it: keep the socket open.
    parking: AtomicBool,
}

impl Activity {
    /// Counts a request in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn read_some(&self) {
        self.busy.store(true, Ordering::Relaxed);
        self.read.store(true, Ordering::Relaxed);
    }
}

/// A request in flight (see [`Activity::request`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Called once when a connection ends, with how it ended (a hyper error,
/// or `Ok` for a close by either side, a timeout or the stop), from
/// whichever task the connection is in by then.
pub type OnClose = Box<dyn FnOnce(Result<(), hyper::Error>) + Send>;

/// Serves `io` until the peer closes it, an error, or `stop` (after which
/// the request in progress completes and the connection closes), then
/// calls `on_close`. A parked HTTP/1 connection waits in a task of its
/// own, which this one hands it to before returning.
pub async fn serve<T, S>(
    settings: Arc<Settings>,
    mut io: T,
    protocol: Protocol,
    service: S,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
    on_close: OnClose,
) where
    T: Transport,
    S: Handler,
{
    let (http2, prefix) = match protocol {
        Protocol::Http1 => (false, Bytes::new()),
        Protocol::Http2 => (true, Bytes::new()),
        Protocol::Sniff => {
            match tokio::time::timeout(settings.header_timeout, sniff(&mut io)).await {
                Ok(Ok(Some(found))) => found,
                // Closed, failed or silent before a whole first line.
                _ => return on_close(Ok(())),
            }
        }
    };
    let stream = Tracked {
        inner: io,
        prefix,
        activity,
    };
    if !http2 {
        return serve_http1(Http1 {
            settings,
            stream,
            service,
            stop,
            on_close,
        })
        .await;
    }
    // Boxed: on the stack, HTTP/2's state would size the task of every
    // connection, HTTP/1 ones included.
    let mut conn = Box::pin(
        settings
            .http2
            .serve_connection(TokioIo::new(stream), service),
    );
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    on_close(result);
}

/// An HTTP/1 connection between two hyper connections on it: all it
/// needs to serve its next request.
struct Http1<T, S> {
    settings: Arc<Settings>,
    stream: Tracked<T>,
    service: S,
    stop: watch::Receiver<bool>,
    on_close: OnClose,
}

/// Serves HTTP/1 requests until the connection closes, or until it parks:
/// then a task of its own, sized for waiting only, waits for its next
/// request.
async fn serve_http1<T, S>(mut conn: Http1<T, S>)
where
    T: Transport,
    S: Handler,
{
    loop {
        if *conn.stop.borrow() {
            return (conn.on_close)(Ok(()));
        }
        // Boxed: the serving state (hyper's connection, the quiet check)
        // is freed as soon as the connection parks.
        let served = Box::pin(serve_until_quiet(
            &conn.settings,
            conn.stream,
            conn.service.clone(),
            &mut conn.stop,
        ))
        .await;
        match served {
            Ok(Some(quiet)) => conn.stream = quiet,
            Ok(None) => return (conn.on_close)(Ok(())),
            Err(e) => return (conn.on_close)(Err(e)),
        }
        // A connection hyper had read part of a next request from is
        // served again at once.
        if conn.stream.prefix.is_empty() {
            tokio::spawn(wait_parked(conn));
            return;
        }
    }
}

/// A parked connection: nothing held but the socket (and its TLS state)
/// until the next request, which starts a task serving it again. Not an
/// `async fn`, whose arguments would take room twice in the task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in the task of every parked connection"
)]
fn wait_parked<T, S>(mut conn: Http1<T, S>) -> impl Future<Output = ()> + Send + 'static
where
    T: Transport,
    S: Handler,
{
    async move {
        conn.settings.parked.inc();
        let tcp = conn.stream.inner.tcp();
        let woken = tokio::select! {
            ready = std::future::poll_fn(|cx| tcp.poll_read_ready(cx)) => ready.is_ok(),
            () = tokio::time::sleep(conn.settings.header_timeout) => false,
            _ = conn.stop.changed() => false,
        };
        conn.settings.parked.dec();
        if !woken || *conn.stop.borrow() {
            // Idle too long, or shutting down: close it as hyper would.
            let _ = tokio::time::timeout(PARK_AFTER, conn.stream.inner.shutdown()).await;
            return (conn.on_close)(Ok(()));
        }
        tokio::spawn(resume(conn));
    }
}

/// [`serve_http1`] behind a box: it hands connections to [`wait_parked`],
/// which hands them back here, and the box's type ends that cycle of types.
fn resume<T, S>(conn: Http1<T, S>) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    T: Transport,
    S: Handler,
{
    Box::pin(serve_http1(conn))
}

/// Serves requests on `stream` with a hyper connection until it closes
/// (`None`), or, once it has been quiet for [`PARK_AFTER`] to
/// [`PARK_AFTER`] × 2 between requests, until hyper has let go of it to
/// park it: then the stream comes back, with what hyper had read of a next
/// request put first.
async fn serve_until_quiet<T, S>(
    settings: &Settings,
    stream: Tracked<T>,
    service: S,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Tracked<T>>, hyper::Error>
where
    T: Transport,
    S: Handler,
{
    let activity = stream.activity.clone();
    // hyper closes a connection at once, without a response, only
    // before its first byte or between requests: a connection that has
    // read the start of its first request is not parked before that
    // request starts. So hyper's header timeout, which starts over with
    // each hyper connection, still bounds a client that sends its head
    // a byte at a time.
    let started = activity.started.load(Ordering::Relaxed);
    activity.parking.store(false, Ordering::Relaxed);
    activity.read.store(false, Ordering::Relaxed);
    activity.busy.store(true, Ordering::Relaxed);
    let mut conn = settings
        .http1
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let start = tokio::time::Instant::now() + PARK_AFTER;
    let mut quiet = tokio::time::interval_at(start, PARK_AFTER);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = &mut conn => {
                result?;
                break;
            }
            _ = quiet.tick(), if !stopping => {
                let busy = activity.busy.swap(false, Ordering::Relaxed);
                let between_requests = !activity.read.load(Ordering::Relaxed)
                    || activity.started.load(Ordering::Relaxed) > started;
                if !busy && between_requests && activity.requests.load(Ordering::Relaxed) == 0 {
                    // hyper is between requests with nothing buffered
                    // to write: it closes at once, without a shutdown.
                    activity.parking.store(true, Ordering::Relaxed);
                    stopping = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    }
    if !activity.parking.load(Ordering::Relaxed) {
        // Closed by either side, or upgraded.
        return Ok(None);
    }
    let Some(parts) = conn.into_parts() else {
        return Ok(None);
    };
    let mut stream = parts.io.into_inner();
    // What hyper had read of a next request comes first.
    if !parts.read_buf.is_empty() {
        let mut replay = BytesMut::from(parts.read_buf);
        replay.extend_from_slice(&stream.prefix);
        stream.prefix = replay.freeze();
    }
    Ok(Some(stream))
}

/// Reads until the bytes are either HTTP/2's preface or cannot become it.
/// `None` if the peer closed first.
async fn sniff<T: Transport>(io: &mut T) -> io::Result<Option<(bool, Bytes)>> {
    let mut read = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if io.read_buf(&mut read).await? == 0 {
            return Ok(None);
        }
        let len = read.len().min(H2_PREFACE.len());
        if read[..len] != H2_PREFACE[..len] {
            return Ok(Some((false, read.freeze())));
        }
        if len == H2_PREFACE.len() {
            return Ok(Some((true, read.freeze())));
        }
    }
}

/// The byte stream hyper drives: `prefix` (bytes read before hyper took
/// over) first, then `inner`; every transfer marks the connection busy, and
/// a shutdown while parking leaves the socket open.
struct Tracked<T> {
    inner: T,
    prefix: Bytes,
    activity: Arc<Activity>,
}

impl<T: Transport> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            self.activity.read_some();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        result
    }
}

impl<T: Transport> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.activity.busy.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.activity.busy.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
