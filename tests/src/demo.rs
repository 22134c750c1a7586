//! `cargo xtask demo`: the whole gateway at work on this machine, in one
//! command. It builds test hosts in network namespaces on one bridge (the
//! demo's "internet"; every address is a documentation address and nothing
//! leaves the machine):
//!
//! ```text
//!   demo-relay    192.0.2.10     the relay (its range 192.0.2.0/24 is the only one let in)
//!   demo-outsider 198.51.100.20  anyone else          ─┐
//!   demo-bot      198.51.100.30  a service-token client (through the relay)
//!                                                      ├─ br0 (demo-net)
//!   demo-origin   203.0.113.10   the gateway (HTTPS :443, XDP on eth0) + the app
//! ```
//!
//! It starts the application (the harness's recording [`Upstream`]) on the
//! origin's loopback, the relay's key server (Cloudflare's certs document,
//! over HTTPS), and the real `gateway` binary with XDP attached to the
//! origin's interface and a config written into the demo's directory. Then
//! it drives real traffic and checks five outcomes: a user's request through
//! the relay with a valid JWT gets the app; an outsider going straight to the
//! origin is dropped by XDP; a request through the relay without a JWT gets
//! 401; the bot with a service token gets in; the token, once revoked, is
//! refused. After a clean stop (the audit log is flushed into Parquet) it
//! detaches the filter and prints an SQL report from the audit log.
//!
//! How the traffic travels, honestly: the relay is what sends a user's
//! request (with the JWT it signed), as Cloudflare's edge does; the bot's
//! TCP connection goes to the relay, which forwards it to the origin (a TCP
//! proxy in `demo-relay`), so its TLS session ends at the gateway and the
//! origin sees the relay's address.
//!
//! Everything it creates (namespaces, processes, XDP pins) is taken down by
//! guards when it ends, also on failure and on SIGINT/SIGTERM (the handler
//! sets a flag that every step and every wait checks; each wait is bounded).
//! Its files (config, certificates, token store, audit log) are kept for
//! querying.

use std::{
    fmt::Display,
    io::{ErrorKind, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use base64::Engine as _;
use gateway::{paths::PinLayout, xdp::stats};

use crate::{
    daemon::{Daemon, try_built_bin, try_token_credentials},
    filter::PinGuard,
    gateway::{AUD, ISSUER, Relay},
    netns::{Netns, try_wire},
    pki::TestCa,
    upstream::Upstream,
};

/// Every namespace the demo creates starts with this.
pub const NETNS_PREFIX: &str = "demo-";
/// Where the gateway pins the XDP program, links and maps (on bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/gateway-demo";
/// The origin's address: the gateway's HTTPS listener.
pub const ORIGIN: &str = "203.0.113.10";
/// The relay's address, inside [`RELAY_RANGE`].
pub const RELAY: &str = "192.0.2.10";
/// The relay range: the only sources the XDP filter lets reach port 443.
pub const RELAY_RANGE: &str = "192.0.2.0/24";
/// The outsider's address.
pub const OUTSIDER: &str = "198.51.100.20";
/// The bot's address.
pub const BOT: &str = "198.51.100.30";
/// The application's host name.
pub const APP_HOST: &str = "app.example.com";
/// The user whose JWT the relay signs.
pub const USER: &str = "alice@example.com";
/// The bot's service-token name.
pub const BOT_TOKEN: &str = "demo-bot";
/// Only one demo runs at a time on a machine (they share names).
const LOCK_FILE: &str = "/run/gateway-demo.lock";
/// The relay's key server port.
const CERTS_PORT: u16 = 8443;
/// How long the outsider waits for its TCP connection.
const OUTSIDER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a revoked token may still be accepted (the gateway re-reads its
/// token store every second).
const REVOKE_LIMIT: Duration = Duration::from_secs(5);
/// Time allowed for one HTTPS request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the gateway to drain and flush after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Time allowed for a command the demo runs (token CLI, detach, query).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// The report's SQL.
pub const REPORT_SQL: &str = "SELECT layer, decision, reason, count(*) AS events, \
     sum(packets) AS packets FROM decisions GROUP BY layer, decision, reason \
     ORDER BY layer, decision, reason";

/// Exit status: every outcome as expected.
pub const EXIT_OK: u8 = 0;
/// Exit status: an outcome was not as expected, or a step failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the demo cannot run here (privileges, tools, binaries).
pub const EXIT_CANNOT_RUN: u8 = 2;
/// Exit status: a bad command line.
pub const EXIT_USAGE: u8 = 64;
/// Exit status: stopped by SIGINT or SIGTERM (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;

/// The command line's help.
pub const USAGE: &str = "\
usage: demo [--dir DIR]

Runs the gateway on this machine in network namespaces (demo-origin,
demo-relay, demo-outsider, demo-bot on a bridge in demo-net): XDP on the
origin's interface, the identity gateway in front of an app, and the audit
log. Drives five requests and checks each outcome, prints an SQL report of
the audit log, then removes the namespaces, the gateway process and the XDP
pins (also on Ctrl-C or failure).

Options:
  --dir DIR   write the config, certificates, token store and audit log into
              DIR (created if missing, must be empty) instead of a new
              /tmp/gateway-demo-XXXXXX; either way the files are kept, so the
              audit log can be queried afterwards
  -h, --help  this help

Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2, and the
gateway-under-test and analytics-under-test binaries beside this one
(`cargo xtask demo` installs and builds everything, then runs it).

Exit status: 0 every outcome as expected, 1 an outcome was not (or a step
failed), 2 cannot run here, 64 bad usage, 130 interrupted.";

/// What the command line asked for.
#[derive(Debug, Default)]
pub struct Options {
    /// The directory for the demo's files (a new temporary one if `None`).
    pub dir: Option<PathBuf>,
}

impl Options {
    /// Parses the arguments after the program name. `Ok(None)` asks for the
    /// help; `Err` is a usage error.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--dir" => {
                    let dir = args.next().ok_or("--dir needs a directory")?;
                    options.dir = Some(dir.into());
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(Some(options))
    }
}

/// Why the demo stopped before its end.
#[derive(Debug)]
enum Stop {
    /// SIGINT or SIGTERM arrived.
    Interrupted,
    /// A step could not be carried out; the message says which and why.
    Failed(String),
}

type Result<T, E = Stop> = std::result::Result<T, E>;

impl Stop {
    /// A failure, unless a signal arrived meanwhile (a command killed by
    /// the terminal's Ctrl-C then fails because of the interruption).
    fn failed(message: impl Display) -> Self {
        if interrupted() {
            Self::Interrupted
        } else {
            Self::Failed(message.to_string())
        }
    }
}

/// Adds what was being done to a failure.
trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| Stop::failed(format!("{what}: {e}")))
    }
}

