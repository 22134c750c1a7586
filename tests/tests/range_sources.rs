//! Range sources against real parts: an HTTPS server on loopback (rustls,
//! certificates from a throwaway CA), files on disk, and the daemon's
//! SIGHUP reload in a network namespace.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use gateway::{
    config::{Config, Source},
    xdp::sources::RangeSources,
};
use gateway_tests::{
    daemon::Daemon,
    filter::unique_pin_dir,
    https::{HttpsServer, Reply},
    netns::{Topology, addr::*, ip},
};
use ipnet::IpNet;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Parses `[xdp]` with the given relay source lines and returns its sources.
fn relay_sources(source: &str) -> Vec<Source> {
    let text = format!("[xdp]\ninterfaces = [\"eth0\"]\n[[xdp.relay]]\n{source}\n");
    Config::parse(&text).expect("config").xdp.unwrap().relay
}

#[tokio::test]
async fn url_sources_read_text_lists_and_cloudflare_json() {
    let server = HttpsServer::start(Reply {
        status: 200,
        body: "192.0.2.0/24\n2001:db8::/32\n".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    server.write_ca(&ca);
    let sources = relay_sources(&format!(
        "url = \"{}\"\nca_file = \"{}\"",
        server.url("/ips"),
        ca.display()
    ));
    let loaded = RangeSources::load(&sources, &[], false)
        .await
        .expect("load");
    assert_eq!(
        loaded.set().relay(),
        nets(&["192.0.2.0/24", "2001:db8::/32"]).as_slice()
    );

    server.set(
        200,
        r#"{"result":{"ipv4_cidrs":["198.51.100.0/24"],"ipv6_cidrs":["2001:db8:1::/48"],"etag":"e"},"success":true}"#,
    );
    let loaded = RangeSources::load(&sources, &[], false)
        .await
        .expect("load JSON");
    assert_eq!(
        loaded.set().relay(),
        nets(&["198.51.100.0/24", "2001:db8:1::/48"]).as_slice()
    );
}

#[tokio::test]
async fn a_server_with_an_untrusted_certificate_is_refused() {
    let server = HttpsServer::start(Reply {
        status: 200,
        body: "192.0.2.0/24\n".into(),
    });
    let sources = relay_sources(&format!("url = \"{}\"", server.url("/ips")));
    let error = RangeSources::load(&sources, &[], false).await.unwrap_err();
    let message = gateway::error_chain(&error);
    assert!(
        message.contains("cannot fetch") && message.to_lowercase().contains("certificate"),
        "{message}"
    );
    assert_eq!(
        server.requests(),
        0,
        "no request is sent over an unverified connection"
    );
}

#[tokio::test]
async fn failed_empty_or_suspicious_updates_keep_the_last_good_set() {
    let server = HttpsServer::start(Reply {
        status: 200,
        body: "192.0.2.0/24\n".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    server.write_ca(&ca);
    let sources = relay_sources(&format!(
        "url = \"{}\"\nca_file = \"{}\"\nrefresh_secs = 60",
        server.url("/ips-v4"),
        ca.display()
    ));
    let mut loaded = RangeSources::load(&sources, &[], false).await.unwrap();
    let good = loaded.set();

    let bad_updates = [
        (503, "unavailable", "503"),
        (200, "", "no prefixes"),
        (200, "# nothing here\n", "no prefixes"),
        (200, "192.0.2.0/24\n0.0.0.0/0\n", "allows every address"),
        (200, "::/0\n", "allows every address"),
        (200, "<html><body>Login</body></html>", "not an IP prefix"),
        (
            200,
            r#"{"result":{"ipv4_cidrs":[],"ipv6_cidrs":[]}}"#,
            "no prefixes",
        ),
    ];
    for (status, body, reason) in bad_updates {
        server.set(status, body);
        let outcome = loaded.refresh(true).await;
        assert!(!outcome.changed, "{body:?} must not change the set");
        assert_eq!(outcome.failures.len(), 1, "{body:?} is reported");
        let message = gateway::error_chain(&outcome.failures[0].1);
        assert!(message.contains(reason), "{body:?}: {message}");
        assert_eq!(loaded.set(), good, "the last good set stays after {body:?}");
    }
    server.set(200, "192.0.2.0/24\n198.51.100.0/24\n");
    let outcome = loaded.refresh(true).await;
    assert!(outcome.changed && outcome.failures.is_empty());
    assert_eq!(
        loaded.set().relay(),
        nets(&["192.0.2.0/24", "198.51.100.0/24"]).as_slice()
    );

    // Not due yet: nothing is fetched.
    let before = server.requests();
    let outcome = loaded.refresh(false).await;
    assert!(!outcome.changed && outcome.failures.is_empty());
    assert_eq!(server.requests(), before);
}

#[tokio::test]
async fn file_sources_are_reread_and_a_vanished_file_keeps_the_last_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ips-v4");
    std::fs::write(&path, "# Cloudflare-style list\n192.0.2.0/24\n").unwrap();
    let sources = relay_sources(&format!("file = \"{}\"", path.display()));
    let mut loaded = RangeSources::load(&sources, &[], false).await.unwrap();
    assert_eq!(loaded.set().relay(), nets(&["192.0.2.0/24"]).as_slice());
    std::fs::write(&path, "192.0.2.0/25\n203.0.113.0/24\n").unwrap();
    assert!(loaded.refresh(true).await.changed);
    assert_eq!(
        loaded.set().relay(),
        nets(&["192.0.2.0/25", "203.0.113.0/24"]).as_slice()
    );
    std::fs::remove_file(&path).unwrap();
    let outcome = loaded.refresh(true).await;
    assert!(!outcome.changed);
    assert!(gateway::error_chain(&outcome.failures[0].1).contains("cannot read"));
    assert_eq!(
        loaded.set().relay(),
        nets(&["192.0.2.0/25", "203.0.113.0/24"]).as_slice()
    );
}

/// The daemon re-reads its config and sources on SIGHUP and swaps the new
/// set in while attached.
#[test]
fn sighup_applies_a_changed_range_file() {
    let topology = Topology::new();
    let layout = unique_pin_dir("sighup");
    let _cleanup = gateway_tests::filter::PinGuard(layout.clone());
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("relays.txt");
    std::fs::write(&list, format!("{RELAY4}/32\n{RELAY6}/128\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    let mut file = std::fs::File::create(&config).unwrap();
    write!(
        file,
        "[xdp]\ninterfaces = [\"eth0\"]\nprotected_ports = [443]\npin_dir = \"{}\"\n[[xdp.relay]]\nfile = \"{}\"\n[audit]\ndir = \"{}\"\n",
        layout.root().display(),
        list.display(),
        dir.path().join("audit").display(),
    )
    .unwrap();
    let _listener = topology
        .origin
        .enter(|| std::net::TcpListener::bind(("::", 443)).unwrap());
    let daemon = Daemon::start(&topology.origin, &config, &layout, &["eth0"]);
    let connects = |ns: &gateway_tests::netns::Netns, host: &str| {
        let target = SocketAddr::new(ip(host), 443);
        ns.enter(|| {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(800)).is_ok()
        })
    };
    assert!(connects(&topology.relay, ORIGIN4));
    assert!(!connects(&topology.outsider, ORIGIN4));

    std::fs::write(&list, format!("{OUTSIDER4}/32\n{OUTSIDER6}/128\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        connects(&topology.outsider, ORIGIN4),
        "the new list allows the former outsider"
    );
    assert!(connects(&topology.outsider, ORIGIN6));
    assert!(
        !connects(&topology.relay, ORIGIN4),
        "the old relay is now refused"
    );
}
