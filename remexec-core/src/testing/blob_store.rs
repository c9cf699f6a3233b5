//! The [`BlobStore`] conformance checks, one function per contract point.
//!
//! Each function takes a store that may already hold the blobs of the other functions (every
//! function uses content of its own) and panics with a description of the first broken point.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;

use super::{chunked, content, yield_now};
use crate::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, ReadRange};

const SHA: DigestFunction = DigestFunction::Sha256;

/// Reads `range` of a blob into memory; `None` is a miss.
async fn read(store: &dyn BlobStore, instance: &str, d: Digest, range: ReadRange) -> Option<Bytes> {
    let stream = store
        .get(instance, d, range)
        .await
        .unwrap_or_else(|e| panic!("get of {d} in {instance:?} failed: {e:?}"))?;
    Some(
        crate::collect_chunks(stream, 0)
            .await
            .unwrap_or_else(|e| panic!("reading {d} in {instance:?} failed: {e:?}")),
    )
}

/// Reads a whole blob, which must be there.
async fn read_all(store: &dyn BlobStore, instance: &str, d: Digest) -> Bytes {
    read(store, instance, d, ReadRange::ALL)
        .await
        .unwrap_or_else(|| panic!("{d} must be held in {instance:?}"))
}

/// Asserts that the store holds none of `digests` in `instance`, by both `find_missing` and
/// `get`.
async fn assert_absent(store: &dyn BlobStore, instance: &str, digests: &[Digest], why: &str) {
    assert_eq!(
        store.find_missing(instance, digests).await.unwrap(),
        digests,
        "{why}: find_missing must list every one of them"
    );
    for d in digests {
        assert!(
            read(store, instance, *d, ReadRange::ALL).await.is_none(),
            "{why}: get of {d} must be a miss"
        );
    }
}

/// Puts `data` under its SHA-256 digest in `chunk`-sized pieces and returns the digest.
async fn put(store: &dyn BlobStore, instance: &str, data: &Bytes, chunk: usize) -> Digest {
    let d = SHA.digest_of(data);
    store
        .put(instance, d, chunked(data.clone(), chunk))
        .await
        .unwrap_or_else(|e| panic!("put of {d} in {instance:?} failed: {e:?}"));
    d
}

/// A blob the store was never given is a miss: `get` is `Ok(None)`, and `find_missing` lists
/// it.
pub async fn missing_is_none(store: &dyn BlobStore) {
    let unknown = SHA.digest_of(&content(100, 1000));
    assert_absent(store, "", &[unknown], "an unknown blob").await;
    assert!(!store.contains("", unknown).await.unwrap());
    let past_end = ReadRange {
        offset: 5000,
        limit: None,
    };
    assert!(
        store.get("", unknown, past_end).await.unwrap().is_none(),
        "a miss is Ok(None) whatever the range"
    );
}

/// A put blob reads back whole and is no longer listed by `find_missing`.
pub async fn put_get_round_trip(store: &dyn BlobStore) {
    let data = content(200, 100_000);
    assert_absent(store, "", &[SHA.digest_of(&data)], "before the put").await;
    let d = put(store, "", &data, 7_000).await;
    assert_eq!(read_all(store, "", d).await, data, "content read back");
    assert!(store.find_missing("", &[d]).await.unwrap().is_empty());
    assert!(store.contains("", d).await.unwrap());
    assert_eq!(
        store.get_bytes("", d, d.size()).await.unwrap().as_deref(),
        Some(&data[..])
    );
}

/// The chunking of the put stream does not change what is stored: single bytes, one chunk,
/// and empty chunks in between all give the same blob.
pub async fn chunking_does_not_matter(store: &dyn BlobStore) {
    let bytewise = content(300, 1000);
    let d = put(store, "", &bytewise, 1).await;
    assert_eq!(read_all(store, "", d).await, bytewise);

    let whole = content(301, 1000);
    let d = SHA.digest_of(&whole);
    store.put_bytes("", d, whole.clone()).await.unwrap();
    assert_eq!(read_all(store, "", d).await, whole);

    let gappy = content(302, 1000);
    let d = SHA.digest_of(&gappy);
    let pieces = vec![
        Ok(Bytes::new()),
        Ok(gappy.slice(..400)),
        Ok(Bytes::new()),
        Ok(gappy.slice(400..)),
        Ok(Bytes::new()),
    ];
    store
        .put("", d, futures::stream::iter(pieces).boxed())
        .await
        .expect("empty chunks in a put stream are allowed");
    assert_eq!(read_all(store, "", d).await, gappy);
}

