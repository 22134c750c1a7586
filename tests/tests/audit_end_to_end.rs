//! Both layers' decisions in one SQL answer: a real gateway with the XDP
//! filter on the origin's interface and an HTTP listener behind it; an
//! outsider's packets are dropped by XDP, a request through the relay
//! without credentials is refused by the HTTP layer, and after a clean
//! stop `analytics query` over the audit directory shows both.

use std::{net::UdpSocket, time::Duration};

use gateway_tests::{
    audit::{analytics, json_lines},
    daemon::Daemon,
    filter::{PinGuard, unique_pin_dir},
    netns::{Topology, addr::*},
    pin_thread_to_cpu, require_root,
};
use serde_json::json;

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

[[app]]
name = "wiki"
hostname = "wiki.example.com"
upstream = "http://127.0.0.1:9"
[[app.policy]]
name = "bots"
action = "service_auth"
include = ["any_service_token"]
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
    // A steady stream from the same source: the kernel hands a source's
    // drop record over every 64 packets once the record is a second old.
    // Records are per CPU (veth runs XDP on the sender's), so the sender
    // stays on one CPU: split over two, neither half might reach the next
    // multiple of 64 after the first second.
    topology.outsider.enter(|| {
        pin_thread_to_cpu(0);
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..400 {
            socket.send_to(b"probe", (ORIGIN4, 80)).unwrap();
            std::thread::sleep(Duration::from_millis(6));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.log_text());

    let out = analytics(
        &audit_dir,
        &[
            "query",
            "--format",
            "json",
            "SELECT DISTINCT host, layer, decision, reason, client_ip, app, status \
             FROM decisions ORDER BY layer",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_lines(&out.stdout);
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
