//! A replicated CAS over real gRPC members on loopback, following a `Membership`: each blob on
//! 2 of 3 members, nothing lost when one is killed, writes refused when too few are left.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remexec_cas::store::replicated::ReplicatedStore;
use remexec_cas::{CacheServices, MemoryActionCache, MemoryStore};
use remexec_core::membership::{Membership, MembershipConfig};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error};

/// A member: a CAS over a memory store with the health service, on a runtime of its own in a
/// thread; sending on the returned sender kills it, connections included.
fn member() -> (String, Arc<MemoryStore>, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let store = Arc::new(MemoryStore::new(1 << 30));
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let served = Arc::clone(&store);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = futures::stream::unfold(listener, |l| async move {
                Some((l.accept().await.map(|(s, _)| s), l))
            });
            let (_health, health) = tonic_health::server::health_reporter();
            let routes = CacheServices::new(served, Arc::new(MemoryActionCache::new(1 << 20)))
                .into_routes()
                .add_service(health);
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await;
        });
        runtime.block_on(async {
            while killed.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    });
    (url, store, kill)
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn blob(i: usize) -> (Digest, Bytes) {
    let data = Bytes::from(format!("cluster blob {i}").repeat(100));
    (DigestFunction::Sha256.digest_of(&data), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_cas_loses_nothing_when_a_member_dies() {
    let mut members: Vec<_> = (0..3).map(|_| member()).collect();
    let mut config = MembershipConfig::new(members.iter().map(|(u, _, _)| u.clone()).collect());
    config.interval = Duration::from_millis(50);
    config.dead_after = Duration::from_millis(300);
    let membership = Membership::start(config).unwrap();
    let store = Arc::new(ReplicatedStore::new(2).unwrap());
    let _follow = Arc::clone(&store).follow(membership.members(), Default::default(), None);
    until("three members", || membership.live().len() == 3).await;
    until("three members in the store", || store.members().len() == 3).await;
    let blobs: Vec<_> = (0..30).map(blob).collect();
    for (d, data) in &blobs {
        store.put_bytes("", *d, data.clone()).await.unwrap();
    }
    // Each blob is on exactly the 2 members placement names.
    for (d, _) in &blobs {
        let mut holders = Vec::new();
        for (url, memory, _) in &members {
            if memory.contains("", *d).await.unwrap() {
                holders.push(url.clone());
            }
        }
        let mut placed = store.locate(d);
        placed.sort();
        holders.sort();
        assert_eq!(holders, placed);
    }
    // Kill one member: every blob is still there, through the other replica.
    let (dead, _, kill) = members.remove(0);
    kill.send(()).unwrap();
    until("the dead member leaves", || {
        !membership.live().contains(&dead)
    })
    .await;
    until("the store follows", || !store.members().contains(&dead)).await;
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    assert!(store.find_missing("", &digests).await.unwrap().is_empty());
    for (d, data) in &blobs {
        assert_eq!(
            store.get_bytes("", *d, 1 << 20).await.unwrap().as_ref(),
            Some(data)
        );
    }
    // Two members left: writes still reach 2 replicas. With one, they are refused.
    let (d, data) = blob(100);
    store.put_bytes("", d, data.clone()).await.unwrap();
    let (_, _, kill) = members.remove(0);
    kill.send(()).unwrap();
    until("one member left", || membership.live().len() == 1).await;
    until("the store follows", || store.members().len() == 1).await;
    let refused = store
        .put_bytes("", blob(101).0, blob(101).1)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Unavailable(_)), "{refused:?}");
}

