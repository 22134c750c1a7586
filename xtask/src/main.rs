//! Project automation. Run as `cargo xtask <command>`.
//!
//! - `setup`: make this machine ready (nightly rust-src, bpf-linker against
//!   nightly's own LLVM, the Debian packages the tests use). Idempotent.
//! - `test`: `setup`, then every test in the workspace, privileged ones
//!   included (needs root).
//! - `bench NAME`: run a benchmark and write `bench-results/NAME.json`.
#![forbid(unsafe_code)]

mod bench;
mod setup;
mod util;

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
    }
}
