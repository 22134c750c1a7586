//! What the filter has done: per-reason counters, the drop records in the
//! kernel's aggregation slots, and the ring buffer of finished records.
//! Everything is read from the pins, so `gateway xdp stats` works beside a
//! running daemon, or with no daemon at all.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use gateway_common::{
    Counter, DROP_REPORT_INTERVAL_NS, DropRecord, Reason, Settings, family, maps,
};
use serde::{Deserialize, Serialize};

use super::Error;
use crate::paths::PinLayout;

/// Counters and recent drops of a pinned filter.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Interfaces with a pinned link.
    pub interfaces: Vec<String>,
    /// `ports` or `strict`.
    pub mode: &'static str,
    /// Whether drops are only counted.
    pub monitor: bool,
    /// Whether a range set has been written (otherwise everything passes).
    pub enforcing: bool,
    /// Range-set generation in use.
    pub generation: u32,
    /// Packets and bytes per reason, summed over CPUs; zero rows omitted.
    pub counters: Vec<ReasonCount>,
    /// Sources with the most dropped packets in the current aggregation
    /// window (the last second or so on each CPU), most first.
    pub top_dropped_sources: Vec<DroppedSource>,
}

/// One counter row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// Reason name (`allowed_relay`, `dropped_not_allowed`, ...).
    pub reason: String,
    /// Counted in monitor mode (the drop did not happen).
    pub monitor: bool,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Drops from one source to one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DroppedSource {
    /// Source address; `None` for the sum of sources that each sent a
    /// single packet in their window (a spoofed-source flood).
    pub source: Option<IpAddr>,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (0 without one).
    pub dst_port: u16,
    /// Reason name.
    pub reason: &'static str,
    /// Counted in monitor mode.
    pub monitor: bool,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Time from the first packet to the last, microseconds.
    pub span_us: u64,
}

impl DroppedSource {
    /// A record from the kernel, or `None` for an empty slot.
    pub fn from_record(record: &DropRecord) -> Option<Self> {
        let source = match record.family {
            family::V4 => Some(IpAddr::V4(Ipv4Addr::new(
                record.src[0],
                record.src[1],
                record.src[2],
                record.src[3],
            ))),
            family::V6 => Some(IpAddr::V6(Ipv6Addr::from(record.src))),
            family::MANY => None,
            _ => return None,
        };
        let (reason, _) = Reason::from_index(u32::from(record.reason))?;
        Some(Self {
            source,
            protocol: record.protocol,
            dst_port: record.dst_port,
            reason: reason.name(),
            monitor: record.monitor != 0,
            packets: record.packets,
            bytes: record.bytes,
            span_us: record.last_ns.saturating_sub(record.first_ns) / 1000,
        })
    }
}

