//! What the running daemon reports about itself: one [`Status`] model,
//! built on demand from live handles ([`StatusSources`]), served as JSON by
//! the admin endpoint, printed by `gateway status`, and the source of the
//! state-derived Prometheus metrics.
//!
//! Times are Unix seconds; `None` means "never".

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use analytics::{AuditMonitor, StoreStatus, UploadStatus};
use serde::{Deserialize, Serialize};

use crate::{
    config::{FilterMode, XdpConfig},
    paths::PinLayout,
    proxy::Gateway,
    unix_now,
    xdp::{Applied, Attached, stats::ReasonCount},
};

/// The whole daemon at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The gateway's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: u64,
    /// Whether `/readyz` answers 200: started, not stopping, and the audit
    /// log can be written.
    pub ready: bool,
    /// Why it does not, if it does not.
    pub not_ready: Option<String>,
    /// The XDP lock-down, if configured.
    pub xdp: Option<XdpStatus>,
    /// The identity gateway, if configured.
    pub http: Option<HttpStatus>,
    /// The audit log.
    pub audit: AuditStatus,
}

/// The XDP filter as the daemon last set it up, and its kernel counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct XdpStatus {
    /// Where its program, links and maps are pinned.
    pub pin_dir: PathBuf,
    /// Interfaces and how each is attached.
    pub interfaces: Vec<AttachedInterface>,
    /// `ports` or `strict`.
    pub mode: String,
    /// Counting only, dropping nothing.
    pub monitor: bool,
    /// Relay prefixes in force (after aggregation).
    pub relay_prefixes: usize,
    /// Management prefixes in force.
    pub management_prefixes: usize,
    /// Range-set generation in force.
    pub generation: u32,
    /// When the range set in force was written.
    pub ranges_applied_at: Option<u64>,
    /// When every source was last read successfully.
    pub ranges_checked_at: Option<u64>,
    /// Sources whose last update was refused, and why (their last good
    /// list stays in force).
    pub source_errors: Vec<String>,
    /// Packets and bytes per reason since the filter was pinned.
    pub counters: Vec<ReasonCount>,
}

impl XdpStatus {
    /// The status of a filter set up from `config`, before anything is
    /// attached or written.
    pub fn new(config: &XdpConfig) -> Self {
        Self {
            pin_dir: config.pin_dir.clone(),
            mode: match config.mode {
                FilterMode::Ports => "ports",
                FilterMode::Strict => "strict",
            }
            .to_owned(),
            monitor: config.monitor,
            ..Self::default()
        }
    }

    /// A range set was written now.
    pub fn record_applied(&mut self, applied: &Applied) {
        self.relay_prefixes = applied.relay_prefixes;
        self.management_prefixes = applied.management_prefixes;
        self.generation = applied.generation;
        self.ranges_applied_at = Some(unix_now());
    }
}

/// One attached interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachedInterface {
    /// Interface name.
    pub name: String,
    /// `native`, `generic` or `adopted` (a link pinned by an earlier run).
    pub attach: String,
}

impl AttachedInterface {
    /// An interface attached as `attached`.
    pub fn new(name: &str, attached: Attached) -> Self {
        let attach = match attached {
            Attached::Native => "native",
            Attached::Generic => "generic",
            Attached::Adopted => "adopted",
        };
        Self {
            name: name.to_owned(),
            attach: attach.to_owned(),
        }
    }
}

/// The identity gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpStatus {
    /// Bound listener addresses.
    pub listeners: Vec<SocketAddr>,
    /// Configured applications.
    pub apps: usize,
    /// The relay's signing keys, if a relay is configured.
    pub relay_keys: Option<KeysStatus>,
    /// Service tokens neither revoked nor expired.
    pub service_tokens: usize,
}

/// A key set fetched from a certs URL.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeysStatus {
    /// Where the keys come from.
    pub url: String,
    /// Keys in use (0: relay tokens are refused).
    pub keys: usize,
    /// When they were fetched.
    pub loaded_at: Option<u64>,
}

/// The audit log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditStatus {
    /// Its directory.
    pub dir: PathBuf,
    /// Events waiting for the writer.
    pub queued: usize,
    /// Events dropped for want of room since start.
    pub lost_events: u64,
    /// Events fsynced since start.
    pub durable_events: u64,
    /// Parquet files written since start.
    pub files_written: u64,
    /// When events were last fsynced.
    pub last_sync_at: Option<u64>,
    /// When the last Parquet file was written.
    pub last_file_at: Option<u64>,
    /// The error the writer is stuck on, if it is.
    pub error: Option<String>,
    /// The bucket upload, if configured.
    pub upload: Option<AuditUploadStatus>,
}

