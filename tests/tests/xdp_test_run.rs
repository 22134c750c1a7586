//! The XDP program's verdicts on crafted frames, through BPF_PROG_TEST_RUN
//! on the real kernel: every parsing case with its expected action and the
//! one counter it must move.

use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};

use gateway::{
    config::FilterMode,
    xdp::{ranges::RangeSet, stats},
};
use gateway_common::Reason::{self, *};
use gateway_tests::{
    filter::{TestFilter, XDP_DROP, XDP_PASS, settings},
    packet::{Ext, Frame, L4, proto},
};

const RELAY4: &str = "192.0.2.10";
const RELAY4_LONG: &str = "198.51.100.200";
const OUTSIDER4: &str = "198.51.100.5";
const MGMT4: &str = "203.0.113.7";
const HOST4: &str = "203.0.113.1";
const RELAY6: &str = "2001:db8:1::10";
const OUTSIDER6: &str = "2001:db8:ff::1";
const MGMT6: &str = "2001:db8:2::7";
const HOST6: &str = "2001:db8::1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ranges() -> RangeSet {
    RangeSet::new(
        ["192.0.2.0/24", "198.51.100.128/25", "2001:db8:1::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        ["203.0.113.7/32", "2001:db8:2::7/128"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
    )
}

fn filter(label: &str, mode: FilterMode, monitor: bool) -> TestFilter {
    TestFilter::new(
        label,
        &settings(mode, monitor, &[80, 443], &[22]),
        &ranges(),
    )
}

fn expect(f: &mut TestFilter, name: &str, frame: &[u8], action: u32, reason: Reason) {
    let got = f.verdict(frame);
    assert_eq!(
        got,
        (action, reason, false),
        "{name}: expected {} {reason:?}, got {got:?}",
        if action == XDP_PASS { "PASS" } else { "DROP" }
    );
}

fn tcp(src: &str, port: u16) -> Frame {
    let dst = if src.contains(':') { HOST6 } else { HOST4 };
    Frame::tcp(ip(src), ip(dst), port)
}

fn udp(src: &str, port: u16) -> Frame {
    let dst = if src.contains(':') { HOST6 } else { HOST4 };
    Frame::udp(ip(src), ip(dst), port)
}

#[test]
fn port_mode_sources_and_ports() {
    let mut f = filter("ports", FilterMode::Ports, false);
    let cases: Vec<(&str, Frame, u32, Reason)> = vec![
        ("relay v4 to 443", tcp(RELAY4, 443), XDP_PASS, AllowedRelay),
        (
            "relay v4 (long prefix) to 443",
            tcp(RELAY4_LONG, 443),
            XDP_PASS,
            AllowedRelay,
        ),
        (
            "edge below the /25",
            tcp("198.51.100.127", 443),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "edge of the /24",
            tcp("192.0.2.255", 80),
            XDP_PASS,
            AllowedRelay,
        ),
        (
            "just past the /24",
            tcp("192.0.3.0", 80),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v4 tcp 443",
            tcp(OUTSIDER4, 443),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v4 udp 443 (QUIC)",
            udp(OUTSIDER4, 443),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v4 unguarded port",
            tcp(OUTSIDER4, 8080),
            XDP_PASS,
            UnguardedPort,
        ),
        (
            "outsider v4 ICMP",
            Frame::new(ip(OUTSIDER4), ip(HOST4), L4::Icmp { kind: 8, code: 0 }),
            XDP_PASS,
            UnguardedPort,
        ),
        (
            "management to ssh",
            tcp(MGMT4, 22),
            XDP_PASS,
            AllowedManagement,
        ),
        (
            "management to 443",
            tcp(MGMT4, 443),
            XDP_PASS,
            AllowedManagement,
        ),
        (
            "relay to ssh (management only)",
            tcp(RELAY4, 22),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider to ssh",
            tcp(OUTSIDER4, 22),
            XDP_DROP,
            DropNotAllowed,
        ),
        ("relay v6 to 443", tcp(RELAY6, 443), XDP_PASS, AllowedRelay),
        (
            "outsider v6 to 443",
            tcp(OUTSIDER6, 443),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v6 udp 80",
            udp(OUTSIDER6, 80),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v6 unguarded",
            udp(OUTSIDER6, 53),
            XDP_PASS,
            UnguardedPort,
        ),
        (
            "management v6 /128 to ssh",
            tcp(MGMT6, 22),
            XDP_PASS,
            AllowedManagement,
        ),
        (
            "neighbour of the /128",
            tcp("2001:db8:2::8", 22),
            XDP_DROP,
            DropNotAllowed,
        ),
    ];
    for (name, frame, action, reason) in cases {
        expect(&mut f, name, &frame.build(), action, reason);
    }
}

