//! The Parquet files: where they go, how they are written, how old ones
//! are removed.
//!
//! ```text
//! <dir>/date=2026-11-23/hour=07/<host>-<segment>.parquet
//! <dir>/.wal/<host>-<segment>.arrows          (events not yet in Parquet)
//! ```
//!
//! Partitions are Hive-style, so DataFusion, DuckDB, Spark, Trino and Athena
//! turn `date` and `hour` into columns and skip whole directories on a time
//! filter. A file is named after the segment it was made from: writing the
//! same segment again (recovery after a crash between the rename and the
//! segment's deletion) replaces the file instead of duplicating its events,
//! and the host in the name keeps a fleet's files apart in one bucket.
//!
//! A file appears only whole: it is written under a hidden temporary name,
//! fsynced, renamed, and the directory fsynced. Query tools skip the
//! temporary names (they neither end in `.parquet` nor are visible).

use std::{
    fs::{File, OpenOptions},
    io::BufWriter,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use arrow::{
    array::{AsArray, RecordBatch, UInt32Array},
    compute::{concat_batches, interleave_record_batch, take_record_batch},
    datatypes::{DataType, TimestampMicrosecondType},
};
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, Encoding, ZstdLevel},
    file::{
        metadata::{KeyValue, SortingColumn},
        properties::{EnabledStatistics, WriterProperties},
    },
    schema::types::ColumnPath,
};
use tracing::warn;

use crate::{
    error::StoreError,
    fsync_dir,
    schema::{self, SCHEMA_VERSION, SCHEMA_VERSION_KEY, TIME_COLUMN},
};

/// Extension of finished files.
pub const EXTENSION: &str = "parquet";

/// Rows per row group at most: large enough for scans to read long runs,
/// small enough that one hour of a busy host is several groups that time
/// filters can skip by their statistics.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// Microseconds per partition (one hour).
const HOUR_US: i64 = 3_600_000_000;

/// Text columns whose statistics are kept besides the time and every number
/// column: the ones a row group can hold a single value of (one host per
/// file; a quiet hour of XDP drops only). Identities, addresses, paths and
/// ids take many values in every row group of a busy origin, so their
/// minimum and maximum would prune nothing and cost two comparisons a row.
const TEXT_STATISTICS: [&str; 4] = ["host", "layer", "decision", "app"];

/// Number columns that take a new value in nearly every row (ports,
/// latencies, sizes): a dictionary would hold most values once and cost a
/// hash a row, so they are bit-packed instead, which also makes them
/// smaller.
const SCATTERED_NUMBERS: [&str; 4] = ["client_port", "latency_us", "bytes", "interval_us"];

/// The writer settings of every file, in one place.
pub fn writer_properties() -> WriterProperties {
    let time = ColumnPath::from(TIME_COLUMN);
    let request_id = ColumnPath::from("request_id");
    let schema = schema::schema();
    let text_without_statistics = schema.fields().iter().filter(|field| {
        matches!(field.data_type(), DataType::Utf8 | DataType::Dictionary(..))
            && !TEXT_STATISTICS.contains(&field.name().as_str())
    });
    let mut builder = WriterProperties::builder();
    for field in text_without_statistics {
        builder = builder.set_column_statistics_enabled(
            ColumnPath::from(field.name().as_str()),
            EnabledStatistics::None,
        );
    }
    for name in SCATTERED_NUMBERS {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(name), false)
            .set_column_encoding(ColumnPath::from(name), Encoding::DELTA_BINARY_PACKED);
    }
    builder
        // ZSTD(1): higher levels buy almost nothing on columnar data and
        // cost ingest speed.
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("1 is a valid level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Times are sorted and close together: deltas pack them into a few
        // bits each, where a dictionary would hold every value once.
        .set_column_dictionary_enabled(time.clone(), false)
        .set_column_encoding(time, Encoding::DELTA_BINARY_PACKED)
        // Unique per row: a dictionary would only be abandoned half-way.
        .set_column_dictionary_enabled(request_id, false)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_owned(),
            SCHEMA_VERSION.to_string(),
        )]))
        .build()
}

/// The partition directory (relative) of the hour holding `time_us`.
pub fn partition(time_us: i64) -> PathBuf {
    let hour_start = time_us.div_euclid(HOUR_US) * (HOUR_US / 1_000_000);
    let time = chrono::DateTime::from_timestamp(hour_start, 0).unwrap_or_default();
    PathBuf::from(time.format("date=%Y-%m-%d/hour=%H").to_string())
}

