//! A progress bar for long scans: bytes fetched against the size of the
//! files, drawn on stderr only when stdout is a terminal and only once a
//! query has run for half a second (short queries print no bar at all).

use std::{io::IsTerminal as _, sync::Arc, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::store::BytesRead;

/// How long a query runs before the bar appears.
const DELAY: Duration = Duration::from_millis(500);

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
        if !std::io::stdout().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("scanning {bytes}/{total_bytes} {wide_bar} {elapsed}")
                .expect("a valid template"),
        );
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(DELAY).await;
            shown.set_draw_target(ProgressDrawTarget::stderr());
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
