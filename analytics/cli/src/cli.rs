//! The command line.
//!
//! ```text
//! analytics [--dir DIR] query "SELECT ..." [--format table|csv|json|parquet] [--output FILE]
//! analytics [--dir DIR] report denials|refused|dropped|tokens|timeline [--since 24h] [--sql]
//! analytics [--dir DIR] report timeline --chart decisions.svg
//! analytics [--dir DIR] tail [-n 10] [--follow] [--format text|json]
//! analytics schema
//! ```
//!
//! `--dir` is a gateway's `audit.dir`, or the `s3://bucket/prefix` a fleet
//! uploads to (endpoint and credentials from the `AWS_*` environment
//! variables, e.g. `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`).
//!
//! Errors are one line on stderr and exit status 1; a damaged file is a
//! warning on stderr and the query goes on without it.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal as _, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use analytics::schema::{self, COLUMN_DOCS};
use chrono::Utc;
use clap::{Parser, Subcommand};

use crate::{
    chart,
    output::{self, Format, OutputError},
    progress::{ClearsProgress, Progress},
    query::{Decisions, Location, QueryError},
    reports::Report,
    tail::{self, Tail, TailFormat},
};

/// How often `tail --follow` looks for new decisions (the gateway makes
/// them durable once a second by default).
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(
    name = "analytics",
    version,
    about = "SQL over the gateway's audit logs: every XDP and HTTP decision, in the table `decisions`"
)]
struct Cli {
    /// The audit log directory (the gateway's `audit.dir`), or the bucket
    /// the gateways upload to (`s3://bucket/prefix`).
    #[arg(long, global = true, default_value = analytics::store::DEFAULT_DIR)]
    dir: Location,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL over the `decisions` table.
    Query {
        /// The query, e.g. "SELECT reason, count(*) FROM decisions GROUP BY reason".
        sql: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run a built-in report.
    Report {
        /// Which report.
        #[arg(value_enum)]
        report: Report,
        /// Only decisions this recent (e.g. `24h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Print the report's SQL instead of running it.
        #[arg(long)]
        sql: bool,
        /// Draw the timeline as an SVG chart into this file.
        #[arg(long, value_name = "FILE.svg", conflicts_with = "sql")]
        chart: Option<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the latest decisions, and with --follow each new one.
    Tail {
        /// How many of the latest decisions to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing decisions as the gateway makes them durable.
        #[arg(short, long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: TailFormat,
    },
    /// Describe the columns of `decisions`.
    Schema,
}

#[derive(Debug, clap::Args)]
struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Parses the command line, runs it, and turns failures into a message and
/// an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `analytics ... | head` closing the pipe early is not a failure.
        Err(OutputError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&analytics::error_chain(&e)),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("analytics: error: {message}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<(), OutputError> {
    match cli.command {
        Command::Query { sql, output } => query(&cli.dir, &sql, &output).await,
        Command::Report {
            report,
            since,
            sql,
            chart,
            output,
        } => {
            let since = since
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| Utc::now().checked_sub_signed(d));
            let text = report.sql(since);
            if sql {
                println!("{text}");
                return Ok(());
            }
            match chart {
                Some(path) if report == Report::Timeline => draw(&cli.dir, &text, &path).await,
                Some(_) => Err(OutputError::Usage("--chart draws the timeline report only")),
                None => query(&cli.dir, &text, &output).await,
            }
        }
        Command::Tail {
            lines,
            follow,
            format,
        } => {
            let Location::Dir(dir) = &cli.dir else {
                return Err(OutputError::Usage(
                    "tail reads a gateway's audit directory: recent decisions are not in the bucket yet",
                ));
            };
            let (mut tail, newest) = Tail::start(dir, lines)?;
            let mut out = std::io::stdout().lock();
            if let Some(batch) = newest {
                tail::write(&batch, format, &mut out)?;
            }
            if !follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                if let Some(batch) = tail.poll()? {
                    tail::write(&batch, format, &mut out)?;
                }
            }
        }
        Command::Schema => {
            let schema = schema::schema();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<16} {:<28} description", "column", "type")?;
            for (field, (_, doc)) in schema.fields().iter().zip(COLUMN_DOCS) {
                let ty = field.data_type().to_string();
                writeln!(out, "{:<16} {ty:<28} {doc}", field.name())?;
            }
            writeln!(out, "{:<16} {:<28} partition (UTC day)", "date", "Date32")?;
            writeln!(
                out,
                "{:<16} {:<28} partition (UTC hour, 0-23)",
                "hour", "Int32"
            )?;
            Ok(())
        }
    }
}

/// Opens the decisions, saying which files are skipped.
async fn open(location: &Location) -> Result<Decisions, OutputError> {
    let decisions = Decisions::open_location(location).await?;
    for damaged in &decisions.damaged {
        eprintln!(
            "analytics: warning: skipping damaged file {}: {}",
            damaged.path, damaged.reason
        );
    }
    Ok(decisions)
}

async fn draw(location: &Location, sql: &str, path: &Path) -> Result<(), OutputError> {
    let decisions = open(location).await?;
    let _progress = Progress::start(decisions.read.clone(), decisions.bytes);
    let batches = decisions
        .sql(sql)
        .await?
        .collect()
        .await
        .map_err(QueryError::from)?;
    let (first, series) = chart::timeline_series(&batches)?;
    std::fs::write(path, chart::svg(first, &series)?)?;
    Ok(())
}

async fn query(location: &Location, sql: &str, output: &OutputArgs) -> Result<(), OutputError> {
    if output.format == Format::Parquet
        && output.output.is_none()
        && std::io::stdout().is_terminal()
    {
        return Err(OutputError::Usage(
            "Parquet is binary: write it with --output FILE or into a pipe",
        ));
    }
    let decisions = open(location).await?;
    let frame = decisions.sql(sql).await?;
    let mut progress = Progress::start(decisions.read.clone(), decisions.bytes);
    let out: Box<dyn Write + Send> = match &output.output {
        // The bar stays until the file is written.
        Some(path) => Box::new(File::create(path)?),
        // The bar leaves the terminal before the answer is printed there.
        None => Box::new(ClearsProgress::new(progress.take(), std::io::stdout())),
    };
    output::write(frame, output.format, BufWriter::new(out)).await?;
    drop(progress);
    Ok(())
}
