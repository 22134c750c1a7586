//! The identity gateway: a TLS reverse proxy that authenticates and
//! authorizes every request before the local application sees it.
//!
//! # Layout
//! - this module: the shared state ([`Gateway`]), what SIGHUP swaps
//!   ([`Snapshot`]), and the running server ([`Server`]);
//! - [`listener`]: sockets, TLS handshakes, draining at shutdown;
//! - [`serve`]: HTTP/1.1 and HTTP/2 on one connection, idle HTTP/1
//!   keep-alive connections parked without hyper's buffers;
//! - [`tls`]: certificates reloaded from their files;
//! - [`request`]: host and path normalization (pure);
//! - [`handler`]: the phases of one request, from framing checks to the
//!   audit event;
//! - [`identity`]: credentials to a verified identity;
//! - [`forward`]: header hygiene, the upstream client, upgrades;
//! - [`signin`]: browser sign-in endpoints (OpenID Connect);
//! - [`refusal`]: every refusal mapped to status, reason and body.

pub mod forward;
pub mod handler;
pub mod identity;
pub mod listener;
pub mod refusal;
pub mod request;
pub mod serve;
pub mod signin;
pub mod tls;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use tracing::{info, warn};

use crate::{
    config::{App, HttpConfig, http::RelayConfig},
    error_chain,
    jwt::{Expectations, certs::CertsCache, verified::VerifiedTokens},
    oidc::{OidcError, Provider, login::Sealer},
    sessions::{SessionError, Sessions},
    tokens::{TokenError, TokenStore},
};

/// Bodies in both directions: streamed from the peer, or ours in full.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body holding `bytes`.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The token store could not be read.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// The session keys could not be loaded or made.
    #[error(transparent)]
    Sessions(#[from] SessionError),
    /// A sign-in provider could not be set up.
    #[error("oidc provider `{name}`")]
    Oidc {
        /// The provider.
        name: String,
        /// Why.
        #[source]
        source: OidcError,
    },
}

/// Verifies the relay's tokens: its key cache and what its tokens must say.
#[derive(Debug)]
pub struct RelayVerifier {
    /// The relay's settings.
    pub config: RelayConfig,
    /// Its keys (shared across reloads while the URL is unchanged).
    pub certs: Arc<CertsCache>,
    /// What its tokens must say for each app's AUD tag.
    pub expectations: HashMap<String, Expectations>,
}

/// What a SIGHUP replaces: applications, policies, relay settings,
/// sign-in providers.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated configuration.
    pub config: HttpConfig,
    /// The relay verifier, kept across reloads while its URL is unchanged.
    pub relay: Option<Arc<RelayVerifier>>,
    /// Sign-in providers, kept (with what they discovered) across reloads
    /// while their settings are unchanged.
    pub providers: Vec<Arc<Provider>>,
}

impl Snapshot {
    /// The snapshot for `config`, reusing what `previous` fetched when the
    /// same relay and providers are configured.
    fn new(config: HttpConfig, previous: Option<&Snapshot>) -> Result<Self, ProxyError> {
        let relay = config
            .relay
            .as_ref()
            .map(|r| relay_verifier(r, &config.apps, previous.and_then(|p| p.relay.as_ref())));
        let providers = config
            .oidc
            .iter()
            .map(|wanted| {
                let kept = previous
                    .and_then(|p| p.providers.iter().find(|old| old.same_as(wanted)).cloned());
                match kept {
                    Some(provider) => Ok(provider),
                    None => Provider::new(wanted.clone())
                        .map(Arc::new)
                        .map_err(|source| ProxyError::Oidc {
                            name: wanted.name.clone(),
                            source,
                        }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            relay,
            providers,
        })
    }

    /// The sign-in provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.config.name == name)
    }

    /// The app serving `host` and `path`: the longest matching prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&App> {
        self.config
            .apps
            .iter()
            .filter(|app| {
                app.hostname == host
                    && request::under_prefix(path, &app.path, app.case_insensitive_paths)
            })
            .max_by_key(|app| app.path.len())
    }
}

