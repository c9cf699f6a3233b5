//! [`TieredStore`]: a fast store (memory, local disk) in front of a slow, durable one (another
//! server, an object store).

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use remexec_core::{BlobStore, ChunkStream, Digest, ReadRange, Result};

/// Writes through to `slow` and keeps a copy in `fast`; reads `fast` first and fills it from
/// `slow` on a miss.
///
/// - `put` streams the blob into both stores at once and returns `Ok` only once `slow` holds
///   it. A failure of `fast` alone is logged, not returned: `slow` is the source of truth.
/// - `get` of a blob `fast` lacks streams it from `slow` and, for whole-blob reads, stores it in
///   `fast` as it passes. A reader that stops early leaves nothing half-stored in `fast`.
/// - `find_missing` asks `slow` only about what `fast` lacks.
#[derive(Debug, Clone)]
pub struct TieredStore {
    fast: Arc<dyn BlobStore>,
    slow: Arc<dyn BlobStore>,
}

impl TieredStore {
    /// `fast` in front of `slow`.
    pub fn new(fast: Arc<dyn BlobStore>, slow: Arc<dyn BlobStore>) -> Self {
        Self { fast, slow }
    }
}

/// [`super::fan_out`] in two, the first leading.
fn tee(data: ChunkStream) -> (ChunkStream, ChunkStream) {
    let mut copies = super::fan_out(data, 2, true);
    let second = copies
        .pop()
        .unwrap_or_else(|| futures::stream::empty().boxed());
    let first = copies
        .pop()
        .unwrap_or_else(|| futures::stream::empty().boxed());
    (first, second)
}

#[async_trait]
impl BlobStore for TieredStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let not_fast = self.fast.find_missing(instance, digests).await?;
        if not_fast.is_empty() {
            return Ok(not_fast);
        }
        self.slow.find_missing(instance, &not_fast).await
    }

    /// References in both tiers: the slow tier is asked about every digest when it evicts
    /// (it has a budget), and otherwise (a durable object store) only about what the fast
    /// tier lacks.
    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        if self.slow.usage().is_none() {
            let not_fast = self.fast.reference(instance, digests).await?;
            if not_fast.is_empty() {
                return Ok(not_fast);
            }
            return self.slow.reference(instance, &not_fast).await;
        }
        let (fast, slow) = tokio::join!(
            self.fast.reference(instance, digests),
            self.slow.reference(instance, digests),
        );
        let slow: std::collections::HashSet<Digest> = slow?.into_iter().collect();
        Ok(fast?.into_iter().filter(|d| slow.contains(d)).collect())
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let (to_slow, to_fast) = tee(data);
        let (slow, fast) = tokio::join!(
            self.slow.put(instance, digest, to_slow),
            self.fast.put(instance, digest, to_fast),
        );
        if let Err(e) = fast
            && slow.is_ok()
        {
            tracing::warn!(%digest, error = %e, "could not keep a copy in the fast tier");
        }
        slow
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        if let Some(hit) = self.fast.get(instance, digest, range).await? {
            return Ok(Some(hit));
        }
        let Some(data) = self.slow.get(instance, digest, range).await? else {
            return Ok(None);
        };
        if range != ReadRange::ALL {
            return Ok(Some(data));
        }
        // Fill the fast tier with what the reader pulls; the put completes only if the reader
        // reads to the end (its length is checked), so a partial read stores nothing.
        let (to_reader, to_fast) = tee(data);
        let (fast, instance) = (Arc::clone(&self.fast), instance.to_string());
        tokio::spawn(async move {
            if let Err(e) = fast.put(&instance, digest, to_fast).await {
                tracing::debug!(%digest, error = %e, "did not fill the fast tier");
            }
        });
        Ok(Some(to_reader))
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tiered({}, {})", self.fast, self.slow)
    }
    fn verifies_writes(&self) -> bool {
        self.fast.verifies_writes() && self.slow.verifies_writes()
    }
    fn usage(&self) -> Option<remexec_core::metrics::StoreUsage> {
        self.fast.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;
    use remexec_core::BlobStoreExt;
    use remexec_core::Error;
    use remexec_core::testing::blob_store_conformance;

    fn tiers() -> (Arc<MemoryStore>, Arc<MemoryStore>, Arc<TieredStore>) {
        let fast = Arc::new(MemoryStore::new(1 << 30));
        let slow = Arc::new(MemoryStore::new(1 << 30));
        let tiered = Arc::new(TieredStore::new(fast.clone(), slow.clone()));
        (fast, slow, tiered)
    }

    #[tokio::test]
    async fn conformance() {
        blob_store_conformance(tiers().2).await;
    }

    #[tokio::test]
    async fn writes_reach_both_tiers_and_reads_fill_the_fast_one() {
        let (fast, slow, tiered) = tiers();
        let f = remexec_core::DigestFunction::Sha256;
        let a = Bytes::from_static(b"written through");
        let da = f.digest_of(&a);
        tiered.put_bytes("i", da, a.clone()).await.unwrap();
        assert_eq!(
            fast.get_bytes("i", da, 1 << 20).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(slow.get_bytes("i", da, 1 << 20).await.unwrap(), Some(a));
        let b = Bytes::from_static(b"only in the slow tier");
        let db = f.digest_of(&b);
        slow.put_bytes("i", db, b.clone()).await.unwrap();
        assert_eq!(tiered.find_missing("i", &[da, db]).await.unwrap(), vec![]);
        assert_eq!(
            tiered.get_bytes("i", db, 1 << 20).await.unwrap(),
            Some(b.clone())
        );
        // The fill runs beside the reader; give it a moment.
        for _ in 0..100 {
            if fast.contains("i", db).await.unwrap() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(fast.get_bytes("i", db, 1 << 20).await.unwrap(), Some(b));
        let shown = (tiered.as_ref() as &dyn BlobStore).to_string();
        assert_eq!(shown, "Tiered(Memory(1.0 GiB), Memory(1.0 GiB))");
    }

    #[tokio::test]
    async fn a_failing_slow_tier_fails_the_write() {
        #[derive(Debug)]
        struct Broken;
        #[async_trait]
        impl BlobStore for Broken {
            async fn find_missing(&self, _: &str, d: &[Digest]) -> Result<Vec<Digest>> {
                Ok(d.to_vec())
            }
            async fn put(&self, _: &str, _: Digest, _: ChunkStream) -> Result<()> {
                Err(Error::Unavailable("the slow tier is down".into()))
            }
            async fn get(&self, _: &str, _: Digest, _: ReadRange) -> Result<Option<ChunkStream>> {
                Err(Error::Unavailable("the slow tier is down".into()))
            }
        }
        let fast = Arc::new(MemoryStore::new(1 << 20));
        let tiered = TieredStore::new(fast.clone(), Arc::new(Broken));
        let data = Bytes::from_static(b"x");
        let d = remexec_core::DigestFunction::Sha256.digest_of(&data);
        let err = tiered.put_bytes("", d, data).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            !fast.contains("", d).await.unwrap(),
            "the fast tier kept a blob the slow one lost"
        );
    }
}
