//! The audit store: events go into a write-ahead segment, and a segment
//! rolls into Parquet files when it is big, old, or its hour is over.
//!
//! ```text
//! push: build ──► batch ──flush──► segment (.wal/*.arrows)   sync = fsync: durable
//!                             └──► hidden .tmp Parquet files, a row group per 64k events
//!                                  (or fewer, once events stop coming), sorted by time
//!                                                    ──roll──► renamed into date=/hour=/*.parquet,
//!                                                              then the segment goes
//! ```
//!
//! A batch holds events in arrival order, as columns from the moment each
//! is pushed: the writer encodes an event while it is still in the CPU's
//! caches and frees it right after. Requests finish out of the order they
//! started in (an event's time is its request's start), so a busy writer's
//! batches overlap in time; each row group is sorted once, as it goes to
//! Parquet, in one gather of its columns. Batches that arrived in order
//! (XDP records, a quiet origin) go to Parquet as they are.
//!
//! The segment is the record; the files being written are a copy kept so
//! the store never holds a whole segment in memory. If writing them fails,
//! or a crash leaves them half-written, they are written again from the
//! segment.
//!
//! All calls are synchronous and do their own I/O; [`crate::writer`] decides
//! when to call them and retries after errors. Every step can be repeated
//! after a failure without losing or doubling an event: a failed append is
//! retried byte for byte, a failed roll writes the same file names again.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arrow::{array::RecordBatch, compute::concat_batches};
use tracing::{info, warn};

use crate::{
    ErrorSlot,
    error::StoreError,
    event::Event,
    files::{self, FileSet, Retention},
    schema::{self, EventBatchBuilder},
    wal::{self, Segment},
};

/// Where the gateway keeps its audit log unless configured otherwise, and
/// where the `analytics` command looks by default.
pub const DEFAULT_DIR: &str = "/var/lib/gateway/audit";

/// Rows appended to the Parquet files at once, as one row group: what the
/// store holds in memory as batches (about 16 MiB).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// How often retention is applied besides at each roll: a host whose
/// segment never rolls (no events) still lets old partitions go.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Fewest events [`AuditStore::end_row_group`] makes a row group of (about
/// 200 KiB of columns); fewer wait for the next one, or for the roll.
pub const SMALLEST_QUIET_ROW_GROUP: usize = 1024;

/// Most events per record batch, the unit of a segment append. Syncs
/// append what is pushed sooner, so this sets the size of appends, not
/// durability.
pub const BATCH_ROWS: usize = 8192;

/// Where and how the store keeps events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Root of the partitions (and of the `.wal` directory).
    pub dir: PathBuf,
    /// The machine's name, in the `host` column and every file name.
    pub host: String,
    /// A segment older than this rolls into Parquet.
    pub roll_interval: Duration,
    /// A segment with this many events rolls into Parquet.
    pub roll_events: usize,
    /// What old files are removed.
    pub retention: Retention,
}

/// Name of the directory of write-ahead segments under the store's root;
/// hidden, so query tools listing `*.parquet` never look inside.
pub const WAL_DIR: &str = ".wal";

/// What [`AuditStore::open`] found and recovered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments left by an earlier run and turned into Parquet.
    pub segments: usize,
    /// Events recovered from them.
    pub events: usize,
    /// Segments that ended in a torn append (a crash while writing).
    pub torn: usize,
    /// Segments that could not be read at all, set aside as `*.damaged`.
    pub damaged: Vec<PathBuf>,
    /// Segments left in place because their files could not be written (a
    /// full or failing disk), with why. The store's first roll tries them
    /// again, and the writer takes no events until that succeeds: the
    /// gateway starts, and its overflow policy applies as for any failure
    /// of the disk.
    pub unrecovered: Vec<(PathBuf, String)>,
    /// Half-written Parquet files removed.
    pub temporaries: usize,
}

/// What the store has done, shared with status reporting.
#[derive(Debug, Default)]
pub struct StoreStatus {
    durable_events: AtomicU64,
    files_written: AtomicU64,
    last_sync_us: AtomicI64,
    last_file_us: AtomicI64,
    error: ErrorSlot,
}

impl StoreStatus {
    /// Events fsynced to a segment since the store was opened.
    pub fn durable_events(&self) -> u64 {
        self.durable_events.load(Ordering::Acquire)
    }

