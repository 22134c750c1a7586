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
    try_built_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// [`built_bin`], returning where it was looked for (and how to build it)
/// when it is missing.
pub fn try_built_bin(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|bin| bin.exists())
        .ok_or_else(|| {
            format!(
                "no {name} beside {}: run the tests with `cargo test` or \
                 `cargo xtask test`, which build it (or `cargo build -p gateway-tests --bins`)",
                exe.display()
            )
        })
}

/// (client id, secret) from the output of `gateway token create` or
/// `rotate`; panics, with the command's stderr, if it failed.
pub fn token_credentials(out: &Output) -> (String, String) {
    try_token_credentials(out).unwrap_or_else(|e| panic!("{e}"))
}

/// [`token_credentials`], returning the command's stderr (or its output
/// when a field is missing) as the failure.
pub fn try_token_credentials(out: &Output) -> Result<(String, String), String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|value| value.trim().to_string())
            .ok_or_else(|| format!("no {name} in {text}"))
    };
    Ok((
        field("CF-Access-Client-Id:")?,
        field("CF-Access-Client-Secret:")?,
    ))
}

/// A `gateway` command that will run inside `ns`'s network namespace.
pub fn gateway_command(ns: &Netns) -> Command {
    try_gateway_command(ns).unwrap_or_else(|e| panic!("{e}"))
}

/// [`gateway_command`], returning a failure to find the binary or open the
/// namespace instead of panicking.
pub fn try_gateway_command(ns: &Netns) -> Result<Command, String> {
    let mut cmd = Command::new(try_built_bin("gateway-under-test")?);
    let path = format!("/var/run/netns/{}", ns.name());
    let file = File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
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
    Ok(cmd)
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
        Self::try_start(ns, config, layout, interfaces, &|| false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Daemon::start`], returning a failure (with the daemon's log)
    /// instead of panicking, and giving up early once `give_up` returns
    /// true (it is asked every 20 ms while waiting).
    pub fn try_start(
        ns: &Netns,
        config: &Path,
        layout: &PinLayout,
        interfaces: &[&str],
        give_up: &dyn Fn() -> bool,
    ) -> Result<Self, String> {
        let ready = |_: &Self| interfaces.iter().all(|i| layout.link(i).exists());
        Self::try_spawn(try_gateway_command(ns)?, config, ready, give_up)
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
        Self::try_spawn(command, config, |_| true, &|| false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_spawn(
        mut command: Command,
        config: &Path,
        ready: impl Fn(&Self) -> bool,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Self, String> {
        let log = config.with_extension(format!("log-{}", std::process::id()));
        let stderr =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start the gateway: {e}"))?;
        // From here on, dropping `daemon` (on any error) kills the process.
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
                return Err(format!(
                    "gateway exited early ({status}):\n{}",
                    daemon.log_text()
                ));
            }
            if give_up() {
                return Err("gave up waiting for the gateway to start".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "gateway did not start within 30 s:\n{}",
                    daemon.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon stopped").id()
    }

    /// The addresses the daemon logged as `listening`, in config order
    /// (HTTPS listeners first, then plain ones).
    pub fn listening(&self) -> Vec<std::net::SocketAddr> {
        self.logged_addresses()
            .into_iter()
            .filter(|(line, _)| line.contains("listening") && !line.contains("admin endpoint"))
            .map(|(_, address)| address)
            .collect()
    }

    /// What `gateway status` prints about this daemon, run from the
    /// test's network namespace (`--json` with `json`); panics, with the
    /// command's stderr, if it fails.
    pub fn status(&self, json: bool) -> String {
        let mut command = Command::new(gateway_bin());
        command.arg("status");
        if json {
            command.arg("--json");
        }
        let out = command
            .arg("--admin")
            .arg(self.admin_addr().to_string())
            .output()
            .expect("cannot run gateway status");
        assert!(
            out.status.success(),
            "gateway status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The admin endpoint's address, as the daemon logged it.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.logged_addresses()
            .into_iter()
            .find(|(line, _)| line.contains("admin endpoint"))
            .map(|(_, address)| address)
            .unwrap_or_else(|| panic!("no admin endpoint logged:\n{}", self.log_text()))
    }

    /// (line, address) for every log line with an `address` field, in text
    /// (`address=...`) or JSON (`"address":"..."`) logs.
    fn logged_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let rest = line
                    .split("address=")
                    .nth(1)
                    .or_else(|| line.split("\"address\":\"").nth(1))?;
                let end = rest.find([' ', '"']).unwrap_or(rest.len());
                let address = rest[..end].parse().ok()?;
                Some((line.to_owned(), address))
            })
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

    /// SIGTERM, then waits up to `limit` for the daemon to exit (it drains
    /// requests and flushes the audit log); past that it is killed and the
    /// failure says so, as it does when the daemon was already stopped.
    pub fn stop_within(&mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("the gateway was already stopped".into());
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the gateway did not stop within {} s of SIGTERM; killed it",
                        limit.as_secs()
                    ));
                }
                Err(e) => return Err(format!("cannot wait for the gateway: {e}")),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}
