//! `analytics`: SQL over the gateway's audit logs. See the `analytics_cli`
//! crate.

fn main() -> std::process::ExitCode {
    analytics_cli::cli::main()
}
