//! SQL over the audit logs: the `decisions` table.
//!
//! The table is a DataFusion listing table over every `*.parquet` file
//! under the log directory or bucket prefix, with the Hive partitions
//! `date` (DATE) and `hour` (INT) as columns, so `WHERE date = '2026-11-23'`
//! reads one directory. In a bucket the gateways' uploads sit under a
//! `host=` directory each; every one is a root of the same table (the
//! `host` column is in the files themselves). Its schema is the gateway's
//! own ([`analytics::schema`]), not one inferred from whichever file comes
//! first: files written by an older schema version read with nulls in the
//! newer columns.
//!
//! Before the query, every file's footer is read once; a file that is not
//! Parquet, is cut short, or holds other columns is reported and left out,
//! so one damaged file does not fail the whole query.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use analytics::{BucketConfig, UploadError, schema};
use datafusion::{
    arrow::datatypes::{DataType, Schema},
    datasource::{
        file_format::parquet::ParquetFormat,
        listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl},
    },
    error::DataFusionError,
    prelude::{DataFrame, SessionConfig, SessionContext},
};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use object_store::{ObjectMeta, ObjectStore, local::LocalFileSystem, path::Path as ObjectPath};
use parquet::{
    arrow::parquet_to_arrow_schema,
    file::{
        FOOTER_SIZE,
        metadata::{FooterTail, ParquetMetaDataReader},
    },
};
use url::Url;

use crate::store::{BytesRead, ScanStore};

/// The table name queries use.
pub const TABLE: &str = "decisions";

/// The listing table under [`TABLE`], which reads `hour` as text (see
/// [`Decisions::open`]).
const FILES_TABLE: &str = "decision_files";

/// Files whose footers are read at once.
const FOOTER_READS: usize = 16;

/// Where the logs are.
#[derive(Clone, Debug)]
pub enum Location {
    /// A gateway's `audit.dir`.
    Dir(PathBuf),
    /// A bucket the gateways upload to (`[audit.upload]`); endpoint and
    /// credentials from the standard `AWS_*` environment variables.
    Bucket(BucketConfig),
}

impl std::str::FromStr for Location {
    type Err = UploadError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains("://") {
            Ok(Self::Bucket(BucketConfig::parse(text)?))
        } else {
            Ok(Self::Dir(PathBuf::from(text)))
        }
    }
}

/// Why a query could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The log directory does not exist.
    #[error("no audit log directory at {0} (set --dir, or the gateway's audit.dir)")]
    NoDirectory(PathBuf),
    /// The bucket's client could not be set up.
    #[error(transparent)]
    Bucket(#[from] UploadError),
    /// Listing the files failed.
    #[error("cannot list the audit files under {location}")]
    List {
        /// The directory or bucket.
        location: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// The SQL does not parse.
    #[error("invalid SQL: {0}")]
    Sql(String),
    /// The SQL parses but cannot run (unknown column, wrong types, ...).
    #[error("cannot run the query: {0}")]
    Plan(String),
    /// Reading the files failed during the query.
    #[error("the query failed: {0}")]
    Execution(String),
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        let root = error.find_root();
        let message = root.to_string();
        match root {
            DataFusionError::SQL(..) => QueryError::Sql(message),
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Plan(message),
            _ => QueryError::Execution(message),
        }
    }
}

/// A file left out of the query, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// Its location in the store.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A session with the `decisions` table registered.
pub struct Decisions {
    /// The DataFusion session.
    pub context: SessionContext,
    /// Files in the table.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// Files left out.
    pub damaged: Vec<Damaged>,
    /// Bytes fetched so far by queries (for a progress bar).
    pub read: Arc<BytesRead>,
}

impl Decisions {
    /// Opens the logs at `location`.
    pub async fn open_location(location: &Location) -> Result<Self, QueryError> {
        match location {
            Location::Dir(dir) => Self::open_dir(dir).await,
            Location::Bucket(bucket) => {
                Self::open(bucket.open()?, bucket.url.clone(), bucket.prefix()).await
            }
        }
    }

