//! A JSON-lines copy of the events: one object per line, appended, flushed
//! whenever the queue runs empty. Handy for `tail -f` and `jq`; the field
//! names are the column names (with `time_us` for `event_time`).

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::Event;

/// An open JSON-lines file.
#[derive(Debug)]
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
    /// The last error reported, so a full disk is logged once, not per line.
    failing: Option<std::io::ErrorKind>,
}

impl JsonLines {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::new(file),
            failing: None,
        })
    }

    /// Appends one event. A failure is logged (once until the file works
    /// again), never returned: this copy must not hold up the store.
    pub fn write(&mut self, event: &Event) {
        let result = serde_json::to_writer(&mut self.out, event)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.outcome(result);
    }

    /// Writes buffered lines out.
    pub fn flush(&mut self) {
        let result = self.out.flush();
        self.outcome(result);
    }

    fn outcome(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.failing = None,
            Err(e) if self.failing != Some(e.kind()) => {
                warn!(path = %self.path.display(), error = %e, "cannot write the JSON-lines audit copy");
                self.failing = Some(e.kind());
            }
            Err(_) => {}
        }
    }
}