/// (source, protocol, destination port, reason, monitor): what drops are
/// summed by across CPUs.
type FlowKey = (Option<IpAddr>, u8, u16, &'static str, bool);

fn open(layout: &PinLayout, name: &'static str) -> Result<MapData, Error> {
    let path = layout.map(name);
    if !path.exists() {
        return Err(Error::NotPinned(layout.root().display().to_string()));
    }
    MapData::from_pin(&path).map_err(|source| Error::Map {
        map: name,
        action: "opening the pin",
        source,
    })
}

/// Reads the per-reason counters of the filter pinned at `layout`, summed
/// over CPUs, leaving out zero rows.
pub fn read_counters(layout: &PinLayout) -> Result<Vec<ReasonCount>, Error> {
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(Map::PerCpuArray(open(layout, maps::COUNTERS)?))
            .map_err(Error::map(maps::COUNTERS, "opening"))?;
    let mut rows = Vec::new();
    for (index, values) in counters.iter().enumerate() {
        let values = values.map_err(Error::map(maps::COUNTERS, "reading"))?;
        let Some((reason, monitor)) = Reason::from_index(index as u32) else {
            continue;
        };
        let (packets, bytes) = values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
        if packets > 0 {
            rows.push(ReasonCount {
                reason: reason.name().to_owned(),
                monitor,
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}

/// Reads the counters and recent drops of the filter pinned at `layout`.
pub fn read(layout: &PinLayout, top: usize) -> Result<Snapshot, Error> {
    let settings: Array<MapData, Settings> =
        Array::try_from(Map::Array(open(layout, maps::SETTINGS)?))
            .map_err(Error::map(maps::SETTINGS, "opening"))?;
    let settings = settings
        .get(&0, 0)
        .map_err(Error::map(maps::SETTINGS, "reading"))?;

    let rows = read_counters(layout)?;

    let slots: PerCpuArray<MapData, DropRecord> =
        PerCpuArray::try_from(Map::PerCpuArray(open(layout, maps::DROP_SLOTS)?))
            .map_err(Error::map(maps::DROP_SLOTS, "opening"))?;
    let mut by_source: HashMap<FlowKey, (u64, u64, u64)> = HashMap::new();
    for values in slots.iter() {
        let values = values.map_err(Error::map(maps::DROP_SLOTS, "reading"))?;
        for record in values.iter() {
            if let Some(d) = DroppedSource::from_record(record) {
                let entry = by_source
                    .entry((d.source, d.protocol, d.dst_port, d.reason, d.monitor))
                    .or_default();
                entry.0 += d.packets;
                entry.1 += d.bytes;
                entry.2 = entry.2.max(d.span_us);
            }
        }
    }
    let mut top_dropped_sources: Vec<DroppedSource> = by_source
        .into_iter()
        .map(
            |((source, protocol, dst_port, reason, monitor), (packets, bytes, span_us))| {
                DroppedSource {
                    source,
                    protocol,
                    dst_port,
                    reason,
                    monitor,
                    packets,
                    bytes,
                    span_us,
                }
            },
        )
        .collect();
    top_dropped_sources.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.source.cmp(&b.source)));
    top_dropped_sources.truncate(top);

    let mut interfaces: Vec<String> = std::fs::read_dir(layout.links())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    Ok(Snapshot {
        interfaces,
        mode: if settings.flags & Settings::STRICT != 0 {
            "strict"
        } else {
            "ports"
        },
        monitor: settings.flags & Settings::MONITOR != 0,
        enforcing: settings.flags & Settings::ENFORCING != 0,
        generation: settings.generation,
        counters: rows,
        top_dropped_sources,
    })
}

impl Snapshot {
    /// The human-readable form printed by `gateway xdp stats`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "interfaces: {}\nmode: {}{}{}",
            if self.interfaces.is_empty() {
                "(none attached)".to_string()
            } else {
                self.interfaces.join(", ")
            },
            self.mode,
            if self.monitor {
                " (monitor: nothing is dropped)"
            } else {
                ""
            },
            if self.enforcing {
                ""
            } else {
                " (no range set loaded: everything passes)"
            },
        );
        let _ = writeln!(
            out,
            "\n{:<28} {:>8} {:>14} {:>16}",
            "reason", "monitor", "packets", "bytes"
        );
        for row in &self.counters {
            let _ = writeln!(
                out,
                "{:<28} {:>8} {:>14} {:>16}",
                row.reason,
                if row.monitor { "yes" } else { "" },
                row.packets,
                row.bytes
            );
        }
        if !self.top_dropped_sources.is_empty() {
            let _ = writeln!(
                out,
                "\ntop dropped sources (current window)\n{:<40} {:>5} {:>6} {:<28} {:>10} {:>12}",
                "source", "proto", "port", "reason", "packets", "bytes"
            );
            for d in &self.top_dropped_sources {
                let _ = writeln!(
                    out,
                    "{:<40} {:>5} {:>6} {:<28} {:>10} {:>12}",
                    d.source
                        .map_or_else(|| "(single-packet sources)".into(), |s| s.to_string()),
                    d.protocol,
                    d.dst_port,
                    d.reason,
                    d.packets,
                    d.bytes
                );
            }
        }
        out
    }
}

/// One aggregation window of one flow in a kernel slot: the same flow
/// with the same first packet. What part of it has been reported is kept
/// per window, so a record is never counted twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Window {
    family: u8,
    src: [u8; 16],
    protocol: u8,
    dst_port: u16,
    reason: u8,
    monitor: u8,
    first_ns: u64,
}

impl Window {
    fn of(record: &DropRecord) -> Self {
        Self {
            family: record.family,
            src: record.src,
            protocol: record.protocol,
            dst_port: record.dst_port,
            reason: record.reason,
            monitor: record.monitor,
            first_ns: record.first_ns,
        }
    }
}

