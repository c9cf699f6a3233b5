//! [`ReplicatedStore`]: each blob on `R` members of a cluster, chosen by rendezvous hashing
//! ([`Placement`]), the way Buildbarn composes sharding and mirroring over its `BlobAccess`
//! tree: the members are any [`BlobStore`]s (a worker's CAS over gRPC, a local disk store).
//!
//! Where a blob *belongs* (its [`placement`](ReplicatedStore::placement)) is computed over the
//! roster: every member the cluster agrees on ([`Membership::roster`]), reachable or not, so
//! that a member cut off from one instance only changes nothing there. Where it is *routed*
//! ([`locate`](ReplicatedStore::locate)) skips the members this instance cannot reach: a
//! placement member cut off is replaced by the next member the digest ranks, as with a
//! placement over the reachable members alone (rendezvous hashing ranks a subset in the same
//! order). Reads and writes go by the route; repairs copy along it and never delete, so two
//! instances whose views differ both settle, and no blob is copied back and forth.
//!
//! [`Membership::roster`]: remexec_core::membership::Membership::roster

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use remexec_core::membership::Member;
use remexec_core::placement::Placement;
use remexec_core::{BlobStore, ChunkStream, Digest, Error, ReadRange, Result};

use crate::key::Key;

/// Most digests asked of one member in one FindMissingBlobs.
const FIND_MISSING_BATCH: usize = 10_000;
/// How long the members' word that a blob is there (a reference that found it) answers for it
/// without asking again, at most, as long as the members stay the same: never longer than the
/// members keep a referenced blob.
const CONFIRMED_FOR: std::time::Duration = std::time::Duration::from_secs(60);
/// How often a reference answered from that word is passed on to the members, at most.
const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes of memory for those confirmations (about 100 bytes each).
const CONFIRMED_BYTES: u64 = 64 << 20;

/// When the members last said a blob was there, and when a reference of it was last passed on.
#[derive(Debug, Clone, Copy)]
struct Confirmed {
    at: std::time::Instant,
    renewed: std::time::Instant,
}

/// The members as last set, and the placement before that (reads fall back to it while blobs
/// have not moved yet).
#[derive(Debug, Default)]
struct View {
    /// Over the reachable members: the routes.
    current: Placement,
    previous: Placement,
    stores: HashMap<String, Arc<dyn BlobStore>>,
    /// The roster as last set, if one was.
    roster: Option<Vec<String>>,
    /// Over the roster and the reachable members: where blobs belong.
    agreed: Placement,
}

impl View {
    /// Recomputes the agreed placement: the roster's members and the reachable ones.
    fn agree(&mut self) {
        let reachable = self.stores.keys().cloned();
        self.agreed = Placement::new(reachable.chain(self.roster.iter().flatten().cloned()));
    }
}

/// Each blob on `replicas` members, placed by rendezvous hashing over the live members.
///
/// - `put` streams the blob to its `R` replicas at once and returns `Ok` only once every one
///   holds it; with fewer than `R` members it fails `Unavailable` and stores nothing it
///   acknowledges.
/// - `get` asks the replicas in placement order, then those of the previous membership (a
///   member that joined holds nothing yet), then every other member; a replica that fails is
///   skipped. `Ok(None)` only when every member asked says it lacks the blob; `Unavailable`
///   if a replica of either placement failed (it may hold it) or there are no members.
/// - `find_missing` asks each member about the digests it should hold, all members at once,
///   then the previous placement about what is still missing. A blob held by one replica of
///   `R` counts as present: reading it works, and re-replication restores the others.
#[derive(Debug)]
pub struct ReplicatedStore {
    replicas: usize,
    view: RwLock<View>,
    /// Whether a member is this process's own store (a worker's disk), which takes writes
    /// unverified.
    has_local: std::sync::atomic::AtomicBool,
    /// What each member holds, as their watches tell ([`ReplicatedStore::index_holders`]).
    index: std::sync::OnceLock<Arc<index::HolderIndex>>,
    /// Blobs the members said were there lately, by key; emptied when the members change.
    confirmed: parking_lot::Mutex<remexec_core::lru::ByteLru<Key, Confirmed>>,
    /// When references of blobs the index says no member holds were last passed on to the
    /// members, so that a blob asked about again and again is passed on once in a while.
    passed_on: parking_lot::Mutex<remexec_core::lru::ByteLru<Key, std::time::Instant>>,
    /// References answered from `confirmed`, to pass on to the members.
    renewals: std::sync::OnceLock<tokio::sync::mpsc::Sender<(String, Vec<Digest>)>>,
    /// How long a confirmation answers ([`CONFIRMED_FOR`] or the members' keep time, the
    /// shorter; zero: never), set by [`index_holders`](ReplicatedStore::index_holders).
    confirmed_for: std::sync::OnceLock<std::time::Duration>,
}

