//! The audit log's durability promise under `kill -9`: every event the
//! writer reported as synced before the kill is in the Parquet files after
//! recovery, exactly once, whether the kill landed mid-append, mid-roll
//! (between a file's rename and its segment's removal) or in the middle of
//! the previous run's recovery.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use analytics::{AuditStore, files};
use gateway_tests::audit;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

/// Runs of the writer, each killed at a random moment.
const RUNS: u64 = 10;
/// Events per segment: small, so kills often land in a roll.
const ROLL_EVENTS: &str = "3000";

/// Starts a writer run, kills it after `after` (counted from its first
/// `durable` line, or from the start when `early`), and returns the last
/// durable count it printed.
fn killed_run(dir: &Path, run: u64, after: Duration, early: bool) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-crash-writer"))
        .args([dir.to_str().unwrap(), &run.to_string(), ROLL_EVENTS])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start audit-crash-writer");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut durable = 0;
    let mut read = |line: String| {
        if let Some(n) = line.strip_prefix("durable ") {
            durable = n.parse().unwrap();
        }
    };
    let started = Instant::now();
    let mut kill_at = early.then(|| started + after);
    let give_up = started + Duration::from_secs(30);
    while kill_at.is_none_or(|at| Instant::now() < at) && Instant::now() < give_up {
        match rx.recv_timeout(Duration::from_millis(1)) {
            Ok(line) => {
                if kill_at.is_none() && line.starts_with("durable ") {
                    kill_at = Some(Instant::now() + after);
                }
                read(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(kill_at.is_some(), "run {run} never reported a sync");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "run {run} ended on its own"
    );
    // Lines printed before the kill are acknowledgements too.
    reader.join().unwrap();
    for line in rx.try_iter() {
        read(line);
    }
    durable
}

/// Sequence numbers per run found in the files.
fn events_per_run(dir: &Path) -> BTreeMap<u64, Vec<u64>> {
    let mut runs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for id in audit::request_ids(dir) {
        let (run, seq) = id.split_once('-').unwrap();
        runs.entry(run.parse().unwrap())
            .or_default()
            .push(seq.parse().unwrap());
    }
    runs
}

#[test]
fn events_reported_durable_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut acknowledged = Vec::new();
    for run in 0..RUNS {
        // Every third run is killed early: often during the recovery of the
        // run before it.
        let early = run % 3 == 2;
        let after = if early {
            Duration::from_millis(rng.random_range(0..40))
        } else {
            Duration::from_millis(rng.random_range(50..400))
        };
        acknowledged.push(killed_run(dir.path(), run, after, early));
    }

    let (_store, recovery) = AuditStore::open(audit::store_config(dir.path())).unwrap();
    assert!(recovery.damaged.is_empty(), "{recovery:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join(".wal")).unwrap().count(),
        0,
        "no segment is left after recovery"
    );

    let runs = events_per_run(dir.path());
    let mut lost_unsynced = 0;
    for (run, &acked) in acknowledged.iter().enumerate() {
        let mut seqs = runs.get(&(run as u64)).cloned().unwrap_or_default();
        let count = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), count, "run {run}: events doubled");
        let kept = seqs.len() as u64;
        assert!(
            seqs.iter().copied().eq(0..kept),
            "run {run}: the kept events are not a gap-free prefix"
        );
        assert!(
            kept >= acked,
            "run {run}: {acked} events were reported durable, only {kept} recovered"
        );
        lost_unsynced += kept - acked;
        println!("run {run}: {acked} acknowledged, {kept} kept");
    }
    let acked_total: u64 = acknowledged.iter().sum();
    assert!(
        acked_total > 10_000,
        "the runs wrote too little to prove anything: {acked_total}"
    );
    println!(
        "{acked_total} acknowledged events all kept ({lost_unsynced} more written but not yet acknowledged), {} files",
        files::list(dir.path()).len()
    );
}
