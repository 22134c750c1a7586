//! `cargo xtask bench audit`: the audit log against what most gateways do
//! (JSON lines) and against DuckDB, in one run.
//!
//! - Ingest: the same events through the same channel and writer thread
//!   (pinned to one CPU, with the daemon's allocator settings and writer
//!   hooks), into the store (segment, fsync every second,
//!   Parquet) and as JSON lines (fsynced at the end), [`INGEST_RUNS`] times
//!   each in turn, each run in a child process of its own so peak memory is
//!   the run's alone. Timed from the first event sent to the last one
//!   durable on disk; the median run is reported, and the highest peak.
//! - Stages: the writer's work on the same events split into its steps,
//!   each alone on the writer's CPU with its input made beforehand, in CPU
//!   time: where an ingest run's time goes, and how much of it is Parquet
//!   encoding (parquet-rs), which the issue's format fixes.
//! - Size: ten million distinct synthetic events written through the
//!   store, against the length of the same events as JSON lines.
//! - Query: the same ten million events, then
//!   three typical queries with our `analytics` command (the whole process,
//!   start to exit) and with DuckDB (connect, query, fetch; Python's start
//!   and import not counted), medians of [`QUERY_RUNS`] after a warm-up.
//!
//! Usage: `bench-audit [RESULTS_DIR]`; `bench-audit ingest parquet|jsonl DIR`
//! and `bench-audit stages DIR` are the children; `bench-audit data DIR`
//! writes the query data set alone.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use analytics::{
    AuditStore, Event, Overflow, Sinks, StoreConfig,
    files::{self, FileSet},
    jsonl::JsonLines,
    schema::EventBatchBuilder,
    store::{BATCH_ROWS, ROW_GROUP_ROWS},
    wal::Segment,
    writer,
};
use arrow::array::RecordBatch;
use gateway_tests::{
    audit,
    report::{self, Row},
};
use serde_json::{Value, json};

/// The daemon's allocator (the ingest child also applies its settings), so
/// the writer runs as it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The host name in the ingest runs' events.
const HOST: &str = "bench-host";
/// Events per ingest run.
const INGEST_EVENTS: usize = 4_000_000;
/// Ingest runs of each sink, taken in turn; the median is reported.
const INGEST_RUNS: usize = 3;
/// Distinct events cycled through by the sender (generated beforehand).
const POOL: usize = 1 << 16;
/// The gateway's default queue.
const QUEUE: usize = 65_536;
const WRITER_CPU: usize = 1;
const SENDER_CPU: usize = 0;
/// Events in the query data set, over one day.
const QUERY_EVENTS: usize = 10_000_000;
const QUERY_SPAN_US: i64 = 24 * 3_600_000_000;
const QUERY_RUNS: usize = 5;
/// The ingest floor the issue sets, events per second on one core.
const INGEST_FLOOR: f64 = 1_000_000.0;
/// What the writer may use at most with the default settings (set when it
/// held a whole segment until the roll; it now holds one row group).
const WRITER_MEMORY_BUDGET: f64 = 512.0 * 1024.0 * 1024.0;

/// The three typical questions.
const QUERIES: [(&str, &str); 3] = [
    (
        "denials by app and hour",
        "SELECT app, date, hour, count(*) AS denials FROM decisions \
         WHERE layer = 'http' AND decision = 'deny' \
         GROUP BY app, date, hour ORDER BY date, hour, app",
    ),
    (
        "top dropped sources",
        "SELECT client_ip, sum(packets) AS packets, sum(bytes) AS bytes FROM decisions \
         WHERE layer = 'xdp' GROUP BY client_ip ORDER BY packets DESC, client_ip LIMIT 20",
    ),
    (
        "one identity's history",
        "SELECT event_time, app, decision, reason, method, path, status FROM decisions \
         WHERE email = 'user42@example.com' ORDER BY event_time, request_id",
    ),
];

