//! The packed entries of a table, through the disk store: few files, restarts, torn and
//! damaged records, compaction, and uses and keeps across restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use remexec_core::testing::{chunked, content};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction};

use super::segments;
use crate::key::Key;
use crate::{DiskStore, DiskStoreOptions};

fn packed(budget: u64) -> DiskStoreOptions {
    DiskStoreOptions {
        budget,
        ..Default::default()
    }
}

fn blobs(first: u64, n: u64, len: usize) -> (Vec<Bytes>, Vec<Digest>) {
    let blobs: Vec<_> = (first..first + n).map(|i| content(i, len)).collect();
    let digests = blobs
        .iter()
        .map(|b| DigestFunction::Sha256.digest_of(b))
        .collect();
    (blobs, digests)
}

/// Regular files under `root`.
fn files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

fn segment_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = files(&root.join(segments::DIR))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

async fn read_all(store: &DiskStore, digests: &[Digest], blobs: &[Bytes]) {
    for (b, d) in blobs.iter().zip(digests) {
        let got = store.get_bytes("inst", *d, u64::MAX).await.unwrap();
        assert_eq!(got.as_deref(), Some(&b[..]), "{d}");
    }
}

/// Reads back whole every blob of `blobs` the store says it holds; returns those it lacks.
async fn read_present(store: &DiskStore, digests: &[Digest], blobs: &[Bytes]) -> Vec<Digest> {
    let missing = store.find_missing("inst", digests).await.unwrap();
    let present = digests
        .iter()
        .zip(blobs)
        .filter(|(d, _)| !missing.contains(d));
    let (digests, blobs): (Vec<Digest>, Vec<Bytes>) = present.map(|(d, b)| (*d, b.clone())).unzip();
    read_all(store, &digests, &blobs).await;
    missing
}

