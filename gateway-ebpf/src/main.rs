//! The XDP relay-range filter.
//!
//! For every inbound frame: parse Ethernet (up to two VLAN tags), IPv4 or
//! IPv6 (options, extension headers, fragments), find the classes of the
//! source address (relay, management) and the classes the destination port
//! accepts, and pass or drop. Every verdict is counted per CPU by reason;
//! drops are aggregated per (source, protocol, port) and reported through a
//! ring buffer. See `gateway-common` for the map layouts and the userspace
//! `gateway::xdp` module for how the maps are filled.
//!
//! Policy, in order:
//! 1. Before userspace has written a range set, everything passes.
//! 2. Frames that are not IPv4/IPv6 pass (ARP, LLDP, ...).
//! 3. Malformed IP frames (truncated, bad IHL or lengths, too many VLAN tags
//!    or extension headers, an L4 header cut short) are dropped.
//! 4. Later fragments carry no ports: they pass when the source is allowed or
//!    when their datagram's first fragment passed (tracked in an LRU map),
//!    and are dropped otherwise. A datagram cannot be reassembled without its
//!    first fragment, which is judged with its ports like any packet.
//! 5. Otherwise a packet passes when its source has a class the destination
//!    port accepts. Unguarded ports accept everyone in port mode, and need an
//!    allowed source in strict mode, where replies on connections this host
//!    opened (found with a socket lookup) and the ICMP and DHCP a host needs
//!    also pass.
//! 6. In monitor mode, drops are counted and reported but the packet passes.
// Only the bpfel-unknown-none build is the XDP object; a host build (as in
// `cargo clippy --workspace`) is an empty program, so the code still gets
// checked.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, xdp_action},
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_loop, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use gateway_common::{
    BUCKET_PARTIAL, BUCKET_WORDS, BUCKETS_PER_WORD, BucketKey, BucketLengths, BucketWord,
    COUNTERS_MAX, Counter, DROP_REPORT_INTERVAL_NS, DropRecord, FragmentKey, LengthList, PORTS_MAX,
    PrefixKey, Reason, Settings, class, family, lengths_index, maps, port_index,
};

#[map(name = "GW_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// `BPF_F_MMAPABLE`: userspace writes whole generations of the bucket
/// arrays and the port table through a shared mapping, not a syscall per entry.
const MMAPABLE: u32 = 1 << 10;

#[map(name = "GW_BUCKETS_V4")]
static BUCKETS_V4: Array<BucketWord> = Array::pinned(2 * BUCKET_WORDS, MMAPABLE);

#[map(name = "GW_BUCKETS_V6")]
static BUCKETS_V6: Array<BucketWord> = Array::pinned(2 * BUCKET_WORDS, MMAPABLE);

/// `BPF_F_NO_PREALLOC`: the long-prefix table is usually nearly empty.
const NO_PREALLOC: u32 = 1;

#[map(name = "GW_PREFIXES")]
static PREFIXES: HashMap<PrefixKey, u32> = HashMap::pinned(maps::PREFIXES_MAX, NO_PREALLOC);

#[map(name = "GW_LENGTHS")]
static LENGTHS: Array<LengthList> = Array::pinned(4, 0);

#[map(name = "GW_BUCKET_LENS")]
static BUCKET_LENGTHS: HashMap<BucketKey, BucketLengths> =
    HashMap::pinned(maps::PREFIXES_MAX, NO_PREALLOC);

#[map(name = "GW_PORTS")]
static PORTS: Array<u64> = Array::pinned(PORTS_MAX, MMAPABLE);

#[map(name = "GW_COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTERS_MAX, 0);

#[map(name = "GW_DROP_SLOTS")]
static DROP_SLOTS: PerCpuArray<DropRecord> = PerCpuArray::pinned(maps::DROP_SLOTS_MAX, 0);

#[map(name = "GW_DROP_EVENTS")]
static DROP_EVENTS: RingBuf = RingBuf::pinned(maps::DROP_EVENTS_BYTES, 0);