/// DuckDB over the same files as our `decisions` table, timed from
/// connecting to fetching the last row; prints the row count and the
/// seconds of each run, the first run being the warm-up.
const DUCKDB_TIMED: &str = r#"
import duckdb, json, sys, time
directory, sql, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = (directory + "/**/*.parquet").replace("'", "''")
times, rows = [], 0
for _ in range(runs + 1):
    start = time.perf_counter()
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW decisions AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, "
        "hive_types = {'date': DATE, 'hour': INTEGER})"
    )
    rows = len(con.execute(sql).fetchall())
    times.append(time.perf_counter() - start)
    con.close()
print(json.dumps({"rows": rows, "seconds": times[1:]}))
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let this_is_a_child = match &args[..] {
        [_, mode, sink, dir] if mode == "ingest" => Some((Some(sink), dir)),
        [_, mode, dir] if mode == "stages" => Some((None, dir)),
        _ => None,
    };
    if let Some((sink, dir)) = this_is_a_child {
        // The daemon's memory settings (`main.rs`, `daemon::run`): how soon
        // freed memory goes back to the OS decides how often the writer
        // faults it in again.
        gateway::allocator::return_freed_memory_promptly();
        gateway::allocator::disable_transparent_huge_pages().expect("opt out of huge pages");
        let result = match sink {
            Some(sink) => ingest(sink, Path::new(dir)),
            None => stages(Path::new(dir)),
        };
        println!("{result}");
        return;
    }
    // The query data set alone, to study the queries by hand.
    if let [_, mode, dir] = &args[..]
        && mode == "data"
    {
        write_query_data(Path::new(dir));
        return;
    }
    gateway_tests::require_root();
    let work = tempfile::tempdir_in("/var/tmp").expect("a scratch directory");
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // The runs go in turn, so a slow spell of the machine touches both
    // sinks alike.
    let (mut parquet_runs, mut jsonl_runs) = (Vec::new(), Vec::new());
    for run in 0..INGEST_RUNS {
        parquet_runs.push(child(
            &["ingest", "parquet"],
            &work.path().join(format!("parquet-{run}")),
        ));
        jsonl_runs.push(child(
            &["ingest", "jsonl"],
            &work.path().join(format!("jsonl-{run}")),
        ));
    }
    let stages = child(&["stages"], &work.path().join("stages"));
    let ours = median_run(&parquet_runs);
    let lines = median_run(&jsonl_runs);
    let rate = |r: &Value| r["events"].as_f64().unwrap() / r["seconds"].as_f64().unwrap();
    let writer_memory = |runs: &[Value]| {
        runs.iter()
            .map(|r| r["peak_bytes"].as_f64().unwrap() - r["pool_bytes"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    rows.push(Row {
        metric: "ingest, channel to durable Parquet, writer on one core".into(),
        unit: "events/s",
        ours: rate(&ours),
        baseline: "floor: 1,000,000 events/s/core".into(),
        baseline_value: INGEST_FLOOR,
        goal: "ratio >= 1.0".into(),
        note: format!(
            "{INGEST_EVENTS} events cycled from {POOL} distinct ones, sync every 1 s, roll every 1M; \
             median of {INGEST_RUNS} runs: {}",
            run_seconds(&parquet_runs)
        ),
    });
    notes.push(stages_note(&stages, ours["seconds"].as_f64().unwrap()));
    rows.push(Row {
        metric: "ingest vs the same events as JSON lines".into(),
        unit: "events/s",
        ours: rate(&ours),
        baseline: "JSON lines (serde_json), same channel and thread".into(),
        baseline_value: rate(&lines),
        goal: "ratio >= 1.0".into(),
        note: format!(
            "JSON lines fsynced once at the end; median of {INGEST_RUNS} runs: {}",
            run_seconds(&jsonl_runs)
        ),
    });
    rows.push(Row {
        metric: "writer peak memory (process peak minus the event pool)".into(),
        unit: "MiB",
        ours: writer_memory(&parquet_runs) / 1048576.0,
        baseline: "budget: 512 MiB for the queue of 65,536 and the writer".into(),
        baseline_value: WRITER_MEMORY_BUDGET / 1048576.0,
        goal: "ratio <= 1.0".into(),
        note: format!(
            "highest of {INGEST_RUNS} runs; JSON-lines writer: {:.0} MiB",
            writer_memory(&jsonl_runs) / 1048576.0
        ),
    });

    let logs = work.path().join("query");
    let started = Instant::now();
    write_query_data(&logs);
    let written = files::list(&logs);
    let bytes: u64 = written
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum();
    notes.push(format!(
        "query data: {QUERY_EVENTS} events over 24 h in {} files, {:.0} MiB, written in {:.1} s",
        written.len(),
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    ));
    // Size on disk of realistic events (all distinct), against the same
    // events as JSON lines.
    let json_bytes: usize = query_events()
        .map(|event| serde_json::to_vec(&event).expect("an event as JSON").len() + 1)
        .sum();
    rows.push(Row {
        metric: "bytes per event on disk, 10M distinct events".into(),
        unit: "bytes",
        ours: bytes as f64 / QUERY_EVENTS as f64,
        baseline: "JSON lines of the same events".into(),
        baseline_value: json_bytes as f64 / QUERY_EVENTS as f64,
        goal: "ratio <= 0.1".into(),
        note: format!("{} Parquet files", written.len()),
    });
    for (name, sql) in QUERIES {
        let (our_rows, ours) = our_query(&logs, sql);
        let (duck_rows, duck) = duckdb_query(&logs, sql);
        assert_eq!(our_rows, duck_rows, "{name}: the engines disagree");
        rows.push(Row {
            metric: format!("query: {name}, 10M events"),
            unit: "s",
            ours,
            baseline: "DuckDB 1.5 (PyPI), same files".into(),
            baseline_value: duck,
            goal: "ratio <= 1.5".into(),
            note: format!("{our_rows} rows; medians of {QUERY_RUNS}"),
        });
    }
    let extra = serde_json::Map::from_iter([
        ("ingest_parquet".to_owned(), Value::from(parquet_runs)),
        ("ingest_jsonl".to_owned(), Value::from(jsonl_runs)),
        ("ingest_stages".to_owned(), stages),
    ]);
    report::publish(&report::out_dir(), "audit", &rows, &notes, extra);
}

/// The [`QUERY_EVENTS`] events the queries run on (the same every run).
fn query_events() -> impl Iterator<Item = Event> {
    audit::synthetic_events(QUERY_EVENTS, QUERY_SPAN_US, 42)
}

/// [`query_events`], written through the store into `dir`.
fn write_query_data(dir: &Path) {
    audit::write_events(dir, query_events());
}

/// Runs this program as a child ([`ingest`] or [`stages`], as `mode`
/// says) in `dir`, which it removes after, and returns what it printed.
/// Each run has a process of its own, so its peak memory is its own.
/// Dirty pages of whatever ran before (the benchmark's build, the last
/// run's files) are written out first, so no fsync of the run waits
/// behind them.
fn child(mode: &[&str], dir: &Path) -> Value {
    let synced = Command::new("sync").status();
    assert!(synced.is_ok_and(|s| s.success()), "sync failed");
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(mode)
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("start the child run");
    assert!(out.status.success(), "the run {mode:?} failed");
    std::fs::remove_dir_all(dir).expect("remove the run's files");
    serde_json::from_slice(&out.stdout).expect("the run's result")
}

/// The run of median time among `runs`.
fn median_run(runs: &[Value]) -> Value {
    let mut by_time: Vec<&Value> = runs.iter().collect();
    by_time.sort_by(|a, b| {
        a["seconds"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["seconds"].as_f64().unwrap())
    });
    by_time[by_time.len() / 2].clone()
}

/// The seconds of each run, in order.
fn run_seconds(runs: &[Value]) -> String {
    let seconds: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2} s", r["seconds"].as_f64().unwrap()))
        .collect();
    seconds.join(", ")
}

/// The child: sends [`INGEST_EVENTS`] through a writer into `sink` at `dir`.
fn ingest(sink: &str, dir: &Path) -> Value {
    let pool: Vec<Event> = audit::synthetic_events(POOL, 3_600_000_000, 7).collect();
    let me = std::process::id();
    let pool_bytes = gateway_tests::process_memory(me, "VmRSS");
    let jsonl_path = dir.join("audit.jsonl");
    let sinks = match sink {
        "parquet" => Sinks {
            store: Some(
                AuditStore::open(StoreConfig {
                    host: HOST.into(),
                    roll_interval: Duration::from_secs(300),
                    ..audit::store_config(dir)
                })
                .expect("open the store")
                .0,
            ),
            jsonl: None,
        },
        "jsonl" => Sinks {
            store: None,
            jsonl: Some(JsonLines::open(&jsonl_path).expect("open the JSON-lines file")),
        },
        other => panic!("unknown sink {other}"),
    };
    // The writer thread inherits this CPU; the sender then moves away.
    gateway_tests::pin_thread_to_cpu(WRITER_CPU);
    let (sender, receiver) = analytics::channel(QUEUE);
    let writer = writer::spawn(
        sinks,
        receiver,
        Duration::from_secs(1),
        gateway::allocator::AUDIT_WRITER_HOOKS,
    )
    .expect("start the writer");
    gateway_tests::pin_thread_to_cpu(SENDER_CPU);

    let started = Instant::now();
    for i in 0..INGEST_EVENTS {
        let event = ingest_event(&pool, i);
        let slot = loop {
            match sender.reserve(Overflow::FailClosed) {
                Ok(slot) => break slot,
                Err(_) => std::thread::yield_now(),
            }
        };
        slot.send(event);
    }
    drop(sender);
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(writer.finish(Duration::from_secs(300)))
        .expect("the writer finished");
    let (bytes, files) = if sink == "jsonl" {
        let file = std::fs::File::open(&jsonl_path).expect("the JSON-lines file");
        file.sync_all().expect("fsync the JSON-lines file");
        (file.metadata().expect("its size").len(), 1)
    } else {
        let written = files::list(dir);
        let bytes = written
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum();
        (bytes, written.len())
    };
    let seconds = started.elapsed().as_secs_f64();
    json!({
        "events": INGEST_EVENTS,
        "seconds": seconds,
        "bytes": bytes,
        "files": files,
        "peak_bytes": gateway_tests::process_memory(me, "VmHWM"),
        "pool_bytes": pool_bytes,
    })
}

/// The `i`th event an ingest run sends, as the gateway sends them: one
/// event a microsecond, each stamped with its request's start and sent when
/// the response starts, so events arrive out of time order by up to their
/// latency (50 ms).
fn ingest_event(pool: &[Event], i: usize) -> Event {
    let mut event = pool[i % pool.len()].clone();
    event.time_us = ingest_time(pool, i);
    event
}

/// The time of [`ingest_event`]`(pool, i)`.
fn ingest_time(pool: &[Event], i: usize) -> i64 {
    audit::START_US + i as i64 - pool[i % pool.len()].latency_us.unwrap_or(0) as i64
}

/// Segment appends per fsync in [`stages`]: one a second at the floor's rate.
const APPENDS_PER_SYNC: usize = INGEST_FLOOR as usize / BATCH_ROWS;

/// The child: the writer's steps on the [`ingest`] run's events, each
/// alone on the writer's CPU, its input made first and not timed. CPU
/// seconds of the thread per step, for all [`INGEST_EVENTS`]:
///
/// - `channel`: taking events off the channel and freeing them, a queue
///   at a time (filled beforehand on the same thread, so no other core
///   touches them: less than in the writer);
/// - `columns`: building record batches of [`BATCH_ROWS`];
/// - `segment`: appending them to a segment, fsynced every
///   [`APPENDS_PER_SYNC`];
/// - `sort`: what sorting adds to writing row groups of
///   [`ROW_GROUP_ROWS`] into Parquet;
/// - `parquet`: writing the same rows, sorted beforehand, into Parquet
///   (parquet-rs: dictionaries, statistics, ZSTD) up to the renamed files.
fn stages(dir: &Path) -> Value {
    let pool: Vec<Event> = audit::synthetic_events(POOL, 3_600_000_000, 7).collect();
    gateway_tests::pin_thread_to_cpu(WRITER_CPU);
    std::fs::create_dir_all(dir).expect("create the run's directory");
    // As in the writer under a stream of events.
    (gateway::allocator::AUDIT_WRITER_HOOKS.busy)();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let (sender, mut receiver) = analytics::channel(QUEUE);
    let mut received = Vec::with_capacity(writer::RECEIVE_EVENTS);
    let mut channel = 0.0;
    for first in (0..INGEST_EVENTS).step_by(QUEUE) {
        let events = QUEUE.min(INGEST_EVENTS - first);
        for i in first..first + events {
            sender
                .send(ingest_event(&pool, i), Overflow::FailClosed)
                .expect("room");
        }
        let started = thread_cpu_seconds();
        let mut left = events;
        while left > 0 {
            left -= runtime.block_on(receiver.recv_many(&mut received, writer::RECEIVE_EVENTS));
            received.clear();
        }
        channel += thread_cpu_seconds() - started;
    }

    // Building columns, the batches of a row group freed once it is
    // complete, as the store does.
    let mut row_group = Vec::new();
    let columns = build_batches(&pool, 0..INGEST_EVENTS, |batch| {
        row_group.push(batch);
        if row_group.len() * BATCH_ROWS >= ROW_GROUP_ROWS {
            row_group.clear();
        }
    });
    drop(row_group);

    // The input of the other steps: every batch, in arrival order.
    let mut in_arrival_order = Vec::new();
    build_batches(&pool, 0..INGEST_EVENTS, |batch| {
        in_arrival_order.push(batch)
    });

    // Whatever is dirty in the page cache is written out first, so the
    // segment's fsyncs write the segment alone.
    // SAFETY: sync(2) takes nothing and cannot fail.
    unsafe { libc::sync() };
    let started = thread_cpu_seconds();
    let mut segment = Segment::create(dir.join("stages.arrows")).expect("create a segment");
    for (n, batch) in in_arrival_order.iter().enumerate() {
        segment.append(batch).expect("append to the segment");
        if (n + 1) % APPENDS_PER_SYNC == 0 {
            segment.sync().expect("fsync the segment");
        }
    }
    segment.sync().expect("fsync the segment");
    let segment = thread_cpu_seconds() - started;

    let write_files = |name: &str, batches: &[RecordBatch]| {
        let started = thread_cpu_seconds();
        let mut files = FileSet::new(dir, name);
        for row_group in batches.chunks(ROW_GROUP_ROWS / BATCH_ROWS) {
            files.append(row_group).expect("write a row group");
        }
        files.finish().expect("finish the files");
        thread_cpu_seconds() - started
    };
    let sort_and_parquet = write_files("arrival-order", &in_arrival_order);
    drop(in_arrival_order);
    let mut by_time: Vec<usize> = (0..INGEST_EVENTS).collect();
    by_time.sort_by_key(|&i| ingest_time(&pool, i));
    let mut in_time_order = Vec::new();
    build_batches(&pool, by_time, |batch| in_time_order.push(batch));
    let parquet = write_files("time-order", &in_time_order);

    json!({
        "events": INGEST_EVENTS,
        "channel": channel,
        "columns": columns,
        "segment": segment,
        "sort": sort_and_parquet - parquet,
        "parquet": parquet,
    })
}

/// Builds the [`ingest_event`]s `order` names into batches of
/// [`BATCH_ROWS`] and hands each to `batch`. Events are made a receive's
/// worth at a time, then built, so they are in the CPU's caches as in the
/// writer. Returns the CPU seconds the building took.
fn build_batches(
    pool: &[Event],
    order: impl IntoIterator<Item = usize>,
    mut batch: impl FnMut(RecordBatch),
) -> f64 {
    let mut order = order.into_iter();
    let mut received = Vec::with_capacity(writer::RECEIVE_EVENTS);
    let mut builder = EventBatchBuilder::new(HOST, BATCH_ROWS);
    let mut took = 0.0;
    loop {
        received.clear();
        received.extend(
            order
                .by_ref()
                .take(writer::RECEIVE_EVENTS)
                .map(|i| ingest_event(pool, i)),
        );
        if received.is_empty() {
            break;
        }
        let started = thread_cpu_seconds();
        for event in &received {
            builder.push(event);
        }
        let full = (builder.len() >= BATCH_ROWS).then(|| {
            std::mem::replace(&mut builder, EventBatchBuilder::new(HOST, BATCH_ROWS)).finish()
        });
        took += thread_cpu_seconds() - started;
        if let Some(full) = full {
            batch(full);
        }
    }
    if !builder.is_empty() {
        batch(builder.finish());
    }
    took
}

/// CPU time of the calling thread (user and kernel), in seconds: what a
/// step costs the writer's core, without the time its fsyncs wait for the
/// disk (in a run the disk writes behind the writer's other work).
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// What [`stages`] found, beside the ingest run's `seconds`, as a note.
fn stages_note(stages: &Value, seconds: f64) -> String {
    let steps = ["channel", "columns", "segment", "sort", "parquet"];
    let each: Vec<String> = steps
        .iter()
        .map(|step| format!("{step} {:.2}", stages[step].as_f64().unwrap()))
        .collect();
    let sum: f64 = steps
        .iter()
        .map(|step| stages[step].as_f64().unwrap())
        .sum();
    let parquet = stages["parquet"].as_f64().unwrap();
    format!(
        "ingest stages, each alone, s for {INGEST_EVENTS} events: {}; sum {sum:.2} against {seconds:.2} \
         for the median run and {:.2} at the floor; Parquet encoding alone allows {:.0} events/s",
        each.join(", "),
        INGEST_EVENTS as f64 / INGEST_FLOOR,
        INGEST_EVENTS as f64 / parquet,
    )
}

/// Our command's rows and median wall time on `sql`.
fn our_query(logs: &Path, sql: &str) -> (usize, f64) {
    let run = || {
        let started = Instant::now();
        let out = Command::new(audit::analytics_bin())
            .arg("--dir")
            .arg(logs)
            .args(["query", sql, "--format", "csv"])
            .output()
            .expect("run analytics");
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "analytics failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // CSV with a header line.
        let rows = out.stdout.iter().filter(|&&b| b == b'\n').count() - 1;
        (rows, seconds)
    };
    let (rows, _) = run();
    let times = (0..QUERY_RUNS).map(|_| run().1).collect();
    (rows, median(times))
}

/// DuckDB's rows and median time on `sql`.
fn duckdb_query(logs: &Path, sql: &str) -> (usize, f64) {
    let out = Command::new("python3")
        .args(["-c", DUCKDB_TIMED])
        .arg(logs)
        .arg(sql)
        .arg(QUERY_RUNS.to_string())
        .output()
        .expect("python3 (run `cargo xtask setup` for duckdb)");
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("duckdb's timings");
    let times = result["seconds"]
        .as_array()
        .expect("seconds")
        .iter()
        .map(|t| t.as_f64().expect("a time"))
        .collect();
    (
        result["rows"].as_u64().expect("rows") as usize,
        median(times),
    )
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