/// Rows gathered into one batch at a time while a file is written: the
/// sorted events are never all copied at once.
const GATHER_ROWS: usize = 64 * 1024;

/// The event times of a batch of the audit schema.
fn times(batch: &RecordBatch) -> &[i64] {
    batch
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
}

/// How many of the time-sorted `items` lie in the hour of the first.
fn hour_run<T>(items: &[T], time: impl Fn(&T) -> i64) -> usize {
    let Some(first) = items.first() else {
        return 0;
    };
    let hour = time(first).div_euclid(HOUR_US);
    items.partition_point(|item| time(item).div_euclid(HOUR_US) == hour)
}

/// Writes the events of `batches` as Parquet files named `<name>.parquet`,
/// one per hour partition under `root`, each sorted by time. Returns the
/// files written.
pub fn write(root: &Path, name: &str, batches: &[RecordBatch]) -> Result<Vec<PathBuf>, StoreError> {
    let mut files = FileSet::new(root, name);
    let appended = files.append(batches);
    match appended {
        Ok(()) => files.finish(),
        Err(e) => {
            files.abandon();
            Err(e)
        }
    }
}

/// Where [`FileSet::append`] takes sorted rows from.
enum Sources<'a> {
    /// All batches in one, and where each batch's rows start in it.
    Concatenated(RecordBatch, Vec<usize>),
    /// The batches as they are (too many rows to copy at once).
    Separate(Vec<&'a RecordBatch>),
}

/// The Parquet files of one segment while they are written, one per hour
/// partition, each under its temporary name until [`FileSet::finish`].
///
/// Every [`FileSet::append`] sorts its events by time and ends a row group:
/// the store appends as events arrive, so a segment's events need not all
/// be held in memory until the roll. Each row group is sorted (the Parquet
/// metadata says so per row group); a file is sorted as a whole when it was
/// written in one append (recovery).
pub struct FileSet {
    root: PathBuf,
    name: String,
    /// By hour (µs since the epoch / one hour), oldest first.
    open: Vec<(i64, PartFile)>,
}

