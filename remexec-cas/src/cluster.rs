//! The cluster's CAS on the workers, assembled: what a scheduler and a worker need to take part
//! in it, over the stores, the repairer and the `Cluster` service of this crate.
//!
//! - The storage plane has a membership of its own ([`storage_membership`]): the workers' CAS
//!   ports that one list of seeds resolves to, each asked for its name and replica count with
//!   `Cluster/Status`. Every scheduler and worker follows the same seeds; the execution
//!   protocol carries no storage membership.
//! - A scheduler ([`scheduler_cas`]) keeps no blobs: its CAS is a [`ReplicatedStore`] over the
//!   members it is given (the workers' CAS ports), with the `Cluster` service that routes
//!   `Locate` and `Status` to them.
//! - A worker ([`WorkerCas`]) keeps blobs in a store that can list them and serves them (CAS,
//!   ByteStream, Capabilities, health, `Cluster`) on its own port. It reads inputs and writes
//!   outputs through a [`ReplicatedStore`] over the members, its own store among them, and a
//!   [`Repairer`] restores replicas after changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remexec_core::client::ClientTls;
use remexec_core::membership::{Member, Membership, MembershipConfig, Peers, Probe, Probed};
use remexec_core::metrics::Metrics;
use remexec_core::{ActionCache, BlobStore, Error, ListBlobs, Result};
use remexec_proto::cluster::v1::StatusRequest;
use remexec_proto::cluster::v1::cluster_client::ClusterClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::service::{ClusterService, PeerService};
use crate::{
    CacheServices, Limits, MemoryActionCache, Repairer, ReplicatedStore, ShardedActionCache,
};

/// What every member of one storage plane, and every scheduler over it, must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageTerms {
    /// Copies kept of each blob.
    pub replicas: u32,
    /// How long a referenced blob is kept after its last reference.
    pub keep_referenced: Duration,
}

impl StorageTerms {
    /// `replicas` copies, the default keep time
    /// ([`KEEP_REFERENCED`](crate::store::disk::KEEP_REFERENCED)).
    pub fn new(replicas: u32) -> Self {
        Self {
            replicas,
            keep_referenced: crate::store::disk::KEEP_REFERENCED,
        }
    }
}

/// [`storage_membership_with`] on `replicas` copies and the default keep time.
pub fn storage_membership(
    seeds: Vec<String>,
    replicas: u32,
    tls: ClientTls,
    worker: Option<&str>,
) -> Result<Membership> {
    storage_membership_with(seeds, StorageTerms::new(replicas), tls, worker)
}

/// The storage plane's members: the workers' CAS ports that `seeds` resolve to (URLs, or one
/// DNS name that resolves to all of them), reached with `tls`, each named as it names itself.
/// A port that keeps another replica count or keep time than `terms` is no member, with an
/// error logged once; `worker` is the worker following it, if one is (so that the error says
/// which side is odd). Every scheduler and worker of a cluster follows the same seeds.
pub fn storage_membership_with(
    seeds: Vec<String>,
    terms: StorageTerms,
    tls: ClientTls,
    worker: Option<&str>,
) -> Result<Membership> {
    if seeds.is_empty() {
        return Err(Error::invalid(
            "the cluster's CAS needs the workers' CAS ports as storage seeds (--storage)",
        ));
    }
    let mut config = MembershipConfig::new(seeds);
    config.tls = tls;
    config.etcd = true;
    config.probe = Arc::new(StorageProbe {
        terms,
        worker: worker.map(str::to_string),
        refused: parking_lot::Mutex::default(),
    });
    Membership::start(config)
}

/// Asks a CAS port for its worker's name and replica count (`Cluster/Status`).
#[derive(Debug)]
struct StorageProbe {
    terms: StorageTerms,
    worker: Option<String>,
    /// The URLs refused, and why: each refusal is logged once, until it changes.
    refused: parking_lot::Mutex<std::collections::HashMap<String, String>>,
}

impl StorageProbe {
    /// Logs `why` for `url` unless it was the last refusal logged for it.
    fn refuse(&self, url: &str, why: String) -> Probed {
        let mut refused = self.refused.lock();
        if refused.get(url) != Some(&why) {
            tracing::error!(%url, "{why}");
            refused.insert(url.to_string(), why);
        }
        Probed::Refused
    }
}

/// Most bytes of a worker's name, as a CAS port reports it.
const MAX_WORKER_NAME: usize = 128;