#[test]
fn vlan_tags() {
    let mut f = filter("vlan", FilterMode::Ports, false);
    let q = [(0x8100, 100)];
    let qinq = [(0x88a8, 200), (0x8100, 100)];
    let cases: Vec<(&str, Frame, u32, Reason)> = vec![
        (
            "802.1Q relay",
            tcp(RELAY4, 443).vlans(&q),
            XDP_PASS,
            AllowedRelay,
        ),
        (
            "802.1Q outsider",
            tcp(OUTSIDER4, 443).vlans(&q),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "QinQ relay",
            tcp(RELAY4, 443).vlans(&qinq),
            XDP_PASS,
            AllowedRelay,
        ),
        (
            "QinQ outsider",
            tcp(OUTSIDER4, 443).vlans(&qinq),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "QinQ outsider v6",
            tcp(OUTSIDER6, 443).vlans(&qinq),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "double 802.1Q outsider",
            tcp(OUTSIDER4, 443).vlans(&[(0x8100, 1), (0x8100, 2)]),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "three tags: cannot see inside",
            tcp(RELAY4, 443).vlans(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)]),
            XDP_DROP,
            DropMalformed,
        ),
    ];
    for (name, frame, action, reason) in cases {
        expect(&mut f, name, &frame.build(), action, reason);
    }
}

#[test]
fn non_ip_frames_pass() {
    let mut f = filter("nonip", FilterMode::Strict, false);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    expect(&mut f, "ARP", &arp, XDP_PASS, NotIp);
    let mut lldp = vec![
        0x01, 0x80, 0xc2, 0, 0, 0x0e, 0x02, 0, 0, 0, 0, 2, 0x88, 0xcc,
    ];
    lldp.extend_from_slice(&[0; 30]);
    expect(&mut f, "LLDP", &lldp, XDP_PASS, NotIp);
    let mut bare = vec![0u8; 14];
    bare[12] = 0x08;
    bare[13] = 0x06;
    expect(
        &mut f,
        "bare Ethernet header, ARP type",
        &bare,
        XDP_PASS,
        NotIp,
    );
}

