//! [`HolderIndex`]: which member holds which blob, as each member's `Cluster/Watch` tells it,
//! so that a scheduler answers "missing" without asking when no member that could hold a blob
//! does.
//!
//! The index may lag the members by the time a change takes to arrive: a blob just stored
//! may not be in it yet (the answer then errs toward missing, which costs a client an upload),
//! and a blob just evicted may still be (the index is then not trusted to say present: the
//! members are asked). A member whose watch has not delivered its snapshot, or failed, counts
//! as holding everything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use remexec_core::Digest;
use remexec_core::DigestFunction;
use remexec_core::membership::Member;
use remexec_proto::cluster::v1::cluster_client::ClusterClient;
use remexec_proto::cluster::v1::{BlobSet, WatchRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::key::Key;

/// How long a member's watcher waits before watching again after a failure.
const RETRY: Duration = Duration::from_secs(1);

type Fast = foldhash::fast::RandomState;

/// What one member holds, as far as its watch has told.
#[derive(Debug, Default)]
struct Holdings {
    /// Whether the snapshot has arrived and the watch is still running.
    synced: bool,
    blobs: HashSet<Key, Fast>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct HolderIndex {
    members: Mutex<HashMap<String, Holdings, Fast>>,
}

/// The index held still, for a batch of questions ([`HolderIndex::read`]).
pub(crate) struct Reading<'a>(parking_lot::MutexGuard<'a, HashMap<String, Holdings, Fast>>);

impl Reading<'_> {
    /// Whether each of `members` (every member there is) is indexed and synced, and none
    /// holds `key`: then no placement, current or previous, holds it either.
    pub(crate) fn absent_everywhere<'m>(
        &self,
        key: &Key,
        members: impl ExactSizeIterator<Item = &'m String>,
    ) -> bool {
        self.0.len() == members.len() && self.absent(key, members.map(String::as_str))
    }

    /// Whether none of `members` holds `key`, each of them synced: only then is "missing"
    /// certain enough to answer without asking.
    pub(crate) fn absent<'m>(&self, key: &Key, members: impl IntoIterator<Item = &'m str>) -> bool {
        members.into_iter().all(|m| {
            self.0
                .get(m)
                .is_some_and(|h| h.synced && !h.blobs.contains(key))
        })
    }
}

impl HolderIndex {
    /// Follows `live`: one watch per member, started as it joins and stopped as it leaves.
    pub(crate) fn follow(
        self: &Arc<Self>,
        live: watch::Receiver<Vec<Member>>,
        tls: remexec_core::client::ClientTls,
    ) {
        let index = Arc::clone(self);
        let mut watchers: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
        remexec_core::membership::follow(
            live,
            tls,
            |_| true,
            move |members, channels| {
                let wanted: HashSet<(String, String)> = members
                    .iter()
                    .map(|m| (m.name.clone(), m.url.clone()))
                    .collect();
                watchers.retain(|key, task| {
                    let keep = wanted.contains(key);
                    if !keep {
                        task.abort();
                        index.members.lock().remove(&key.0);
                    }
                    keep
                });
                for (name, url) in wanted {
                    let Some(channel) = channels.get(&url) else {
                        continue;
                    };
                    if watchers.contains_key(&(name.clone(), url.clone())) {
                        continue;
                    }
                    let task =
                        tokio::spawn(Arc::clone(&index).watch(name.clone(), channel.clone()));
                    watchers.insert((name, url), task);
                }
            },
        );
    }

    /// Watches member `name` until aborted, starting again after each failure.
    async fn watch(self: Arc<Self>, name: String, channel: Channel) {
        loop {
            self.reset(&name, false);
            let mut client =
                ClusterClient::new(channel.clone()).max_decoding_message_size(64 << 20);
            match client.watch(WatchRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(response) => self.apply(&name, response),
                            Err(e) => {
                                tracing::debug!(member = %name, error = %e, "watching a member failed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(member = %name, error = %e, "a member cannot be watched"),
            }
            self.reset(&name, false);
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Forgets what `name` holds; `synced` as given.
    pub(crate) fn reset(&self, name: &str, synced: bool) {
        let mut members = self.members.lock();
        let holdings = members.entry(name.to_string()).or_default();
        holdings.blobs.clear();
        holdings.synced = synced;
    }

    /// Applies one response of `name`'s watch.
    pub(crate) fn apply(&self, name: &str, response: remexec_proto::cluster::v1::WatchResponse) {
        let mut members = self.members.lock();
        let holdings = members.entry(name.to_string()).or_default();
        for key in keys(response.added) {
            holdings.blobs.insert(key);
        }
        for key in keys(response.removed) {
            holdings.blobs.remove(&key);
        }
        holdings.synced |= response.synced;
    }

    /// The index held still while the caller asks about a batch.
    pub(crate) fn read(&self) -> Reading<'_> {
        Reading(self.members.lock())
    }

    /// Notes that `members` hold `key` (a write to them just succeeded).
    pub(crate) fn note_held(&self, key: &Key, members: &[String]) {
        let mut index = self.members.lock();
        for m in members {
            if let Some(holdings) = index.get_mut(m) {
                holdings.blobs.insert(*key);
            }
        }
    }

    /// `(synced members, blobs indexed)`.
    pub fn size(&self) -> (usize, usize) {
        let index = self.members.lock();
        let synced = index.values().filter(|h| h.synced).count();
        (synced, index.values().map(|h| h.blobs.len()).sum())
    }
}

/// The keys of `sets` that parse (a set of an unknown function, or a bad digest, is skipped).
fn keys(sets: Vec<BlobSet>) -> impl Iterator<Item = Key> {
    sets.into_iter().flat_map(|set| {
        let function = DigestFunction::from_proto(set.digest_function).ok();
        let ns = crate::key::namespace(&set.instance_name);
        set.digests.into_iter().filter_map(move |d| {
            let digest = Digest::from_proto(function?, &d).ok()?;
            Some(Key { ns, digest })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_proto::cluster::v1::WatchResponse;

    /// What a member's watch sends that does not parse (an unknown digest function, a bad
    /// hash, a negative size) is left out; the rest is indexed, and the member is synced.
    #[test]
    fn a_member_s_malformed_blobs_are_left_out() {
        let index = HolderIndex::default();
        let good = DigestFunction::Sha256.digest_of(b"good");
        let bad = |hash: &str, size_bytes| remexec_proto::reapi::Digest {
            hash: hash.into(),
            size_bytes,
        };
        let set = |digest_function, digests| BlobSet {
            instance_name: "i".into(),
            digest_function,
            digests,
        };
        let sha = DigestFunction::Sha256.to_proto();
        let added = vec![
            set(
                sha,
                vec![good.to_proto(), bad("not hex", 4), bad(&"a".repeat(64), -1)],
            ),
            set(12345, vec![good.to_proto()]),
        ];
        let response = WatchResponse {
            added,
            removed: Vec::new(),
            synced: true,
        };
        index.apply("w1", response);
        assert_eq!(index.size(), (1, 1));
        let reading = index.read();
        assert!(!reading.absent(&Key::new("i", good), ["w1"]));
        assert!(reading.absent(&Key::new("j", good), ["w1"]));
        assert!(
            !reading.absent(&Key::new("i", good), ["w2"]),
            "an unknown member holds all"
        );
    }
}
