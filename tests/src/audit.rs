//! Audit logs for tests and benchmarks: realistic synthetic decisions
//! written through the real store, the `analytics` command built for the
//! tests, and DuckDB (from PyPI, installed by `cargo xtask setup`) reading
//! the same files.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::Duration,
};

use analytics::{
    AuditSender, AuditStore, AuditWriter, Decision, Event, Label, Layer, MemoryHooks, Recovery,
    Retention, Sinks, StoreConfig, StoreStatus,
};
use arrow::array::AsArray as _;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

/// 2026-11-23T07:00:00Z, the start of the synthetic logs.
pub const START_US: i64 = 1_795_417_200_000_000;

/// `n` decisions over `span_us` from [`START_US`]: about a third XDP drop
/// records from a few hundred sources, the rest HTTP requests by a few
/// hundred users and service tokens to five apps, one in eight refused.
/// The same seed gives the same events. Fixed strings (reasons, methods)
/// are borrowed and names from the configuration owned, as the gateway
/// makes them; request ids are shaped as one gateway process draws them
/// (a random prefix for the process, then 64 bits that differ per
/// request), key ids as Cloudflare's (64 hex digits).
pub fn synthetic_events(n: usize, span_us: i64, seed: u64) -> impl Iterator<Item = Event> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let process: u64 = rng.random();
    let key_id = format!("{:016x}", rng.random::<u64>()).repeat(4);
    let apps = ["wiki", "grafana", "ci", "billing", "admin"];
    let reasons_denied = ["no_credentials", "jwt_expired", "policy", "bad_signature"];
    (0..n).map(move |i| {
        let time_us = START_US + (i as i64 * span_us) / n.max(1) as i64;
        if rng.random_ratio(1, 3) {
            let source = if rng.random_ratio(1, 10) {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    rng.random_range(1..50),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.random_range(1..250)))
            };
            let packets = rng.random_range(1..500);
            return Event {
                time_us,
                layer: Some(Layer::Xdp),
                decision: Some(Decision::Deny),
                reason: "dropped_not_allowed".into(),
                client_ip: Some(source),
                protocol: Some("tcp".into()),
                dst_port: Some([443, 80, 22][rng.random_range(0..3)]),
                packets: Some(packets),
                bytes: Some(packets * 60),
                interval_us: Some(rng.random_range(0..1_000_000)),
                ..Event::default()
            };
        }
        let denied = rng.random_ratio(1, 8);
        let by_token = rng.random_ratio(1, 6);
        let user = rng.random_range(0..300);
        let token = rng.random_range(0..20);
        let app = apps[rng.random_range(0..apps.len())];
        Event {
            time_us,
            layer: Some(Layer::Http),
            decision: Some(if denied {
                Decision::Deny
            } else {
                Decision::Allow
            }),
            reason: if denied {
                reasons_denied[rng.random_range(0..reasons_denied.len())].into()
            } else {
                "policy".into()
            },
            app: Some(analytics::label(app)),
            policy: Some(analytics::label(&format!("{app}-users"))),
            rule: Some(0),
            email: (!by_token).then(|| format!("user{user}@example.com")),
            subject: (!by_token).then(|| format!("sub-{user}")),
            auth_method: Some(if by_token { "service_token" } else { "jwt" }.into()),
            token_client_id: by_token.then(|| owned(format!("{token:032x}.access"))),
            token_name: by_token.then(|| owned(format!("bot-{token}"))),
            country: Some(analytics::country_label(
                ["DE", "US", "FR", "JP"][rng.random_range(0..4)],
            )),
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(
                198,
                51,
                100,
                rng.random_range(1..250),
            ))),
            client_port: Some(rng.random_range(1024..65535)),
            protocol: Some("HTTP/1.1".into()),
            method: Some(
                if rng.random_ratio(1, 5) {
                    "POST"
                } else {
                    "GET"
                }
                .into(),
            ),
            hostname: Some(analytics::label(&format!("{app}.example.com"))),
            path: Some(format!(
                "/{}/{}",
                ["api", "static", "ui"][rng.random_range(0..3)],
                rng.random_range(0..100)
            )),
            status: Some(if denied { 403 } else { 200 }),
            latency_us: Some(rng.random_range(100..50_000)),
            bytes: Some(rng.random_range(0..100_000)),
            request_id: Some(format!("{process:016x}{:016x}", rng.random::<u64>())),
            token_issuer: Some(analytics::label("https://team.cloudflareaccess.com")),
            key_id: Some(analytics::label(&key_id)),
            ..Event::default()
        }
    })
}

/// A label the gateway copies for each request (a service token's id and
/// name); names from the configuration and verified keys are
/// [`analytics::label`]s, as the gateway's are.
fn owned(text: impl Into<String>) -> Label {
    Label::Owned(text.into())
}

