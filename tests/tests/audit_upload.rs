//! The fleet sink against a real S3-compatible server (s3s-fs on
//! loopback): finished Parquet files go up once, byte for byte, under
//! `host=/date=/hour=` keys; what went up survives restarts; a crash
//! between an upload and its record only repeats that upload (same key,
//! same bytes); an outage delays files and reports why, then they go up;
//! two hosts land in one dataset that `analytics` queries from the bucket;
//! and a running gateway uploads its own files.

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use analytics::{
    StoreConfig, Uploader,
    upload::{RECORD, UploadError},
};
use gateway_tests::{
    audit::{
        START_US, analytics_at, query_rows, store_config, synthetic_events, write_events,
        write_events_with,
    },
    daemon::{Daemon, SERVICE_AUTH_APP},
    s3::{BUCKET, S3Server},
};
use object_store::{ObjectStore, ObjectStoreExt as _, path::Path as Key};
use serde_json::{Value, json};

const HOUR_US: i64 = 3_600_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The sink of the store at `root` into `store` under `prefix`.
fn uploader(root: &Path, host: &str, store: Arc<dyn ObjectStore>, prefix: &str) -> Uploader {
    Uploader::with_store(root, host, store, Key::from(prefix), "the test bucket")
        .expect("start the uploader")
}

/// What the bucket must hold for the files under `root`: each file's
/// bytes at `<prefix>/host=<host>/<date=..>/<hour=..>/<name>`.
fn expected_objects(root: &Path, prefix: &str, host: &str) -> Vec<(String, Vec<u8>)> {
    let mut objects: Vec<_> = analytics::files::list(root)
        .iter()
        .map(|path| {
            let relative = path.strip_prefix(root).unwrap().to_str().unwrap();
            (
                format!("{prefix}/host={host}/{relative}"),
                std::fs::read(path).unwrap(),
            )
        })
        .collect();
    objects.sort();
    objects
}

#[test]
fn files_go_up_once_survive_restarts_and_outages_and_are_retried() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("audit");
    let rt = runtime();
    // Three hours: three files, one per partition.
    write_events(&root, synthetic_events(30_000, 3 * HOUR_US, 1));
    assert_eq!(analytics::files::list(&root).len(), 3);

    let mut sink = uploader(&root, "web-1", server.client(), "logs");
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 3);
    let expected = expected_objects(&root, "logs", "web-1");
    assert_eq!(server.objects("logs"), expected);
    let status = sink.status();
    assert_eq!((status.uploaded(), status.pending()), (3, 0));
    assert!(status.last_upload_us() > 0);
    assert_eq!(status.error(), None);

    // Nothing goes up twice: not on the next pass, not after a restart.
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 0);
    drop(sink);
    let mut sink = uploader(&root, "web-1", server.client(), "logs");
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 0);

    // A crash after an upload but before its line was recorded: that file
    // goes up again, to the same key with the same bytes.
    drop(sink);
    let record = root.join(RECORD);
    let text = std::fs::read_to_string(&record).unwrap();
    let kept: Vec<&str> = text.lines().take(text.lines().count() - 1).collect();
    std::fs::write(&record, kept.join("\n") + "\n").unwrap();
    let mut sink = uploader(&root, "web-1", server.client(), "logs");
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 1);
    assert_eq!(server.objects("logs"), expected);

    // An outage: the new file waits, the pass says why, nothing is
    // recorded as uploaded.
    server.pause();
    write_events(&root, synthetic_events(2_000, HOUR_US / 2, 2));
    let error = rt.block_on(sink.pass()).unwrap_err();
    assert!(matches!(error, UploadError::Put { .. }), "{error:?}");
    let status = sink.status();
    assert_eq!(status.pending(), 1);
    let reported = status.error().expect("the failure is in the status");
    assert!(reported.contains("uploading"), "{reported}");
    // Back: the waiting file goes up, and only it.
    server.resume();
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 1);
    assert_eq!(status.error(), None);
    assert_eq!(status.pending(), 0);
    assert_eq!(
        server.objects("logs"),
        expected_objects(&root, "logs", "web-1")
    );
    assert_eq!(server.objects("logs").len(), 4);

    // Pointed at another prefix, the sink starts over there.
    drop(sink);
    let mut sink = Uploader::with_store(
        &root,
        "web-1",
        server.client(),
        Key::from("elsewhere"),
        "another bucket",
    )
    .unwrap();
    assert_eq!(rt.block_on(sink.pass()).unwrap(), 4);
    assert_eq!(
        server.objects("elsewhere"),
        expected_objects(&root, "elsewhere", "web-1")
    );
}