/// Where hashing happens is the tree's: a plain store gets one `VerifyingStore` in front, a
/// store that verifies gets none, and a cluster's replicated store leaves hashing to the
/// members' ports, which still refuse a blob that does not hash to its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_hashed_once_where_the_tree_says_and_a_bad_one_is_still_refused() {
    use remexec_cas::VerifyingStore;
    let ac = Arc::new(MemoryActionCache::new(1 << 20));
    let memory: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(1 << 20));
    let hashes =
        |services: &CacheServices| services.store().to_string().matches("Verifying(").count();
    assert_eq!(hashes(&CacheServices::new(memory.clone(), ac.clone())), 1);
    let verifying: Arc<dyn BlobStore> = Arc::new(VerifyingStore::new(memory));
    assert_eq!(hashes(&CacheServices::new(verifying, ac.clone())), 1);

    let members: Vec<_> = (0..2).map(|_| member()).collect();
    let mut config = MembershipConfig::new(members.iter().map(|(u, _, _)| u.clone()).collect());
    config.interval = Duration::from_millis(50);
    let membership = Membership::start(config).unwrap();
    let store = Arc::new(ReplicatedStore::new(2).unwrap());
    let _follow = Arc::clone(&store).follow(membership.members(), Default::default(), None);
    until("two members in the store", || store.members().len() == 2).await;
    let services = CacheServices::new(store.clone(), ac);
    assert_eq!(hashes(&services), 0, "{}", services.store());

    let (digest, data) = blob(7);
    let forged = Bytes::from(vec![b'x'; data.len()]);
    let refused = services
        .store()
        .put_bytes("", digest, forged)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidArgument(_)), "{refused:?}");
    for (url, memory, _) in &members {
        assert!(
            !memory.contains("", digest).await.unwrap(),
            "{url} kept a forged blob"
        );
    }
    services.store().put_bytes("", digest, data).await.unwrap();
    for (url, memory, _) in &members {
        assert!(memory.contains("", digest).await.unwrap(), "{url}");
    }
}

/// A worker's share of the cluster's CAS (`name`, keeping `replicas`) on a loopback port,
/// following the storage plane's `seeds`, served until the returned token is cancelled.
async fn worker_cas(
    name: &str,
    replicas: u32,
    listener: std::net::TcpListener,
    seeds: &[String],
    dir: &std::path::Path,
) -> tokio_util::sync::CancellationToken {
    use remexec_cas::cluster::{WorkerCas, WorkerCasOptions, storage_membership};
    let disk = remexec_cas::DiskStore::open(dir.join(name), Default::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let options = WorkerCasOptions::new(replicas);
    let cas = WorkerCas::bind(Arc::new(disk), addr, None, name, options)
        .await
        .unwrap();
    let storage = storage_membership(seeds.to_vec(), replicas, Default::default(), Some(name));
    let stop = tokio_util::sync::CancellationToken::new();
    let metrics = remexec_core::metrics::Metrics::new();
    let storage = storage.unwrap();
    let (listener, routes) = cas.start(&storage, name, Default::default(), &metrics, stop.clone());
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    let until = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
            .await;
    });
    stop
}

/// Workers named `names`, keeping `replicas`, on loopback ports that are all the storage
/// plane's seeds: the seeds, and the tokens that stop each worker.
async fn workers(
    names: &[&str],
    replicas: u32,
    dir: &std::path::Path,
) -> (Vec<String>, Vec<tokio_util::sync::CancellationToken>) {
    let ports: Vec<_> = names
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let seeds: Vec<String> = ports
        .iter()
        .map(|l| format!("grpc://{}", l.local_addr().unwrap()))
        .collect();
    let mut stops = Vec::new();
    for (i, (name, port)) in names.iter().zip(ports).enumerate() {
        let dir = dir.join(i.to_string());
        stops.push(worker_cas(name, replicas, port, &seeds, &dir).await);
    }
    (seeds, stops)
}

