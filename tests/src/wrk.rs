//! wrk, the load generator of the gateway benchmarks: one thread pinned to
//! a CPU, a Lua hook reporting the summary as JSON, every response required
//! to be a 2xx.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The load shape both gateway benchmarks use, so their figures compare:
/// wrk on one CPU, the server under test on the other.
pub const LOAD_CPU: usize = 0;
/// The CPU of the server under test.
pub const SERVER_CPU: usize = 1;
/// Connections of a throughput run.
pub const CONNECTIONS: u32 = 50;
/// Seconds of a throughput run.
pub const SECONDS: u32 = 5;
/// Seconds of a one-connection latency run.
pub const LATENCY_SECONDS: u32 = 3;
/// Runs of each case; the best (or the median by p99) is reported.
pub const TRIES: usize = 3;

/// wrk's summary as one line of JSON (`WRK {...}`), from its `done` hook.
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK {\"requests\":%d,\"duration_us\":%d,\"socket_errors\":%d,\"non_2xx\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// Case (d): one token per request from the file given as the script
/// argument, stopping when they run out (never reusing one).
const FRESH_LUA: &str = r#"
local tokens = {}
local used = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
end
request = function()
  used = used + 1
  if used >= #tokens then wrk.thread:stop() end
  return wrk.format("GET", "/", { ["Host"] = "app.test",
    ["Cf-Access-Jwt-Assertion"] = tokens[math.min(used, #tokens)] })
end
"#;

/// One wrk run.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Responses counted.
    pub requests: u64,
}

/// wrk with our reporting script, pinned to one CPU.
pub struct Wrk {
    report: PathBuf,
    fresh: PathBuf,
    cpu: usize,
}

impl Wrk {
    /// Writes the scripts into `dir`; wrk will run on `cpu`.
    pub fn new(dir: &Path, cpu: usize) -> Self {
        let report = dir.join("report.lua");
        let fresh = dir.join("fresh.lua");
        std::fs::write(&report, REPORT_LUA).expect("write wrk script");
        std::fs::write(&fresh, format!("{FRESH_LUA}\n{REPORT_LUA}")).expect("write wrk script");
        Self { report, fresh, cpu }
    }

    /// Runs wrk against `addr` with `headers` on every request.
    pub fn run(
        &self,
        addr: SocketAddr,
        connections: u32,
        seconds: u32,
        headers: &[(&str, &str)],
    ) -> Load {
        self.exec(addr, connections, seconds, headers, &self.report, None)
    }

    /// Runs with a new relay token per request from the `count` in
    /// `tokens`, for less time than they last (wrk's duration is fixed; a
    /// thread that runs out stops early but the rate would still be counted
    /// over the whole duration).
    pub fn fresh(
        &self,
        addr: SocketAddr,
        tokens: &Path,
        connections: u32,
        seconds: u32,
        count: usize,
    ) -> Load {
        let load = self.exec(addr, connections, seconds, &[], &self.fresh, Some(tokens));
        assert!(
            load.requests + u64::from(connections) < count as u64,
            "used up all {count} tokens in {seconds} s: sign more"
        );
        load
    }

    fn exec(
        &self,
        addr: SocketAddr,
        connections: u32,
        seconds: u32,
        headers: &[(&str, &str)],
        script: &Path,
        script_arg: Option<&Path>,
    ) -> Load {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &self.cpu.to_string(), "wrk", "-t1"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "5s", "-s"])
            .arg(script);
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(format!("http://{addr}/"));
        if let Some(arg) = script_arg {
            cmd.arg("--").arg(arg);
        }
        let out = cmd
            .output()
            .expect("cannot run wrk (`cargo xtask bench` installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wrk failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WRK "))
            .unwrap_or_else(|| panic!("no summary from wrk: {stdout}"));
        let v: Value = serde_json::from_str(line).expect("wrk summary is JSON");
        let n = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {line}"));
        assert!(
            n("socket_errors") == 0.0 && n("non_2xx") == 0.0,
            "every request must succeed with 200; wrk against {addr} with {headers:?}: {stdout}"
        );
        Load {
            rps: n("requests") / (n("duration_us") / 1e6),
            p50_ms: n("p50_us") / 1e3,
            p99_ms: n("p99_us") / 1e3,
            requests: n("requests") as u64,
        }
    }
}

/// The run with the median p99 (latency runs).
pub fn median_by_p99(mut runs: Vec<Load>) -> Load {
    runs.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
    runs[runs.len() / 2]
}

/// The run with the most requests per second (throughput runs).
pub fn best_rps(runs: &[Load]) -> Load {
    *runs
        .iter()
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
        .expect("at least one run")
}
