//! The audit logs as other tools see them: our `analytics` command and
//! DuckDB give the same answers on the same files, pyarrow reads the types
//! the README promises, and the command fails clearly on bad input.

use std::{path::Path, process::Command};

use gateway_tests::audit::{self, analytics, duckdb, json_lines, query_rows};
use serde_json::Value;

/// Three hours of decisions, hour partitions 07, 08 and 09.
const EVENTS: usize = 20_000;
const SPAN_US: i64 = 3 * 3_600_000_000 - 1;

fn logs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    audit::write_events(dir.path(), audit::synthetic_events(EVENTS, SPAN_US, 1));
    dir
}

/// Rows in a form both engines agree on: times as microseconds, numbers
/// as i64, nulls left out (our JSON lines omit them), sorted.
fn canonical(rows: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = rows
        .into_iter()
        .map(|row| {
            let fields: serde_json::Map<String, Value> = row
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), canonical_value(v)))
                .collect();
            Value::Object(fields).to_string()
        })
        .collect();
    out.sort();
    out
}

fn canonical_value(value: &Value) -> Value {
    match value {
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => Value::from(t.timestamp_micros()),
            Err(_) => value.clone(),
        },
        Value::Number(n) => n.as_i64().map_or(value.clone(), Value::from),
        other => other.clone(),
    }
}

fn ours(dir: &Path, sql: &str) -> Vec<Value> {
    query_rows(dir.as_os_str(), &[], sql)
}

#[test]
fn our_cli_and_duckdb_give_the_same_answers() {
    let dir = logs();
    let queries = [
        // Every event, once.
        "SELECT count(*) AS n FROM decisions",
        "SELECT layer, decision, reason, count(*) AS n FROM decisions GROUP BY layer, decision, reason",
        // Denials by app and hour, through the partition columns.
        "SELECT app, date, hour, count(*) AS denials FROM decisions \
         WHERE layer = 'http' AND decision = 'deny' GROUP BY app, date, hour",
        // Top dropped sources; addresses compare as text.
        "SELECT client_ip, sum(packets) AS packets, sum(bytes) AS bytes FROM decisions \
         WHERE layer = 'xdp' GROUP BY client_ip ORDER BY packets DESC, client_ip LIMIT 10",
        "SELECT count(*) AS n FROM decisions WHERE client_ip LIKE '203.0.113.%'",
        "SELECT count(*) AS n, sum(packets) AS packets FROM decisions WHERE client_ip = '2001:db8::7'",
        // One identity's history, with its timestamps.
        "SELECT event_time, request_id, app, status, latency_us FROM decisions \
         WHERE email = 'user7@example.com' ORDER BY event_time",
        // A time range and a partition filter together.
        "SELECT count(*) AS n FROM decisions WHERE date = '2026-11-23' AND hour = 8 \
         AND event_time < '2026-11-23T08:30:00Z'",
        // Service-token usage and last use.
        "SELECT token_name, count(*) AS requests, max(event_time) AS last_used FROM decisions \
         WHERE token_client_id IS NOT NULL GROUP BY token_name",
    ];
    for sql in queries {
        let ours = canonical(ours(dir.path(), sql));
        let theirs = canonical(duckdb(dir.path(), sql));
        assert!(!ours.is_empty(), "no rows for {sql}");
        assert_eq!(ours, theirs, "{sql}");
    }
    let total = canonical(ours(dir.path(), queries[0]));
    assert_eq!(total, [format!("{{\"n\":{EVENTS}}}")]);
}

#[test]
fn duckdb_and_pyarrow_see_timestamps_with_time_zone_and_sql_friendly_types() {
    let dir = logs();
    let types: Vec<(String, String)> = duckdb(
        dir.path(),
        "SELECT column_name, column_type FROM (DESCRIBE decisions)",
    )
    .into_iter()
    .map(|row| {
        (
            row["column_name"].as_str().unwrap().to_owned(),
            row["column_type"].as_str().unwrap().to_owned(),
        )
    })
    .collect();
    let type_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no column {name} in {types:?}"))
    };
    assert_eq!(type_of("event_time"), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(type_of("client_ip"), "VARCHAR");
    assert_eq!(type_of("status"), "INTEGER");
    assert_eq!(type_of("bytes"), "BIGINT");
    assert_eq!(type_of("date"), "DATE");
    assert_eq!(type_of("hour"), "INTEGER");
    assert_eq!(types.len(), analytics::schema::COLUMN_NAMES.len() + 2);

    let script = r#"
import sys, pyarrow.dataset as ds
d = ds.dataset(sys.argv[1], format="parquet", partitioning="hive")
t = d.to_table()
print(t.num_rows)
print(t.schema.field("event_time").type)
print(t.schema.field("layer").type)
print(t.schema.metadata[b"gateway.audit.schema_version"].decode())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            EVENTS.to_string().as_str(),
            "timestamp[us, tz=UTC]",
            "dictionary<values=string, indices=int32, ordered=0>",
            analytics::schema::SCHEMA_VERSION.to_string().as_str(),
        ]
    );
}

