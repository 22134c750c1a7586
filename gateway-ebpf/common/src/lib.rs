//! Types shared by the XDP program (`gateway-ebpf`) and the userspace gateway.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because
//! both sides read the same bytes out of BPF maps. With the `user` feature the
//! types also implement `aya::Pod`.
//!
//! # Layout
//! - [`maps`]: map names (the symbols in the object, also the pin names) and sizes.
//! - [`class`]: the source classes an address can belong to.
//! - [`Reason`]: why the program passed or dropped a packet; the counter index.
//! - [`Settings`]: runtime switches the program reads on every packet.
//! - [`BucketWord`], [`PrefixKey`], [`LengthList`]: the range-set encoding.
//! - [`DropRecord`]: an aggregated drop report sent through the ring buffer.
#![no_std]

/// Source classes. A range set maps every address to a bit set of these.
pub mod class {
    /// The address is inside an allowed relay range.
    pub const RELAY: u8 = 1 << 0;
    /// The address is inside an allowed management range (e.g. an SSH bastion).
    pub const MANAGEMENT: u8 = 1 << 1;
    /// Both classes: what a protected port accepts.
    pub const ANY: u8 = RELAY | MANAGEMENT;
}

/// Map names, which are also the file names under the bpffs pin directory.
/// The kernel truncates map names to 15 bytes, so every name fits in that.
pub mod maps {
    /// `Array<Settings>`, one entry.
    pub const SETTINGS: &str = "GW_SETTINGS";
    /// `Array<BucketWord>`: first level of the IPv4 range sets, both generations.
    pub const BUCKETS_V4: &str = "GW_BUCKETS_V4";
    /// `Array<BucketWord>`: first level of the IPv6 range sets, both generations.
    pub const BUCKETS_V6: &str = "GW_BUCKETS_V6";
    /// `HashMap<PrefixKey, u32>`: prefixes longer than [`super::BUCKET_BITS`].
    pub const PREFIXES: &str = "GW_PREFIXES";
    /// `Array<LengthList>`: which long prefix lengths exist, per generation and family.
    pub const LENGTHS: &str = "GW_LENGTHS";
    /// `HashMap<BucketKey, BucketLengths>`: the long prefix lengths inside
    /// one partial bucket, so a lookup tries only those.
    pub const BUCKET_LENGTHS: &str = "GW_BUCKET_LENS";
    /// `Array<u64>`: the classes a destination port accepts, by `port_index`
    /// (0: not guarded). 64-bit so the mmapped array has no hidden stride.
    pub const PORTS: &str = "GW_PORTS";
    /// `PerCpuArray<Counter>`: packets and bytes by `Reason` (and monitor flag).
    pub const COUNTERS: &str = "GW_COUNTERS";
    /// `PerCpuArray<DropRecord>`: the in-kernel drop aggregation slots.
    pub const DROP_SLOTS: &str = "GW_DROP_SLOTS";
    /// `RingBuf` of `DropRecord`.
    pub const DROP_EVENTS: &str = "GW_DROP_EVENTS";
    /// `LruHashMap<FragmentKey, u32>`: first fragments that passed, so later
    /// fragments of the same datagram follow them.
    pub const FRAGMENTS: &str = "GW_FRAGMENTS";

    /// Prefixes longer than [`super::BUCKET_BITS`], over both families and both
    /// generations. The map is allocated on demand (`BPF_F_NO_PREALLOC`).
    pub const PREFIXES_MAX: u32 = 1 << 20;
    /// Aggregation slots per CPU for single flows; a power of two (the slot
    /// is a masked hash). The map holds `super::COUNTERS_MAX` more slots
    /// after them, one per counter index, where sources seen only once are
    /// summed (see `super::family::MANY`).
    pub const DROP_FLOW_SLOTS: u32 = 1024;
    /// Entries of the drop-slot map.
    pub const DROP_SLOTS_MAX: u32 = DROP_FLOW_SLOTS + super::COUNTERS_MAX;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const DROP_EVENTS_BYTES: u32 = 1 << 20;
    /// Fragmented datagrams tracked at once.
    pub const FRAGMENTS_MAX: u32 = 16384;
}

/// Version of the map layout (names, key and value types, sizes). Pinned
/// maps live in a directory named after it, so an upgrade that changes a
/// map starts from fresh maps (and swaps the program into the pinned link as
/// usual) instead of failing to reuse incompatible ones. Bump it with any
/// change to a map definition.
pub const MAPS_LAYOUT_VERSION: u32 = 1;

/// The name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "gateway_xdp";

