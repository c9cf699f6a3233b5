//! [`MeteredStore`]: counts the blob bytes written into and read out of a store, for metrics or
//! a progress bar.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use remexec_core::metrics::{Metrics, StoreUsage};
use remexec_core::{BlobStore, ChunkStream, Digest, ReadRange, Result};

/// Which way bytes went through a [`MeteredStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Into the store: a blob stored.
    In,
    /// Out of the store: bytes read.
    Out,
}

type Meter = Arc<dyn Fn(Transfer, u64) + Send + Sync>;

/// Wraps a store and reports the size of every blob stored, and every byte read (as the reader
/// takes it): to `remexec_cas_received_bytes_total` and `remexec_cas_sent_bytes_total`
/// ([`new`](Self::new)), or to any callback ([`with_meter`](Self::with_meter)).
#[derive(Clone)]
pub struct MeteredStore {
    inner: Arc<dyn BlobStore>,
    meter: Meter,
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore")
            .field("inner", &self.inner)
            .finish()
    }
}

impl MeteredStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn BlobStore>, metrics: Metrics) -> Self {
        Self::with_meter(inner, move |transfer, bytes| match transfer {
            Transfer::In => metrics.cas_received(bytes),
            Transfer::Out => metrics.cas_sent(bytes),
        })
    }

    /// Wraps `inner`, calling `meter` with each blob's size as it is stored and each chunk's
    /// length as it is read.
    pub fn with_meter(
        inner: Arc<dyn BlobStore>,
        meter: impl Fn(Transfer, u64) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            meter: Arc::new(meter),
        }
    }
}

#[async_trait]
impl BlobStore for MeteredStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(instance, digests).await
    }

    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.reference(instance, digests).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        self.inner.put(instance, digest, data).await?;
        (self.meter)(Transfer::In, digest.size());
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let Some(stream) = self.inner.get(instance, digest, range).await? else {
            return Ok(None);
        };
        let meter = Arc::clone(&self.meter);
        Ok(Some(
            stream
                .inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        meter(Transfer::Out, chunk.len() as u64);
                    }
                })
                .boxed(),
        ))
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
    fn verifies_writes(&self) -> bool {
        self.inner.verifies_writes()
    }

    fn usage(&self) -> Option<StoreUsage> {
        self.inner.usage()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use remexec_core::{BlobStoreExt, DigestFunction};

    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn counts_stored_and_read_bytes_and_reports_the_inner_usage() {
        let metrics = Metrics::new();
        let store = MeteredStore::new(Arc::new(MemoryStore::new(1000)), metrics.clone());
        let data = Bytes::from_static(b"hello world");
        let digest = DigestFunction::Sha256.digest_of(&data);
        store.put_bytes("", digest, data).await.unwrap();
        assert!(store.get_bytes("", digest, 100).await.unwrap().is_some());
        let missing = DigestFunction::Sha256.digest_of(b"nope");
        assert!(store.get_bytes("", missing, 100).await.unwrap().is_none());
        let text = metrics.encode();
        assert!(
            text.contains("remexec_cas_received_bytes_total 11"),
            "{text}"
        );
        assert!(text.contains("remexec_cas_sent_bytes_total 11"), "{text}");
        let usage = store.usage().unwrap();
        assert_eq!((usage.used_bytes, usage.limit_bytes), (11, 1000));
    }
}
