//! Drop records into audit events, and what happens to them when the audit
//! queue is full.
//!
//! The kernel already sums drops per source, port and reason over about a
//! second, so a record stands for many packets. When the queue has no room
//! (a flood of decisions, a disk that stopped), the default
//! [`XdpOverflow::CountAndAggregate`] keeps adding records up here, one sum
//! per source, protocol, port and reason, and sends the sums as soon as
//! there is room again: packets and bytes are all recorded, only their
//! spread in time is lost (one record then spans them all). Past
//! [`MAX_SOURCES`] sums, further sources are added to the one without an
//! address (as the kernel does for single-packet sources), so a
//! spoofed-source flood cannot grow the backlog without bound.

use std::{collections::HashMap, net::IpAddr};

use analytics::{AuditSender, Decision, Event, Label, Layer, Overflow};
use serde::Deserialize;
use tracing::{info, warn};

use super::stats::DroppedSource;

/// What a full audit queue does to drop records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpOverflow {
    /// Sum them per source and send the sums once there is room.
    #[default]
    CountAndAggregate,
    /// Drop them and count them (an `audit_overflow` event).
    CountAndDrop,
}

/// Sums kept apart at most while the queue is full; later sources go into
/// the sum without an address.
pub const MAX_SOURCES: usize = 16_384;

/// (source, protocol, destination port, reason): what a sum is kept per.
type SumKey = (Option<IpAddr>, u8, u16, &'static str);

/// Drop records added together while they found no room.
#[derive(Clone, Copy, Debug)]
struct Sum {
    /// The first packet (microseconds since the epoch).
    first_us: i64,
    /// When the last record was reported.
    last_us: i64,
    packets: u64,
    bytes: u64,
}

/// Sends the XDP side's drop records to the audit log.
#[derive(Debug)]
pub struct DropAudit {
    audit: AuditSender,
    overflow: XdpOverflow,
    waiting: HashMap<SumKey, Sum>,
    /// Records summed since the queue was last found with room.
    summed: u64,
}

impl DropAudit {
    /// Records go to `audit`; a full queue is met with `overflow`.
    pub fn new(audit: AuditSender, overflow: XdpOverflow) -> Self {
        Self {
            audit,
            overflow,
            waiting: HashMap::new(),
            summed: 0,
        }
    }

    /// Sends what waits, then each of `drops`, reported at `now_us`. Never
    /// waits: what finds no room is summed or counted, as configured.
    pub fn record(&mut self, drops: impl IntoIterator<Item = DroppedSource>, now_us: i64) {
        self.send_waiting();
        for drop in drops {
            let first_us = now_us.saturating_sub(i64::try_from(drop.span_us).unwrap_or(i64::MAX));
            let sum = Sum {
                first_us,
                last_us: now_us,
                packets: drop.packets,
                bytes: drop.bytes,
            };
            let key = (drop.source, drop.protocol, drop.dst_port, drop.reason);
            match self.overflow {
                XdpOverflow::CountAndDrop => {
                    let _ = self.audit.send(event(key, sum), Overflow::CountAndDrop);
                }
                // Older sums still wait: this record joins them.
                XdpOverflow::CountAndAggregate if !self.waiting.is_empty() => self.add(key, sum),
                XdpOverflow::CountAndAggregate => match self.audit.reserve(Overflow::FailClosed) {
                    Ok(slot) => slot.send(event(key, sum)),
                    Err(_) => self.add(key, sum),
                },
            }
        }
    }

    /// Sums waiting for room.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn add(&mut self, mut key: SumKey, sum: Sum) {
        if self.waiting.is_empty() && self.summed == 0 {
            warn!("audit queue full: XDP drop records are summed per source until it has room");
        }
        if self.waiting.len() >= MAX_SOURCES && !self.waiting.contains_key(&key) {
            key.0 = None;
        }
        self.summed += 1;
        self.waiting
            .entry(key)
            .and_modify(|total| {
                total.first_us = total.first_us.min(sum.first_us);
                total.last_us = total.last_us.max(sum.last_us);
                total.packets = total.packets.saturating_add(sum.packets);
                total.bytes = total.bytes.saturating_add(sum.bytes);
            })
            .or_insert(sum);
    }

    /// Sends the sums, oldest first, while there is room.
    fn send_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        // Still full (the usual case while sums wait): nothing to sort.
        let Ok(mut slot) = self.audit.reserve(Overflow::FailClosed) else {
            return;
        };
        let mut oldest_first: Vec<(SumKey, Sum)> = self.waiting.drain().collect();
        oldest_first.sort_by_key(|(_, sum)| sum.first_us);
        let mut left = oldest_first.into_iter().peekable();
        while let Some((key, sum)) = left.next() {
            slot.send(event(key, sum));
            // Room is taken only for a sum that is there to fill it: a slot
            // dropped unfilled counts as a lost event.
            if left.peek().is_none() {
                break;
            }
            match self.audit.reserve(Overflow::FailClosed) {
                Ok(next) => slot = next,
                Err(_) => break,
            }
        }
        self.waiting.extend(left);
        if self.waiting.is_empty() {
            info!(
                records = self.summed,
                "audit queue has room again: XDP drop records summed while it was full are recorded"
            );
            self.summed = 0;
        }
    }
}

