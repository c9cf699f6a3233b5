//! [`Repairer`]: re-replication. One member of a [`ReplicatedStore`] copies the blobs it holds
//! to the members of their current placement that lack them, in the background and within a
//! byte rate, so that after a member is lost every blob is back on `R` live members, and after
//! a member joins, blobs move to it instead of being read from their previous placement.
//!
//! Each holder decides alone, from the same placement: a holder that is one of a blob's
//! placement members copies it to the placement members that lack it; a holder outside the
//! placement (the blob's previous home) copies it only when no placement member has it. Two
//! holders may both copy a blob; writes of a blob are idempotent, so that only costs bandwidth.
//!
//! Referenced blobs and the others differ (see [`BlobStore::reference`]):
//! - A copy of a blob referenced here is referenced on its new member too, so that its replicas
//!   are kept together (once, when it is copied: members never renew each other's keeps).
//! - Before it copies, a pass asks each member it copies to how much room it has
//!   ([`BlobStore::room`]: its budget less its referenced blobs) and leaves for a later pass
//!   the copies that would not fit, without reading them.
//! - Every pass restores referenced blobs. Unreferenced ones are restored by the passes after a
//!   membership change (and those that retry what such a pass left), not by the periodic
//!   ones: a member that evicted an unreferenced blob made room on purpose, and copying it
//!   back each period would only churn. So the placement's members that read it keep it
//!   longest, and an unreferenced blob may go from all its replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use remexec_core::membership::Member;
use remexec_core::{BlobStore, Digest, ReadRange, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ReplicatedStore;
use remexec_core::ListBlobs;

/// Digests asked about in one FindMissingBlobs of a member.
const BATCH: usize = 1000;
/// How long a member may take to say its room before its copies are tried regardless.
const ROOM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change settles before a pass starts.
const SETTLE: Duration = Duration::from_secs(1);

/// What one [`Repairer::pass`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Blobs this member holds.
    pub blobs: u64,
    /// Copies made.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Copies still to make: a member that could not be asked or written, or a blob that
    /// went away meanwhile; the next pass tries again.
    pub left: u64,
}