    /// Opens the logs under the local directory `dir`.
    pub async fn open_dir(dir: &Path) -> Result<Self, QueryError> {
        let dir = dir
            .canonicalize()
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| QueryError::NoDirectory(dir.to_owned()))?;
        let url =
            Url::from_directory_path(&dir).map_err(|()| QueryError::NoDirectory(dir.clone()))?;
        let prefix = ObjectPath::from_filesystem_path(&dir).map_err(|e| QueryError::List {
            location: dir.display().to_string(),
            source: e.into(),
        })?;
        Self::open(Arc::new(LocalFileSystem::new()), url, prefix).await
    }

    /// Opens the logs in `store` under `prefix`, which `url` names.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        url: Url,
        prefix: ObjectPath,
    ) -> Result<Self, QueryError> {
        let list_error = |source| QueryError::List {
            location: url.to_string(),
            source,
        };
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_filter(|meta| std::future::ready(is_log_file(&meta.location, &prefix)))
            .try_collect()
            .await
            .map_err(list_error)?;
        let checks = futures::stream::iter(objects.iter().map(|meta| {
            let store = Arc::clone(&store);
            async move {
                let problem = footer_problem(store, meta.location.clone(), meta.size).await;
                (meta, problem)
            }
        }))
        .buffer_unordered(FOOTER_READS)
        .collect::<Vec<_>>()
        .await;
        let mut damaged = Vec::new();
        let mut hidden = HashSet::new();
        let (mut files, mut bytes) = (0, 0);
        for (meta, problem) in checks {
            match problem {
                Some(reason) => {
                    hidden.insert(meta.location.clone());
                    damaged.push(Damaged {
                        path: meta.location.to_string(),
                        reason,
                    });
                }
                None => {
                    files += 1;
                    bytes += meta.size;
                }
            }
        }
        damaged.sort_by(|a, b| a.path.cmp(&b.path));

        let read = Arc::new(BytesRead::default());
        // Filters are evaluated after decoding (DataFusion's default), not
        // pushed into the Parquet decoder: on 10M events pushdown made the
        // usual aggregates (a third to a tenth of the rows kept) 1.3-1.8x
        // slower and only a needle search (one identity) 1.4x faster.
        let context =
            SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        context.register_object_store(
            &url,
            Arc::new(ScanStore::new(store, hidden, Arc::clone(&read))),
        );
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("date".into(), DataType::Date32),
                ("hour".into(), DataType::Utf8),
            ]);
        let config = ListingTableConfig::new_with_multi_paths(table_roots(&url, &objects)?)
            .with_listing_options(options)
            .with_schema(schema::schema());
        let table = ListingTable::try_new(config)?;
        context.register_table(FILES_TABLE, Arc::new(table))?;
        // `hour` is an integer to queries, but the directories are `hour=08`:
        // DataFusion 55 turns `date = .. AND hour = 8` into the directory
        // prefix `date=../hour=8` and finds nothing. Read as text and cast
        // in a view, the filter still prunes directories, by value.
        let view = format!(
            "CREATE VIEW {TABLE} AS SELECT {}, date, CAST(hour AS INT) AS hour FROM {FILES_TABLE}",
            schema::COLUMN_NAMES.join(", ")
        );
        context.sql(&view).await?;
        Ok(Self {
            context,
            files,
            bytes,
            damaged,
            read,
        })
    }

    /// Plans `sql` against the table.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, QueryError> {
        Ok(self.context.sql(sql).await?)
    }
}

/// Where the partitions start: `url` itself for a gateway's directory, or
/// each `host=` directory under it for a bucket.
fn table_roots(url: &Url, objects: &[ObjectMeta]) -> Result<Vec<ListingTableUrl>, QueryError> {
    let mut roots: Vec<String> = objects
        .iter()
        .filter_map(|meta| {
            let parts: Vec<_> = meta.location.parts().collect();
            let date = parts.iter().position(|p| p.as_ref().starts_with("date="))?;
            Some(
                parts[..date]
                    .iter()
                    .map(|p| format!("/{}", p.as_ref()))
                    .collect(),
            )
        })
        .collect();
    roots.sort();
    roots.dedup();
    if roots.is_empty() {
        return Ok(vec![ListingTableUrl::parse(url.as_str())?]);
    }
    roots
        .iter()
        .map(|root| {
            let mut url = url.clone();
            url.set_path(&format!("{root}/"));
            Ok(ListingTableUrl::parse(url.as_str())?)
        })
        .collect()
}

