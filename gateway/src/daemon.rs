//! `gateway run`: the long-running daemon.
//!
//! Start-up order matters for safety: every range source is read and the
//! tables are written *before* the program is attached, so the first packet
//! the filter sees is judged against the complete set. Afterwards the daemon
//! refreshes sources on their intervals, reloads the config on SIGHUP,
//! summarises drop records, and on SIGINT/SIGTERM exits leaving the filter
//! pinned and enforcing (`gateway xdp detach` takes it down).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    config::{Config, ConfigError, XdpConfig},
    error_chain,
    paths::PinLayout,
    xdp::{self, Filter, FilterSettings, sources::RangeSources, stats::DropEvents},
};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The XDP side failed.
    #[error(transparent)]
    Xdp(#[from] xdp::Error),
    /// A range source could not be read at start-up.
    #[error("cannot read the initial range lists")]
    Sources(#[source] xdp::sources::SourceError),
    /// Nothing to do.
    #[error("the config has no [xdp] section: nothing to run yet")]
    NothingToRun,
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// How often the drop-record ring is drained.
const DROP_POLL: Duration = Duration::from_millis(250);
/// How often a summary of drops is logged.
const DROP_SUMMARY: Duration = Duration::from_secs(60);

/// Runs until SIGINT or SIGTERM. `config_path` is re-read on SIGHUP.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), DaemonError> {
    let mut xdp_config = config.xdp.ok_or(DaemonError::NothingToRun)?;
    let mut sources = RangeSources::load(
        &xdp_config.relay,
        &xdp_config.management,
        xdp_config.allow_any,
    )
    .await
    .map_err(DaemonError::Sources)?;
    let mut filter = start_filter(&xdp_config, &sources)?;
    let layout = PinLayout::new(&xdp_config.pin_dir);
    let mut drops = DropEvents::open(&layout)?;
    let mut drop_window: HashMap<(Option<IpAddr>, u16), u64> = HashMap::new();

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut drop_poll = tokio::time::interval(DROP_POLL);
    drop_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut summary = tokio::time::interval_at(Instant::now() + DROP_SUMMARY, DROP_SUMMARY);
    info!("gateway running; the XDP filter stays pinned when the daemon stops");
    loop {
        let refresh_at = sources
            .next_refresh()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                match reload(&config_path, &mut filter, &mut xdp_config).await {
                    Ok(new_sources) => sources = new_sources,
                    Err(e) => warn!(error = %error_chain(&*e), "reload failed; keeping the running configuration"),
                }
            }
            _ = tokio::time::sleep_until(refresh_at) => {
                let outcome = sources.refresh(false).await;
                for (source, error) in &outcome.failures {
                    warn!(%source, error = %error_chain(error), "range update refused; keeping the last good list");
                }
                if outcome.changed {
                    match filter.apply_ranges(&sources.set()) {
                        Ok(applied) => info!(?applied, "range update applied"),
                        Err(e) => warn!(error = %error_chain(&e), "range update could not be written; the previous set stays in force"),
                    }
                }
            }
            _ = drop_poll.tick() => {
                for record in drops.drain() {
                    *drop_window.entry((record.source, record.dst_port)).or_default() += record.packets;
                }
            }
            _ = summary.tick() => {
                if !drop_window.is_empty() {
                    let mut top: Vec<_> = drop_window.drain().collect();
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
        }
    }
    info!("stopping; the XDP filter stays attached and enforcing");
    Ok(())
}

/// Loads the program, writes the tables, then attaches to every interface.
pub fn start_filter(config: &XdpConfig, sources: &RangeSources) -> Result<Filter, xdp::Error> {
    let layout = PinLayout::new(&config.pin_dir);
    let mut filter = Filter::load(&layout)?;
    filter.configure(&FilterSettings::from_config(config, []))?;
    let applied = filter.apply_ranges(&sources.set())?;
    info!(?applied, "range set written");
    for interface in &config.interfaces {
        let attached = filter.attach(interface, config.attach)?;
        info!(interface, ?attached, mode = ?config.mode, monitor = config.monitor, "XDP filter attached");
    }
    xdp::remove_stale_maps(&layout)?;
    Ok(filter)
}

async fn reload(
    path: &Path,
    filter: &mut Filter,
    current: &mut XdpConfig,
) -> Result<RangeSources, Box<dyn std::error::Error + Send + Sync>> {
    let config = Config::load(path)?;
    let next = config.xdp.ok_or_else(|| ConfigError::Invalid {
        key: "xdp".into(),
        message: "the running daemon cannot drop its [xdp] section; use `gateway xdp detach`"
            .into(),
    })?;
    if next.pin_dir != current.pin_dir {
        return Err(ConfigError::Invalid {
            key: "xdp.pin_dir".into(),
            message: "cannot change while running".into(),
        }
        .into());
    }
    let sources = RangeSources::load(&next.relay, &next.management, next.allow_any).await?;
    filter.configure(&FilterSettings::from_config(&next, []))?;
    filter.apply_ranges(&sources.set())?;
    for interface in &next.interfaces {
        filter.attach(interface, next.attach)?;
    }
    info!("configuration reloaded");
    *current = next;
    Ok(sources)
}
