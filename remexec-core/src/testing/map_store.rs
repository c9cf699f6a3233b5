//! [`MapStore`]: the simplest [`BlobStore`] that keeps the whole contract, for tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BlobStore, ChunkStream, Digest, Error, ReadRange, Result, collect_chunks};

/// Blobs in a map by instance name and digest, length-checked on the way in (content is trusted,
/// as the contract allows). Tests reach into it with [`insert`](Self::insert),
/// [`blob`](Self::blob) and [`remove`](Self::remove).
#[derive(Debug, Default)]
pub struct MapStore {
    blobs: Mutex<HashMap<(String, Digest), Bytes>>,
}

impl MapStore {
    /// Stores `data` under its SHA-256 digest in `instance`, and returns the digest.
    pub fn insert(&self, instance: &str, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let digest = crate::DigestFunction::Sha256.digest_of(&data);
        self.blobs
            .lock()
            .unwrap()
            .insert((instance.to_string(), digest), data);
        digest
    }

    /// The blob, if held.
    pub fn blob(&self, instance: &str, digest: Digest) -> Option<Bytes> {
        let key = (instance.to_string(), digest);
        self.blobs.lock().unwrap().get(&key).cloned()
    }

    /// Forgets a blob, as an eviction would.
    pub fn remove(&self, instance: &str, digest: Digest) -> Option<Bytes> {
        let key = (instance.to_string(), digest);
        self.blobs.lock().unwrap().remove(&key)
    }

    /// The number of blobs held.
    pub fn len(&self) -> usize {
        self.blobs.lock().unwrap().len()
    }

    /// Whether no blob is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl BlobStore for MapStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let blobs = self.blobs.lock().unwrap();
        Ok(digests
            .iter()
            .filter(|d| !blobs.contains_key(&(instance.to_string(), **d)))
            .copied()
            .collect())
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let bytes = collect_chunks(data, digest.size()).await?;
        if bytes.len() as u64 != digest.size() {
            return Err(Error::invalid(format!(
                "{} bytes for {digest}",
                bytes.len()
            )));
        }
        self.blobs
            .lock()
            .unwrap()
            .insert((instance.to_string(), digest), bytes);
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        self.blob(instance, digest)
            .map(|b| range.stream_of(&b))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        super::super::blob_store_conformance(std::sync::Arc::new(super::MapStore::default())).await;
    }
}