#[map(name = "GW_FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragmentKey, u32> = LruHashMap::pinned(maps::FRAGMENTS_MAX, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags parsed before a frame counts as malformed (802.1Q and QinQ).
const VLAN_MAX_DEPTH: usize = 2;
/// IPv6 extension headers walked before a packet counts as malformed.
const IPV6_EXT_MAX: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// `BPF_F_CURRENT_NETNS` for the socket-lookup helpers: the netns of the
/// device the packet arrived on.
const CURRENT_NETNS: u64 = u32::MAX as u64; // (u32)-1, as the kernel expects
const TCP_LISTEN: u32 = 10;
const TCP_ESTABLISHED: u32 = 1;
/// `BPF_RB_NO_WAKEUP`: userspace polls the ring on a timer, so a flood never
/// costs a wakeup per record.
const RB_NO_WAKEUP: u64 = 1;

/// What the parser learned about a packet.
struct Packet {
    family: u8,
    /// Source address as the raw bytes in four native-endian words (IPv4 in
    /// the first): the same bytes as the `[u8; 16]` of the map keys, moved
    /// four at a time.
    src: [u32; 4],
    /// Destination address, same encoding.
    dst: [u32; 4],
    protocol: u8,
    /// Offset of the L4 header (valid when `later_fragment` is false).
    l4: usize,
    /// Not the first fragment: no L4 header.
    later_fragment: bool,
    /// First fragment of a fragmented datagram.
    first_fragment: bool,
    fragment_id: u32,
    /// The protocol named by the fragmentation header (IPv4: the protocol
    /// field; IPv6: the fragment header's next header), the same in every
    /// fragment of a datagram.
    fragment_protocol: u8,
    /// Source and destination port of TCP and UDP (first fragments too).
    ports: Option<(u16, u16)>,
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(settings) = SETTINGS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let settings = *settings;
    if settings.flags & Settings::ENFORCING == 0 {
        count(Reason::NotConfigured as u32, len);
        return xdp_action::XDP_PASS;
    }
    let (reason, packet) = match parse(&ctx) {
        Ok(Some(packet)) => (decide(&ctx, &settings, &packet), Some(packet)),
        Ok(None) => (Reason::NotIp, None),
        Err(()) => (Reason::DropMalformed, None),
    };
    let monitor = settings.flags & Settings::MONITOR != 0;
    if !reason.is_drop() {
        count(reason as u32, len);
        return xdp_action::XDP_PASS;
    }
    report_drop(packet.as_ref(), reason, monitor, len);
    if monitor {
        count(reason as u32 + Reason::COUNT, len);
        xdp_action::XDP_PASS
    } else {
        count(reason as u32, len);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn count(index: u32, len: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while XDP runs here.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

/// `N` bytes of the frame at `offset`, bounds-checked once, read by field.
///
/// `data_end` is read with a volatile load so that LLVM cannot prove this
/// check redundant from earlier length arithmetic and drop it: the verifier
/// only accepts packet reads guarded by a comparison against `data_end`.
///
/// Multi-byte fields are read as aligned 16-bit words: every field the
/// filter reads sits at an even offset from an even `data` (Ethernet, VLAN
/// tags, IPv4 options and IPv6 extension headers all come in multiples of
/// two bytes), and one 2-byte load beats the byte loads and shifts LLVM
/// emits for unaligned reads on BPF.
#[derive(Clone, Copy)]
struct Span {
    ptr: usize,
}

#[inline(always)]
fn span<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<Span, ()> {
    let (start, end) = bounds(ctx);
    if start + offset + N > end {
        return Err(());
    }
    Ok(Span {
        ptr: start + offset,
    })
}

/// Whether the frame holds at least `len` bytes.
#[inline(always)]
fn fits(ctx: &XdpContext, len: usize) -> bool {
    let (start, end) = bounds(ctx);
    start + len <= end
}

/// `data` and `data_end`, read with volatile loads so that LLVM cannot
/// reuse one check to drop another (see [`Span`]).
#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: reading fields of the live context.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

impl Span {
    #[inline(always)]
    fn u8(self, i: usize) -> u8 {
        // SAFETY: `i` is below the N bytes checked in `span`.
        unsafe { *((self.ptr + i) as *const u8) }
    }

    /// The 16-bit word at even offset `i`, bytes in memory order.
    #[inline(always)]
    fn raw16(self, i: usize) -> u16 {
        // SAFETY: within the checked bytes; 2-byte aligned (see `Span`).
        unsafe { ((self.ptr + i) as *const u16).read() }
    }

    /// A big-endian (network order) 16-bit field.
    #[inline(always)]
    fn be16(self, i: usize) -> u16 {
        u16::from_be(self.raw16(i))
    }

    /// Four bytes at even offset `i` as a native-endian word of the same bytes.
    #[inline(always)]
    fn raw32(self, i: usize) -> u32 {
        u32::from_ne_bytes(
            (u32::from(self.raw16(i)) | u32::from(self.raw16(i + 2)) << 16).to_le_bytes(),
        )
    }
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    Ok(span::<2>(ctx, offset)?.be16(0))
}

/// Parses L2/L3 (and checks that L4 is present). `Ok(None)` means not IP.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Packet>, ()> {
    let mut ethertype = load_be16(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    for _ in 0..VLAN_MAX_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = load_be16(ctx, l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3).map(Some),
        ETH_P_IPV6 => parse_ipv6(ctx, l3).map(Some),
        // Still a VLAN tag after VLAN_MAX_DEPTH: we cannot see what it carries.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, ()> {
    let header = span::<20>(ctx, l3)?;
    let version_ihl = header.u8(0);
    if version_ihl >> 4 != 4 {
        return Err(());
    }
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(());
    }
    let total_len = header.be16(2) as usize;
    if total_len < header_len || !fits(ctx, l3 + total_len) {
        return Err(());
    }
    let fragment = header.be16(6);
    let offset = fragment & 0x1fff;
    let more_fragments = fragment & 0x2000 != 0;
    let protocol = header.u8(9);
    // RFC 1858: a TCP fragment at offset 8 can only be an attempt to rewrite
    // the header of the first fragment.
    if offset == 1 && protocol == IPPROTO_TCP {
        return Err(());
    }
    let mut packet = Packet {
        family: family::V4,
        src: [header.raw32(12), 0, 0, 0],
        dst: [header.raw32(16), 0, 0, 0],
        protocol,
        l4: l3 + header_len,
        later_fragment: offset != 0,
        first_fragment: offset == 0 && more_fragments,
        fragment_id: header.be16(4) as u32,
        fragment_protocol: protocol,
        ports: None,
    };
    packet.ports = read_ports(ctx, &packet, l3 + total_len)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, ()> {
    let header = span::<40>(ctx, l3)?;
    if header.u8(0) >> 4 != 6 {
        return Err(());
    }
    let payload_len = header.be16(4) as usize;
    let end = l3 + 40 + payload_len;
    if !fits(ctx, end) {
        return Err(());
    }
    let mut packet = Packet {
        family: family::V6,
        src: [
            header.raw32(8),
            header.raw32(12),
            header.raw32(16),
            header.raw32(20),
        ],
        dst: [
            header.raw32(24),
            header.raw32(28),
            header.raw32(32),
            header.raw32(36),
        ],
        protocol: header.u8(6),
        l4: l3 + 40,
        later_fragment: false,
        first_fragment: false,
        fragment_id: 0,
        fragment_protocol: 0,
        ports: None,
    };
    let mut walked = 0;
    while walked < IPV6_EXT_MAX {
        let next = packet.protocol;
        let offset = packet.l4;
        // Keeps the offset bounded for the verifier; no real chain is longer.
        if offset > 1024 {
            return Err(());
        }
        if !matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        ) {
            break;
        }
        let ext = span::<8>(ctx, offset)?;
        let ext_len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => (ext.u8(1) as usize + 1) * 8,
            IPPROTO_AH => (ext.u8(1) as usize + 2) * 4,
            IPPROTO_FRAGMENT => {
                let fragment = ext.be16(2);
                packet.fragment_id = u32::from(ext.be16(4)) << 16 | u32::from(ext.be16(6));
                packet.fragment_protocol = ext.u8(0);
                if fragment >> 3 != 0 {
                    packet.later_fragment = true;
                } else {
                    // An atomic fragment (offset 0, no M flag) is a whole datagram.
                    packet.first_fragment = fragment & 1 != 0;
                }
                8
            }
            _ => break,
        };
        packet.protocol = ext.u8(0);
        packet.l4 = offset + ext_len;
        walked += 1;
        if packet.l4 > end {
            return Err(());
        }
        if packet.later_fragment {
            return Ok(packet);
        }
    }
    if walked == IPV6_EXT_MAX
        && matches!(
            packet.protocol,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
        )
    {
        return Err(());
    }
    packet.ports = read_ports(ctx, &packet, end)?;
    Ok(packet)
}

/// The ports of TCP and UDP packets (first fragments included), which must
/// carry at least the 8 bytes of L4 header that hold them, inside the IP
/// datagram; `Ok(None)` for other protocols and later fragments.
#[inline(always)]
fn read_ports(
    ctx: &XdpContext,
    packet: &Packet,
    datagram_end: usize,
) -> Result<Option<(u16, u16)>, ()> {
    if packet.later_fragment || !matches!(packet.protocol, IPPROTO_TCP | IPPROTO_UDP) {
        return Ok(None);
    }
    if packet.l4 + 8 > datagram_end || packet.l4 > 2048 {
        return Err(());
    }
    let header = span::<8>(ctx, packet.l4)?;
    Ok(Some((header.be16(0), header.be16(2))))
}

#[inline(always)]
fn decide(ctx: &XdpContext, settings: &Settings, packet: &Packet) -> Reason {
    let source = source_class(settings.generation, packet.family, &packet.src);
    if packet.later_fragment {
        return if source & class::RELAY != 0 {
            Reason::AllowedRelay
        } else if source & class::MANAGEMENT != 0 {
            Reason::AllowedManagement
        } else if unsafe { FRAGMENTS.get(fragment_key(packet)) }.is_some() {
            Reason::TrackedFragment
        } else {
            Reason::DropUntrackedFragment
        };
    }
    let strict = settings.flags & Settings::STRICT != 0;
    let mut accepted = match packet.ports {
        Some((_, dst_port)) => port_classes(packet.protocol == IPPROTO_UDP, dst_port),
        None => 0,
    };
    if accepted == 0 {
        if !strict {
            return track_first_fragment(packet, source, Reason::UnguardedPort);
        }
        accepted = class::ANY;
    }
    let reason = if source & accepted & class::RELAY != 0 {
        Reason::AllowedRelay
    } else if source & accepted & class::MANAGEMENT != 0 {
        Reason::AllowedManagement
    } else if strict && host_essential(ctx, packet) {
        Reason::HostEssential
    } else if strict && host_connection(ctx, packet) {
        Reason::HostConnection
    } else {
        Reason::DropNotAllowed
    };
    track_first_fragment(packet, source, reason)
}

/// Remembers a first fragment that passed from a source that would not pass
/// on its own, so the rest of its datagram follows it.
#[inline(always)]
fn track_first_fragment(packet: &Packet, source: u8, reason: Reason) -> Reason {
    if packet.first_fragment && source == 0 && !reason.is_drop() {
        let _ = FRAGMENTS.insert(fragment_key(packet), 1, 0);
    }
    reason
}

#[inline(always)]
fn fragment_key(packet: &Packet) -> FragmentKey {
    FragmentKey {
        src: address_bytes(&packet.src),
        dst: address_bytes(&packet.dst),
        id: packet.fragment_id,
        family: packet.family,
        protocol: packet.fragment_protocol,
        pad: [0; 2],
    }
}

/// The `[u8; 16]` form of an address, as map keys and records hold it.
#[inline(always)]
fn address_bytes(words: &[u32; 4]) -> [u8; 16] {
    // SAFETY: same size, both plain data; the words hold the bytes in order.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(*words) }
}

#[inline(always)]
fn port_classes(is_udp: bool, port: u16) -> u8 {
    PORTS
        .get(port_index(is_udp, port))
        .map(|classes| *classes as u8)
        .unwrap_or(0)
}

/// The classes of a source address: one array read, and only for /24s that
/// hold longer prefixes, a hash lookup for the bucket's lengths and one per
/// length present in it.
#[inline(always)]
fn source_class(generation: u32, family: u8, addr: &[u32; 4]) -> u8 {
    let top = u32::from_be(addr[0]) >> 8;
    let index = generation * BUCKET_WORDS + top / BUCKETS_PER_WORD;
    let buckets = if family == family::V4 {
        &BUCKETS_V4
    } else {
        &BUCKETS_V6
    };
    let Some(word) = buckets.get(index) else {
        return 0;
    };
    let nibble = ((*word >> ((top % BUCKETS_PER_WORD) * 4)) & 0xf) as u8;
    if nibble & BUCKET_PARTIAL == 0 {
        return nibble & class::ANY;
    }
    long_prefix_class(generation, family, addr, top).unwrap_or(nibble & class::ANY)
}

/// State of a long-prefix search, shared with [`long_prefix_step`].
#[repr(C)]
struct LongPrefixSearch {
    key: PrefixKey,
    addr: [u32; 4],
    /// The bucket's own lengths, unless `global` says to use [`LENGTHS`].
    lens: [u8; 16],
    global: u32,
    lengths_index: u32,
    /// `FOUND | classes` once a prefix matched.
    result: u32,
}

const FOUND: u32 = 1 << 31;

/// Tries the long prefix lengths present in the address's bucket, longest
/// first. The search runs under `bpf_loop` so the verifier checks its body
/// once, not once per length for every parsing path that reaches it.
#[inline(always)]
fn long_prefix_class(generation: u32, family: u8, addr: &[u32; 4], bucket: u32) -> Option<u8> {
    let bucket_key = BucketKey {
        generation: generation as u8,
        family,
        pad: [0; 2],
        bucket,
    };
    // SAFETY: the value is plain data copied out immediately.
    let bucket_lengths = *unsafe { BUCKET_LENGTHS.get(bucket_key) }?;
    let lengths_index = lengths_index(generation, family);
    let (count, global) = if bucket_lengths.count == BucketLengths::USE_GLOBAL {
        (LENGTHS.get(lengths_index)?.count.min(104), 1)
    } else {
        (u32::from(bucket_lengths.count).min(15), 0)
    };
    let mut lens = [0u8; 16];
    lens[..15].copy_from_slice(&bucket_lengths.lens);
    let mut search = LongPrefixSearch {
        key: PrefixKey {
            generation: generation as u8,
            family,
            len: 0,
            pad: 0,
            addr: [0; 16],
        },
        addr: *addr,
        lens,
        global,
        lengths_index,
        result: 0,
    };
    if count == 1 && global == 0 {
        // The usual case (one relay range per /24): no loop to set up.
        try_length(&mut search, lens[0]);
    } else {
        // SAFETY: the callback only touches `search` through the pointer it
        // is given.
        unsafe {
            bpf_loop(
                count,
                long_prefix_step as *mut core::ffi::c_void,
                &mut search as *mut LongPrefixSearch as *mut core::ffi::c_void,
                0,
            )
        };
    }
    (search.result & FOUND != 0).then_some(search.result as u8)
}

/// Looks `addr` up at one prefix length; records the classes on a hit.
#[inline(always)]
fn try_length(search: &mut LongPrefixSearch, len: u8) -> bool {
    search.key.len = len;
    search.key.addr = masked(&search.addr, len);
    // SAFETY: the value is a plain u32 copied out immediately.
    match unsafe { PREFIXES.get(search.key) } {
        Some(classes) => {
            search.result = FOUND | (*classes & 0xff);
            true
        }
        None => false,
    }
}

/// One `bpf_loop` iteration: look up the `i`-th longest length. Returns 1
/// (stop) on a hit.
extern "C" fn long_prefix_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given in long_prefix_class.
    let search = unsafe { &mut *(ctx as *mut LongPrefixSearch) };
    let len = if search.global != 0 {
        let Some(lengths) = LENGTHS.get(search.lengths_index) else {
            return 1;
        };
        match lengths.lens.get(i as usize) {
            Some(len) => *len,
            None => return 1,
        }
    } else {
        match search.lens.get(i as usize) {
            Some(len) => *len,
            None => return 1,
        }
    };
    i64::from(try_length(search, len))
}

