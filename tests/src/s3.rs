//! A real S3-compatible server on loopback for the upload tests: `s3s-fs`
//! (crates.io, installed by `cargo xtask setup`), serving one bucket from a
//! private directory, killed on drop.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use object_store::{
    ObjectStore, ObjectStoreExt as _, RetryConfig, aws::AmazonS3Builder, path::Path as Key,
};

use crate::nginx::free_port;

/// The bucket every test server holds.
pub const BUCKET: &str = "audit";
const ACCESS_KEY: &str = "test-access-key";
const SECRET_KEY: &str = "test-secret-key-0123456789";

/// A running `s3s-fs`.
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`] on a free port.
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("a directory for the bucket");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create the bucket");
        let mut server = Self {
            child: None,
            root,
            port: free_port(),
        };
        server.resume();
        server
    }

    /// Stops the server (the bucket's data stays): an outage.
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the S3 server is already running");
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run s3s-fs: `cargo xtask setup` installs it");
        self.child = Some(child);
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a gateway or `analytics` process reaches the server
    /// with (the standard AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A client for the bucket, with the credentials given explicitly and
    /// one quick retry (an outage fails a pass in about a second).
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(2),
                ..RetryConfig::default()
            })
            .build()
            .expect("an S3 client");
        Arc::new(store)
    }

    /// Every object under `prefix`, with its bytes, sorted by key.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let store = self.client();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let prefix = Key::from(prefix);
            let metas: Vec<_> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .expect("list the bucket");
            let mut objects = Vec::new();
            for meta in metas {
                let object = store.get(&meta.location).await.expect("get an object");
                let bytes = object.bytes().await.expect("read an object");
                objects.push((meta.location.to_string(), bytes.to_vec()));
            }
            objects.sort();
            objects
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.pause();
    }
}
