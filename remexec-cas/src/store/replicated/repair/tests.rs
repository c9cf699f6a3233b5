//! Repairer against a local disk store and memory members: it restores every blob's
//! placement, copies nothing twice, leaves blobs whose placement already holds them alone when
//! it is outside the placement, and counts what a failing member leaves.

use std::sync::Arc;

use bytes::Bytes;
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction};

use super::Repairer;
use crate::store::memory::MemoryStore;
use crate::store::replicated::ReplicatedStore;
use crate::store::replicated::tests::Broken;
use crate::{DiskStore, DiskStoreOptions};

fn blob(i: usize) -> (Digest, Bytes) {
    let data = Bytes::from(format!("repair me {i}").repeat(i + 1));
    (DigestFunction::Sha256.digest_of(&data), data)
}

async fn disk(dir: &std::path::Path) -> DiskStore {
    let options = DiskStoreOptions {
        budget: 1 << 30,
        sync: false,
        ..Default::default()
    };
    DiskStore::open(dir, options).await.unwrap()
}

#[tokio::test]
async fn a_pass_restores_every_placement_and_a_second_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let local = disk(dir.path()).await;
    let others: Vec<(String, Arc<MemoryStore>)> = ["b", "c", "d"]
        .iter()
        .map(|n| (n.to_string(), Arc::new(MemoryStore::new(1 << 30))))
        .collect();
    let cluster = Arc::new(ReplicatedStore::new(2).unwrap());
    let mut members: Vec<(String, Arc<dyn BlobStore>)> =
        vec![("a".into(), Arc::new(local.clone()))];
    members.extend(
        others
            .iter()
            .map(|(n, s)| (n.clone(), s.clone() as Arc<dyn BlobStore>)),
    );
    cluster.set_members(members);
    // 40 blobs held only by "a", in two instances.
    let blobs: Vec<(&str, Digest, Bytes)> = (0..40)
        .map(|i| {
            let (d, data) = blob(i);
            (if i % 2 == 0 { "" } else { "team/x" }, d, data)
        })
        .collect();
    for (instance, d, data) in &blobs {
        local.put_bytes(instance, *d, data.clone()).await.unwrap();
    }
    // One blob outside a's placement is already on its placement members: not copied.
    let (held_instance, held, held_data) = blobs
        .iter()
        .find(|(_, d, _)| !cluster.locate(d).contains(&"a".to_string()))
        .unwrap()
        .clone();
    for (name, store) in &others {
        if cluster.locate(&held).contains(name) {
            store
                .put_bytes(held_instance, held, held_data.clone())
                .await
                .unwrap();
        }
    }
    let repairer = Repairer::new("a", Arc::new(local.clone()), Arc::clone(&cluster), 0);
    let report = repairer.pass().await.unwrap();
    // Each blob needs one copy if "a" is in its placement, two otherwise; the held one none.
    let expected: u64 = blobs
        .iter()
        .filter(|(_, d, _)| *d != held)
        .map(|(_, d, _)| {
            if cluster.locate(d).contains(&"a".to_string()) {
                1
            } else {
                2
            }
        })
        .sum();
    assert_eq!(report.blobs, 40);
    assert_eq!(report.copied, expected);
    assert_eq!(report.left, 0);
    assert_eq!(repairer.below_replicas(), 0);
    for (instance, d, data) in &blobs {
        for name in cluster.locate(d) {
            let Some((_, store)) = others.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            assert_eq!(
                store
                    .get_bytes(instance, *d, 1 << 20)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(data)
            );
            // Not under another instance's name.
            let other = if instance.is_empty() { "team/x" } else { "" };
            assert!(!store.contains(other, *d).await.unwrap());
        }
    }
    assert_eq!(repairer.pass().await.unwrap().copied, 0);
}

#[tokio::test]
async fn a_failing_member_leaves_copies_for_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let local = disk(dir.path()).await;
    let healthy = Arc::new(MemoryStore::new(1 << 30));
    let cluster = Arc::new(ReplicatedStore::new(3).unwrap());
    cluster.set_members([
        (
            "a".to_string(),
            Arc::new(local.clone()) as Arc<dyn BlobStore>,
        ),
        ("b".to_string(), healthy.clone() as Arc<dyn BlobStore>),
        ("c".to_string(), Arc::new(Broken) as Arc<dyn BlobStore>),
    ]);
    for i in 0..5 {
        let (d, data) = blob(i);
        local.put_bytes("", d, data).await.unwrap();
    }
    let repairer = Repairer::new("a", Arc::new(local), cluster, 0);
    let report = repairer.pass().await.unwrap();
    assert_eq!((report.copied, report.left), (5, 5));
    assert_eq!(repairer.below_replicas(), 5);
    for i in 0..5 {
        assert!(healthy.contains("", blob(i).0).await.unwrap());
    }
}

#[tokio::test]
async fn instance_names_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = blob(1);
    {
        let store = disk(dir.path()).await;
        store.put_bytes("a/b", d, data.clone()).await.unwrap();
        store.put_bytes("", d, data.clone()).await.unwrap();
    }
    let mut blobs = disk(dir.path()).await.blobs();
    blobs.sort();
    assert_eq!(blobs, vec![(String::new(), d), ("a/b".to_string(), d)]);
}

