//! A full disk under the audit log, on a real (small) tmpfs: the writer
//! stops taking events and says why, the channel fills and refuses (the
//! gateway's fail-closed policy), no file already written changes, and
//! once space returns the writer catches up by itself. A stop while the
//! disk is still full leaves the events in the write-ahead segment for the
//! next start. Every accepted event ends up in Parquet exactly once.
//!
//! The same through a running gateway: while its audit log cannot be
//! written it refuses requests with 503 (`audit_unavailable`) once its
//! queue is full, says so on `/readyz` and in its metrics, and serves again
//! by itself once space returns; every request it served is in the log.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use analytics::{AuditSender, AuditStore, Event, Overflow, StoreStatus, files, writer};
use gateway_tests::{
    audit,
    gateway::{Harness, OPEN_POLICY},
};

/// Size of the filesystem: a few segments' worth.
const FS_MIB: u64 = 16;
/// Room in the channel; with the writer stuck, this many more are taken.
const QUEUE: usize = 10_000;

/// A tmpfs of [`FS_MIB`] mounted on a temporary directory, unmounted on
/// drop (also when the test fails).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={FS_MIB}m,mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("run mount (the test needs root)");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` until the filesystem has no room left.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        for _ in 0..(FS_MIB << 8) + 16 {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return path,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        panic!("{} never filled the filesystem", path.display())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Waits (at most 30 s) for `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sleeps past the next full hour if it is less than two minutes away.
fn away_from_the_end_of_an_hour() {
    const HOUR_US: i64 = 3_600_000_000;
    let left = HOUR_US - Event::now_us().rem_euclid(HOUR_US);
    if left < 120_000_000 {
        std::thread::sleep(Duration::from_micros(left as u64 + 1_000_000));
    }
}

fn event(seq: u64) -> Event {
    Event {
        time_us: Event::now_us(),
        reason: "policy".into(),
        request_id: Some(seq.to_string()),
        ..Event::default()
    }
}