/// Reads of a range return exactly that part; a limit past the end stops at the end, and an
/// offset equal to the size gives an empty stream.
pub async fn ranged_reads(store: &dyn BlobStore) {
    let data = content(400, 100_000);
    let d = put(store, "", &data, 10_000).await;
    let r = |offset, limit| ReadRange { offset, limit };
    let cases: [(ReadRange, &[u8]); 7] = [
        (r(0, None), &data[..]),
        (r(10, Some(5)), &data[10..15]),
        (r(0, Some(1)), &data[..1]),
        (r(99_990, None), &data[99_990..]),
        (r(99_990, Some(1000)), &data[99_990..]),
        (r(100_000, None), &[]),
        (r(100_000, Some(10)), &[]),
    ];
    for (range, want) in cases {
        let got = read(store, "", d, range)
            .await
            .unwrap_or_else(|| panic!("a held blob must not be a miss for {range:?}"));
        assert!(got == want, "range {range:?}: got {} bytes", got.len());
    }
}

/// A limit of zero reads nothing (unlike ByteStream's `read_limit: 0`, which means no limit).
///
/// Not yet run by [`blob_store_conformance`](super::blob_store_conformance): `GrpcStore` passes
/// the limit on as ByteStream's `read_limit: 0` and reads the whole blob.
pub async fn zero_limit_reads_nothing(store: &dyn BlobStore) {
    let data = content(450, 1000);
    let d = put(store, "", &data, 1000).await;
    for offset in [0, 10, 1000] {
        let range = ReadRange {
            offset,
            limit: Some(0),
        };
        let got = read(store, "", d, range)
            .await
            .unwrap_or_else(|| panic!("a held blob must not be a miss for {range:?}"));
        assert!(got.is_empty(), "{range:?} read {} bytes", got.len());
    }
}

