//! `gateway run`: the long-running daemon.
//!
//! Start-up order matters for safety:
//! 1. the configuration is validated (before this module runs);
//! 2. the audit writer starts, so no decision is made without it (and the
//!    upload of finished files, if a bucket is configured);
//! 3. the HTTP listeners are bound and certificates, tokens and keys loaded;
//! 4. every range source is read and the tables are written *before* the
//!    XDP program is attached, so the first packet the filter sees is judged
//!    against the complete set.
//!
//! The admin endpoint is bound first (a taken port fails before anything
//! else happens) and reports "not ready" until the end of start-up, when
//! systemd is told `READY=1`.
//!
//! Afterwards the daemon refreshes sources on their intervals, reloads the
//! config on SIGHUP, turns drop records into audit events and a summary log
//! line, and on SIGINT/SIGTERM drains HTTP connections, flushes the audit
//! log and exits leaving the XDP filter pinned and enforcing (`gateway xdp
//! detach` takes it down).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use analytics::{AuditStore, AuditWriter, Event, Sinks, Uploader, jsonl::JsonLines};
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminServer},
    config::{AuditConfig, Config, ConfigError, XdpConfig},
    error_chain,
    paths::PinLayout,
    proxy::{self, Server},
    status::{AttachedInterface, StatusSources, XdpStatus},
    xdp::{
        self, Filter, FilterSettings,
        audit::DropAudit,
        sources::RangeSources,
        stats::{DropEvents, DroppedSource},
    },
};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The XDP side failed.
    #[error(transparent)]
    Xdp(#[from] xdp::Error),
    /// The HTTP side failed to start.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// A range source could not be read at start-up.
    #[error("cannot read the initial range lists")]
    Sources(#[source] xdp::sources::SourceError),
    /// The audit log could not be opened or recovered.
    #[error("cannot open the audit log")]
    AuditStore(#[source] analytics::StoreError),
    /// The audit writer thread could not be started.
    #[error("cannot start the audit writer")]
    AuditWriter(#[source] std::io::Error),
    /// The audit upload could not be set up (its record, its client).
    #[error("cannot start the audit upload")]
    AuditUpload(#[source] analytics::UploadError),
    /// The JSON-lines audit copy could not be opened.
    #[error("cannot open the audit file {path}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The admin endpoint could not start.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
}

/// How long shutdown waits for the audit writer to flush.
const AUDIT_FINISH: Duration = Duration::from_secs(30);
/// How long shutdown waits for the last upload pass (what is left goes up
/// at the next start).
const UPLOAD_FINISH: Duration = Duration::from_secs(30);

/// How often the drop-record ring is drained.
const DROP_POLL: Duration = Duration::from_millis(250);
/// How often the kernel's drop slots are swept for slow flows.
const DROP_SWEEP: Duration = Duration::from_secs(5);
/// File under the audit directory keeping, across restarts, what has been
/// reported of the drop windows still in the kernel's slots.
const DROP_STATE: &str = ".xdp-drop-windows.json";
/// How often a summary of drops is logged.
const DROP_SUMMARY: Duration = Duration::from_secs(60);

/// Runs until SIGINT or SIGTERM. `config_path` is re-read on SIGHUP.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    if let Err(e) = crate::allocator::disable_transparent_huge_pages() {
        warn!(error = %e, "cannot opt out of transparent huge pages");
    }
    let listen_ports = listen_ports(&config);
    let (audit, receiver) = analytics::channel(config.audit.queue);
    let audit_writer = start_audit(&config.audit, receiver)?;
    let status = Arc::new(StatusSources::new(
        config.audit.store.dir.clone(),
        audit.monitor(),
        audit_writer.status(),
    ));
    let admin = match config.admin {
        Some(listen) => {
            let admin = AdminServer::start(listen, status.clone()).await?;
            info!(address = %admin.local_addr(), "admin endpoint listening (metrics, health, status)");
            Some(admin)
        }
        None => None,
    };
    let upload = match &config.audit.upload {
        Some(upload) => {
            let uploader = Uploader::new(
                &config.audit.store.dir,
                &config.audit.store.host,
                &upload.bucket,
            )
            .map_err(DaemonError::AuditUpload)?;
            info!(bucket = %upload.bucket.url, "audit files upload");
            let task = analytics::upload::spawn(uploader, upload.interval);
            status.set_upload(task.status());
            Some(task)
        }
        None => None,
    };

    let server = match config.http {
        Some(http) => {
            match raise_open_file_limit() {
                Ok(limit) => info!(limit, "open-file limit"),
                Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
            }
            Some(Server::start(http, audit.clone()).await?)
        }
        None => None,
    };
    if let Some(server) = &server {
        for address in server.local_addrs() {
            info!(%address, "listening");
        }
        status.set_gateway(Some((server.gateway().clone(), server.local_addrs())));
    }
    let mut xdp = match config.xdp {
        Some(xdp_config) => Some(
            XdpService::start(
                xdp_config,
                listen_ports,
                DropAudit::new(audit.clone(), config.audit.xdp_overflow),
                config.audit.store.dir.join(DROP_STATE),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(xdp) = &xdp {
        status.set_xdp(xdp.status.clone());
    }
    drop(audit);

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    status.set_ready(true);
    notify_systemd(&[NotifyState::Ready]);
    info!(
        runtime = ?tokio::runtime::Handle::current().runtime_flavor(),
        "gateway running; the XDP filter stays pinned when the daemon stops"
    );
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                // systemd wants the reload's start time with RELOADING=1.
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                notify_systemd(&reloading);
                if let Err(e) = reload(&config_path, (&config.audit, config.admin), server.as_ref(), xdp.as_mut()).await {
                    warn!(error = %error_chain(&*e), "reload failed; keeping the running configuration");
                }
                notify_systemd(&[NotifyState::Ready]);
            }
            _ = async {
                match xdp.as_mut() {
                    Some(xdp) => xdp.step().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    info!("stopping");
    status.set_ready(false);
    notify_systemd(&[NotifyState::Stopping]);
    if let Some(server) = server {
        server.shutdown().await;
    }
    // The gateway holds an audit sender: let it go so the writer can finish.
    status.set_gateway(None);
    if let Some(admin) = admin {
        admin.stop().await;
    }
    if let Some(xdp) = xdp.take() {
        xdp.stop();
        info!("the XDP filter stays attached and enforcing");
    }
    // Every sender is gone: the writer drains what is queued, rolls it into
    // Parquet and returns.
    match audit_writer.finish(AUDIT_FINISH).await {
        Ok(()) => info!("audit log flushed"),
        Err(e) => warn!(
            error = %error_chain(&e),
            "audit log not flushed; synced events are recovered at the next start"
        ),
    }
    if let Some(upload) = upload {
        match upload.finish(UPLOAD_FINISH).await {
            Ok(_) => info!("audit files uploaded"),
            Err(e) => warn!(
                error = %error_chain(&e),
                "audit files not all uploaded; the rest go up at the next start"
            ),
        }
    }
    Ok(())
}

/// Tells systemd (`Type=notify`) where the daemon is; a no-op elsewhere.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Opens the audit store (recovering what a crash left), the JSON-lines
/// copy if configured, and starts the writer thread.
fn start_audit(
    config: &AuditConfig,
    receiver: analytics::AuditReceiver,
) -> Result<AuditWriter, DaemonError> {
    let (store, recovery) =
        AuditStore::open(config.store.clone()).map_err(DaemonError::AuditStore)?;
    if recovery != analytics::Recovery::default() {
        info!(
            segments = recovery.segments,
            events = recovery.events,
            torn = recovery.torn,
            temporaries = recovery.temporaries,
            "audit log recovered what the last run left"
        );
    }
    for path in &recovery.damaged {
        warn!(path = %path.display(), "unreadable audit segment set aside");
    }
    for (path, error) in &recovery.unrecovered {
        warn!(path = %path.display(), %error, "audit segment left by the last run not recovered yet; the writer retries it and takes no events until it can");
    }
    let jsonl = config
        .jsonl
        .as_ref()
        .map(|path| {
            JsonLines::open(path).map_err(|source| DaemonError::Audit {
                path: path.clone(),
                source,
            })
        })
        .transpose()?;
    info!(dir = %config.store.dir.display(), host = %config.store.host, "audit log");
    let sinks = Sinks {
        store: Some(store),
        jsonl,
    };
    analytics::writer::spawn(
        sinks,
        receiver,
        config.sync_interval,
        crate::allocator::AUDIT_WRITER_HOOKS,
    )
    .map_err(DaemonError::AuditWriter)
}

/// The XDP side of the running daemon.
struct XdpService {
    config: XdpConfig,
    listen_ports: Vec<u16>,
    filter: Filter,
    sources: RangeSources,
    drops: DropEvents,
    drop_state: PathBuf,
    drop_window: HashMap<(Option<IpAddr>, u16), u64>,
    drop_poll: Interval,
    drop_sweep: Interval,
    summary: Interval,
    audit: DropAudit,
    /// What status and metrics report, kept up to date here.
    status: Arc<Mutex<XdpStatus>>,
}

impl XdpService {
    async fn start(
        config: XdpConfig,
        listen_ports: Vec<u16>,
        audit: DropAudit,
        drop_state: PathBuf,
    ) -> Result<Self, DaemonError> {
        let sources = RangeSources::load(&config.relay, &config.management, config.allow_any)
            .await
            .map_err(DaemonError::Sources)?;
        let (filter, status) = start_filter(&config, &sources, &listen_ports)?;
        let mut drops = DropEvents::open(&PinLayout::new(&config.pin_dir))?;
        if let Ok(saved) = std::fs::read(&drop_state) {
            drops.restore(&saved);
        }
        let mut drop_poll = tokio::time::interval(DROP_POLL);
        drop_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drop_sweep = tokio::time::interval_at(Instant::now() + DROP_SWEEP, DROP_SWEEP);
        drop_sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            config,
            listen_ports,
            filter,
            sources,
            drops,
            drop_state,
            drop_window: HashMap::new(),
            drop_poll,
            drop_sweep,
            summary: tokio::time::interval_at(Instant::now() + DROP_SUMMARY, DROP_SUMMARY),
            audit,
            status: Arc::new(Mutex::new(status)),
        })
    }

    /// Waits for the next timer and does its work.
    async fn step(&mut self) {
        let refresh_at = self
            .sources
            .next_refresh()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
        tokio::select! {
            _ = tokio::time::sleep_until(refresh_at) => self.refresh().await,
            _ = self.drop_poll.tick() => {
                let drops = self.drops.drain();
                self.record(drops);
            }
            _ = self.drop_sweep.tick() => self.sweep(false),
            _ = self.summary.tick() => self.log_summary(),
        }
    }

    async fn refresh(&mut self) {
        let outcome = self.sources.refresh(false).await;
        for (source, error) in &outcome.failures {
            warn!(%source, error = %error_chain(error), "range update refused; keeping the last good list");
        }
        let applied = if outcome.changed {
            match self.filter.apply_ranges(&self.sources.set()) {
                Ok(applied) => {
                    info!(?applied, "range update applied");
                    Some(applied)
                }
                Err(e) => {
                    warn!(error = %error_chain(&e), "range update could not be written; the previous set stays in force");
                    None
                }
            }
        } else {
            None
        };
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.source_errors = outcome
            .failures
            .iter()
            .map(|(source, error)| format!("{source}: {}", error_chain(error)))
            .collect();
        if outcome.failures.is_empty() {
            status.ranges_checked_at = Some(crate::unix_now());
        }
        if let Some(applied) = applied {
            status.record_applied(&applied);
        }
    }

    /// Reports slow flows from the kernel's slots (all of them with
    /// `everything`).
    fn sweep(&mut self, everything: bool) {
        match self.drops.sweep(everything) {
            Ok(drops) => self.record(drops),
            Err(e) => warn!(error = %error_chain(&e), "cannot sweep the XDP drop slots"),
        }
    }

    /// Reports what the slots hold and saves what has been reported for
    /// the next daemon: the filter keeps counting after this one is gone.
    fn stop(mut self) {
        self.sweep(true);
        let saved = self.drops.save();
        let tmp = self.drop_state.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, saved).and_then(|()| std::fs::rename(&tmp, &self.drop_state))
        {
            warn!(path = %self.drop_state.display(), error = %e, "cannot save the XDP drop windows; some may be reported twice");
        }
    }

    /// Drop records become audit events (never blocking) and feed the
    /// summary.
    fn record(&mut self, drops: Vec<DroppedSource>) {
        for record in &drops {
            *self
                .drop_window
                .entry((record.source, record.dst_port))
                .or_default() += record.packets;
        }
        self.audit.record(drops, Event::now_us());
    }

    fn log_summary(&mut self) {
        if self.drop_window.is_empty() {
            return;
        }
        let mut top: Vec<_> = self.drop_window.drain().collect();
        top.sort_by_key(|&(_, packets)| std::cmp::Reverse(packets));
        let total: u64 = top.iter().map(|(_, n)| n).sum();
        let shown: Vec<String> = top
            .iter()
            .take(5)
            .map(|((ip, port), n)| match ip {
                Some(ip) => format!("{ip}->{port}: {n}"),
                None => format!("single-packet sources: {n}"),
            })
            .collect();
        info!(total, sources = top.len(), top = %shown.join(", "), "XDP drops in the last minute");
    }
}

/// The ports of the HTTP listeners, which the XDP filter protects as well
/// (unless they are management ports).
pub fn listen_ports(config: &Config) -> Vec<u16> {
    let Some(http) = &config.http else {
        return Vec::new();
    };
    let management = config
        .xdp
        .as_ref()
        .map(|x| x.management_ports.clone())
        .unwrap_or_default();
    http.https
        .iter()
        .map(|l| l.listen.port())
        .chain(http.plain.iter().map(|a| a.port()))
        .filter(|port| !management.contains(port))
        .collect()
}

/// Loads the program, writes the tables, then attaches to every interface.
/// `listen_ports` are protected in addition to the configured ports.
/// Returns the filter and what it now enforces.
pub fn start_filter(
    config: &XdpConfig,
    sources: &RangeSources,
    listen_ports: &[u16],
) -> Result<(Filter, XdpStatus), xdp::Error> {
    let layout = PinLayout::new(&config.pin_dir);
    let mut filter = Filter::load(&layout)?;
    let status = enforce(&mut filter, config, sources, listen_ports)?;
    xdp::remove_stale_maps(&layout)?;
    Ok((filter, status))
}

/// Writes the settings and the range set of `config` into a loaded filter,
/// then attaches it to every configured interface (at start-up and on
/// reload). Returns what it now enforces.
fn enforce(
    filter: &mut Filter,
    config: &XdpConfig,
    sources: &RangeSources,
    listen_ports: &[u16],
) -> Result<XdpStatus, xdp::Error> {
    filter.configure(&FilterSettings::from_config(
        config,
        listen_ports.iter().copied(),
    ))?;
    let applied = filter.apply_ranges(&sources.set())?;
    info!(?applied, "range set written");
    let mut status = XdpStatus::new(config);
    status.record_applied(&applied);
    status.ranges_checked_at = Some(crate::unix_now());
    for interface in &config.interfaces {
        let attached = filter.attach(interface, config.attach)?;
        info!(interface, ?attached, mode = ?config.mode, monitor = config.monitor, "XDP filter attached");
        status
            .interfaces
            .push(AttachedInterface::new(interface, attached));
    }
    Ok(status)
}

async fn reload(
    path: &Path,
    (audit, admin): (&AuditConfig, Option<std::net::SocketAddr>),
    server: Option<&Server>,
    xdp: Option<&mut XdpService>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = Config::load(path)?;
    let refuse = |key: &str, message: &str| ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    };
    match (server, &config.http) {
        (Some(_), None) => {
            return Err(refuse("http", "the running daemon cannot drop its [http] section").into());
        }
        (None, Some(_)) => {
            return Err(refuse(
                "http",
                "an [http] section added while running needs a restart",
            )
            .into());
        }
        _ => {}
    }
    if let Some(xdp) = xdp {
        let next = config.xdp.clone().ok_or_else(|| {
            refuse(
                "xdp",
                "the running daemon cannot drop its [xdp] section; use `gateway xdp detach`",
            )
        })?;
        if next.pin_dir != xdp.config.pin_dir {
            return Err(refuse("xdp.pin_dir", "cannot change while running").into());
        }
        let sources = RangeSources::load(&next.relay, &next.management, next.allow_any).await?;
        xdp.listen_ports = listen_ports(&config);
        let status = enforce(&mut xdp.filter, &next, &sources, &xdp.listen_ports)?;
        *xdp.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        xdp.config = next;
        xdp.sources = sources;
    } else if config.xdp.is_some() {
        return Err(refuse(
            "xdp",
            "an [xdp] section added while running needs a restart",
        )
        .into());
    }
    if config.audit != *audit {
        // The store's files and the writer's queue cannot change under it.
        warn!(
            "[audit] changes take effect at the next restart; the audit log keeps its running settings"
        );
    }
    if config.admin != admin {
        warn!("[admin] changes take effect at the next restart");
    }
    if let (Some(server), Some(http)) = (server, config.http) {
        server.reload(http);
    }
    info!("configuration reloaded");
    Ok(())
}

/// Lifts the soft open-file limit to the hard one and returns it: every
/// client connection is a descriptor, and the usual soft limit of 1,024
/// would refuse connections long before memory runs out (systemd's hard
/// default is 524,288).
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(limit.rlim_cur)
    }
}