/// `addr` with everything past `len` bits cleared, computed on two 64-bit
/// halves: a per-byte version branches 16 times, which multiplies the
/// verifier's states.
#[inline(always)]
fn masked(addr: &[u32; 4], len: u8) -> [u8; 16] {
    let len = u32::from(len);
    let hi = u64::from(u32::from_be(addr[0])) << 32 | u64::from(u32::from_be(addr[1]));
    let lo = u64::from(u32::from_be(addr[2])) << 32 | u64::from(u32::from_be(addr[3]));
    let hi_mask = if len >= 64 {
        u64::MAX
    } else if len == 0 {
        0
    } else {
        u64::MAX << (64 - len)
    };
    let lo_mask = if len >= 128 {
        u64::MAX
    } else if len <= 64 {
        0
    } else {
        u64::MAX << (128 - len)
    };
    let hi = (hi & hi_mask).to_be();
    let lo = (lo & lo_mask).to_be();
    // SAFETY: two big-endian halves are the sixteen address bytes in order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([hi, lo]) }
}

/// ICMP a host cannot work without, and DHCP replies to its client.
#[inline(always)]
fn host_essential(ctx: &XdpContext, packet: &Packet) -> bool {
    match (packet.protocol, packet.ports) {
        // DHCPv4 server -> client, DHCPv6 server -> client.
        (IPPROTO_UDP, Some((67, 68))) | (IPPROTO_UDP, Some((547, 546))) => true,
        (IPPROTO_ICMP, _) if packet.family == family::V4 => {
            // Destination unreachable (incl. fragmentation needed, PMTU) and
            // time exceeded: errors about connections this host made.
            matches!(icmp_type(ctx, packet), Some(3) | Some(11))
        }
        (IPPROTO_ICMPV6, _) if packet.family == family::V6 => {
            // 1 unreachable, 2 packet too big (PMTU), 3 time exceeded,
            // 4 parameter problem; 133-137 neighbour discovery.
            matches!(icmp_type(ctx, packet), Some(1..=4) | Some(133..=137))
        }
        _ => false,
    }
}