/// An offset past the end of a held blob is `OutOfRange`.
pub async fn offset_past_end_is_out_of_range(store: &dyn BlobStore) {
    let data = content(500, 1000);
    let d = put(store, "", &data, 1000).await;
    for limit in [None, Some(1)] {
        let range = ReadRange {
            offset: 1001,
            limit,
        };
        let result = match store.get("", d, range).await {
            Ok(None) => panic!("a held blob must not be a miss for {range:?}"),
            // A store may report the error on the stream instead.
            Ok(Some(stream)) => crate::collect_chunks(stream, 0).await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(
            matches!(result, Err(Error::OutOfRange(_))),
            "offset past the end ({range:?}) must be OutOfRange: {result:?}"
        );
    }
}

/// Each instance name is its own namespace: a blob put under one is a miss under every other,
/// nested and empty names included, and the same blob can be put under several.
pub async fn instances_are_separate(store: &dyn BlobStore) {
    let data = content(600, 2000);
    let d = put(store, "inst-a", &data, 500).await;
    for other in ["", "inst-b", "inst-a/x", "inst", "x/inst-a"] {
        assert_absent(
            store,
            other,
            &[d],
            &format!("put in \"inst-a\", read in {other:?}"),
        )
        .await;
    }
    put(store, "inst-b", &data, 2000).await;
    assert_eq!(read_all(store, "inst-a", d).await, data);
    assert_eq!(read_all(store, "inst-b", d).await, data);
    assert_absent(store, "", &[d], "put in two other instances").await;
}

/// Digests of different functions never alias, even with the same hash bytes and size.
pub async fn digest_functions_do_not_alias(store: &dyn BlobStore) {
    let data = content(700, 3000);
    let sha = put(store, "", &data, 3000).await;
    let b3_alias = Digest::new(DigestFunction::Blake3, *sha.hash(), sha.size());
    assert_absent(store, "", &[b3_alias], "the SHA-256 hash under BLAKE3").await;

    let other = content(701, 3000);
    let b3 = DigestFunction::Blake3.digest_of(&other);
    store
        .put("", b3, chunked(other.clone(), 1000))
        .await
        .unwrap();
    let sha_alias = Digest::new(SHA, *b3.hash(), b3.size());
    assert_absent(store, "", &[sha_alias], "the BLAKE3 hash under SHA-256").await;
    assert_eq!(read_all(store, "", b3).await, other);
}

/// `find_missing` keeps the input order, keeps duplicates, mixes functions, and answers an
/// empty query with an empty list.
pub async fn find_missing_keeps_input_order(store: &dyn BlobStore) {
    let present: Vec<Digest> = [800, 801]
        .into_iter()
        .map(|seed| SHA.digest_of(&content(seed, 10)))
        .collect();
    for seed in [800, 801] {
        put(store, "", &content(seed, 10), 10).await;
    }
    let m0 = SHA.digest_of(&content(802, 10));
    let m1 = DigestFunction::Blake3.digest_of(&content(803, 10));
    let m2 = SHA.digest_of(&content(804, 20));
    let query = [m2, present[0], m1, present[1], m0, m2, present[0]];
    assert_eq!(
        store.find_missing("", &query).await.unwrap(),
        vec![m2, m1, m0, m2],
        "the missing digests of {query:?}, in input order"
    );
    assert!(store.find_missing("", &[]).await.unwrap().is_empty());
}

/// A stream shorter or longer than the digest's size fails with `InvalidArgument` and stores
/// nothing.
pub async fn length_mismatch_is_rejected_and_stores_nothing(store: &dyn BlobStore) {
    let data = content(900, 10);
    let hash = *SHA.digest_of(&data).hash();
    let short = Digest::new(SHA, hash, 11);
    let long = Digest::new(SHA, hash, 9);
    for (d, what) in [(short, "a stream shorter"), (long, "a stream longer")] {
        let err = store.put("", d, chunked(data.clone(), 3)).await.err();
        assert!(
            matches!(err, Some(Error::InvalidArgument(_))),
            "{what} than the digest says must fail with InvalidArgument: {err:?}"
        );
    }
    let big = content(901, 300_000);
    let big_short = Digest::new(SHA, *SHA.digest_of(&big).hash(), 300_001);
    let err = store.put("", big_short, chunked(big, 65_536)).await.err();
    assert!(
        matches!(err, Some(Error::InvalidArgument(_))),
        "a large stream shorter than the digest says: {err:?}"
    );
    assert_absent(
        store,
        "",
        &[short, long, big_short],
        "after length mismatches",
    )
    .await;
}

/// An `Err` item in the put stream fails the put and stores nothing.
pub async fn stream_error_fails_the_put_and_stores_nothing(store: &dyn BlobStore) {
    let data = content(1000, 10);
    let d = SHA.digest_of(&data);
    for at in [0, 5, 10] {
        let mut items: Vec<_> = vec![Ok(data.slice(..at))];
        items.push(Err(Error::Cancelled("the client went away".into())));
        items.push(Ok(data.slice(at..)));
        let result = store.put("", d, futures::stream::iter(items).boxed()).await;
        assert!(
            result.is_err(),
            "an Err item after {at} bytes must fail the put"
        );
        assert_absent(store, "", &[d], "after a stream error").await;
    }
}

/// Starts a put of `digest` whose stream yields `prefix` and then never ends, lets it consume
/// the prefix, and drops it. If the blob is `stored` already, the put may succeed at once.
async fn abandon_put(store: &dyn BlobStore, digest: Digest, prefix: Bytes, stored: bool) {
    let consumed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&consumed);
    let stream = chunked(prefix.clone(), 16 * 1024)
        .inspect(move |c| {
            if let Ok(c) = c {
                counter.fetch_add(c.len(), Ordering::Relaxed);
            }
        })
        .chain(futures::stream::pending())
        .boxed();
    let mut put = store.put("", digest, stream);
    // Poll until the prefix is consumed, and a while longer so that it reaches storage.
    let mut extra = 200;
    for _ in 0..50_000 {
        if let std::task::Poll::Ready(result) = futures::poll!(&mut put) {
            assert!(
                stored || result.is_err(),
                "a put whose stream never ended succeeded"
            );
            return;
        }
        if consumed.load(Ordering::Relaxed) == prefix.len() {
            extra -= 1;
            if extra == 0 {
                break;
            }
        }
        yield_now().await;
    }
    drop(put);
}

/// A put dropped before its stream ended leaves nothing visible, and does not stop a later
/// put of the same blob.
pub async fn abandoned_put_leaves_nothing(store: &dyn BlobStore) {
    for (seed, len) in [(1100, 100_000), (1101, 3 << 20)] {
        let data = content(seed, len);
        let d = SHA.digest_of(&data);
        abandon_put(store, d, data.slice(..len / 2), false).await;
        assert_absent(store, "", &[d], "after an abandoned put").await;
        put(store, "", &data, 64 * 1024).await;
        assert_eq!(
            read_all(store, "", d).await,
            data,
            "a put after an abandoned one"
        );
    }
}

