//! The fleet sink: finished Parquet files uploaded to S3-compatible object
//! storage, so the logs of every origin host land in one dataset that
//! Spark, Trino, Athena or `analytics --dir s3://...` query.
//!
//! Keys are `<prefix>/host=<host>/date=YYYY-MM-DD/hour=HH/<file>`: the
//! local partitions under one directory per host. A file never changes
//! once it is renamed into place and its name is unique (host, creation
//! time, random), so an upload is idempotent: a file always goes to the
//! same key with the same bytes, and uploading it twice is harmless.
//!
//! What has been uploaded is recorded in `<dir>/.uploaded`, one line per
//! file, appended and fsynced after each upload. A crash between an upload
//! and its line only uploads that file again. The record names its
//! destination; pointed at another bucket, the sink starts over.
//!
//! A pass uploads every finished file not in the record, oldest first, and
//! stops at the first failure; the next pass retries it. Object-store
//! requests are retried with backoff for transient errors; passes back off
//! while the bucket keeps failing.

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt as _, RetryConfig, WriteMultipart,
    aws::AmazonS3Builder, path::Path as ObjectPath,
};
use tokio::{io::AsyncReadExt as _, sync::oneshot, task::JoinHandle};
use tracing::{info, warn};
use url::Url;

use crate::{ErrorSlot, Event, files};

/// The record of uploaded files, under the store's root.
pub const RECORD: &str = ".uploaded";

/// Files at most this large go up in one request; larger ones in parts
/// of this size.
const PART_SIZE: usize = 16 << 20;

/// Parts of one file uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Longest wait between passes while the bucket keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why files could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bucket URL is not `s3://bucket[/prefix]`.
    #[error("{0:?} is not an s3://bucket/prefix URL")]
    Url(String),
    /// The object-store client could not be set up.
    #[error("cannot set up the object store for {url}")]
    Client {
        /// The bucket.
        url: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// The upload record could not be read or written.
    #[error("{action} the upload record {path}")]
    Record {
        /// What was being done.
        action: &'static str,
        /// The record.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A local file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The object store refused or failed the upload.
    #[error("uploading {path} to {key}")]
    Put {
        /// The local file.
        path: PathBuf,
        /// The object key.
        key: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// The task running the passes panicked.
    #[error("the audit upload task panicked")]
    Panicked,
    /// The last pass did not finish before the stop deadline.
    #[error("the last upload pass did not finish within {0:?}")]
    Timeout(Duration),
}

/// Where the files go: an S3 bucket, or an S3-compatible service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// `s3://bucket/prefix`.
    pub url: Url,
    /// The service's URL when it is not AWS (MinIO, Ceph, R2, ...).
    pub endpoint: Option<Url>,
    /// The region; from `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Whether a plain-HTTP endpoint is allowed (loopback test servers).
    pub allow_http: bool,
}

impl BucketConfig {
    /// The bucket at `url` (`s3://bucket[/prefix]`), everything else from
    /// the standard `AWS_*` environment variables.
    pub fn parse(url: &str) -> Result<Self, UploadError> {
        let bad = || UploadError::Url(url.to_owned());
        let mut parsed = Url::parse(url).map_err(|_| bad())?;
        if !matches!(parsed.scheme(), "s3" | "s3a")
            || parsed.host_str().is_none_or(str::is_empty)
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(bad());
        }
        // The table root is a directory: `s3://b/logs` and `s3://b/logs/`
        // are the same place.
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        Ok(Self {
            url: parsed,
            endpoint: None,
            region: None,
            allow_http: false,
        })
    }

    /// The key prefix inside the bucket.
    pub fn prefix(&self) -> ObjectPath {
        ObjectPath::from_url_path(self.url.path()).unwrap_or_default()
    }

    /// A client for the bucket. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
    /// or the instance's role; nothing is sent until the first request.
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, UploadError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_url(self.url.as_str())
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if self.allow_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|source| UploadError::Client {
            url: self.url.to_string(),
            source,
        })?;
        Ok(Arc::new(store))
    }

    /// What the record is kept for: the bucket, prefix and endpoint.
    fn destination(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{} at {endpoint}", self.url),
            None => self.url.to_string(),
        }
    }
}

/// What the sink has done, shared with status reporting.
#[derive(Debug, Default)]
pub struct UploadStatus {
    uploaded: AtomicU64,
    pending: AtomicU64,
    last_upload_us: AtomicI64,
    error: ErrorSlot,
}

impl UploadStatus {
    /// Files uploaded since the sink started.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Finished files not uploaded yet, as of the last pass.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// When the last upload succeeded (µs since the epoch; 0: never).
    pub fn last_upload_us(&self) -> i64 {
        self.last_upload_us.load(Ordering::Relaxed)
    }

