//! Range sets and their compilation into the kernel's lookup tables.
//!
//! A [`RangeSet`] is the union of the relay prefixes and the management
//! prefixes. Membership, not longest match, is what the filter asks ("which
//! classes contain this address?"), so the compiled form may push classes
//! down freely:
//!
//! - a first level of 2^24 four-bit buckets per family, one per /24 (IPv4) or
//!   per top 24 bits (IPv6), holding the classes of every prefix of length
//!   ≤ 24 that covers the bucket, plus a flag when a longer prefix lies inside;
//! - for those longer prefixes, a hash table keyed by (length, masked address)
//!   whose value is the union of the classes of every prefix containing it, so
//!   the longest hit alone is the answer;
//! - the list of long prefix lengths present, longest first.
//!
//! A lookup is one array read for nearly every address, whatever the size of
//! the set; see `gateway-ebpf` for the kernel side. Nothing here touches the
//! kernel, so it is unit-tested directly.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use gateway_common::{
    BUCKET_BITS, BUCKET_PARTIAL, BUCKET_WORDS, BUCKETS_PER_WORD, BucketLengths, LengthList, class,
    family,
};
use ipnet::IpNet;

/// The allowed sources: relay prefixes and management prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    relay: Vec<IpNet>,
    management: Vec<IpNet>,
}

impl RangeSet {
    /// A set from already validated prefixes; host bits are cleared and
    /// duplicates and covered prefixes removed.
    pub fn new(relay: Vec<IpNet>, management: Vec<IpNet>) -> Self {
        Self {
            relay: IpNet::aggregate(&trunc(relay)),
            management: IpNet::aggregate(&trunc(management)),
        }
    }

    /// The relay prefixes, aggregated.
    pub fn relay(&self) -> &[IpNet] {
        &self.relay
    }

    /// The management prefixes, aggregated.
    pub fn management(&self) -> &[IpNet] {
        &self.management
    }

    /// The classes of `addr` (a bit set of [`class`] values): the reference
    /// answer the kernel tables must reproduce.
    pub fn classify(&self, addr: IpAddr) -> u8 {
        let mut classes = 0;
        if self.relay.iter().any(|net| net.contains(&addr)) {
            classes |= class::RELAY;
        }
        if self.management.iter().any(|net| net.contains(&addr)) {
            classes |= class::MANAGEMENT;
        }
        classes
    }

    /// Compiles both families into kernel tables.
    pub fn compile(&self) -> CompiledSet {
        let mut by_prefix: [BTreeMap<(u8, [u8; 16]), u8>; 2] = Default::default();
        for (nets, classes) in [
            (&self.relay, class::RELAY),
            (&self.management, class::MANAGEMENT),
        ] {
            for net in nets {
                let (fam, addr) = net_bytes(net);
                *by_prefix[fam_slot(fam)]
                    .entry((net.prefix_len(), addr))
                    .or_default() |= classes;
            }
        }
        let [v4, v6] = by_prefix;
        CompiledSet {
            v4: CompiledFamily::build(family::V4, v4),
            v6: CompiledFamily::build(family::V6, v6),
        }
    }
}

fn trunc(nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.into_iter().map(|net| net.trunc()).collect()
}

fn fam_slot(fam: u8) -> usize {
    usize::from(fam == family::V6)
}

/// The family tag and the address bytes (IPv4 in the first four).
fn net_bytes(net: &IpNet) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match net.network() {
        IpAddr::V4(addr) => {
            bytes[..4].copy_from_slice(&addr.octets());
            (family::V4, bytes)
        }
        IpAddr::V6(addr) => (family::V6, addr.octets()),
    }
}

/// `addr` with everything past `len` bits cleared.
pub(crate) fn mask(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, (out, byte)) in out.iter_mut().zip(addr).enumerate() {
        let bits = usize::from(len);
        *out = if bits >= (i + 1) * 8 {
            *byte
        } else if bits <= i * 8 {
            0
        } else {
            byte & (0xffu8 << (8 - (bits - i * 8)))
        };
    }
    out
}

/// Top [`BUCKET_BITS`] bits of an address: its bucket number.
fn bucket_of(addr: &[u8; 16]) -> u32 {
    u32::from(addr[0]) << 16 | u32::from(addr[1]) << 8 | u32::from(addr[2])
}

fn nibble(buckets: &[u64], bucket: u32) -> u8 {
    let word = buckets[(bucket / BUCKETS_PER_WORD) as usize];
    ((word >> ((bucket % BUCKETS_PER_WORD) * 4)) & 0xf) as u8
}

/// ORs `bits` into a bucket's nibble.
fn set_nibble(buckets: &mut [u64], bucket: u32, bits: u8) {
    buckets[(bucket / BUCKETS_PER_WORD) as usize] |=
        u64::from(bits) << ((bucket % BUCKETS_PER_WORD) * 4);
}

/// Both families, compiled.
#[derive(Clone, Debug)]
pub struct CompiledSet {
    /// IPv4 tables.
    pub v4: CompiledFamily,
    /// IPv6 tables.
    pub v6: CompiledFamily,
}