impl FileSet {
    /// No file yet; they are created as events of their hour arrive.
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            root: root.to_owned(),
            name: name.to_owned(),
            open: Vec::new(),
        }
    }

    /// Appends the events of `batches`, sorted by time (ties in arrival
    /// order), to the files of their hours, as one row group per file. On an
    /// error the set is unusable: [`FileSet::abandon`] it.
    pub fn append(&mut self, batches: &[RecordBatch]) -> Result<(), StoreError> {
        let all_times = || batches.iter().flat_map(|batch| times(batch).iter());
        if all_times().is_sorted() {
            // In order already (events that arrived in time order): no copy.
            for batch in batches {
                let times = times(batch);
                let mut start = 0;
                while let Some(&first) = times.get(start) {
                    let len = hour_run(&times[start..], |&time| time);
                    self.write(first, &batch.slice(start, len))?;
                    start += len;
                }
            }
        } else {
            // (time, batch, row) of every event, in time order.
            let mut order: Vec<(i64, usize, usize)> =
                Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
            for (b, batch) in batches.iter().enumerate() {
                order.extend(
                    times(batch)
                        .iter()
                        .enumerate()
                        .map(|(row, &time)| (time, b, row)),
                );
            }
            order.sort_unstable();
            // Taking rows from one batch is far cheaper than interleaving
            // them from several, so a row group's batches are concatenated
            // first (noting where each batch's rows start in it); a whole
            // segment (recovery) is not copied at once.
            let sources = if order.len() <= GATHER_ROWS {
                let all = concat_batches(&schema::schema(), batches)
                    .map_err(StoreError::arrow("sorting", &self.root))?;
                let first_rows: Vec<usize> = batches
                    .iter()
                    .scan(0, |rows, batch| {
                        let first = *rows;
                        *rows += batch.num_rows();
                        Some(first)
                    })
                    .collect();
                Sources::Concatenated(all, first_rows)
            } else {
                Sources::Separate(batches.iter().collect())
            };
            let mut rest = &order[..];
            while let Some(&(first, ..)) = rest.first() {
                let (events, next) = rest.split_at(hour_run(rest, |&(time, ..)| time));
                for chunk in events.chunks(GATHER_ROWS) {
                    let batch = match &sources {
                        Sources::Concatenated(all, first_rows) => {
                            let rows = chunk.iter().map(|&(_, b, r)| (first_rows[b] + r) as u32);
                            take_record_batch(all, &UInt32Array::from_iter_values(rows))
                        }
                        Sources::Separate(batches) => {
                            let rows: Vec<(usize, usize)> =
                                chunk.iter().map(|&(_, b, r)| (b, r)).collect();
                            interleave_record_batch(batches, &rows)
                        }
                    }
                    .map_err(StoreError::arrow("sorting", &self.root))?;
                    self.write(first, &batch)?;
                }
                rest = next;
            }
        }
        // End the row group of every file.
        for (_, file) in &mut self.open {
            file.writer
                .flush()
                .map_err(StoreError::parquet(&file.tmp))?;
        }
        Ok(())
    }

    /// Writes `batch`, whose events are all of the hour of `time_us`, to
    /// that hour's file.
    fn write(&mut self, time_us: i64, batch: &RecordBatch) -> Result<(), StoreError> {
        let file = self.file(time_us.div_euclid(HOUR_US), time_us)?;
        file.writer
            .write(batch)
            .map_err(StoreError::parquet(&file.tmp))
    }

    /// The file of `hour` (holding `time_us`), created if needed.
    fn file(&mut self, hour: i64, time_us: i64) -> Result<&mut PartFile, StoreError> {
        let at = match self.open.binary_search_by_key(&hour, |(h, _)| *h) {
            Ok(at) => at,
            Err(at) => {
                let path = self
                    .root
                    .join(partition(time_us))
                    .join(format!("{}.{EXTENSION}", self.name));
                self.open.insert(at, (hour, PartFile::create(path)?));
                at
            }
        };
        Ok(&mut self.open[at].1)
    }

    /// Closes, fsyncs and renames every file into place. Returns them. On
    /// an error the files not yet in place are removed; writing the same
    /// events again under the same name replaces those that are.
    pub fn finish(self) -> Result<Vec<PathBuf>, StoreError> {
        let mut written = Vec::new();
        let mut open = self.open.into_iter();
        for (_, file) in open.by_ref() {
            match file.finish() {
                Ok(path) => written.push(path),
                Err(e) => {
                    open.for_each(|(_, file)| file.abandon());
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// Removes the temporary files.
    pub fn abandon(self) {
        self.open.into_iter().for_each(|(_, file)| file.abandon());
    }
}

/// One file being written under its temporary name.
struct PartFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
}

impl PartFile {
    fn create(path: PathBuf) -> Result<Self, StoreError> {
        let dir = path.parent().expect("files live in partitions");
        create_dirs(dir)?;
        let file_name = path.file_name().expect("named").to_string_lossy();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        // Identities and addresses: not for every local user to read.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(StoreError::io("creating", &tmp))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema::schema(),
            Some(writer_properties()),
        );
        match writer {
            Ok(writer) => Ok(Self { path, tmp, writer }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(StoreError::parquet(&tmp)(e))
            }
        }
    }

    fn finish(self) -> Result<PathBuf, StoreError> {
        let Self { path, tmp, writer } = self;
        let result = (|| {
            let file = writer
                .into_inner()
                .map_err(StoreError::parquet(&tmp))?
                .into_inner()
                .map_err(|e| StoreError::Io {
                    action: "writing",
                    path: tmp.clone(),
                    source: e.into_error(),
                })?;
            file.sync_all().map_err(StoreError::io("syncing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(StoreError::io("renaming into place", &path))?;
            fsync_dir(path.parent().expect("files live in partitions"))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Creates `dir` and any missing parents, making each new entry durable.
fn create_dirs(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => crate::fsync_parent(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Io {
            action: "creating",
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// The hour partition directories under `root`, oldest first.
pub fn partitions(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for date in sorted_entries(root, "date=") {
        out.extend(sorted_entries(&date, "hour="));
    }
    out
}

/// Every finished file under `root`, oldest partition first.
pub fn list(root: &Path) -> Vec<PathBuf> {
    partitions(root)
        .iter()
        .flat_map(|dir| sorted_entries(dir, ""))
        .filter(|p| is_finished(p))
        .collect()
}

/// A finished file: `*.parquet`, not a hidden temporary.
fn is_finished(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
        && !path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

fn sorted_entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries
}

/// Removes temporary files a crash left half-written. Returns how many.
pub fn remove_temporaries(root: &Path) -> usize {
    partitions(root)
        .iter()
        .flat_map(|dir| sorted_entries(dir, "."))
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// How long and how much the files are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Partitions whose hour ended more than this many days ago go.
    pub max_age_days: Option<u32>,
    /// Oldest partitions go until the files fit (the newest is kept).
    pub max_bytes: Option<u64>,
}

/// Applies `retention` to the partitions under `root` at `now_us`. Returns
/// the partitions removed, oldest first.
pub fn apply_retention(root: &Path, retention: Retention, now_us: i64) -> Vec<PathBuf> {
    let mut partitions: Vec<(PathBuf, u64)> = partitions(root)
        .into_iter()
        .map(|dir| {
            let bytes = sorted_entries(&dir, "")
                .iter()
                .filter_map(|p| p.metadata().ok())
                .map(|m| m.len())
                .sum();
            (dir, bytes)
        })
        .collect();
    let mut removed = Vec::new();
    if let Some(days) = retention.max_age_days {
        let cutoff = partition(now_us - i64::from(days) * 24 * HOUR_US);
        let cutoff = root.join(cutoff);
        // Partition paths sort by time; everything before the cutoff hour's
        // own partition ended more than `days` ago.
        let old = partitions
            .iter()
            .take_while(|(dir, _)| *dir < cutoff)
            .count();
        removed.extend(partitions.drain(..old).map(|(dir, _)| dir));
    }
    if let Some(cap) = retention.max_bytes {
        let mut total: u64 = partitions.iter().map(|(_, b)| b).sum();
        let mut over = 0;
        while total > cap && over + 1 < partitions.len() {
            total -= partitions[over].1;
            over += 1;
        }
        removed.extend(partitions.drain(..over).map(|(dir, _)| dir));
    }
    removed.retain(|dir| match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            if let Some(date) = dir.parent() {
                // Gone with its last hour; fails harmlessly while others
                // remain.
                let _ = std::fs::remove_dir(date);
            }
            true
        }
        Err(e) => {
            warn!(partition = %dir.display(), error = %e, "old audit partition not removed");
            false
        }
    });
    removed
}

#[cfg(test)]
mod tests {
    use parquet::{
        arrow::arrow_reader::ParquetRecordBatchReaderBuilder, file::reader::FileReader,
        file::serialized_reader::SerializedFileReader,
    };

    use std::fs::File;

    use super::*;
    use crate::{event::Event, schema::EventBatchBuilder};

    /// 2026-11-23T07:59:59Z in microseconds.
    const T: i64 = 1_795_420_799_000_000;

    fn batch(times: &[i64]) -> RecordBatch {
        let mut builder = EventBatchBuilder::new("h", times.len());
        for &time_us in times {
            builder.push(&Event {
                time_us,
                reason: "policy".into(),
                request_id: Some(format!("r{time_us}")),
                ..Event::default()
            });
        }
        builder.finish()
    }

    fn times_in(path: &Path) -> Vec<i64> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        reader
            .flat_map(|b| {
                b.unwrap()
                    .column(0)
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn partitions_are_utc_hours() {
        assert_eq!(partition(T), Path::new("date=2026-11-23/hour=07"));
        assert_eq!(
            partition(T + 1_000_000),
            Path::new("date=2026-11-23/hour=08")
        );
        assert_eq!(partition(0), Path::new("date=1970-01-01/hour=00"));
        assert_eq!(partition(-1), Path::new("date=1969-12-31/hour=23"));
    }

    #[test]
    fn more_events_than_one_gather_are_sorted_with_their_rows_intact() {
        // Two overlapping runs, together more than [`GATHER_ROWS`]: the
        // rows are interleaved from the batches instead of concatenated.
        let half = GATHER_ROWS as i64 / 2 + 1000;
        let batches = [
            batch(&(0..half).rev().map(|i| T + 2 * i).collect::<Vec<_>>()),
            batch(&(0..half).map(|i| T + 2 * i + 1).collect::<Vec<_>>()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), "h-1", &batches).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut expected = T;
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch
                .column_by_name("request_id")
                .unwrap()
                .as_string::<i32>();
            for (row, &time) in times(&batch).iter().enumerate() {
                assert_eq!(time, expected);
                assert_eq!(ids.value(row), format!("r{time}"));
                expected += 1;
            }
        }
        assert_eq!(expected, T + 2 * half);
    }

    #[test]
    fn events_are_split_by_hour_and_sorted_in_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let batches = [
            batch(&[T, T + 2_000_000, T - 5]),
            batch(&[T + 1_000_000, T - 7]),
        ];
        let files = write(dir.path(), "h-1", &batches).unwrap();
        assert_eq!(
            files,
            [
                dir.path().join("date=2026-11-23/hour=07/h-1.parquet"),
                dir.path().join("date=2026-11-23/hour=08/h-1.parquet"),
            ]
        );
        assert_eq!(times_in(&files[0]), [T - 7, T - 5, T]);
        assert_eq!(times_in(&files[1]), [T + 1_000_000, T + 2_000_000]);
        assert_eq!(list(dir.path()), files);

        // Written again (recovery), the same names are replaced, not doubled.
        assert_eq!(write(dir.path(), "h-1", &batches).unwrap(), files);
        assert_eq!(list(dir.path()), files);

        // Batches already in order (as the store makes them) are split at
        // the hour without being gathered.
        let sorted = [
            batch(&[T - 7, T - 5]),
            batch(&[T, T + 1_000_000]),
            batch(&[T + 2_000_000]),
        ];
        assert_eq!(write(dir.path(), "h-2", &sorted).unwrap().len(), 2);
        let hour = |h: &str| {
            dir.path()
                .join(format!("date=2026-11-23/hour={h}/h-2.parquet"))
        };
        assert_eq!(times_in(&hour("07")), [T - 7, T - 5, T]);
        assert_eq!(times_in(&hour("08")), [T + 1_000_000, T + 2_000_000]);
        let groups = SerializedFileReader::new(File::open(hour("07")).unwrap()).unwrap();
        assert_eq!(
            groups.metadata().num_row_groups(),
            1,
            "one row group per append"
        );

        let meta = SerializedFileReader::new(File::open(&files[0]).unwrap()).unwrap();
        let meta = meta.metadata();
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|kv| kv.key == SCHEMA_VERSION_KEY));
        let column = meta.row_group(0).column(0);
        assert_eq!(
            column.compression(),
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
        );
        let column = |name: &str| {
            let at = schema::COLUMN_NAMES.iter().position(|c| *c == name);
            meta.row_group(0).column(at.unwrap())
        };
        let statistics = |name: &str| column(name).statistics().is_some();
        for name in [TIME_COLUMN, "host", "layer", "status", "bytes"] {
            assert!(statistics(name), "{name} has statistics");
        }
        for name in ["request_id", "email", "client_ip", "path", "reason"] {
            assert!(!statistics(name), "{name} has no statistics");
        }
        for name in SCATTERED_NUMBERS.into_iter().chain(TEXT_STATISTICS) {
            assert!(schema::COLUMN_NAMES.contains(&name), "{name} is a column");
        }
        let latency = column("latency_us");
        assert!(latency.dictionary_page_offset().is_none());
        assert!(
            latency
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED)
        );
        assert!(column("app").dictionary_page_offset().is_some());
    }

    #[test]
    fn temporaries_are_removed_and_retention_goes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let hour = HOUR_US;
        for h in 0..5 {
            write(dir.path(), &format!("h-{h}"), &[batch(&[T + h * hour])]).unwrap();
        }
        let tmp = dir.path().join("date=2026-11-23/hour=09/.h-9.parquet.tmp");
        std::fs::write(&tmp, b"half").unwrap();
        assert_eq!(remove_temporaries(dir.path()), 1);
        assert!(!tmp.exists());
        assert_eq!(list(dir.path()).len(), 5);

        // Age: at T + 1 day + 1.5 h, the partitions of 07:00 and 08:00 on
        // the first day ended more than a day ago.
        let removed = apply_retention(
            dir.path(),
            Retention {
                max_age_days: Some(1),
                max_bytes: None,
            },
            T + 24 * hour + hour + hour / 2,
        );
        assert_eq!(
            removed,
            [
                dir.path().join("date=2026-11-23/hour=07"),
                dir.path().join("date=2026-11-23/hour=08")
            ]
        );
        // Size: a cap of one byte keeps only the newest partition.
        let removed = apply_retention(
            dir.path(),
            Retention {
                max_age_days: None,
                max_bytes: Some(1),
            },
            T,
        );
        assert_eq!(removed.len(), 2);
        assert_eq!(
            list(dir.path()),
            [dir.path().join("date=2026-11-23/hour=11/h-4.parquet")]
        );
    }
}
