//! A JSON-lines file of events: one object per line, appended, flushed
//! whenever the queue runs empty. Handy for `tail -f` and `jq`; the same
//! field names as the columnar logs.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use crate::channel::AuditReceiver;

/// An open JSON-lines file.
#[derive(Debug)]
pub struct JsonLines {
    out: BufWriter<File>,
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
            out: BufWriter::new(file),
        })
    }

    fn write(&mut self, event: &crate::Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")
    }
}

/// Takes events until every sender is gone, writing them to `file` if
/// given. A write error does not stop the draining (the queue must not back
/// up into the request path); the last error is returned at the end.
pub async fn drain(
    mut receiver: AuditReceiver,
    mut file: Option<JsonLines>,
) -> std::io::Result<()> {
    let mut last_error = None;
    while let Some(event) = receiver.recv().await {
        if let Some(file) = &mut file {
            if let Err(e) = file.write(&event) {
                last_error = Some(e);
            }
            if receiver.backlog() == 0
                && let Err(e) = file.out.flush()
            {
                last_error = Some(e);
            }
        }
    }
    if let Some(file) = &mut file {
        file.out.flush()?;
    }
    last_error.map_or(Ok(()), Err)
}