#[test]
fn ipv4_header_fields() {
    let mut f = filter("ipv4", FilterMode::Ports, false);
    for words in 1..=10u8 {
        let options = vec![1u8; usize::from(words) * 4]; // NOP options
        let mut relay = tcp(RELAY4, 443);
        relay.ipv4_options = options.clone();
        expect(
            &mut f,
            &format!("IHL {} relay", 5 + words),
            &relay.build(),
            XDP_PASS,
            AllowedRelay,
        );
        let mut outsider = tcp(OUTSIDER4, 443);
        outsider.ipv4_options = options.clone();
        expect(
            &mut f,
            &format!("IHL {} outsider", 5 + words),
            &outsider.build(),
            XDP_DROP,
            DropNotAllowed,
        );
        let mut unguarded = tcp(OUTSIDER4, 8080);
        unguarded.ipv4_options = options;
        expect(
            &mut f,
            &format!("IHL {} unguarded", 5 + words),
            &unguarded.build(),
            XDP_PASS,
            UnguardedPort,
        );
    }
    let l3 = 14;
    for ihl in 0..5u8 {
        let mut frame = tcp(RELAY4, 443).build();
        frame[l3] = 0x40 | ihl;
        expect(
            &mut f,
            &format!("IHL {ihl}"),
            &frame,
            XDP_DROP,
            DropMalformed,
        );
    }
    let mut frame = tcp(RELAY4, 443).build();
    frame[l3] = 0x65;
    expect(
        &mut f,
        "version 6 under the IPv4 ethertype",
        &frame,
        XDP_DROP,
        DropMalformed,
    );

    let set_total = |total: u16| {
        let mut frame = tcp(RELAY4, 443).build();
        frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        frame
    };
    expect(
        &mut f,
        "total length below the header",
        &set_total(19),
        XDP_DROP,
        DropMalformed,
    );
    expect(
        &mut f,
        "total length past the frame",
        &set_total(41),
        XDP_DROP,
        DropMalformed,
    );
    expect(
        &mut f,
        "total length cuts the ports",
        &set_total(24),
        XDP_DROP,
        DropMalformed,
    );
    let mut padded = tcp(OUTSIDER4, 443).build();
    padded.extend_from_slice(&[0; 18]); // Ethernet minimum-size padding
    expect(
        &mut f,
        "trailing padding",
        &padded,
        XDP_DROP,
        DropNotAllowed,
    );
    let mut padded = tcp(RELAY4, 443).build();
    padded.extend_from_slice(&[0; 18]);
    expect(
        &mut f,
        "trailing padding relay",
        &padded,
        XDP_PASS,
        AllowedRelay,
    );
}

/// Every truncation of an IP frame is malformed, whatever the source.
#[test]
fn truncated_frames_at_every_offset() {
    let mut f = filter("trunc", FilterMode::Ports, false);
    let frames = [
        ("v4 tcp", tcp(RELAY4, 443)),
        ("v4 udp", udp(OUTSIDER4, 443)),
        ("v6 tcp", tcp(RELAY6, 443)),
        ("v6 udp with ext headers", {
            let mut fr = udp(OUTSIDER6, 53);
            fr.ext = vec![Ext::HopByHop { len8: 0 }, Ext::DestOpts { len8: 1 }];
            fr
        }),
        (
            "QinQ v4",
            tcp(OUTSIDER4, 8080).vlans(&[(0x88a8, 1), (0x8100, 2)]),
        ),
    ];
    for (name, frame) in frames {
        let bytes = frame.build();
        // Any cut shorter than the whole frame leaves a header or the IP
        // length promising bytes that are not there. BPF_PROG_TEST_RUN
        // refuses frames shorter than an Ethernet header, so cuts start at 14.
        for cut in 14..bytes.len() {
            expect(
                &mut f,
                &format!("{name} cut at {cut}"),
                &bytes[..cut],
                XDP_DROP,
                DropMalformed,
            );
        }
    }
}

