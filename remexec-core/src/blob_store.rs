//! The [`BlobStore`] trait: where content-addressed blobs live.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use crate::{Digest, Error, Result};

/// A stream of chunks of one blob. An `Err` item aborts whatever consumes it.
pub type ChunkStream = BoxStream<'static, Result<Bytes>>;

/// Which part of a blob to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// First byte to return.
    pub offset: u64,
    /// Most bytes to return; `None` reads to the end.
    pub limit: Option<u64>,
}

impl ReadRange {
    /// The whole blob.
    pub const ALL: ReadRange = ReadRange {
        offset: 0,
        limit: None,
    };

    /// Checks the range against a blob of `size` bytes and returns `(offset, length)`.
    pub fn resolve(self, size: u64) -> Result<(u64, u64)> {
        if self.offset > size {
            return Err(Error::OutOfRange(
                format!(
                    "read offset {} is past the end of a {size}-byte blob",
                    self.offset
                )
                .into(),
            ));
        }
        let available = size - self.offset;
        Ok((
            self.offset,
            self.limit.map_or(available, |l| l.min(available)),
        ))
    }

    /// The part of an in-memory blob this range selects, as a one-chunk stream.
    pub fn stream_of(self, blob: &Bytes) -> Result<ChunkStream> {
        let (offset, len) = self.resolve(blob.len() as u64)?;
        let slice = blob.slice(offset as usize..(offset + len) as usize);
        Ok(futures::stream::once(async { Ok(slice) }).boxed())
    }
}

/// A store of blobs addressed by `(instance name, digest)`.
///
/// # Contract
/// - **Namespaces.** Each instance name is its own namespace: a blob put under one instance is
///   not visible under another. Digests of different functions never alias.
/// - **Atomic puts.** [`put`](BlobStore::put) makes the blob visible only after the whole stream
///   was consumed without an `Err` item and its length equals `digest.size()`. A failed or
///   abandoned put leaves nothing visible, and never damages a blob already stored.
/// - **Trust.** A store may trust that the content hashes to the digest; wrap it in a verifying
///   store to check. Stores do check the length and fail with `InvalidArgument` on a mismatch.
/// - **Misses.** [`get`](BlobStore::get) returns `Ok(None)` for a blob it does not hold;
///   [`find_missing`](BlobStore::find_missing) lists them. `Err` means the store failed.
/// - **Ranges.** An offset past the end is `OutOfRange`; an offset equal to the size gives an
///   empty stream.
/// - **Idempotence.** Putting a blob that exists succeeds, concurrently too.
/// - **The empty blob** need not be stored; the gRPC services answer for it.
/// - **References.** A blob is *referenced* when a client has been told it is there (a
///   FindMissingBlobs that found it, an ActionResult that names it) or an action queued or
///   running needs it. The services say so through [`reference`](BlobStore::reference). A
///   store that evicts never evicts a referenced blob within its keep time of the last
///   reference; when referenced blobs fill its budget, a write fails with `ResourceExhausted`.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug + 'static {
    /// Returns the digests from `digests` that this store does not hold, in input order.
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// As [`find_missing`](BlobStore::find_missing), and the blobs held become referenced:
    /// a store that evicts keeps them at least its keep time from now (wrappers pass this on to
    /// every store that holds them). The default, for stores that never evict, is
    /// `find_missing`.
    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.find_missing(instance, digests).await
    }

    /// Stores the blob whose content `data` yields.
    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()>;

    /// Streams `range` of a blob, or `Ok(None)` if the store does not hold it.
    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>>;

    /// Writes what this store is, wrappers with what they wrap, for logs: for example
    /// `Verifying(Disk(/var/cache/remexec/cas, 10 GiB))`. `Display` on `dyn BlobStore` prints
    /// this. The default is the type's name.
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::action_cache::short_type_name::<Self>())
    }

    /// The bytes held, the budget and the bytes evicted, for a store with a budget; wrappers
    /// report what they wrap (a tiered store, its fast tier). `None` (the default) for a store
    /// without one, such as an object store.
    fn usage(&self) -> Option<StoreUsage> {
        None
    }

    /// The bytes this store can take now without dropping a blob it must keep (a referenced
    /// one), or `None` if it cannot say. What a repairer asks a member before it copies. The
    /// default is [`StoreUsage::room`] of [`usage`](Self::usage).
    async fn room(&self) -> Result<Option<u64>> {
        Ok(self.usage().map(|u| u.room()))
    }

    /// Whether every write is checked against its digest before it is stored, by this store
    /// or by what it writes to (a verifying store; a replicated store whose members' ports
    /// verify). Services that accept writes from clients hash them only when this is `false`
    /// (the default), so a tree hashes each write once, where its spec says.
    fn verifies_writes(&self) -> bool {
        false
    }
}