/// The audit event of drops: `event_time` is when the last of them was
/// reported, `interval_us` reaches back to the first packet.
fn event((source, protocol, dst_port, reason): SumKey, sum: Sum) -> Event {
    Event {
        time_us: sum.last_us,
        layer: Some(Layer::Xdp),
        decision: Some(Decision::Deny),
        reason: reason.into(),
        client_ip: source,
        protocol: Some(protocol_name(protocol)),
        dst_port: Some(dst_port),
        packets: Some(sum.packets),
        bytes: Some(sum.bytes),
        interval_us: Some(u64::try_from(sum.last_us - sum.first_us).unwrap_or(0)),
        ..Event::default()
    }
}

fn protocol_name(protocol: u8) -> Label {
    match protocol {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use analytics::{AuditReceiver, channel};

    use super::*;

    fn drop_from(source: Option<IpAddr>, packets: u64, span_us: u64) -> DroppedSource {
        DroppedSource {
            source,
            protocol: 6,
            dst_port: 443,
            reason: "dropped_not_allowed",
            monitor: false,
            packets,
            bytes: packets * 60,
            span_us,
        }
    }

    fn source(n: u32) -> Option<IpAddr> {
        // 198.51.100.0/24 and beyond: only the numbers matter here.
        Some(IpAddr::V4(Ipv4Addr::from(0xC633_6400 + n)))
    }

    /// Everything in the queue now.
    fn take(receiver: &mut AuditReceiver) -> Vec<Event> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let mut events = Vec::new();
        while receiver.backlog() > 0 {
            runtime.block_on(receiver.recv_many(&mut events, 1024));
        }
        events
    }

    #[test]
    fn records_without_room_are_summed_per_source_and_sent_once_there_is_room() {
        let (sender, mut receiver) = channel(2);
        let mut audit = DropAudit::new(sender.clone(), XdpOverflow::CountAndAggregate);
        audit.record(
            [drop_from(source(1), 5, 0), drop_from(source(2), 1, 0)],
            1_000,
        );
        // The queue is full: three more records of source 1 and one of
        // source 3 wait as two sums.
        audit.record([drop_from(source(1), 10, 500)], 2_000);
        audit.record(
            [drop_from(source(3), 7, 0), drop_from(source(1), 20, 0)],
            3_000,
        );
        audit.record([drop_from(source(1), 30, 100)], 4_000);
        assert_eq!(audit.waiting(), 2);
        assert_eq!(take(&mut receiver).len(), 2);

        // Room again: the sums go out, oldest first, and nothing was lost.
        audit.record([], 5_000);
        assert_eq!(audit.waiting(), 0);
        let sums = take(&mut receiver);
        assert_eq!(sums.len(), 2);
        assert_eq!(sender.monitor().lost_total(), 0);
        let one = &sums[0];
        assert_eq!(one.client_ip, source(1));
        assert_eq!(one.packets, Some(60));
        assert_eq!(one.bytes, Some(60 * 60));
        // From the first packet (2,000 - 500) to the last report (4,000).
        assert_eq!((one.time_us, one.interval_us), (4_000, Some(2_500)));
        assert_eq!(one.layer, Some(Layer::Xdp));
        assert_eq!(one.dst_port, Some(443));
        assert_eq!(one.protocol.as_deref(), Some("tcp"));
        let three = &sums[1];
        assert_eq!(three.client_ip, source(3));
        assert_eq!((three.packets, three.time_us), (Some(7), 3_000));

        // With room, records go straight out again.
        audit.record([drop_from(source(4), 1, 0)], 6_000);
        assert_eq!(take(&mut receiver).len(), 1);
    }

    #[test]
    fn past_the_limit_sources_are_summed_without_an_address_and_nothing_is_lost() {
        const QUEUE: usize = 1024;
        let (sender, mut receiver) = channel(QUEUE);
        let mut audit = DropAudit::new(sender.clone(), XdpOverflow::CountAndAggregate);
        let sources = (QUEUE + MAX_SOURCES + 100) as u32;
        audit.record((0..sources).map(|n| drop_from(source(n), 2, 0)), 1_000);
        // A queue's worth went out; MAX_SOURCES sums wait, and one without
        // an address holds the last hundred sources.
        assert_eq!(audit.waiting(), MAX_SOURCES + 1);
        let mut events = take(&mut receiver);
        while audit.waiting() > 0 {
            audit.record([], 2_000);
            events.extend(take(&mut receiver));
        }
        assert_eq!(events.len(), QUEUE + MAX_SOURCES + 1);
        let packets: u64 = events.iter().filter_map(|e| e.packets).sum();
        assert_eq!(packets, 2 * u64::from(sources));
        let unnamed: Vec<&Event> = events.iter().filter(|e| e.client_ip.is_none()).collect();
        assert_eq!(unnamed.len(), 1);
        assert_eq!(unnamed[0].packets, Some(2 * 100));
        assert_eq!(sender.monitor().lost_total(), 0);
    }

    #[test]
    fn count_and_drop_counts_what_finds_no_room() {
        let (sender, mut receiver) = channel(1);
        let mut audit = DropAudit::new(sender.clone(), XdpOverflow::CountAndDrop);
        audit.record((0..4).map(|n| drop_from(source(n), 1, 0)), 1_000);
        assert_eq!(audit.waiting(), 0);
        assert_eq!(sender.lost(), 3);
        let events = take(&mut receiver);
        // The overflow report comes first, then the one that fit.
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].reason.as_ref() as &str, "audit_overflow");
        assert_eq!(events[0].packets, Some(3));
    }
}
