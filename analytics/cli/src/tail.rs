//! `analytics tail`: the latest decisions, and with `--follow` every new
//! one as soon as the gateway has made it durable (about once a second).
//!
//! Recent events are still in the write-ahead segments (`.wal/*.arrows`),
//! not yet in Parquet, so tail reads both. A segment only grows until it
//! rolls into Parquet files with the same name (its "stem"); those files
//! hold the same events re-sorted by time, plus any appended after the last
//! look. Tail keeps a fingerprint of every row it printed from a segment
//! and, once the segment is gone, prints only the rows of its files it has
//! not printed, so nothing is shown twice or skipped.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    io::Write,
    path::{Path, PathBuf},
};

use analytics::{files, schema, store, wal};
use datafusion::arrow::{
    array::{RecordBatch, UInt32Array},
    compute::{concat_batches, sort_to_indices, take_record_batch},
    json::LineDelimitedWriter,
    row::{RowConverter, SortField},
    util::display::{ArrayFormatter, FormatOptions},
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{
    output::{OutputError, TIME_FORMAT},
    query::QueryError,
};

/// The columns of the one-line text format.
const TEXT_COLUMNS: [&str; 12] = [
    "event_time",
    "layer",
    "decision",
    "reason",
    "app",
    "email",
    "token_name",
    "client_ip",
    "method",
    "hostname",
    "path",
    "status",
];

/// How `tail` prints events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// One line per event with the columns that tell what happened.
    #[default]
    Text,
    /// One JSON object per event, every column.
    Json,
}

/// A segment that has been printed from.
#[derive(Default)]
struct Live {
    /// Rows printed (a segment only grows, so these are its first rows).
    rows: usize,
    /// Its size when last read: unchanged means nothing new.
    len: u64,
    /// Fingerprints of the printed rows, with multiplicity.
    printed: HashMap<u64, u32>,
}

/// What has been printed so far.
pub struct Tail {
    dir: PathBuf,
    /// Stems whose Parquet files are accounted for.
    done: HashSet<String>,
    live: HashMap<String, Live>,
    converter: RowConverter,
}

impl Tail {
    /// Starts at the current state of `dir`; returns the `last` newest
    /// events, oldest first.
    pub fn start(dir: &Path, last: usize) -> Result<(Self, Option<RecordBatch>), OutputError> {
        if !dir.is_dir() {
            return Err(QueryError::NoDirectory(dir.to_owned()).into());
        }
        let fields = schema::schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let mut tail = Self {
            dir: dir.to_owned(),
            done: HashSet::new(),
            live: HashMap::new(),
            converter: RowConverter::new(fields)?,
        };
        let mut recent = Vec::new();
        for segment in store::segments(dir) {
            let len = file_len(&segment);
            let batches = read_segment(&segment);
            tail.printed(&stem(&segment), len, &batches)?;
            recent.extend(batches);
        }
        let parquet = files::list(dir);
        let mut rows: usize = recent.iter().map(RecordBatch::num_rows).sum();
        // Newest partitions first, until there are enough rows.
        for path in parquet.iter().rev() {
            if rows >= last {
                break;
            }
            let batches = read_parquet(path)?;
            rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            recent.extend(batches);
        }
        tail.done.extend(parquet.iter().map(|p| stem(p)));
        let newest = sorted(&recent)?.map(|all| {
            let skip = all.num_rows().saturating_sub(last);
            all.slice(skip, all.num_rows() - skip)
        });
        Ok((tail, newest))
    }