/// A finished audit file under `root`: `*.parquet`, neither hidden nor in a
/// hidden directory below `root` (the write-ahead segments, temporary
/// names).
fn is_log_file(path: &ObjectPath, root: &ObjectPath) -> bool {
    path.extension() == Some("parquet")
        && path
            .prefix_match(root)
            .is_some_and(|mut parts| !parts.any(|part| part.as_ref().starts_with('.')))
}

/// What is wrong with the file's footer, if anything.
async fn footer_problem(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
) -> Option<String> {
    let theirs = match read_schema(&store, &path, size).await {
        Ok(schema) => schema,
        Err(problem) => return Some(problem),
    };
    let ours = schema::schema();
    // Columns are only ever added at the end: an older file's columns are
    // a prefix of ours, with the same types.
    let compatible = theirs.fields().len() <= ours.fields().len()
        && theirs
            .fields()
            .iter()
            .zip(ours.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    (!compatible).then(|| "its columns are not the audit schema".to_owned())
}

/// The Arrow schema in the file's footer.
async fn read_schema(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    size: u64,
) -> Result<Schema, String> {
    let tail_start = size
        .checked_sub(FOOTER_SIZE as u64)
        .ok_or("too short to be Parquet")?;
    let tail = store
        .get_range(path, tail_start..size)
        .await
        .map_err(|e| e.to_string())?;
    let tail = FooterTail::try_from(tail.as_ref()).map_err(|e| e.to_string())?;
    let metadata_start = tail_start
        .checked_sub(tail.metadata_length() as u64)
        .ok_or("its footer is longer than the file")?;
    let metadata = store
        .get_range(path, metadata_start..tail_start)
        .await
        .map_err(|e| e.to_string())?;
    let metadata = ParquetMetaDataReader::decode_metadata(&metadata).map_err(|e| e.to_string())?;
    let file = metadata.file_metadata();
    parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use analytics::{Event, files, schema::EventBatchBuilder};
    use datafusion::arrow::array::AsArray as _;
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    /// 2026-11-23T00:00:00Z.
    const MIDNIGHT_US: i64 = 1_795_392_000_000_000;
    const HOUR_US: i64 = 3_600_000_000;
    const EVENTS_AN_HOUR: usize = 2_000;

    /// Distinct request ids in `sql`'s one-row answer, and the bytes the
    /// query fetched.
    async fn distinct_ids(decisions: &Decisions, sql: &str) -> (i64, u64) {
        let before = decisions.read.get();
        let batches = decisions.sql(sql).await.unwrap().collect().await.unwrap();
        let ids = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        (ids, decisions.read.get() - before)
    }

    #[tokio::test]
    async fn a_filter_on_date_and_hour_reads_only_that_hours_files() {
        let dir = tempfile::tempdir().unwrap();
        for hour in 0..4 {
            let mut batch = EventBatchBuilder::new("origin-1", EVENTS_AN_HOUR);
            for i in 0..EVENTS_AN_HOUR {
                batch.push(&Event {
                    time_us: MIDNIGHT_US + hour * HOUR_US + i as i64,
                    reason: "policy".into(),
                    request_id: Some(format!("{hour}-{i}")),
                    ..Event::default()
                });
            }
            files::write(dir.path(), &format!("h{hour}"), &[batch.finish()]).unwrap();
        }
        // Each query in a fresh context: nothing cached from the other.
        let fresh = || Decisions::open_dir(dir.path());
        let decisions = fresh().await.unwrap();
        assert_eq!(decisions.files, 4);
        let (all, read_all) = distinct_ids(
            &decisions,
            "SELECT count(DISTINCT request_id) FROM decisions",
        )
        .await;
        assert_eq!(all, 4 * EVENTS_AN_HOUR as i64);
        let (one, read_one) = distinct_ids(
            &fresh().await.unwrap(),
            "SELECT count(DISTINCT request_id) FROM decisions \
             WHERE date = DATE '2026-11-23' AND hour = 2",
        )
        .await;
        assert_eq!(one, EVENTS_AN_HOUR as i64);
        // One file of four: the other partitions are never opened.
        assert!(
            read_one > 0 && read_one * 3 < read_all,
            "read {read_one} bytes for one hour, {read_all} for all four"
        );
    }
}