#[test]
fn formats_reports_and_clear_errors() {
    let dir = logs();
    // An aligned table with the column names.
    let out = analytics(
        dir.path(),
        &[
            "query",
            "SELECT layer, count(*) AS n FROM decisions GROUP BY layer ORDER BY layer",
        ],
    );
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| layer | n "), "{table}");
    assert!(table.contains("| http "), "{table}");
    // CSV with a header; times in RFC 3339 UTC.
    let out = analytics(
        dir.path(),
        &[
            "query",
            "--format",
            "csv",
            "SELECT min(event_time) AS first FROM decisions",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first\n2026-11-23T07:00:00.000000Z\n"
    );
    // Parquet output reads back.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("out.parquet");
    let out = analytics(
        dir.path(),
        &[
            "query",
            "--format",
            "parquet",
            "--output",
            file.to_str().unwrap(),
            "SELECT app, count(*) AS n FROM decisions WHERE app IS NOT NULL GROUP BY app",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = duckdb(
        dir.path(),
        &format!("SELECT sum(n) AS n FROM read_parquet('{}')", file.display()),
    );
    let http = canonical(ours(
        dir.path(),
        "SELECT count(*) AS n FROM decisions WHERE layer = 'http'",
    ));
    assert_eq!(canonical(rows), http);

    // Every built-in report runs.
    for report in ["denials", "refused", "dropped", "tokens", "timeline"] {
        let out = analytics(dir.path(), &["report", report, "--format", "csv"]);
        assert!(
            out.status.success(),
            "{report}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).lines().count() > 1,
            "{report}"
        );
    }

    // Bad SQL, an unknown column and a missing directory: one clear line.
    for (args, expect) in [
        (vec!["query", "SELEC nonsense"], "invalid SQL"),
        (
            vec!["query", "SELECT no_such_column FROM decisions"],
            "no_such_column",
        ),
    ] {
        let out = analytics(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("analytics: error: "), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = analytics(&dir.path().join("missing"), &["query", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no audit log directory"), "{stderr}");
}

#[test]
fn a_damaged_file_is_skipped_with_a_warning() {
    let dir = logs();
    let files = analytics::files::list(dir.path());
    let before = canonical(ours(
        dir.path(),
        "SELECT count(*) AS n FROM decisions WHERE hour <> 8",
    ));
    // Cut the 08:00 file short and drop garbage beside it.
    let victim = files
        .iter()
        .find(|p| p.to_string_lossy().contains("hour=08"))
        .unwrap();
    let bytes = std::fs::read(victim).unwrap();
    std::fs::write(victim, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(victim.with_file_name("garbage.parquet"), b"not parquet").unwrap();

    let out = analytics(
        dir.path(),
        &[
            "query",
            "--format",
            "json",
            "SELECT count(*) AS n FROM decisions",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("warning: skipping damaged file").count(),
        2,
        "{stderr}"
    );
    assert_eq!(canonical(json_lines(&out.stdout)), before);
}

/// The timeline chart: a well-formed SVG (parsed by Python's XML parser)
/// with one line per layer and decision, a point per hour, and the legend.
#[test]
fn the_timeline_report_draws_an_svg_chart() {
    let dir = logs();
    let chart = dir.path().join("timeline.svg");
    let out = analytics(
        dir.path(),
        &["report", "timeline", "--chart", chart.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as ET\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             for p in root.iter(ns + 'polyline'):\n\
             \x20   print(len(p.get('points').split()))\n\
             for t in root.iter(ns + 'text'):\n\
             \x20   print('text', (t.text or '').strip())",
        ])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        lines.status.success(),
        "not an SVG document: {}",
        String::from_utf8_lossy(&lines.stderr)
    );
    let lines = String::from_utf8_lossy(&lines.stdout);
    // Three hours of data: http allow, http deny, xdp deny.
    let three_point_lines = lines.lines().filter(|l| *l == "3").count();
    assert_eq!(three_point_lines, 3, "{lines}");
    for label in ["http allow", "http deny", "xdp deny"] {
        assert!(lines.contains(&format!("text {label}")), "{label}: {lines}");
    }

    // Only the timeline draws.
    let out = analytics(
        dir.path(),
        &["report", "denials", "--chart", chart.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeline report only"));
}

/// The wait before the progress bar appears (`analytics`'s
/// `progress::DELAY_VARIABLE`): none here, so a short scan draws it too.
const PROGRESS_DELAY_VARIABLE: &str = "ANALYTICS_PROGRESS_DELAY_MS";

#[test]
fn a_scan_draws_a_progress_bar_on_a_terminal_and_not_into_a_pipe() {
    let dir = logs();
    let sql = "SELECT count(DISTINCT request_id) AS ids FROM decisions";
    // `script` runs the command on a terminal of its own and passes on
    // what it drew there.
    let command = format!(
        "{} --dir {} query '{sql}'",
        audit::analytics_bin().display(),
        dir.path().display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env(PROGRESS_DELAY_VARIABLE, "0")
        .output()
        .expect("run script (util-linux)");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    // The bar, then (cleared: carriage return, erase line) the answer.
    let (bar, answer) = drawn
        .rsplit_once("\r\u{1b}[2K")
        .unwrap_or_else(|| panic!("no progress bar cleared before the answer: {drawn:?}"));
    assert!(bar.contains("scanning"), "{drawn:?}");
    assert!(
        answer.starts_with("+---") && answer.contains("| ids"),
        "{drawn:?}"
    );

    let out = audit::analytics_at(
        dir.path().as_os_str(),
        &[(PROGRESS_DELAY_VARIABLE, "0".into())],
        &["query", sql],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("scanning"),
        "a bar into a pipe: {stderr:?}"
    );
}
