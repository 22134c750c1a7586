//! Builds the XDP programs of `gateway-ebpf` with nightly and bpf-linker
//! through aya-build, into `OUT_DIR`: `gateway-xdp`, which `gateway::xdp`
//! embeds, and `gateway-xdp-bench`, embedded only with the `bench-programs`
//! feature.
//!
//! Without the eBPF toolchain (no `bpf-linker` on PATH, or
//! `AYA_BUILD_SKIP=1`) empty objects are written instead, so that
//! `cargo check`, clippy and the userspace tests work anywhere; such a binary
//! refuses to attach with an error naming the missing toolchain.
//! `cargo xtask setup` installs the toolchain.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const OBJECTS: [&str; 2] = ["gateway-xdp", "gateway-xdp-bench"];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip || which::which("bpf-linker").is_err() {
        let why = if skip {
            "AYA_BUILD_SKIP is set"
        } else {
            "bpf-linker is not on PATH (run `cargo xtask setup`)"
        };
        println!("cargo:warning=building without the XDP program: {why}");
        for object in OBJECTS {
            fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("../gateway-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to gateway-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
