//! Conformance suites that every [`BlobStore`] and [`ActionCache`] implementation runs.
//!
//! Each contract point is a named function in [`blob_store`] or [`action_cache`] that takes a
//! store or cache and panics with a description of what it broke. The functions use blobs and
//! entries of their own, so they can run one after another on one instance, in any order.
//!
//! [`blob_store_conformance`] and [`action_cache_conformance`] run them all against a fresh,
//! empty instance. A store whose behaviour goes beyond the contract's minimum says so with
//! [`BlobStoreCapabilities`] and [`blob_store_conformance_with`], which then checks that too:
//!
//! ```
//! # async fn check(store: std::sync::Arc<dyn remexec_core::BlobStore>) {
//! use remexec_core::testing::{BlobStoreCapabilities, blob_store_conformance_with};
//!
//! let caps = BlobStoreCapabilities::new().verifies_content(true);
//! blob_store_conformance_with(store, caps).await;
//! # }
//! ```

#![allow(clippy::unwrap_used)] // test support: panics are how it reports

pub mod action_cache;
pub mod blob_store;
#[cfg(feature = "etcd")]
pub mod etcd;
mod map_store;

pub use map_store::MapStore;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;

use crate::{ActionCache, BlobStore, ChunkStream};

/// What a [`BlobStore`] does beyond the contract's minimum, so that the suite checks it too.
///
/// [`new`](Self::new) is the minimum every store meets; the builder methods turn on more.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobStoreCapabilities {
    /// The store checks that content hashes to its digest (a verifying store, or a client of a
    /// server that verifies): a put whose content does not match fails with `InvalidArgument`
    /// and stores nothing. Without it a store may trust the content, as the contract allows.
    pub verifies_content: bool,
}

impl BlobStoreCapabilities {
    /// The contract's minimum: the store trusts that content matches its digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`verifies_content`](Self::verifies_content).
    pub fn verifies_content(mut self, yes: bool) -> Self {
        self.verifies_content = yes;
        self
    }
}

/// Runs every [`BlobStore`] contract check against an empty `store` that trusts content.
pub async fn blob_store_conformance(store: Arc<dyn BlobStore>) {
    blob_store_conformance_with(store, BlobStoreCapabilities::new()).await;
}

/// Runs every [`BlobStore`] contract check against an empty `store`, plus the checks of the
/// capabilities in `caps`.
pub async fn blob_store_conformance_with(store: Arc<dyn BlobStore>, caps: BlobStoreCapabilities) {
    use blob_store::*;
    let s = store.as_ref();
    missing_is_none(s).await;
    put_get_round_trip(s).await;
    chunking_does_not_matter(s).await;
    ranged_reads(s).await;
    offset_past_end_is_out_of_range(s).await;
    instances_are_separate(s).await;
    digest_functions_do_not_alias(s).await;
    find_missing_keeps_input_order(s).await;
    length_mismatch_is_rejected_and_stores_nothing(s).await;
    stream_error_fails_the_put_and_stores_nothing(s).await;
    abandoned_put_leaves_nothing(s).await;
    failed_put_keeps_the_stored_blob(s).await;
    idempotent_concurrent_puts(s).await;
    empty_blob_put_succeeds(s).await;
    large_blob_round_trip(s).await;
    zero_limit_reads_nothing(s).await;
    if caps.verifies_content {
        content_mismatch_is_rejected_and_stores_nothing(s).await;
    }
}

/// Runs every [`ActionCache`] contract check against an empty `cache`.
pub async fn action_cache_conformance(cache: Arc<dyn ActionCache>) {
    use action_cache::*;
    let c = cache.as_ref();
    missing_is_none(c).await;
    put_get_round_trip(c).await;
    last_writer_wins(c).await;
    instances_are_separate(c).await;
    digest_functions_do_not_alias(c).await;
    concurrent_puts_are_never_torn(c).await;
    large_result_round_trip(c).await;
}

/// Deterministic pseudo-random content of `len` bytes.
pub fn content(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Splits `data` into a stream of `chunk`-sized pieces.
pub fn chunked(data: Bytes, chunk: usize) -> ChunkStream {
    let pieces: Vec<_> = (0..data.len().div_ceil(chunk.max(1)))
        .map(|i| Ok(data.slice(i * chunk..((i + 1) * chunk).min(data.len()))))
        .collect();
    futures::stream::iter(pieces).boxed()
}

/// Returns `Pending` once (waking itself at once), so that other tasks run; needs no runtime.
pub(crate) fn yield_now() -> impl Future<Output = ()> {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false)
}
