//! Builds the eBPF crate for the benchmark's own programs
//! (`gateway-xdp-bench`: the XDP_DROP floor and the random-source wrapper).
//! Like `gateway/build.rs`, it writes empty objects without the eBPF
//! toolchain; the benchmark then says so.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || which::which("bpf-linker").is_err() {
        println!("cargo:warning=building the benchmark without its eBPF programs (no bpf-linker)");
        fs::write(out_dir.join("gateway-xdp-bench"), [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("../gateway-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
