//! ReplicatedStore against memory members: conformance, placement of each write, lost and
//! failing replicas, the fallback after a join, and a replica that already holds a blob.

use std::sync::Arc;

use bytes::Bytes;
use remexec_core::testing::blob_store_conformance;
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, ReadRange, Result};

use super::ReplicatedStore;
use crate::store::memory::MemoryStore;

type Members = Vec<(String, Arc<MemoryStore>)>;

fn members(n: usize) -> Members {
    (0..n)
        .map(|i| (format!("w{i}"), Arc::new(MemoryStore::new(1 << 30))))
        .collect()
}

fn replicated(r: usize, members: &Members) -> ReplicatedStore {
    let store = ReplicatedStore::new(r).unwrap();
    store.set_members(
        members
            .iter()
            .map(|(n, s)| (n.clone(), s.clone() as Arc<dyn BlobStore>)),
    );
    store
}

fn blob(i: usize) -> (Digest, Bytes) {
    let data = Bytes::from(format!("blob number {i}"));
    (DigestFunction::Sha256.digest_of(&data), data)
}

/// Which members hold `digest`.
async fn holders(members: &Members, digest: Digest) -> Vec<String> {
    let mut held = Vec::new();
    for (name, store) in members {
        if store.contains("i", digest).await.unwrap() {
            held.push(name.clone());
        }
    }
    held.sort();
    held
}

#[tokio::test]
async fn conformance() {
    blob_store_conformance(Arc::new(replicated(2, &members(3)))).await;
}

#[tokio::test]
async fn each_blob_lands_on_exactly_its_r_replicas() {
    for r in 1..=3 {
        let ms = members(4);
        let store = replicated(r, &ms);
        for i in 0..50 {
            let (d, data) = blob(i);
            store.put_bytes("i", d, data).await.unwrap();
            let mut expected = store.locate(&d);
            expected.sort();
            assert_eq!(expected.len(), r);
            assert_eq!(holders(&ms, d).await, expected, "blob {i}, R={r}");
        }
    }
    assert!(ReplicatedStore::new(0).is_err() && ReplicatedStore::new(4).is_err());
}

#[tokio::test]
async fn a_lost_replica_loses_nothing_and_too_few_members_refuse_writes() {
    let ms = members(3);
    let store = replicated(2, &ms);
    let (d, data) = blob(7);
    store.put_bytes("i", d, data.clone()).await.unwrap();
    let lost = store.locate(&d)[0].clone();
    let survivors: Members = ms.iter().filter(|(n, _)| *n != lost).cloned().collect();
    let degraded = replicated(2, &survivors);
    degraded.set_members(
        survivors
            .iter()
            .map(|(n, s)| (n.clone(), s.clone() as Arc<dyn BlobStore>)),
    );
    assert_eq!(
        degraded.get_bytes("i", d, 1 << 20).await.unwrap(),
        Some(data)
    );
    assert!(degraded.find_missing("i", &[d]).await.unwrap().is_empty());
    let alone = replicated(2, &members(1));
    let (d2, data2) = blob(8);
    let refused = alone.put_bytes("i", d2, data2).await.unwrap_err();
    assert!(matches!(refused, Error::Unavailable(_)), "{refused:?}");
}

#[tokio::test]
async fn after_a_join_reads_fall_back_to_the_previous_placement() {
    let mut ms = members(3);
    let store = replicated(1, &ms);
    let blobs: Vec<_> = (0..60).map(blob).collect();
    for (d, data) in &blobs {
        store.put_bytes("i", *d, data.clone()).await.unwrap();
    }
    ms.push(("newcomer".into(), Arc::new(MemoryStore::new(1 << 30))));
    store.set_members(
        ms.iter()
            .map(|(n, s)| (n.clone(), s.clone() as Arc<dyn BlobStore>)),
    );
    let moved: Vec<_> = blobs
        .iter()
        .filter(|(d, _)| store.locate(d) == ["newcomer"])
        .collect();
    assert!(!moved.is_empty(), "the newcomer won no blob of 60");
    for (d, data) in &blobs {
        assert_eq!(
            store.get_bytes("i", *d, 1 << 20).await.unwrap().as_ref(),
            Some(data)
        );
    }
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert!(store.find_missing("i", &digests).await.unwrap().is_empty());
    // A blob nobody has is still missing.
    let (absent, _) = blob(1000);
    assert_eq!(store.find_missing("i", &[absent]).await.unwrap(), [absent]);
    assert!(
        store
            .get("i", absent, ReadRange::ALL)
            .await
            .unwrap()
            .is_none()
    );
}