/// A worker name a storage member may have: 1 to [`MAX_WORKER_NAME`] bytes of printable
/// ASCII without spaces (names go into placement, logs, metrics and pages).
fn check_worker_name(name: &str) -> std::result::Result<(), String> {
    if name.len() > MAX_WORKER_NAME {
        return Err(format!(
            "its name is {} bytes long, over {MAX_WORKER_NAME}",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "its name {name:?} has other characters than printable ASCII"
        ));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Probe for StorageProbe {
    async fn probe(&self, url: &str, channel: Channel, timeout: Duration) -> Probed {
        let mut client = ClusterClient::new(channel);
        let status = client.status(StatusRequest {});
        let answer = match tokio::time::timeout(timeout, status).await {
            Ok(Ok(answer)) => answer.into_inner(),
            // Another service (no Cluster) is no member; no answer is silence.
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                return self.refuse(url, format!("{url} is not a worker's CAS port"));
            }
            _ => return Probed::Silent,
        };
        if answer.worker.is_empty() {
            return self.refuse(url, format!("{url} is not a worker's CAS port"));
        }
        if let Err(why) = check_worker_name(&answer.worker) {
            return self.refuse(url, format!("the worker at {url} is no member: {why}"));
        }
        let (name, theirs, mine) = (answer.worker, answer.replicas, self.terms.replicas);
        let keep = self.terms.keep_referenced.as_secs();
        if let Some(their_keep) = answer.keep_referenced_secs.filter(|k| *k != keep) {
            let why = format!(
                "worker {name} keeps referenced blobs {their_keep} s and this {} {keep} s: start every worker and scheduler with the same [cas] keep_referenced_secs",
                self.worker
                    .as_ref()
                    .map_or("scheduler".into(), |me| format!("worker ({me})"))
            );
            return self.refuse(url, why);
        }
        if theirs != mine {
            let why = match &self.worker {
                Some(me) => format!(
                    "this worker ({me}) keeps {mine} replicas of each blob, and this cluster {theirs} (worker {name}): start every worker and scheduler with the same --replicas"
                ),
                None => format!(
                    "worker {name} keeps {theirs} replicas of each blob, and this cluster {mine}: it is no member"
                ),
            };
            return self.refuse(url, why);
        }
        self.refused.lock().remove(url);
        Probed::Member(Member {
            name,
            url: url.to_string(),
        })
    }
}

/// A scheduler's CAS over the members of `storage` with `replicas` copies of each blob, and
/// its `Cluster` service. Members are reached with `tls`, placed over the roster and their
/// holdings indexed ([`ReplicatedStore::index_holders`]), assuming they keep referenced
/// blobs for the default [`KEEP_REFERENCED`](crate::store::disk::KEEP_REFERENCED)
/// ([`scheduler_store`] takes another). The member counts go to `metrics`.
pub fn scheduler_cas(
    replicas: u32,
    storage: &Membership,
    tls: ClientTls,
    metrics: &Metrics,
) -> Result<(Arc<ReplicatedStore>, ClusterService)> {
    let keep = crate::store::disk::KEEP_REFERENCED;
    scheduler_cas_keeping(replicas, storage, tls, keep, metrics)
}

/// [`scheduler_cas`] over members that keep a referenced blob for `keep`.
fn scheduler_cas_keeping(
    replicas: u32,
    storage: &Membership,
    tls: ClientTls,
    keep: Duration,
    metrics: &Metrics,
) -> Result<(Arc<ReplicatedStore>, ClusterService)> {
    let store = Arc::new(ReplicatedStore::new(replicas as usize)?);
    let members = storage.members();
    count_members(&store, members.clone(), metrics);
    Arc::clone(&store).follow_roster(storage.roster());
    Arc::clone(&store).follow(members.clone(), tls.clone(), None);
    store.index_holders(members.clone(), tls.clone(), keep);
    let service =
        ClusterService::router(Arc::clone(&store), members, tls).with_roster(storage.roster());
    Ok((store, service))
}

/// How a cluster scheduler's CAS is made ([`scheduler_store`]).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SchedulerStoreOptions {
    /// Copies of each blob.
    pub replicas: u32,
    /// Bytes of memory for copies of small blobs (0: none).
    pub small_blob_cache: u64,
    /// How long the workers keep a referenced blob: their `keep_referenced`, which the
    /// schedulers must share (0: they keep none).
    pub keep_referenced: Duration,
}