#[test]
fn ipv4_fragments() {
    let mut f = filter("frag4", FilterMode::Ports, false);
    let fragment = |src: &str, port: u16, offset: u16, more: bool, id: u16| {
        let mut frame = udp(src, port);
        frame.ipv4_fragment = (offset, more);
        frame.ipv4_id = id;
        frame.payload = 16;
        frame
    };
    let later = |src: &str, offset: u16, id: u16| {
        let mut frame = Frame::new(
            ip(src),
            ip(HOST4),
            L4::Raw {
                protocol: proto::UDP,
                bytes: vec![0xcd; 24],
            },
        );
        frame.ipv4_fragment = (offset, false);
        frame.ipv4_id = id;
        frame
    };
    expect(
        &mut f,
        "outsider first fragment to 443",
        &fragment(OUTSIDER4, 443, 0, true, 1).build(),
        XDP_DROP,
        DropNotAllowed,
    );
    expect(
        &mut f,
        "its later fragment",
        &later(OUTSIDER4, 3, 1).build(),
        XDP_DROP,
        DropUntrackedFragment,
    );
    expect(
        &mut f,
        "outsider first fragment to 5000",
        &fragment(OUTSIDER4, 5000, 0, true, 2).build(),
        XDP_PASS,
        UnguardedPort,
    );
    expect(
        &mut f,
        "its later fragment follows",
        &later(OUTSIDER4, 3, 2).build(),
        XDP_PASS,
        TrackedFragment,
    );
    expect(
        &mut f,
        "its last fragment follows",
        &later(OUTSIDER4, 6, 2).build(),
        XDP_PASS,
        TrackedFragment,
    );
    expect(
        &mut f,
        "a later fragment of an unseen datagram",
        &later(OUTSIDER4, 3, 3).build(),
        XDP_DROP,
        DropUntrackedFragment,
    );
    expect(
        &mut f,
        "same id from another source",
        &later("198.51.100.6", 3, 2).build(),
        XDP_DROP,
        DropUntrackedFragment,
    );
    expect(
        &mut f,
        "relay later fragment",
        &later(RELAY4, 3, 9).build(),
        XDP_PASS,
        AllowedRelay,
    );
    expect(
        &mut f,
        "relay first fragment",
        &fragment(RELAY4, 443, 0, true, 10).build(),
        XDP_PASS,
        AllowedRelay,
    );
    let mut tcp_overlap = later(RELAY4, 1, 11);
    tcp_overlap.l4 = L4::Raw {
        protocol: proto::TCP,
        bytes: vec![0; 24],
    };
    expect(
        &mut f,
        "TCP fragment at offset 8 (RFC 1858)",
        &tcp_overlap.build(),
        XDP_DROP,
        DropMalformed,
    );
    let mut tiny = Frame::new(
        ip(OUTSIDER4),
        ip(HOST4),
        L4::Raw {
            protocol: proto::TCP,
            bytes: vec![0x9c, 0x40, 0x01, 0xbb],
        },
    );
    tiny.ipv4_fragment = (0, true);
    expect(
        &mut f,
        "first fragment too short for an L4 header",
        &tiny.build(),
        XDP_DROP,
        DropMalformed,
    );
}