/// The store settings the tests write with: host `test-host`, no retention.
pub fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_owned(),
        host: "test-host".into(),
        roll_interval: Duration::from_secs(3600),
        roll_events: 1_000_000,
        retention: Retention::default(),
    }
}

/// Writes `events` into a store at `dir` through the real write path
/// (segment, sync, a roll into Parquet per million events).
pub fn write_events(dir: &Path, events: impl IntoIterator<Item = Event>) {
    write_events_with(store_config(dir), events);
}

/// [`write_events`] into a store opened with `config`.
pub fn write_events_with(config: StoreConfig, events: impl IntoIterator<Item = Event>) {
    let (mut store, _) = AuditStore::open(config).expect("open the audit store");
    for event in events {
        store.push(&event);
        if store.pending() == analytics::store::BATCH_ROWS {
            store.flush().expect("flush");
            if store.roll_due() {
                store.roll().expect("roll into Parquet");
            }
        }
    }
    store.roll().expect("roll into Parquet");
}

/// A store opened with `config` (recovering what it finds) behind a real
/// channel of `queue` events and a writer thread syncing every
/// `sync_interval`.
pub struct Writer {
    /// The request path's end.
    pub sender: AuditSender,
    /// The running writer.
    pub writer: AuditWriter,
    /// The store's status (durable events, errors).
    pub status: Arc<StoreStatus>,
    /// What opening the store recovered.
    pub recovery: Recovery,
}

impl Writer {
    /// Opens the store and starts the writer.
    pub fn start(config: StoreConfig, queue: usize, sync_interval: Duration) -> Self {
        let (store, recovery) = AuditStore::open(config).expect("open the audit store");
        let status = store.status();
        let (sender, receiver) = analytics::channel(queue);
        let sinks = Sinks {
            store: Some(store),
            jsonl: None,
        };
        let writer = analytics::writer::spawn(sinks, receiver, sync_interval, MemoryHooks::NONE)
            .expect("start the audit writer");
        Self {
            sender,
            writer,
            status,
            recovery,
        }
    }
}

/// The `request_id` of every event in the Parquet files under `dir`
/// (tests number their events there).
pub fn request_ids(dir: &Path) -> Vec<String> {
    string_column(dir, "request_id")
}

/// Every non-null value of the string column `name` in the Parquet files
/// under `dir`, file by file.
pub fn string_column(dir: &Path, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for path in analytics::files::list(dir) {
        let file = std::fs::File::open(&path).expect("open a Parquet file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for batch in reader {
            let batch = batch.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let column = batch.column_by_name(name).expect(name);
            let column = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)
                .unwrap_or_else(|e| panic!("{name} as text: {e}"));
            values.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_owned),
            );
        }
    }
    values
}

/// Path of the `analytics` command built for the tests (beside the test
/// executables, like the gateway's).
pub fn analytics_bin() -> PathBuf {
    crate::daemon::built_bin("analytics-under-test")
}

/// Runs `analytics --dir DIR ARGS...`.
pub fn analytics(dir: &Path, args: &[&str]) -> Output {
    analytics_at(dir.as_os_str(), &[], args)
}

/// Runs `analytics --dir LOCATION ARGS...` (a directory or a bucket URL)
/// with extra environment variables.
pub fn analytics_at(location: &std::ffi::OsStr, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(analytics_bin())
        .arg("--dir")
        .arg(location)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .expect("run analytics")
}

/// Runs `analytics --dir LOCATION query --format json SQL` with extra
/// environment variables, which must succeed; the rows as JSON objects.
pub fn query_rows(
    location: &std::ffi::OsStr,
    env: &[(&str, String)],
    sql: &str,
) -> Vec<serde_json::Value> {
    let out = analytics_at(location, env, &["query", "--format", "json", sql]);
    assert!(
        out.status.success(),
        "analytics failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

/// The DuckDB view of the same files our `decisions` table reads: every
/// `*.parquet` under `dir`, with the Hive partitions typed as ours are.
const DUCKDB: &str = r#"
import datetime, decimal, duckdb, json, sys
directory, sql = sys.argv[1], sys.argv[2]
con = duckdb.connect()
files = (directory + "/**/*.parquet").replace("'", "''")
con.execute(
    f"CREATE VIEW decisions AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, "
    "hive_types = {'date': DATE, 'hour': INTEGER})"
)
result = con.execute(sql)
columns = [c[0] for c in result.description]
def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value)
    return value
for row in result.fetchall():
    print(json.dumps({c: plain(v) for c, v in zip(columns, row)}))
"#;

/// Runs `sql` in DuckDB over the logs under `dir`; rows as JSON objects.
pub fn duckdb(dir: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args(["-c", DUCKDB])
        .arg(dir)
        .arg(sql)
        .output()
        .expect("python3 (run `cargo xtask setup` for duckdb)");
    assert!(
        out.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out.stdout)
}

/// Parses JSON lines.
pub fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
