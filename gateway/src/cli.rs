//! The `gateway` command line.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 (`EX_USAGE`) for a bad
//! command line or config, which is always detected before any socket or
//! kernel call.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use tracing::error;

use crate::{admin, config::Config, daemon, error_chain, paths, tokens::TokenStore, xdp};

/// Origin gateway: XDP relay-range lock-down, identity checks, audit log.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    /// Log format on stderr: `text`, or `json` (one object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GATEWAY_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: attach the XDP filter, keep its ranges fresh.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file without side effects.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Show the running daemon's state (from its admin endpoint).
    Status {
        /// Find the admin endpoint in this configuration file.
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The admin endpoint's address (instead of the configuration's).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the XDP filter directly.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Manage service tokens (`CF-Access-Client-Id` / `-Secret`).
    Token {
        /// The token store.
        #[arg(long, global = true, default_value = paths::DEFAULT_TOKEN_STORE)]
        store: PathBuf,
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once, here.
    Create {
        /// A unique name (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. `8760h` or `30days`.
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// List tokens (never their secrets).
    List,
    /// Issue a new secret; the old one keeps working for the grace period.
    Rotate {
        /// Name or client id.
        token: String,
        /// How long the old secret stays valid, e.g. `1h`; `0s` ends it now.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Revoke a token.
    Revoke {
        /// Name or client id.
        token: String,
    },
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Load, fill and attach the filter once, then exit; it stays pinned.
    Attach {
        /// The configuration file.
        #[arg(long, short, default_value = paths::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Take the filter down: remove its links, program and maps.
    Detach(PinDirArgs),
    /// Print counters by reason and the top dropped sources.
    Stats {
        #[command(flatten)]
        pins: PinDirArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How many dropped sources to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

#[derive(Debug, Args)]
struct PinDirArgs {
    /// The pin directory (default: from --config, else /sys/fs/bpf/gateway).
    #[arg(long, conflicts_with = "config")]
    pin_dir: Option<PathBuf>,
    /// Read the pin directory from this configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

const EX_USAGE: u8 = 64;

/// Parses the command line, runs the command, maps the outcome to an exit code.
pub fn main() -> ExitCode {
    // Before anything signs or checks a token.
    crate::jwt::crypto::install();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("gateway: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Runtime(message)) => {
            error!("{message}");
            eprintln!("gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Runtime(String),
}

fn usage(e: &(dyn std::error::Error + 'static)) -> Failure {
    Failure::Usage(error_chain(e))
}

fn runtime(e: &(dyn std::error::Error + 'static)) -> Failure {
    Failure::Runtime(error_chain(e))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::load(&file).map_err(|e| usage(&e))?;
            crate::preflight::check(&config).map_err(|e| usage(&e))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Status {
            config,
            admin,
            json,
        } => {
            let address = match admin {
                Some(address) => address,
                None => Config::load(&config)
                    .map_err(|e| usage(&e))?
                    .admin
                    .ok_or_else(|| {
                        Failure::Usage(format!(
                            "{}: the admin endpoint is disabled ([admin] enabled = false)",
                            config.display()
                        ))
                    })?,
            };
            let status = tokio_runtime()?
                .block_on(admin::fetch_status(address))
                .map_err(|e| runtime(&e))?;
            if json {
                let text = serde_json::to_string_pretty(&status).map_err(|e| runtime(&e))?;
                println!("{text}");
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Run { config: path } => {
            let config = Config::load(&path).map_err(|e| usage(&e))?;
            tokio_runtime()?
                .block_on(daemon::run(path, config))
                .map_err(|e| runtime(&e))
        }
        Command::Xdp(XdpCommand::Attach { config: path }) => {
            let config = Config::load(&path).map_err(|e| usage(&e))?;
            let listen_ports = daemon::listen_ports(&config);
            let xdp_config = config
                .xdp
                .ok_or_else(|| Failure::Usage(format!("{}: no [xdp] section", path.display())))?;
            tokio_runtime()?.block_on(async {
                let sources = xdp::sources::RangeSources::load(
                    &xdp_config.relay,
                    &xdp_config.management,
                    xdp_config.allow_any,
                )
                .await
                .map_err(|e| runtime(&e))?;
                daemon::start_filter(&xdp_config, &sources, &listen_ports)
                    .map_err(|e| runtime(&e))?;
                println!(
                    "XDP filter attached to {} and pinned under {}",
                    xdp_config.interfaces.join(", "),
                    xdp_config.pin_dir.display()
                );
                Ok(())
            })
        }
        Command::Xdp(XdpCommand::Detach(pins)) => {
            let layout = pin_layout(&pins)?;
            let detached = xdp::detach(&layout).map_err(|e| runtime(&e))?;
            if detached.interfaces.is_empty() {
                println!(
                    "removed the pins under {}; no interface was attached",
                    layout.root().display()
                );
            } else {
                println!(
                    "detached from {}; removed the pins under {}",
                    detached.interfaces.join(", "),
                    layout.root().display()
                );
            }
            Ok(())
        }
        Command::Token { store, command } => token(&store, command),
        Command::Xdp(XdpCommand::Stats { pins, json, top }) => {
            let layout = pin_layout(&pins)?;
            let snapshot = xdp::stats::read(&layout, top).map_err(|e| runtime(&e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&snapshot).map_err(|e| runtime(&e))?
                );
            } else {
                print!("{}", snapshot.render());
            }
            Ok(())
        }
    }
}

fn token(path: &std::path::Path, command: TokenCommand) -> Result<(), Failure> {
    let mut store = TokenStore::open(path).map_err(|e| runtime(&e))?;
    let now = crate::unix_now();
    let issued = match command {
        TokenCommand::List => {
            println!(
                "{:<24} {:<40} {:<8} {:>10} {:>10}",
                "name", "client id", "state", "expires", "last used"
            );
            for t in store.tokens() {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if now >= t.expires_at {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<24} {:<40} {:<8} {:>10} {:>10}",
                    t.name,
                    t.client_id,
                    state,
                    date(t.expires_at),
                    t.last_used_at.map_or_else(|| "never".into(), date)
                );
            }
            return Ok(());
        }
        TokenCommand::Create { name, duration } => store.create(&name, duration, now),
        TokenCommand::Rotate { token, grace } => store.rotate(&token, grace, now),
        TokenCommand::Revoke { token } => {
            store.revoke(&token, now).map_err(|e| usage(&e))?;
            store.save().map_err(|e| runtime(&e))?;
            println!("revoked {token}");
            return Ok(());
        }
    }
    .map_err(|e| usage(&e))?;
    store.save().map_err(|e| runtime(&e))?;
    println!("CF-Access-Client-Id: {}", issued.client_id);
    println!("CF-Access-Client-Secret: {}", issued.client_secret);
    println!("expires: {}", date(issued.expires_at));
    eprintln!("the secret is shown only now; the store keeps its hash");
    Ok(())
}

/// `YYYY-MM-DD` of a Unix time (UTC).
fn date(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
        .chars()
        .take(10)
        .collect()
}

fn pin_layout(args: &PinDirArgs) -> Result<paths::PinLayout, Failure> {
    if let Some(dir) = &args.pin_dir {
        return Ok(paths::PinLayout::new(dir));
    }
    if let Some(path) = &args.config {
        let config = Config::load(path).map_err(|e| usage(&e))?;
        if let Some(xdp) = config.xdp {
            return Ok(paths::PinLayout::new(xdp.pin_dir));
        }
    }
    Ok(paths::PinLayout::default())
}

/// One worker thread per CPU the process may run on (its affinity mask, so
/// `taskset` or systemd's `CPUAffinity=` size it; `TOKIO_WORKER_THREADS`
/// overrides): more workers than CPUs only adds context switches. On one
/// CPU the runtime is single-threaded: tasks run on the thread that drives
/// the I/O, with no hand-off to a worker thread (the gateway benchmark on
/// one CPU: 31k requests/s with one worker, 45k without).
fn tokio_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    let one_cpu = std::env::var_os("TOKIO_WORKER_THREADS").is_none()
        && std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().map_err(|e| runtime(&e))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}