    /// Parquet files written since the store was opened.
    pub fn files_written(&self) -> u64 {
        self.files_written.load(Ordering::Relaxed)
    }

    /// When the last sync succeeded (µs since the epoch; 0: never).
    pub fn last_sync_us(&self) -> i64 {
        self.last_sync_us.load(Ordering::Relaxed)
    }

    /// When the last Parquet file was written (µs since the epoch; 0: never).
    pub fn last_file_us(&self) -> i64 {
        self.last_file_us.load(Ordering::Relaxed)
    }

    /// The error the writer is stuck on, if it is.
    pub fn error(&self) -> Option<String> {
        self.error.get()
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        self.error.set(error);
    }
}

/// The segment being filled, and its Parquet files being written.
struct OpenSegment {
    segment: Segment,
    /// `<host>-<start>-<random>`: the stem of the segment and its files.
    name: String,
    /// Batches appended to the segment, not yet to the files.
    pending: Vec<RecordBatch>,
    /// The files, a row group at a time; `None` once writing them failed:
    /// the roll then writes them from the segment on disk.
    files: Option<FileSet>,
    rows: usize,
    opened: Instant,
    hour: i64,
}

impl OpenSegment {
    /// Appends the pending batches to the files as one row group. A
    /// failure is not the caller's: the events are in the segment, and the
    /// roll writes the files from it instead.
    fn write_pending(&mut self) {
        if let Some(files) = &mut self.files
            && let Err(e) = files.append(&self.pending)
        {
            warn!(
                error = %crate::error_chain(&e),
                "audit file not written as events arrive; the roll writes it from the segment"
            );
            if let Some(files) = self.files.take() {
                files.abandon();
            }
        }
        self.pending.clear();
    }

    /// Rows appended to the segment, not yet to the files.
    fn pending_rows(&self) -> usize {
        self.pending.iter().map(RecordBatch::num_rows).sum()
    }

    /// The files, complete: from the row groups written so far, or, after
    /// a failure, from the segment on disk.
    fn finish_files(&mut self, root: &Path) -> Result<Vec<PathBuf>, StoreError> {
        self.write_pending();
        match self.files.take() {
            Some(files) => files.finish(),
            None => {
                let read = wal::read(self.segment.path())?;
                files::write(root, &self.name, &read.batches)
            }
        }
    }
}

/// The store. See the module documentation.
pub struct AuditStore {
    config: StoreConfig,
    wal_dir: PathBuf,
    /// `config.host` made safe for file names.
    file_host: String,
    /// Events pushed, not yet appended to the segment, in arrival order:
    /// already columns, so an event is read once, while it is still in the
    /// CPU's caches, and freed right after.
    batch: EventBatchBuilder,
    open: Option<OpenSegment>,
    /// Segments an earlier run left that [`AuditStore::open`] could not
    /// turn into Parquet; the next roll does, first.
    unrecovered: Vec<PathBuf>,
    /// Rows appended to the segment but not yet fsynced.
    unsynced: u64,
    /// When retention was last applied.
    retained: Instant,
    status: Arc<StoreStatus>,
}

impl AuditStore {
    /// Opens the store under `config.dir`, creating it, and first turns
    /// whatever an earlier run left in the write-ahead directory into
    /// Parquet files.
    pub fn open(config: StoreConfig) -> Result<(Self, Recovery), StoreError> {
        let wal_dir = config.dir.join(WAL_DIR);
        std::fs::create_dir_all(&wal_dir).map_err(StoreError::io("creating", &wal_dir))?;
        let mut recovery = Recovery {
            temporaries: files::remove_temporaries(&config.dir),
            ..Recovery::default()
        };
        for path in leftover_segments(&wal_dir)? {
            match recover(&config.dir, &path) {
                Ok(Leftover::Recovered { events, torn, .. }) => {
                    recovery.segments += 1;
                    recovery.events += events;
                    recovery.torn += usize::from(torn);
                }
                Ok(Leftover::Damaged(aside)) => recovery.damaged.push(aside),
                Err(e) => recovery.unrecovered.push((path, crate::error_chain(&e))),
            }
        }
        crate::fsync_dir(&wal_dir)?;
        files::apply_retention(&config.dir, config.retention, Event::now_us());
        let store = Self {
            file_host: file_name_safe(&config.host),
            batch: EventBatchBuilder::new(&config.host, 0),
            wal_dir,
            config,
            unrecovered: recovery
                .unrecovered
                .iter()
                .map(|(p, _)| p.clone())
                .collect(),
            open: None,
            unsynced: 0,
            retained: Instant::now(),
            status: Arc::default(),
        };
        Ok((store, recovery))
    }

