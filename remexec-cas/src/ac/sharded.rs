//! [`ShardedActionCache`]: the Action Cache shared by a cluster's schedulers, each entry kept
//! by `R` of them, chosen by rendezvous hashing ([`Placement`]) over the live schedulers. Any
//! scheduler answers for any key; the keepers are asked over remexec's `Peer` service
//! ([`PeerService`](crate::service::PeerService)), which answers from the callee's own cache.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use remexec_core::client::ClientTls;
use remexec_core::membership::Member;
use remexec_core::placement::Placement;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Error, Result};
use remexec_proto::cluster::v1::peer_client::PeerClient;
use remexec_proto::reapi::{GetActionResultRequest, UpdateActionResultRequest};
use tonic::transport::Channel;

/// Another scheduler's own Action Cache, reached over its `Peer` service.
#[derive(Debug, Clone)]
pub struct PeerActionCache {
    channel: Channel,
}

impl PeerActionCache {
    /// The cache of the scheduler behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

/// A Peer client taking and sending messages as large as the ActionCache service does.
fn peer_client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel)
        .max_decoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
}

#[async_trait]
impl ActionCache for PeerActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let request = GetActionResultRequest {
            instance_name: instance.to_string(),
            action_digest: Some(action.to_proto()),
            digest_function: action.function().to_proto(),
            ..Default::default()
        };
        match peer_client(self.channel.clone())
            .get_action_result(request)
            .await
        {
            Ok(answer) => Ok(Some(answer.into_inner())),
            Err(status) => match Error::from(status) {
                Error::NotFound(_) => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let request = UpdateActionResultRequest {
            instance_name: instance.to_string(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: action.function().to_proto(),
        };
        peer_client(self.channel.clone())
            .update_action_result(request)
            .await?;
        Ok(())
    }
}

/// A keeper of an entry other than this scheduler: its name and cache.
type Keeper = (String, Arc<dyn ActionCache>);

#[derive(Debug, Default)]
struct View {
    placement: Placement,
    peers: HashMap<String, Arc<dyn ActionCache>>,
}

/// Each entry on `replicas` schedulers of the cluster; this one is `name`, its own cache
/// `local`.
///
/// - `get` asks this scheduler's own cache, then the keepers in placement order; an entry
///   found at a peer while this scheduler is a keeper is copied here (a restarted scheduler
///   refills as it is asked). A keeper that fails is skipped; `Err` only if every one asked
///   failed.
/// - `put` stores the entry on every keeper, and succeeds once one holds it (a keeper that is
///   down is only logged: the cache must not fail builds).
#[derive(Debug)]
pub struct ShardedActionCache {
    name: String,
    local: Arc<dyn ActionCache>,
    replicas: usize,
    view: RwLock<View>,
}

impl ShardedActionCache {
    /// Scheduler `name`'s share, over `local`; alone until [`set_peers`](Self::set_peers) or
    /// [`follow`](Self::follow). `InvalidArgument` unless `replicas` is 1 to 3.
    pub fn new(
        name: impl Into<String>,
        local: Arc<dyn ActionCache>,
        replicas: usize,
    ) -> Result<Self> {
        if !(1..=3).contains(&replicas) {
            return Err(Error::invalid(format!(
                "replicas must be 1 to 3, not {replicas}"
            )));
        }
        let name = name.into();
        let view = View {
            placement: Placement::new([name.clone()]),
            peers: HashMap::new(),
        };
        Ok(Self {
            name,
            local,
            replicas,
            view: RwLock::new(view),
        })
    }

    /// Replaces the other schedulers (by name); this one is always a member.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = (String, Arc<dyn ActionCache>)>) {
        let peers: HashMap<String, Arc<dyn ActionCache>> =
            peers.into_iter().filter(|(n, _)| *n != self.name).collect();
        let names = peers.keys().cloned().chain([self.name.clone()]);
        *self.view.write() = View {
            placement: Placement::new(names),
            peers,
        };
    }

    /// Keeps the peers in step with `live` (each reached through its URL's `Peer` service,
    /// with `tls`); the member named as this scheduler is left out. The task ends when
    /// `live`'s sender is gone.
    pub fn follow(
        self: Arc<Self>,
        live: tokio::sync::watch::Receiver<Vec<Member>>,
        tls: ClientTls,
    ) -> tokio::task::JoinHandle<()> {
        let own = self.name.clone();
        let others = move |m: &Member| m.name != own;
        remexec_core::membership::follow(live, tls, others, move |members, channels| {
            let peers = members
                .iter()
                .filter(|m| m.name != self.name)
                .filter_map(|m| {
                    let cache: Arc<dyn ActionCache> =
                        Arc::new(PeerActionCache::new(channels.get(&m.url)?.clone()));
                    Some((m.name.clone(), cache))
                });
            self.set_peers(peers);
        })
    }

    /// The schedulers that keep `action`'s entry, best first.
    pub fn keepers(&self, action: &Digest) -> Vec<String> {
        self.view
            .read()
            .placement
            .replica_names(action, self.replicas)
    }

    /// The keepers of `action` other than this scheduler, with their caches.
    fn peers_of(&self, action: &Digest) -> (bool, Vec<Keeper>) {
        let view = self.view.read();
        let keepers = view.placement.replicas(action, self.replicas);
        let here = keepers.contains(&self.name.as_str());
        let peers = keepers
            .into_iter()
            .filter_map(|k| view.peers.get(k).map(|c| (k.to_string(), Arc::clone(c))))
            .collect();
        (here, peers)
    }
}

#[async_trait]
impl ActionCache for ShardedActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let mut failure = match self.local.get(instance, action).await {
            Ok(Some(result)) => return Ok(Some(result)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let (here, peers) = self.peers_of(&action);
        // Only a keeper's miss is a miss; this scheduler's, when it keeps no such entry, is not.
        let mut answered = here && failure.is_none();
        for (peer, cache) in peers {
            match cache.get(instance, action).await {
                Ok(Some(result)) => {
                    if here && let Err(e) = self.local.put(instance, action, result.clone()).await {
                        tracing::warn!(%action, error = %e, "could not keep an entry a peer had");
                    }
                    return Ok(Some(result));
                }
                Ok(None) => answered = true,
                Err(e) => {
                    tracing::warn!(%peer, %action, error = %e, "a peer's Action Cache failed");
                    failure = Some(e);
                }
            }
        }
        match (answered, failure) {
            (false, Some(e)) => Err(e),
            _ => Ok(None),
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let (here, peers) = self.peers_of(&action);
        let mut stored = 0;
        let mut failure = None;
        if here || peers.is_empty() {
            match self.local.put(instance, action, result.clone()).await {
                Ok(()) => stored += 1,
                Err(e) => failure = Some(e),
            }
        }
        let puts = peers.iter().map(|(peer, cache)| {
            let result = result.clone();
            async move { (peer, cache.put(instance, action, result).await) }
        });
        for (peer, answer) in futures::future::join_all(puts).await {
            match answer {
                Ok(()) => stored += 1,
                Err(e) => {
                    tracing::warn!(%peer, %action, error = %e, "a peer could not keep an entry");
                    failure = Some(e);
                }
            }
        }
        match (stored, failure) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sharded(R={}, {}, local: {})",
            self.replicas, self.name, self.local
        )
    }
}

#[cfg(test)]
mod tests;