impl SchedulerStoreOptions {
    /// `replicas` copies, a 64 MiB small-blob cache, the default keep time.
    pub fn new(replicas: u32) -> Self {
        Self {
            replicas,
            small_blob_cache: 64 << 20,
            keep_referenced: crate::store::disk::KEEP_REFERENCED,
        }
    }
}

/// A cluster scheduler's whole CAS: the storage plane `seeds` lists
/// ([`storage_membership`]), each blob on `replicas` of its members ([`scheduler_cas`]),
/// behind a [`SmallBlobCache`](crate::SmallBlobCache); and its `Cluster` service.
pub fn scheduler_store(
    seeds: Vec<String>,
    options: &SchedulerStoreOptions,
    tls: &ClientTls,
    metrics: &Metrics,
) -> Result<(Arc<dyn BlobStore>, ClusterService)> {
    let SchedulerStoreOptions {
        replicas,
        small_blob_cache,
        keep_referenced,
    } = *options;
    let terms = StorageTerms {
        replicas,
        keep_referenced,
    };
    let storage = storage_membership_with(seeds, terms, tls.clone(), None)?;
    let (store, service) =
        scheduler_cas_keeping(replicas, &storage, tls.clone(), keep_referenced, metrics)?;
    let max_blob = crate::store::small::SMALL_BLOB;
    let store = crate::SmallBlobCache::new(store, small_blob_cache, max_blob);
    Ok((Arc::new(store), service))
}

/// How a worker takes part in the cluster's CAS.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerCasOptions {
    /// Copies kept of each blob.
    pub replicas: u32,
    /// Most bytes per second re-replication copies (0: no limit).
    pub repair_bandwidth: u64,
    /// How often the repairer checks every local blob.
    pub repair_interval: Duration,
    /// Limits of the CAS port's services.
    pub limits: Limits,
    /// Whether the port is served over TLS: its URL is then `grpcs://` (unless advertised
    /// otherwise).
    pub tls: bool,
    /// How long the worker's store keeps a referenced blob (its `keep_referenced`), which its
    /// port reports so that members that keep another time are refused.
    pub keep_referenced: Duration,
}

impl WorkerCasOptions {
    /// `replicas` copies, repairs every 5 minutes at 100 MiB/s, default limits, plaintext.
    pub fn new(replicas: u32) -> Self {
        Self {
            replicas,
            repair_bandwidth: 100 << 20,
            repair_interval: Duration::from_secs(300),
            limits: Limits::default(),
            tls: false,
            keep_referenced: crate::store::disk::KEEP_REFERENCED,
        }
    }
}

/// A worker's share of the cluster's CAS, opened and bound but not serving yet.
#[derive(Debug)]
pub struct WorkerCas {
    /// Where the worker reads and writes blobs: the cluster, its own store among the members.
    pub store: Arc<ReplicatedStore>,
    /// The worker's own blobs.
    pub local: Arc<dyn ListBlobs>,
    /// The CAS port.
    pub listener: TcpListener,
    /// The URL other members reach this one at.
    pub url: String,
    options: WorkerCasOptions,
}

