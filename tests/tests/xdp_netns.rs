//! The filter on a real interface: network namespaces joined by a bridge,
//! the XDP program attached natively to the origin's veth, real TCP and UDP.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway::{
    config::{AttachMode, FilterMode},
    paths::PinLayout,
    xdp::{Attached, Filter, ranges::RangeSet, stats},
};
use gateway_tests::{
    daemon::{Daemon, gateway},
    filter::{PinGuard, settings, unique_pin_dir},
    netns::{Netns, Topology, addr::*, ip},
};
use serde_json::json;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

fn connects(ns: &Netns, host: &str, port: u16) -> bool {
    let target = SocketAddr::new(ip(host), port);
    ns.enter(|| TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).is_ok())
}

/// For outcomes that follow an asynchronous kernel change (a link released
/// after its last pin is removed): true once a connection succeeds within 5 s.
fn connects_eventually(ns: &Netns, host: &str, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if connects(ns, host, port) {
            return true;
        }
    }
    false
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.enter(|| TcpListener::bind(("::", port)).expect("bind"))
}

fn counter(layout: &PinLayout, reason: &str) -> u64 {
    stats::read(layout, 0)
        .expect("stats")
        .counters
        .iter()
        .filter(|c| c.reason == reason && !c.monitor)
        .map(|c| c.packets)
        .sum()
}