/// The upload of finished files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditUploadStatus {
    /// Files uploaded since start.
    pub uploaded: u64,
    /// Finished files waiting.
    pub pending: u64,
    /// When a file last went up.
    pub last_upload_at: Option<u64>,
    /// Why the last pass failed, until one succeeds.
    pub error: Option<String>,
}

/// Live handles the status is read from. Parts are filled in as the daemon
/// starts them, and the gateway is let go at shutdown (it holds an audit
/// sender, and the audit writer finishes only once every sender is gone).
#[derive(Debug)]
pub struct StatusSources {
    started_at: u64,
    ready: AtomicBool,
    audit_dir: PathBuf,
    audit: AuditMonitor,
    store: Option<Arc<StoreStatus>>,
    upload: Mutex<Option<Arc<UploadStatus>>>,
    gateway: Mutex<Option<(Arc<Gateway>, Vec<SocketAddr>)>>,
    xdp: Mutex<Option<Arc<Mutex<XdpStatus>>>>,
}

fn unix_secs_from_us(us: i64) -> Option<u64> {
    u64::try_from(us / 1_000_000).ok().filter(|&s| s > 0)
}

impl StatusSources {
    /// Sources for a daemon whose audit log is at `audit_dir`.
    pub fn new(audit_dir: PathBuf, audit: AuditMonitor, store: Option<Arc<StoreStatus>>) -> Self {
        Self {
            started_at: unix_now(),
            ready: AtomicBool::new(false),
            audit_dir,
            audit,
            store,
            upload: Mutex::new(None),
            gateway: Mutex::new(None),
            xdp: Mutex::new(None),
        }
    }

    /// The upload task's status.
    pub fn set_upload(&self, status: Arc<UploadStatus>) {
        *lock(&self.upload) = Some(status);
    }

    /// The running identity gateway and its bound addresses; `None` lets
    /// it go.
    pub fn set_gateway(&self, gateway: Option<(Arc<Gateway>, Vec<SocketAddr>)>) {
        *lock(&self.gateway) = gateway;
    }

    /// The gateway, for its request metrics.
    pub fn gateway(&self) -> Option<Arc<Gateway>> {
        lock(&self.gateway).as_ref().map(|(g, _)| g.clone())
    }

    /// The XDP service's report, which it keeps up to date.
    pub fn set_xdp(&self, xdp: Arc<Mutex<XdpStatus>>) {
        *lock(&self.xdp) = Some(xdp);
    }

    /// Started (true) or stopping (false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Why the daemon is not ready, if it is not (`/readyz` asks only
    /// this, without reading the rest of the status).
    pub fn not_ready(&self) -> Option<String> {
        let audit_error = self.store.as_deref().and_then(StoreStatus::error);
        self.not_ready_because(audit_error.as_deref())
    }

    fn not_ready_because(&self, audit_error: Option<&str>) -> Option<String> {
        if !self.ready.load(Ordering::Acquire) {
            return Some("starting or stopping".to_owned());
        }
        audit_error.map(|e| format!("the audit log cannot be written: {e}"))
    }