/// The storage plane has a membership of its own: the workers' CAS ports its seeds list, each
/// named as it names itself. A port keeping another replica count, and a port that is no
/// worker's, are not members; a stopped worker leaves. Schedulers and workers following the
/// same seeds see the same members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_plane_is_the_workers_cas_ports_its_seeds_list() {
    use remexec_cas::cluster::storage_membership;
    use remexec_core::membership::Member;
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|l| format!("grpc://{}", l.local_addr().unwrap()))
        .collect();
    let (plain, _, _kill_plain) = member();
    let seeds: Vec<String> = urls.iter().cloned().chain([plain]).collect();
    let mut ports = ports.into_iter();
    let mut stops = Vec::new();
    for (name, replicas) in [("w1", 2), ("w2", 2), ("odd", 3)] {
        let port = ports.next().unwrap();
        stops.push(worker_cas(name, replicas, port, &seeds, dir.path()).await);
    }
    let scheduler = storage_membership(seeds.clone(), 2, Default::default(), None).unwrap();
    let other = storage_membership(seeds.clone(), 2, Default::default(), None).unwrap();
    let want = vec![
        Member {
            name: "w1".into(),
            url: urls[0].clone(),
        },
        Member {
            name: "w2".into(),
            url: urls[1].clone(),
        },
    ];
    let (a, b) = (scheduler.members(), other.members());
    let deadline = Duration::from_secs(30);
    let agreed = || *a.borrow() == want && *b.borrow() == want;
    let started = Instant::now();
    while !agreed() {
        assert!(
            started.elapsed() < deadline,
            "{:?} {:?}",
            a.borrow(),
            b.borrow()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A worker keeping another count sees no other member; the others never see it.
    let odd = storage_membership(seeds.clone(), 3, Default::default(), Some("odd")).unwrap();
    let odd_members = odd.members();
    until("the odd worker sees itself", || {
        odd_members.borrow().len() == 1
    })
    .await;
    assert_eq!(odd_members.borrow()[0].name, "odd");
    // A stopped worker leaves, within the detection time.
    stops[1].cancel();
    let started = Instant::now();
    while a.borrow().len() != 1 {
        assert!(started.elapsed() < deadline, "{:?}", a.borrow());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.borrow()[0].name, "w1");
    assert!(storage_membership(Vec::new(), 2, Default::default(), None).is_err());
}

/// The spec tree reaches the storage plane: `Metered(Replicated(…))` over two workers' CAS
/// ports puts a blob on both and counts its bytes; it prints as the tree, and a write hashes
/// only at the members' ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_tree_builds_a_metered_replicated_store_over_the_storage_plane() {
    use remexec_cas::spec::StoreSpec;
    let dir = tempfile::tempdir().unwrap();
    let (seeds, stops) = workers(&["w1", "w2"], 2, dir.path()).await;
    let spec = StoreSpec::Metered(Box::new(StoreSpec::Replicated {
        replicas: 2,
        storage: seeds.clone(),
        tls: Default::default(),
    }));
    assert_eq!(
        spec.to_string(),
        format!("Metered(Replicated(R=2, storage {seeds:?}))")
    );
    let metrics = remexec_core::metrics::Metrics::new();
    let store = spec.build_with(&metrics).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.to_string() != r#"Metered(Replicated(R=2, ["w1", "w2"]))"# {
        assert!(Instant::now() < deadline, "{store}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The members' ports verify: a cache service over it adds no hashing of its own.
    assert!(store.verifies_writes());
    let (digest, data) = blob(11);
    store.put_bytes("", digest, data.clone()).await.unwrap();
    for seed in &seeds {
        let channel = remexec_core::client::connect_lazy(seed).unwrap();
        let member = remexec_cas::GrpcStore::new(channel);
        assert!(member.contains("", digest).await.unwrap(), "{seed}");
    }
    let text = metrics.encode();
    let received = format!("remexec_cas_received_bytes_total {}", data.len());
    assert!(text.contains(&received), "{text}");
    for stop in stops {
        stop.cancel();
    }
}

/// CAS ports whose worker names are hostile (a control character, 200 bytes) are no members
/// of the storage plane, nor of the placement that follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_worker_names_are_no_members() {
    use remexec_cas::cluster::{scheduler_cas, storage_membership};
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(200);
    let names = ["w1", "bad\nname", long.as_str(), "w2"];
    let (seeds, _stops) = workers(&names, 2, dir.path()).await;
    let storage = storage_membership(seeds.clone(), 2, Default::default(), None).unwrap();
    let members = storage.members();
    let metrics = remexec_core::metrics::Metrics::new();
    let (store, _) = scheduler_cas(2, &storage, Default::default(), &metrics).unwrap();
    let names_of = |m: &[remexec_core::membership::Member]| {
        m.iter().map(|m| m.name.clone()).collect::<Vec<_>>()
    };
    until("the two well-named ports are members", || {
        names_of(&members.borrow()) == ["w1", "w2"]
    })
    .await;
    until("the placement is over them", || {
        store.members() == ["w1", "w2"]
    })
    .await;
    // Still so a while later: the hostile names never join.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(names_of(&members.borrow()), ["w1", "w2"]);
    assert_eq!(store.members(), ["w1", "w2"]);
}

