//! Prometheus metrics. Request counts and latencies are recorded as
//! requests finish ([`HttpMetrics`]); everything else is read from the
//! daemon's [`Status`](crate::status::Status) at each scrape, so metrics
//! and `gateway status` never disagree.
//!
//! Labels carry configuration names and fixed reasons only, never
//! identities, addresses or paths: their number stays bounded and the
//! metrics store holds nothing personal.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

use crate::{
    status::{Status, StatusSources},
    xdp::stats::ReasonCount,
};

/// Labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    decision: &'static str,
    reason: String,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

/// Labels of the identity-provider latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

/// What the request path records.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<AppLabel, Histogram>,
    provider: Family<ProviderLabel, Histogram>,
    /// Client connections open on the HTTP listeners.
    pub connections: Gauge,
    /// Of those, idle HTTP/1 connections parked without hyper's buffers.
    pub parked: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(duration_histogram),
            provider: Family::new_with_constructor(duration_histogram),
            connections: Gauge::default(),
            parked: Gauge::default(),
        }
    }
}

/// 100 µs to ~26 s: a refusal takes microseconds, an upstream or a
/// provider may take seconds.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl HttpMetrics {
    /// Counts one finished request. `app` is the configured app name (empty
    /// when no app matched).
    pub fn record(&self, app: &str, decision: &'static str, reason: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                app: app.to_owned(),
                decision,
                reason: reason.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .observe(seconds);
    }

    /// Time a sign-in's callback spent waiting on identity provider
    /// `provider` (code exchange, key fetches): the part of a sign-in that
    /// is the provider's, not the gateway's.
    pub fn record_provider(&self, provider: &str, seconds: f64) {
        self.provider
            .get_or_create(&ProviderLabel {
                provider: provider.to_owned(),
            })
            .observe(seconds);
    }
}

/// Every metric of the daemon, encoded on demand.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics over `sources`; request metrics once a gateway is set.
    pub fn new(sources: Arc<StatusSources>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StatusCollector { sources }));
        Self { registry }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The media type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct StatusCollector {
    sources: Arc<StatusSources>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    attach: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
    monitor: &'static str,
}

/// Encodes `metric` (whole, with any labels it has) under `name`.
fn metric(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes one unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    metric(encoder, name, help, &ConstGauge::new(value))
}

/// Encodes one unlabelled counter (`name` without `_total`).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    metric(encoder, name, help, &ConstCounter::new(value))
}