/// A short, failing or abandoned put of a blob already stored never damages it. (Such a put
/// may succeed without reading its stream, since the blob is there.)
pub async fn failed_put_keeps_the_stored_blob(store: &dyn BlobStore) {
    let data = content(1200, 50_000);
    let d = put(store, "", &data, 8192).await;
    let _ = store.put("", d, chunked(data.slice(..10), 5)).await;
    assert_eq!(read_all(store, "", d).await, data, "after a short re-put");
    let failing = futures::stream::iter(vec![
        Ok(data.slice(..100)),
        Err(Error::Cancelled("the client went away".into())),
    ])
    .boxed();
    let _ = store.put("", d, failing).await;
    assert_eq!(read_all(store, "", d).await, data, "after a failed re-put");
    abandon_put(store, d, data.slice(..20_000), true).await;
    assert_eq!(
        read_all(store, "", d).await,
        data,
        "after an abandoned re-put"
    );
    assert!(store.find_missing("", &[d]).await.unwrap().is_empty());
}

/// Putting a blob that is already stored succeeds, also many times at once, and keeps the
/// content.
pub async fn idempotent_concurrent_puts(store: &dyn BlobStore) {
    let data = content(1300, 100_000);
    let d = put(store, "", &data, 100_000).await;
    put(store, "", &data, 3_000).await;
    let fresh = content(1301, 200_000);
    let fd = SHA.digest_of(&fresh);
    let puts = (0..8).flat_map(|i| {
        [
            store.put("", d, chunked(data.clone(), 1000 * (i + 1))),
            store.put("", fd, chunked(fresh.clone(), 4096 * (i + 1))),
        ]
    });
    for result in futures::future::join_all(puts).await {
        result.expect("concurrent puts of the same blob must all succeed");
    }
    assert_eq!(read_all(store, "", d).await, data);
    assert_eq!(read_all(store, "", fd).await, fresh);
}

/// A put of the empty blob succeeds. The store need not keep it (the services answer for it),
/// but if `get` finds it, it is empty.
pub async fn empty_blob_put_succeeds(store: &dyn BlobStore) {
    for function in [SHA, DigestFunction::Blake3] {
        let d = function.digest_of(b"");
        assert!(d.is_empty_blob());
        store
            .put("", d, chunked(Bytes::new(), 1))
            .await
            .unwrap_or_else(|e| panic!("put of the empty blob {d}: {e:?}"));
        if let Some(got) = read(store, "", d, ReadRange::ALL).await {
            assert!(
                got.is_empty(),
                "the empty blob read back {} bytes",
                got.len()
            );
        }
    }
}

/// A blob of several MiB, put in many chunks, reads back whole.
pub async fn large_blob_round_trip(store: &dyn BlobStore) {
    let big = content(1400, 5 * 1024 * 1024 + 17);
    let d = DigestFunction::Blake3.digest_of(&big);
    store
        .put("big", d, chunked(big.clone(), 64 * 1024))
        .await
        .expect("put of a large blob");
    assert_eq!(
        store
            .get_bytes("big", d, u64::MAX)
            .await
            .unwrap()
            .as_deref(),
        Some(&big[..])
    );
    let tail = ReadRange {
        offset: big.len() as u64 - 100_000,
        limit: None,
    };
    assert!(read(store, "big", d, tail).await.as_deref() == Some(&big[big.len() - 100_000..]));
}

/// With [`verifies_content`](super::BlobStoreCapabilities::verifies_content): content of the
/// right length that does not hash to the digest fails with `InvalidArgument` and stores
/// nothing, in either digest function.
pub async fn content_mismatch_is_rejected_and_stores_nothing(store: &dyn BlobStore) {
    let claimed = content(1500, 5000);
    let sent = content(1501, 5000);
    for function in [SHA, DigestFunction::Blake3] {
        let d = function.digest_of(&claimed);
        let err = store.put("", d, chunked(sent.clone(), 1000)).await.err();
        assert!(
            matches!(err, Some(Error::InvalidArgument(_))),
            "content that does not hash to {d} must fail with InvalidArgument: {err:?}"
        );
        assert_absent(store, "", &[d], "after a content mismatch").await;
        store
            .put("", d, chunked(claimed.clone(), 1000))
            .await
            .expect("the right content after a mismatch");
        assert_eq!(read_all(store, "", d).await, claimed);
    }
}
