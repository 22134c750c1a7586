//! A progress bar for long scans: bytes fetched against the size of the
//! files, drawn on stderr only when stdout is a terminal and only once a
//! query has run for half a second (short queries print no bar at all;
//! `ANALYTICS_PROGRESS_DELAY_MS` sets another wait).

use std::{
    io::{self, IsTerminal as _, Write},
    sync::Arc,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::store::BytesRead;

/// How long a query runs before the bar appears, unless
/// [`DELAY_VARIABLE`] says otherwise.
const DELAY: Duration = Duration::from_millis(500);

/// The environment variable that sets the wait before the bar appears, in
/// milliseconds.
pub const DELAY_VARIABLE: &str = "ANALYTICS_PROGRESS_DELAY_MS";

/// The bar, removed when dropped.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts following `read` towards `total` bytes, if stdout is a
    /// terminal.
    pub fn start(read: Arc<BytesRead>, total: u64) -> Option<Self> {
        if !io::stdout().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("scanning {bytes}/{total_bytes} {wide_bar} {elapsed}")
                .expect("a valid template"),
        );
        let delay = std::env::var(DELAY_VARIABLE)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(DELAY, Duration::from_millis);
        let show = |bar: &ProgressBar| {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.tick();
        };
        // No wait: drawn before the query starts, whatever it takes.
        if delay.is_zero() {
            show(&bar);
        }
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                show(&shown);
            }
            loop {
                shown.set_position(read.get().min(total));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(Self { bar, task })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// Output to the terminal the bar is drawn on: the bar is taken off before
/// the first byte, so an answer never starts on the bar's line.
pub struct ClearsProgress<W> {
    progress: Option<Progress>,
    out: W,
}

impl<W> ClearsProgress<W> {
    /// `out`, clearing `progress` before the first write.
    pub fn new(progress: Option<Progress>, out: W) -> Self {
        Self { progress, out }
    }
}

impl<W: Write> Write for ClearsProgress<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.progress.take();
        self.out.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
