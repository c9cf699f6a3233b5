//! [`BlobStore`](remexec_core::BlobStore) backends and wrappers, one per module.

pub mod disk;
pub mod grpc;
pub mod memory;
pub mod metered;
pub mod object;
pub mod replicated;
pub mod small;
pub mod tiered;
pub mod verifying;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use remexec_core::{ChunkStream, Digest, Error, Result};
use tokio::sync::mpsc;

/// Chunks buffered towards each copy of [`fan_out`] before the first one waits for it.
const FAN_OUT_QUEUE: usize = 8;

/// Splits `data` into `n` streams with the same chunks (none for `n` = 0); each copy buffers
/// at most [`FAN_OUT_QUEUE`] chunks ahead of the source, and an error item reaches every copy.
/// A copy whose reader is gone is dropped and the others go on.
///
/// - With `first_leads`, the first copy pulls the source as its reader reads: if that reader
///   stops, the others end early, so their puts fail their length check and store nothing (a
///   cache in front of a durable store must not keep what the durable store did not take).
/// - Without, a task pulls the source until no copy is left, so a reader that stops early (a
///   store that already holds the blob returns at once) holds nobody up.
pub(crate) fn fan_out(data: ChunkStream, n: usize, first_leads: bool) -> Vec<ChunkStream> {
    if n == 0 {
        return Vec::new();
    }
    let lead = usize::from(first_leads);
    let (senders, receivers): (Vec<_>, Vec<_>) = (lead..n)
        .map(|_| mpsc::channel::<Result<Bytes>>(FAN_OUT_QUEUE))
        .unzip();
    let copies = receivers
        .into_iter()
        .map(|rx| tokio_stream::wrappers::ReceiverStream::new(rx).boxed());
    // Sends `item` to every live copy; returns those still live.
    async fn hand_out(
        item: &Result<Bytes>,
        senders: Vec<mpsc::Sender<Result<Bytes>>>,
    ) -> Vec<mpsc::Sender<Result<Bytes>>> {
        let mut live = Vec::with_capacity(senders.len());
        for tx in senders {
            let copy = match item {
                Ok(chunk) => Ok(chunk.clone()),
                // Same kind and message for every copy.
                Err(e) => Err(Error::from_rpc_status(&e.to_rpc_status())),
            };
            if tx.send(copy).await.is_ok() {
                live.push(tx);
            }
        }
        live
    }
    if first_leads {
        let first = futures::stream::unfold((data, senders), |(mut data, senders)| async move {
            let item = data.next().await?;
            let live = hand_out(&item, senders).await;
            Some((item, (data, live)))
        });
        return std::iter::once(first.boxed()).chain(copies).collect();
    }
    tokio::spawn(async move {
        let (mut data, mut senders) = (data, senders);
        while let Some(item) = data.next().await {
            senders = hand_out(&item, senders).await;
            if senders.is_empty() || item.is_err() {
                return;
            }
        }
    });
    copies.collect()
}

pub(crate) use crate::files::size_mismatch;

/// Reads a whole stream into memory, checking that its length equals `digest.size()`.
pub(crate) async fn read_exact_len(mut data: ChunkStream, digest: Digest) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(digest.size() as usize);
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > digest.size() {
            return Err(size_mismatch(
                digest,
                buf.len() as u64 + chunk.len() as u64,
                false,
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != digest.size() {
        return Err(size_mismatch(digest, buf.len() as u64, true));
    }
    Ok(buf.freeze())
}

/// A [`MemoryStore`](memory::MemoryStore) that counts `get` calls, for tests that bound work.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct CountingStore(
    pub(crate) memory::MemoryStore,
    pub(crate) std::sync::atomic::AtomicUsize,
);

#[cfg(test)]
impl CountingStore {
    pub(crate) fn new() -> Self {
        Self(memory::MemoryStore::new(1 << 30), Default::default())
    }

    /// `get` calls since the last call of this.
    pub(crate) fn take_gets(&self) -> usize {
        self.1.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl remexec_core::BlobStore for CountingStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.0.find_missing(instance, digests).await
    }
    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        self.0.put(instance, digest, data).await
    }
    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: remexec_core::ReadRange,
    ) -> Result<Option<ChunkStream>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.get(instance, digest, range).await
    }
}

#[cfg(test)]
#[tokio::test]
async fn counting_store_conformance() {
    let store = std::sync::Arc::new(CountingStore::new());
    remexec_core::testing::blob_store_conformance(store.clone()).await;
    assert!(store.take_gets() > 0, "the suite's reads are counted");
}