/// The room each member that `copies` go to has now, as it says ([`BlobStore::room`]):
/// `None` for a member that cannot say, whose copies are tried all the same.
async fn rooms(
    stores: &HashMap<String, Arc<dyn BlobStore>>,
    copies: &[(String, Digest, String)],
) -> HashMap<String, Option<u64>> {
    let targets: std::collections::BTreeSet<&String> = copies.iter().map(|(_, _, m)| m).collect();
    let asks = targets.into_iter().filter_map(|member| {
        let store = stores.get(member)?;
        Some(async move {
            let room = match tokio::time::timeout(ROOM_TIMEOUT, store.room()).await {
                Ok(Ok(room)) => room,
                Ok(Err(e)) => {
                    tracing::debug!(%member, error = %e, "re-replication: a member did not say its room");
                    None
                }
                Err(_) => None,
            };
            if room == Some(0) {
                tracing::warn!(%member, "re-replication: a member has no room: referenced blobs fill it");
            }
            (member.clone(), room)
        })
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// Re-replicates the blobs of one member's local store. See the module docs.
#[derive(Debug)]
pub struct Repairer {
    name: String,
    local: Arc<dyn ListBlobs>,
    cluster: Arc<ReplicatedStore>,
    bytes_per_second: u64,
    below: AtomicU64,
    /// Copies made since the start.
    made: AtomicU64,
}

impl Repairer {
    /// The repairer of member `name`, whose blobs are in `local`, within `cluster`, copying at
    /// most `bytes_per_second` (0: no limit).
    pub fn new(
        name: impl Into<String>,
        local: Arc<dyn ListBlobs>,
        cluster: Arc<ReplicatedStore>,
        bytes_per_second: u64,
    ) -> Self {
        Self {
            name: name.into(),
            local,
            cluster,
            bytes_per_second,
            below: AtomicU64::new(0),
            made: AtomicU64::new(0),
        }
    }

    /// Copies this member still has to make, as the last pass left them (counted down as the
    /// pass copies).
    pub fn below_replicas(&self) -> u64 {
        self.below.load(Ordering::Relaxed)
    }

    /// Copies made since the start, every pass's.
    pub fn copies_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// One pass over every blob held here: asks each placement member what it lacks, in
    /// batches, then copies. `Err` only if the local store fails to list; a member that fails
    /// counts its copies as [`left`](RepairReport::left).
    pub async fn pass(&self) -> Result<RepairReport> {
        self.pass_over(true).await
    }

    /// A pass over the blobs referenced here only, as the periodic passes make unless a pass
    /// after a membership change left copies to make.
    pub async fn referenced_pass(&self) -> Result<RepairReport> {
        self.pass_over(false).await
    }

    async fn pass_over(&self, all: bool) -> Result<RepairReport> {
        let mut blobs = self.local.blobs();
        if !all {
            blobs.retain(|(instance, digest)| self.local.referenced(instance, digest));
        }
        let mut report = RepairReport {
            blobs: blobs.len() as u64,
            ..RepairReport::default()
        };
        let stores: HashMap<String, Arc<dyn BlobStore>> =
            self.cluster.stores().into_iter().collect();
        // Per (instance, member): the digests to ask about.
        let mut asks: HashMap<(String, String), Vec<Digest>> = HashMap::new();
        for (instance, digest) in &blobs {
            for member in self.cluster.locate(digest) {
                if member != self.name {
                    asks.entry((instance.clone(), member))
                        .or_default()
                        .push(*digest);
                }
            }
        }
        // Per (instance, digest): the placement members that lack it.
        let mut lacking: HashMap<(String, Digest), Vec<String>> = HashMap::new();
        for ((instance, member), digests) in asks {
            let Some(store) = stores.get(&member) else {
                continue;
            };
            for batch in digests.chunks(BATCH) {
                match store.find_missing(&instance, batch).await {
                    Ok(missing) => {
                        for d in missing {
                            lacking
                                .entry((instance.clone(), d))
                                .or_default()
                                .push(member.clone());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%member, error = %e, "re-replication: a member could not say what it holds");
                        report.left += batch.len() as u64;
                    }
                }
            }
        }
        let mut copies: Vec<(String, Digest, String)> = Vec::new();
        for ((instance, digest), members) in lacking {
            let placement = self.cluster.locate(&digest);
            let in_placement = placement.contains(&self.name);
            let others = placement.iter().filter(|m| **m != self.name).count();
            // Outside the placement, copy only what no placement member holds.
            if in_placement || members.len() == others {
                copies.extend(members.into_iter().map(|m| (instance.clone(), digest, m)));
            }
        }
        self.below
            .store(report.left + copies.len() as u64, Ordering::Relaxed);
        let mut room = rooms(&stores, &copies).await;
        // Smallest first: within a member's room, as many blobs as fit get their copies.
        copies.sort_by_key(|(_, digest, _)| digest.size());
        let started = Instant::now();
        for (instance, digest, member) in copies {
            // A copy the member has no room for is left for later, unread.
            let fits = match room.get_mut(&member) {
                Some(Some(left)) if *left < digest.size() => false,
                Some(Some(left)) => {
                    *left -= digest.size();
                    true
                }
                _ => true,
            };
            let copied = match stores.get(&member) {
                Some(store) if fits => self.copy(&instance, digest, &member, store.as_ref()).await,
                _ => false,
            };
            if copied {
                report.copied += 1;
                report.bytes += digest.size();
                self.made.fetch_add(1, Ordering::Relaxed);
                self.below.fetch_sub(1, Ordering::Relaxed);
                self.throttle(started, report.bytes).await;
            } else {
                report.left += 1;
            }
        }
        if report.copied > 0 || report.left > 0 {
            tracing::info!(member = %self.name, ?report, "re-replication pass");
        }
        Ok(report)
    }

    /// Copies one blob from the local store to `store`; whether it worked.
    async fn copy(
        &self,
        instance: &str,
        digest: Digest,
        member: &str,
        store: &dyn BlobStore,
    ) -> bool {
        let data = match self.local.get(instance, digest, ReadRange::ALL).await {
            Ok(Some(data)) => data,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "re-replication: reading a local blob failed");
                return false;
            }
        };
        let referenced = self.local.referenced(instance, &digest);
        match store.put(instance, digest, data).await {
            Ok(()) if referenced => match store.reference(instance, &[digest]).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(%member, %digest, error = %e, "re-replication: referencing a copy failed");
                    false
                }
            },
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%member, %digest, error = %e, "re-replication: a copy failed");
                false
            }
        }
    }

    /// Sleeps until `bytes` since `started` are within the byte rate.
    async fn throttle(&self, started: Instant, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let due = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let elapsed = started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }

    /// Runs passes until `stop`: one over every blob a moment after every change of `members`,
    /// and one every `period` besides: over the referenced blobs, or over every blob again
    /// while the last such pass left copies to make.
    pub fn spawn(
        self: Arc<Self>,
        mut members: watch::Receiver<Vec<Member>>,
        period: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // Whether the next periodic pass goes over every blob.
            let mut all = false;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = members.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(SETTLE).await;
                        members.borrow_and_update();
                        all = true;
                    }
                    () = tokio::time::sleep(period) => {}
                }
                match self.pass_over(all).await {
                    Ok(report) => all = all && report.left > 0,
                    Err(e) => tracing::error!(error = %e, "re-replication pass failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
