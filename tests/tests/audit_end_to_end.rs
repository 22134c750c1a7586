//! Both layers' decisions in one SQL answer: a real gateway with the XDP
//! filter on the origin's interface and an HTTP listener behind it; an
//! outsider's packets are dropped by XDP, a request through the relay
//! without credentials is refused by the HTTP layer, and after a clean
//! stop `analytics query` over the audit directory shows both. A source
//! too slow for the kernel to ever report is reported by the daemon's sweep
//! of the drop slots, while it runs (seen by `analytics tail`), exactly
//! once.

use std::{
    net::UdpSocket,
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::{
    audit::{analytics, json_lines, query_rows},
    daemon::{Daemon, SERVICE_AUTH_APP},
    filter::{PinGuard, unique_pin_dir},
    netns::{Topology, addr::*},
    require_root,
};
use serde_json::json;

/// Datagrams the outsider sends.
const DATAGRAMS: u64 = 20;

/// Packets of UDP drops from the outsider in the JSON lines `analytics`
/// prints with `args`.
fn udp_drops(audit_dir: &Path, args: &[&str]) -> u64 {
    let out = analytics(audit_dir, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
        .iter()
        .filter(|e| e["layer"] == "xdp" && e["protocol"] == "udp" && e["client_ip"] == OUTSIDER4)
        .map(|e| e["packets"].as_u64().unwrap())
        .sum()
}

#[test]
fn an_xdp_drop_and_an_http_refusal_appear_in_the_sql_output() {
    require_root();
    let topology = Topology::new();
    let layout = unique_pin_dir("audit-e2e");
    // Dropped after the daemon: the stopped daemon leaves the filter pinned.
    let _pins = PinGuard(layout.clone());
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[xdp]
interfaces = ["eth0"]
protected_ports = [80]
pin_dir = "{pin}"
[[xdp.relay]]
cidrs = ["{RELAY4}/32", "{RELAY6}/128"]

[http]
[[http.plain]]
listen = "0.0.0.0:80"

[tokens]
store = "{tokens}"

[audit]
dir = "{audit}"
host = "origin-1"

{SERVICE_AUTH_APP}
"#,
            pin = layout.root().display(),
            tokens = dir.path().join("tokens.json").display(),
            audit = audit_dir.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&topology.origin, &config, &layout, &["eth0"]);

    // Through the relay, without credentials: the HTTP layer refuses.
    let out = topology.relay.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-H",
            "Host: wiki.example.com",
            &format!("http://{ORIGIN4}/page"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // Straight from an outsider: dropped before the stack sees it.
    let out = topology.outsider.exec(
        "curl",
        &["-s", "--max-time", "1", &format!("http://{ORIGIN4}/")],
    );
    assert!(!out.status.success(), "the outsider must not get an answer");
    // A few datagrams: far fewer than the 64 after which the kernel itself
    // hands a drop record over, so only the daemon's sweep of the slots
    // reports them, on whichever CPUs they were counted.
    topology.outsider.enter(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..DATAGRAMS {
            socket.send_to(b"probe", (ORIGIN4, 80)).unwrap();
        }
    });
    // Visible while the daemon runs (tail reads the write-ahead segment).
    let deadline = Instant::now() + Duration::from_secs(20);
    while udp_drops(&audit_dir, &["tail", "-n", "1000", "--format", "json"]) < DATAGRAMS {
        assert!(
            Instant::now() < deadline,
            "the sweep never reported the datagrams\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    // Exactly once: the stop's final sweep does not report them again.
    let sql = format!(
        "SELECT * FROM decisions WHERE layer = 'xdp' AND protocol = 'udp' AND client_ip = '{OUTSIDER4}'"
    );
    assert_eq!(
        udp_drops(&audit_dir, &["query", "--format", "json", &sql]),
        DATAGRAMS
    );

    let rows = query_rows(
        audit_dir.as_os_str(),
        &[],
        "SELECT DISTINCT host, layer, decision, reason, client_ip, app, status \
         FROM decisions ORDER BY layer",
    );
    let http = json!({
        "host": "origin-1", "layer": "http", "decision": "deny", "reason": "no_credentials",
        "client_ip": RELAY4, "app": "wiki", "status": 401,
    });
    assert!(rows.contains(&http), "{rows:#?}");
    assert!(
        rows.iter().any(|row| row["host"] == "origin-1"
            && row["layer"] == "xdp"
            && row["decision"] == "deny"
            && row["client_ip"] == OUTSIDER4
            && row["reason"] == "dropped_not_allowed"),
        "{rows:#?}"
    );
}
