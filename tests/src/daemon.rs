//! The real `gateway` command line, started as a separate process inside a
//! test host's network namespace (but in the test's mount namespace, so its
//! bpffs pins are the ones the test reads). Killed on drop.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use gateway::paths::PinLayout;

use crate::netns::Netns;

/// Path of the gateway binary built for the tests.
pub fn gateway_bin() -> PathBuf {
    built_bin("gateway-under-test")
}

/// Path of a binary of this package built for the tests: cargo puts it
/// beside the `deps/` directory that holds the test executables, and beside
/// the benchmark binaries (`cargo xtask bench` builds it with them).
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| {
            panic!(
                "no {name} beside {}: run the tests with `cargo test` or \
                 `cargo xtask test`, which build it",
                exe.display()
            )
        })
}

/// (client id, secret) from the output of `gateway token create` or
/// `rotate`; panics, with the command's stderr, if it failed.
pub fn token_credentials(out: &Output) -> (String, String) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    (
        field("CF-Access-Client-Id:"),
        field("CF-Access-Client-Secret:"),
    )
}

/// A `gateway` command that will run inside `ns`'s network namespace.
pub fn gateway_command(ns: &Netns) -> Command {
    let mut cmd = Command::new(gateway_bin());
    let path = format!("/var/run/netns/{}", ns.name());
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: only async-signal-safe calls (setns) between fork and exec; the
    // file stays open in the parent until the command is spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Config of an app `wiki.example.com` whose one policy admits service
/// tokens only (its upstream, port 9, is never reached): a request without
/// credentials is refused with 401 and audited.
pub const SERVICE_AUTH_APP: &str = r#"[[app]]
name = "wiki"
hostname = "wiki.example.com"
upstream = "http://127.0.0.1:9"
[[app.policy]]
name = "bots"
action = "service_auth"
include = ["any_service_token"]"#;

/// Runs `gateway ARGS` in `ns` to completion.
pub fn gateway(ns: &Netns, args: &[&str]) -> Output {
    gateway_command(ns)
        .args(args)
        .output()
        .expect("cannot run the gateway binary")
}

/// A running `gateway run` daemon.
pub struct Daemon {
    child: Option<Child>,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `gateway run --config CONFIG` in `ns` and waits until it says
    /// it is running and every interface in `interfaces` has a pinned link
    /// under `layout`.
    pub fn start(ns: &Netns, config: &Path, layout: &PinLayout, interfaces: &[&str]) -> Self {
        Self::spawn(gateway_command(ns), config, |_| {
            interfaces.iter().all(|i| layout.link(i).exists())
        })
    }

    /// Starts `gateway run --config CONFIG` in the test's own network
    /// namespace (loopback listeners only) and waits until it is running.
    pub fn start_local(config: &Path) -> Self {
        Self::start_local_with_env(config, &[])
    }

    /// [`Daemon::start_local`] with extra environment variables (e.g. a
    /// bucket's credentials).
    pub fn start_local_with_env(config: &Path, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(gateway_bin());
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command, config, |_| true)
    }

    fn spawn(mut command: Command, config: &Path, ready: impl Fn(&Self) -> bool) -> Self {
        let log = config.with_extension(format!("log-{}", std::process::id()));
        let stderr = File::create(&log).expect("log file");
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("cannot start the gateway");
        let mut daemon = Self {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(daemon.log_text().contains("gateway running") && ready(&daemon)) {
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited early ({status}):\n{}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start within 30 s:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon stopped").id()
    }

    /// The addresses the daemon logged as `listening`, in config order
    /// (HTTPS listeners first, then plain ones).
    pub fn listening(&self) -> Vec<std::net::SocketAddr> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| l.split("address=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("daemon stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}
