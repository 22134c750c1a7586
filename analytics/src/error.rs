//! The one error type of the audit store.

use std::path::{Path, PathBuf};

/// Why the audit store could not do something. Every variant names the file
/// it is about, so an operator can tell a full disk from a damaged file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed (disk full, permissions, ...).
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. `appending to`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Arrow could not encode or decode a batch.
    #[error("{action} {path}")]
    Arrow {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Parquet could not encode a file.
    #[error("writing {path}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A segment left by an earlier run has columns that are not ours.
    #[error("{path} does not hold audit events of this schema")]
    Schema {
        /// The file.
        path: PathBuf,
    },
}

impl StoreError {
    /// `map_err` adapter for filesystem calls on `path`.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// `map_err` adapter for Arrow calls about `path`.
    pub(crate) fn arrow(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(arrow::error::ArrowError) -> Self {
        let path = path.to_owned();
        move |source| Self::Arrow {
            action,
            path,
            source,
        }
    }

    /// `map_err` adapter for Parquet calls about `path`.
    pub(crate) fn parquet(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let path = path.to_owned();
        move |source| Self::Parquet { path, source }
    }
}
