//! Network namespaces as test hosts, wired to one bridge, removed on drop
//! (also when the test panics).
//!
//! ```text
//!   relay 192.0.2.2 ─┐
//!                    ├─ br0 (switch namespace) ─ origin 192.0.2.1 (XDP on eth0)
//! outsider 192.0.2.3 ┘
//! ```
//!
//! Every host also has an IPv6 address in 2001:db8::/64. Only documentation
//! ranges are used, and nothing leaves the namespaces.

use std::{
    net::IpAddr,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

/// One network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (which must be unique) with `lo` up.
    pub fn new(name: &str) -> Self {
        Self::try_new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Netns::new`], returning a failure (e.g. `ip` missing, no
    /// privileges) instead of panicking. A namespace of the same name left
    /// by an earlier run is replaced.
    pub fn try_new(name: &str) -> Result<Self, String> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        try_run(&["ip", "netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `ip ARGS` inside the namespace; the failure names the command
    /// and carries its stderr.
    pub fn try_ip(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        try_run(&full)
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created
    /// inside stay in the namespace after `f` returns.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_enter(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Netns::enter`], returning a failure to enter the namespace instead
    /// of panicking (a panic inside `f` still panics).
    pub fn try_enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        let name = &self.name;
        std::thread::scope(|scope| {
            scope
                .spawn(|| enter_netns(name).map(|()| f()))
                .join()
                .expect("thread inside the namespace panicked")
        })
    }

    /// Starts a thread that enters this namespace, then runs `f` (e.g. a
    /// server that opens connections from inside). The thread's result is
    /// `Err` if it could not enter.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let name = self.name.clone();
        std::thread::spawn(move || enter_netns(&name).map(|()| f()))
    }
}

/// Moves the calling thread into network namespace `name`.
fn enter_netns(name: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: setns on this thread only, with a valid fd.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns into {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn try_run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Connects `host` to `bridge` in `switch` with a veth pair: `port` on the
/// bridge (up), `eth0` in `host` (down, no address yet).
pub fn try_wire(switch: &Netns, bridge: &str, port: &str, host: &Netns) -> Result<(), String> {
    switch.try_ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        host.name(),
    ])?;
    switch.try_ip(&["link", "set", port, "master", bridge])?;
    switch.try_ip(&["link", "set", port, "up"])
}

/// The three hosts of the diagram above, plus the switch.
pub struct Topology {
    /// The origin host; its `eth0` carries the XDP filter.
    pub origin: Netns,
    /// A host inside the relay ranges.
    pub relay: Netns,
    /// A host outside every range.
    pub outsider: Netns,
    /// Holds the bridge. Declared last: hosts go first on drop.
    pub switch: Netns,
}

/// Addresses of the topology.
pub mod addr {
    /// Origin, IPv4.
    pub const ORIGIN4: &str = "192.0.2.1";
    /// Relay, IPv4.
    pub const RELAY4: &str = "192.0.2.2";
    /// Outsider, IPv4.
    pub const OUTSIDER4: &str = "192.0.2.3";
    /// Origin, IPv6.
    pub const ORIGIN6: &str = "2001:db8::1";
    /// Relay, IPv6.
    pub const RELAY6: &str = "2001:db8::2";
    /// Outsider, IPv6.
    pub const OUTSIDER6: &str = "2001:db8::3";
}

impl Topology {
    /// Builds the namespaces, veth pairs and bridge. Names carry the process
    /// id and a counter so tests can run side by side.
    pub fn new() -> Self {
        crate::require_root();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = Netns::new(&format!("gw-sw-{id}"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let host = |role: &str, last: u8| {
            let ns = Netns::new(&format!("gw-{role}-{id}"));
            try_wire(&switch, "br0", &format!("p-{role}"), &ns).unwrap_or_else(|e| panic!("{e}"));
            ns.ip(&["addr", "add", &format!("192.0.2.{last}/24"), "dev", "eth0"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("2001:db8::{last}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns
        };
        let topology = Self {
            origin: host("origin", 1),
            relay: host("relay", 2),
            outsider: host("outsider", 3),
            switch,
        };
        // Resolve neighbours up front: the first packets of a test should
        // measure the filter, not ARP/ND.
        for (ns, peer) in [
            (&topology.relay, addr::ORIGIN4),
            (&topology.outsider, addr::ORIGIN4),
            (&topology.relay, addr::ORIGIN6),
            (&topology.outsider, addr::ORIGIN6),
        ] {
            let out = ns.exec("ping", &["-c", "1", "-W", "2", peer]);
            assert!(
                out.status.success(),
                "{} cannot reach {peer} before any filter: {}",
                ns.name(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        topology
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses a literal address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}