    /// The store's root directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The shared status.
    pub fn status(&self) -> Arc<StoreStatus> {
        Arc::clone(&self.status)
    }

    /// Adds an event to the next batch (memory only).
    pub fn push(&mut self, event: &Event) {
        self.batch.push(event);
    }

    /// Events pushed but not yet appended to the segment.
    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    /// Appends the pushed events to the segment as one batch, in arrival
    /// order (opening a segment if needed). Written, not yet durable.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.open.is_none() {
            if self.batch.is_empty() {
                return Ok(());
            }
            self.open = Some(self.new_segment()?);
        }
        let open = self.open.as_mut().expect("opened above");
        if self.batch.is_empty() {
            return open.segment.retry();
        }
        // The next batch is likely the size of this one: an idle gateway's
        // builder stays small, a busy one's grows once.
        let next = EventBatchBuilder::new(&self.config.host, self.batch.len());
        let batch = std::mem::replace(&mut self.batch, next).finish();
        open.rows += batch.num_rows();
        self.unsynced += batch.num_rows() as u64;
        // On failure the batch stays pending in the segment, which writes
        // it first on the next call.
        let appended = open.segment.append(&batch);
        open.pending.push(batch);
        if open.pending_rows() >= ROW_GROUP_ROWS {
            open.write_pending();
        }
        appended
    }

    /// Ends the row group being gathered: the events appended to the
    /// segment go to the files now, and the builder and the segment's
    /// encoder give back their room. The writer calls it once events stop
    /// coming, so a gateway that has gone quiet after a burst holds none of
    /// it in memory (the price is a smaller row group). Fewer events than
    /// [`SMALLEST_QUIET_ROW_GROUP`] stay for the next row group, put
    /// together in one batch: they take little room, and a quiet origin's
    /// trickle would otherwise make row groups of a few rows each, which
    /// every scan of the file pays for. Events pushed and not yet flushed
    /// stay pushed.
    pub fn end_row_group(&mut self) {
        if let Some(open) = &mut self.open {
            if open.pending_rows() >= SMALLEST_QUIET_ROW_GROUP {
                open.write_pending();
            } else if open.pending.len() > 1 {
                match concat_batches(&schema::schema(), &open.pending) {
                    Ok(all) => open.pending = vec![all],
                    Err(_) => open.write_pending(),
                }
            }
            open.segment.release_buffers();
        }
        if self.batch.is_empty() {
            self.batch = EventBatchBuilder::new(&self.config.host, 0);
        }
    }

    /// Flushes and fsyncs: everything pushed so far is durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        if let Some(open) = &mut self.open {
            open.segment.sync()?;
        }
        self.status
            .durable_events
            .fetch_add(std::mem::take(&mut self.unsynced), Ordering::Release);
        self.status
            .last_sync_us
            .store(Event::now_us(), Ordering::Relaxed);
        Ok(())
    }

    /// Whether the segment is due to become Parquet: big enough, old
    /// enough, or its hour is over; or segments an earlier run left still
    /// are to be.
    pub fn roll_due(&self) -> bool {
        !self.unrecovered.is_empty()
            || self.open.as_ref().is_some_and(|open| {
                open.rows >= self.config.roll_events
                    || open.opened.elapsed() >= self.config.roll_interval
                    || hour_of(Event::now_us()) != open.hour
            })
    }

    /// Turns the segment into Parquet files and removes it, then applies
    /// retention; first does the same for segments an earlier run left that
    /// could not be recovered at [`AuditStore::open`]. Returns the files
    /// written.
    pub fn roll(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut written = self.recover_leftovers()?;
        self.sync()?;
        let Some(open) = &mut self.open else {
            return Ok(written);
        };
        let files = open.finish_files(&self.config.dir)?;
        let path = open.segment.path().to_owned();
        std::fs::remove_file(&path).map_err(StoreError::io("removing", &path))?;
        self.open = None;
        crate::fsync_dir(&self.wal_dir)?;
        self.count_files_written(files.len());
        self.apply_retention();
        written.extend(files);
        Ok(written)
    }

    /// Applies retention if it has not been for [`RETENTION_INTERVAL`]
    /// at `now`; the writer calls it on every tick.
    pub fn apply_retention_if_due(&mut self, now: Instant) {
        if now.saturating_duration_since(self.retained) >= RETENTION_INTERVAL {
            self.apply_retention();
        }
    }

    fn apply_retention(&mut self) {
        files::apply_retention(&self.config.dir, self.config.retention, Event::now_us());
        self.retained = Instant::now();
    }

    /// Counts `files` more written, now, in the status.
    fn count_files_written(&self, files: usize) {
        self.status
            .files_written
            .fetch_add(files as u64, Ordering::Relaxed);
        self.status
            .last_file_us
            .store(Event::now_us(), Ordering::Relaxed);
    }

    /// Recovers the segments [`AuditStore::open`] could not, oldest first.
    fn recover_leftovers(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut written = Vec::new();
        while let Some(path) = self.unrecovered.first() {
            match recover(&self.config.dir, path)? {
                Leftover::Recovered { files, events, .. } => {
                    info!(segment = %path.display(), events, "audit segment left by an earlier run recovered");
                    self.count_files_written(files.len());
                    written.extend(files);
                }
                Leftover::Damaged(aside) => {
                    warn!(path = %aside.display(), "unreadable audit segment set aside");
                }
            }
            self.unrecovered.remove(0);
            crate::fsync_dir(&self.wal_dir)?;
        }
        Ok(written)
    }

    fn new_segment(&self) -> Result<OpenSegment, StoreError> {
        let now = Event::now_us();
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|e| StoreError::Io {
            action: "naming a segment in",
            path: self.wal_dir.clone(),
            source: e.into(),
        })?;
        let name = format!(
            "{}-{now:016}-{:08x}",
            self.file_host,
            u32::from_be_bytes(random)
        );
        let path = self.wal_dir.join(format!("{name}.{}", wal::EXTENSION));
        Ok(OpenSegment {
            segment: Segment::create(path)?,
            files: Some(FileSet::new(&self.config.dir, &name)),
            name,
            pending: Vec::new(),
            rows: 0,
            opened: Instant::now(),
            hour: hour_of(now),
        })
    }
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore")
            .field("dir", &self.config.dir)
            .field("pending", &self.batch.len())
            .field("segment_rows", &self.open.as_ref().map(|o| o.rows))
            .finish_non_exhaustive()
    }
}