/// Notices when files change (replaced by a rename, rewritten, resized),
/// for the reloads of certificates and the token store.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

type FileStamp = (u64, u64, std::time::SystemTime);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}

impl FileWatch {
    /// Watches `paths`, taking their current state as seen.
    pub fn new(paths: &[&Path]) -> Self {
        Self {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            stamps: Mutex::new(paths.iter().map(|p| stamp(p)).collect()),
        }
    }

    /// Whether any file changed since the last call (or since `new`). A
    /// change is reported once, whether or not the caller's reload works.
    pub fn changed(&self) -> bool {
        let now: Vec<_> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut last = self.stamps.lock().expect("file stamp lock");
        if *last == now {
            return false;
        }
        *last = now;
        true
    }
}

/// The service-token store, reloaded when its file changes so `gateway
/// token` commands take effect without a restart.
#[derive(Debug)]
pub struct TokenWatch {
    path: PathBuf,
    store: ArcSwap<TokenStore>,
    watch: FileWatch,
}

impl TokenWatch {
    /// Loads the store (a missing file is an empty store).
    pub fn open(path: &Path) -> Result<Self, TokenError> {
        let watch = FileWatch::new(&[path]);
        let store = TokenStore::open(path)?;
        Ok(Self {
            path: path.to_owned(),
            store: ArcSwap::from_pointee(store),
            watch,
        })
    }

    /// The store in use.
    pub fn current(&self) -> Arc<TokenStore> {
        self.store.load_full()
    }

    /// Reloads when the file changed; a store that cannot be read keeps the
    /// previous one (logged).
    pub fn reload_if_changed(&self) {
        if !self.watch.changed() {
            return;
        }
        match TokenStore::open(&self.path) {
            Ok(store) => {
                info!(
                    tokens = store.tokens().len(),
                    "service-token store reloaded"
                );
                self.store.store(Arc::new(store));
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "service-token store unreadable; keeping the previous one")
            }
        }
    }
}

/// Shared by every connection.
pub struct Gateway {
    /// Swapped on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Tokens already verified.
    pub verified: VerifiedTokens,
    /// Service tokens.
    pub tokens: TokenWatch,
    /// The gateway's own sessions.
    pub sessions: Option<Sessions>,
    /// Seals sign-in state into the browser's login cookie.
    pub sealer: Sealer,
    /// Where decisions go.
    pub audit: analytics::AuditSender,
    /// The pooled upstream client.
    pub client: forward::UpstreamClient,
    /// Request counts and latencies.
    pub metrics: crate::metrics::HttpMetrics,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Connecting to a local upstream should be quick.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the token store is checked for changes.
const TOKEN_STORE_POLL: Duration = Duration::from_secs(1);
/// How often session keys are checked for rotation.
const SESSION_ROTATION_POLL: Duration = Duration::from_secs(60);
/// How long in-flight requests get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn relay_verifier(
    config: &RelayConfig,
    apps: &[App],
    previous: Option<&Arc<RelayVerifier>>,
) -> Arc<RelayVerifier> {
    let certs = match previous {
        Some(old)
            if old.config.certs_url == config.certs_url && old.config.ca_file == config.ca_file =>
        {
            old.certs.clone()
        }
        _ => Arc::new(CertsCache::new(
            config.certs_url.clone(),
            config.ca_file.clone(),
            config.kid_cooldown,
        )),
    };
    let expectations = apps
        .iter()
        .filter_map(|app| app.aud.as_deref())
        .map(|aud| {
            let expect =
                Expectations::new(&config.issuer, aud, &config.token_type, config.leeway_secs);
            (aud.to_owned(), expect)
        })
        .collect();
    Arc::new(RelayVerifier {
        config: config.clone(),
        certs,
        expectations,
    })
}

/// The running identity gateway.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    listeners: listener::Listeners,
    tasks: tokio::task::JoinSet<()>,
}