    /// Why the last pass failed, until a pass succeeds.
    pub fn error(&self) -> Option<String> {
        self.error.get()
    }

    fn set_error(&self, error: Option<String>) {
        self.error.set(error);
    }
}

/// Uploads the finished files of one store. See the module documentation.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/host=<host>`.
    host_prefix: ObjectPath,
    root: PathBuf,
    record: UploadRecord,
    status: Arc<UploadStatus>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("root", &self.root)
            .field("host_prefix", &self.host_prefix)
            .field("uploaded", &self.record.files.len())
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// The sink for the store at `root`, whose files carry `host`, into
    /// `bucket`. Reads the record of what is already there.
    pub fn new(root: &Path, host: &str, bucket: &BucketConfig) -> Result<Self, UploadError> {
        Self::with_store(
            root,
            host,
            bucket.open()?,
            bucket.prefix(),
            &bucket.destination(),
        )
    }

    /// The sink into `store` under `prefix`, a client already set up;
    /// `destination` names it in the record.
    pub fn with_store(
        root: &Path,
        host: &str,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        destination: &str,
    ) -> Result<Self, UploadError> {
        let host_prefix =
            prefix.join(format!("host={}", crate::store::file_name_safe(host)).as_str());
        let record = UploadRecord::open(&root.join(RECORD), destination, root)?;
        Ok(Self {
            store,
            host_prefix,
            root: root.to_owned(),
            record,
            status: Arc::default(),
        })
    }

    /// The status, for reporting.
    pub fn status(&self) -> Arc<UploadStatus> {
        Arc::clone(&self.status)
    }

    /// The object key of the finished file at `relative` (to the root).
    pub fn key(&self, relative: &str) -> ObjectPath {
        let mut key = self.host_prefix.clone();
        key.extend(relative.split('/'));
        key
    }

    /// Uploads every finished file not uploaded yet, oldest first. Returns
    /// how many went up; stops at the first failure.
    pub async fn pass(&mut self) -> Result<usize, UploadError> {
        let waiting: Vec<String> = files::list(&self.root)
            .iter()
            .filter_map(|path| relative(&self.root, path))
            .filter(|relative| !self.record.files.contains(relative))
            .collect();
        self.status
            .pending
            .store(waiting.len() as u64, Ordering::Relaxed);
        let mut uploaded = 0;
        for relative in waiting {
            let outcome = match self.upload(&relative).await {
                Ok(()) => self.record.add(relative),
                // Retention removed it between the listing and the upload.
                Err(UploadError::Read { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    warn!(path = %path.display(), "audit file removed before it was uploaded");
                    self.status.pending.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.status.set_error(Some(crate::error_chain(&e)));
                return Err(e);
            }
            uploaded += 1;
            self.status.uploaded.fetch_add(1, Ordering::Relaxed);
            self.status.pending.fetch_sub(1, Ordering::Relaxed);
            self.status
                .last_upload_us
                .store(Event::now_us(), Ordering::Relaxed);
        }
        self.status.set_error(None);
        Ok(uploaded)
    }

    async fn upload(&self, relative: &str) -> Result<(), UploadError> {
        let path = self.root.join(relative);
        let key = self.key(relative);
        let read_error = |source| UploadError::Read {
            path: path.clone(),
            source,
        };
        let put_error = |source| UploadError::Put {
            path: path.clone(),
            key: key.to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(read_error)?;
        let size = file.metadata().await.map_err(read_error)?.len();
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(read_error)?;
            self.store
                .put(&key, bytes.into())
                .await
                .map_err(put_error)?;
            return Ok(());
        }
        // In parts, a few in flight: memory stays at a few parts however
        // large the file.
        let upload = self.store.put_multipart(&key).await.map_err(put_error)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        loop {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            let read = (&mut file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut chunk)
                .await;
            let waited = match read {
                Ok(0) => break,
                Ok(_) => parts.wait_for_capacity(PARTS_IN_FLIGHT).await,
                Err(e) => {
                    // A multipart upload left open costs storage until the
                    // bucket's lifecycle rules reap it.
                    let _ = parts.abort().await;
                    return Err(read_error(e));
                }
            };
            if let Err(e) = waited {
                let _ = parts.abort().await;
                return Err(put_error(e));
            }
            parts.put(chunk.into());
        }
        // Aborts the upload itself if completing it fails.
        parts.finish().await.map_err(put_error)?;
        Ok(())
    }
}

/// The path of `file` relative to `root`, with `/` separators.
fn relative(root: &Path, file: &Path) -> Option<String> {
    let parts: Vec<&str> = file
        .strip_prefix(root)
        .ok()?
        .iter()
        .map(|part| part.to_str())
        .collect::<Option<_>>()?;
    Some(parts.join("/"))
}

/// The append-only record of uploaded files.
struct UploadRecord {
    path: PathBuf,
    file: File,
    files: HashSet<String>,
}

impl UploadRecord {
    /// Opens the record at `path` for `destination`. Lines for files that
    /// no longer exist under `root` (retention) are dropped, as is the whole
    /// record if it was kept for another destination.
    fn open(path: &Path, destination: &str, root: &Path) -> Result<Self, UploadError> {
        let header = format!("# uploaded to {destination}");
        let error = |action| {
            let path = path.to_owned();
            move |source| UploadError::Record {
                action,
                path,
                source,
            }
        };
        let mut files = HashSet::new();
        match File::open(path) {
            Ok(file) => {
                let mut lines = BufReader::new(file).lines();
                if lines.next().transpose().map_err(error("reading"))? == Some(header.clone()) {
                    for line in lines {
                        let line = line.map_err(error("reading"))?;
                        if root.join(&line).is_file() {
                            files.insert(line);
                        }
                    }
                } else {
                    info!(record = %path.display(), %destination, "new upload destination; every file goes up again");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error("reading")(e)),
        }
        // Rewritten whole (temporary name, fsync, rename): a crash leaves
        // the old record or the new one.
        let mut text = header;
        text.push('\n');
        for line in &files {
            text.push_str(line);
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        let rewrite = || -> std::io::Result<File> {
            std::fs::create_dir_all(root)?;
            let mut file = File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(root)?.sync_all()?;
            OpenOptions::new().append(true).open(path)
        };
        let file = rewrite().map_err(error("writing"))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            files,
        })
    }

    /// Records `relative` as uploaded, durably.
    fn add(&mut self, relative: String) -> Result<(), UploadError> {
        writeln!(self.file, "{relative}")
            .and_then(|()| self.file.sync_data())
            .map_err(|source| UploadError::Record {
                action: "appending to",
                path: self.path.clone(),
                source,
            })?;
        self.files.insert(relative);
        Ok(())
    }
}

/// The running sink: passes on an interval until [`UploadTask::finish`].
#[derive(Debug)]
pub struct UploadTask {
    status: Arc<UploadStatus>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Uploader>,
}

/// Starts passes of `uploader` every `interval` (longer, up to five
/// minutes, while they fail) on the current tokio runtime.
pub fn spawn(mut uploader: Uploader, interval: Duration) -> UploadTask {
    let status = uploader.status();
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let wait = match uploader.pass().await {
                Ok(n) => {
                    if failures > 0 {
                        info!("audit uploads recovered");
                    }
                    if n > 0 {
                        info!(files = n, "audit files uploaded");
                    }
                    failures = 0;
                    interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = interval
                        .saturating_mul(2u32.saturating_pow(failures - 1))
                        .min(MAX_BACKOFF.max(interval));
                    warn!(error = %crate::error_chain(&e), retry_in = ?wait, "audit upload failed");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stopped => break,
            }
        }
        uploader
    });
    UploadTask { status, stop, task }
}