fn hour_of(time_us: i64) -> i64 {
    time_us.div_euclid(3_600_000_000)
}

/// The write-ahead segments under the store root `root`, oldest first:
/// events not yet in Parquet (what `analytics tail` reads besides the
/// files).
pub fn segments(root: &Path) -> Vec<PathBuf> {
    leftover_segments(&root.join(WAL_DIR)).unwrap_or_default()
}

/// What became of a segment an earlier run left.
enum Leftover {
    /// Its events are in Parquet files now, and it is gone.
    Recovered {
        files: Vec<PathBuf>,
        events: usize,
        /// It ended in a torn append.
        torn: bool,
    },
    /// It could not be read, and is set aside under this name.
    Damaged(PathBuf),
}

/// Turns the segment `path` an earlier run left into Parquet files under
/// `root` and removes it, or sets it aside if it cannot be read. After an
/// error it is still there, and trying again writes the same file names.
fn recover(root: &Path, path: &Path) -> Result<Leftover, StoreError> {
    let Ok(read) = wal::read(path) else {
        let aside = path.with_extension("damaged");
        std::fs::rename(path, &aside).map_err(StoreError::io("setting aside", path))?;
        return Ok(Leftover::Damaged(aside));
    };
    let name = path.file_stem().unwrap_or_default().to_string_lossy();
    let files = files::write(root, &name, &read.batches)?;
    std::fs::remove_file(path).map_err(StoreError::io("removing", path))?;
    Ok(Leftover::Recovered {
        files,
        events: read.batches.iter().map(RecordBatch::num_rows).sum(),
        torn: read.torn,
    })
}

/// Segments in `wal_dir`, oldest first (names start with the host and the
/// creation time).
fn leftover_segments(wal_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .map_err(StoreError::io("listing", wal_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == wal::EXTENSION))
        .collect();
    out.sort();
    Ok(out)
}