/// A thousand small blobs from many writers at once take a few files, not a thousand, and
/// read back whole (and in part) after a restart; blobs above the threshold still get files.
#[tokio::test]
async fn small_blobs_share_segments_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (small, small_digests) = blobs(0, 1000, 700);
    let (large, large_digests) = blobs(5000, 2, 70_000);
    {
        let store = Arc::new(DiskStore::open(dir.path(), packed(1 << 30)).await.unwrap());
        let mut writers = tokio::task::JoinSet::new();
        for (b, d) in small.iter().zip(&small_digests) {
            let (store, b, d) = (Arc::clone(&store), b.clone(), *d);
            writers.spawn(async move { store.put("inst", d, chunked(b, 256)).await });
        }
        for (b, d) in large.iter().zip(&large_digests) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(DiskStore::usage(&store), (1000 * 700 + 2 * 70_000, 1002));
        // Large blobs in files, small ones packed: instance name, two blobs, the journal
        // and one segment.
        assert_eq!(files(dir.path()).len(), 5, "{:?}", files(dir.path()));
    }
    let store = DiskStore::open(dir.path(), packed(1 << 30)).await.unwrap();
    assert_eq!(DiskStore::usage(&store), (1000 * 700 + 2 * 70_000, 1002));
    read_all(&store, &small_digests, &small).await;
    read_all(&store, &large_digests, &large).await;
    let part = store
        .get(
            "inst",
            small_digests[7],
            remexec_core::ReadRange {
                offset: 100,
                limit: Some(50),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let part = remexec_core::collect_chunks(part, 50).await.unwrap();
    assert_eq!(&part[..], &small[7][100..150]);
    // A wrong length is refused and stores nothing.
    let d = small_digests[0];
    let wrong = Digest::new(DigestFunction::Sha256, *d.hash(), 701);
    let err = store
        .put_bytes("inst", wrong, small[0].clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert_eq!(
        store.find_missing("inst", &[wrong]).await.unwrap(),
        vec![wrong]
    );
}

/// A kill mid-write leaves at most a torn record at the end of the active segment: it and
/// only it is skipped at start, and writing goes on in a new segment.
#[tokio::test]
async fn a_torn_record_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (blobs, digests) = blobs(100, 5, 1000);
    {
        let store = DiskStore::open(dir.path(), packed(1 << 20)).await.unwrap();
        for (b, d) in blobs.iter().zip(&digests) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let record = segments::HEADER + 1000;
    assert_eq!(len, 5 * record);
    // The last record torn halfway, and garbage after it.
    let file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    file.set_len(len - record / 2).unwrap();
    std::io::Write::write_all(&mut &file, b"RXP1 not a record").unwrap();
    let store = DiskStore::open(dir.path(), packed(1 << 20)).await.unwrap();
    assert_eq!(
        store.find_missing("inst", &digests).await.unwrap(),
        vec![digests[4]]
    );
    read_all(&store, &digests[..4], &blobs[..4]).await;
    store
        .put_bytes("inst", digests[4], blobs[4].clone())
        .await
        .unwrap();
    read_all(&store, &digests, &blobs).await;
    assert_eq!(segment_files(dir.path()).len(), 2);
    // Restarts without writes leave no empty segments behind.
    drop(store);
    for _ in 0..3 {
        let store = DiskStore::open(dir.path(), packed(1 << 20)).await.unwrap();
        read_all(&store, &digests, &blobs).await;
    }
    let _store = DiskStore::open(dir.path(), packed(1 << 20)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segment_files(dir.path()).len() > 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            segment_files(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A record whose bytes changed on disk fails its CRC: it is dropped, never served, and may
/// be written again.
#[tokio::test]
async fn a_damaged_record_is_dropped_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (blobs, digests) = blobs(200, 3, 1000);
    let store = DiskStore::open(dir.path(), packed(1 << 20)).await.unwrap();
    for (b, d) in blobs.iter().zip(&digests) {
        store.put_bytes("inst", *d, b.clone()).await.unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let middle = segments::HEADER + 1000 + segments::HEADER + 500;
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", middle).unwrap();
    assert!(
        store
            .get_bytes("inst", digests[1], u64::MAX)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.find_missing("inst", &digests).await.unwrap(),
        vec![digests[1]]
    );
    read_all(
        &store,
        &[digests[0], digests[2]],
        &[blobs[0].clone(), blobs[2].clone()],
    )
    .await;
    store
        .put_bytes("inst", digests[1], blobs[1].clone())
        .await
        .unwrap();
    read_all(&store, &digests, &blobs).await;
}

/// Evicted records leave dead space, which compaction takes back a segment at a time, and
/// which counts against the budget: once compaction has caught up, the segments on disk are
/// within the budget and the records' headers, though many times the budget was written, and
/// every blob still indexed reads back.
#[tokio::test]
async fn eviction_and_compaction_bound_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 64 * 1024 * 16;
    let store = DiskStore::open(dir.path(), packed(budget)).await.unwrap();
    let (blobs, digests) = blobs(1000, 400, 16 * 1024);
    for (i, (b, d)) in blobs.iter().zip(&digests).enumerate() {
        store.put_bytes("inst", *d, b.clone()).await.unwrap();
        // Every fourth blob is read often: it lives on through compactions.
        if i >= 4 {
            store
                .get_bytes("inst", digests[0], u64::MAX)
                .await
                .unwrap()
                .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        let records = segment_files(dir.path()).len() as u64 * 4;
        if on_disk <= budget + records * segments::HEADER {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{on_disk} bytes of segments"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(DiskStore::usage(&store).0 <= budget);
    let missing = read_present(&store, &digests, &blobs).await;
    assert!(
        !missing.contains(&digests[0]),
        "the blob in use was evicted"
    );
    assert!(missing.len() >= 300, "{}", missing.len());
    drop(store);
    // Records evicted but not compacted away may be indexed again after a restart (their
    // content is as good as ever); the budget still holds, and all reads are whole.
    let store = DiskStore::open(dir.path(), packed(budget)).await.unwrap();
    assert!(DiskStore::usage(&store).0 <= budget);
    read_present(&store, &digests, &blobs).await;
}

/// Packed blobs have no file times: their uses and references go to the use journal, so
/// the order of use and the keeps survive a restart as they do for files.
#[tokio::test]
async fn uses_and_keeps_of_packed_blobs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (written, digests) = blobs(300, 4, 1000);
    let keys: Vec<Key> = digests.iter().map(|d| Key::new("inst", *d)).collect();
    {
        let store = DiskStore::open(dir.path(), packed(10_000)).await.unwrap();
        for (b, d) in written.iter().zip(&digests) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
    }
    // Written an hour ago, in order: 0 is the oldest.
    let hour_ago = now() - 3600;
    let old: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, hour_ago + 10 * i as u64, 0))
        .collect();
    segments::rewrite_uses(dir.path(), &old).unwrap();
    let store = DiskStore::open(dir.path(), packed(10_000)).await.unwrap();
    // 0 is read, 1 is referenced; 2 and 3 are left alone.
    store.get_bytes("inst", digests[0], u64::MAX).await.unwrap();
    assert!(
        store
            .reference("inst", &digests[1..2])
            .await
            .unwrap()
            .is_empty()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let uses = segments::read_uses(dir.path());
        let recent = |k: &Key| uses.get(k).is_some_and(|u| u.0 + 60 > now());
        if recent(&keys[0]) && uses.get(&keys[1]).is_some_and(|u| u.1 + 60 > now()) {
            assert!(!recent(&keys[2]) && !recent(&keys[3]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uses not recorded: {uses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    // Room for two: the two used survive, though written first; 1 is kept.
    let store = DiskStore::open(dir.path(), packed(2_500)).await.unwrap();
    assert_eq!(
        store.find_missing("inst", &digests).await.unwrap(),
        digests[2..].to_vec()
    );
    assert_eq!(BlobStore::usage(&store).unwrap().referenced_bytes, 1000);
    // The kept blob outlasts newer writes; the other does not.
    let (more, more_digests) = blobs(400, 2, 1000);
    for (b, d) in more.iter().zip(&more_digests) {
        store.put_bytes("inst", *d, b.clone()).await.unwrap();
    }
    let missing = store.find_missing("inst", &digests[..2]).await.unwrap();
    assert_eq!(missing, vec![digests[0]]);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A record given up before it is indexed (its write refused, or its caller gone) counts as
/// dead, and a segment with records waiting to be indexed is not compacted until they are.
#[tokio::test]
async fn records_waiting_to_be_indexed_hold_off_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let (segments, records) = segments::Segments::open(dir.path(), true, 1 << 20, tx).unwrap();
    assert!(records.is_empty());
    let (blobs, digests) = blobs(500, 2, 100);
    let key = |d: &Digest| Key::new("", *d);
    let kept = segments
        .append(key(&digests[0]), blobs[0].clone(), now())
        .await
        .unwrap();
    let given_up = segments
        .append(key(&digests[1]), blobs[1].clone(), now())
        .await
        .unwrap();
    let id = kept.slot().segment;
    assert_eq!(segments.overhead(), 0);
    assert!(segments.pending(id));
    drop(given_up);
    assert!(segments.pending(id));
    assert_eq!(segments.overhead(), segments::HEADER + 100);
    kept.settle();
    assert!(!segments.pending(id));
    assert_eq!(segments.overhead(), segments::HEADER + 100);
}

/// The use journal is rewritten with the latest record of each key once it has grown enough,
/// and the uses read back are the latest.
#[test]
fn the_use_journal_is_rewritten_when_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(segments::DIR)).unwrap();
    let path = segments::Segments::uses_path(dir.path());
    let (_, digests) = blobs(600, 10, 10);
    let keys: Vec<Key> = digests.iter().map(|d| Key::new("i", *d)).collect();
    let mut journal = segments::UseJournal::open(path.clone()).unwrap();
    let mut largest = 0;
    for round in 0..30_000u64 {
        for key in &keys {
            journal.record(key, 1_000 + round, round % 2 == 0);
        }
        journal.flush();
        largest = largest.max(std::fs::metadata(&path).unwrap().len());
    }
    assert!(largest <= (17 << 20) + 10 * 73, "{largest}");
    assert!(std::fs::metadata(&path).unwrap().len() < largest);
    let uses = segments::read_uses(dir.path());
    assert_eq!(uses.len(), 10);
    for key in &keys {
        assert_eq!(uses[key], (1_000 + 29_999, 1_000 + 29_998));
    }
}