/// A member that fails every call.
#[derive(Debug)]
pub(super) struct Broken;

#[async_trait::async_trait]
impl BlobStore for Broken {
    async fn find_missing(&self, _: &str, _: &[Digest]) -> Result<Vec<Digest>> {
        Err(Error::Unavailable("broken".into()))
    }
    async fn put(&self, _: &str, _: Digest, _: remexec_core::ChunkStream) -> Result<()> {
        Err(Error::Unavailable("broken".into()))
    }
    async fn get(
        &self,
        _: &str,
        _: Digest,
        _: ReadRange,
    ) -> Result<Option<remexec_core::ChunkStream>> {
        Err(Error::Unavailable("broken".into()))
    }
}

#[tokio::test]
async fn a_failing_replica_is_skipped_by_reads_and_fails_writes() {
    let ms = members(2);
    let store = replicated(2, &ms);
    let (d, data) = blob(3);
    store.put_bytes("i", d, data.clone()).await.unwrap();
    // One of the two replicas now fails everything.
    let failing = store.locate(&d)[0].clone();
    store.set_members(ms.iter().map(|(n, s)| {
        let s: Arc<dyn BlobStore> = match *n == failing {
            true => Arc::new(Broken),
            false => s.clone(),
        };
        (n.clone(), s)
    }));
    assert_eq!(store.get_bytes("i", d, 1 << 20).await.unwrap(), Some(data));
    assert!(store.find_missing("i", &[d]).await.unwrap().is_empty());
    // A blob the healthy replica lacks may be on the failing one: not a miss.
    let (absent, _) = blob(99);
    assert!(store.get("i", absent, ReadRange::ALL).await.is_err());
    let (d2, data2) = blob(4);
    assert!(store.put_bytes("i", d2, data2).await.is_err());
    // With every replica failing, the failure shows.
    store.set_members([
        ("a".to_string(), Arc::new(Broken) as Arc<dyn BlobStore>),
        ("b".to_string(), Arc::new(Broken) as Arc<dyn BlobStore>),
    ]);
    assert!(store.get("i", d, ReadRange::ALL).await.is_err());
    assert!(store.find_missing("i", &[d]).await.is_err());
}

/// A member that already holds everything: its put returns at once, reading nothing.
#[derive(Debug)]
struct Holder;