/// `println!` that ignores a closed stdout (e.g. `demo | head`): the demo
/// goes on and cleans up rather than panicking halfway.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let message = b"\ndemo: interrupted, cleaning up...\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is valid.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic and calls write(2).
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Between steps: stops the demo once a signal has arrived.
fn checkpoint() -> Result<()> {
    if interrupted() {
        Err(Stop::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps for `duration`, waking early when a signal arrives.
fn pause(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        checkpoint()?;
        std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
    }
    checkpoint()
}

/// Runs the demo and returns its exit status (see [`USAGE`]).
pub fn main(options: Options) -> ExitCode {
    let missing = missing_requirements();
    if !missing.is_empty() {
        eprintln!("demo: cannot run here; it needs:");
        for need in missing {
            eprintln!("  - {need}");
        }
        eprintln!("`cargo xtask demo`, run as root, installs and builds what it needs.");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    install_signal_handlers();
    let result = run(options);
    // Every guard has been dropped here: check that nothing was left.
    let leftovers = leftovers();
    if leftovers.is_empty() {
        say!(
            "cleaned up: no {NETNS_PREFIX}* namespace, no pins under {PIN_DIR}, no gateway process"
        );
    } else {
        eprintln!("demo: left behind: {}", leftovers.join("; "));
    }
    let status = match result {
        Ok(failed) if failed == 0 && leftovers.is_empty() => EXIT_OK,
        Ok(failed) => {
            if failed > 0 {
                eprintln!("demo: {failed} of 5 outcomes were not as expected (marked ✘ above)");
            }
            EXIT_FAILED
        }
        Err(Stop::Interrupted) => {
            eprintln!("demo: interrupted");
            EXIT_INTERRUPTED
        }
        Err(Stop::Failed(message)) => {
            eprintln!("demo: {message}");
            EXIT_FAILED
        }
    };
    let _ = std::io::stdout().flush();
    ExitCode::from(status)
}

/// What this machine lacks for the demo, in words; empty when it can run.
pub fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let lacking = missing_capabilities();
    if euid != 0 || !lacking.is_empty() {
        let detail = if lacking.is_empty() {
            String::new()
        } else {
            format!(" (missing: {})", lacking.join(", "))
        };
        missing.push(format!(
            "root with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN{detail}: it loads an XDP \
             program, creates network namespaces and mounts bpffs at /sys/fs/bpf if needed"
        ));
    }
    if !Path::new(gateway::paths::BPFFS).is_dir() {
        missing.push(format!(
            "{} to mount bpffs on (a kernel with BPF)",
            gateway::paths::BPFFS
        ));
    }
    if !Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        missing.push("`ip` from iproute2 (`cargo xtask setup` installs it)".into());
    }
    for bin in ["gateway-under-test", "analytics-under-test"] {
        if let Err(e) = try_built_bin(bin) {
            missing.push(e);
        }
    }
    missing
}

/// The capabilities the demo needs that this process does not have.
fn missing_capabilities() -> Vec<&'static str> {
    const NEEDED: [(u32, &str); 3] = [
        (39, "CAP_BPF"),
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
    ];
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

/// What the demo leaves behind if its cleanup failed: namespaces, pins,
/// gateway processes started from its config.
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| name.starts_with(NETNS_PREFIX))
                .map(|name| format!("namespace {name}")),
        );
    }
    if Path::new(PIN_DIR).exists() {
        found.push(format!("pin directory {PIN_DIR}"));
    }
    found.extend(
        gateway_processes()
            .into_iter()
            .map(|pid| format!("gateway process {pid}")),
    );
    found
}