#[test]
fn ipv6_extension_headers() {
    let mut f = filter("ext6", FilterMode::Ports, false);
    let with = |src: &str, port: u16, ext: Vec<Ext>| {
        let mut frame = tcp(src, port);
        frame.ext = ext;
        frame
    };
    let chain = vec![
        Ext::HopByHop { len8: 0 },
        Ext::DestOpts { len8: 1 },
        Ext::Routing { len8: 2 },
        Ext::Auth { len4: 4 },
    ];
    expect(
        &mut f,
        "chain, relay",
        &with(RELAY6, 443, chain.clone()).build(),
        XDP_PASS,
        AllowedRelay,
    );
    expect(
        &mut f,
        "chain, outsider to 443",
        &with(OUTSIDER6, 443, chain.clone()).build(),
        XDP_DROP,
        DropNotAllowed,
    );
    expect(
        &mut f,
        "chain, outsider to 8080",
        &with(OUTSIDER6, 8080, chain).build(),
        XDP_PASS,
        UnguardedPort,
    );
    let eight = vec![Ext::DestOpts { len8: 0 }; 8];
    expect(
        &mut f,
        "eight headers then TCP to 443",
        &with(OUTSIDER6, 443, eight.clone()).build(),
        XDP_DROP,
        DropNotAllowed,
    );
    expect(
        &mut f,
        "eight headers then TCP to 8080",
        &with(OUTSIDER6, 8080, eight).build(),
        XDP_PASS,
        UnguardedPort,
    );
    let nine = vec![Ext::DestOpts { len8: 0 }; 9];
    expect(
        &mut f,
        "nine headers: walk bound exceeded",
        &with(RELAY6, 443, nine).build(),
        XDP_DROP,
        DropMalformed,
    );

    let mut overlong = with(OUTSIDER6, 8080, vec![Ext::HopByHop { len8: 0 }]).build();
    overlong[14 + 40 + 1] = 200; // hop-by-hop length far past the payload
    expect(
        &mut f,
        "extension header past the payload",
        &overlong,
        XDP_DROP,
        DropMalformed,
    );
    let mut short_payload = tcp(RELAY6, 443).build();
    short_payload[14 + 4..14 + 6].copy_from_slice(&4u16.to_be_bytes());
    expect(
        &mut f,
        "payload length cuts the ports",
        &short_payload,
        XDP_DROP,
        DropMalformed,
    );
    let mut long_payload = tcp(RELAY6, 443).build();
    long_payload[14 + 4..14 + 6].copy_from_slice(&100u16.to_be_bytes());
    expect(
        &mut f,
        "payload length past the frame",
        &long_payload,
        XDP_DROP,
        DropMalformed,
    );

    let mut none = Frame::new(
        ip(OUTSIDER6),
        ip(HOST6),
        L4::Raw {
            protocol: proto::NONE,
            bytes: vec![],
        },
    );
    none.ext = vec![Ext::HopByHop { len8: 0 }];
    expect(
        &mut f,
        "no next header",
        &none.build(),
        XDP_PASS,
        UnguardedPort,
    );

    // Fragments.
    let first = |src: &str, port: u16, id: u32| {
        let mut frame = udp(src, port);
        frame.ext = vec![
            Ext::HopByHop { len8: 0 },
            Ext::Fragment {
                offset: 0,
                more: true,
                id,
            },
        ];
        frame.payload = 16;
        frame
    };
    let later = |src: &str, id: u32| {
        let mut frame = Frame::new(
            ip(src),
            ip(HOST6),
            L4::Raw {
                protocol: proto::UDP,
                bytes: vec![0; 16],
            },
        );
        frame.ext = vec![Ext::Fragment {
            offset: 3,
            more: false,
            id,
        }];
        frame
    };
    expect(
        &mut f,
        "v6 first fragment to 443",
        &first(OUTSIDER6, 443, 7).build(),
        XDP_DROP,
        DropNotAllowed,
    );
    expect(
        &mut f,
        "v6 its later fragment",
        &later(OUTSIDER6, 7).build(),
        XDP_DROP,
        DropUntrackedFragment,
    );
    expect(
        &mut f,
        "v6 first fragment to 9000",
        &first(OUTSIDER6, 9000, 8).build(),
        XDP_PASS,
        UnguardedPort,
    );
    expect(
        &mut f,
        "v6 its later fragment follows",
        &later(OUTSIDER6, 8).build(),
        XDP_PASS,
        TrackedFragment,
    );
    expect(
        &mut f,
        "v6 relay later fragment",
        &later(RELAY6, 99).build(),
        XDP_PASS,
        AllowedRelay,
    );
    let mut atomic = udp(OUTSIDER6, 443);
    atomic.ext = vec![Ext::Fragment {
        offset: 0,
        more: false,
        id: 5,
    }];
    expect(
        &mut f,
        "v6 atomic fragment is judged by its ports",
        &atomic.build(),
        XDP_DROP,
        DropNotAllowed,
    );
}