impl ReplicatedStore {
    /// A store with no members yet, keeping each blob on `replicas` (1 to 3) of them.
    /// `InvalidArgument` for another count.
    pub fn new(replicas: usize) -> Result<Self> {
        if !(1..=3).contains(&replicas) {
            return Err(Error::invalid(format!(
                "replicas must be 1 to 3, not {replicas}"
            )));
        }
        Ok(Self {
            replicas,
            view: RwLock::default(),
            has_local: std::sync::atomic::AtomicBool::new(false),
            index: std::sync::OnceLock::new(),
            confirmed: parking_lot::Mutex::new(remexec_core::lru::ByteLru::new(CONFIRMED_BYTES)),
            passed_on: parking_lot::Mutex::new(remexec_core::lru::ByteLru::new(
                CONFIRMED_BYTES / 4,
            )),
            renewals: std::sync::OnceLock::new(),
            confirmed_for: std::sync::OnceLock::new(),
        })
    }

    /// Replaces the members (name and store); the placement they replace stays the fallback of
    /// reads until the next change.
    pub fn set_members(&self, members: impl IntoIterator<Item = (String, Arc<dyn BlobStore>)>) {
        let stores: HashMap<String, Arc<dyn BlobStore>> = members.into_iter().collect();
        let placement = Placement::new(stores.keys().cloned());
        let mut view = self.view.write();
        if placement != view.current {
            view.previous = std::mem::replace(&mut view.current, placement);
        }
        // What the old members said is not the new ones' word.
        if view.stores.len() != stores.len()
            || stores.keys().any(|name| !view.stores.contains_key(name))
        {
            let mut confirmed = self.confirmed.lock();
            *confirmed = remexec_core::lru::ByteLru::new(confirmed.budget());
        }
        view.stores = stores;
        view.agree();
    }

    /// Sets the roster: the members every instance agrees on, reachable from here or not
    /// (see the module docs). Without one, placement is over the reachable members.
    pub fn set_roster(&self, names: impl IntoIterator<Item = String>) {
        let mut view = self.view.write();
        view.roster = Some(names.into_iter().collect());
        view.agree();
    }