impl WorkerCas {
    /// Binds `listen` for the worker `name` keeping its blobs in `local`; it is reached at
    /// `advertise` (a URL, or a host name), else at the bound address (an unspecified one as
    /// the host `name`).
    pub async fn bind(
        local: Arc<dyn ListBlobs>,
        listen: SocketAddr,
        advertise: Option<&str>,
        name: &str,
        options: WorkerCasOptions,
    ) -> Result<Self> {
        let store = Arc::new(ReplicatedStore::new(options.replicas as usize)?);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("binding {listen}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("reading the CAS port's address", e))?;
        let mut url = remexec_core::membership::advertised_url(advertise, bound, name);
        if options.tls && advertise.is_none() {
            url = url.replacen("grpc://", "grpcs://", 1);
        }
        remexec_core::client::endpoint(&url)?;
        Ok(Self {
            store,
            local,
            listener,
            url,
            options,
        })
    }

    /// Copies kept of each blob.
    pub fn replicas(&self) -> u32 {
        self.options.replicas
    }

    /// What the storage plane this worker joins must agree on: its replica count and keep
    /// time.
    pub fn terms(&self) -> StorageTerms {
        StorageTerms {
            replicas: self.options.replicas,
            keep_referenced: self.options.keep_referenced,
        }
    }

    /// Follows the members of `storage` (member `name` among them) and re-replicates until
    /// `stop`; returns the listener and the CAS port's routes, for the worker to serve. `tls`
    /// reaches the other members. Its figures (members, copies to make and made, the store's
    /// usage) go to `metrics`.
    pub fn start(
        self,
        storage: &Membership,
        name: &str,
        tls: ClientTls,
        metrics: &Metrics,
        stop: CancellationToken,
    ) -> (TcpListener, tonic::service::Routes) {
        let local: Arc<dyn BlobStore> = self.local.clone();
        // In an etcd roster, the worker lists itself (until it stops).
        let me = Member {
            name: name.to_string(),
            url: self.url.clone(),
        };
        storage.register(me, stop.clone().cancelled_owned());
        let members = storage.members();
        count_members(&self.store, members.clone(), metrics);
        Arc::clone(&self.store).follow_roster(storage.roster());
        Arc::clone(&self.store).follow(members.clone(), tls, Some((name.to_string(), local)));
        let repairer = Arc::new(Repairer::new(
            name,
            Arc::clone(&self.local),
            Arc::clone(&self.store),
            self.options.repair_bandwidth,
        ));
        let (repair, disk) = (Arc::clone(&repairer), self.local.clone());
        metrics.on_scrape(move |m| {
            m.copies_to_make(repair.below_replicas());
            m.copies_made(repair.copies_made());
            if let Some(usage) = disk.usage() {
                m.store_usage("worker_cas", usage);
            }
        });
        let period = self.options.repair_interval.max(Duration::from_secs(1));
        Arc::clone(&repairer).spawn(members.clone(), period, stop);
        warn_unless_listed(members.clone(), name.to_string());
        let cluster = ClusterService::member(
            Arc::clone(&self.store),
            members,
            name.to_string(),
            self.url.clone(),
            Arc::clone(&self.local),
            repairer,
        )
        .with_keep_referenced(self.options.keep_referenced);
        // The worker's blobs, hash-verified on write; no Action Cache here.
        let services = CacheServices::new(self.local, Arc::new(MemoryActionCache::new(0)))
            .with_limits(self.options.limits);
        let (_reporter, health) = tonic_health::server::health_reporter();
        let routes = tonic::service::Routes::new(services.capabilities())
            .add_service(services.cas())
            .add_service(services.byte_stream())
            .add_service(cluster.into_service())
            .add_service(health);
        (self.listener, routes)
    }
}

/// Counts `store`'s members in `metrics` at each scrape: those `live` lists, and those on the
/// roster `store` cannot reach.
fn count_members(
    store: &Arc<ReplicatedStore>,
    live: watch::Receiver<Vec<Member>>,
    metrics: &Metrics,
) {
    let store = Arc::downgrade(store);
    metrics.on_scrape(move |m| {
        m.cluster_members(live.borrow().len());
        if let Some(store) = store.upgrade() {
            m.unreachable_members(store.unreachable().len());
        }
    });
}

/// Logs an error if, 10 s on, worker `name` is not among the members its seeds resolve to: it
/// then keeps no blobs for the cluster.
fn warn_unless_listed(mut members: watch::Receiver<Vec<Member>>, name: String) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if !members.borrow_and_update().iter().any(|m| m.name == name) {
            tracing::error!(worker = %name,
                "this worker's CAS port is not among the members its storage seeds resolve to: list it in --storage");
        }
    });
}

/// A scheduler among its peers, the schedulers `seeds` resolve to (reached with `tls`, the
/// cluster certificate), bound at `bound` and reached at `advertise`: the peers, the Action
/// Cache it shares with them over `local` (each entry on 2 schedulers), and the `Peer` service
/// that answers them from `local`. The scheduler count goes to `metrics`.
pub async fn share_action_cache(
    seeds: Vec<String>,
    advertise: Option<&str>,
    bound: SocketAddr,
    local: Arc<dyn ActionCache>,
    tls: &ClientTls,
    metrics: &Metrics,
) -> Result<(Peers, Arc<dyn ActionCache>, PeerService)> {
    let peers = Peers::start(seeds, advertise, bound, tls.clone()).await?;
    let watched = peers.members();
    metrics.on_scrape(move |m| m.cluster_schedulers(watched.borrow().len()));
    let name = peers.name.clone();
    let sharded = Arc::new(ShardedActionCache::new(name, Arc::clone(&local), 2)?);
    Arc::clone(&sharded).follow(peers.members(), tls.clone());
    Ok((peers, sharded, PeerService::new(local)))
}