/// One family's tables, ready to be written into one generation.
#[derive(Clone, Debug)]
pub struct CompiledFamily {
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// All [`BUCKET_WORDS`] bucket words of the generation.
    pub buckets: Vec<u64>,
    /// Prefixes longer than [`BUCKET_BITS`]: (length, masked address, classes).
    pub long: Vec<(u8, [u8; 16], u8)>,
    /// The long lengths present, longest first.
    pub lengths: LengthList,
    /// For each partial bucket, the long lengths inside it.
    pub bucket_lengths: Vec<(u32, BucketLengths)>,
}

impl CompiledFamily {
    fn build(fam: u8, prefixes: BTreeMap<(u8, [u8; 16]), u8>) -> Self {
        let bucket_bits = BUCKET_BITS as u8;
        let mut buckets = vec![0u64; BUCKET_WORDS as usize];
        // Short prefixes fill aligned runs of buckets: whole words at a time
        // once a run covers one.
        for (&(len, addr), &classes) in prefixes.range(..(bucket_bits + 1, [0; 16])) {
            let first = bucket_of(&addr);
            let count = 1u32 << (bucket_bits - len);
            if count >= BUCKETS_PER_WORD {
                let pattern = u64::from(classes) * 0x1111_1111_1111_1111;
                let words = (first / BUCKETS_PER_WORD) as usize
                    ..((first + count) / BUCKETS_PER_WORD) as usize;
                for word in &mut buckets[words] {
                    *word |= pattern;
                }
            } else {
                for bucket in first..first + count {
                    set_nibble(&mut buckets, bucket, classes);
                }
            }
        }
        // Long prefixes: each gets the union of every prefix that contains
        // it, so the longest match alone decides in the kernel.
        let long_prefixes: Vec<_> = prefixes
            .range((bucket_bits + 1, [0; 16])..)
            .map(|(&(len, addr), &classes)| (len, addr, classes))
            .collect();
        let mut lens: Vec<u8> = long_prefixes.iter().map(|&(len, ..)| len).collect();
        lens.dedup();
        let index: HashMap<(u8, [u8; 16]), u8> = long_prefixes
            .iter()
            .map(|&(len, addr, classes)| ((len, addr), classes))
            .collect();
        let long: Vec<_> = long_prefixes
            .iter()
            .map(|&(len, addr, classes)| {
                let mut effective = classes | (nibble(&buckets, bucket_of(&addr)) & class::ANY);
                for &shorter in lens.iter().take_while(|&&l| l < len) {
                    if let Some(c) = index.get(&(shorter, mask(&addr, shorter))) {
                        effective |= c;
                    }
                }
                (len, addr, effective)
            })
            .collect();
        let mut per_bucket: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for &(len, addr, _) in &long {
            set_nibble(&mut buckets, bucket_of(&addr), BUCKET_PARTIAL);
            per_bucket.entry(bucket_of(&addr)).or_default().push(len);
        }
        let bucket_lengths = per_bucket
            .into_iter()
            .map(|(bucket, mut lens)| {
                lens.sort_unstable_by(|a, b| b.cmp(a));
                lens.dedup();
                let mut entry = BucketLengths {
                    count: lens.len() as u8,
                    lens: [0; 15],
                };
                if lens.len() > entry.lens.len() {
                    entry.count = BucketLengths::USE_GLOBAL;
                } else {
                    entry.lens[..lens.len()].copy_from_slice(&lens);
                }
                (bucket, entry)
            })
            .collect();
        let mut lengths = LengthList {
            count: lens.len() as u32,
            lens: [0; 104],
        };
        for (slot, len) in lengths.lens.iter_mut().zip(lens.iter().rev()) {
            *slot = *len;
        }
        Self {
            family: fam,
            buckets,
            long,
            lengths,
            bucket_lengths,
        }
    }