/// Process ids of running gateways started by a demo: `gateway-under-test`
/// processes whose `--config` file pins under [`PIN_DIR`].
pub fn gateway_processes() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first()
                .is_some_and(|a| a.ends_with(b"gateway-under-test"))
                && args.windows(2).any(|w| {
                    w[0] == b"--config"
                        && std::fs::read_to_string(&*String::from_utf8_lossy(w[1]))
                            .is_ok_and(|config| config.contains(&format!("\"{PIN_DIR}\"")))
                })
        })
        .collect()
}

/// The demo's steps; the number of outcomes not as expected, or why it
/// stopped. Every guard it creates is dropped before it returns.
fn run(options: Options) -> Result<usize> {
    let _lock = DemoLock::acquire()?;
    let dir = work_dir(options.dir)?;
    let p = |name: &str| dir.join(name);
    say!("gateway demo: XDP lock-down, identity checks and the audit log, on this machine");
    say!(
        "files: {} (config: {})",
        dir.display(),
        p("gateway.toml").display()
    );
    remove_leftovers()?;

    let net = Network::build()?;
    net.check_reachable()?;
    checkpoint()?;

    let services = Services::start(&net, &dir)?;
    services.describe();
    let store = p("tokens.json");
    let (client_id, secret) = create_bot_token(&store)?;
    let config = p("gateway.toml");
    std::fs::write(&config, config_text(&dir, &services, &client_id))
        .context(format!("writing {}", config.display()))?;
    checkpoint()?;

    let layout = PinLayout::new(PIN_DIR);
    // Declared before the gateway, so dropped after it: the stopped daemon
    // leaves the filter pinned, and this takes it down.
    let _pins = PinGuard(layout.clone());
    let mut gateway = Gateway::start(&net.origin, &config, &layout, &dir)?;
    say!(
        "gateway running (pid {}): XDP attached to eth0 in demo-origin{}, HTTPS on {ORIGIN}:443",
        gateway.daemon.pid(),
        gateway.attach_mode()
    );
    say!();

    let traffic = Traffic {
        net: &net,
        services: &services,
        layout: &layout,
        store: &store,
        client_id: &client_id,
        secret: &secret,
    };
    let outcomes = [
        traffic.user_with_jwt()?,
        traffic.outsider()?,
        traffic.without_jwt()?,
        traffic.bot_with_token()?,
        traffic.revoked_token()?,
    ];
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    say!();

    gateway.stop()?;
    say!("gateway stopped (SIGTERM): audit log flushed into Parquet");
    detach_filter()?;
    checkpoint()?;

    report(&p("audit"))?;
    Ok(failed)
}

/// What runs on the test hosts besides the gateway: the app on the
/// origin's loopback; the relay's key server and its forwarding of the
/// bot's connections, on the relay's address. Stopped on drop.
struct Services {
    /// The demo's CA: it signed the gateway's and the key server's
    /// certificates.
    ca: TestCa,
    upstream: Upstream,
    relay: Relay,
    _forwarder: Forwarder,
}