#[async_trait::async_trait]
impl BlobStore for Holder {
    async fn find_missing(&self, _: &str, _: &[Digest]) -> Result<Vec<Digest>> {
        Ok(Vec::new())
    }
    async fn put(&self, _: &str, _: Digest, _: remexec_core::ChunkStream) -> Result<()> {
        Ok(())
    }
    async fn get(
        &self,
        _: &str,
        _: Digest,
        _: ReadRange,
    ) -> Result<Option<remexec_core::ChunkStream>> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_replica_that_already_holds_the_blob_holds_nobody_up() {
    use futures::StreamExt;
    let memory = Arc::new(MemoryStore::new(1 << 30));
    let store = ReplicatedStore::new(2).unwrap();
    store.set_members([
        ("holder".to_string(), Arc::new(Holder) as Arc<dyn BlobStore>),
        ("memory".to_string(), memory.clone() as Arc<dyn BlobStore>),
    ]);
    // 40 chunks: far more than a copy buffers, so the copies cannot run ahead of the holder;
    // a blob whose first replica is the holder.
    let (chunks, whole, d) = (0u8..)
        .map(|seed| {
            let chunks: Vec<Bytes> = (0..40u8)
                .map(|i| Bytes::from(vec![i ^ seed; 1000]))
                .collect();
            let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
            let d = DigestFunction::Sha256.digest_of(&whole);
            (chunks, whole, d)
        })
        .find(|(_, _, d)| store.locate(d)[0] == "holder")
        .unwrap();
    let stream = futures::stream::iter(chunks.into_iter().map(Ok)).boxed();
    store.put("i", d, stream).await.unwrap();
    assert_eq!(
        memory.get_bytes("i", d, 1 << 20).await.unwrap(),
        Some(Bytes::from(whole))
    );
}

#[tokio::test]
async fn a_copy_outside_both_placements_is_still_found() {
    let ms = members(4);
    let store = replicated(1, &ms);
    // Find a blob whose only replica is neither w0 nor w1, then hold it on w0 alone and
    // change the membership twice (w0 stays a member), so that w0 is in neither placement.
    let (d, data) = (0..100)
        .map(blob)
        .find(|(d, _)| {
            let now = store.locate(d);
            now[0] != "w0" && now[0] != "w1"
        })
        .unwrap();
    ms[0].1.put_bytes("i", d, data.clone()).await.unwrap();
    let all = |keep: &[usize]| {
        keep.iter()
            .map(|i| (ms[*i].0.clone(), ms[*i].1.clone() as Arc<dyn BlobStore>))
            .collect::<Vec<_>>()
    };
    store.set_members(all(&[0, 1, 2, 3]));
    let without_w0_placed = store.locate(&d);
    assert_ne!(without_w0_placed[0], "w0");
    store.set_members(all(&[0, 2, 3]));
    assert_eq!(
        store.get_bytes("i", d, 1 << 20).await.unwrap().as_ref(),
        Some(&data)
    );
    // A true miss is still a miss.
    let (absent, _) = blob(1000);
    assert!(
        store
            .get_bytes("i", absent, 1 << 20)
            .await
            .unwrap()
            .is_none()
    );
}

/// A memory member that counts the digests it is asked about.
#[derive(Debug)]
struct Asked(MemoryStore, std::sync::atomic::AtomicUsize);

impl Asked {
    fn take(&self) -> usize {
        self.1.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl BlobStore for Asked {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.1
            .fetch_add(digests.len(), std::sync::atomic::Ordering::SeqCst);
        self.0.find_missing(instance, digests).await
    }
    async fn put(
        &self,
        instance: &str,
        digest: Digest,
        data: remexec_core::ChunkStream,
    ) -> Result<()> {
        self.0.put(instance, digest, data).await
    }
    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<remexec_core::ChunkStream>> {
        self.0.get(instance, digest, range).await
    }
}

/// With an index of what each member holds: "missing" is answered without asking when every
/// member that could hold a blob is synced and lacks it; "present" only from a reference the
/// members answered in the last minute, passed on again in the background; an unsynced member
/// and a change of members send the questions back to the members.
#[tokio::test]
async fn the_holder_index_answers_missing_and_recent_references_answer_present() {
    use remexec_proto::cluster::v1::{BlobSet, WatchResponse};
    let names = ["a", "b", "c"];
    let asked: Vec<Arc<Asked>> = names
        .iter()
        .map(|_| Arc::new(Asked(MemoryStore::new(1 << 30), Default::default())))
        .collect();
    let store = Arc::new(ReplicatedStore::new(2).unwrap());
    let as_members = |n: usize| {
        names[..n]
            .iter()
            .zip(&asked)
            .map(|(n, s)| (n.to_string(), Arc::clone(s) as Arc<dyn BlobStore>))
            .collect::<Vec<_>>()
    };
    store.set_members(as_members(3));
    let (_live, watched) = tokio::sync::watch::channel(Vec::new());
    let index = store.index_holders(watched, Default::default(), super::CONFIRMED_FOR);
    let present: Vec<Digest> = (0..10).map(|i| blob(i).0).collect();
    let absent: Vec<Digest> = (10..20).map(|i| blob(i).0).collect();
    for i in 0..10 {
        store.put_bytes("i", blob(i).0, blob(i).1).await.unwrap();
    }
    // Each member's snapshot: what it holds.
    for (name, member) in names.iter().zip(&asked) {
        let mut held = Vec::new();
        for d in &present {
            if member.0.contains("i", *d).await.unwrap() {
                held.push(d.to_proto());
            }
        }
        let added = vec![BlobSet {
            instance_name: "i".into(),
            digest_function: DigestFunction::Sha256.to_proto(),
            digests: held,
        }];
        index.apply(
            name,
            WatchResponse {
                added,
                removed: Vec::new(),
                synced: true,
            },
        );
    }
    let take = || asked.iter().map(|a| a.take()).sum::<usize>();
    take();
    assert_eq!(store.find_missing("i", &absent).await.unwrap(), absent);
    assert_eq!(take(), 0, "no member was asked about blobs none holds");
    // Present blobs are asked about, until a reference confirms them.
    assert!(store.find_missing("i", &present).await.unwrap().is_empty());
    assert!(take() >= present.len());
    assert!(store.reference("i", &present).await.unwrap().is_empty());
    assert!(take() >= present.len());
    let mut all = present.clone();
    all.extend(&absent);
    assert_eq!(store.reference("i", &all).await.unwrap(), absent);
    assert_eq!(take(), 0, "answered from the confirmations and the index");
    // An unsynced member: what it might hold is asked about.
    index.reset("a", false);
    assert_eq!(store.find_missing("i", &absent).await.unwrap(), absent);
    assert!(take() > 0);
    // The references answered locally are passed on after RENEW_AFTER, in the background;
    // a change of members drops the confirmations.
    store.set_members(as_members(2));
    take();
    assert!(store.reference("i", &present).await.unwrap().is_empty());
    assert!(take() >= present.len());
}

/// With a roster, a member this instance cannot reach stays in every blob's placement; its
/// blobs are routed to (and written on) the next member each ranks, as over the reachable
/// members alone; and another instance that reaches every member places the same.
#[tokio::test]
async fn a_member_cut_off_stays_in_the_placement_and_writes_go_to_the_next_ranked() {
    let ms = members(4);
    let roster: Vec<String> = ms.iter().map(|(n, _)| n.clone()).collect();
    let cut_off = replicated(2, &ms[..0].to_vec());
    cut_off.set_roster(roster.clone());
    cut_off.set_members(
        ms.iter()
            .filter(|(n, _)| n != "w2")
            .map(|(n, s)| (n.clone(), s.clone() as Arc<dyn BlobStore>)),
    );
    let whole = replicated(2, &ms);
    whole.set_roster(roster.clone());
    let reachable = remexec_core::placement::Placement::new(["w0", "w1", "w3"]);
    assert_eq!(cut_off.unreachable(), ["w2"]);
    assert!(whole.unreachable().is_empty());
    let mut routed_past = 0;
    for i in 0..40 {
        let (d, data) = blob(i);
        assert_eq!(cut_off.placement(&d), whole.placement(&d), "blob {i}");
        assert_eq!(whole.placement(&d), whole.locate(&d));
        let route: Vec<String> = reachable
            .replicas(&d, 2)
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(cut_off.locate(&d), route, "blob {i}");
        if cut_off.placement(&d).contains(&"w2".to_string()) {
            routed_past += 1;
        }
        cut_off.put_bytes("i", d, data).await.unwrap();
        let mut expected = route.clone();
        expected.sort();
        assert_eq!(holders(&ms, d).await, expected, "blob {i}");
    }
    assert!(routed_past > 0, "no blob of 40 belongs on w2");
}
