//! Conformance suites that every [`BlobStore`] and [`ActionCache`] backend runs.
//!
//! A backend's tests call [`blob_store_conformance`] or [`action_cache_conformance`] with a fresh,
//! empty instance. The suites panic with a description of the first broken contract point.

#![allow(clippy::unwrap_used)] // test support: panics are how it reports

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{ActionResult, OutputFile};
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    ActionCache, BlobStore, BlobStoreExt, ChunkStream, Digest, DigestFunction, Error, ReadRange,
};

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

async fn read_all(
    store: &dyn BlobStore,
    instance: &str,
    d: Digest,
    range: ReadRange,
) -> Option<Bytes> {
    let stream = store.get(instance, d, range).await.expect("get failed")?;
    Some(
        crate::collect_chunks(stream, 0)
            .await
            .expect("stream failed"),
    )
}

/// Runs every [`BlobStore`] contract check against an empty `store`.
pub async fn blob_store_conformance(store: Arc<dyn BlobStore>) {
    let s = store.as_ref();
    let data = content(1, 100_000);
    let d = DigestFunction::Sha256.digest_of(&data);

    // Misses are Ok(None) and listed by find_missing.
    assert!(
        read_all(s, "", d, ReadRange::ALL).await.is_none(),
        "unknown blob must be a miss"
    );
    assert_eq!(s.find_missing("", &[d]).await.unwrap(), vec![d]);

    // Round trip, in chunks.
    s.put("", d, chunked(data.clone(), 7_000))
        .await
        .expect("put");
    assert_eq!(
        read_all(s, "", d, ReadRange::ALL).await.as_deref(),
        Some(&data[..])
    );
    assert!(s.find_missing("", &[d]).await.unwrap().is_empty());

    // Ranges.
    let r = |offset, limit| ReadRange { offset, limit };
    assert_eq!(
        read_all(s, "", d, r(10, Some(5))).await.as_deref(),
        Some(&data[10..15])
    );
    assert_eq!(
        read_all(s, "", d, r(99_990, None)).await.as_deref(),
        Some(&data[99_990..])
    );
    assert_eq!(
        read_all(s, "", d, r(99_990, Some(1000))).await.as_deref(),
        Some(&data[99_990..])
    );
    assert_eq!(
        read_all(s, "", d, r(100_000, None)).await.as_deref(),
        Some(&[][..])
    );
    let past = s
        .get("", d, r(100_001, None))
        .await
        .err()
        .expect("offset past end must fail");
    assert!(
        matches!(past, Error::OutOfRange(_)),
        "offset past end: {past:?}"
    );

    // Namespaces: instance names and digest functions.
    assert_eq!(
        s.find_missing("other", &[d]).await.unwrap(),
        vec![d],
        "instances must not share blobs"
    );
    assert!(read_all(s, "other/x", d, ReadRange::ALL).await.is_none());
    let b3 = Digest::new(DigestFunction::Blake3, *d.hash(), d.size());
    assert_eq!(
        s.find_missing("", &[b3]).await.unwrap(),
        vec![b3],
        "functions must not alias"
    );

    // find_missing keeps input order.
    let other: Vec<Digest> = (0..5)
        .map(|i| DigestFunction::Sha256.digest_of(&content(100 + i, 10)))
        .collect();
    let query = [other[0], d, other[1], other[2]];
    assert_eq!(
        s.find_missing("", &query).await.unwrap(),
        vec![other[0], other[1], other[2]]
    );

    // Size mismatches fail with InvalidArgument and store nothing.
    let short = Digest::new(DigestFunction::Sha256, *other[3].hash(), 11);
    let err = s
        .put("", short, chunked(content(103, 10), 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "short stream: {err:?}"
    );
    let long = Digest::new(DigestFunction::Sha256, *other[3].hash(), 9);
    assert!(
        s.put("", long, chunked(content(103, 10), 3)).await.is_err(),
        "long stream must fail"
    );
    assert_eq!(
        s.find_missing("", &[short, long]).await.unwrap(),
        vec![short, long]
    );

    // An Err item aborts the put and leaves nothing.
    let bad_stream = futures::stream::iter(vec![
        Ok(content(104, 5)),
        Err(Error::Cancelled("client went away".into())),
    ])
    .boxed();
    let aborted = Digest::new(DigestFunction::Sha256, *other[4].hash(), 10);
    assert!(
        s.put("", aborted, bad_stream).await.is_err(),
        "a stream error must fail the put"
    );
    assert_eq!(s.find_missing("", &[aborted]).await.unwrap(), vec![aborted]);

    // Putting again, also concurrently, is fine and keeps the content.
    let puts = (0..8).map(|i| s.put("", d, chunked(data.clone(), 1000 * (i + 1))));
    for result in futures::future::join_all(puts).await {
        result.expect("concurrent put of the same blob");
    }
    assert_eq!(
        read_all(s, "", d, ReadRange::ALL).await.as_deref(),
        Some(&data[..])
    );

    // A bad re-put (which a store may skip as already present) never damages the stored blob.
    let _ = s.put("", d, chunked(content(1, 10), 5)).await;
    assert_eq!(
        read_all(s, "", d, ReadRange::ALL).await.as_deref(),
        Some(&data[..])
    );

    // A larger blob streams in many chunks.
    let big = content(7, 5 * 1024 * 1024 + 17);
    let bd = DigestFunction::Blake3.digest_of(&big);
    s.put("big", bd, chunked(big.clone(), 64 * 1024))
        .await
        .expect("put big");
    assert_eq!(
        s.get_bytes("big", bd, u64::MAX).await.unwrap().as_deref(),
        Some(&big[..])
    );
}

fn sample_result(code: i32) -> ActionResult {
    ActionResult {
        exit_code: code,
        output_files: vec![OutputFile {
            path: "out/a.txt".into(),
            digest: Some(DigestFunction::Sha256.digest_of(b"a").to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Runs every [`ActionCache`] contract check against an empty `cache`.
pub async fn action_cache_conformance(cache: Arc<dyn ActionCache>) {
    let c = cache.as_ref();
    let action = DigestFunction::Sha256.digest_of(b"action");
    assert!(
        c.get("", action).await.unwrap().is_none(),
        "unknown action must be a miss"
    );

    c.put("", action, sample_result(0)).await.expect("put");
    assert_eq!(c.get("", action).await.unwrap(), Some(sample_result(0)));

    c.put("", action, sample_result(1))
        .await
        .expect("overwrite");
    assert_eq!(
        c.get("", action).await.unwrap(),
        Some(sample_result(1)),
        "last writer wins"
    );

    assert!(
        c.get("other", action).await.unwrap().is_none(),
        "instances must not share entries"
    );
    let b3 = Digest::new(DigestFunction::Blake3, *action.hash(), action.size());
    assert!(
        c.get("", b3).await.unwrap().is_none(),
        "functions must not alias"
    );

    let puts = (0..16).map(|i| c.put("many", action, sample_result(i)));
    for r in futures::future::join_all(puts).await {
        r.expect("concurrent put");
    }
    let got = c
        .get("many", action)
        .await
        .unwrap()
        .expect("entry after concurrent puts");
    assert!((0..16).contains(&got.exit_code) && got.output_files == sample_result(0).output_files);
}