/// A change to what a store holds: a blob of an instance stored (`present`) or dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobChange {
    /// The instance name.
    pub instance: String,
    /// The blob.
    pub digest: Digest,
    /// Stored (`true`) or dropped (`false`).
    pub present: bool,
}

/// A store that can list what it holds: what a repairer re-replicates and a cluster member
/// reports. A capability some stores have, beside [`BlobStore`].
pub trait ListBlobs: BlobStore {
    /// Every change from now on, for a follower that subscribes first and then lists
    /// [`blobs`](Self::blobs) (a change may repeat what the list says); `None` for a store
    /// that does not publish them. A receiver that lags behind misses changes and must start
    /// again.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<BlobChange>> {
        None
    }

    /// Every blob held now, with its instance name.
    fn blobs(&self) -> Vec<(String, Digest)>;

    /// Whether the blob is held and kept as referenced now (see [`BlobStore::reference`]).
    /// The default, for stores that keep nothing, is `false`.
    fn referenced(&self, instance: &str, digest: &Digest) -> bool {
        let _ = (instance, digest);
        false
    }

    /// `(bytes, blobs)` held now.
    fn totals(&self) -> (u64, usize) {
        let blobs = self.blobs();
        (blobs.iter().map(|(_, d)| d.size()).sum(), blobs.len())
    }
}

impl std::fmt::Display for dyn BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.describe(f)
    }
}

#[async_trait]
impl<T: BlobStore + ?Sized> BlobStore for Arc<T> {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        (**self).find_missing(instance, digests).await
    }
    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        (**self).reference(instance, digests).await
    }
    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        (**self).put(instance, digest, data).await
    }
    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        (**self).get(instance, digest, range).await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).describe(f)
    }
    fn usage(&self) -> Option<StoreUsage> {
        (**self).usage()
    }
    async fn room(&self) -> Result<Option<u64>> {
        (**self).room().await
    }
    fn verifies_writes(&self) -> bool {
        (**self).verifies_writes()
    }
}

/// Convenience methods for every [`BlobStore`].
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// Stores a blob held in memory.
    async fn put_bytes(&self, instance: &str, digest: Digest, data: Bytes) -> Result<()> {
        self.put(
            instance,
            digest,
            futures::stream::once(async { Ok(data) }).boxed(),
        )
        .await
    }

    /// Reads a whole blob into memory, refusing blobs larger than `max_size`.
    async fn get_bytes(
        &self,
        instance: &str,
        digest: Digest,
        max_size: u64,
    ) -> Result<Option<Bytes>> {
        if digest.size() > max_size {
            return Err(Error::ResourceExhausted(
                format!(
                    "blob {digest} is larger than the {max_size}-byte limit for in-memory reads"
                )
                .into(),
            ));
        }
        let Some(stream) = self.get(instance, digest, ReadRange::ALL).await? else {
            return Ok(None);
        };
        collect_chunks(stream, digest.size()).await.map(Some)
    }

    /// Whether the store holds the blob (the empty blob always counts as held).
    async fn contains(&self, instance: &str, digest: Digest) -> Result<bool> {
        if digest.is_empty_blob() {
            return Ok(true);
        }
        Ok(self.find_missing(instance, &[digest]).await?.is_empty())
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

/// Concatenates a chunk stream into one buffer, preallocating `size_hint` bytes.
pub async fn collect_chunks(mut stream: ChunkStream, size_hint: u64) -> Result<Bytes> {
    let first = match stream.next().await {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk?,
    };
    if first.len() as u64 >= size_hint {
        if let Some(next) = stream.next().await {
            let mut buf = BytesMut::from(&first[..]);
            buf.extend_from_slice(&next?);
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk?);
            }
            return Ok(buf.freeze());
        }
        return Ok(first);
    }
    // The hint may come from a client; never preallocate more than 64 MiB on its word.
    let mut buf = BytesMut::with_capacity(usize::try_from(size_hint.min(64 << 20)).unwrap_or(0));
    buf.extend_from_slice(&first);
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

/// The byte usage of a store, as [`BlobStore::usage`] reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreUsage {
    /// Bytes of blob content held.
    pub used_bytes: u64,
    /// The byte budget beyond which blobs are evicted.
    pub limit_bytes: u64,
    /// Bytes evicted since the store was opened.
    pub evicted_bytes: u64,
    /// Bytes of blobs kept because they are referenced (see [`BlobStore::reference`]).
    pub referenced_bytes: u64,
    /// Writes refused since the store was opened because referenced blobs fill the budget.
    pub refused_writes: u64,
}

impl StoreUsage {
    /// The bytes a write may take now: the budget less what referenced blobs fill (the
    /// others are evicted to make room).
    pub fn room(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.referenced_bytes)
    }
}
