//! The audit writer: a thread of its own that takes events off the channel
//! into the [`AuditStore`] (and the JSON-lines file, if one is kept).
//!
//! It syncs on a fixed interval, so a `kill -9` loses at most the events of
//! the last interval, and rolls segments into Parquet when they are due.
//! After an I/O error (disk full) it stops taking events and retries the
//! failed step until it succeeds: the channel then fills and the senders'
//! overflow policy applies, which is what makes "fail closed" mean
//! something. Encoding and disk I/O never run on the request path's
//! threads.

use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::{
    sync::oneshot,
    time::{MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    channel::AuditReceiver,
    error::StoreError,
    jsonl::JsonLines,
    store::{AuditStore, BATCH_ROWS, StoreStatus},
};

/// Most events taken off the channel at once.
pub const RECEIVE_EVENTS: usize = 256;

/// How long events gather in the channel after a receive that emptied it,
/// so a steady stream of requests wakes the writer about a hundred times a
/// second rather than once per request (the channel ends the wait early
/// when it is half full).
const GATHER_WINDOW: Duration = Duration::from_millis(10);

/// How often a failed step is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The writer thread's name, as `ps`, `top` and `/proc` show it.
pub const THREAD_NAME: &str = "audit-writer";

/// What the writer tells the process's allocator about the load. Under a
/// stream of events the writer frees and allocates megabytes of buffers a
/// row group at a time; an allocator that hands freed memory back to the
/// OS within milliseconds (what an idle gateway wants) makes it fault all
/// of that in again. Both hooks run on the writer's thread.
#[derive(Clone, Copy, Debug)]
pub struct MemoryHooks {
    /// Events have started streaming: a receive found the channel holding
    /// a full batch. Runs once, then not again until the writer goes quiet.
    pub busy: fn(),
    /// Events have stopped for a whole sync interval and the writer has let
    /// go of its row group. Runs once per quiet spell.
    pub quiet: fn(),
}

impl MemoryHooks {
    /// Hooks that leave the allocator alone.
    pub const NONE: Self = Self {
        busy: nothing,
        quiet: nothing,
    };
}

fn nothing() {}

/// Where events go.
#[derive(Debug, Default)]
pub struct Sinks {
    /// The columnar store.
    pub store: Option<AuditStore>,
    /// A JSON-lines copy.
    pub jsonl: Option<JsonLines>,
}

/// The running writer.
#[derive(Debug)]
pub struct AuditWriter {
    status: Option<Arc<StoreStatus>>,
    done: oneshot::Receiver<Result<(), StoreError>>,
    thread: JoinHandle<()>,
}

/// Why the writer did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// It did not finish in time; synced events are in the write-ahead
    /// segment and the next start recovers them.
    #[error("the audit writer did not finish within {0:?}")]
    Timeout(Duration),
    /// The last roll into Parquet failed; same recovery.
    #[error("the audit writer's last roll failed")]
    Store(#[source] StoreError),
    /// The thread panicked.
    #[error("the audit writer thread panicked")]
    Panicked,
}

/// Starts the writer thread, which runs until every sender of `receiver`
/// is gone and the queue is drained, then rolls what it holds into Parquet.
///
/// `memory` tells the allocator when events stream and when they stop: the
/// daemon has mimalloc keep freed memory for reuse while they stream and
/// give it back to the OS once they stop (mimalloc returns a thread's free
/// pages only when that thread asks).
pub fn spawn(
    sinks: Sinks,
    receiver: AuditReceiver,
    sync_interval: Duration,
    memory: MemoryHooks,
) -> std::io::Result<AuditWriter> {
    let status = sinks.store.as_ref().map(AuditStore::status);
    let (tx, done) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let thread = std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let result = runtime.block_on(run(sinks, receiver, sync_interval, memory));
            let _ = tx.send(result);
        })?;
    Ok(AuditWriter {
        status,
        done,
        thread,
    })
}

impl AuditWriter {
    /// The store's status, if there is a store.
    pub fn status(&self) -> Option<Arc<StoreStatus>> {
        self.status.clone()
    }

    /// Waits (at most `timeout`) for the writer to drain and close. Call
    /// after dropping every sender.
    pub async fn finish(self, timeout: Duration) -> Result<(), FinishError> {
        let result = match tokio::time::timeout(timeout, self.done).await {
            Err(_) => return Err(FinishError::Timeout(timeout)),
            Ok(Err(_)) => Err(FinishError::Panicked),
            Ok(Ok(result)) => result.map_err(FinishError::Store),
        };
        // The thread has sent its result and is returning.
        let _ = self.thread.join();
        result
    }
}

