//! [`MemoryStore`]: blobs in RAM, least recently used evicted beyond a byte budget.

use parking_lot::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use remexec_core::{BlobStore, ChunkStream, Digest, Error, ReadRange, Result};

use super::read_exact_len;
use crate::key::Key;
use remexec_core::lru::ByteLru;

/// An in-memory [`BlobStore`] bounded by bytes.
#[derive(Debug)]
pub struct MemoryStore {
    index: Mutex<ByteLru<Key, Bytes>>,
}

impl MemoryStore {
    /// A store that holds at most `budget` bytes of blob content.
    pub fn new(budget: u64) -> Self {
        Self {
            index: Mutex::new(ByteLru::new(budget)),
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut index = self.index.lock();
        Ok(digests
            .iter()
            .filter(|d| !index.touch(&Key::new(instance, **d)))
            .copied()
            .collect())
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let budget = self.index.lock().budget();
        if digest.size() > budget {
            return Err(Error::ResourceExhausted(
                format!("blob {digest} is larger than the memory store's {budget}-byte budget")
                    .into(),
            ));
        }
        let bytes = read_exact_len(data, digest).await?;
        self.index
            .lock()
            .insert(Key::new(instance, digest), digest.size(), bytes);
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let Some(bytes) = self.index.lock().get(&Key::new(instance, digest)).cloned() else {
            return Ok(None);
        };
        Ok(Some(range.stream_of(&bytes)?))
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({})", crate::size(self.index.lock().budget()))
    }
    fn usage(&self) -> Option<remexec_core::metrics::StoreUsage> {
        Some(self.index.lock().usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::testing::{blob_store_conformance, content};
    use remexec_core::{BlobStoreExt, DigestFunction};
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance() {
        blob_store_conformance(Arc::new(MemoryStore::new(64 << 20))).await;
    }

    #[tokio::test]
    async fn evicts_beyond_budget() {
        let store = MemoryStore::new(250);
        let blobs: Vec<_> = (0..3).map(|i| content(i, 100)).collect();
        let digests: Vec<_> = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        for (b, d) in blobs.iter().zip(&digests) {
            store.put_bytes("", *d, b.clone()).await.unwrap();
        }
        assert_eq!(
            store.find_missing("", &digests).await.unwrap(),
            vec![digests[0]]
        );
        assert!(store.bytes() <= 250);
        let too_big = content(9, 300);
        let err = store
            .put_bytes("", DigestFunction::Sha256.digest_of(&too_big), too_big)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
