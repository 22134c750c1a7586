//! The timeline report drawn as an SVG chart: decisions per hour, one line
//! per layer and decision, so a flood at the XDP layer or a wave of
//! refusals stands out at a glance. SVG needs no fonts on the machine and
//! opens in any browser.

use std::collections::BTreeMap;

use datafusion::arrow::{
    array::{Array as _, AsArray as _, RecordBatch, StringArray},
    compute::cast,
    datatypes::{DataType, Int64Type, TimeUnit},
};
use plotters::prelude::*;

use crate::output::OutputError;

/// Seconds per point on the time axis.
const HOUR: i64 = 3600;
const SIZE: (u32, u32) = (1200, 600);

/// One line of the chart: a count per hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    /// `layer decision`, e.g. `xdp deny`.
    pub label: String,
    /// Decisions in each hour from the chart's first hour on (hours
    /// without any count 0).
    pub counts: Vec<u64>,
}

/// The timeline's rows (`hour_start`, `layer`, `decision`, `decisions`)
/// as lines over the same hours; also the first hour (seconds since the
/// epoch).
pub fn timeline_series(batches: &[RecordBatch]) -> Result<(i64, Vec<Series>), OutputError> {
    let mut points: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
    for batch in batches {
        let column = |name: &str, to: &DataType| {
            let array = batch.column_by_name(name).ok_or_else(|| {
                OutputError::Encode(format!("the timeline has no `{name}` column"))
            })?;
            Ok::<_, OutputError>(cast(array, to)?)
        };
        let hours = column("hour_start", &DataType::Timestamp(TimeUnit::Second, None))?;
        let hours = cast(&hours, &DataType::Int64)?;
        let layers = column("layer", &DataType::Utf8)?;
        let decisions = column("decision", &DataType::Utf8)?;
        let counts = column("decisions", &DataType::Int64)?;
        let (hours, counts) = (
            hours.as_primitive::<Int64Type>(),
            counts.as_primitive::<Int64Type>(),
        );
        let (layers, decisions) = (layers.as_string::<i32>(), decisions.as_string::<i32>());
        for row in 0..batch.num_rows() {
            if hours.is_null(row) {
                continue;
            }
            let text = |array: &StringArray| {
                if array.is_valid(row) {
                    array.value(row).to_owned()
                } else {
                    "?".to_owned()
                }
            };
            let label = format!("{} {}", text(layers), text(decisions));
            *points
                .entry(label)
                .or_default()
                .entry(hours.value(row))
                .or_default() += counts.value(row).max(0) as u64;
        }
    }
    let all_hours = points.values().flat_map(|p| p.keys().copied());
    let (Some(first), Some(last)) = (all_hours.clone().min(), all_hours.max()) else {
        return Ok((0, Vec::new()));
    };
    let len = ((last - first) / HOUR + 1) as usize;
    let series = points
        .into_iter()
        .map(|(label, by_hour)| {
            let mut counts = vec![0; len];
            for (hour, count) in by_hour {
                counts[((hour - first) / HOUR) as usize] += count;
            }
            Series { label, counts }
        })
        .collect();
    Ok((first, series))
}

/// The chart of `series` (hours from `first`) as an SVG document.
pub fn svg(first: i64, series: &[Series]) -> Result<String, OutputError> {
    if series.is_empty() {
        return Err(OutputError::Encode(
            "no decisions in that time: nothing to draw".into(),
        ));
    }
    let hours = series.iter().map(|s| s.counts.len()).max().unwrap_or(1) as i64;
    let top = series
        .iter()
        .flat_map(|s| s.counts.iter().copied())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Decisions per hour (UTC)", ("sans-serif", 22))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // In hours, so ticks fall on whole hours; one hour either side.
            .build_cartesian_2d(
                first / HOUR - 1..first / HOUR + hours,
                0..top + top / 10 + 1,
            )?;
        chart
            .configure_mesh()
            .x_labels(10)
            .light_line_style(WHITE)
            .x_label_formatter(&|hour| hour_label(*hour * HOUR))
            .y_desc("decisions")
            .draw()?;
        for (i, line) in series.iter().enumerate() {
            let color = color(&line.label, i);
            let points = line
                .counts
                .iter()
                .enumerate()
                .map(|(h, &count)| (first / HOUR + h as i64, count));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| OutputError::Encode(format!("cannot draw the chart: {e}")))?;
    Ok(out)
}

/// Refusals in warm colours, allowances in cool ones, the rest by index.
fn color(label: &str, index: usize) -> RGBColor {
    match label {
        "xdp deny" => RGBColor(230, 120, 0),
        "http deny" => RGBColor(200, 30, 30),
        "http allow" => RGBColor(30, 130, 60),
        "http bypass" => RGBColor(40, 90, 200),
        _ => {
            let c = Palette99::pick(index).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

fn hour_label(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%m-%d %H:00").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::{
        array::{Int64Array, StringArray, TimestampMicrosecondArray},
        datatypes::{Field, Schema},
    };

    use super::*;

    fn batch(rows: &[(i64, &str, &str, i64)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(
                "hour_start",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("layer", DataType::Utf8, true),
            Field::new("decision", DataType::Utf8, true),
            Field::new("decisions", DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.0 * 1_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn hours_without_decisions_count_zero() {
        let t = 1_795_417_200;
        let rows = batch(&[
            (t, "http", "allow", 5),
            (t + 2 * HOUR, "http", "allow", 7),
            (t + HOUR, "xdp", "deny", 3),
        ]);
        let (first, series) = timeline_series(&[rows]).unwrap();
        assert_eq!(first, t);
        assert_eq!(
            series,
            [
                Series {
                    label: "http allow".into(),
                    counts: vec![5, 0, 7]
                },
                Series {
                    label: "xdp deny".into(),
                    counts: vec![0, 3, 0]
                },
            ]
        );
        let svg = svg(first, &series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("http allow") && svg.contains("xdp deny"));
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let (first, series) = timeline_series(&[batch(&[])]).unwrap();
        assert!(matches!(svg(first, &series), Err(OutputError::Encode(_))));
    }
}
