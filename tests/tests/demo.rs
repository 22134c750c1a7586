//! `cargo xtask demo` as a test: the `demo` binary runs as a separate
//! process, as a user runs it, and its output must show each of the five
//! outcomes and the SQL report; the audit files it points at must hold the
//! same decisions; and nothing may be left behind (namespaces, XDP pins, a
//! gateway process), also when it is interrupted with SIGINT halfway or
//! refuses to run without privileges.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use gateway_tests::{
    audit::query_rows,
    demo::{
        BOT_TOKEN, EXIT_CANNOT_RUN, EXIT_INTERRUPTED, OUTSIDER, PIN_DIR, RELAY, USER, leftovers,
    },
    require_root,
};
use serde_json::json;

/// The demo's namespaces and pins have fixed names: one demo at a time.
static ONE_DEMO: Mutex<()> = Mutex::new(());

/// The longest a whole demo may take here (it takes a few seconds).
const DEMO_LIMIT: Duration = Duration::from_secs(120);

/// How soon an interrupted demo must have cleaned up and exited.
const INTERRUPT_LIMIT: Duration = Duration::from_secs(20);

/// The line each outcome must print, up to its details.
const OUTCOMES: [&str; 5] = [
    "✔ user via relay with a valid JWT → 200 from the app (upstream saw alice@example.com)",
    "✔ outsider straight to the origin → dropped by XDP (TCP connect from 198.51.100.20 to 203.0.113.10:443 timed out",
    "✔ request via relay without a JWT → 401 from the gateway (the app never saw it)",
    "✔ bot with a service token via relay → 200 from the app (upstream saw a gateway session for demo-bot",
    "✔ revoked service token → 401 from the gateway,",
];

fn demo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_demo"))
}

/// A running demo whose stdout lines arrive on a channel as printed, and
/// whose stderr is collected; killed on drop if still running.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn start(dir: &Path) -> Self {
        let mut child = demo()
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Reads stdout until a line starts with `prefix`; panics after `limit`.
    fn wait_for_line(&mut self, prefix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.starts_with(prefix);
                    self.stdout.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {limit:?}:\n{}",
                    self.stdout.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit (panicking after `limit`); the status, stdout and
    /// stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {limit:?}:\n{}",
                self.stdout.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe closes at exit, so this ends.
        self.stdout.extend(self.lines.iter());
        let stderr = self
            .stderr
            .take()
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default();
        (status, self.stdout.join("\n"), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The report's table rows (`| layer | decision | reason | ... |`), header
/// excluded, as (layer, decision, reason, events).
fn report_rows(stdout: &str) -> Vec<(String, String, String, u64)> {
    stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells[0] != "layer")
        .map(|cells| {
            let events = cells[3].parse().expect("an event count");
            (cells[0].clone(), cells[1].clone(), cells[2].clone(), events)
        })
        .collect()
}

fn assert_nothing_left() {
    let left = leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The same, looked up independently of the demo's own check.
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.lines().any(|l| l.starts_with("demo-")),
        "{namespaces}"
    );
    assert!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} is still there");
}