impl UploadTask {
    /// The status, for reporting.
    pub fn status(&self) -> Arc<UploadStatus> {
        Arc::clone(&self.status)
    }

    /// Stops the passes and runs a last one, so the files rolled at
    /// shutdown go up too; gives up after `timeout` (what is left goes up
    /// at the next start).
    pub async fn finish(self, timeout: Duration) -> Result<usize, UploadError> {
        let _ = self.stop.send(());
        let last = async {
            let mut uploader = self.task.await.map_err(|_| UploadError::Panicked)?;
            uploader.pass().await
        };
        tokio::time::timeout(timeout, last)
            .await
            .map_err(|_| UploadError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_name_a_bucket_and_a_directory_prefix() {
        let bucket = BucketConfig::parse("s3://logs/fleet/origins").unwrap();
        assert_eq!(bucket.url.as_str(), "s3://logs/fleet/origins/");
        assert_eq!(bucket.prefix().as_ref(), "fleet/origins");
        assert_eq!(
            BucketConfig::parse("s3a://logs").unwrap().prefix().as_ref(),
            ""
        );
        for bad in [
            "https://logs/x",
            "s3://",
            "s3:///x",
            "/var/x",
            "s3://b/x?y=1",
            "s3://b/#x",
        ] {
            assert!(
                matches!(BucketConfig::parse(bad), Err(UploadError::Url(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_put_the_local_partitions_under_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketConfig::parse("s3://logs/fleet").unwrap();
        let uploader = Uploader::new(dir.path(), "web 1", &bucket).unwrap();
        assert_eq!(
            uploader
                .key("date=2026-11-23/hour=07/web_1-1-a.parquet")
                .as_ref(),
            "fleet/host=web_1/date=2026-11-23/hour=07/web_1-1-a.parquet"
        );
    }
}
