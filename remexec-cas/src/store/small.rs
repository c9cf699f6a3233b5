//! [`SmallBlobCache`]: reads of small blobs (Actions, Commands, Directories) served from
//! memory, in front of a store across the network.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use remexec_core::lru::ByteLru;
use remexec_core::{BlobStore, ChunkStream, Digest, ReadRange, Result, StoreUsage};

use super::read_exact_len;
use crate::key::Key;

/// The largest blob kept by default: Actions, Commands and most Directories are far smaller.
pub const SMALL_BLOB: u64 = 64 * 1024;

/// Keeps copies of the small blobs read from or written to `inner`, least recently used
/// evicted beyond a byte budget, and serves reads of them without asking `inner`: a
/// scheduler's input check then walks an input tree without crossing the network once per
/// directory.
///
/// Only reads are served from the copies. Blobs are addressed by content, so a copy is never
/// wrong, but it says nothing of what `inner` holds: `find_missing`, `reference` and `put` go
/// to `inner` (a copy of a blob `inner` evicted must not make it look present to a client, or
/// to the workers that will stage it).
#[derive(Debug)]
pub struct SmallBlobCache {
    inner: Arc<dyn BlobStore>,
    max_blob: u64,
    copies: Mutex<ByteLru<Key, Bytes>>,
}

impl SmallBlobCache {
    /// Copies of blobs of at most `max_blob` bytes from `inner`, `budget` bytes in all.
    pub fn new(inner: Arc<dyn BlobStore>, budget: u64, max_blob: u64) -> Self {
        Self {
            inner,
            max_blob,
            copies: Mutex::new(ByteLru::new(budget)),
        }
    }

    fn keep(&self, key: Key, bytes: Bytes) {
        // Each copy costs its bytes and its entry.
        let cost = bytes.len() as u64 + 64;
        self.copies.lock().insert(key, cost, bytes);
    }

    /// Whether copies of `digest` are kept (none with a budget of 0).
    fn small(&self, digest: Digest) -> bool {
        digest.size() <= self.max_blob && self.copies.lock().budget() > 0
    }
}

#[async_trait]
impl BlobStore for SmallBlobCache {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(instance, digests).await
    }

    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.reference(instance, digests).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        if !self.small(digest) {
            return self.inner.put(instance, digest, data).await;
        }
        let bytes = read_exact_len(data, digest).await?;
        let stream = futures::stream::once(futures::future::ready(Ok(bytes.clone()))).boxed();
        self.inner.put(instance, digest, stream).await?;
        self.keep(Key::new(instance, digest), bytes);
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        if !self.small(digest) {
            return self.inner.get(instance, digest, range).await;
        }
        let key = Key::new(instance, digest);
        let cached = self.copies.lock().get(&key).cloned();
        if let Some(bytes) = cached {
            return Ok(Some(range.stream_of(&bytes)?));
        }
        let Some(data) = self.inner.get(instance, digest, ReadRange::ALL).await? else {
            return Ok(None);
        };
        let bytes = read_exact_len(data, digest).await?;
        let stream = range.stream_of(&bytes)?;
        self.keep(key, bytes);
        Ok(Some(stream))
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = self.copies.lock().budget();
        write!(f, "SmallBlobCache({}, {})", crate::size(budget), self.inner)
    }

    fn usage(&self) -> Option<StoreUsage> {
        self.inner.usage()
    }

    fn verifies_writes(&self) -> bool {
        self.inner.verifies_writes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CountingStore;
    use remexec_core::testing::{blob_store_conformance, content};
    use remexec_core::{BlobStoreExt, DigestFunction};

    #[tokio::test]
    async fn conformance() {
        let inner = Arc::new(CountingStore::new());
        blob_store_conformance(Arc::new(SmallBlobCache::new(inner, 1 << 20, SMALL_BLOB))).await;
    }

    /// Small blobs written or read once are read again without asking the store below; large
    /// ones always ask; what the store below lacks is missing however many copies are kept.
    #[tokio::test]
    async fn small_blobs_are_read_from_memory_and_presence_is_the_inner_store_s() {
        let inner = Arc::new(CountingStore::new());
        let cache = SmallBlobCache::new(inner.clone(), 1 << 20, 1000);
        let f = DigestFunction::Sha256;
        let (small, large) = (content(1, 500), content(2, 5000));
        let (ds, dl) = (f.digest_of(&small), f.digest_of(&large));
        cache.put_bytes("i", ds, small.clone()).await.unwrap();
        cache.put_bytes("i", dl, large.clone()).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                cache.get_bytes("i", ds, 1 << 20).await.unwrap(),
                Some(small.clone())
            );
            assert_eq!(
                cache.get_bytes("i", dl, 1 << 20).await.unwrap(),
                Some(large.clone())
            );
        }
        assert_eq!(
            inner.take_gets(),
            3,
            "only the large blob's reads reach the store"
        );
        // Another instance's blob of the same digest is not this one's.
        assert_eq!(cache.get_bytes("j", ds, 1 << 20).await.unwrap(), None);
        // Read through once, then served from memory.
        let other = content(3, 700);
        let d3 = f.digest_of(&other);
        inner.put_bytes("i", d3, other.clone()).await.unwrap();
        inner.take_gets();
        for _ in 0..2 {
            assert_eq!(
                cache.get_bytes("i", d3, 1 << 20).await.unwrap(),
                Some(other.clone())
            );
        }
        assert_eq!(inner.take_gets(), 1);
        // Ranges of a copy.
        let mut part = cache
            .get(
                "i",
                ds,
                ReadRange {
                    offset: 10,
                    limit: Some(5),
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(part.next().await.unwrap().unwrap(), small.slice(10..15));
        // Presence is asked of the store below: a copy does not make a blob present.
        let lonely = CountingStore::new();
        let cache = SmallBlobCache::new(Arc::new(lonely), 1 << 20, 1000);
        assert!(cache.reference("i", &[ds]).await.unwrap() == vec![ds]);
    }
}
