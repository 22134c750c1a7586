//! Frames for `BPF_PROG_TEST_RUN`, byte by byte, so tests can build every
//! malformed shape the parser must survive (truncations, bad lengths, odd
//! header chains) as easily as well-formed packets.

use std::net::IpAddr;

/// IP protocol numbers used by the tests.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Authentication header.
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
    /// IPv6 "no next header".
    pub const NONE: u8 = 59;
}

/// What the L4 part of a frame holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A TCP header (20 bytes, SYN) with these ports.
    Tcp { src: u16, dst: u16 },
    /// A UDP header with these ports.
    Udp { src: u16, dst: u16 },
    /// ICMP (v4 or v6 by family) of this type and code.
    Icmp { kind: u8, code: u8 },
    /// Raw bytes under an explicit protocol number.
    Raw { protocol: u8, bytes: Vec<u8> },
}

impl L4 {
    fn protocol(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } if v6 => proto::ICMPV6,
            L4::Icmp { .. } => proto::ICMP,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    fn bytes(&self, payload: usize) -> Vec<u8> {
        let mut out = match self {
            L4::Tcp { src, dst } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&src.to_be_bytes());
                h[2..4].copy_from_slice(&dst.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = 0x02; // SYN
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            L4::Udp { src, dst } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&src.to_be_bytes());
                h[2..4].copy_from_slice(&dst.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
                h
            }
            L4::Icmp { kind, code } => vec![*kind, *code, 0, 0, 0, 0, 0, 0],
            L4::Raw { bytes, .. } => bytes.clone(),
        };
        out.extend(std::iter::repeat_n(0xab, payload));
        out
    }
}

/// An IPv6 extension header to put before the L4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `len8` extra 8-byte units.
    HopByHop { len8: u8 },
    /// Routing header.
    Routing { len8: u8 },
    /// Destination options.
    DestOpts { len8: u8 },
    /// Authentication header with `len4 + 2` 4-byte units.
    Auth { len4: u8 },
    /// Fragment header: offset in 8-byte units, more-fragments flag, id.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn protocol(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => proto::HOPOPTS,
            Ext::Routing { .. } => proto::ROUTING,
            Ext::DestOpts { .. } => proto::DSTOPTS,
            Ext::Auth { .. } => proto::AH,
            Ext::Fragment { .. } => proto::FRAGMENT,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { len8 } | Ext::Routing { len8 } | Ext::DestOpts { len8 } => {
                let mut h = vec![0u8; (usize::from(*len8) + 1) * 8];
                h[0] = next;
                h[1] = *len8;
                h
            }
            Ext::Auth { len4 } => {
                let mut h = vec![0u8; (usize::from(*len4) + 2) * 4];
                h[0] = next;
                h[1] = *len4;
                h
            }
            Ext::Fragment { offset, more, id } => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                h[2..4].copy_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                h[4..8].copy_from_slice(&id.to_be_bytes());
                h
            }
        }
    }
}

/// A frame description; [`Frame::build`] turns it into bytes.
#[derive(Clone, Debug)]
pub struct Frame {
    /// VLAN tags (outermost first): (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    /// Source address (the family of src decides v4 or v6).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 options bytes (a multiple of 4, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    pub ipv4_fragment: (u16, bool),
    /// IPv4 identification.
    pub ipv4_id: u16,
    /// IPv6 extension headers.
    pub ext: Vec<Ext>,
    /// L4 content.
    pub l4: L4,
    /// Payload bytes after the L4 header.
    pub payload: usize,
}

impl Frame {
    /// A TCP SYN from `src` to `dst:port`.
    pub fn tcp(src: IpAddr, dst: IpAddr, port: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                src: 40000,
                dst: port,
            },
        )
    }

    /// A UDP datagram from `src` to `dst:port`.
    pub fn udp(src: IpAddr, dst: IpAddr, port: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                src: 40000,
                dst: port,
            },
        )
    }

    /// A frame with the given L4 and no extras.
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed families");
        Self {
            vlans: Vec::new(),
            src,
            dst,
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, false),
            ipv4_id: 0x1234,
            ext: Vec::new(),
            l4,
            payload: 0,
        }
    }

    /// Adds VLAN tags.
    pub fn vlans(mut self, tags: &[(u16, u16)]) -> Self {
        self.vlans = tags.to_vec();
        self
    }

    /// The bytes on the wire (without FCS).
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // dst MAC
        out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // src MAC
        for (tpid, vid) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&vid.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let l4 = self.l4.bytes(self.payload);
                let ihl = 5 + self.ipv4_options.len() / 4;
                let total = ihl * 4 + l4.len();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | ihl as u8;
                h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                h[4..6].copy_from_slice(&self.ipv4_id.to_be_bytes());
                let (offset, more) = self.ipv4_fragment;
                h[6..8].copy_from_slice(&(offset | if more { 0x2000 } else { 0 }).to_be_bytes());
                h[8] = 64;
                h[9] = self.l4.protocol(false);
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                out.extend_from_slice(&h);
                out.extend_from_slice(&self.ipv4_options);
                out.extend_from_slice(&l4);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut body = Vec::new();
                for (i, ext) in self.ext.iter().enumerate() {
                    let next = self
                        .ext
                        .get(i + 1)
                        .map(Ext::protocol)
                        .unwrap_or_else(|| self.l4.protocol(true));
                    body.extend_from_slice(&ext.bytes(next));
                }
                body.extend_from_slice(&self.l4.bytes(self.payload));
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
                h[6] = self
                    .ext
                    .first()
                    .map(Ext::protocol)
                    .unwrap_or_else(|| self.l4.protocol(true));
                h[7] = 64;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                out.extend_from_slice(&h);
                out.extend_from_slice(&body);
            }
            _ => unreachable!("families checked in new"),
        }
        out
    }

    /// Offset of the IP header in the built frame.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }
}
