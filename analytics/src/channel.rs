//! The hand-off from the request path to the audit writer.
//!
//! Sending never waits. When the channel is full the sender applies its
//! [`Overflow`] policy: count the event as lost (the count is reported as an
//! event of its own once there is room again) or refuse, so that the caller
//! can refuse the request it was about to let through.
//!
//! The writer takes events in batches: after a receive it lets events
//! gather for a short window instead of being woken for each one (a wake-up
//! per request costs the request path a futex call and a context switch).
//! A sender that leaves the queue half full or more cuts the window short,
//! so a small queue does not fill while the writer waits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use crate::event::Event;

/// What to do with an event the channel has no room for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Refuse: the caller must not carry out an unrecorded decision.
    #[default]
    FailClosed,
    /// Drop the event and count it.
    CountAndDrop,
}

/// The event was not accepted and the caller must refuse its request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the audit log is not keeping up; decision refused")]
pub struct Refused;

/// The request path's end of the channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSender {
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

/// The writer's end of the channel.
#[derive(Debug)]
pub struct AuditReceiver {
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
}

/// What both ends share besides the queue.
#[derive(Debug, Default)]
struct Shared {
    /// Events dropped for want of room, not yet reported as an
    /// `audit_overflow` event.
    unreported: AtomicU64,
    /// Every event dropped (for metrics).
    total: AtomicU64,
    /// Rung when the queue is half full, to end the writer's window early.
    half_full: Notify,
}

impl Shared {
    fn lose(&self) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }
}

/// A channel holding at most `capacity` events.
pub fn channel(capacity: usize) -> (AuditSender, AuditReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared::default());
    (
        AuditSender {
            tx,
            shared: shared.clone(),
        },
        AuditReceiver { rx, shared },
    )
}

impl AuditSender {
    /// Hands `event` over without waiting. With [`Overflow::FailClosed`] a
    /// full (or closed) channel is an error; with [`Overflow::CountAndDrop`]
    /// the event is counted as lost.
    pub fn send(&self, event: Event, overflow: Overflow) -> Result<(), Refused> {
        self.reserve(overflow).map(|slot| slot.send(event))
    }

    /// Takes room for one event now, to be filled once the outcome is known
    /// (a request's status comes after the decision to forward it). With
    /// [`Overflow::FailClosed`] a full channel refuses, so the caller can
    /// refuse the request before carrying out an unrecorded decision.
    pub fn reserve(&self, overflow: Overflow) -> Result<Slot, Refused> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Slot {
                permit: Some(permit),
                shared: self.shared.clone(),
            }),
            Err(_) if overflow == Overflow::CountAndDrop => Ok(Slot {
                permit: None,
                shared: self.shared.clone(),
            }),
            Err(_) => Err(Refused),
        }
    }

    /// Events dropped so far and not yet reported.
    pub fn lost(&self) -> u64 {
        self.shared.unreported.load(Ordering::Relaxed)
    }

    /// A view of the channel for status reports that, unlike a sender,
    /// does not keep the writer waiting for more at shutdown.
    pub fn monitor(&self) -> AuditMonitor {
        AuditMonitor {
            tx: self.tx.downgrade(),
            shared: self.shared.clone(),
        }
    }
}

/// The channel's fill and losses, for status and metrics.
#[derive(Clone, Debug)]
pub struct AuditMonitor {
    tx: mpsc::WeakSender<Event>,
    shared: Arc<Shared>,
}

impl AuditMonitor {
    /// Events dropped since the channel was made, reported or not.
    pub fn lost_total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Events waiting for the writer (0 once every sender is gone).
    pub fn queued(&self) -> usize {
        self.tx
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }
}

/// Room for one event. Dropped unfilled (a handler that failed half-way),
/// the event counts as lost rather than vanishing.
#[derive(Debug)]
pub struct Slot {
    permit: Option<mpsc::OwnedPermit<Event>>,
    shared: Arc<Shared>,
}

impl Slot {
    /// Fills the slot.
    pub fn send(mut self, event: Event) {
        match self.permit.take() {
            Some(permit) => {
                let tx = permit.send(event);
                if tx.capacity() * 2 <= tx.max_capacity() {
                    self.shared.half_full.notify_one();
                }
            }
            None => self.shared.lose(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.shared.lose();
        }
    }
}

impl AuditReceiver {
    /// Appends up to `limit` events to `buffer`, waiting only if none is
    /// ready; returns how many (0 once every sender is gone and the channel
    /// is drained). Events lost to overflow are reported first, as one
    /// `audit_overflow` event carrying their count in `packets`, as soon as
    /// they are noticed (a loss counted while waiting, at the next call).
    pub async fn recv_many(&mut self, buffer: &mut Vec<Event>, limit: usize) -> usize {
        let limit = limit.max(1);
        let Some(lost) = self.take_lost() else {
            let received = self.rx.recv_many(buffer, limit).await;
            return match received {
                0 => self.take_lost().map_or(0, |e| {
                    buffer.push(e);
                    1
                }),
                n => n,
            };
        };
        buffer.push(lost);
        let mut received = 1;
        while received < limit {
            match self.rx.try_recv() {
                Ok(event) => buffer.push(event),
                Err(_) => break,
            }
            received += 1;
        }
        received
    }