/// `host` with everything but letters, digits, `.`, `_` and `-` replaced,
/// so it can be part of a file name (and an object-store key).
pub(crate) fn file_name_safe(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("host{safe}")
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> StoreConfig {
        StoreConfig {
            dir: dir.to_owned(),
            host: "origin/1".into(),
            roll_interval: Duration::from_secs(3600),
            roll_events: 1_000_000,
            retention: Retention::default(),
        }
    }

    fn event(n: i64) -> Event {
        Event {
            time_us: Event::now_us() + n,
            reason: "policy".into(),
            request_id: Some(n.to_string()),
            ..Event::default()
        }
    }

    fn rows_in_files(dir: &Path) -> usize {
        files::list(dir)
            .iter()
            .map(|p| {
                let file = std::fs::File::open(p).unwrap();
                let reader =
                    parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
                parquet::file::reader::FileReader::metadata(&reader)
                    .file_metadata()
                    .num_rows() as usize
            })
            .sum()
    }

    /// The times of each row group of each file under `dir`.
    fn row_group_times(dir: &Path) -> Vec<Vec<i64>> {
        use arrow::{array::AsArray as _, datatypes::TimestampMicrosecondType};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let mut groups = Vec::new();
        for path in files::list(dir) {
            let file = std::fs::File::open(&path).unwrap();
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file.try_clone().unwrap()).unwrap();
            for group in 0..builder.metadata().num_row_groups() {
                let reader = ParquetRecordBatchReaderBuilder::try_new(file.try_clone().unwrap())
                    .unwrap()
                    .with_row_groups(vec![group])
                    .build()
                    .unwrap();
                let mut times = Vec::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column = batch.column(0).as_primitive::<TimestampMicrosecondType>();
                    times.extend(column.values().iter().copied());
                }
                groups.push(times);
            }
        }
        groups
    }

    #[test]
    fn files_are_written_a_sorted_row_group_at_a_time_and_from_the_segment_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = AuditStore::open(config(dir.path())).unwrap();
        let n = ROW_GROUP_ROWS as i64 * 2 + 100;
        // Newest first: every row group must come out sorted.
        for i in (0..n).rev() {
            store.push(&event(i));
            if store.pending() == BATCH_ROWS {
                store.flush().unwrap();
            }
        }
        // Two row groups are already in the temporary files: memory holds
        // no more than the rows since.
        let open = store.open.as_ref().unwrap();
        assert!(
            open.pending_rows() < ROW_GROUP_ROWS,
            "{}",
            open.pending_rows()
        );
        store.roll().unwrap();
        let groups = row_group_times(dir.path());
        assert!(groups.len() >= 3, "{} row groups", groups.len());
        assert!(groups.iter().all(|g| g.is_sorted()));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), n as usize);

        // The temporary files vanish under the writer: the roll fails, and
        // the retry writes the files from the segment.
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = AuditStore::open(config(dir.path())).unwrap();
        for i in 0..n {
            store.push(&event(i));
            if store.pending() == BATCH_ROWS {
                store.flush().unwrap();
            }
        }
        for partition in files::partitions(dir.path()) {
            for entry in std::fs::read_dir(partition).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
        assert!(store.roll().is_err());
        store.roll().unwrap();
        assert_eq!(rows_in_files(dir.path()), n as usize);
        assert!(row_group_times(dir.path()).iter().all(|g| g.is_sorted()));
    }

    #[test]
    fn a_row_group_ends_early_when_asked_and_no_event_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = AuditStore::open(config(dir.path())).unwrap();
        // One time for all, so all fall in one hour's file.
        let start = Event::now_us();
        let event = |i| Event {
            time_us: start + i,
            ..event(i)
        };
        let mut next = 0;
        let mut push = |store: &mut AuditStore, n| {
            for _ in 0..n {
                store.push(&event(next));
                next += 1;
            }
        };
        // A trickle: too few for a row group of their own; they wait, in
        // one batch.
        for _ in 0..3 {
            push(&mut store, 10);
            store.flush().unwrap();
        }
        store.end_row_group();
        let open = store.open.as_ref().unwrap();
        assert_eq!((open.pending.len(), open.pending_rows()), (1, 30));
        // Enough: what was appended is in the files; what was only pushed
        // is not lost, and goes with the next row group.
        push(&mut store, SMALLEST_QUIET_ROW_GROUP);
        store.flush().unwrap();
        push(&mut store, 1);
        store.end_row_group();
        assert_eq!(store.open.as_ref().unwrap().pending_rows(), 0);
        assert_eq!(store.pending(), 1);
        push(&mut store, 1);
        // Nothing appended: nothing to write, no empty row group.
        store.end_row_group();
        store.roll().unwrap();
        let groups = row_group_times(dir.path());
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [30 + SMALLEST_QUIET_ROW_GROUP, 2],
            "{groups:?}"
        );
        assert!(groups.iter().all(|g| g.is_sorted()));
    }

    #[test]
    fn retention_is_applied_every_interval_without_a_roll() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = AuditStore::open(StoreConfig {
            retention: Retention {
                max_age_days: Some(1),
                max_bytes: None,
            },
            ..config(dir.path())
        })
        .unwrap();
        // Three days old, and there after the store opened.
        let mut old = EventBatchBuilder::new("origin-1", 1);
        old.push(&Event {
            time_us: Event::now_us() - 3 * 24 * 3_600_000_000,
            ..event(0)
        });
        files::write(dir.path(), "old", &[old.finish()]).unwrap();
        store.apply_retention_if_due(Instant::now());
        assert_eq!(files::list(dir.path()).len(), 1, "not due yet");
        store.apply_retention_if_due(Instant::now() + RETENTION_INTERVAL);
        assert!(files::list(dir.path()).is_empty());
    }

    #[test]
    fn synced_events_survive_a_crash_and_are_recovered_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, recovery) = AuditStore::open(config(dir.path())).unwrap();
        assert_eq!(recovery, Recovery::default());
        for n in 0..10 {
            store.push(&event(n));
        }
        store.sync().unwrap();
        assert_eq!(store.status().durable_events(), 10);
        store.push(&event(10));
        // A crash: the store is gone without a roll.
        drop(store);

        let (mut store, recovery) = AuditStore::open(config(dir.path())).unwrap();
        assert_eq!((recovery.segments, recovery.events), (1, 10));
        assert_eq!(rows_in_files(dir.path()), 10);
        let names: Vec<String> = files::list(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names[0].starts_with("origin_1-"), "{names:?}");
        for n in 0..5 {
            store.push(&event(n));
        }
        let written = store.roll().unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(rows_in_files(dir.path()), 15);
        assert_eq!(
            leftover_segments(&dir.path().join(WAL_DIR)).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn a_roll_interrupted_after_the_rename_does_not_double_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = AuditStore::open(config(dir.path())).unwrap();
        for n in 0..7 {
            store.push(&event(n));
        }
        store.sync().unwrap();
        // The files are in place but the segment is still there, as after a
        // kill between the rename and the segment's removal.
        let open = store.open.as_mut().unwrap();
        open.finish_files(dir.path()).unwrap();
        drop(store);
        assert_eq!(rows_in_files(dir.path()), 7);
        let (_, recovery) = AuditStore::open(config(dir.path())).unwrap();
        assert_eq!(recovery.events, 7);
        assert_eq!(rows_in_files(dir.path()), 7);
    }

    #[test]
    fn a_damaged_segment_is_set_aside_and_does_not_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join(WAL_DIR);
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("x-1.arrows"), b"garbage").unwrap();
        let (_, recovery) = AuditStore::open(config(dir.path())).unwrap();
        assert_eq!(recovery.damaged, [wal.join("x-1.damaged")]);
    }

    #[test]
    fn a_segment_rolls_when_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.roll_events = 3;
        let (mut store, _) = AuditStore::open(config).unwrap();
        assert!(!store.roll_due());
        store.push(&event(0));
        store.push(&event(1));
        store.flush().unwrap();
        assert!(!store.roll_due());
        store.push(&event(2));
        store.flush().unwrap();
        assert!(store.roll_due());
        store.roll().unwrap();
        assert!(!store.roll_due());
        assert_eq!(store.status().files_written(), 1);
    }

    #[test]
    fn host_names_are_made_safe_for_files() {
        assert_eq!(file_name_safe("web-1.example.com"), "web-1.example.com");
        assert_eq!(file_name_safe("../x"), "host.._x");
        assert_eq!(file_name_safe(""), "host");
    }
}
