//! `cargo xtask bench NAME`: builds the benchmark optimized (with the
//! commands it starts) and runs it as root; it writes
//! `bench-results/NAME.json` and prints its rows.

use std::process::Command;

use anyhow::bail;

use crate::util::{cargo, exec, require_root};

/// Debian packages only the gateway and sign-in benchmarks need: their load
/// generator and the peer and upstream they use.
const GATEWAY_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "the gateway benchmark's load generator"),
    (
        "nginx",
        "the gateway benchmark's upstream and reverse-proxy peer",
    ),
];

pub fn run(name: &str) -> anyhow::Result<()> {
    // Each benchmark's binary and the commands it starts, and the profile:
    // the daemon's benchmarks run it as its package ships it (`dist`).
    let (bins, features, profile): (&[&str], &[&str], &str) = match name {
        "xdp" => (&["bench-xdp"], &["--no-default-features"], "release"),
        "gateway" => (
            &["bench-gateway", "gateway-under-test"],
            &["--no-default-features"],
            "dist",
        ),
        "sso" => (
            &["bench-sso", "gateway-under-test"],
            &["--no-default-features"],
            "dist",
        ),
        // The SQL engine (DataFusion) only for this one; its writer
        // ingests as fast in `release` as in `dist`.
        "audit" => (&["bench-audit", "analytics-under-test"], &[], "release"),
        other => bail!("unknown benchmark `{other}`; known: xdp, gateway, sso, audit"),
    };
    require_root("the benchmarks load XDP programs, build network namespaces and pin processes")?;
    if matches!(name, "gateway" | "sso") {
        crate::setup::debian_packages(GATEWAY_PACKAGES)?;
    }
    let root = crate::util::workspace_root();
    let mut build = cargo();
    build
        .current_dir(root)
        .args([
            "build",
            "--profile",
            profile,
            "--locked",
            "-p",
            "gateway-tests",
        ])
        .args(features);
    for bin in bins {
        build.args(["--bin", bin]);
    }
    exec(&mut build)?;
    exec(
        Command::new(root.join("target").join(profile).join(bins[0]))
            .current_dir(root)
            .arg("bench-results"),
    )
}