/// The ICMP type, read with the rest of the 4-byte ICMP header (a one-byte
/// bounds check is one the verifier cannot follow once LLVM rewrites it).
#[inline(always)]
fn icmp_type(ctx: &XdpContext, packet: &Packet) -> Option<u8> {
    if packet.l4 > 2048 {
        return None;
    }
    span::<4>(ctx, packet.l4).ok().map(|header| header.u8(0))
}

/// Strict mode's answer to "is this a reply on a connection this host
/// opened?": the kernel's own socket tables. TCP must find a socket that is
/// not listening (SYN-SENT, ESTABLISHED, ...); UDP a connected socket.
#[inline(always)]
fn host_connection(ctx: &XdpContext, packet: &Packet) -> bool {
    let Some((src_port, dst_port)) = packet.ports else {
        return false;
    };
    let (sport, dport) = (src_port.to_be(), dst_port.to_be());
    let tcp = packet.protocol == IPPROTO_TCP;
    if packet.family == family::V4 {
        let mut tuple = SockTupleV4 {
            saddr: packet.src[0],
            daddr: packet.dst[0],
            sport,
            dport,
        };
        socket_lookup(ctx, &mut tuple, tcp)
    } else {
        let mut tuple = SockTupleV6 {
            saddr: packet.src,
            daddr: packet.dst,
            sport,
            dport,
        };
        socket_lookup(ctx, &mut tuple, tcp)
    }
}

