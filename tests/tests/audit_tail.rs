//! `analytics tail --follow` against a real writer: it first prints the
//! latest decisions, then every new one exactly once, while segments keep
//! rolling into Parquet under it (some events are printed from a segment,
//! the rest of that segment later from its files).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use analytics::{Event, Overflow, StoreConfig};
use gateway_tests::audit;

/// Events per segment: small, so segments roll while tail follows.
const ROLL_EVENTS: usize = 700;
const BEFORE: u64 = 2_000;
const AFTER: u64 = 5_000;
const LAST: usize = 5;

/// Kills the child on drop, also when the test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads printed events (their sequence numbers) until `seen` holds
/// `count`, for at most 30 s.
fn read(lines: &mpsc::Receiver<String>, seen: &mut Vec<u64>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("tail printed {} of {count} events", seen.len()));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(event["request_id"].as_str().unwrap().parse().unwrap());
    }
}

#[test]
fn tail_prints_the_latest_then_each_new_decision_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        roll_events: ROLL_EVENTS,
        ..audit::store_config(dir.path())
    };
    let audit::Writer {
        sender,
        writer,
        status,
        ..
    } = audit::Writer::start(config, 100_000, Duration::from_millis(50));
    let base = Event::now_us();
    let send = |seqs: std::ops::Range<u64>| {
        for seq in seqs {
            let event = Event {
                time_us: base + seq as i64,
                reason: "policy".into(),
                request_id: Some(seq.to_string()),
                ..Event::default()
            };
            sender.send(event, Overflow::FailClosed).unwrap();
        }
    };
    let wait_durable = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status.durable_events() < n {
            assert!(Instant::now() < deadline, "the writer never synced {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    send(0..BEFORE);
    wait_durable(BEFORE);

    let mut child = Child(
        Command::new(audit::analytics_bin())
            .arg("--dir")
            .arg(dir.path())
            .args([
                "tail",
                "-n",
                &LAST.to_string(),
                "--follow",
                "--format",
                "json",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    read(&lines, &mut seen, LAST);
    let first: Vec<u64> = (BEFORE - LAST as u64..BEFORE).collect();
    assert_eq!(seen, first, "the latest events, oldest first");

    // In waves, so the tail's looks fall between appends and rolls.
    for wave in 0..10 {
        let start = BEFORE + wave * AFTER / 10;
        send(start..start + AFTER / 10);
        std::thread::sleep(Duration::from_millis(120));
    }
    wait_durable(BEFORE + AFTER);
    read(&lines, &mut seen, LAST + AFTER as usize);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for &seq in &seen[LAST..] {
        *counts.entry(seq).or_default() += 1;
    }
    let doubled: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| s)
        .collect();
    assert!(
        doubled.is_empty(),
        "{} events printed twice, from {:?}",
        doubled.len(),
        doubled.first()
    );
    assert!(
        counts.keys().copied().eq(BEFORE..BEFORE + AFTER),
        "the followed events are not exactly the new ones"
    );
    // Nothing more turns up.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lines.try_recv().is_err(),
        "tail printed more than was written"
    );
    assert!(
        status.files_written() > (BEFORE + AFTER) / ROLL_EVENTS as u64 / 2,
        "segments did not roll while tail followed"
    );

    drop(sender);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(writer.finish(Duration::from_secs(30)))
        .unwrap();
}