    /// The classes of `addr` according to these tables: the same steps the
    /// kernel takes, so tests can check the compiler without a kernel.
    pub fn lookup(&self, addr: &[u8; 16]) -> u8 {
        let bucket = bucket_of(addr);
        let nibble = nibble(&self.buckets, bucket);
        if nibble & BUCKET_PARTIAL == 0 {
            return nibble & class::ANY;
        }
        let Some((_, lengths)) = self.bucket_lengths.iter().find(|(b, _)| *b == bucket) else {
            return nibble & class::ANY;
        };
        let lens = if lengths.count == BucketLengths::USE_GLOBAL {
            &self.lengths.lens[..self.lengths.count as usize]
        } else {
            &lengths.lens[..usize::from(lengths.count)]
        };
        for &len in lens {
            let key = mask(addr, len);
            if let Some(&(_, _, classes)) =
                self.long.iter().find(|(l, a, _)| *l == len && *a == key)
            {
                return classes;
            }
        }
        nibble & class::ANY
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn bytes(addr: IpAddr) -> [u8; 16] {
        let mut out = [0u8; 16];
        match addr {
            IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => out = a.octets(),
        }
        out
    }

    fn check(set: &RangeSet, addrs: &[IpAddr]) {
        let compiled = set.compile();
        for addr in addrs {
            let table = if addr.is_ipv4() {
                &compiled.v4
            } else {
                &compiled.v6
            };
            assert_eq!(
                table.lookup(&bytes(*addr)),
                set.classify(*addr),
                "address {addr}"
            );
        }
    }

    #[test]
    fn prefix_edges_are_exact() {
        let set = RangeSet::new(
            nets(&[
                "203.0.113.0/24",
                "198.51.100.128/25",
                "192.0.2.7/32",
                "10.0.0.0/8",
            ]),
            nets(&["198.51.100.192/26", "2001:db8:1::/48", "2001:db8::1/128"]),
        );
        let v4 = |s: &str| IpAddr::V4(s.parse::<Ipv4Addr>().unwrap());
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        let cases = [
            (v4("203.0.112.255"), 0),
            (v4("203.0.113.0"), class::RELAY),
            (v4("203.0.113.255"), class::RELAY),
            (v4("203.0.114.0"), 0),
            (v4("198.51.100.127"), 0),
            (v4("198.51.100.128"), class::RELAY),
            (v4("198.51.100.191"), class::RELAY),
            (v4("198.51.100.192"), class::ANY),
            (v4("198.51.100.255"), class::ANY),
            (v4("192.0.2.6"), 0),
            (v4("192.0.2.7"), class::RELAY),
            (v4("192.0.2.8"), 0),
            (v4("10.255.255.255"), class::RELAY),
            (v4("11.0.0.0"), 0),
            (v6("2001:db8:0:ffff:ffff:ffff:ffff:ffff"), 0),
            (v6("2001:db8:1::"), class::MANAGEMENT),
            (v6("2001:db8:1:ffff:ffff:ffff:ffff:ffff"), class::MANAGEMENT),
            (v6("2001:db8:2::"), 0),
            (v6("2001:db8::1"), class::MANAGEMENT),
            (v6("2001:db8::2"), 0),
        ];
        let compiled = set.compile();
        for (addr, expected) in cases {
            assert_eq!(set.classify(addr), expected, "reference for {addr}");
            let table = if addr.is_ipv4() {
                &compiled.v4
            } else {
                &compiled.v6
            };
            assert_eq!(table.lookup(&bytes(addr)), expected, "tables for {addr}");
        }
    }

    #[test]
    fn nested_long_prefixes_carry_the_classes_of_their_parents() {
        // A /28 management prefix inside a /26 relay prefix inside a /8 relay.
        let set = RangeSet::new(
            nets(&["198.51.100.0/26", "2001:db8::/32"]),
            nets(&["198.51.100.16/28", "2001:db8:0:1::/64"]),
        );
        let compiled = set.compile();
        assert_eq!(compiled.v4.lengths.count, 2);
        assert_eq!(&compiled.v4.lengths.lens[..2], &[28, 26]);
        check(
            &set,
            &[
                "198.51.100.16".parse().unwrap(),
                "198.51.100.31".parse().unwrap(),
                "198.51.100.32".parse().unwrap(),
                "198.51.100.64".parse().unwrap(),
                "2001:db8:0:1::5".parse().unwrap(),
                "2001:db8:0:2::5".parse().unwrap(),
                "2001:db9::".parse().unwrap(),
            ],
        );
    }

    #[test]
    fn random_sets_match_the_reference() {
        // A small deterministic generator: no test dependency needed.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..4 {
            let mut relay = Vec::new();
            let mut management = Vec::new();
            for i in 0..200 {
                let r = next();
                let net: IpNet = if r % 2 == 0 {
                    let len = (r >> 8) as u8 % 33;
                    // Cluster addresses so prefixes nest and overlap.
                    let addr = Ipv4Addr::from(((r >> 16) as u32) & 0xc633_ffff);
                    IpNet::new(addr.into(), len).unwrap()
                } else {
                    let len = (r >> 8) as u8 % 129;
                    let addr = Ipv6Addr::from(
                        (u128::from(next()) << 64 | u128::from(next())) & !(0xffff << 96)
                            | 0x2001 << 112,
                    );
                    IpNet::new(addr.into(), len.max(16)).unwrap()
                };
                if i % 3 == 0 {
                    management.push(net);
                } else {
                    relay.push(net);
                }
            }
            let set = RangeSet::new(relay, management);
            let mut probes = Vec::new();
            for net in set.relay().iter().chain(set.management()) {
                probes.push(net.network());
                probes.push(net.broadcast());
                if let (IpAddr::V4(a), true) = (net.network(), net.prefix_len() > 0) {
                    probes.push(IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_sub(1))));
                }
            }
            for _ in 0..2000 {
                probes.push(IpAddr::V4(Ipv4Addr::from((next() as u32) & 0xc633_ffff)));
            }
            check(&set, &probes);
        }
    }
}