#[test]
fn a_large_file_goes_up_in_parts_byte_for_byte() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("audit");
    // The sink reads finished files as bytes: 40 MiB of noise in a
    // partition stands in for a large file (three 16 MiB parts).
    let partition = root.join("date=2026-11-23/hour=07");
    std::fs::create_dir_all(&partition).unwrap();
    let mut noise = vec![0u8; 40 << 20];
    rand::Rng::fill(&mut rand::rng(), &mut noise[..]);
    std::fs::write(partition.join("big-1.parquet"), &noise).unwrap();
    let mut sink = uploader(&root, "web-1", server.client(), "logs");
    assert_eq!(runtime().block_on(sink.pass()).unwrap(), 1);
    let objects = server.objects("logs");
    assert_eq!(objects.len(), 1);
    assert_eq!(
        objects[0].0,
        "logs/host=web-1/date=2026-11-23/hour=07/big-1.parquet"
    );
    assert!(objects[0].1 == noise, "the object differs from the file");
    let head = runtime()
        .block_on(server.client().head(&Key::from(objects[0].0.as_str())))
        .unwrap();
    // An S3 ETag of a multipart upload ends in its number of parts.
    let e_tag = head.e_tag.unwrap_or_default();
    assert!(e_tag.trim_matches('"').ends_with("-3"), "{e_tag}");
}

/// `analytics --dir s3://audit/fleet ...` against `server`, as JSON rows.
fn bucket_query(server: &S3Server, sql: &str) -> Vec<Value> {
    query_rows(format!("s3://{BUCKET}/fleet").as_ref(), &server.env(), sql)
}

#[test]
fn a_fleet_lands_in_one_dataset_that_analytics_queries_from_the_bucket() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut local_counts = Vec::new();
    for (host, events, seed) in [("web-1", 20_000, 1), ("web-2", 12_000, 2)] {
        let root = dir.path().join(host);
        let config = StoreConfig {
            host: host.into(),
            ..store_config(&root)
        };
        write_events_with(config, synthetic_events(events, 2 * HOUR_US, seed));
        let mut sink = uploader(&root, host, server.client(), "fleet");
        assert_eq!(rt.block_on(sink.pass()).unwrap(), 2);
        let rows = query_rows(
            root.as_os_str(),
            &[],
            "SELECT count(*) AS n FROM decisions WHERE hour = 8",
        );
        local_counts.push(rows[0]["n"].as_u64().unwrap());
    }

    assert_eq!(
        bucket_query(
            &server,
            "SELECT host, count(*) AS n FROM decisions GROUP BY host ORDER BY host"
        ),
        vec![
            json!({"host": "web-1", "n": 20_000}),
            json!({"host": "web-2", "n": 12_000}),
        ]
    );
    // The date/hour partitions work under each host's directory.
    let date = chrono::DateTime::from_timestamp_micros(START_US)
        .unwrap()
        .format("%Y-%m-%d");
    let rows = bucket_query(
        &server,
        &format!(
            "SELECT host, count(*) AS n FROM decisions \
             WHERE date = '{date}' AND hour = 8 GROUP BY host ORDER BY host"
        ),
    );
    assert_eq!(
        rows,
        vec![
            json!({"host": "web-1", "n": local_counts[0]}),
            json!({"host": "web-2", "n": local_counts[1]}),
        ]
    );
    assert!(local_counts.iter().all(|&n| n > 0));

    // Clear refusals, not panics.
    let location = format!("s3://{BUCKET}/fleet");
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", "wrong".into()));
    let out = analytics_at(location.as_ref(), &env, &["query", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("analytics: error: cannot list the audit files under s3://audit/fleet"),
        "{stderr}"
    );
    let out = analytics_at(location.as_ref(), &server.env(), &["tail"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tail reads a gateway's audit directory"),
        "{stderr}"
    );
}

#[test]
fn a_running_gateway_uploads_its_files() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[http]
[[http.plain]]
listen = "127.0.0.1:0"

[tokens]
store = "{tokens}"

[admin]
listen = "127.0.0.1:0"

[audit]
dir = "{audit}"
host = "origin-7"
roll_interval_secs = 1

[audit.upload]
url = "s3://{BUCKET}/fleet"
endpoint = "{endpoint}"
allow_http = true
interval_secs = 1

{SERVICE_AUTH_APP}
"#,
            tokens = dir.path().join("tokens.json").display(),
            audit = dir.path().join("audit").display(),
            endpoint = server.endpoint(),
        ),
    )
    .unwrap();
    // Credentials only in the environment, as the README says.
    let credentials: Vec<_> = server
        .env()
        .into_iter()
        .filter(|(k, _)| k.ends_with("_KEY_ID") || k.ends_with("_ACCESS_KEY"))
        .collect();
    let mut daemon = Daemon::start_local_with_env(&config, &credentials);
    let address = daemon.listening()[0];
    for i in 0..5 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(["-H", "Host: wiki.example.com"])
            .arg(format!("http://{address}/page/{i}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    }
    // While it runs: rolled within a second, uploaded within the next.
    let sql = "SELECT count(*) AS n FROM decisions WHERE host = 'origin-7' AND layer = 'http'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while bucket_query(&server, sql) != vec![json!({"n": 5})] {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the bucket\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // `gateway status` reports the upload (from the daemon's admin endpoint).
    let reported: Value = serde_json::from_str(&daemon.status(true)).unwrap();
    let upload = &reported["audit"]["upload"];
    assert!(upload["uploaded"].as_u64().unwrap() >= 1, "{reported}");
    assert!(upload["last_upload_at"].as_u64().is_some(), "{reported}");
    assert_eq!(upload["error"], Value::Null, "{reported}");
    let status = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(!log.contains("upload failed"), "{log}");
    assert_eq!(
        server.objects("fleet").len(),
        analytics::files::list(&dir.path().join("audit")).len()
    );
}
