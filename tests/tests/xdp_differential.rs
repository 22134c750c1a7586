//! Differential property test: random prefix sets and random frames
//! (malformed ones included) through the kernel program and through the
//! pure-Rust reference model must give the same verdict and reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway::{config::FilterMode, xdp::ranges::RangeSet};
use gateway_tests::{
    filter::{TestFilter, XDP_DROP, XDP_PASS, settings},
    model::Model,
    netns::Netns,
    packet::{Ext, Frame, L4, proto},
};
use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

const PROTECTED: [u16; 3] = [80, 443, 8443];
const MANAGEMENT: [u16; 1] = [22];
const SETS: usize = 8;
const FRAMES_PER_SET: usize = 2500;

/// Addresses cluster around a few bases so that random sources land inside,
/// at the edges of, and just outside random prefixes.
const BASES4: [u32; 3] = [0xc000_0200, 0xc633_6400, 0xcb00_7100]; // 192.0.2/198.51.100/203.0.113
const BASES6: [u128; 2] = [0x2001_0db8 << 96, (0x2001_0db8 << 96) | (0xbeef << 80)];

fn random_v4(rng: &mut SmallRng) -> Ipv4Addr {
    if rng.random_bool(0.15) {
        return Ipv4Addr::from(rng.random::<u32>());
    }
    Ipv4Addr::from(*BASES4.choose(rng).unwrap() ^ (rng.random::<u32>() >> rng.random_range(18..32)))
}

fn random_v6(rng: &mut SmallRng) -> Ipv6Addr {
    if rng.random_bool(0.15) {
        return Ipv6Addr::from(rng.random::<u128>());
    }
    Ipv6Addr::from(
        *BASES6.choose(rng).unwrap() ^ (rng.random::<u128>() >> rng.random_range(60..128)),
    )
}

fn random_set(rng: &mut SmallRng) -> RangeSet {
    let mut relay = Vec::new();
    let mut management = Vec::new();
    for _ in 0..rng.random_range(1..60) {
        let net = if rng.random_bool(0.5) {
            IpNet::new(random_v4(rng).into(), rng.random_range(8..=32)).unwrap()
        } else {
            IpNet::new(random_v6(rng).into(), rng.random_range(16..=128)).unwrap()
        };
        if rng.random_bool(0.25) {
            management.push(net.trunc());
        } else {
            relay.push(net.trunc());
        }
    }
    RangeSet::new(relay, management)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn random_port(rng: &mut SmallRng) -> u16 {
    match rng.random_range(0..4) {
        0 => *PROTECTED.choose(rng).unwrap(),
        1 => MANAGEMENT[0],
        2 => *[67, 68, 546, 547].choose(rng).unwrap(),
        _ => rng.random(),
    }
}

/// Sources outside the set for fragmented flows: few flows, so later
/// fragments meet first fragments seen before and the tracking is exercised.
struct FragmentFlows {
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
}

impl FragmentFlows {
    fn new(rng: &mut SmallRng, set: &RangeSet) -> Self {
        let mut pick = |v6: bool| loop {
            let addr: IpAddr = if v6 {
                random_v6(rng).into()
            } else {
                random_v4(rng).into()
            };
            if set.classify(addr) == 0 {
                return addr;
            }
        };
        Self {
            v4: vec![pick(false), pick(false)],
            v6: vec![pick(true), pick(true)],
        }
    }
}

fn random_frame(rng: &mut SmallRng, flows: &FragmentFlows) -> Vec<u8> {
    let v6 = rng.random_bool(0.5);
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (random_v6(rng).into(), random_v6(rng).into())
    } else {
        (random_v4(rng).into(), random_v4(rng).into())
    };
    let l4 = match rng.random_range(0..5) {
        0 | 1 => L4::Tcp {
            src: random_port(rng),
            dst: random_port(rng),
        },
        2 => L4::Udp {
            src: random_port(rng),
            dst: random_port(rng),
        },
        3 => L4::Icmp {
            kind: *[0, 1, 2, 3, 4, 8, 11, 128, 133, 135, 137, 200]
                .choose(rng)
                .unwrap(),
            code: 0,
        },
        _ => L4::Raw {
            protocol: *[proto::TCP, proto::UDP, 50, 132, proto::NONE]
                .choose(rng)
                .unwrap(),
            bytes: (0..rng.random_range(0..24)).map(|_| rng.random()).collect(),
        },
    };
    let mut frame = Frame::new(src, dst, l4);
    frame.payload = rng.random_range(0..40);
    let tags = [0x8100, 0x88a8];
    let depth = *[0, 0, 0, 1, 2, 3].choose(rng).unwrap();
    frame.vlans = (0..depth)
        .map(|i| (*tags.choose(rng).unwrap(), i))
        .collect();
    if !v6 {
        if rng.random_bool(0.2) {
            frame.ipv4_options = vec![1; 4 * rng.random_range(1..=10)];
        }
        if rng.random_bool(0.25) {
            frame.ipv4_fragment = (
                *[0, 0, 1, 2, 185].choose(rng).unwrap(),
                rng.random_bool(0.5),
            );
            frame.ipv4_id = rng.random_range(0..4);
            frame.src = *flows.v4.choose(rng).unwrap();
            frame.dst = ip("192.0.2.250");
        }
    } else if rng.random_bool(0.4) {
        if rng.random_bool(0.5) {
            frame.src = *flows.v6.choose(rng).unwrap();
            frame.dst = ip("2001:db8::250");
        }
        frame.ext = (0..rng.random_range(1..=10))
            .map(|_| match rng.random_range(0..5) {
                0 => Ext::HopByHop {
                    len8: rng.random_range(0..3),
                },
                1 => Ext::Routing {
                    len8: rng.random_range(0..3),
                },
                2 => Ext::DestOpts {
                    len8: rng.random_range(0..3),
                },
                3 => Ext::Auth {
                    len4: rng.random_range(1..5),
                },
                _ => Ext::Fragment {
                    offset: *[0, 0, 1, 100].choose(rng).unwrap(),
                    more: rng.random_bool(0.5),
                    id: rng.random_range(0..4),
                },
            })
            .collect();
    }
    let mut bytes = frame.build();
    // Mutations: truncations, corrupted header bytes, trailing junk.
    match rng.random_range(0..10) {
        0 => {
            let cut = rng.random_range(14..=bytes.len());
            bytes.truncate(cut);
        }
        1 | 2 => {
            let at = rng.random_range(12..bytes.len().min(frame.l3_offset() + 48));
            bytes[at] = rng.random();
        }
        3 => bytes.extend((0..rng.random_range(1..30)).map(|_| rng.random::<u8>())),
        _ => {}
    }
    bytes
}

