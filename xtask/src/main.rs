//! Project automation. Run as `cargo xtask <command>`.
//!
//! - `setup`: make this machine ready (nightly rust-src, bpf-linker against
//!   nightly's own LLVM, the Debian packages the tests use, the test OpenID
//!   Provider's npm packages). Idempotent.
//! - `test`: `setup`, then every test in the workspace, privileged ones
//!   included (needs root).
//! - `bench NAME`: run a benchmark and write `bench-results/NAME.json`.
//! - `demo [--dir DIR]`: `setup`, then the gateway at work in network
//!   namespaces with real traffic, each outcome checked, and an SQL report
//!   of the audit log (needs root; see `gateway_tests::demo`).
//! - `package`: Debian packages (cargo-deb) into `target/debian/`.
#![forbid(unsafe_code)]

mod bench;
mod package;
mod setup;
mod util;

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "gateway project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent, quick when done).
    Setup,
    /// Run every test, privileged ones included (needs root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a benchmark: `xdp`, `gateway` or `audit`.
    Bench {
        /// Which benchmark.
        name: String,
    },
    /// Show the gateway at work: test hosts in network namespaces, real
    /// traffic, each outcome checked, an SQL report (needs root).
    Demo {
        /// The demo's own arguments: `--dir DIR`; `-- --help` for its help.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian packages into target/debian/.
    Package {
        /// Only the daemon's package (skips the query tool's long build).
        #[arg(long)]
        daemon_only: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { args } => {
            setup::run()?;
            util::require_root("the tests load XDP programs and create network namespaces")?;
            let mut cmd = util::cargo();
            // The eBPF crate only builds for bpfel-unknown-none (through
            // gateway/build.rs); everything else is tested here.
            cmd.args([
                "test",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
                "--locked",
            ]);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            util::exec(&mut cmd)
        }
        Command::Bench { name } => {
            setup::run()?;
            bench::run(&name)
        }
        Command::Demo { args } => demo(&args),
        Command::Package { daemon_only } => {
            setup::run()?;
            package::run(util::workspace_root(), daemon_only)
        }
    }
}

/// `cargo xtask demo`: root first (so a user without it is told before
/// anything is installed), `setup`, a dev build of the demo and the two
/// commands it runs, then the demo in place of this process, so Ctrl-C
/// reaches it directly and its exit status is ours.
fn demo(args: &[String]) -> anyhow::Result<()> {
    util::require_root("the demo loads an XDP program and creates network namespaces")?;
    setup::run()?;
    let root = util::workspace_root();
    let bins = ["demo", "gateway-under-test", "analytics-under-test"];
    let mut build = util::cargo();
    build
        .current_dir(root)
        .args(["build", "--locked", "-p", "gateway-tests"]);
    for bin in bins {
        build.args(["--bin", bin]);
    }
    util::exec(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let error = std::process::Command::new(target.join("debug").join(bins[0]))
        .args(args)
        .exec();
    Err(error).context("cannot start the demo")
}
