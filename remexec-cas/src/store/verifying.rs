//! [`VerifyingStore`]: checks that content hashes to its digest before it is stored.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use remexec_core::{BlobStore, ChunkStream, Digest, Error, ReadRange, Result};

/// Wraps a store and verifies hash and size of every put as the bytes stream through.
///
/// Hashing happens chunk by chunk while the inner store writes, so nothing is buffered. On a
/// mismatch the stream ends with an `InvalidArgument` error item, which makes the inner store
/// abandon the write: nothing is stored.
#[derive(Debug, Clone)]
pub struct VerifyingStore {
    inner: Arc<dyn BlobStore>,
}

impl VerifyingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        Self { inner }
    }

    /// `store` if it verifies writes itself ([`BlobStore::verifies_writes`]), else `store`
    /// behind a `VerifyingStore`: every write is hashed exactly once.
    pub fn unless_verified(store: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
        match store.verifies_writes() {
            true => store,
            false => Arc::new(Self::new(store)),
        }
    }
}

/// Wraps `data` so that it ends in an error unless it hashes to `digest`.
pub fn verify_stream(digest: Digest, data: ChunkStream) -> ChunkStream {
    let state = (data, Some(digest.function().hasher()));
    futures::stream::unfold(state, move |(mut data, mut hasher)| async move {
        let h = hasher.as_mut()?;
        match data.next().await {
            Some(Ok(chunk)) => {
                h.update(&chunk);
                if h.bytes() > digest.size() {
                    let err = crate::store::size_mismatch(digest, h.bytes(), false);
                    return Some((Err(err), (data, None)));
                }
                Some((Ok(chunk), (data, hasher)))
            }
            Some(Err(e)) => Some((Err(e), (data, None))),
            None => {
                let got = hasher.take()?.finish();
                if got == digest {
                    None
                } else if got.size() != digest.size() {
                    Some((
                        Err(crate::store::size_mismatch(digest, got.size(), true)),
                        (data, None),
                    ))
                } else {
                    let err = Error::invalid(format!(
                        "uploaded content hashes to {}, not {} as its digest says",
                        got.hash_hex(),
                        digest.hash_hex()
                    ));
                    Some((Err(err), (data, None)))
                }
            }
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for VerifyingStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(instance, digests).await
    }

    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.reference(instance, digests).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        self.inner
            .put(instance, digest, verify_stream(digest, data))
            .await
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        self.inner.get(instance, digest, range).await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifying({})", self.inner)
    }
    fn verifies_writes(&self) -> bool {
        true
    }
    fn usage(&self) -> Option<remexec_core::metrics::StoreUsage> {
        self.inner.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use remexec_core::DigestFunction;
    use remexec_core::testing::{
        BlobStoreCapabilities, blob_store_conformance_with, chunked, content,
    };

    #[tokio::test]
    async fn conformance() {
        let store = VerifyingStore::new(Arc::new(MemoryStore::new(64 << 20)));
        let caps = BlobStoreCapabilities::new().verifies_content(true);
        blob_store_conformance_with(Arc::new(store), caps).await;
    }

    #[tokio::test]
    async fn mismatch_stores_nothing() {
        let store = VerifyingStore::new(Arc::new(MemoryStore::new(1 << 20)));
        let data = content(3, 1000);
        let claimed = DigestFunction::Sha256.digest_of(&content(4, 1000));
        let err = store
            .put("", claimed, chunked(data.clone(), 100))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("hashes to"), "{err}");
        assert_eq!(
            store.find_missing("", &[claimed]).await.unwrap(),
            vec![claimed]
        );
        let b3 = DigestFunction::Blake3.digest_of(&data);
        store.put("", b3, chunked(data, 7)).await.unwrap();
        assert!(store.find_missing("", &[b3]).await.unwrap().is_empty());
    }
}