#[test]
fn kernel_verdicts_match_the_reference_model() {
    gateway_tests::require_root();
    // An empty namespace: no local socket can turn a random frame into a
    // reply on a connection of this host (strict mode's socket lookup).
    let ns = Netns::new(&format!("gw-diff-{}", std::process::id()));
    let seed: u64 = std::env::var("GATEWAY_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("differential seed {seed} (set GATEWAY_DIFF_SEED to replay)");
    ns.enter(|| {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut reasons = std::collections::BTreeMap::new();
        for round in 0..SETS {
            let set = random_set(&mut rng);
            let mode = if round % 2 == 0 {
                FilterMode::Ports
            } else {
                FilterMode::Strict
            };
            let mut filter = TestFilter::new(
                "diff",
                &settings(mode, false, &PROTECTED, &MANAGEMENT),
                &set,
            );
            let mut model = Model::new(set.clone(), mode, &PROTECTED, &MANAGEMENT);
            let flows = FragmentFlows::new(&mut rng, &set);
            for i in 0..FRAMES_PER_SET {
                let frame = random_frame(&mut rng, &flows);
                let (pass, reason) = model.judge(&frame);
                let expected = (if pass { XDP_PASS } else { XDP_DROP }, reason, false);
                let got = filter.verdict(&frame);
                assert_eq!(
                    got, expected,
                    "seed {seed}, round {round} ({mode:?}), frame {i}: {frame:02x?}\nset: {set:?}"
                );
                *reasons.entry(format!("{reason:?}")).or_insert(0) += 1;
            }
        }
        eprintln!("verdicts compared by reason: {reasons:?}");
        // The generator must reach the interesting branches, or the
        // comparison proves little.
        for needed in [
            "AllowedRelay",
            "AllowedManagement",
            "UnguardedPort",
            "DropNotAllowed",
            "DropMalformed",
            "NotIp",
            "HostEssential",
            "TrackedFragment",
            "DropUntrackedFragment",
        ] {
            assert!(
                reasons.contains_key(needed),
                "no frame exercised {needed}: {reasons:?}"
            );
        }
    });
}
