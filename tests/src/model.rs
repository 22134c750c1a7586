//! A pure-Rust reference model of the filter's policy, written from the
//! policy as documented (gateway-ebpf's crate docs and the README), not from
//! the kernel code: the differential test feeds the same random frames to
//! both and expects the same verdict and reason.
//!
//! It shares no parsing code with the XDP program, and looks up sources with
//! [`RangeSet::classify`] (a linear scan over the prefixes), not with the
//! compiled bucket tables.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use gateway::{config::FilterMode, xdp::ranges::RangeSet};
use gateway_common::{Reason, class};

/// The model's configuration.
pub struct Model {
    /// Allowed sources.
    pub set: RangeSet,
    /// Ports or strict.
    pub mode: FilterMode,
    /// Ports for relay and management sources.
    pub protected: BTreeSet<u16>,
    /// Ports for management sources only.
    pub management: BTreeSet<u16>,
    /// First fragments that passed from sources that are not allowed:
    /// (src, dst, id, protocol).
    tracked: HashSet<(IpAddr, IpAddr, u32, u8)>,
}

/// Longest IPv6 extension-header chain walked.
const EXT_MAX: usize = 8;
/// Extension headers must start within this offset of the frame.
const EXT_OFFSET_MAX: usize = 1024;
/// L4 headers must start within this offset of the frame.
const L4_OFFSET_MAX: usize = 2048;

struct Parsed {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    l4: usize,
    later: bool,
    first: bool,
    id: u32,
    fragment_protocol: u8,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

impl Model {
    /// A model with no fragment seen yet.
    pub fn new(set: RangeSet, mode: FilterMode, protected: &[u16], management: &[u16]) -> Self {
        Self {
            set,
            mode,
            protected: protected.iter().copied().collect(),
            management: management.iter().copied().collect(),
            tracked: HashSet::new(),
        }
    }

    /// The verdict on `frame`: (passes, reason). Assumes no local socket
    /// matches the frame (the differential test runs in an empty namespace).
    pub fn judge(&mut self, frame: &[u8]) -> (bool, Reason) {
        let reason = match self.parse(frame) {
            Err(()) => Reason::DropMalformed,
            Ok(None) => Reason::NotIp,
            Ok(Some(p)) => self.decide(frame, &p),
        };
        (!reason.is_drop(), reason)
    }

    fn parse(&self, f: &[u8]) -> Result<Option<Parsed>, ()> {
        let mut ethertype = be16(f, 12).ok_or(())?;
        let mut l3 = 14;
        for _ in 0..2 {
            if ethertype != 0x8100 && ethertype != 0x88a8 {
                break;
            }
            ethertype = be16(f, l3 + 2).ok_or(())?;
            l3 += 4;
        }
        match ethertype {
            0x0800 => self.parse_v4(f, l3).map(Some),
            0x86dd => self.parse_v6(f, l3).map(Some),
            0x8100 | 0x88a8 => Err(()),
            _ => Ok(None),
        }
    }