impl Services {
    /// Starts them, and writes the CA and the gateway's certificate and
    /// key into `dir`.
    fn start(net: &Network, dir: &Path) -> Result<Self> {
        let ca = TestCa::new();
        let issued = ca.issue(&[APP_HOST]);
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("cert.pem", issued.cert_pem),
            ("key.pem", issued.key_pem),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).context(format!("writing {}", path.display()))?;
        }
        let upstream = net
            .origin
            .try_enter(|| TcpListener::bind("127.0.0.1:0"))
            .map_err(Stop::failed)?
            .and_then(Upstream::serve)
            .context("starting the app in demo-origin")?;
        let certs_listener = bind(&net.relay, &format!("{RELAY}:{CERTS_PORT}"))?;
        let relay = Relay::serve(certs_listener, &ca, &[RELAY]).map_err(Stop::failed)?;
        let forwarder = Forwarder::start(
            &net.relay,
            bind(&net.relay, &format!("{RELAY}:443"))?,
            SocketAddr::new(ip(ORIGIN), 443),
        )?;
        Ok(Self {
            ca,
            upstream,
            relay,
            _forwarder: forwarder,
        })
    }

    /// The relay's certs document URL, as the gateway fetches it.
    fn certs_url(&self) -> String {
        self.relay.server.url("/cdn-cgi/access/certs")
    }

    /// Prints the hosts and what runs on each.
    fn describe(&self) {
        say!();
        say!("test hosts (network namespaces on one bridge, documentation addresses):");
        say!(
            "  demo-origin    {ORIGIN:<14} the gateway (HTTPS :443, XDP on eth0) and the app ({})",
            self.upstream.url()
        );
        say!(
            "  demo-relay     {RELAY:<14} the relay, range {RELAY_RANGE}: sends users' requests \
             with the JWT it signs,"
        );
        say!(
            "                                serves its keys at {}, forwards TCP :443 to the origin",
            self.certs_url()
        );
        say!("  demo-outsider  {OUTSIDER:<14} anyone else on the internet");
        say!(
            "  demo-bot       {BOT:<14} a machine with a service token; connects to the relay, \
             which forwards it"
        );
        say!(
            "before the filter, every host reaches {ORIGIN}:443 (connection refused: nothing \
             listens yet)"
        );
    }
}

/// `gateway token create` for the bot: its (client id, secret).
fn create_bot_token(store: &Path) -> Result<(String, String)> {
    let created = run_bounded(
        gateway_cli()?
            .args(["token", "create", "--name", BOT_TOKEN, "--store"])
            .arg(store),
        "gateway token create",
    )?;
    let credentials = try_token_credentials(&created).context("gateway token create")?;
    say!(
        "service token {BOT_TOKEN} created: gateway token create --name {BOT_TOKEN} --store {}",
        store.display()
    );
    Ok(credentials)
}

/// `gateway xdp detach`: the filter's links, program and maps go.
fn detach_filter() -> Result<()> {
    let detached = run_bounded(
        gateway_cli()?.args(["xdp", "detach", "--pin-dir", PIN_DIR]),
        "gateway xdp detach",
    )?;
    if !detached.status.success() {
        return Err(Stop::failed(format!(
            "gateway xdp detach: {}",
            String::from_utf8_lossy(&detached.stderr).trim()
        )));
    }
    say!(
        "$ gateway xdp detach --pin-dir {PIN_DIR}\n{}",
        String::from_utf8_lossy(&detached.stdout).trim_end()
    );
    Ok(())
}

/// Takes down what a demo killed halfway (SIGKILL) left: its gateway and
/// its pins (its namespaces are replaced when created again). No other demo
/// runs meanwhile: the caller holds the lock.
fn remove_leftovers() -> Result<()> {
    for pid in gateway_processes() {
        say!("stopping a gateway left by an earlier run (pid {pid})");
        // SAFETY: a plain kill(2) of a process found above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            pause(Duration::from_millis(20))?;
        }
    }
    if Path::new(PIN_DIR).exists() {
        say!("removing XDP pins left by an earlier run ({PIN_DIR})");
        gateway::xdp::detach(&PinLayout::new(PIN_DIR))
            .map_err(|e| gateway::error_chain(&e))
            .context(format!("removing {PIN_DIR}"))?;
    }
    Ok(())
}

/// The demo's directory: `dir` (created, must be empty) or a new one under
/// the system's temporary directory. Kept after the demo.
fn work_dir(dir: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
            let mut entries =
                std::fs::read_dir(&dir).context(format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(Stop::failed(format!(
                    "{} is not empty (--dir needs an empty or new directory)",
                    dir.display()
                )));
            }
            std::path::absolute(&dir).context(format!("resolving {}", dir.display()))?
        }
        None => tempfile::Builder::new()
            .prefix("gateway-demo-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep(),
    };
    Ok(dir)
}

/// An exclusive lock on [`LOCK_FILE`], held for the whole run: two demos
/// would tear down each other's namespaces.
struct DemoLock {
    /// Unlocked when closed, at drop.
    _file: std::fs::File,
}