struct Setup {
    topology: Topology,
    layout: PinLayout,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(label: &str) -> Self {
        Self {
            topology: Topology::new(),
            layout: unique_pin_dir(label),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes a config for the origin's eth0 and returns its path.
    fn config(&self, mode: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("gateway.toml");
        let mut file = std::fs::File::create(&path).unwrap();
        write!(
            file,
            r#"[xdp]
interfaces = ["eth0"]
mode = "{mode}"
attach = "native"
protected_ports = [80, 443]
management_ports = [22]
pin_dir = "{pin}"
{extra}
[[xdp.relay]]
cidrs = ["{RELAY4}/32", "{RELAY6}/128"]

[audit]
dir = "{audit}"
"#,
            pin = self.layout.root().display(),
            audit = self.dir.path().join("audit").display(),
        )
        .unwrap();
        path
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = gateway::xdp::detach(&self.layout);
    }
}

#[test]
fn relay_reaches_protected_ports_and_outsiders_do_not() {
    let s = Setup::new("ports");
    let config = s.config("ports", "");
    let t = &s.topology;
    let _https = listen(&t.origin, 443);
    let _other = listen(&t.origin, 8080);
    let _ssh = listen(&t.origin, 22);
    for (host, port) in [(ORIGIN4, 443), (ORIGIN6, 443)] {
        assert!(
            connects(&t.outsider, host, port),
            "before the filter the outsider reaches {host}:{port}"
        );
    }
    let daemon = Daemon::start(&t.origin, &config, &s.layout, &["eth0"]);
    assert!(
        daemon.log_text().contains("Native"),
        "attached natively:\n{}",
        daemon.log_text()
    );

    for host in [ORIGIN4, ORIGIN6] {
        assert!(connects(&t.relay, host, 443), "relay -> {host}:443");
        assert!(
            !connects(&t.outsider, host, 443),
            "outsider -> {host}:443 must be dropped"
        );
        assert!(
            connects(&t.outsider, host, 8080),
            "outsider -> {host}:8080 is not guarded"
        );
        assert!(
            !connects(&t.relay, host, 22),
            "ssh is for management sources only"
        );
    }
    let snapshot = stats::read(&s.layout, 5).unwrap();
    assert_eq!(snapshot.interfaces, vec!["eth0".to_string()]);
    assert!(snapshot.enforcing);
    let dropped: Vec<_> = snapshot
        .top_dropped_sources
        .iter()
        .map(|d| (d.source, d.dst_port))
        .collect();
    assert!(dropped.contains(&(Some(ip(OUTSIDER4)), 443)), "{dropped:?}");
    assert!(dropped.contains(&(Some(ip(OUTSIDER6)), 443)), "{dropped:?}");
    assert!(counter(&s.layout, "allowed_relay") > 0);

    // `gateway xdp stats` prints the same.
    let out = gateway(
        &t.origin,
        &[
            "xdp",
            "stats",
            "--pin-dir",
            s.layout.root().to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("dropped_not_allowed") && text.contains(OUTSIDER4),
        "{text}"
    );

    // The running daemon reports the filter: `gateway status` and metrics
    // (its admin endpoint is on the origin's loopback).
    let admin = daemon.admin_addr().to_string();
    let out = gateway(&t.origin, &["status", "--json", "--admin", &admin]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let xdp = &status["xdp"];
    assert_eq!(
        xdp["interfaces"],
        json!([{"name": "eth0", "attach": "native"}])
    );
    assert_eq!(xdp["mode"], "ports");
    assert!(xdp["relay_prefixes"].as_u64().unwrap() >= 1, "{status}");
    assert!(xdp["ranges_applied_at"].as_u64().is_some(), "{status}");
    let dropped = xdp["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason"] == "dropped_not_allowed" && c["monitor"] == false)
        .unwrap_or_else(|| panic!("no drops in {status}"));
    assert!(dropped["packets"].as_u64().unwrap() > 0);
    let out = t.origin.exec(
        "curl",
        &["-s", "--max-time", "5", &format!("http://{admin}/metrics")],
    );
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.contains("gateway_xdp_attached{interface=\"eth0\",attach=\"native\"} 1"),
        "{metrics}"
    );
    let drops = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "gateway_xdp_packets_total{reason=\"dropped_not_allowed\",monitor=\"false\"} ",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(drops.parse::<u64>().unwrap() > 0, "{metrics}");
}

#[test]
fn strict_mode_drops_everything_but_keeps_the_hosts_own_connections() {
    let s = Setup::new("strict");
    let config = s.config("strict", "");
    let t = &s.topology;
    let _other = listen(&t.origin, 8080);
    // Servers out on the "internet" the origin talks to.
    let outside_web = listen(&t.outsider, 8443);
    let outside_dns = t.outsider.enter(|| UdpSocket::bind(("::", 5353)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_echo = stop.clone();
    let echo = std::thread::spawn(move || {
        outside_dns
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 512];
        while !stop_echo.load(Ordering::Relaxed) {
            if let Ok((n, from)) = outside_dns.recv_from(&mut buf) {
                let _ = outside_dns.send_to(&buf[..n], from);
            }
        }
    });
    let _daemon = Daemon::start(&t.origin, &config, &s.layout, &["eth0"]);

    for host in [ORIGIN4, ORIGIN6] {
        assert!(
            !connects(&t.outsider, host, 8080),
            "strict: outsider -> {host}:8080 dropped"
        );
        assert!(
            connects(&t.relay, host, 8080),
            "strict: relay -> {host}:8080 passes"
        );
    }
    let before = counter(&s.layout, "host_connection");
    for server in [OUTSIDER4, OUTSIDER6] {
        assert!(
            connects(&t.origin, server, 8443),
            "the origin's own TCP connection to {server} gets its replies"
        );
        let target = SocketAddr::new(ip(server), 5353);
        let answer = t.origin.enter(|| {
            let sock = UdpSocket::bind(if server.contains(':') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .unwrap();
            sock.connect(target).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            sock.send(b"query").unwrap();
            let mut buf = [0u8; 16];
            sock.recv(&mut buf).map(|n| buf[..n].to_vec())
        });
        assert_eq!(
            answer.expect("UDP reply to the origin's own query"),
            b"query"
        );
    }
    assert!(
        counter(&s.layout, "host_connection") > before,
        "replies were recognised by socket lookup"
    );
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    drop(outside_web);
}

/// Swapping range sets under continuous traffic: every relay packet passes,
/// every outsider packet is dropped, across 30 generation switches.
#[test]
fn range_updates_under_load_lose_no_relay_packet() {
    gateway_tests::require_root();
    let topology = Topology::new();
    let layout = unique_pin_dir("swapload");
    let _cleanup = PinGuard(layout.clone());
    let relay_set = |extra: &str| {
        RangeSet::new(
            vec![
                format!("{RELAY4}/32").parse().unwrap(),
                extra.parse().unwrap(),
            ],
            vec![],
        )
    };
    let mut filter = topology.origin.enter(|| {
        let mut filter = Filter::load(&layout).expect("load");
        filter
            .configure(&settings(FilterMode::Ports, false, &[443], &[]))
            .unwrap();
        filter.apply_ranges(&relay_set("198.51.100.0/24")).unwrap();
        assert_eq!(
            filter.attach("eth0", AttachMode::Native).unwrap(),
            Attached::Native
        );
        filter
    });
    let receiver = topology.origin.enter(|| {
        let sock = socket_with_big_buffer();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        sock
    });
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let rx = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut idle_since = Instant::now();
        loop {
            match receiver.recv(&mut buf) {
                Ok(_) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    idle_since = Instant::now();
                }
                Err(_) if idle_since.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
    });
    let relay_before = counter(&layout, "allowed_relay");
    let dropped_before = counter(&layout, "dropped_not_allowed");
    const BURSTS: u64 = 300;
    const BURST: u64 = 50;
    let sender = |ns: &Netns| {
        let sock = ns.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        std::thread::spawn(move || {
            for _ in 0..BURSTS {
                for _ in 0..BURST {
                    sock.send_to(b"packet", (ORIGIN4, 443)).unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let relay_tx = sender(&topology.relay);
    let outsider_tx = sender(&topology.outsider);
    let mut swaps = 0;
    while !relay_tx.is_finished() && swaps < 30 {
        let extra = if swaps % 2 == 0 {
            "203.0.113.0/24"
        } else {
            "198.51.100.0/24"
        };
        filter.apply_ranges(&relay_set(extra)).unwrap();
        swaps += 1;
    }
    relay_tx.join().unwrap();
    outsider_tx.join().unwrap();
    rx.join().unwrap();
    let sent = BURSTS * BURST;
    assert!(
        swaps >= 20,
        "only {swaps} swaps happened during the traffic"
    );
    assert_eq!(
        counter(&layout, "allowed_relay") - relay_before,
        sent,
        "every relay packet passed the filter"
    );
    assert_eq!(
        counter(&layout, "dropped_not_allowed") - dropped_before,
        sent,
        "every outsider packet was dropped"
    );
    assert_eq!(
        received.load(Ordering::Relaxed),
        sent,
        "the origin received exactly the relay's packets"
    );
    drop(filter);
}

fn socket_with_big_buffer() -> UdpSocket {
    let sock = UdpSocket::bind("0.0.0.0:443").unwrap();
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a valid int on an open socket.
    unsafe {
        use std::os::fd::AsRawFd as _;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        );
    }
    sock
}

#[test]
fn sigkill_leaves_the_filter_enforcing_and_a_restart_adopts_it() {
    let s = Setup::new("restart");
    let config = s.config("ports", "");
    let t = &s.topology;
    let _https = listen(&t.origin, 443);
    let mut daemon = Daemon::start(&t.origin, &config, &s.layout, &["eth0"]);
    assert!(!connects(&t.outsider, ORIGIN4, 443));
    daemon.kill9();

    assert!(
        !connects(&t.outsider, ORIGIN4, 443),
        "after SIGKILL the filter still drops outsiders"
    );
    assert!(!connects(&t.outsider, ORIGIN6, 443));
    assert!(
        connects(&t.relay, ORIGIN4, 443),
        "and still passes the relay"
    );
    let dropped = counter(&s.layout, "dropped_not_allowed");
    assert!(dropped > 0);

    // Maps pinned by an older layout version, as an upgrade would leave them.
    let old_maps = s.layout.root().join("maps-v0");
    std::fs::create_dir_all(&old_maps).unwrap();
    aya::maps::MapData::from_pin(s.layout.map(gateway_common::maps::SETTINGS))
        .unwrap()
        .pin(old_maps.join(gateway_common::maps::SETTINGS))
        .unwrap();

    let mut restarted = Daemon::start(&t.origin, &config, &s.layout, &["eth0"]);
    assert!(
        !old_maps.exists(),
        "maps of an older layout are removed once the program is swapped"
    );
    assert!(
        restarted.log_text().contains("Adopted"),
        "{}",
        restarted.log_text()
    );
    assert!(
        !connects(&t.outsider, ORIGIN4, 443),
        "the adopted filter enforces"
    );
    assert!(connects(&t.relay, ORIGIN6, 443));
    assert!(
        counter(&s.layout, "dropped_not_allowed") > dropped,
        "counters carried over and kept counting"
    );
    assert!(restarted.stop().success(), "clean stop on SIGTERM");
    assert!(
        !connects(&t.outsider, ORIGIN4, 443),
        "a clean stop leaves the filter enforcing too"
    );

    let out = gateway(
        &t.origin,
        &[
            "xdp",
            "detach",
            "--pin-dir",
            s.layout.root().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached from eth0"));
    assert!(
        connects_eventually(&t.outsider, ORIGIN4, 443),
        "after detach the outsider gets through"
    );
    assert!(!s.layout.root().exists(), "detach removes the pins");
}

#[test]
fn monitor_mode_reports_but_drops_nothing() {
    let s = Setup::new("monitor");
    let config = s.config("ports", "monitor = true");
    let t = &s.topology;
    let _https = listen(&t.origin, 443);
    let _daemon = Daemon::start(&t.origin, &config, &s.layout, &["eth0"]);
    assert!(
        connects(&t.outsider, ORIGIN4, 443),
        "monitor mode lets the outsider through"
    );
    let snapshot = stats::read(&s.layout, 5).unwrap();
    assert!(snapshot.monitor);
    assert!(
        snapshot
            .counters
            .iter()
            .any(|c| c.reason == "dropped_not_allowed" && c.monitor && c.packets > 0),
        "{:?}",
        snapshot.counters
    );
    assert!(
        snapshot
            .top_dropped_sources
            .iter()
            .any(|d| d.source == Some(ip(OUTSIDER4)) && d.monitor)
    );
}

#[test]
fn clear_errors_for_missing_interface_privileges_and_config() {
    let s = Setup::new("errors");
    let t = &s.topology;
    let path = s.dir.path().join("bad-iface.toml");
    std::fs::write(
        &path,
        std::fs::read_to_string(s.config("ports", ""))
            .unwrap()
            .replace("\"eth0\"", "\"nope0\""),
    )
    .unwrap();
    let out = gateway(
        &t.origin,
        &["xdp", "attach", "--config", path.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interface `nope0` does not exist"),
        "{stderr}"
    );

    let good = s.config("ports", "");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(gateway_tests::daemon::gateway_bin())
        .args(["xdp", "attach", "--config", good.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs root or CAP_BPF"), "{stderr}");

    let bad = s.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[xdp]\ninterfaces = [\"eth0\"]\nprotected_ports = [443]\n",
    )
    .unwrap();
    let out = gateway(&t.origin, &["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`xdp.relay`"));
    let out = gateway(&t.origin, &["check-config", good.to_str().unwrap()]);
    assert!(out.status.success());
}