/// How many leading address bits index the first-level bucket array.
///
/// Every address resolves with one array read unless its /24 holds a longer
/// prefix. /24 is the longest prefix IPv4 routing accepts on the internet, so
/// relay lists almost never make a bucket partial, and random (spoofed)
/// sources miss at the first level whatever the size of the list.
pub const BUCKET_BITS: u32 = 24;
/// Buckets per [`BucketWord`]: each bucket is a 4-bit nibble.
pub const BUCKETS_PER_WORD: u32 = 16;
/// Words in one generation of one family's bucket array (8 MiB).
pub const BUCKET_WORDS: u32 = (1 << BUCKET_BITS) / BUCKETS_PER_WORD;
/// Nibble bit set when the bucket holds prefixes longer than [`BUCKET_BITS`].
pub const BUCKET_PARTIAL: u8 = 1 << 3;

/// Sixteen 4-bit buckets. A nibble holds the classes of every address in its
/// /24 (bits 0-1), and [`BUCKET_PARTIAL`] when a longer prefix inside the /24
/// must be looked up in [`maps::PREFIXES`]; the nibble's classes then apply
/// only where no longer prefix matches.
pub type BucketWord = u64;

/// Address family tags used in keys and records.
pub mod family {
    /// IPv4.
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
    /// In a [`super::DropRecord`]: the sum of drops from sources that sent a
    /// single packet in their window (a spoofed-source flood); `src` is
    /// zero. Reporting each of them would cost a ring-buffer record per
    /// packet exactly when packets are cheapest to drop.
    pub const MANY: u8 = 0xff;
}

/// Key of [`maps::PREFIXES`]: one prefix longer than [`BUCKET_BITS`] in one
/// generation. Its value is the union of the classes of every configured
/// prefix that contains it, so the longest match alone gives the answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// 0 or 1: which generation of the range set this entry belongs to.
    pub generation: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Prefix length in bits.
    pub len: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
    /// The address masked to `len` bits; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}

/// Key of [`maps::BUCKET_LENGTHS`]: one partial bucket in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// 0 or 1.
    pub generation: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// The top [`BUCKET_BITS`] bits of the addresses in the bucket.
    pub bucket: u32,
}

/// The long prefix lengths inside one bucket, longest first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLengths {
    /// Valid entries in `lens`, or [`BucketLengths::USE_GLOBAL`].
    pub count: u8,
    /// Prefix lengths, strictly decreasing.
    pub lens: [u8; 15],
}

impl BucketLengths {
    /// The bucket holds more lengths than fit: use the family's [`LengthList`].
    pub const USE_GLOBAL: u8 = 0xff;
}

/// Long prefix lengths present in one generation of one family, longest first,
/// so the kernel tries only lengths that exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthList {
    /// Number of valid entries in `lens`.
    pub count: u32,
    /// Prefix lengths, strictly decreasing, each above [`BUCKET_BITS`].
    pub lens: [u8; 104],
}

/// Index of a generation/family pair in [`maps::LENGTHS`].
pub const fn lengths_index(generation: u32, family: u8) -> u32 {
    generation * 2 + if family == family::V6 { 1 } else { 0 }
}

/// Index of a port in [`maps::PORTS`]: TCP ports first, then UDP ports.
pub const fn port_index(is_udp: bool, port: u16) -> u32 {
    (if is_udp { 1 << 16 } else { 0 }) | port as u32
}
/// Entries in [`maps::PORTS`].
pub const PORTS_MAX: u32 = 2 << 16;

/// Runtime switches, read by the program on every packet, so that mode
/// changes and range-set swaps need no reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`Settings::STRICT`] | [`Settings::MONITOR`] | [`Settings::ENFORCING`].
    pub flags: u32,
    /// The range-set generation in use (0 or 1).
    pub generation: u32,
}

impl Settings {
    /// Guard every destination port, not just the protected ones.
    pub const STRICT: u32 = 1 << 0;
    /// Count what would be dropped, drop nothing.
    pub const MONITOR: u32 = 1 << 1;
    /// Set once userspace has written a complete range set. Until then the
    /// program passes everything (counted as [`Reason::NotConfigured`]), so an
    /// attach that races the first write never locks the host out.
    pub const ENFORCING: u32 = 1 << 2;
}

/// Why a packet got its verdict. The discriminant indexes [`maps::COUNTERS`];
/// in monitor mode the drop reasons are counted at `reason + Reason::COUNT`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Source inside a relay range.
    AllowedRelay = 0,
    /// Source inside a management range.
    AllowedManagement = 1,
    /// Destination port not guarded (port mode only).
    UnguardedPort = 2,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 3,
    /// Strict mode: a reply on a connection this host opened (socket lookup).
    HostConnection = 4,
    /// Strict mode: ICMP a host needs (errors, PMTU, neighbour discovery) or DHCP.
    HostEssential = 5,
    /// A later fragment of a datagram whose first fragment passed.
    TrackedFragment = 6,
    /// No range set loaded yet: everything passes.
    NotConfigured = 7,
    /// Source outside the ranges the destination port accepts.
    DropNotAllowed = 8,
    /// Truncated or inconsistent headers.
    DropMalformed = 9,
    /// A later fragment whose first fragment was never seen passing.
    DropUntrackedFragment = 10,
}