/// A referenced blob's copy is referenced on its new member too; a periodic (referenced) pass
/// restores referenced blobs only, a full pass the others as well, unreferenced.
#[tokio::test]
async fn references_travel_with_copies_and_periodic_passes_restore_only_referenced_blobs() {
    use remexec_core::ListBlobs;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (disk(dir_a.path()).await, disk(dir_b.path()).await);
    let cluster = Arc::new(ReplicatedStore::new(2).unwrap());
    cluster.set_members([
        ("a".to_string(), Arc::new(a.clone()) as Arc<dyn BlobStore>),
        ("b".to_string(), Arc::new(b.clone()) as Arc<dyn BlobStore>),
    ]);
    let blobs: Vec<_> = (0..6).map(blob).collect();
    for (d, data) in &blobs {
        a.put_bytes("", *d, data.clone()).await.unwrap();
    }
    let referenced: Vec<Digest> = blobs[..3].iter().map(|(d, _)| *d).collect();
    assert!(a.reference("", &referenced).await.unwrap().is_empty());
    let repairer = Repairer::new("a", Arc::new(a.clone()), Arc::clone(&cluster), 0);
    let report = repairer.referenced_pass().await.unwrap();
    assert_eq!((report.blobs, report.copied, report.left), (3, 3, 0));
    for (i, (d, _)) in blobs.iter().enumerate() {
        assert_eq!(b.contains("", *d).await.unwrap(), i < 3, "blob {i}");
        assert_eq!(b.referenced("", d), i < 3, "blob {i}");
    }
    let report = repairer.pass().await.unwrap();
    assert_eq!((report.blobs, report.copied), (6, 3));
    for (i, (d, _)) in blobs.iter().enumerate() {
        assert!(b.contains("", *d).await.unwrap());
        assert_eq!(b.referenced("", d), i < 3, "blob {i}");
    }
}

/// A member whose budget is full of referenced blobs refuses a copy before reading it (the
/// disk store checks for room before it reads an upload): the pass leaves it for later and
/// the member loses none of its referenced blobs.
#[tokio::test]
async fn a_member_full_of_referenced_blobs_refuses_copies_and_keeps_its_own() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = disk(dir_a.path()).await;
    let full = DiskStoreOptions {
        budget: 200,
        sync: false,
        ..Default::default()
    };
    let b = DiskStore::open(dir_b.path(), full).await.unwrap();
    let own = Bytes::from(vec![7u8; 200]);
    let own_digest = DigestFunction::Sha256.digest_of(&own);
    b.put_bytes("", own_digest, own).await.unwrap();
    assert!(b.reference("", &[own_digest]).await.unwrap().is_empty());
    let cluster = Arc::new(ReplicatedStore::new(2).unwrap());
    cluster.set_members([
        ("a".to_string(), Arc::new(a.clone()) as Arc<dyn BlobStore>),
        ("b".to_string(), Arc::new(b.clone()) as Arc<dyn BlobStore>),
    ]);
    let (d, data) = blob(3);
    a.put_bytes("", d, data).await.unwrap();
    let repairer = Repairer::new("a", Arc::new(a.clone()), cluster, 0);
    let report = repairer.pass().await.unwrap();
    assert_eq!((report.copied, report.left), (0, 1));
    assert!(b.contains("", own_digest).await.unwrap());
    assert!(!b.contains("", d).await.unwrap());
    assert_eq!(b.usage(), (200, 1));
}

/// A member that counts the writes it is sent and says it has `room` bytes.
#[derive(Debug)]
struct Counting {
    inner: MemoryStore,
    room: u64,
    puts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl BlobStore for Counting {
    async fn find_missing(&self, i: &str, d: &[Digest]) -> remexec_core::Result<Vec<Digest>> {
        self.inner.find_missing(i, d).await
    }
    async fn put(
        &self,
        i: &str,
        d: Digest,
        data: remexec_core::ChunkStream,
    ) -> remexec_core::Result<()> {
        self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put(i, d, data).await
    }
    async fn get(
        &self,
        i: &str,
        d: Digest,
        range: remexec_core::ReadRange,
    ) -> remexec_core::Result<Option<remexec_core::ChunkStream>> {
        self.inner.get(i, d, range).await
    }
    async fn room(&self) -> remexec_core::Result<Option<u64>> {
        Ok(Some(self.room))
    }
}

/// A pass asks each member it copies to for its room first: copies beyond it are left for
/// later and never sent; those within it are made.
#[tokio::test]
async fn a_pass_sends_a_member_no_copy_beyond_the_room_it_says_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let a = disk(dir.path()).await;
    let blobs: Vec<_> = (0..4).map(blob).collect();
    for (d, data) in &blobs {
        a.put_bytes("", *d, data.clone()).await.unwrap();
    }
    let sizes: Vec<u64> = blobs.iter().map(|(d, _)| d.size()).collect();
    // Room for the two smallest blobs (10 and 20 bytes), not for a third.
    for (room, copied) in [(0, 0), (sizes[0] + sizes[1], 2), (1 << 20, 4)] {
        let b = Arc::new(Counting {
            inner: MemoryStore::new(1 << 30),
            room,
            puts: Default::default(),
        });
        let cluster = Arc::new(ReplicatedStore::new(2).unwrap());
        cluster.set_members([
            ("a".to_string(), Arc::new(a.clone()) as Arc<dyn BlobStore>),
            ("b".to_string(), b.clone() as Arc<dyn BlobStore>),
        ]);
        let repairer = Repairer::new("a", Arc::new(a.clone()), cluster, 0);
        let report = repairer.pass().await.unwrap();
        assert_eq!(
            (report.copied, report.left),
            (copied, 4 - copied),
            "room {room}"
        );
        let puts = b.puts.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(puts as u64, copied, "room {room}: copies sent");
    }
}
