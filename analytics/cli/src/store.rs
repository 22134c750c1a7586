//! The object store a query reads through: the real one (local directory or
//! S3 bucket), minus the files found damaged before the query, counting the
//! bytes fetched so a progress bar can follow a long scan.
//!
//! Hiding damaged files here, below DataFusion, keeps the Hive partition
//! columns and directory pruning of an ordinary listing table, which an
//! explicit list of good files would lose.

use std::{
    collections::HashSet,
    fmt,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, stream::BoxStream};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, path::Path,
};

/// Bytes fetched through a [`ScanStore`], shared with whoever shows them.
#[derive(Debug, Default)]
pub struct BytesRead(AtomicU64);

impl BytesRead {
    /// Bytes so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct ScanStore {
    inner: Arc<dyn ObjectStore>,
    hidden: HashSet<Path>,
    read: Arc<BytesRead>,
}

impl ScanStore {
    /// `inner` without the objects in `hidden`.
    pub fn new(inner: Arc<dyn ObjectStore>, hidden: HashSet<Path>, read: Arc<BytesRead>) -> Self {
        Self {
            inner,
            hidden,
            read,
        }
    }

    fn visible(&self, meta: &ObjectMeta) -> bool {
        !self.hidden.contains(&meta.location)
    }
}

impl fmt::Display for ScanStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScanStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ScanStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        self.read.add(result.range.end - result.range.start);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let parts = self.inner.get_ranges(location, ranges).await?;
        self.read.add(parts.iter().map(|b| b.len() as u64).sum());
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let hidden = self.hidden.clone();
        self.inner
            .list(prefix)
            .filter(move |item| {
                let keep = match item {
                    Ok(meta) => !hidden.contains(&meta.location),
                    Err(_) => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.objects.retain(|meta| self.visible(meta));
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