impl Reason {
    /// Number of reasons; counters hold twice as many slots (monitor copies).
    pub const COUNT: u32 = 11;
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; 11] = [
        Reason::AllowedRelay,
        Reason::AllowedManagement,
        Reason::UnguardedPort,
        Reason::NotIp,
        Reason::HostConnection,
        Reason::HostEssential,
        Reason::TrackedFragment,
        Reason::NotConfigured,
        Reason::DropNotAllowed,
        Reason::DropMalformed,
        Reason::DropUntrackedFragment,
    ];

    /// Whether the packet is dropped (or, in monitor mode, would be).
    pub const fn is_drop(self) -> bool {
        self as u32 >= Reason::DropNotAllowed as u32
    }

    /// A stable snake_case name for stats output and audit records.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::AllowedRelay => "allowed_relay",
            Reason::AllowedManagement => "allowed_management",
            Reason::UnguardedPort => "unguarded_port",
            Reason::NotIp => "not_ip",
            Reason::HostConnection => "host_connection",
            Reason::HostEssential => "host_essential",
            Reason::TrackedFragment => "tracked_fragment",
            Reason::NotConfigured => "not_configured",
            Reason::DropNotAllowed => "dropped_not_allowed",
            Reason::DropMalformed => "dropped_malformed",
            Reason::DropUntrackedFragment => "dropped_untracked_fragment",
        }
    }

    /// The reason for a counter slot index, with the monitor flag.
    pub const fn from_index(index: u32) -> Option<(Reason, bool)> {
        let monitor = index >= Reason::COUNT;
        let base = index % Reason::COUNT;
        if index >= 2 * Reason::COUNT {
            return None;
        }
        Some((Reason::ALL[base as usize], monitor))
    }
}

/// Packets and bytes for one reason on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (frame length as seen by XDP).
    pub bytes: u64,
}

/// Counter slots: every reason, then every reason again for monitor mode.
pub const COUNTERS_MAX: u32 = 2 * Reason::COUNT;

/// Drops from one source to one destination port, aggregated in the kernel.
/// The same layout is the aggregation slot and the ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRecord {
    /// Source address; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    /// [`family::V4`], [`family::V6`] or [`family::MANY`]; 0 marks an empty slot.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// Destination port in host byte order (0 when the packet has none).
    pub dst_port: u16,
    /// [`Reason`] discriminant.
    pub reason: u8,
    /// 1 when counted in monitor mode (the packet was not dropped).
    pub monitor: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// Packets aggregated into this record.
    pub packets: u64,
    /// Bytes aggregated into this record.
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns` of the first packet (CLOCK_MONOTONIC_COARSE).
    pub first_ns: u64,
    /// Same clock, last packet.
    pub last_ns: u64,
}

/// How long (ns) a drop slot aggregates before it is reported.
pub const DROP_REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// Key of [`maps::FRAGMENTS`]: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentKey {
    /// Source address; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes.
    pub dst: [u8; 16],
    /// Fragment identification (IPv4: 16 bits; IPv6: 32 bits).
    pub id: u32,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Upper-layer protocol.
    pub protocol: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `repr(C)`, `Copy`, contain only integers and
    // byte arrays, and have no implicit padding (explicit `pad` fields).
    unsafe impl aya::Pod for super::PrefixKey {}
    unsafe impl aya::Pod for super::LengthList {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::BucketLengths {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DropRecord {}
    unsafe impl aya::Pod for super::FragmentKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<PrefixKey>(), 20);
        assert_eq!(size_of::<LengthList>(), 108);
        assert_eq!(size_of::<BucketKey>(), 8);
        assert_eq!(size_of::<BucketLengths>(), 16);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<DropRecord>(), 16 + 8 + 32);
        assert_eq!(size_of::<FragmentKey>(), 40);
    }

    #[test]
    fn reasons_round_trip_through_counter_index() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as u32, i as u32);
            assert_eq!(Reason::from_index(i as u32), Some((*reason, false)));
            assert_eq!(
                Reason::from_index(i as u32 + Reason::COUNT),
                Some((*reason, true))
            );
        }
        assert_eq!(Reason::from_index(COUNTERS_MAX), None);
    }
}