#[inline(always)]
fn socket_lookup<T>(ctx: &XdpContext, tuple: &mut T, tcp: bool) -> bool {
    let tuple_ptr = tuple as *mut T as *mut bpf_sock_tuple;
    let size = size_of::<T>() as u32;
    let ctx_ptr = ctx.ctx as *mut core::ffi::c_void;
    // SAFETY: helper calls with a stack tuple of the stated size; the
    // returned socket is released before returning.
    unsafe {
        let sock: *mut bpf_sock = if tcp {
            bpf_skc_lookup_tcp(ctx_ptr, tuple_ptr, size, CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(ctx_ptr, tuple_ptr, size, CURRENT_NETNS, 0)
        };
        if sock.is_null() {
            return false;
        }
        let state = (*sock).state;
        bpf_sk_release(sock as *mut _);
        if tcp {
            state != TCP_LISTEN
        } else {
            state == TCP_ESTABLISHED
        }
    }
}

/// `struct bpf_sock_tuple`, IPv4 arm (addresses and ports in network order).
#[repr(C)]
struct SockTupleV4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// `struct bpf_sock_tuple`, IPv6 arm.
#[repr(C)]
struct SockTupleV6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// Aggregates a drop into this CPU's slot for its (source, protocol, port)
/// flow. A slot is sent to the ring buffer when another flow takes it or,
/// checked every 64 packets, when it is older than
/// `DROP_REPORT_INTERVAL_NS`. Flows evicted after a single packet (what a
/// spoofed-source flood looks like) are summed per reason into one record of
/// family `MANY` instead, so a flood costs no ring-buffer record per packet.
/// A full ring loses records, never counts: the counters are exact.
#[inline(always)]
fn report_drop(packet: Option<&Packet>, reason: Reason, monitor: bool, len: u64) {
    // Malformed frames have no trustworthy source: the counters cover them.
    let Some(packet) = packet else {
        return;
    };
    let dst_port = packet.ports.map(|(_, port)| port).unwrap_or(0);
    let src = &packet.src;
    let mixed =
        (src[0] ^ src[1] ^ src[2] ^ src[3] ^ (u32::from(dst_port) << 16)).wrapping_mul(0x9e37_79b1);
    let index = mixed >> (32 - maps::DROP_FLOW_SLOTS.trailing_zeros());
    let Some(slot) = DROP_SLOTS.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while XDP runs here.
    let slot = unsafe { &mut *slot };
    // SAFETY: `src` is the first field of an 8-byte aligned record.
    let slot_src = unsafe { &mut *(slot.src.as_mut_ptr() as *mut [u32; 4]) };
    if slot.family == packet.family
        && *slot_src == packet.src
        && slot.dst_port == dst_port
        && slot.protocol == packet.protocol
        && slot.reason == reason as u8
        && slot.monitor == monitor as u8
    {
        slot.packets += 1;
        slot.bytes += len;
        if slot.packets % 64 != 0 {
            return;
        }
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        slot.last_ns = now;
        if now.wrapping_sub(slot.first_ns) >= DROP_REPORT_INTERVAL_NS {
            let _ = DROP_EVENTS.output::<DropRecord>(&*slot, RB_NO_WAKEUP);
            slot.family = 0;
        }
        return;
    }
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if slot.family != 0 {
        if slot.packets > 1 {
            let _ = DROP_EVENTS.output::<DropRecord>(&*slot, RB_NO_WAKEUP);
        } else {
            add_single(
                slot.reason as u32 + if slot.monitor != 0 { Reason::COUNT } else { 0 },
                slot,
                now,
            );
        }
    }
    *slot = DropRecord {
        src: address_bytes(&packet.src),
        family: packet.family,
        protocol: packet.protocol,
        dst_port,
        reason: reason as u8,
        monitor: monitor as u8,
        pad: [0; 2],
        packets: 1,
        bytes: len,
        first_ns: now,
        last_ns: now,
    };
}

/// Adds an evicted single-packet flow to the `MANY` record of its counter
/// index, reporting that record once its window is over.
#[inline(always)]
fn add_single(counter: u32, evicted: &DropRecord, now: u64) {
    let Some(many) = DROP_SLOTS.get_ptr_mut(maps::DROP_FLOW_SLOTS + counter % COUNTERS_MAX) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while XDP runs here.
    let many = unsafe { &mut *many };
    if many.family == 0 {
        *many = DropRecord {
            family: family::MANY,
            reason: evicted.reason,
            monitor: evicted.monitor,
            first_ns: now,
            ..DropRecord::default()
        };
    }
    many.packets += evicted.packets;
    many.bytes += evicted.bytes;
    many.last_ns = now;
    if now.wrapping_sub(many.first_ns) >= DROP_REPORT_INTERVAL_NS {
        let _ = DROP_EVENTS.output::<DropRecord>(&*many, RB_NO_WAKEUP);
        many.family = 0;
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs whose last instruction is not an exit or
    // a jump; an unreachable loop here keeps LLVM honest without that.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
