//! `cargo xtask bench NAME`: builds the benchmark in release mode and runs
//! it as root; it writes `bench-results/NAME.json` and prints its rows.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::util::{cargo, exec, require_root};

pub fn run(name: &str) -> anyhow::Result<()> {
    let bin = match name {
        "xdp" => "bench-xdp",
        other => bail!("unknown benchmark `{other}`; known: xdp"),
    };
    require_root("the benchmark loads XDP programs and builds network namespaces")?;
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
    ]))?;
    exec(
        Command::new(root.join("target/release").join(bin))
            .current_dir(root)
            .arg("bench-results"),
    )
}