    /// The events made durable since the last call, oldest first.
    pub fn poll(&mut self) -> Result<Option<RecordBatch>, OutputError> {
        let mut new = Vec::new();
        let segments = store::segments(&self.dir);
        let live: HashSet<String> = segments.iter().map(|p| stem(p)).collect();
        for segment in &segments {
            let name = stem(segment);
            // Measured before reading: what is appended meanwhile makes the
            // next look read again.
            let len = file_len(segment);
            if self.live.get(&name).is_some_and(|l| l.len == len) {
                continue;
            }
            let batches = read_segment(segment);
            let skip = self.live.get(&name).map_or(0, |l| l.rows);
            let unseen = skip_rows(&batches, skip);
            self.printed(&name, len, &unseen)?;
            new.extend(unseen);
        }
        // Files whose segment is gone: every file of the stem is in place
        // (the segment is removed after the last one is renamed).
        let mut finished: HashMap<String, Vec<PathBuf>> = HashMap::new();
        for path in files::list(&self.dir) {
            let name = stem(&path);
            if !self.done.contains(&name) && !live.contains(&name) {
                finished.entry(name).or_default().push(path);
            }
        }
        for (name, paths) in finished {
            let mut printed = self.live.remove(&name).map(|l| l.printed);
            for path in paths {
                for batch in read_parquet(&path)? {
                    match &mut printed {
                        Some(printed) => new.push(self.unprinted(&batch, printed)?),
                        None => new.push(batch),
                    }
                }
            }
            self.done.insert(name);
        }
        self.live.retain(|name, _| live.contains(name));
        sorted(&new)
    }

    /// Records `batches` as printed from the segment `name`, which was
    /// `len` bytes long before they were read.
    fn printed(
        &mut self,
        name: &str,
        len: u64,
        batches: &[RecordBatch],
    ) -> Result<(), OutputError> {
        let mut live = self.live.remove(name).unwrap_or_default();
        live.len = len;
        for batch in batches {
            live.rows += batch.num_rows();
            for fingerprint in self.fingerprints(batch)? {
                *live.printed.entry(fingerprint).or_default() += 1;
            }
        }
        self.live.insert(name.to_owned(), live);
        Ok(())
    }

    /// The rows of `batch` not yet printed, using up their fingerprints.
    fn unprinted(
        &self,
        batch: &RecordBatch,
        printed: &mut HashMap<u64, u32>,
    ) -> Result<RecordBatch, OutputError> {
        let keep: Vec<u32> = self
            .fingerprints(batch)?
            .into_iter()
            .enumerate()
            .filter(|(_, fingerprint)| match printed.get_mut(fingerprint) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .map(|(i, _)| i as u32)
            .collect();
        Ok(take_record_batch(batch, &UInt32Array::from(keep))?)
    }

    fn fingerprints(&self, batch: &RecordBatch) -> Result<Vec<u64>, OutputError> {
        let rows = self.converter.convert_columns(batch.columns())?;
        Ok(rows
            .iter()
            .map(|row| {
                let mut hasher = DefaultHasher::new();
                row.as_ref().hash(&mut hasher);
                hasher.finish()
            })
            .collect())
    }
}

/// Writes `batch` in `format`.
pub fn write(
    batch: &RecordBatch,
    format: TailFormat,
    out: &mut impl Write,
) -> Result<(), OutputError> {
    match format {
        TailFormat::Json => {
            let mut writer = LineDelimitedWriter::new(&mut *out);
            writer.write(batch)?;
            writer.finish()?;
        }
        TailFormat::Text => {
            let options = FormatOptions::default()
                .with_null("-")
                .with_timestamp_tz_format(Some(TIME_FORMAT));
            let columns = TEXT_COLUMNS
                .iter()
                .filter_map(|name| batch.column_by_name(name))
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows() {
                let fields: Vec<String> =
                    columns.iter().map(|c| c.value(row).to_string()).collect();
                writeln!(out, "{}", fields.join("  "))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    path.metadata().map_or(0, |m| m.len())
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The complete batches of a segment; one being created or unreadable has
/// none yet (the next look tries again).
fn read_segment(path: &Path) -> Vec<RecordBatch> {
    wal::read(path).map_or_else(|_| Vec::new(), |read| read.batches)
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, OutputError> {
    let file = std::fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<_, _>>()?)
}

/// `batches` without their first `skip` rows.
fn skip_rows(batches: &[RecordBatch], mut skip: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for batch in batches {
        if skip >= batch.num_rows() {
            skip -= batch.num_rows();
            continue;
        }
        out.push(batch.slice(skip, batch.num_rows() - skip));
        skip = 0;
    }
    out
}

/// All of `batches` in one, sorted by time; `None` if there are no rows.
fn sorted(batches: &[RecordBatch]) -> Result<Option<RecordBatch>, OutputError> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let all = concat_batches(&schema::schema(), batches)?;
    let order = sort_to_indices(all.column(0), None, None)?;
    Ok(Some(take_record_batch(&all, &order)?))
}