/// A scheduler's index follows the workers' real `Cluster/Watch` streams: each worker's
/// snapshot, then every blob stored; and it answers for blobs no worker holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_indexes_what_each_worker_holds_through_their_watch_streams() {
    use remexec_cas::cluster::{scheduler_cas, storage_membership};
    let dir = tempfile::tempdir().unwrap();
    let (seeds, stops) = workers(&["w1", "w2", "w3"], 2, dir.path()).await;
    let storage = storage_membership(seeds.clone(), 2, Default::default(), None).unwrap();
    let metrics = remexec_core::metrics::Metrics::new();
    let (store, _) = scheduler_cas(2, &storage, Default::default(), &metrics).unwrap();
    until("three members", || store.members().len() == 3).await;
    let index = store.holder_index().unwrap();
    // Some blobs before the index is asked about, some after it synced.
    for i in 0..5 {
        let (d, data) = blob(i);
        store.put_bytes("team", d, data).await.unwrap();
    }
    until("three synced watches and ten copies", || {
        index.size() == (3, 10)
    })
    .await;
    for i in 5..10 {
        let (d, data) = blob(i);
        store.put_bytes("team", d, data).await.unwrap();
    }
    until("twenty copies", || index.size() == (3, 20)).await;
    let present: Vec<Digest> = (0..10).map(|i| blob(i).0).collect();
    let absent: Vec<Digest> = (10..15).map(|i| blob(i).0).collect();
    let mut all = present.clone();
    all.extend(&absent);
    assert_eq!(store.find_missing("team", &all).await.unwrap(), absent);
    assert_eq!(store.reference("team", &all).await.unwrap(), absent);
    // Another instance's blobs are not these.
    assert_eq!(
        store.find_missing("other", &present).await.unwrap(),
        present
    );
    // A worker stopped: its watch ends, and it leaves the index with the membership.
    stops[2].cancel();
    until("two synced watches", || index.size().0 == 2).await;
}

/// A worker's CAS port says its room over gRPC (`Cluster/Status`): its budget less its
/// referenced blobs, which a reference lowers. A CAS that is no worker's cannot say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_port_says_its_room_and_another_cas_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, _stops) = workers(&["w1"], 1, dir.path()).await;
    let channel = remexec_core::client::connect_lazy(&seeds[0]).unwrap();
    let port = remexec_cas::GrpcStore::new(channel);
    let budget = remexec_cas::DiskStoreOptions::default().budget;
    let mut room = None;
    for _ in 0..100 {
        room = port.room().await.ok().flatten();
        if room.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(room, Some(budget));
    let (d, data) = blob(1);
    port.put_bytes("", d, data).await.unwrap();
    assert_eq!(port.room().await.unwrap(), Some(budget));
    assert!(port.reference("", &[d]).await.unwrap().is_empty());
    assert_eq!(port.room().await.unwrap(), Some(budget - d.size()));
    let (url, _store, _kill) = member();
    let other = remexec_cas::GrpcStore::new(remexec_core::client::connect_lazy(&url).unwrap());
    assert_eq!(other.room().await.unwrap(), None);
}

/// Workers report their keep time; a scheduler (or worker) that assumes another keeps none of
/// them as members, and one that assumes theirs keeps them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_keeping_referenced_blobs_another_time_is_refused() {
    use remexec_cas::cluster::{StorageTerms, storage_membership_with};
    let dir = tempfile::tempdir().unwrap();
    let (seeds, _stops) = workers(&["w1", "w2"], 2, dir.path()).await;
    let mut odd = StorageTerms::new(2);
    odd.keep_referenced = Duration::from_secs(60);
    let other = storage_membership_with(seeds.clone(), odd, Default::default(), None).unwrap();
    let same = storage_membership_with(seeds, StorageTerms::new(2), Default::default(), None);
    let (same, other) = (same.unwrap().members(), other.members());
    until("both workers are members at the same keep time", || {
        same.borrow().len() == 2
    })
    .await;
    // By then the other has asked them too (the same rounds), and refused both.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(other.borrow().is_empty(), "{:?}", other.borrow());
}