impl DemoLock {
    fn acquire() -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .context(format!("opening {LOCK_FILE}"))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Stop::failed(format!(
                "another demo is running on this machine (it holds {LOCK_FILE})"
            )));
        }
        Ok(Self { _file: file })
    }
}

fn ip(literal: &str) -> IpAddr {
    literal.parse().expect("a literal address")
}

/// A listener bound inside `ns`.
fn bind(ns: &Netns, address: &str) -> Result<TcpListener> {
    ns.try_enter(|| TcpListener::bind(address))
        .map_err(Stop::failed)?
        .context(format!("listening on {address} in {}", ns.name()))
}

/// The test hosts. Fields drop in order: hosts first, the switch last.
struct Network {
    origin: Netns,
    relay: Netns,
    outsider: Netns,
    bot: Netns,
    /// Holds the bridge; only kept to be removed on drop.
    _switch: Netns,
}

impl Network {
    /// Creates the namespaces and wires each host's `eth0` to a bridge.
    /// Every host gets its own documentation range and a default route on
    /// the link, so all of them reach each other directly.
    fn build() -> Result<Self> {
        let switch = Netns::try_new("demo-net").map_err(Stop::failed)?;
        switch
            .try_ip(&["link", "add", "br0", "type", "bridge"])
            .and_then(|()| switch.try_ip(&["link", "set", "br0", "up"]))
            .map_err(Stop::failed)?;
        let host = |role: &str, address: &str| -> Result<Netns> {
            checkpoint()?;
            let ns = Netns::try_new(&format!("{NETNS_PREFIX}{role}")).map_err(Stop::failed)?;
            try_wire(&switch, "br0", &format!("p-{role}"), &ns)
                .and_then(|()| ns.try_ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]))
                .and_then(|()| ns.try_ip(&["link", "set", "eth0", "up"]))
                .and_then(|()| ns.try_ip(&["route", "add", "default", "dev", "eth0"]))
                .map_err(Stop::failed)?;
            Ok(ns)
        };
        Ok(Self {
            origin: host("origin", ORIGIN)?,
            relay: host("relay", RELAY)?,
            outsider: host("outsider", OUTSIDER)?,
            bot: host("bot", BOT)?,
            _switch: switch,
        })
    }

    /// Before any filter, every host's SYN to the origin's port 443 is
    /// answered (with a reset: nothing listens yet). This also resolves the
    /// neighbours, so later timings are the filter's.
    fn check_reachable(&self) -> Result<()> {
        let target = SocketAddr::new(ip(ORIGIN), 443);
        for ns in [&self.relay, &self.outsider, &self.bot] {
            checkpoint()?;
            let result = ns
                .try_enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))
                .map_err(Stop::failed)?;
            match result {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Ok(_) => {}
                Err(e) => {
                    return Err(Stop::failed(format!(
                        "{} cannot reach {target} before any filter: {e}",
                        ns.name()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The relay's forwarding of the bot's connections: a TCP proxy running
/// in the relay's namespace, so the origin sees the relay's address.
/// Stopped on drop.
struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Forwarder {
    fn start(ns: &Netns, listener: TcpListener, to: SocketAddr) -> Result<Self> {
        listener
            .set_nonblocking(true)
            .context("the relay's forwarding listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = ns.spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // This thread is in the relay's namespace: so is the socket.
                if let Ok(origin) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                    let _ = client.set_nonblocking(false);
                    splice(client, origin);
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies bytes both ways between `a` and `b` until each side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let pipe = |from: TcpStream, to: TcpStream| {
        std::thread::spawn(move || {
            let (mut from, mut to) = (from, to);
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b);
        pipe(b2, a2);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The running gateway. Dropping it stops it (SIGTERM, bounded wait, then
/// SIGKILL) and keeps its log as `gateway.log` in the demo's directory.
struct Gateway {
    daemon: Daemon,
    log_copy: PathBuf,
    running: bool,
}

impl Gateway {
    fn start(ns: &Netns, config: &Path, layout: &PinLayout, dir: &Path) -> Result<Self> {
        let daemon = Daemon::try_start(ns, config, layout, &["eth0"], &interrupted)
            .map_err(|e| Stop::failed(format!("starting the gateway: {e}")))?;
        Ok(Self {
            daemon,
            log_copy: dir.join("gateway.log"),
            running: true,
        })
    }

    /// `, native` or `, generic`, from the daemon's log.
    fn attach_mode(&self) -> String {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("XDP filter attached"))
            .find_map(|l| l.split("attached=").nth(1)?.split_whitespace().next())
            .map_or_else(String::new, |mode| {
                format!(" ({})", mode.to_ascii_lowercase())
            })
    }

    /// SIGTERM, and a clean exit with the audit log flushed.
    fn stop(&mut self) -> Result<()> {
        self.running = false;
        let status = self.daemon.stop_within(STOP_LIMIT).map_err(Stop::failed)?;
        let log = self.daemon.log_text();
        if !status.success() || !log.contains("audit log flushed") {
            return Err(Stop::failed(format!(
                "the gateway did not stop cleanly ({status}); its log: {}",
                self.log_copy.display()
            )));
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.running {
            let _ = self.daemon.stop_within(STOP_LIMIT);
        }
        let _ = std::fs::write(&self.log_copy, self.daemon.log_text());
    }
}

/// A `gateway` command (the binary built beside the demo), run on the host.
fn gateway_cli() -> Result<Command> {
    Ok(Command::new(
        try_built_bin("gateway-under-test").map_err(Stop::failed)?,
    ))
}

/// Runs `command` to completion within [`COMMAND_LIMIT`], killing it when
/// the time is up or a signal arrives.
fn run_bounded(command: &mut Command, what: &str) -> Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("starting {what}"))?;
    let pid = child.id() as libc::pid_t;
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        match finished.recv_timeout(Duration::from_millis(50)) {
            Ok(output) => return output.context(what),
            Err(mpsc::RecvTimeoutError::Timeout) if !interrupted() && Instant::now() < deadline => {
            }
            Err(_) => {
                // SAFETY: our child, not reaped until `wait_with_output` returns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = finished.recv_timeout(Duration::from_secs(5));
                checkpoint()?;
                return Err(Stop::failed(format!(
                    "{what} did not finish within {} s",
                    COMMAND_LIMIT.as_secs()
                )));
            }
        }
    }
}

/// The gateway's configuration: XDP on the origin's `eth0` letting only
/// the relay range reach port 443, the HTTPS listener, the relay's keys,
/// the token store, the audit log, and one app with a policy for the bot's
/// token and one for the users of example.com.
fn config_text(dir: &Path, services: &Services, client_id: &str) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"# Written by the gateway demo (`cargo xtask demo`); see README.md, "Configuration".
[xdp]
interfaces = ["eth0"]
protected_ports = [443]
pin_dir = "{PIN_DIR}"

[[xdp.relay]]
cidrs = ["{RELAY_RANGE}"]

[http]
trusted_relays = ["{RELAY_RANGE}"]

[[http.https]]
listen = "{ORIGIN}:443"
cert = "{cert}"
key = "{key}"

[relay]
issuer = "{ISSUER}"
certs_url = "{certs_url}"
ca_file = "{ca}"

[sessions]
issuer = "https://origin.example.com"
key_dir = "{keys}"

[tokens]
store = "{tokens}"

[audit]
dir = "{audit}"
host = "demo-origin"

[[app]]
name = "demo-app"
hostname = "{APP_HOST}"
upstream = "{upstream}"
aud = "{AUD}"

[[app.policy]]
name = "bots"
action = "service_auth"
include = [{{ service_token = "{client_id}" }}]

[[app.policy]]
name = "staff"
action = "allow"
include = [{{ email_domain = "example.com" }}]
"#,
        cert = p("cert.pem"),
        key = p("key.pem"),
        certs_url = services.certs_url(),
        ca = p("ca.pem"),
        keys = p("keys"),
        tokens = p("tokens.json"),
        audit = p("audit"),
        upstream = services.upstream.url(),
    )
}

/// One checked outcome, printed as `✔ LABEL → WHAT` or `✘ LABEL → WHAT`.
struct Outcome {
    ok: bool,
}

impl Outcome {
    fn report(label: &str, ok: bool, what: impl Display) -> Self {
        let mark = if ok { '✔' } else { '✘' };
        say!("{mark} {label} → {what}");
        Self { ok }
    }
}

/// An HTTP answer.
struct Answer {
    status: u16,
    body: String,
}

/// Everything the five requests need.
struct Traffic<'a> {
    net: &'a Network,
    services: &'a Services,
    layout: &'a PinLayout,
    store: &'a Path,
    client_id: &'a str,
    secret: &'a str,
}

impl Traffic<'_> {
    /// `GET https://app.example.com/` from inside `ns`, connecting to
    /// `via` (the origin, or the relay's forwarding port).
    fn get(&self, ns: &Netns, via: &str, headers: &[(&str, &str)]) -> Result<Answer> {
        checkpoint()?;
        let via = SocketAddr::new(ip(via), 443);
        let tls = self.services.ca.client_config(&[b"http/1.1"]);
        let answer = ns
            .try_enter(|| -> Result<Answer, String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let client = reqwest::Client::builder()
                        .use_preconfigured_tls(tls)
                        .resolve(APP_HOST, via)
                        .no_proxy()
                        .timeout(REQUEST_TIMEOUT)
                        .build()
                        .map_err(|e| e.to_string())?;
                    let mut request = client.get(format!("https://{APP_HOST}/"));
                    for (name, value) in headers {
                        request = request.header(*name, *value);
                    }
                    let response = request.send().await.map_err(|e| gateway::error_chain(&e))?;
                    let status = response.status().as_u16();
                    let body = response
                        .text()
                        .await
                        .map_err(|e| gateway::error_chain(&e))?;
                    Ok(Answer { status, body })
                })
            })
            .map_err(Stop::failed)?;
        checkpoint()?;
        answer.context(format!(
            "GET https://{APP_HOST}/ from {} via {via}",
            ns.name()
        ))
    }

    /// The requests the app received from index `from` on.
    fn app_saw_since(&self, from: usize) -> Vec<crate::upstream::Recorded> {
        self.services
            .upstream
            .requests()
            .into_iter()
            .skip(from)
            .collect()
    }

    fn user_with_jwt(&self) -> Result<Outcome> {
        const LABEL: &str = "user via relay with a valid JWT";
        let before = self.services.upstream.count();
        let token = self.services.relay.user_token(USER);
        let answer = self.get(
            &self.net.relay,
            ORIGIN,
            &[("cf-access-jwt-assertion", &token)],
        )?;
        let seen = self.app_saw_since(before);
        let email = seen.first().and_then(|r| {
            r.values("cf-access-authenticated-user-email")
                .first()
                .map(|e| e.to_string())
        });
        Ok(if answer.status == 200 && email.as_deref() == Some(USER) {
            Outcome::report(
                LABEL,
                true,
                format!("200 from the app (upstream saw {USER})"),
            )
        } else {
            Outcome::report(
                LABEL,
                false,
                format!(
                    "expected 200 from the app for {USER}; got {} ({}), the app saw {email:?}",
                    answer.status,
                    answer.body.trim()
                ),
            )
        })
    }

    fn outsider(&self) -> Result<Outcome> {
        const LABEL: &str = "outsider straight to the origin";
        checkpoint()?;
        let dropped_before = self.dropped_packets()?;
        let target = SocketAddr::new(ip(ORIGIN), 443);
        let started = Instant::now();
        let result = self
            .net
            .outsider
            .try_enter(|| TcpStream::connect_timeout(&target, OUTSIDER_TIMEOUT))
            .map_err(Stop::failed)?;
        let waited = started.elapsed();
        checkpoint()?;
        let dropped = self.dropped_packets()?.saturating_sub(dropped_before);
        Ok(match result {
            Err(e) if e.kind() == ErrorKind::TimedOut && dropped > 0 => Outcome::report(
                LABEL,
                true,
                format!(
                    "dropped by XDP (TCP connect from {OUTSIDER} to {target} timed out after \
                     {:.1} s; XDP counted {dropped} dropped packet{})",
                    waited.as_secs_f64(),
                    if dropped == 1 { "" } else { "s" }
                ),
            ),
            other => Outcome::report(
                LABEL,
                false,
                format!(
                    "expected XDP to drop the connection; the connect {} after {:.1} s and XDP \
                     counted {dropped} dropped packets",
                    other.map_or_else(|e| format!("failed ({e})"), |_| "succeeded".into()),
                    waited.as_secs_f64()
                ),
            ),
        })
    }

    /// Packets XDP dropped as `dropped_not_allowed` so far.
    fn dropped_packets(&self) -> Result<u64> {
        let counters = stats::read_counters(self.layout)
            .map_err(|e| gateway::error_chain(&e))
            .context(format!("reading the XDP counters under {PIN_DIR}"))?;
        Ok(counters
            .iter()
            .filter(|c| c.reason == "dropped_not_allowed" && !c.monitor)
            .map(|c| c.packets)
            .sum())
    }

    fn without_jwt(&self) -> Result<Outcome> {
        const LABEL: &str = "request via relay without a JWT";
        let before = self.services.upstream.count();
        let answer = self.get(&self.net.relay, ORIGIN, &[])?;
        let reached = self.app_saw_since(before).len();
        Ok(if answer.status == 401 && reached == 0 {
            Outcome::report(LABEL, true, "401 from the gateway (the app never saw it)")
        } else {
            Outcome::report(
                LABEL,
                false,
                format!(
                    "expected 401 from the gateway; got {} ({}), and the app saw {reached} request(s)",
                    answer.status,
                    answer.body.trim()
                ),
            )
        })
    }

    fn bot_request(&self) -> Result<Answer> {
        self.get(
            &self.net.bot,
            RELAY,
            &[
                ("cf-access-client-id", self.client_id),
                ("cf-access-client-secret", self.secret),
            ],
        )
    }

    fn bot_with_token(&self) -> Result<Outcome> {
        const LABEL: &str = "bot with a service token via relay";
        let before = self.services.upstream.count();
        let answer = self.bot_request()?;
        let seen = self.app_saw_since(before);
        // The gateway exchanges the token for a session JWT it signs; its
        // `common_name` is the token's client id.
        let common_name = seen.first().and_then(|r| {
            let assertion = r.values("cf-access-jwt-assertion").first()?.to_string();
            session_common_name(&assertion)
        });
        Ok(
            if answer.status == 200 && common_name.as_deref() == Some(self.client_id) {
                Outcome::report(
                    LABEL,
                    true,
                    format!(
                        "200 from the app (upstream saw a gateway session for {BOT_TOKEN}, \
                         client id {})",
                        self.client_id
                    ),
                )
            } else {
                Outcome::report(
                    LABEL,
                    false,
                    format!(
                        "expected 200 from the app with a session for {}; got {} ({}), the app \
                         saw {common_name:?}",
                        self.client_id,
                        answer.status,
                        answer.body.trim()
                    ),
                )
            },
        )
    }

    fn revoked_token(&self) -> Result<Outcome> {
        const LABEL: &str = "revoked service token";
        let out = run_bounded(
            gateway_cli()?
                .args(["token", "revoke", BOT_TOKEN, "--store"])
                .arg(self.store),
            "gateway token revoke",
        )?;
        if !out.status.success() {
            return Err(Stop::failed(format!(
                "gateway token revoke: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // The running gateway re-reads its token store when it changes
        // (checked every second): until then the token still works.
        let revoked = Instant::now();
        let (answer, reached) = loop {
            let before = self.services.upstream.count();
            let answer = self.bot_request()?;
            if answer.status != 200 || revoked.elapsed() > REVOKE_LIMIT {
                break (answer, self.app_saw_since(before).len());
            }
            pause(Duration::from_millis(200))?;
        };
        let after = revoked.elapsed().as_secs_f64();
        Ok(if answer.status == 401 && reached == 0 {
            Outcome::report(
                LABEL,
                true,
                format!(
                    "401 from the gateway, {after:.1} s after `gateway token revoke {BOT_TOKEN}` \
                     (the running gateway re-read its token store)"
                ),
            )
        } else {
            Outcome::report(
                LABEL,
                false,
                format!(
                    "expected 401 within {} s of `gateway token revoke`; got {} ({}) after \
                     {after:.1} s, and the app saw {reached} request(s)",
                    REVOKE_LIMIT.as_secs(),
                    answer.status,
                    answer.body.trim()
                ),
            )
        })
    }
}

/// The `common_name` claim of a JWT (not verified: only for display).
fn session_common_name(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["common_name"].as_str().map(str::to_owned)
}

/// Prints the decisions by layer and reason (the `analytics` command over
/// the audit directory), where the Parquet files are, and how to query them.
fn report(audit: &Path) -> Result<()> {
    let analytics = try_built_bin("analytics-under-test").map_err(Stop::failed)?;
    let out = run_bounded(
        Command::new(&analytics)
            .arg("--dir")
            .arg(audit)
            .args(["query", REPORT_SQL]),
        "analytics query",
    )?;
    if !out.status.success() {
        return Err(Stop::failed(format!(
            "analytics query: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    say!();
    say!("audit log: decisions by layer and reason");
    say!(
        "$ analytics --dir {} query \"{REPORT_SQL}\"",
        audit.display()
    );
    let _ = std::io::stdout().write_all(&out.stdout);
    say!();
    say!("Parquet files:");
    let files = analytics::files::list(audit);
    for file in &files {
        say!("  {}", file.display());
    }
    if files.is_empty() {
        return Err(Stop::failed(format!(
            "no Parquet file under {}",
            audit.display()
        )));
    }
    say!("query them again:");
    say!(
        "  {} --dir {} query \"SELECT * FROM decisions ORDER BY event_time\"",
        analytics.display(),
        audit.display()
    );
    say!(
        "  duckdb: SELECT * FROM read_parquet('{}/**/*.parquet', hive_partitioning = true);",
        audit.display()
    );
    Ok(())
}