#[test]
fn the_demo_shows_every_outcome_and_leaves_nothing_behind() {
    require_root();
    let _one = ONE_DEMO.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("demo");
    let started = Instant::now();
    let (status, stdout, stderr) = Running::start(&files).finish(DEMO_LIMIT);
    eprintln!("the demo took {:.1} s", started.elapsed().as_secs_f64());
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");

    for outcome in OUTCOMES {
        assert!(
            stdout.lines().any(|l| l.starts_with(outcome)),
            "missing {outcome:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains('✘'), "{stdout}");
    assert!(
        stdout.contains(&format!("files: {}", files.display())),
        "{stdout}"
    );

    // The report: both layers, with the reasons the five requests produce.
    let rows = report_rows(&stdout);
    let keys: Vec<_> = rows
        .iter()
        .map(|(l, d, r, _)| (l.as_str(), d.as_str(), r.as_str()))
        .collect();
    for expected in [
        ("http", "allow", "policy"),
        ("http", "deny", "no_credentials"),
        ("http", "deny", "service_token_refused"),
        ("xdp", "deny", "dropped_not_allowed"),
    ] {
        assert!(keys.contains(&expected), "{expected:?} not in {rows:?}");
    }
    // The user and the bot (at least once, more while the revocation was
    // on its way) were allowed; one request without a JWT was refused.
    let events = |reason: &str| rows.iter().find(|r| r.2 == reason).map(|r| r.3);
    assert!(events("policy") >= Some(2), "{rows:?}");
    assert_eq!(events("no_credentials"), Some(1), "{rows:?}");

    // The files it names hold the same decisions, with who made them.
    let audit = files.join("audit");
    assert!(stdout.contains(&audit.display().to_string()), "{stdout}");
    let decisions = query_rows(
        audit.as_os_str(),
        &[],
        "SELECT DISTINCT layer, decision, reason, status, email, token_name, client_ip \
         FROM decisions WHERE layer = 'http'",
    );
    for expected in [
        json!({"layer": "http", "decision": "allow", "reason": "policy", "status": 200,
               "email": USER, "client_ip": RELAY}),
        json!({"layer": "http", "decision": "allow", "reason": "policy", "status": 200,
               "token_name": BOT_TOKEN, "client_ip": RELAY}),
        json!({"layer": "http", "decision": "deny", "reason": "no_credentials", "status": 401,
               "client_ip": RELAY}),
        json!({"layer": "http", "decision": "deny", "reason": "service_token_refused",
               "status": 401, "client_ip": RELAY}),
    ] {
        assert!(
            decisions.iter().any(|row| {
                expected
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &row[k] == v)
            }),
            "{expected} not in {decisions:#?}"
        );
    }
    let drops = query_rows(
        audit.as_os_str(),
        &[],
        "SELECT client_ip, dst_port, sum(packets) AS packets FROM decisions \
         WHERE layer = 'xdp' GROUP BY client_ip, dst_port",
    );
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0]["client_ip"], OUTSIDER);
    assert_eq!(drops[0]["dst_port"], 443);
    assert!(drops[0]["packets"].as_u64() >= Some(1), "{drops:?}");

    assert_nothing_left();
}

#[test]
fn sigint_in_the_middle_stops_the_demo_promptly_and_cleans_up() {
    require_root();
    let _one = ONE_DEMO.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running::start(&dir.path().join("demo"));
    // The gateway runs, XDP is attached, traffic has started.
    running.wait_for_line(OUTCOMES[0], DEMO_LIMIT);
    assert!(Path::new(PIN_DIR).exists(), "the filter is pinned by now");
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGINT) };
    let interrupted = Instant::now();
    let (status, stdout, stderr) = running.finish(INTERRUPT_LIMIT);
    eprintln!(
        "the demo exited {:.1} s after SIGINT",
        interrupted.elapsed().as_secs_f64()
    );
    assert_eq!(
        status.code(),
        Some(i32::from(EXIT_INTERRUPTED)),
        "{status}\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("demo: interrupted"), "{stderr}");
    assert!(
        !stdout.contains(OUTCOMES[4]),
        "it stopped before the last outcome:\n{stdout}"
    );
    assert!(stdout.contains("cleaned up:"), "{stdout}");
    assert_nothing_left();
}

#[test]
fn without_privileges_it_says_what_it_needs_and_touches_nothing() {
    require_root();
    let _one = ONE_DEMO.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("demo");
    // As `nobody`, without capabilities (setpriv is in util-linux).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_demo"))
        .arg("--dir")
        .arg(&files)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_CANNOT_RUN)),
        "{stderr}"
    );
    for needed in ["root", "CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"] {
        assert!(stderr.contains(needed), "{stderr}");
    }
    assert!(!files.exists(), "it created {}", files.display());
    assert_nothing_left();
}