/// Encodes a counter per XDP reason (`name` without `_total`).
fn by_reason(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[ReasonCount],
    value: impl Fn(&ReasonCount) -> u64,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for row in rows {
        let labels = ReasonLabels {
            reason: row.reason.clone(),
            monitor: if row.monitor { "true" } else { "false" },
        };
        ConstCounter::new(value(row)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn timestamp(at: Option<u64>) -> i64 {
    at.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX))
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let status: Status = self.sources.snapshot();
        let e = &mut encoder;
        let info = Info::new(vec![("version".to_owned(), status.version.clone())]);
        info.encode(e.encode_descriptor(
            "gateway_build",
            "The running version.",
            None,
            info.metric_type(),
        )?)?;
        gauge(
            e,
            "gateway_start_time_seconds",
            "When the daemon started (Unix time).",
            timestamp(Some(status.started_at)),
        )?;
        gauge(
            e,
            "gateway_ready",
            "1 once started and while the audit log can be written.",
            i64::from(status.not_ready.is_none()),
        )?;

        if let Some(xdp) = &status.xdp {
            let attached = ConstGauge::new(1i64);
            let mut family = e.encode_descriptor(
                "gateway_xdp_attached",
                "Interfaces the XDP filter is attached to, by attach mode.",
                None,
                attached.metric_type(),
            )?;
            for interface in &xdp.interfaces {
                let labels = InterfaceLabels {
                    interface: interface.name.clone(),
                    attach: interface.attach.clone(),
                };
                attached.encode(family.encode_family(&labels)?)?;
            }
            by_reason(
                e,
                "gateway_xdp_packets",
                "Packets judged by the XDP filter, by reason.",
                &xdp.counters,
                |row| row.packets,
            )?;
            by_reason(
                e,
                "gateway_xdp_bytes",
                "Bytes judged by the XDP filter, by reason.",
                &xdp.counters,
                |row| row.bytes,
            )?;
            gauge(
                e,
                "gateway_xdp_relay_prefixes",
                "Relay prefixes in force.",
                count(xdp.relay_prefixes),
            )?;
            gauge(
                e,
                "gateway_xdp_management_prefixes",
                "Management prefixes in force.",
                count(xdp.management_prefixes),
            )?;
            gauge(
                e,
                "gateway_xdp_ranges_applied_timestamp_seconds",
                "When the range set in force was written (Unix time).",
                timestamp(xdp.ranges_applied_at),
            )?;
            gauge(
                e,
                "gateway_xdp_ranges_checked_timestamp_seconds",
                "When every range source was last read successfully (Unix time; 0: never).",
                timestamp(xdp.ranges_checked_at),
            )?;
            gauge(
                e,
                "gateway_xdp_range_sources_failing",
                "Range sources whose last update was refused.",
                count(xdp.source_errors.len()),
            )?;
        }

        if let Some(http) = &status.http {
            if let Some(gateway) = self.sources.gateway() {
                let metrics = &gateway.metrics;
                metric(
                    e,
                    "gateway_http_requests",
                    "Requests decided, by app, decision and reason.",
                    &metrics.requests,
                )?;
                metric(
                    e,
                    "gateway_http_request_duration_seconds",
                    "Time from request to response headers, by app.",
                    &metrics.latency,
                )?;
                metric(
                    e,
                    "gateway_oidc_provider_duration_seconds",
                    "Time sign-in callbacks waited on the identity provider, by provider.",
                    &metrics.provider,
                )?;
                metric(
                    e,
                    "gateway_http_connections",
                    "Client connections open on the HTTP listeners.",
                    &metrics.connections,
                )?;
                metric(
                    e,
                    "gateway_http_connections_parked",
                    "Idle HTTP/1 keep-alive connections waiting without request buffers.",
                    &metrics.parked,
                )?;
            }
            gauge(
                e,
                "gateway_service_tokens",
                "Service tokens neither revoked nor expired.",
                count(http.service_tokens),
            )?;
            if let Some(keys) = &http.relay_keys {
                gauge(
                    e,
                    "gateway_relay_keys",
                    "Relay signing keys in use (0: relay tokens are refused).",
                    count(keys.keys),
                )?;
                gauge(
                    e,
                    "gateway_relay_keys_loaded_timestamp_seconds",
                    "When the relay's keys were fetched (Unix time; 0: never).",
                    timestamp(keys.loaded_at),
                )?;
            }
        }

        let audit = &status.audit;
        gauge(
            e,
            "gateway_audit_queued_events",
            "Events waiting for the audit writer.",
            count(audit.queued),
        )?;
        counter(
            e,
            "gateway_audit_lost_events",
            "Events dropped because the audit queue was full.",
            audit.lost_events,
        )?;
        counter(
            e,
            "gateway_audit_durable_events",
            "Events fsynced to the write-ahead segment.",
            audit.durable_events,
        )?;
        counter(
            e,
            "gateway_audit_files_written",
            "Parquet files written.",
            audit.files_written,
        )?;
        gauge(
            e,
            "gateway_audit_last_sync_timestamp_seconds",
            "When events were last fsynced (Unix time; 0: never).",
            timestamp(audit.last_sync_at),
        )?;
        gauge(
            e,
            "gateway_audit_write_failing",
            "1 while the audit writer is stuck on an error.",
            i64::from(audit.error.is_some()),
        )?;
        if let Some(upload) = &audit.upload {
            counter(
                e,
                "gateway_audit_uploaded_files",
                "Parquet files uploaded to the bucket.",
                upload.uploaded,
            )?;
            gauge(
                e,
                "gateway_audit_upload_pending_files",
                "Finished files waiting for upload.",
                i64::try_from(upload.pending).unwrap_or(i64::MAX),
            )?;
            gauge(
                e,
                "gateway_audit_last_upload_timestamp_seconds",
                "When a file last went up (Unix time; 0: never).",
                timestamp(upload.last_upload_at),
            )?;
            gauge(
                e,
                "gateway_audit_upload_failing",
                "1 while upload passes fail.",
                i64::from(upload.error.is_some()),
            )?;
        }
        Ok(())
    }
}
