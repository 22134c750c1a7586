//! `[audit]`: where decisions are kept, how often they are made durable,
//! and what a full queue does.
//!
//! ```toml
//! [audit]
//! dir = "/var/lib/gateway/audit"   # Parquet files, date=/hour= partitions
//! sync_interval_ms = 1000          # a crash loses at most this much
//! roll_interval_secs = 300         # a Parquet file at least this often
//! retention_days = 90
//! http_overflow = "fail_closed"    # or "count_and_drop"
//! xdp_overflow = "count_and_aggregate"  # or "count_and_drop"
//!
//! [audit.upload]                    # optional: the fleet's one dataset
//! url = "s3://audit-logs/origins"   # bucket and key prefix
//! endpoint = "https://s3.example.net"  # S3-compatible services; AWS if unset
//! region = "eu-west-1"
//! interval_secs = 60                # new files go up this often
//! ```

use std::{path::PathBuf, time::Duration};

use analytics::{BucketConfig, Overflow, Retention, StoreConfig};
use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::{paths, xdp::audit::XdpOverflow};

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Root of the Parquet files and the write-ahead segments.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// The `host` column and file-name prefix; the system's host name by
    /// default.
    pub host: Option<String>,
    /// How often events are fsynced (milliseconds).
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    /// A segment older than this becomes a Parquet file (seconds).
    #[serde(default = "default_roll_interval_secs")]
    pub roll_interval_secs: u64,
    /// A segment with this many events becomes a Parquet file.
    #[serde(default = "default_roll_events")]
    pub roll_events: usize,
    /// Partitions older than this many days are removed (0: kept forever).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Oldest partitions are removed while the files take more (MiB).
    pub retention_max_mib: Option<u64>,
    /// Events waiting for the writer at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What a full queue does to HTTP decisions.
    #[serde(default)]
    pub http_overflow: Overflow,
    /// What a full queue does to XDP drop records.
    #[serde(default)]
    pub xdp_overflow: XdpOverflow,
    /// A JSON-lines file every event is also appended to.
    pub jsonl: Option<PathBuf>,
    /// Uploads of finished files to a bucket.
    pub upload: Option<RawUpload>,
}

/// `[audit.upload]` as written. Credentials are never in the file: they
/// come from the standard `AWS_*` environment variables (e.g. a systemd
/// `EnvironmentFile=`) or the machine's role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// An S3-compatible service's URL.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// Allows a plain-HTTP `endpoint` (a test server on loopback).
    #[serde(default)]
    pub allow_http: bool,
    /// Seconds between uploads of new files.
    #[serde(default = "default_upload_interval_secs")]
    pub interval_secs: u64,
}

impl Default for RawAudit {
    /// An absent `[audit]` section means its defaults.
    fn default() -> Self {
        toml::from_str("").expect("every key has a default")
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from(paths::DEFAULT_AUDIT_DIR)
}

fn default_sync_interval_ms() -> u64 {
    1000
}

fn default_roll_interval_secs() -> u64 {
    300
}

fn default_roll_events() -> usize {
    1_000_000
}

fn default_retention_days() -> u32 {
    90
}

fn default_upload_interval_secs() -> u64 {
    60
}

fn default_queue() -> usize {
    65_536
}

/// The validated `[audit]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditConfig {
    /// The store's settings.
    pub store: StoreConfig,
    /// How often events are fsynced.
    pub sync_interval: Duration,
    /// Channel capacity.
    pub queue: usize,
    /// HTTP overflow policy.
    pub http_overflow: Overflow,
    /// XDP overflow policy.
    pub xdp_overflow: XdpOverflow,
    /// JSON-lines copy.
    pub jsonl: Option<PathBuf>,
    /// The fleet sink.
    pub upload: Option<UploadConfig>,
}

/// The validated `[audit.upload]`.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadConfig {
    /// Where files go.
    pub bucket: BucketConfig,
    /// How often new files go up.
    pub interval: Duration,
}