/// Packets and bytes of a window already reported.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Reported {
    packets: u64,
    bytes: u64,
}

/// The drop records of a pinned filter, exactly once: the ring buffer of
/// finished records, and a sweep of the kernel's slots for flows too slow
/// to ever finish one there (the kernel looks at a slot's age only every
/// 64 packets, so a source that sends ten packets would otherwise never be
/// reported). A sweep reports what a window holds beyond what was reported
/// of it before; a finished record later reports only the rest.
pub struct DropEvents {
    ring: RingBuf<MapData>,
    slots: PerCpuArray<MapData, DropRecord>,
    reported: HashMap<Window, Reported>,
}

impl DropEvents {
    /// Opens the ring buffer and the slots pinned at `layout`.
    pub fn open(layout: &PinLayout) -> Result<Self, Error> {
        let ring = RingBuf::try_from(Map::RingBuf(open(layout, maps::DROP_EVENTS)?))
            .map_err(Error::map(maps::DROP_EVENTS, "opening"))?;
        let slots = PerCpuArray::try_from(Map::PerCpuArray(open(layout, maps::DROP_SLOTS)?))
            .map_err(Error::map(maps::DROP_SLOTS, "opening"))?;
        Ok(Self {
            ring,
            slots,
            reported: HashMap::new(),
        })
    }

    /// Takes every finished record waiting in the ring, less what sweeps
    /// reported of its window.
    pub fn drain(&mut self) -> Vec<DroppedSource> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() == size_of::<DropRecord>() {
                // SAFETY: the kernel wrote a DropRecord of exactly this size;
                // read_unaligned copes with the ring's 8-byte alignment.
                let record =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropRecord>()) };
                let before = self
                    .reported
                    .remove(&Window::of(&record))
                    .unwrap_or_default();
                out.extend(unreported(&record, before));
            }
        }
        out
    }

    /// Reports what the slots hold beyond what was reported: of windows
    /// older than the kernel's report interval, or of every window with
    /// `everything` (the daemon is stopping). Drains the ring too.
    pub fn sweep(&mut self, everything: bool) -> Result<Vec<DroppedSource>, Error> {
        let mut out = self.drain();
        let now = monotonic_coarse_ns();
        let mut present = HashSet::new();
        for values in self.slots.iter() {
            let values = values.map_err(Error::map(maps::DROP_SLOTS, "reading"))?;
            for record in values.iter().filter(|r| r.family != 0) {
                let window = Window::of(record);
                present.insert(window);
                if !everything && now.saturating_sub(record.first_ns) < DROP_REPORT_INTERVAL_NS {
                    continue;
                }
                let reported = self.reported.entry(window).or_default();
                if let Some(source) = unreported(record, *reported) {
                    out.push(source);
                    *reported = Reported {
                        packets: record.packets,
                        bytes: record.bytes,
                    };
                }
            }
        }
        // A window missing from the slots was finished before they were
        // read, so its record is in the ring now: take it before forgetting
        // the window.
        out.extend(self.drain());
        self.reported.retain(|window, _| present.contains(window));
        Ok(out)
    }

    /// What has been reported of windows still in the slots, for the next
    /// daemon (the filter outlives this one).
    pub fn save(&self) -> Vec<u8> {
        let entries: Vec<(&Window, &Reported)> = self.reported.iter().collect();
        serde_json::to_vec(&entries).unwrap_or_default()
    }

    /// Takes over what an earlier daemon [saved](Self::save). Unreadable
    /// state is ignored (at worst a window is reported twice).
    pub fn restore(&mut self, saved: &[u8]) {
        if let Ok(entries) = serde_json::from_slice::<Vec<(Window, Reported)>>(saved) {
            self.reported.extend(entries);
        }
    }
}

/// `record` less what was already reported of its window, if anything is
/// left.
fn unreported(record: &DropRecord, before: Reported) -> Option<DroppedSource> {
    if record.packets <= before.packets {
        return None;
    }
    DroppedSource::from_record(&DropRecord {
        packets: record.packets - before.packets,
        bytes: record.bytes.saturating_sub(before.bytes),
        ..*record
    })
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of the slots' times.
fn monotonic_coarse_ns() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `time` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut time) };
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}