#[test]
fn strict_mode_keeps_the_host_working() {
    let mut f = filter("strict", FilterMode::Strict, false);
    let icmp4 = |kind| Frame::new(ip(OUTSIDER4), ip(HOST4), L4::Icmp { kind, code: 4 }).build();
    let icmp6 = |kind| Frame::new(ip(OUTSIDER6), ip(HOST6), L4::Icmp { kind, code: 0 }).build();
    let dhcp4 = Frame::new(ip(OUTSIDER4), ip(HOST4), L4::Udp { src: 67, dst: 68 }).build();
    let dhcp6 = Frame::new(ip("fe80::1"), ip("fe80::2"), L4::Udp { src: 547, dst: 546 }).build();
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "outsider to an unguarded port",
            tcp(OUTSIDER4, 8080).build(),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "outsider v6 to an unguarded port",
            udp(OUTSIDER6, 5353).build(),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "relay to any port",
            tcp(RELAY4, 8080).build(),
            XDP_PASS,
            AllowedRelay,
        ),
        (
            "management to any port",
            udp(MGMT6, 9999).build(),
            XDP_PASS,
            AllowedManagement,
        ),
        (
            "relay to ssh stays management only",
            tcp(RELAY4, 22).build(),
            XDP_DROP,
            DropNotAllowed,
        ),
        (
            "ICMP fragmentation needed (PMTU)",
            icmp4(3),
            XDP_PASS,
            HostEssential,
        ),
        ("ICMP time exceeded", icmp4(11), XDP_PASS, HostEssential),
        ("ICMP echo request", icmp4(8), XDP_DROP, DropNotAllowed),
        (
            "ICMPv6 packet too big (PMTU)",
            icmp6(2),
            XDP_PASS,
            HostEssential,
        ),
        (
            "ICMPv6 neighbour solicitation",
            icmp6(135),
            XDP_PASS,
            HostEssential,
        ),
        (
            "ICMPv6 router advertisement",
            icmp6(134),
            XDP_PASS,
            HostEssential,
        ),
        ("ICMPv6 echo request", icmp6(128), XDP_DROP, DropNotAllowed),
        ("DHCPv4 reply", dhcp4, XDP_PASS, HostEssential),
        ("DHCPv6 reply", dhcp6, XDP_PASS, HostEssential),
        (
            "outsider later fragment",
            {
                let mut fr = Frame::new(
                    ip(OUTSIDER4),
                    ip(HOST4),
                    L4::Raw {
                        protocol: proto::UDP,
                        bytes: vec![0; 16],
                    },
                );
                fr.ipv4_fragment = (2, false);
                fr.build()
            },
            XDP_DROP,
            DropUntrackedFragment,
        ),
    ];
    for (name, frame, action, reason) in cases {
        expect(&mut f, name, &frame, action, reason);
    }
}

/// Replies on connections this host opened pass strict mode, found with the
/// kernel's socket lookup; a listening socket is not a reply.
#[test]
fn strict_mode_passes_replies_to_host_connections() {
    let mut f = filter("replies", FilterMode::Strict, false);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = TcpStream::connect(server).unwrap();
    let client_addr = client.local_addr().unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    let lo = ip("127.0.0.1");

    let reply = Frame::new(
        lo,
        lo,
        L4::Tcp {
            src: server.port(),
            dst: client_addr.port(),
        },
    )
    .build();
    expect(
        &mut f,
        "TCP reply to our connection",
        &reply,
        XDP_PASS,
        HostConnection,
    );
    let to_listener = Frame::new(
        lo,
        lo,
        L4::Tcp {
            src: 40001,
            dst: server.port(),
        },
    )
    .build();
    expect(
        &mut f,
        "new connection to a listener",
        &to_listener,
        XDP_DROP,
        DropNotAllowed,
    );
    let stray = Frame::new(
        lo,
        lo,
        L4::Tcp {
            src: server.port(),
            dst: client_addr.port().wrapping_add(1).max(1024),
        },
    )
    .build();
    expect(
        &mut f,
        "segment for no socket",
        &stray,
        XDP_DROP,
        DropNotAllowed,
    );

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(peer.local_addr().unwrap()).unwrap();
    let unconnected = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let reply = Frame::new(
        lo,
        lo,
        L4::Udp {
            src: peer_port,
            dst: connected.local_addr().unwrap().port(),
        },
    )
    .build();
    expect(
        &mut f,
        "UDP reply to a connected socket",
        &reply,
        XDP_PASS,
        HostConnection,
    );
    let to_server = Frame::new(
        lo,
        lo,
        L4::Udp {
            src: peer_port,
            dst: unconnected.local_addr().unwrap().port(),
        },
    )
    .build();
    expect(
        &mut f,
        "UDP to an unconnected (server) socket",
        &to_server,
        XDP_DROP,
        DropNotAllowed,
    );
}

#[test]
fn monitor_mode_counts_but_never_drops() {
    let mut f = filter("monitor", FilterMode::Ports, true);
    let cases: Vec<(&str, Vec<u8>, Reason, bool)> = vec![
        (
            "outsider to 443",
            tcp(OUTSIDER4, 443).build(),
            DropNotAllowed,
            true,
        ),
        (
            "relay to 443",
            tcp(RELAY4, 443).build(),
            AllowedRelay,
            false,
        ),
        (
            "malformed",
            {
                let mut fr = tcp(RELAY4, 443).build();
                fr[14] = 0x44;
                fr
            },
            DropMalformed,
            true,
        ),
    ];
    for (name, frame, reason, monitored) in cases {
        assert_eq!(f.verdict(&frame), (XDP_PASS, reason, monitored), "{name}");
    }
}

