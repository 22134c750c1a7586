//! Query results written out: an aligned table for people, CSV and JSON
//! lines for other tools, Parquet for more SQL.
//!
//! Times are written in RFC 3339 with their `Z`, so every format says the
//! same instant the same way.

use std::io::Write;

use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::{
    arrow::{
        array::RecordBatch, csv::WriterBuilder as CsvWriterBuilder, error::ArrowError,
        json::LineDelimitedWriter, util::pretty::pretty_format_batches_with_schema,
    },
    prelude::DataFrame,
};
use futures::StreamExt as _;
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::WriterProperties,
};

use crate::query::QueryError;

/// How times are written in text formats: RFC 3339, UTC, microseconds.
pub const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// An output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table (the whole result is held in memory).
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
    /// A Parquet file (to `--output` or a pipe, not a terminal).
    Parquet,
}

/// Why results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The query failed while running.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(&'static str),
    /// Encoding failed.
    #[error("cannot encode the results: {0}")]
    Encode(String),
    /// Writing failed (a closed pipe is not an error: see [`write`]).
    #[error("cannot write the results")]
    Io(#[source] std::io::Error),
}

impl From<ArrowError> for OutputError {
    fn from(error: ArrowError) -> Self {
        match error {
            ArrowError::IoError(_, e) => OutputError::Io(e),
            other => OutputError::Encode(other.to_string()),
        }
    }
}

impl From<parquet::errors::ParquetError> for OutputError {
    fn from(error: parquet::errors::ParquetError) -> Self {
        OutputError::Encode(error.to_string())
    }
}

impl From<std::io::Error> for OutputError {
    fn from(error: std::io::Error) -> Self {
        OutputError::Io(error)
    }
}

/// Runs `frame` and writes its rows to `out` in `format`, streaming where
/// the format allows. Returns the number of rows.
pub async fn write<W: Write + Send>(
    frame: DataFrame,
    format: Format,
    out: W,
) -> Result<u64, OutputError> {
    let schema = frame.schema().inner().clone();
    let mut batches = frame.execute_stream().await.map_err(QueryError::from)?;
    let mut rows = 0;
    match format {
        Format::Table => {
            let mut all = Vec::new();
            while let Some(batch) = next(&mut batches, &mut rows).await? {
                all.push(batch);
            }
            let mut out = out;
            writeln!(out, "{}", pretty_format_batches_with_schema(schema, &all)?)?;
            out.flush()?;
        }
        Format::Csv => {
            let mut writer = CsvWriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format(TIME_FORMAT.into())
                .build(out);
            while let Some(batch) = next(&mut batches, &mut rows).await? {
                writer.write(&batch)?;
            }
            writer.into_inner().flush()?;
        }
        Format::Json => {
            let mut writer = LineDelimitedWriter::new(out);
            while let Some(batch) = next(&mut batches, &mut rows).await? {
                writer.write(&batch)?;
            }
            writer.finish()?;
            writer.into_inner().flush()?;
        }
        Format::Parquet => {
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let mut writer = ArrowWriter::try_new(out, schema, Some(properties))?;
            while let Some(batch) = next(&mut batches, &mut rows).await? {
                writer.write(&batch)?;
            }
            writer.into_inner()?.flush()?;
        }
    }
    Ok(rows)
}

/// The next batch of `stream`, counted into `rows`.
async fn next(
    stream: &mut SendableRecordBatchStream,
    rows: &mut u64,
) -> Result<Option<RecordBatch>, OutputError> {
    match stream.next().await {
        Some(batch) => {
            let batch = batch.map_err(QueryError::from)?;
            *rows += batch.num_rows() as u64;
            Ok(Some(batch))
        }
        None => Ok(None),
    }
}