/// Sends numbered events from `*next` until `stop` or `count` of them;
/// returns whether the channel refused one (the refused one is not sent).
fn send(sender: &AuditSender, next: &mut u64, count: u64, mut stop: impl FnMut() -> bool) -> bool {
    for _ in 0..count {
        if sender.send(event(*next), Overflow::FailClosed).is_err() {
            if stop() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        *next += 1;
    }
    false
}

fn contents(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

fn is_full(status: &StoreStatus) -> bool {
    status
        .error()
        .is_some_and(|e| e.contains("No space left on device"))
}

#[test]
fn a_full_disk_stops_the_writer_without_loss_or_damage_and_it_resumes() {
    let fs = SmallFs::mount();
    let dir = fs.path().join("audit");
    let config = analytics::StoreConfig {
        roll_events: 20_000,
        ..audit::store_config(&dir)
    };
    let audit::Writer {
        sender,
        writer,
        status,
        ..
    } = audit::Writer::start(config.clone(), QUEUE, Duration::from_millis(50));

    // Room: events become Parquet files.
    let mut next = 0;
    send(&sender, &mut next, 30_000, || false);
    wait_for("the first roll", || {
        status.files_written() >= 1 && status.durable_events() == next
    });
    let before = contents(&files::list(&dir));
    assert!(!before.is_empty());

    // No room: the writer stops and reports it; the channel fills and
    // refuses.
    let filler = fs.fill("filler");
    let refused = send(&sender, &mut next, 1_000_000, || is_full(&status));
    assert!(refused, "the channel never refused: {:?}", status.error());
    assert!(status.durable_events() < next, "nothing was held back");
    std::thread::sleep(3 * writer::RETRY_INTERVAL);
    assert!(is_full(&status), "{:?}", status.error());
    assert_eq!(
        contents(&files::list(&dir)),
        before,
        "the files already written changed while the disk was full"
    );

    // Room again: the writer catches up by itself.
    std::fs::remove_file(&filler).unwrap();
    // The stop below needs a segment with events in it, which a roll at
    // the end of the hour would empty.
    away_from_the_end_of_an_hour();
    wait_for("the writer to recover", || {
        status.error().is_none() && status.durable_events() == next
    });
    // Send until the segment the recovery filled rolls over its size, so
    // the events below start a segment far from its own limit.
    let rolled = status.files_written();
    for _ in 0..=config.roll_events / 1_000 {
        if status.files_written() != rolled {
            break;
        }
        send(&sender, &mut next, 1_000, || false);
        wait_for("the new events to be synced", || {
            status.durable_events() == next
        });
    }
    assert_ne!(
        status.files_written(),
        rolled,
        "no roll after {} events",
        config.roll_events
    );
    send(&sender, &mut next, 100, || false);
    wait_for("the last events to be synced", || {
        status.durable_events() == next
    });

    // A stop while the disk is full: the last roll fails, the segment
    // keeps the events.
    let filler = fs.fill("filler");
    drop(sender);
    let finished = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(writer.finish(Duration::from_secs(30)));
    assert!(
        matches!(finished, Err(writer::FinishError::Store(_))),
        "{finished:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    let (_, recovery) = AuditStore::open(config).unwrap();
    assert!(recovery.events > 0, "{recovery:?}");
    assert!(recovery.damaged.is_empty(), "{recovery:?}");

    let ids = audit::request_ids(&dir);
    let unique: BTreeSet<u64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert_eq!(unique.len(), ids.len(), "events doubled");
    assert!(
        unique.iter().copied().eq(0..next),
        "{} of {next} accepted events are in the files",
        unique.len()
    );
    for (path, bytes) in before {
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{}", path.display());
    }
    println!(
        "{next} accepted events in {} files, {} recovered after the stop",
        files::list(&dir).len(),
        recovery.events
    );
}

#[test]
fn a_store_opened_on_a_full_disk_keeps_what_it_cannot_recover_until_there_is_room() {
    let fs = SmallFs::mount();
    let dir = fs.path().join("audit");
    let config = audit::store_config(&dir);
    // An earlier run synced a segment and died before its roll.
    let (mut store, _) = AuditStore::open(config.clone()).unwrap();
    for seq in 0..1000 {
        store.push(&event(seq));
    }
    store.sync().unwrap();
    drop(store);
    let segment = analytics::store::segments(&dir);
    assert_eq!(segment.len(), 1);

    let filler = fs.fill("filler");
    let (mut store, recovery) = AuditStore::open(config).expect("opens on a full disk");
    assert_eq!(recovery.segments, 0);
    assert_eq!(recovery.unrecovered.len(), 1, "{recovery:?}");
    assert_eq!(recovery.unrecovered[0].0, segment[0]);
    assert!(
        recovery.unrecovered[0]
            .1
            .contains("No space left on device"),
        "{recovery:?}"
    );
    assert!(store.roll_due());
    assert!(store.roll().is_err());
    assert_eq!(
        analytics::store::segments(&dir),
        segment,
        "the segment stays"
    );
    assert!(files::list(&dir).is_empty());

    std::fs::remove_file(filler).unwrap();
    store.roll().expect("room again");
    assert!(!store.roll_due());
    assert!(analytics::store::segments(&dir).is_empty());
    let mut ids: Vec<u64> = audit::request_ids(&dir)
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
}

/// The audit queue of the gateway under test: small, so it fills at once.
const GATEWAY_QUEUE: usize = 8;

/// A GET of `/` for `app.test`: the status and the request id.
fn get(h: &Harness) -> (u16, String) {
    let response = h.raw(
        "app.test",
        b"GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n",
    );
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let id = response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no request id in {response:?}"));
    if status == 503 {
        assert!(response.contains("audit_unavailable"), "{response}");
    }
    (status, id)
}

#[test]
fn a_gateway_refuses_while_its_audit_log_cannot_be_written_and_serves_again_by_itself() {
    gateway_tests::require_root();
    let fs = SmallFs::mount();
    let audit_dir = fs.path().join("audit");
    let mut h = Harness::new();
    let audit_line = format!("dir = \"{}\"", h.path("audit").display());
    let base = h.base_config();
    assert!(
        base.contains(&audit_line),
        "the harness's audit section moved"
    );
    let config = base.replace(
        &audit_line,
        &format!("dir = \"{}\"\nqueue = {GATEWAY_QUEUE}", audit_dir.display()),
    ) + &h.app("public", "app.test", "/", "", OPEN_POLICY);
    h.start(&config);
    let mut served = BTreeSet::new();
    let (status, id) = get(&h);
    assert_eq!(status, 200, "{}", h.log());
    served.insert(id.clone());
    h.audit_event(&id);

    // The disk fills: the writer's next sync fails, it stops taking
    // events, and once the queue is full requests are refused.
    let filler = fs.fill("filler");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    while refused < 3 {
        assert!(
            Instant::now() < deadline,
            "no request was refused while the disk was full\n{}",
            h.log()
        );
        match get(&h) {
            (200, id) => {
                served.insert(id);
            }
            (503, _) => refused += 1,
            (status, _) => panic!("unexpected status {status}\n{}", h.log()),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ready, _, why) = h.admin_get("/readyz");
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    let (_, _, metrics) = h.admin_get("/metrics");
    assert!(
        metrics.contains("gateway_audit_write_failing 1"),
        "{metrics}"
    );

    // Space returns: the writer catches up by itself and requests pass.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&h) {
            (200, id) => {
                served.insert(id);
                break;
            }
            (503, _) => {}
            (status, _) => panic!("unexpected status {status}\n{}", h.log()),
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never served again after space returned\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ready, _, why) = h.admin_get("/readyz");
    assert_eq!(ready, 200, "{why}");

    // Every request served is in the log once; refused ones never were.
    let status = h.daemon.as_mut().expect("started").stop();
    assert!(status.success(), "{status}\n{}", h.log());
    let mut logged = audit::request_ids(&audit_dir);
    logged.sort();
    assert_eq!(
        logged,
        served.into_iter().collect::<Vec<_>>(),
        "the Parquet files must hold exactly the requests served"
    );
}