#[test]
fn nothing_is_dropped_before_a_range_set_is_written() {
    gateway_tests::require_root();
    let layout = gateway_tests::filter::unique_pin_dir("unconfigured");
    let mut filter = gateway::xdp::Filter::load(&layout).unwrap();
    let mut f = TestFilter {
        filter: {
            filter
                .configure(&settings(FilterMode::Strict, false, &[443], &[]))
                .unwrap();
            filter
        },
        layout,
    };
    expect(
        &mut f,
        "outsider before any set",
        &tcp(OUTSIDER4, 443).build(),
        XDP_PASS,
        NotConfigured,
    );
    f.filter.apply_ranges(&ranges()).unwrap();
    expect(
        &mut f,
        "outsider after the first set",
        &tcp(OUTSIDER4, 443).build(),
        XDP_DROP,
        DropNotAllowed,
    );
}

#[test]
fn range_updates_switch_generations_exactly() {
    let mut f = filter("swap", FilterMode::Ports, false);
    let only_old = "192.0.2.77";
    let both = "198.51.100.200";
    let only_new = "203.0.113.99";
    expect(
        &mut f,
        "old set: only_old",
        &tcp(only_old, 443).build(),
        XDP_PASS,
        AllowedRelay,
    );
    expect(
        &mut f,
        "old set: only_new",
        &tcp(only_new, 443).build(),
        XDP_DROP,
        DropNotAllowed,
    );
    for round in 0..3 {
        let next = RangeSet::new(
            vec![
                "198.51.100.128/25".parse().unwrap(),
                "203.0.113.96/28".parse().unwrap(),
            ],
            vec![],
        );
        f.filter.apply_ranges(&next).unwrap();
        expect(
            &mut f,
            "new set: only_old",
            &tcp(only_old, 443).build(),
            XDP_DROP,
            DropNotAllowed,
        );
        expect(
            &mut f,
            "new set: both",
            &tcp(both, 443).build(),
            XDP_PASS,
            AllowedRelay,
        );
        expect(
            &mut f,
            "new set: only_new",
            &tcp(only_new, 443).build(),
            XDP_PASS,
            AllowedRelay,
        );
        f.filter.apply_ranges(&ranges()).unwrap();
        expect(
            &mut f,
            &format!("round {round} back: only_old"),
            &tcp(only_old, 443).build(),
            XDP_PASS,
            AllowedRelay,
        );
        expect(
            &mut f,
            "back: both",
            &tcp(both, 443).build(),
            XDP_PASS,
            AllowedRelay,
        );
        expect(
            &mut f,
            "back: only_new",
            &tcp(only_new, 443).build(),
            XDP_DROP,
            DropNotAllowed,
        );
    }
}