impl RawAudit {
    /// Checks the section; `system_host` is the host name used when none is
    /// configured.
    pub fn validate(
        self,
        system_host: impl FnOnce() -> String,
    ) -> Result<AuditConfig, ConfigError> {
        if !self.dir.is_absolute() {
            return Err(invalid("audit.dir", "must be an absolute path"));
        }
        let host = match self.host {
            Some(host) if host.trim().is_empty() => {
                return Err(invalid("audit.host", "must not be empty"));
            }
            Some(host) => host,
            None => system_host(),
        };
        if !(10..=60_000).contains(&self.sync_interval_ms) {
            return Err(invalid(
                "audit.sync_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(1..=86_400).contains(&self.roll_interval_secs) {
            return Err(invalid(
                "audit.roll_interval_secs",
                "must be between 1 and 86400",
            ));
        }
        if self.roll_events == 0 {
            return Err(invalid("audit.roll_events", "must be greater than 0"));
        }
        if self.retention_max_mib == Some(0) {
            return Err(invalid("audit.retention_max_mib", "must be greater than 0"));
        }
        if self.queue == 0 {
            return Err(invalid("audit.queue", "must be greater than 0"));
        }
        if let Some(path) = &self.jsonl
            && !path.is_absolute()
        {
            return Err(invalid("audit.jsonl", "must be an absolute path"));
        }
        let upload = self.upload.map(RawUpload::validate).transpose()?;
        Ok(AuditConfig {
            store: StoreConfig {
                dir: self.dir,
                host,
                roll_interval: Duration::from_secs(self.roll_interval_secs),
                roll_events: self.roll_events,
                retention: Retention {
                    max_age_days: (self.retention_days > 0).then_some(self.retention_days),
                    max_bytes: self
                        .retention_max_mib
                        .map(|mib| mib.saturating_mul(1 << 20)),
                },
            },
            sync_interval: Duration::from_millis(self.sync_interval_ms),
            queue: self.queue,
            http_overflow: self.http_overflow,
            xdp_overflow: self.xdp_overflow,
            jsonl: self.jsonl,
            upload,
        })
    }
}

impl RawUpload {
    fn validate(self) -> Result<UploadConfig, ConfigError> {
        let mut bucket = BucketConfig::parse(&self.url)
            .map_err(|e| invalid("audit.upload.url", e.to_string()))?;
        if let Some(endpoint) = self.endpoint {
            let url = url::Url::parse(&endpoint)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                .ok_or_else(|| invalid("audit.upload.endpoint", "must be an http(s):// URL"))?;
            if url.scheme() == "http" && !self.allow_http {
                return Err(invalid(
                    "audit.upload.endpoint",
                    "is plain HTTP: credentials and logs would cross the network in clear (set allow_http = true for a loopback test server)",
                ));
            }
            bucket.endpoint = Some(url);
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(invalid("audit.upload.region", "must not be empty"));
        }
        bucket.region = self.region;
        bucket.allow_http = self.allow_http;
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(invalid(
                "audit.upload.interval_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(UploadConfig {
            bucket,
            interval: Duration::from_secs(self.interval_secs),
        })
    }
}

/// The system's host name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn system_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuditConfig, ConfigError> {
        toml::from_str::<RawAudit>(text)
            .map_err(ConfigError::from)?
            .validate(|| "sys".into())
    }

    #[test]
    fn defaults_keep_everything_for_90_days_and_sync_every_second() {
        let config = parse("").unwrap();
        assert_eq!(config.store.dir, PathBuf::from(paths::DEFAULT_AUDIT_DIR));
        assert_eq!(config.store.host, "sys");
        assert_eq!(config.sync_interval, Duration::from_secs(1));
        assert_eq!(config.store.retention.max_age_days, Some(90));
        assert_eq!(config.store.retention.max_bytes, None);
        assert_eq!(config.http_overflow, Overflow::FailClosed);
        assert_eq!(config.xdp_overflow, XdpOverflow::CountAndAggregate);
        let config = parse("retention_days = 0\nretention_max_mib = 2\nhost = \"web-1\"").unwrap();
        assert_eq!(config.store.retention.max_age_days, None);
        assert_eq!(config.store.retention.max_bytes, Some(2 << 20));
        assert_eq!(config.store.host, "web-1");
        assert_eq!(config.upload, None);
        let config = parse("xdp_overflow = \"count_and_drop\"").unwrap();
        assert_eq!(config.xdp_overflow, XdpOverflow::CountAndDrop);
    }

    #[test]
    fn upload_names_a_bucket_and_prefix() {
        let config = parse(
            "[upload]\nurl = \"s3://logs/origins\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true",
        )
        .unwrap();
        let upload = config.upload.unwrap();
        assert_eq!(upload.bucket.url.as_str(), "s3://logs/origins/");
        assert_eq!(upload.bucket.prefix().as_ref(), "origins");
        assert_eq!(
            upload.bucket.endpoint.unwrap().as_str(),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(upload.interval, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("dir = \"relative\"", "audit.dir"),
            ("host = \" \"", "audit.host"),
            ("sync_interval_ms = 0", "audit.sync_interval_ms"),
            ("roll_interval_secs = 0", "audit.roll_interval_secs"),
            ("roll_events = 0", "audit.roll_events"),
            ("retention_max_mib = 0", "audit.retention_max_mib"),
            ("queue = 0", "audit.queue"),
            ("jsonl = \"a.jsonl\"", "audit.jsonl"),
            ("upload.url = \"/tmp/x\"", "audit.upload.url"),
            ("upload.url = \"s3://\"", "audit.upload.url"),
            (
                "upload = { url = \"s3://b\", endpoint = \"http://s3.example\" }",
                "audit.upload.endpoint",
            ),
            (
                "upload = { url = \"s3://b\", endpoint = \"ftp://s3.example\" }",
                "audit.upload.endpoint",
            ),
            (
                "upload = { url = \"s3://b\", region = \"\" }",
                "audit.upload.region",
            ),
            (
                "upload = { url = \"s3://b\", interval_secs = 0 }",
                "audit.upload.interval_secs",
            ),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
        }
        assert!(
            parse("bogus = 1")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }
}