    /// Lets events gather: returns once `window` has passed, or sooner when
    /// the queue is half full or every sender is gone.
    pub async fn gather(&self, window: Duration) {
        if self.rx.is_closed() {
            return;
        }
        let _ = tokio::time::timeout(window, self.shared.half_full.notified()).await;
    }

    fn take_lost(&mut self) -> Option<Event> {
        let lost = self.shared.unreported.swap(0, Ordering::Relaxed);
        (lost > 0).then(|| Event {
            time_us: Event::now_us(),
            reason: "audit_overflow".into(),
            packets: Some(lost),
            ..Event::default()
        })
    }

    /// Events waiting.
    pub fn backlog(&self) -> usize {
        self.rx.len()
    }

    /// Whether every sender is gone: the writer is being stopped.
    pub fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &'static str) -> Event {
        Event {
            reason: reason.into(),
            ..Event::default()
        }
    }

    /// One event at a time.
    async fn recv(rx: &mut AuditReceiver) -> Option<Event> {
        let mut buffer = Vec::new();
        (rx.recv_many(&mut buffer, 1).await > 0).then(|| buffer.remove(0))
    }

    #[tokio::test]
    async fn fail_closed_refuses_when_full_and_count_and_drop_reports_the_loss() {
        let (tx, mut rx) = channel(2);
        tx.send(event("a"), Overflow::FailClosed).unwrap();
        tx.send(event("b"), Overflow::FailClosed).unwrap();
        let monitor = tx.monitor();
        assert_eq!(monitor.queued(), 2);
        assert!(tx.reserve(Overflow::FailClosed).is_err());
        assert_eq!(tx.send(event("c"), Overflow::FailClosed), Err(Refused));
        tx.send(event("d"), Overflow::CountAndDrop).unwrap();
        tx.send(event("e"), Overflow::CountAndDrop).unwrap();
        assert_eq!(tx.lost(), 2);
        let first = recv(&mut rx).await.unwrap();
        assert_eq!(first.reason, "audit_overflow");
        assert_eq!(first.packets, Some(2));
        assert_eq!((tx.lost(), monitor.lost_total()), (0, 2));
        assert_eq!(recv(&mut rx).await.unwrap().reason, "a");
        assert_eq!(recv(&mut rx).await.unwrap().reason, "b");
        assert_eq!(monitor.queued(), 0);
        // A slot dropped unfilled is a lost event, not a silent one.
        drop(tx.reserve(Overflow::FailClosed).unwrap());
        assert_eq!(recv(&mut rx).await.unwrap().packets, Some(1));
        assert_eq!(monitor.lost_total(), 3);
        // The monitor does not keep the channel open.
        drop(tx);
        assert_eq!(recv(&mut rx).await, None);
    }

    #[tokio::test]
    async fn recv_many_takes_what_is_ready_and_reports_losses_first() {
        let (tx, mut rx) = channel(3);
        for reason in ["a", "b", "c"] {
            tx.send(event(reason), Overflow::FailClosed).unwrap();
        }
        tx.send(event("lost"), Overflow::CountAndDrop).unwrap();
        let mut buffer = Vec::new();
        assert_eq!(rx.recv_many(&mut buffer, 2).await, 2);
        assert_eq!(buffer[0].reason, "audit_overflow");
        assert_eq!(buffer[1].reason, "a");
        assert_eq!(rx.recv_many(&mut buffer, 10).await, 2);
        drop(tx);
        assert_eq!(rx.recv_many(&mut buffer, 10).await, 0);
        let reasons: Vec<&str> = buffer.iter().map(|e| &*e.reason).collect();
        assert_eq!(reasons, ["audit_overflow", "a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn gather_waits_out_its_window_unless_the_queue_is_half_full_or_closed() {
        use tokio::time::Instant;
        let window = Duration::from_secs(5);
        let (tx, rx) = channel(4);
        tx.send(event("a"), Overflow::FailClosed).unwrap();
        let start = Instant::now();
        rx.gather(window).await;
        assert_eq!(start.elapsed(), window, "a quarter full: the whole window");
        tx.send(event("b"), Overflow::FailClosed).unwrap();
        let start = Instant::now();
        rx.gather(window).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "half full: at once");
        drop(tx);
        let start = Instant::now();
        rx.gather(window).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "closed: at once");
    }
}