#[test]
fn drop_records_are_aggregated_per_source_and_port() {
    // Aggregation slots are per CPU: keep every run on one.
    gateway_tests::pin_thread_to_cpu(0);
    let mut f = filter("records", FilterMode::Ports, false);
    let mut events = stats::DropEvents::open(&f.layout).unwrap();
    assert!(events.drain().is_empty());
    let frame = tcp(OUTSIDER4, 443).build();
    let (action, _) = f.run_repeat(&frame, 500);
    assert_eq!(action, XDP_DROP);
    let frame6 = udp(OUTSIDER6, 80).build();
    f.run_repeat(&frame6, 7);

    let snapshot = stats::read(&f.layout, 10).unwrap();
    let top = &snapshot.top_dropped_sources;
    assert_eq!(top[0].source, Some(ip(OUTSIDER4)), "{top:?}");
    assert_eq!(
        (top[0].dst_port, top[0].protocol, top[0].packets),
        (443, 6, 500)
    );
    assert_eq!(top[0].reason, "dropped_not_allowed");
    assert_eq!(top[1].source, Some(ip(OUTSIDER6)));
    assert_eq!(
        (top[1].dst_port, top[1].protocol, top[1].packets),
        (80, 17, 7)
    );
    let dropped = snapshot
        .counters
        .iter()
        .find(|c| c.reason == "dropped_not_allowed" && !c.monitor)
        .unwrap();
    assert_eq!(dropped.packets, 507);

    // A flow's record is reported once its window is over, checked every
    // 64th packet: here at packet 512.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.run_repeat(&frame, 11);
    assert!(
        events
            .drain()
            .iter()
            .all(|r| r.source != Some(ip(OUTSIDER4))),
        "not yet at packet 511"
    );
    f.run(&frame);
    let records = events.drain();
    let record = records
        .iter()
        .find(|r| r.source == Some(ip(OUTSIDER4)))
        .expect("record for the v4 outsider");
    assert_eq!(
        (record.packets, record.dst_port, record.bytes),
        (512, 443, 512 * frame.len() as u64)
    );

    // A spoofed-source flood: every source sends one packet. They are summed
    // into one record without a source instead of one record each.
    let spoofed = |i: u32| {
        let src = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        Frame::tcp(IpAddr::V4(src), ip(HOST4), 443).build()
    };
    for i in 0..3000 {
        f.run(&spoofed(i));
    }
    let spoofed_records = events
        .drain()
        .into_iter()
        .filter(|r| matches!(r.source, Some(IpAddr::V4(a)) if a.octets()[0] == 10))
        .count();
    assert_eq!(
        spoofed_records, 0,
        "single-packet sources produce no per-source record"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for i in 3000..6000 {
        f.run(&spoofed(i));
    }
    let summed: Vec<_> = events
        .drain()
        .into_iter()
        .filter(|r| r.source.is_none())
        .collect();
    assert_eq!(summed.len(), 1, "one summed record, got {}", summed.len());
    assert_eq!(summed[0].reason, "dropped_not_allowed");
    // 3000 one-packet sources through 1024 slots evict at least 1976.
    assert!(summed[0].packets >= 3000 - 1024, "{summed:?}");
}

/// A bucket holding more long lengths than its own list takes falls back to
/// the family's list; verdicts stay exact on both sides of every prefix.
#[test]
fn many_prefix_lengths_in_one_bucket() {
    let relay: Vec<ipnet::IpNet> = (0..20u8)
        .map(|i| {
            let len = 40 + i;
            // 2001:d00:<i+1>00::/len: disjoint, all in the bucket 2001:0d.
            let addr =
                std::net::Ipv6Addr::from((0x2001_0d00_u128 << 96) | (u128::from(i + 1) << 96));
            ipnet::IpNet::new(addr.into(), len).unwrap()
        })
        .collect();
    let set = RangeSet::new(relay, vec![]);
    let compiled = set.compile();
    assert!(
        compiled
            .v6
            .bucket_lengths
            .iter()
            .any(|(_, l)| l.count == gateway_common::BucketLengths::USE_GLOBAL),
        "the bucket must overflow its own list"
    );
    let mut f = TestFilter::new(
        "lengths",
        &settings(FilterMode::Ports, false, &[443], &[]),
        &set,
    );
    for net in set.relay() {
        let inside = net.network();
        expect(
            &mut f,
            &format!("first of {net}"),
            &Frame::tcp(inside, ip(HOST6), 443).build(),
            XDP_PASS,
            AllowedRelay,
        );
        let IpAddr::V6(last) = net.broadcast() else {
            unreachable!()
        };
        let outside = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(last).wrapping_add(1)));
        let reason = if set.classify(outside) != 0 {
            AllowedRelay
        } else {
            DropNotAllowed
        };
        let action = if reason == AllowedRelay {
            XDP_PASS
        } else {
            XDP_DROP
        };
        expect(
            &mut f,
            &format!("past {net}"),
            &Frame::tcp(outside, ip(HOST6), 443).build(),
            action,
            reason,
        );
    }
}
