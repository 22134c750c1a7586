//! `demo`: the gateway at work on this machine, in network namespaces, with
//! real traffic and each outcome checked. `cargo xtask demo` builds and runs
//! it; `demo --help` says what it does and needs. The logic is
//! [`gateway_tests::demo`].

use std::process::ExitCode;

use gateway_tests::demo::{self, EXIT_USAGE, Options, USAGE};

fn main() -> ExitCode {
    match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => demo::main(options),
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("demo: {message}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