impl Server {
    /// Binds every listener and loads certificates, the token store and the
    /// session keys; then fetches the relay's keys once (a failure is logged
    /// and requests fail closed until a refresh succeeds).
    pub async fn start(
        config: HttpConfig,
        audit: analytics::AuditSender,
    ) -> Result<Self, ProxyError> {
        let tokens = TokenWatch::open(&config.token_store)?;
        let sessions = config
            .sessions
            .clone()
            .map(|s| Sessions::open(s, crate::unix_now()))
            .transpose()?;
        let snapshot = Snapshot::new(config, None)?;
        let config = &snapshot.config;
        let mut listeners = listener::Listeners::bind(config).await?;
        let client = forward::client(config.pool_idle, UPSTREAM_CONNECT_TIMEOUT);
        let gateway = Arc::new(Gateway {
            verified: VerifiedTokens::new(config.token_cache_bytes),
            snapshot: ArcSwap::from_pointee(snapshot),
            tokens,
            sessions,
            sealer: Sealer::new(),
            audit,
            client,
            metrics: Default::default(),
        });
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(relay) = gateway.snapshot.load().relay.clone() {
            match relay.certs.refresh().await {
                Ok(()) => info!(url = %relay.config.certs_url, "relay signing keys loaded"),
                Err(e) => {
                    warn!(error = %error_chain(&e), "relay signing keys not loaded; relay tokens are refused until they are")
                }
            }
        }
        tasks.spawn(background(gateway.clone()));
        listeners.spawn(&gateway, &mut tasks);
        Ok(Self {
            gateway,
            listeners,
            tasks,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners.local_addrs()
    }

    /// The shared state, for status and metrics.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Applies a reloaded configuration: apps, policies, relay settings and
    /// limits take effect for new requests; open connections are untouched.
    /// Listener changes need a restart and are reported.
    pub fn reload(&self, config: HttpConfig) {
        let current = self.gateway.snapshot.load_full();
        if config.https != current.config.https || config.plain != current.config.plain {
            warn!("listener changes take effect at the next restart");
        }
        self.listeners.reload_certs();
        match Snapshot::new(config, Some(&current)) {
            Ok(snapshot) => self.gateway.snapshot.store(Arc::new(snapshot)),
            Err(e) => {
                warn!(error = %error_chain(&e), "configuration not applied; the previous one stays in force");
                return;
            }
        }
        self.gateway.tokens.reload_if_changed();
        info!("gateway configuration reloaded");
    }

    /// Stops accepting, lets in-flight requests finish (up to
    /// [`DRAIN_TIMEOUT`]), then returns.
    pub async fn shutdown(mut self) {
        self.listeners.shutdown(DRAIN_TIMEOUT).await;
        self.tasks.shutdown().await;
    }
}

/// Periodic work: relay key refresh, token store and certificate reloads,
/// session key rotation.
async fn background(gateway: Arc<Gateway>) {
    let mut tokens = tokio::time::interval(TOKEN_STORE_POLL);
    let mut rotation = tokio::time::interval(SESSION_ROTATION_POLL);
    // The first refresh is `refresh` after start-up's fetch.
    let mut next_relay_refresh = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        let relay = gateway.snapshot.load().relay.clone();
        let refresh_every = relay
            .as_ref()
            .map_or(Duration::from_secs(3600), |r| r.config.refresh);
        next_relay_refresh = next_relay_refresh.min(tokio::time::Instant::now() + refresh_every);
        tokio::select! {
            _ = tokens.tick() => gateway.tokens.reload_if_changed(),
            _ = rotation.tick() => {
                if let Some(sessions) = &gateway.sessions
                    && let Err(e) = sessions.rotate(crate::unix_now())
                {
                    warn!(error = %error_chain(&e), "session key rotation failed; the current key stays in use");
                }
            }
            _ = tokio::time::sleep_until(next_relay_refresh) => {
                next_relay_refresh = tokio::time::Instant::now() + refresh_every;
                if let Some(relay) = relay
                    && let Err(e) = relay.certs.refresh().await
                {
                    warn!(error = %error_chain(&e), "relay key refresh failed; keeping the last good keys");
                }
            }
        }
    }
}
