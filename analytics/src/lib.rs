//! Audit events of the origin gateway, and the columnar logs that keep them.
//!
//! Every access decision, from the XDP layer (drop records) and from the
//! HTTP layer (one per request), is one [`Event`]. The gateway hands events
//! to an [`AuditSender`], which never blocks the request path: when its
//! bounded channel is full it applies the configured [`Overflow`] policy.
//! The [`writer`] thread takes them into the [`AuditStore`]: a write-ahead
//! segment fsynced on an interval, rolled into hour-partitioned Parquet
//! files that SQL engines query directly.
//!
//! # Layout
//! - [`event`]: the record, defined once.
//! - [`schema`]: its columnar form (the Arrow schema, the batch builder).
//! - [`channel`]: the bounded, non-blocking hand-off and its overflow policy.
//! - [`writer`]: the thread draining the channel, syncing and retrying.
//! - [`store`]: segment → Parquet, recovery after a crash.
//! - [`wal`]: the write-ahead segments (Arrow IPC streams).
//! - [`files`]: Parquet layout, writer settings, retention.
//! - [`jsonl`]: an optional JSON-lines copy.
//! - [`upload`]: the fleet sink, finished files into an S3 bucket.
//! - [`error`]: the store's error type.

pub mod channel;
pub mod error;
pub mod event;
pub mod files;
pub mod jsonl;
pub mod schema;
pub mod store;
pub mod upload;
pub mod wal;
pub mod writer;

use std::{path::Path, sync::Mutex};

pub use channel::{AuditMonitor, AuditReceiver, AuditSender, Overflow, Refused, Slot, channel};
pub use error::StoreError;
pub use event::{Decision, Event, Label, Layer, country_label, label};
pub use files::Retention;
pub use store::{AuditStore, Recovery, StoreConfig, StoreStatus};
pub use upload::{BucketConfig, UploadError, UploadStatus, Uploader};
pub use writer::{AuditWriter, MemoryHooks, Sinks};

/// Makes the entries of `dir` (creations, renames, removals) durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("syncing the directory", dir))
}

/// Makes `path`'s directory entry durable.
fn fsync_parent(path: &Path) -> Result<(), StoreError> {
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// An error and its causes on one line, for logs and status.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error a background task is stuck on, for status reporting: set
/// when it fails, cleared when it recovers.
#[derive(Debug, Default)]
struct ErrorSlot(Mutex<Option<String>>);

impl ErrorSlot {
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, error: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
