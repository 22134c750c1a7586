//! Benchmark results in the project's one format: rows of
//! `{metric, unit, ours, baseline, baseline_value, goal}` (plus `ratio`,
//! `met` and a note), written to `bench-results/NAME.json` and printed as a
//! table, so every benchmark reads the same way.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value, json};

/// One measured number against its baseline.
pub struct Row {
    /// What was measured, with the conditions that matter.
    pub metric: String,
    /// Unit of `ours` and `baseline_value`.
    pub unit: &'static str,
    /// Our measurement.
    pub ours: f64,
    /// What the baseline is: a peer measured in the same run, or a floor.
    pub baseline: String,
    /// The baseline's value, in `unit`.
    pub baseline_value: f64,
    /// `"ratio <= X"` or `"ratio >= X"`, with ratio = ours / baseline_value.
    pub goal: String,
    /// Anything a reader needs to interpret the row.
    pub note: String,
}

impl Row {
    /// ours / baseline_value.
    pub fn ratio(&self) -> f64 {
        self.ours / self.baseline_value
    }

    /// Whether the goal is met (a malformed goal never is).
    pub fn met(&self) -> bool {
        let ratio = self.ratio();
        let bound = |x: &str| x.parse::<f64>().unwrap_or(f64::NAN);
        match self
            .goal
            .strip_prefix("ratio ")
            .and_then(|g| g.split_once(' '))
        {
            Some(("<=", x)) => ratio <= bound(x),
            Some((">=", x)) => ratio >= bound(x),
            _ => false,
        }
    }

    fn json(&self) -> Value {
        json!({
            "metric": self.metric,
            "unit": self.unit,
            "ours": round(self.ours),
            "baseline": self.baseline,
            "baseline_value": round(self.baseline_value),
            "goal": self.goal,
            "ratio": (self.ratio() * 1000.0).round() / 1000.0,
            "met": self.met(),
            "note": self.note,
        })
    }
}

/// One decimal for values of 10 and more, three below (latencies in ms).
fn round(x: f64) -> f64 {
    if x.abs() >= 10.0 {
        (x * 10.0).round() / 10.0
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

/// Where results go: the benchmark's first argument, else `bench-results`.
pub fn out_dir() -> PathBuf {
    std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("bench-results"), PathBuf::from)
}

/// Prints `rows` as a table and the notes, then writes them with `extra`
/// fields to `dir/NAME.json`.
pub fn publish(dir: &Path, name: &str, rows: &[Row], notes: &[String], extra: Map<String, Value>) {
    print_table(rows);
    for note in notes {
        println!("note: {note}");
    }
    write_json(dir, name, rows, notes, extra);
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<60} {:>12} {:>12} {:>7} {:<14} {:<4} baseline is",
        "metric", "ours", "baseline", "ratio", "goal", "met"
    );
    for row in rows {
        println!(
            "{:<60} {:>12.3} {:>12.3} {:>7.3} {:<14} {:<4} {}",
            format!("{} ({})", row.metric, row.unit),
            row.ours,
            row.baseline_value,
            row.ratio(),
            row.goal,
            if row.met() { "yes" } else { "NO" },
            row.baseline
        );
    }
}

fn write_json(dir: &Path, name: &str, rows: &[Row], notes: &[String], extra: Map<String, Value>) {
    std::fs::create_dir_all(dir).expect("bench-results dir");
    let mut doc = extra;
    doc.insert("rows".into(), rows.iter().map(Row::json).collect());
    doc.insert("notes".into(), json!(notes));
    doc.insert(
        "kernel".into(),
        json!(
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        ),
    );
    let path = dir.join(format!("{name}.json"));
    let mut file = std::fs::File::create(&path).expect("create the results file");
    file.write_all(
        serde_json::to_string_pretty(&Value::Object(doc))
            .expect("json")
            .as_bytes(),
    )
    .expect("write the results file");
    println!("wrote {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ours: f64, goal: &str) -> Row {
        Row {
            metric: "m".into(),
            unit: "u",
            ours,
            baseline: "b".into(),
            baseline_value: 2.0,
            goal: goal.into(),
            note: String::new(),
        }
    }

    #[test]
    fn goals_compare_the_ratio() {
        assert!(row(2.0, "ratio <= 1.0").met());
        assert!(!row(2.2, "ratio <= 1.0").met());
        assert!(row(1.0, "ratio >= 0.5").met());
        assert!(!row(0.8, "ratio >= 0.5").met());
        assert!(!row(1.0, "faster").met());
        assert!(!row(1.0, "ratio == 0.5").met());
    }
}
