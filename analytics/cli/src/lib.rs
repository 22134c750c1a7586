//! The `analytics` command: SQL over the gateway's audit logs.
//!
//! It is its own binary so that the daemon does not carry the SQL engine:
//! the gateway writes Parquet with the `analytics` library alone, and this
//! crate reads it with DataFusion.
//!
//! # Layout
//! - [`cli`]: the command line and what each subcommand does.
//! - [`query`]: the `decisions` table (listing, damaged files, SQL).
//! - [`reports`]: the built-in reports, as SQL.
//! - [`chart`]: the timeline report as an SVG chart.
//! - [`tail`]: the latest decisions, followed as they are written.
//! - [`output`]: table, CSV, JSON lines and Parquet output.
//! - [`progress`]: the progress bar of long scans.
//! - [`store`]: the object store the scans read through.

pub mod chart;
pub mod cli;
pub mod output;
pub mod progress;
pub mod query;
pub mod reports;
pub mod store;
pub mod tail;
