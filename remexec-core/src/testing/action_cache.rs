//! The [`ActionCache`] conformance checks, one function per contract point.
//!
//! The results refer to no CAS blobs (inline stdout, output symlinks), so caches that check
//! their entries against a CAS run the suite like any other. Each function uses action digests
//! of its own.

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    ActionResult, ExecutedActionMetadata, OutputSymlink,
};

use crate::{ActionCache, Digest, DigestFunction};

/// The digest of an action named `name`.
fn action(name: &str) -> Digest {
    DigestFunction::Sha256.digest_of(name.as_bytes())
}

/// A result that differs in every field from the result of any other `seed`, with `links`
/// output symlinks.
pub fn sample_result(seed: i32, links: usize) -> ActionResult {
    ActionResult {
        exit_code: seed,
        stdout_raw: format!("stdout of {seed}").into_bytes(),
        stderr_raw: format!("stderr of {seed}").into_bytes(),
        output_symlinks: (0..links)
            .map(|i| OutputSymlink {
                path: format!("out/{seed}/link-{i}"),
                target: format!("../target-{i}"),
                ..Default::default()
            })
            .collect(),
        execution_metadata: Some(ExecutedActionMetadata {
            worker: format!("worker-{seed}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn lookup(cache: &dyn ActionCache, instance: &str, a: Digest) -> Option<ActionResult> {
    cache
        .get(instance, a)
        .await
        .unwrap_or_else(|e| panic!("get of {a} in {instance:?} failed: {e:?}"))
}

async fn store(cache: &dyn ActionCache, instance: &str, a: Digest, result: ActionResult) {
    cache
        .put(instance, a, result)
        .await
        .unwrap_or_else(|e| panic!("put of {a} in {instance:?} failed: {e:?}"));
}

/// An unknown action is a miss, `Ok(None)`.
pub async fn missing_is_none(cache: &dyn ActionCache) {
    assert!(
        lookup(cache, "", action("never put")).await.is_none(),
        "an unknown action must be a miss"
    );
}

/// A put result reads back exactly, every field intact.
pub async fn put_get_round_trip(cache: &dyn ActionCache) {
    let a = action("round trip");
    store(cache, "", a, sample_result(3, 2)).await;
    assert_eq!(lookup(cache, "", a).await, Some(sample_result(3, 2)));
    assert_eq!(
        lookup(cache, "", a).await,
        Some(sample_result(3, 2)),
        "a second read"
    );
}

/// A later put replaces the entry, also with a smaller result.
pub async fn last_writer_wins(cache: &dyn ActionCache) {
    let a = action("last writer");
    store(cache, "", a, sample_result(0, 10)).await;
    store(cache, "", a, sample_result(1, 0)).await;
    assert_eq!(
        lookup(cache, "", a).await,
        Some(sample_result(1, 0)),
        "the last writer wins"
    );
    store(cache, "", a, sample_result(2, 3)).await;
    assert_eq!(lookup(cache, "", a).await, Some(sample_result(2, 3)));
}

/// Each instance name is its own namespace, nested and empty names included.
pub async fn instances_are_separate(cache: &dyn ActionCache) {
    let a = action("instances");
    store(cache, "inst-a", a, sample_result(10, 1)).await;
    for other in ["", "inst-b", "inst-a/x", "inst"] {
        assert!(
            lookup(cache, other, a).await.is_none(),
            "put in \"inst-a\", read in {other:?}: must be a miss"
        );
    }
    store(cache, "inst-b", a, sample_result(11, 1)).await;
    assert_eq!(lookup(cache, "inst-a", a).await, Some(sample_result(10, 1)));
    assert_eq!(lookup(cache, "inst-b", a).await, Some(sample_result(11, 1)));
}

/// Action digests of different functions never alias, even with the same hash and size.
pub async fn digest_functions_do_not_alias(cache: &dyn ActionCache) {
    let sha = action("functions");
    let b3 = Digest::new(DigestFunction::Blake3, *sha.hash(), sha.size());
    store(cache, "", sha, sample_result(20, 1)).await;
    assert!(
        lookup(cache, "", b3).await.is_none(),
        "the SHA-256 digest under BLAKE3 must be a miss"
    );
    store(cache, "", b3, sample_result(21, 1)).await;
    assert_eq!(lookup(cache, "", sha).await, Some(sample_result(20, 1)));
    assert_eq!(lookup(cache, "", b3).await, Some(sample_result(21, 1)));
}

/// Concurrent puts of different results, with reads among them, all succeed; every read sees
/// one whole result, never a mix, and the entry is one of them afterwards.
pub async fn concurrent_puts_are_never_torn(cache: &dyn ActionCache) {
    let a = action("concurrent");
    let result = |i: i32| sample_result(100 + i, (i as usize % 4) * 50);
    store(cache, "", a, result(0)).await;
    let puts = futures::future::join_all((0..16).map(|i| cache.put("", a, result(i))));
    let gets = futures::future::join_all((0..16).map(|_| cache.get("", a)));
    let (puts, gets) = futures::join!(puts, gets);
    for r in puts {
        r.expect("concurrent put");
    }
    let whole = |got: &ActionResult| (0..16).any(|i| *got == result(i));
    for got in gets {
        let got = got.expect("get among concurrent puts");
        let got = got.expect("an entry exists throughout");
        assert!(whole(&got), "a torn entry: {got:?}");
    }
    let last = lookup(cache, "", a)
        .await
        .expect("entry after concurrent puts");
    assert!(whole(&last), "a torn entry after concurrent puts: {last:?}");
}

/// A result of about 100 KiB round-trips.
pub async fn large_result_round_trip(cache: &dyn ActionCache) {
    let a = action("large");
    store(cache, "", a, sample_result(30, 2000)).await;
    assert_eq!(lookup(cache, "", a).await, Some(sample_result(30, 2000)));
}