    fn parse_v4(&self, f: &[u8], l3: usize) -> Result<Parsed, ()> {
        let h = f.get(l3..l3 + 20).ok_or(())?;
        if h[0] >> 4 != 4 {
            return Err(());
        }
        let header_len = usize::from(h[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if header_len < 20 || total < header_len || l3 + total > f.len() {
            return Err(());
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        let offset = frag & 0x1fff;
        let protocol = h[9];
        if offset == 1 && protocol == 6 {
            return Err(());
        }
        let p = Parsed {
            src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            protocol,
            l4: l3 + header_len,
            later: offset != 0,
            first: offset == 0 && frag & 0x2000 != 0,
            id: u32::from(u16::from_be_bytes([h[4], h[5]])),
            fragment_protocol: protocol,
        };
        check_l4(f, &p, l3 + total)?;
        Ok(p)
    }

    fn parse_v6(&self, f: &[u8], l3: usize) -> Result<Parsed, ()> {
        let h = f.get(l3..l3 + 40).ok_or(())?;
        if h[0] >> 4 != 6 {
            return Err(());
        }
        let end = l3 + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
        if end > f.len() {
            return Err(());
        }
        let mut p = Parsed {
            src: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap())),
            dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap())),
            protocol: h[6],
            l4: l3 + 40,
            later: false,
            first: false,
            id: 0,
            fragment_protocol: 0,
        };
        let is_ext = |next: u8| matches!(next, 0 | 43 | 44 | 51 | 60);
        let mut walked = 0;
        while walked < EXT_MAX {
            if p.l4 > EXT_OFFSET_MAX {
                return Err(());
            }
            if !is_ext(p.protocol) {
                break;
            }
            let e = f.get(p.l4..p.l4 + 8).ok_or(())?;
            let len = match p.protocol {
                51 => (usize::from(e[1]) + 2) * 4,
                44 => {
                    let frag = u16::from_be_bytes([e[2], e[3]]);
                    p.id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                    p.fragment_protocol = e[0];
                    if frag >> 3 != 0 {
                        p.later = true;
                    } else {
                        p.first = frag & 1 != 0;
                    }
                    8
                }
                _ => (usize::from(e[1]) + 1) * 8,
            };
            p.protocol = e[0];
            p.l4 += len;
            walked += 1;
            if p.l4 > end {
                return Err(());
            }
            if p.later {
                return Ok(p);
            }
        }
        if walked == EXT_MAX && is_ext(p.protocol) {
            return Err(());
        }
        check_l4(f, &p, end)?;
        Ok(p)
    }

    fn decide(&mut self, f: &[u8], p: &Parsed) -> Reason {
        let source = self.set.classify(p.src);
        let key = (p.src, p.dst, p.id, p.fragment_protocol);
        if p.later {
            return if source & class::RELAY != 0 {
                Reason::AllowedRelay
            } else if source & class::MANAGEMENT != 0 {
                Reason::AllowedManagement
            } else if self.tracked.contains(&key) {
                Reason::TrackedFragment
            } else {
                Reason::DropUntrackedFragment
            };
        }
        let strict = self.mode == FilterMode::Strict;
        let ports = ports(f, p);
        let mut accepted = match ports {
            Some((_, dst)) if self.management.contains(&dst) => class::MANAGEMENT,
            Some((_, dst)) if self.protected.contains(&dst) => class::ANY,
            _ => 0,
        };
        let reason = if accepted == 0 && !strict {
            Reason::UnguardedPort
        } else {
            if accepted == 0 {
                accepted = class::ANY;
            }
            if source & accepted & class::RELAY != 0 {
                Reason::AllowedRelay
            } else if source & accepted & class::MANAGEMENT != 0 {
                Reason::AllowedManagement
            } else if strict && essential(f, p, ports) {
                Reason::HostEssential
            } else {
                Reason::DropNotAllowed
            }
        };
        if p.first && source == 0 && !reason.is_drop() {
            self.tracked.insert(key);
        }
        reason
    }
}

fn check_l4(f: &[u8], p: &Parsed, datagram_end: usize) -> Result<(), ()> {
    if p.later || !matches!(p.protocol, 6 | 17) {
        return Ok(());
    }
    if p.l4 + 8 > datagram_end || p.l4 > L4_OFFSET_MAX || p.l4 + 8 > f.len() {
        return Err(());
    }
    Ok(())
}

fn ports(f: &[u8], p: &Parsed) -> Option<(u16, u16)> {
    if !matches!(p.protocol, 6 | 17) || p.l4 > L4_OFFSET_MAX {
        return None;
    }
    Some((be16(f, p.l4)?, be16(f, p.l4 + 2)?))
}

fn essential(f: &[u8], p: &Parsed, ports: Option<(u16, u16)>) -> bool {
    let icmp_type = || {
        (p.l4 <= L4_OFFSET_MAX)
            .then(|| f.get(p.l4..p.l4 + 4))
            .flatten()
            .map(|h| h[0])
    };
    match (p.protocol, ports) {
        (17, Some((67, 68))) | (17, Some((547, 546))) => true,
        (1, _) if p.src.is_ipv4() => matches!(icmp_type(), Some(3 | 11)),
        (58, _) if p.src.is_ipv6() => matches!(icmp_type(), Some(1..=4 | 133..=137)),
        _ => false,
    }
}