    /// Reads everything now. XDP counters come from the pinned maps; a
    /// failure to read them leaves them out.
    pub fn snapshot(&self) -> Status {
        let xdp = lock(&self.xdp).as_ref().map(|x| {
            let mut status = lock(x).clone();
            status.counters = crate::xdp::stats::read_counters(&PinLayout::new(&status.pin_dir))
                .unwrap_or_default();
            status
        });
        let http = lock(&self.gateway).as_ref().map(|(gateway, listeners)| {
            let snapshot = gateway.snapshot.load();
            let now = unix_now();
            HttpStatus {
                listeners: listeners.clone(),
                apps: snapshot.config.apps.len(),
                relay_keys: snapshot.relay.as_ref().map(|relay| KeysStatus {
                    url: relay.certs.url().to_owned(),
                    keys: relay.certs.keys().map_or(0, |k| k.ids().len()),
                    loaded_at: relay.certs.loaded_at(),
                }),
                service_tokens: gateway
                    .tokens
                    .current()
                    .tokens()
                    .iter()
                    .filter(|t| t.revoked_at.is_none() && t.expires_at > now)
                    .count(),
            }
        });
        let store = self.store.as_deref();
        let audit = AuditStatus {
            dir: self.audit_dir.clone(),
            queued: self.audit.queued(),
            lost_events: self.audit.lost_total(),
            durable_events: store.map_or(0, StoreStatus::durable_events),
            files_written: store.map_or(0, StoreStatus::files_written),
            last_sync_at: store.and_then(|s| unix_secs_from_us(s.last_sync_us())),
            last_file_at: store.and_then(|s| unix_secs_from_us(s.last_file_us())),
            error: store.and_then(StoreStatus::error),
            upload: lock(&self.upload).as_ref().map(|u| AuditUploadStatus {
                uploaded: u.uploaded(),
                pending: u.pending(),
                last_upload_at: unix_secs_from_us(u.last_upload_us()),
                error: u.error(),
            }),
        };
        let not_ready = self.not_ready_because(audit.error.as_deref());
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.started_at,
            ready: not_ready.is_none(),
            not_ready,
            xdp,
            http,
            audit,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Status {
    /// The report `gateway status` prints.
    pub fn render(&self) -> String {
        let now = unix_now();
        let ago = |at: Option<u64>| match at {
            Some(at) => format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(now.saturating_sub(at)))
            ),
            None => "never".to_owned(),
        };
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "gateway {} (pid {}), up {}, {}",
            self.version,
            self.pid,
            humantime::format_duration(Duration::from_secs(now.saturating_sub(self.started_at))),
            match &self.not_ready {
                None => "ready".to_owned(),
                Some(why) => format!("NOT READY: {why}"),
            }
        ));
        match &self.xdp {
            None => line("xdp:    not configured".to_owned()),
            Some(xdp) => {
                let interfaces: Vec<String> = xdp
                    .interfaces
                    .iter()
                    .map(|i| format!("{} ({})", i.name, i.attach))
                    .collect();
                line(format!(
                    "xdp:    attached to {}; mode {}{}",
                    if interfaces.is_empty() {
                        "nothing".to_owned()
                    } else {
                        interfaces.join(", ")
                    },
                    xdp.mode,
                    if xdp.monitor { ", monitor only" } else { "" }
                ));
                line(format!(
                    "        ranges: {} relay, {} management prefixes (generation {}), written {}, sources read {}",
                    xdp.relay_prefixes,
                    xdp.management_prefixes,
                    xdp.generation,
                    ago(xdp.ranges_applied_at),
                    ago(xdp.ranges_checked_at)
                ));
                for error in &xdp.source_errors {
                    line(format!("        source update refused: {error}"));
                }
                let dropped: u64 = xdp
                    .counters
                    .iter()
                    .filter(|c| c.reason.starts_with("dropped") && !c.monitor)
                    .map(|c| c.packets)
                    .sum();
                let passed: u64 = xdp
                    .counters
                    .iter()
                    .filter(|c| !c.reason.starts_with("dropped"))
                    .map(|c| c.packets)
                    .sum();
                line(format!(
                    "        packets: {passed} passed, {dropped} dropped"
                ));
            }
        }
        match &self.http {
            None => line("http:   not configured".to_owned()),
            Some(http) => {
                let listeners: Vec<String> =
                    http.listeners.iter().map(ToString::to_string).collect();
                line(format!(
                    "http:   listening on {}; {} apps; {} service tokens",
                    listeners.join(", "),
                    http.apps,
                    http.service_tokens
                ));
                if let Some(keys) = &http.relay_keys {
                    line(format!(
                        "        relay keys: {} from {}, fetched {}",
                        keys.keys,
                        keys.url,
                        ago(keys.loaded_at)
                    ));
                }
            }
        }
        let audit = &self.audit;
        line(format!(
            "audit:  {}; {} queued, {} lost, {} durable, {} files; last sync {}, last file {}",
            audit.dir.display(),
            audit.queued,
            audit.lost_events,
            audit.durable_events,
            audit.files_written,
            ago(audit.last_sync_at),
            ago(audit.last_file_at)
        ));
        if let Some(error) = &audit.error {
            line(format!("        WRITE ERROR: {error}"));
        }
        if let Some(upload) = &audit.upload {
            line(format!(
                "        upload: {} uploaded, {} pending, last {}{}",
                upload.uploaded,
                upload.pending,
                ago(upload.last_upload_at),
                upload
                    .error
                    .as_ref()
                    .map(|e| format!("; FAILING: {e}"))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_between_start_up_and_stop_and_while_the_audit_log_works() {
        let (sender, _receiver) = analytics::channel(4);
        let store = Arc::new(StoreStatus::default());
        let sources = StatusSources::new("/audit".into(), sender.monitor(), Some(store.clone()));
        let starting = sources.snapshot();
        assert!(!starting.ready);
        assert_eq!(sources.not_ready(), starting.not_ready);
        assert!(
            starting
                .render()
                .contains("NOT READY: starting or stopping")
        );
        sources.set_ready(true);
        let running = sources.snapshot();
        assert_eq!(running.not_ready, None);
        assert!(running.ready);
        assert_eq!(sources.not_ready(), None);
        assert!(running.render().contains(", ready\n"));
        assert!(running.render().contains("xdp:    not configured"));
        assert_eq!(running.audit.last_sync_at, None);
        // A JSON round trip, as `gateway status` reads it.
        let json = serde_json::to_string(&running).unwrap();
        let read: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(read.render(), running.render());
    }
}