    /// Keeps the roster in step with `roster` (a
    /// [`Membership::roster`](remexec_core::membership::Membership::roster)) until its sender
    /// is gone.
    pub fn follow_roster(
        self: Arc<Self>,
        mut roster: tokio::sync::watch::Receiver<Vec<Member>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let names: Vec<String> = roster
                    .borrow_and_update()
                    .iter()
                    .map(|m| m.name.clone())
                    .collect();
                self.set_roster(names);
                if roster.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Keeps the members in step with `live` (as a worker pool or a
    /// [`Membership`](remexec_core::membership::Membership) publishes them), each reached
    /// through a [`GrpcStore`](crate::GrpcStore) on one channel per member URL, except the
    /// member named as `local`, which is that store itself (a worker's own disk). The task ends
    /// when `live`'s sender is gone. A member whose URL cannot become a channel is left out
    /// with a warning.
    pub fn follow(
        self: Arc<Self>,
        live: tokio::sync::watch::Receiver<Vec<Member>>,
        tls: remexec_core::client::ClientTls,
        local: Option<(String, Arc<dyn BlobStore>)>,
    ) -> tokio::task::JoinHandle<()> {
        if local.is_some() {
            self.has_local
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let local_name = local.as_ref().map(|(name, _)| name.clone());
        let remote = move |m: &Member| local_name.as_ref() != Some(&m.name);
        remexec_core::membership::follow(live, tls, remote, move |members, channels| {
            let stores = members.iter().filter_map(|m| {
                let store: Arc<dyn BlobStore> = match &local {
                    Some((name, store)) if *name == m.name => Arc::clone(store),
                    _ => Arc::new(crate::GrpcStore::new(channels.get(&m.url)?.clone())),
                };
                Some((m.name.clone(), store))
            });
            self.set_members(stores);
        })
    }

    /// Blobs kept of each: `R`.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Every member's store, by name, sorted.
    pub fn stores(&self) -> Vec<(String, Arc<dyn BlobStore>)> {
        let view = self.view.read();
        let mut stores: Vec<_> = view
            .stores
            .iter()
            .map(|(m, s)| (m.clone(), Arc::clone(s)))
            .collect();
        stores.sort_by(|a, b| a.0.cmp(&b.0));
        stores
    }

    /// The members, by name.
    pub fn members(&self) -> Vec<String> {
        self.view
            .read()
            .current
            .members()
            .map(String::from)
            .collect()
    }

    /// The members `digest` belongs on, best first: its placement over the roster, reachable
    /// from here or not. Every instance with the same roster says the same.
    pub fn placement(&self, digest: &Digest) -> Vec<String> {
        self.view.read().agreed.replica_names(digest, self.replicas)
    }

    /// The roster's members this instance cannot reach now, sorted.
    pub fn unreachable(&self) -> Vec<String> {
        let view = self.view.read();
        let away = view
            .agreed
            .members()
            .filter(|m| !view.stores.contains_key(*m));
        away.map(String::from).collect()
    }

    /// The reachable members that should hold `digest` now, best first: its
    /// [`placement`](Self::placement), each member this instance cannot reach replaced by the
    /// next one the digest ranks. Reads, writes and repairs go by it.
    pub fn locate(&self, digest: &Digest) -> Vec<String> {
        self.view
            .read()
            .current
            .replica_names(digest, self.replicas)
    }

    /// Waits (up to 5 s) for a first member: a worker's store is made before the scheduler
    /// has sent the members, and its first lease may come right after them.
    async fn await_members(&self) {
        for _ in 0..100 {
            if !self.view.read().stores.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The stores to read `digest` from, in order: its replicas, then its replicas in the
    /// previous placement, skipping members without a store.
    fn readers(&self, digest: &Digest) -> Vec<(String, Arc<dyn BlobStore>)> {
        let view = self.view.read();
        let mut seen = HashSet::new();
        view.current
            .replicas(digest, self.replicas)
            .into_iter()
            .chain(view.previous.replicas(digest, self.replicas))
            .filter(|m| seen.insert(*m))
            .filter_map(|m| view.stores.get(m).map(|s| (m.to_string(), Arc::clone(s))))
            .collect()
    }

    /// Of `digests`, those that every member `ask` names for them lacks (or could not answer
    /// about), in input order. Each member is asked once, about all its digests.
    async fn missing_from(
        &self,
        instance: &str,
        digests: &[Digest],
        ask: impl Fn(&Digest) -> Vec<(String, Arc<dyn BlobStore>)>,
        reference: bool,
    ) -> Result<Vec<Digest>> {
        let mut per_member: HashMap<String, (Arc<dyn BlobStore>, Vec<Digest>)> = HashMap::new();
        for d in digests {
            for (member, store) in ask(d) {
                per_member
                    .entry(member)
                    .or_insert_with(|| (store, Vec::new()))
                    .1
                    .push(*d);
            }
        }
        // Each member is asked in batches, all members (and batches) at once.
        let asks = per_member.into_iter().flat_map(|(member, (store, ds))| {
            ds.chunks(FIND_MISSING_BATCH)
                .map(|batch| (member.clone(), Arc::clone(&store), batch.to_vec()))
                .collect::<Vec<_>>()
        });
        let answers = futures::future::join_all(asks.map(|(member, store, ds)| async move {
            let answer = match reference {
                true => store.reference(instance, &ds).await,
                false => store.find_missing(instance, &ds).await,
            };
            (member, ds, answer)
        }))
        .await;
        // A digest is present once one member says it holds it.
        let mut present = HashSet::new();
        let mut failures = 0;
        let total = answers.len();
        for (member, ds, answer) in answers {
            match answer {
                Ok(missing) => {
                    let missing: HashSet<Digest> = missing.into_iter().collect();
                    present.extend(ds.into_iter().filter(|d| !missing.contains(d)));
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(%member, error = %e, "a replica could not say what it holds");
                    if failures == total {
                        return Err(e);
                    }
                }
            }
        }
        Ok(digests
            .iter()
            .filter(|d| !present.contains(d))
            .copied()
            .collect())
    }

    /// Indexes what each member holds by watching it (`Cluster/Watch` on its CAS port):
    /// `find_missing` and `reference` then answer "missing" for a blob no member holds
    /// without asking. (Either answers "present" for a blob a member referenced in the last
    /// minute, watched or not; references answered so are passed on in the background, at
    /// most every few seconds, so that the members keep them from the latest.) For a
    /// scheduler, which answers clients. `keep` is how long the members keep a referenced
    /// blob (their `keep_referenced`): a confirmation answers for no longer, and with zero
    /// every question about a blob held goes to the members.
    pub fn index_holders(
        self: &Arc<Self>,
        live: tokio::sync::watch::Receiver<Vec<Member>>,
        tls: remexec_core::client::ClientTls,
        keep: std::time::Duration,
    ) -> Arc<index::HolderIndex> {
        let index = Arc::clone(self.index.get_or_init(Default::default));
        index.follow(live, tls);
        let _ = self.confirmed_for.set(keep.min(CONFIRMED_FOR));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<Digest>)>(1024);
        if self.renewals.set(tx).is_ok() {
            let store = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some((instance, digests)) = rx.recv().await {
                    let Some(store) = store.upgrade() else { return };
                    if let Err(e) = store.ask_members(&instance, &digests, true).await {
                        tracing::warn!(error = %e, "passing references on to the members failed");
                    }
                }
            });
        }
        index
    }

    /// The index [`index_holders`](Self::index_holders) keeps, if it was started.
    pub fn holder_index(&self) -> Option<Arc<index::HolderIndex>> {
        self.index.get().cloned()
    }

    /// The digests no member holds, answered from what the members said lately and from the
    /// index where it is sure, and asked of the members for the rest.
    async fn holders_missing(
        &self,
        instance: &str,
        digests: &[Digest],
        reference: bool,
    ) -> Result<Vec<Digest>> {
        self.await_members().await;
        let ns = crate::key::namespace(instance);
        let now = std::time::Instant::now();
        let mut missing = vec![false; digests.len()];
        let (mut renew, mut ask) = (Vec::new(), Vec::new());
        {
            let view = self.view.read();
            let moved = view.previous != view.current && !view.previous.is_empty();
            let index = self.index.get().map(|index| index.read());
            let mut confirmed = self.confirmed.lock();
            // Without a way to pass references on, every one goes to the members.
            let confirmed_for = self.confirmed_for.get().copied().unwrap_or_default();
            let trust = self.renewals.get().is_some() && !confirmed_for.is_zero();
            for (i, d) in digests.iter().enumerate() {
                let key = Key { ns, digest: *d };
                if trust
                    && let Some(c) = confirmed.get_mut(&key)
                    && now.duration_since(c.at) < confirmed_for
                {
                    if reference && now.duration_since(c.renewed) >= RENEW_AFTER {
                        c.renewed = now;
                        renew.push(*d);
                    }
                    continue;
                }
                let Some(index) = &index else {
                    ask.push(i);
                    continue;
                };
                if index.absent_everywhere(&key, view.stores.keys()) {
                    missing[i] = true;
                    continue;
                }
                let mut holders = view.current.replicas(d, self.replicas);
                if moved {
                    holders.extend(view.previous.replicas(d, self.replicas));
                }
                match index.absent(&key, holders) {
                    true => missing[i] = true,
                    false => ask.push(i),
                }
            }
        }
        // What the index says no member holds may just not have reached it yet: a reference
        // is passed on to the members all the same, in the background.
        if reference && self.renewals.get().is_some() {
            let mut passed_on = self.passed_on.lock();
            for (_, d) in missing.iter().zip(digests).filter(|(m, _)| **m) {
                let key = Key { ns, digest: *d };
                let recent = passed_on
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < RENEW_AFTER);
                if !recent {
                    passed_on.insert(key, 100, now);
                    renew.push(*d);
                }
            }
        }
        if let (false, Some(renewals)) = (renew.is_empty(), self.renewals.get()) {
            // A full queue drops the renewal: the blob stays kept from the members' last word.
            let _ = renewals.try_send((instance.to_string(), renew));
        }
        if !ask.is_empty() {
            let asked: Vec<Digest> = ask.iter().map(|&i| digests[i]).collect();
            let lacking: HashSet<Digest> = self
                .ask_members(instance, &asked, reference)
                .await?
                .into_iter()
                .collect();
            for i in ask {
                missing[i] = lacking.contains(&digests[i]);
            }
        }
        let flagged = digests.iter().zip(missing);
        Ok(flagged.filter(|(_, m)| *m).map(|(d, _)| *d).collect())
    }

    /// Asks the placement's members, then those not moved from yet, which of `digests` they
    /// lack; with `reference`, references those they hold and notes them as confirmed: kept
    /// by a member, so that the word stays true for a while (a mere look is not
    /// noted: the blob may be evicted the next moment).
    async fn ask_members(
        &self,
        instance: &str,
        digests: &[Digest],
        reference: bool,
    ) -> Result<Vec<Digest>> {
        let missing = self.ask_placements(instance, digests, reference).await?;
        if !reference {
            return Ok(missing);
        }
        let absent: HashSet<&Digest> = missing.iter().collect();
        let now = std::time::Instant::now();
        let ns = crate::key::namespace(instance);
        let mut confirmed = self.confirmed.lock();
        for d in digests.iter().filter(|d| !absent.contains(d)) {
            let seen = Confirmed {
                at: now,
                renewed: now,
            };
            confirmed.insert(Key { ns, digest: *d }, 100, seen);
        }
        drop(confirmed);
        Ok(missing)
    }

    /// The digests no member holds: asked of the placement's members first, then of those
    /// not moved from yet; with `reference`, referenced on each.
    async fn ask_placements(
        &self,
        instance: &str,
        digests: &[Digest],
        reference: bool,
    ) -> Result<Vec<Digest>> {
        let current = |d: &Digest| {
            let view = self.view.read();
            view.current
                .replicas(d, self.replicas)
                .into_iter()
                .filter_map(|m| view.stores.get(m).map(|s| (m.to_string(), Arc::clone(s))))
                .collect()
        };
        let missing = self
            .missing_from(instance, digests, current, reference)
            .await?;
        if missing.is_empty() {
            return Ok(missing);
        }
        // Blobs not moved yet since the membership changed.
        let previous = |d: &Digest| {
            let now = self.locate(d);
            self.readers(d)
                .into_iter()
                .filter(|(m, _)| !now.contains(m))
                .collect()
        };
        self.missing_from(instance, &missing, previous, reference)
            .await
    }
}

#[async_trait]
impl BlobStore for ReplicatedStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.holders_missing(instance, digests, false).await
    }

    /// References each blob on every member that holds it, the placement's and those it is
    /// not moved from yet.
    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.holders_missing(instance, digests, true).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        self.await_members().await;
        let (names, targets): (Vec<String>, Vec<Arc<dyn BlobStore>>) = {
            let view = self.view.read();
            view.current
                .replicas(&digest, self.replicas)
                .into_iter()
                .filter_map(|m| Some((m.to_string(), view.stores.get(m).cloned()?)))
                .unzip()
        };
        if targets.len() < self.replicas {
            return Err(Error::Unavailable(
                format!(
                    "{} replicas are needed and {} members are live",
                    self.replicas,
                    targets.len()
                )
                .into(),
            ));
        }
        let copies = super::fan_out(data, targets.len(), false);
        let puts = targets
            .iter()
            .zip(copies)
            .map(|(store, copy)| store.put(instance, digest, copy));
        for result in futures::future::join_all(puts).await {
            result?;
        }
        // The index learns it now, before the members' watches tell it.
        if let Some(index) = self.index.get() {
            index.note_held(&Key::new(instance, digest), &names);
        }
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let mut failure = None;
        self.await_members().await;
        let readers = self.readers(&digest);
        if readers.is_empty() {
            return Err(Error::Unavailable(
                "the replicated store has no members".into(),
            ));
        }
        // Then every other member (`false`: its failure is no reason to doubt a miss): after
        // changes that came faster than re-replication, a copy may be on a member of neither
        // placement. Misses are rare; reads of them cost this.
        let asked: HashSet<String> = readers.iter().map(|(m, _)| m.clone()).collect();
        let others = self
            .stores()
            .into_iter()
            .filter(|(m, _)| !asked.contains(m));
        let placed = readers.into_iter().map(|(m, s)| (m, s, true));
        for (member, store, placed) in placed.chain(others.map(|(m, s)| (m, s, false))) {
            match store.get(instance, digest, range).await {
                Ok(Some(data)) => return Ok(Some(data)),
                Ok(None) => {}
                // A range past the end is the caller's error, whichever replica says so.
                Err(e @ Error::OutOfRange(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(%member, %digest, error = %e, "a replica failed a read");
                    if placed {
                        failure = Some(e);
                    }
                }
            }
        }
        // A replica that failed may hold the blob: not a miss.
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.view.read();
        let members: Vec<&str> = view.agreed.members().collect();
        write!(f, "Replicated(R={}, {members:?})", self.replicas)
    }
    /// Whether every member verifies (a scheduler's members are workers' CAS ports, which do;
    /// a worker's own disk does not).
    fn verifies_writes(&self) -> bool {
        self.view
            .read()
            .stores
            .values()
            .all(|s| s.verifies_writes())
    }
}

pub mod index;
pub mod repair;
#[cfg(test)]
mod tests;
