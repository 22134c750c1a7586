//! Test harness for the gateway's integration tests. Everything here drives
//! real parts: the real XDP program loaded into the running kernel, network
//! namespaces with veth pairs, real sockets.
//!
//! # Layout
//! - [`packet`]: frames built byte by byte for `BPF_PROG_TEST_RUN`.
//! - [`filter`]: a loaded filter pinned in a private directory, removed on drop.
//! - [`model`]: a pure-Rust reference model of the filter's policy.
//! - [`netns`]: network namespaces and veth pairs, removed on drop.
//! - [`https`]: a real HTTPS server on loopback serving range lists.
//! - [`daemon`]: the real gateway binary run as a process in a namespace.
//! - [`pki`]: a throwaway CA for every TLS server in the tests.
//! - [`upstream`]: an application that records what reaches it.
//! - [`gateway`]: the identity gateway with relay, upstream and clients.
//! - [`nginx`]: Debian's nginx as a benchmark peer.
//! - [`report`]: benchmark results as rows, JSON and a table.
//! - [`wrk`]: the load generator of the gateway benchmarks.
//! - [`audit`]: synthetic audit logs, the `analytics` command, DuckDB.
//! - [`s3`]: an S3-compatible server (s3s-fs) on loopback.
//! - [`idp`]: a real OpenID Provider (oidc-provider on Node.js) on
//!   loopback, with a scripted sign-in for the login tests.
//! - [`signin`]: the gateway with browser sign-in against [`idp`].
//! - [`browser`]: a headless Chromium under chromedriver (WebDriver), for
//!   flows checked the way people meet them: forms, redirects, cookies.
//! - [`demo`]: `cargo xtask demo`, the whole gateway in network namespaces
//!   with real traffic, its outcomes checked (the `demo` binary).
//!
//! Privileged tests call [`require_root`] first: without root they fail with
//! a message saying so, they never skip.

pub mod audit;
pub mod browser;
pub mod daemon;
pub mod demo;
pub mod filter;
pub mod gateway;
pub mod https;
pub mod idp;
pub mod model;
pub mod netns;
pub mod nginx;
pub mod packet;
pub mod pki;
pub mod report;
pub mod s3;
pub mod signin;
pub mod upstream;
pub mod wrk;

/// Fails the test loudly unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs and creates network namespaces: it needs root \
         (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN). Run it with `cargo xtask test` as root."
    );
}

/// Pins the calling thread to `cpu`, for tests and benchmarks that depend on
/// per-CPU state (the kernel runs BPF_PROG_TEST_RUN on the caller's CPU).
pub fn pin_thread_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, applied to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU time spent so far by `pid`, all its threads together, and by its
/// threads named `thread` (the part of the whole they are): `[user,
/// kernel]` seconds each. The kernel's part includes the work a process's
/// system calls do on its behalf (on loopback, the receiving side's TCP
/// processing as well).
pub fn process_cpu_seconds(pid: u32, thread: &str) -> ([f64; 2], [f64; 2]) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // `comm` and the user and system times (fields 14 and 15) of a stat
    // line; `comm` is in parentheses and may hold spaces.
    let parse = |stat: &str| -> Option<(String, [f64; 2])> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let mut fields = rest.split_whitespace().skip(11);
        let mut next = || fields.next()?.parse::<f64>().ok().map(|t| t / ticks);
        Some((comm, [next()?, next()?]))
    };
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|stat| parse(&stat))
    };
    let proc = std::path::Path::new("/proc").join(pid.to_string());
    let (_, whole) = read(proc.join("stat")).expect("the CPU times of a running process");
    let mut part = [0.0; 2];
    let tasks = std::fs::read_dir(proc.join("task")).expect("the process's threads");
    // A thread that ended between the listing and the read is skipped.
    for (comm, times) in tasks.filter_map(|t| read(t.ok()?.path().join("stat"))) {
        if comm == thread {
            part = [part[0] + times[0], part[1] + times[1]];
        }
    }
    (whole, part)
}

/// `VmRSS` / `VmHWM` (or another `/proc/PID/status` size) of `pid`, in
/// bytes.
pub fn process_memory(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map(|kib| kib * 1024.0)
        .unwrap_or_else(|| panic!("no {field} for pid {pid}"))
}
