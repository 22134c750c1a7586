//! `cargo xtask bench NAME`: builds the benchmark in release mode (with the
//! gateway binary it starts) and runs it as root; it writes
//! `bench-results/NAME.json` and prints its rows.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::util::{cargo, exec, require_root};

/// Debian packages only the gateway benchmark needs: its load generator and
/// the peer it is compared with.
const GATEWAY_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "the gateway benchmark's load generator"),
    (
        "nginx",
        "the gateway benchmark's upstream and reverse-proxy peer",
    ),
];

pub fn run(name: &str) -> anyhow::Result<()> {
    let bin = match name {
        "xdp" => "bench-xdp",
        "gateway" => "bench-gateway",
        other => bail!("unknown benchmark `{other}`; known: xdp, gateway"),
    };
    require_root("the benchmarks load XDP programs, build network namespaces and pin processes")?;
    if name == "gateway" {
        crate::setup::debian_packages(GATEWAY_PACKAGES)?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    exec(cargo().current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "gateway-tests",
        "--bin",
        bin,
        "--bin",
        "gateway-under-test",
    ]))?;
    exec(
        Command::new(root.join("target/release").join(bin))
            .current_dir(root)
            .arg("bench-results"),
    )
}
