//! Write-ahead segments: the events not yet in Parquet, as an Arrow IPC
//! stream on disk, so a crash loses only what was not yet synced.
//!
//! A segment is appended to batch by batch and fsynced on the writer's
//! interval; once its events are in Parquet it is deleted. What a crash
//! leaves behind is read back by [`read`], which keeps every complete batch
//! and ignores a torn one at the end.
//!
//! Appends are positional and all-or-nothing from the reader's point of
//! view: a failed write (disk full) is cut off again and its bytes kept, so
//! the retry writes exactly the same message and the stream never holds a
//! half message followed by a whole one.

use std::{
    fs::{File, OpenOptions},
    io::BufReader,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use arrow::{
    array::RecordBatch,
    ipc::{reader::StreamReader, writer::StreamWriter},
};

use crate::{error::StoreError, schema};

/// File name extension of segments (the Arrow IPC stream format's).
pub const EXTENSION: &str = "arrows";

/// One open segment.
pub struct Segment {
    path: PathBuf,
    file: File,
    /// Encodes batches into messages; the bytes go to `unwritten`.
    encoder: StreamWriter<Vec<u8>>,
    /// Encoded bytes not yet in the file (a failed write keeps them here).
    unwritten: Vec<u8>,
    /// Bytes in the file that are whole messages.
    len: u64,
}

impl Segment {
    /// Creates the segment file `path` (which must not exist) and makes its
    /// directory entry durable.
    pub fn create(path: PathBuf) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
            .map_err(StoreError::io("creating", &path))?;
        crate::fsync_parent(&path)?;
        let mut encoder = StreamWriter::try_new(Vec::new(), &schema::schema())
            .map_err(StoreError::arrow("encoding the header of", &path))?;
        let unwritten = std::mem::take(encoder.get_mut());
        let mut segment = Self {
            path,
            file,
            encoder,
            unwritten,
            len: 0,
        };
        segment.write_out()?;
        Ok(segment)
    }

    /// The segment's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `batch` (written, not yet synced). After an error the batch
    /// is still pending: call [`retry`](Self::retry) before anything else.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        self.retry()?;
        self.encoder
            .write(batch)
            .map_err(StoreError::arrow("encoding a batch of", &self.path))?;
        // Usually nothing is pending: take the encoded bytes as they are.
        if self.unwritten.is_empty() {
            std::mem::swap(&mut self.unwritten, self.encoder.get_mut());
        } else {
            self.unwritten.append(self.encoder.get_mut());
        }
        self.write_out()
    }

    /// Lets go of the encoding buffers, which keep the size of the largest
    /// batch's message (megabytes under load) for the segment's life;
    /// bytes still to be written after a failure are kept.
    pub fn release_buffers(&mut self) {
        if self.unwritten.is_empty() {
            self.unwritten = Vec::new();
        }
        // Between appends the encoder's buffer holds nothing: its bytes
        // were moved to `unwritten`.
        *self.encoder.get_mut() = Vec::new();
    }

    /// Writes what an earlier failed append left pending.
    pub fn retry(&mut self) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.write_out()
    }

    fn write_out(&mut self) -> Result<(), StoreError> {
        match self.file.write_all_at(&self.unwritten, self.len) {
            Ok(()) => {
                start_writeback(&self.file, self.len, self.unwritten.len());
                self.len += self.unwritten.len() as u64;
                self.unwritten.clear();
                Ok(())
            }
            Err(e) => {
                // Cut off whatever part of the message made it, so the file
                // ends on a whole message (best effort: if even this fails,
                // the reader stops at the torn message).
                let _ = self.file.set_len(self.len);
                Err(StoreError::Io {
                    action: "appending to",
                    path: self.path.clone(),
                    source: e,
                })
            }
        }
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.retry()?;
        self.file
            .sync_data()
            .map_err(StoreError::io("syncing", &self.path))
    }
}

/// Starts writing `len` bytes at `offset` to the disk without waiting, so
/// the interval's sync finds most of them there already and the writer
/// does not sit in `fdatasync` for a second's worth of appends. Only a
/// hint: the sync is what makes them durable.
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("unwritten", &self.unwritten.len())
            .finish_non_exhaustive()
    }
}

/// What was read back from a segment.
#[derive(Debug)]
pub struct Recovered {
    /// Every complete batch, in order.
    pub batches: Vec<RecordBatch>,
    /// The segment ended in a torn message (a crash mid-append).
    pub torn: bool,
}

/// Reads a segment left by an earlier run. A torn tail is not an error;
/// a file whose header is unreadable, or whose schema is not ours, is.
pub fn read(path: &Path) -> Result<Recovered, StoreError> {
    let file = File::open(path).map_err(StoreError::io("opening", path))?;
    if file
        .metadata()
        .map_err(StoreError::io("reading", path))?
        .len()
        == 0
    {
        // Killed before the header reached the disk.
        return Ok(Recovered {
            batches: Vec::new(),
            torn: true,
        });
    }
    let reader = StreamReader::try_new(BufReader::new(file), None)
        .map_err(StoreError::arrow("reading the header of", path))?;
    if reader.schema().fields() != schema::schema().fields() {
        return Err(StoreError::Schema {
            path: path.to_owned(),
        });
    }
    let mut batches = Vec::new();
    let mut torn = false;
    for batch in reader {
        match batch {
            Ok(batch) => batches.push(batch),
            Err(_) => {
                torn = true;
                break;
            }
        }
    }
    Ok(Recovered { batches, torn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Event, schema::EventBatchBuilder};

    fn batch(first: i64, rows: i64) -> RecordBatch {
        let mut builder = EventBatchBuilder::new("h", 8);
        for t in first..first + rows {
            builder.push(&Event {
                time_us: t,
                reason: format!("r{}", t % 3).into(),
                ..Event::default()
            });
        }
        builder.finish()
    }

    #[test]
    fn batches_come_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrows");
        let mut segment = Segment::create(path.clone()).unwrap();
        segment.append(&batch(0, 5)).unwrap();
        // Buffers let go of between appends (a quiet writer) change nothing.
        segment.release_buffers();
        segment.append(&batch(5, 3)).unwrap();
        segment.sync().unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();
        segment.append(&batch(8, 4)).unwrap();
        drop(segment);

        let all = read(&path).unwrap();
        assert!(!all.torn);
        let rows: Vec<usize> = all.batches.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(rows, [5, 3, 4]);
        // Dictionaries differ from batch to batch and still decode.
        assert_eq!(all.batches[2], batch(8, 4));

        // A crash in the middle of the third append.
        let full = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole + (full - whole) / 2).unwrap();
        let torn = read(&path).unwrap();
        assert!(torn.torn);
        assert_eq!(torn.batches.len(), 2);
        assert_eq!(torn.batches[1], batch(5, 3));
    }

    #[test]
    fn an_empty_file_is_a_segment_killed_at_birth_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.arrows");
        File::create(&empty).unwrap();
        let read_back = read(&empty).unwrap();
        assert!(read_back.batches.is_empty() && read_back.torn);

        let foreign = dir.path().join("foreign.arrows");
        std::fs::write(&foreign, b"not an arrow stream at all").unwrap();
        assert!(read(&foreign).is_err());
    }
}