async fn run(
    mut sinks: Sinks,
    mut receiver: AuditReceiver,
    sync_interval: Duration,
    memory: MemoryHooks,
) -> Result<(), StoreError> {
    // A few hundred events at a time: they are still in the CPU's caches
    // when they are encoded and freed.
    let mut received_events = Vec::with_capacity(RECEIVE_EVENTS);
    let mut tick = interval(sync_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Events came in since the last tick; memory was let go of since the
    // last event; the allocator was told events stream.
    let (mut received_since_tick, mut settled, mut busy) = (false, true, false);
    loop {
        let received = tokio::select! {
            // The interval first: under a flood, syncs still happen on time.
            biased;
            _ = tick.tick() => None,
            received = receiver.recv_many(&mut received_events, RECEIVE_EVENTS) => Some(received),
        };
        let Some(received) = received else {
            if let Some(store) = &mut sinks.store {
                until_done(store, AuditStore::sync, &receiver).await;
                if store.roll_due() {
                    until_done(store, |s| s.roll().map(drop), &receiver).await;
                }
                store.apply_retention_if_due(Instant::now());
            }
            if received_since_tick {
                settled = false;
            } else if !settled {
                // Quiet for a whole interval: let go of the row group and
                // of the memory it held.
                if let Some(store) = &mut sinks.store {
                    store.end_row_group();
                }
                (memory.quiet)();
                (settled, busy) = (true, false);
            }
            received_since_tick = false;
            sinks.flush_jsonl();
            continue;
        };
        if received == 0 {
            break;
        }
        received_since_tick = true;
        if received == RECEIVE_EVENTS && !busy {
            (memory.busy)();
            busy = true;
        }
        for event in received_events.drain(..) {
            if let Some(jsonl) = &mut sinks.jsonl {
                jsonl.write(&event);
            }
            if let Some(store) = &mut sinks.store {
                store.push(&event);
            }
        }
        if let Some(store) = &mut sinks.store
            && store.pending() >= BATCH_ROWS
        {
            until_done(store, AuditStore::flush, &receiver).await;
        }
        if receiver.backlog() == 0 {
            sinks.flush_jsonl();
        }
        if received < RECEIVE_EVENTS {
            receiver.gather(GATHER_WINDOW).await;
        }
    }
    sinks.flush_jsonl();
    match &mut sinks.store {
        Some(store) => store.roll().map(drop),
        None => Ok(()),
    }
}

impl Sinks {
    fn flush_jsonl(&mut self) {
        if let Some(jsonl) = &mut self.jsonl {
            jsonl.flush();
        }
    }
}

/// Runs `step` until it succeeds, reporting the failure (once per distinct
/// error) and the recovery. Meanwhile no event is taken off the channel.
/// Once the writer is being stopped it gives up after one failure: the
/// final roll reports it, and the stop is not held up until the disk
/// recovers (what is synced stays in the segment for the next start).
async fn until_done(
    store: &mut AuditStore,
    step: impl Fn(&mut AuditStore) -> Result<(), StoreError>,
    receiver: &AuditReceiver,
) {
    let status = store.status();
    let mut reported: Option<String> = None;
    loop {
        match step(store) {
            Ok(()) => break,
            Err(e) => {
                let message = crate::error_chain(&e);
                if reported.as_ref() != Some(&message) {
                    warn!(error = %message, "audit store failing; not taking events until it recovers");
                    status.set_error(Some(message.clone()));
                    reported = Some(message);
                }
                if receiver.is_closed() {
                    return;
                }
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
        }
    }
    if reported.is_some() {
        info!("audit store recovered");
        status.set_error(None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parquet::file::reader::{FileReader as _, SerializedFileReader};

    use super::*;
    use crate::{Event, Overflow, Retention, StoreConfig, files};

    static BUSY_SPELLS: AtomicUsize = AtomicUsize::new(0);
    static QUIET_SPELLS: AtomicUsize = AtomicUsize::new(0);

    fn count_busy_spell() {
        BUSY_SPELLS.fetch_add(1, Ordering::SeqCst);
    }

    fn count_quiet_spell() {
        QUIET_SPELLS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_writer_reports_each_stream_once_and_ends_its_row_group_once_per_quiet_spell() {
        use crate::store::SMALLEST_QUIET_ROW_GROUP as SMALLEST;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AuditStore::open(StoreConfig {
            dir: dir.path().to_owned(),
            host: "origin-1".into(),
            roll_interval: Duration::from_secs(3600),
            roll_events: 1_000_000,
            retention: Retention::default(),
        })
        .unwrap();
        let (sender, receiver) = crate::channel(4 * SMALLEST);
        let sinks = Sinks {
            store: Some(store),
            jsonl: None,
        };
        let hooks = MemoryHooks {
            busy: count_busy_spell,
            quiet: count_quiet_spell,
        };
        let writer = spawn(sinks, receiver, Duration::from_millis(50), hooks).unwrap();
        // One time for all: one hour, one file.
        let time_us = Event::now_us();
        // A trickle, then two streams (each sent faster than the writer
        // takes events, so the channel holds a full receive).
        let stream = SMALLEST + 100;
        for (spell, events, streams) in [(1, 10, 0), (2, stream, 1), (3, stream, 2)] {
            for _ in 0..events {
                let event = Event {
                    time_us,
                    reason: "policy".into(),
                    ..Event::default()
                };
                sender.send(event, Overflow::FailClosed).unwrap();
            }
            // Many quiet intervals; one call each spell.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(QUIET_SPELLS.load(Ordering::SeqCst), spell);
            assert_eq!(BUSY_SPELLS.load(Ordering::SeqCst), streams);
        }
        drop(sender);
        writer.finish(Duration::from_secs(10)).await.unwrap();
        let written = files::list(dir.path());
        assert_eq!(written.len(), 1);
        let file = SerializedFileReader::new(std::fs::File::open(&written[0]).unwrap()).unwrap();
        let groups: Vec<i64> = file
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.num_rows())
            .collect();
        // The trickle was too small for a row group of its own.
        let stream = stream as i64;
        assert_eq!(
            groups,
            [10 + stream, stream],
            "a row group ended by each quiet spell after a stream"
        );
    }
}
