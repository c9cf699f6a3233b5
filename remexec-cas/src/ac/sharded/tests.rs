//! ShardedActionCache against memory caches and a real Peer service: conformance, entries on
//! their keepers, answers from any scheduler, refill of a restarted keeper, and a keeper that
//! is down.

use std::sync::Arc;

use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, DigestFunction};

use super::{PeerActionCache, ShardedActionCache};
use crate::MemoryActionCache;
use crate::service::PeerService;

fn result(code: i32) -> ActionResult {
    ActionResult {
        exit_code: code,
        ..Default::default()
    }
}

fn action(i: usize) -> Digest {
    DigestFunction::Sha256.digest_of(format!("action {i}").as_bytes())
}

/// Three schedulers' views: each a sharded cache over its own memory cache, peers in-process.
fn cluster() -> (Vec<Arc<ShardedActionCache>>, Vec<Arc<MemoryActionCache>>) {
    let locals: Vec<Arc<MemoryActionCache>> = (0..3)
        .map(|_| Arc::new(MemoryActionCache::new(1 << 20)))
        .collect();
    let names = ["s0", "s1", "s2"];
    let sharded: Vec<Arc<ShardedActionCache>> = (0..3)
        .map(|i| {
            let s = ShardedActionCache::new(names[i], locals[i].clone(), 2).unwrap();
            s.set_peers((0..3).filter(|j| *j != i).map(|j| {
                (
                    names[j].to_string(),
                    locals[j].clone() as Arc<dyn ActionCache>,
                )
            }));
            Arc::new(s)
        })
        .collect();
    (sharded, locals)
}

#[tokio::test]
async fn conformance() {
    let (sharded, _) = cluster();
    remexec_core::testing::action_cache_conformance(sharded[0].clone()).await;
}

#[tokio::test]
async fn entries_live_on_their_two_keepers_and_any_scheduler_answers() {
    let (sharded, locals) = cluster();
    for i in 0..30 {
        sharded[i % 3]
            .put("", action(i), result(i as i32))
            .await
            .unwrap();
    }
    for i in 0..30 {
        let keepers = sharded[0].keepers(&action(i));
        assert_eq!(keepers.len(), 2);
        for (j, local) in locals.iter().enumerate() {
            let held = local.get("", action(i)).await.unwrap().is_some();
            assert_eq!(
                held,
                keepers.contains(&format!("s{j}")),
                "action {i} on s{j}"
            );
        }
        for s in &sharded {
            assert_eq!(s.get("", action(i)).await.unwrap(), Some(result(i as i32)));
        }
    }
}

#[tokio::test]
async fn a_restarted_keeper_refills_from_its_peer_and_a_dead_one_is_skipped() {
    let (sharded, locals) = cluster();
    let a = action(7);
    sharded[0].put("", a, result(7)).await.unwrap();
    let keepers = sharded[0].keepers(&a);
    let k: usize = keepers[0][1..].parse().unwrap();
    let other: usize = keepers[1][1..].parse().unwrap();
    // Keeper k restarts empty: asked, it answers from the other keeper and keeps the entry.
    let fresh = Arc::new(MemoryActionCache::new(1 << 20));
    let restarted = ShardedActionCache::new(format!("s{k}"), fresh.clone(), 2).unwrap();
    restarted.set_peers(
        (0..3)
            .filter(|j| *j != k)
            .map(|j| (format!("s{j}"), locals[j].clone() as Arc<dyn ActionCache>)),
    );
    assert_eq!(restarted.get("", a).await.unwrap(), Some(result(7)));
    assert_eq!(fresh.get("", a).await.unwrap(), Some(result(7)));
    // With one keeper down, the other answers; with both down and nothing here, an error.
    let broken = |name: usize| (format!("s{name}"), Arc::new(Down) as Arc<dyn ActionCache>);
    let third = 3 - k - other;
    let lonely = ShardedActionCache::new(format!("s{third}"), locals[third].clone(), 2).unwrap();
    lonely.set_peers([
        broken(k),
        (
            format!("s{other}"),
            locals[other].clone() as Arc<dyn ActionCache>,
        ),
    ]);
    assert_eq!(lonely.get("", a).await.unwrap(), Some(result(7)));
    lonely.set_peers([broken(k), broken(other)]);
    assert!(lonely.get("", a).await.is_err());
    // A put reaching one keeper succeeds.
    lonely.set_peers([
        broken(k),
        (
            format!("s{other}"),
            locals[other].clone() as Arc<dyn ActionCache>,
        ),
    ]);
    lonely.put("", action(8), result(8)).await.unwrap();
}

/// A peer that is down.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl ActionCache for Down {
    async fn get(&self, _: &str, _: Digest) -> remexec_core::Result<Option<ActionResult>> {
        Err(remexec_core::Error::Unavailable("down".into()))
    }
    async fn put(&self, _: &str, _: Digest, _: ActionResult) -> remexec_core::Result<()> {
        Err(remexec_core::Error::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn the_peer_service_answers_from_its_own_cache_and_checks_requests() {
    let local = Arc::new(MemoryActionCache::new(1 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerService::new(local.clone()).into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = remexec_core::client::connect(&format!("grpc://{addr}"))
        .await
        .unwrap();
    let peer = PeerActionCache::new(channel.clone());
    remexec_core::testing::action_cache_conformance(Arc::new(peer.clone())).await;
    peer.put("x", action(1), result(1)).await.unwrap();
    assert_eq!(local.get("x", action(1)).await.unwrap(), Some(result(1)));
    // A bad instance name is refused, not stored.
    let bad = peer.put("../etc", action(2), result(2)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
}
