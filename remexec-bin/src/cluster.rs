//! The cluster's CAS on the workers, as the daemons compose it from the libraries' parts.
//!
//! - A scheduler started with `--replicas R` ([`scheduler_cas`]) keeps no blobs: its CAS is a
//!   [`ReplicatedStore`] over the workers attached to its [`WorkerPool`] that serve their CAS,
//!   and it serves the `Cluster` service ([`ClusterService::router`]).
//! - A worker started with `--listen` ([`WorkerCas`]) keeps blobs in `{data_dir}/cas` and
//!   serves them (CAS, ByteStream, Capabilities, health, `Cluster`) on its own port. It reads
//!   inputs and writes outputs through a [`ReplicatedStore`] over the members the scheduler
//!   sends, its own disk among them, and a [`Repairer`] restores replicas after changes.
//! - Schedulers started with `--peer` ([`SchedulerPeers`]) share the Action Cache, each entry
//!   on 2 of them ([`ShardedActionCache`]), and answer each other's `Peer` calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remexec_cas::ShardedActionCache;
use remexec_cas::service::{ClusterService, PeerService};
use remexec_cas::{
    CacheServices, DiskStore, DiskStoreOptions, MemoryActionCache, Repairer, ReplicatedStore,
};
use remexec_core::client::ClientTls;
use remexec_core::membership::{Member, Membership, MembershipConfig};
use remexec_core::metrics::Metrics;
use remexec_core::server::Port;
use remexec_core::{ActionCache, BlobStore, Error, Result};
use remexec_scheduler::WorkerPool;
use remexec_worker::Worker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// A scheduler's CAS over the workers of `pool` with `replicas` copies of each blob, and its
/// `Cluster` service. Workers are reached in plaintext (their CAS port has no TLS yet).
pub fn scheduler_cas(
    replicas: u32,
    pool: &WorkerPool,
    metrics: &Metrics,
) -> Result<(Arc<ReplicatedStore>, ClusterService)> {
    let store = Arc::new(ReplicatedStore::new(replicas as usize)?);
    let members = pool.members();
    let watched = members.clone();
    metrics.on_scrape(move |m| m.cluster_members(watched.borrow().len()));
    Arc::clone(&store).follow(members.clone(), ClientTls::default(), None);
    let service = ClusterService::router(Arc::clone(&store), members, ClientTls::default());
    Ok((store, service))
}

/// A worker's share of the cluster's CAS, opened and bound but not serving yet.
#[derive(Debug)]
pub struct WorkerCas {
    /// Where the worker reads and writes blobs: the cluster, its own disk among the members.
    pub store: Arc<ReplicatedStore>,
    /// The worker's own blobs.
    pub disk: DiskStore,
    /// The CAS port.
    pub listener: TcpListener,
    /// The URL the scheduler hands to other instances.
    pub url: String,
    /// Replicas kept of each blob.
    pub replicas: u32,
}

impl WorkerCas {
    /// Opens `{data_dir}/cas` and binds `listen`, for worker `name`.
    pub async fn open(config: &Config, listen: SocketAddr, name: &str) -> Result<Self> {
        let replicas = config.cluster.replicas.unwrap_or(2);
        let store = Arc::new(ReplicatedStore::new(replicas as usize)?);
        let options = DiskStoreOptions {
            budget: config.cas.disk_budget.as_u64(),
            sync: config.cas.fsync,
        };
        let disk = DiskStore::open(config.data_dir.join("cas"), options).await?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("binding {listen}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("reading the CAS port's address", e))?;
        let url = remexec_core::membership::advertised_url(
            config.cluster.advertise.as_deref(),
            bound,
            name,
        );
        remexec_core::client::endpoint(&url)?;
        Ok(Self {
            store,
            disk,
            listener,
            url,
            replicas,
        })
    }

    /// Follows `worker`'s members and re-replicates; returns the CAS port, for the worker
    /// node to serve. `tls` reaches the other workers. Its figures (members, copies to make,
    /// the disk's usage, the port's calls) go to `metrics`.
    pub fn start(
        self,
        config: &Config,
        worker: &Worker,
        name: &str,
        tls: ClientTls,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Port {
        let local: Arc<dyn BlobStore> = Arc::new(self.disk.clone());
        Arc::clone(&self.store).follow(worker.members(), tls, Some((name.to_string(), local)));
        let repairer = Arc::new(Repairer::new(
            name,
            self.disk.clone(),
            Arc::clone(&self.store),
            config.cluster.repair_bandwidth.as_u64(),
        ));
        let (members, repair, disk) = (worker.members(), Arc::clone(&repairer), self.disk.clone());
        metrics.on_scrape(move |m| {
            m.cluster_members(members.borrow().len());
            m.copies_to_make(repair.below_replicas());
            if let Some(usage) = BlobStore::usage(&disk) {
                m.store_usage("worker_cas", usage);
            }
        });
        let period = Duration::from_secs(config.cluster.repair_interval_secs.max(1));
        Arc::clone(&repairer).spawn(worker.members(), period, stop);
        let cluster = ClusterService::member(
            Arc::clone(&self.store),
            worker.members(),
            name.to_string(),
            self.url.clone(),
            self.disk.clone(),
            repairer,
        );
        // The worker's blobs, hash-verified on write; no Action Cache here.
        let services = CacheServices::new(Arc::new(self.disk), Arc::new(MemoryActionCache::new(0)))
            .with_limits(config.cache_limits());
        let (_reporter, health) = tonic_health::server::health_reporter();
        let routes = tonic::service::Routes::new(services.capabilities())
            .add_service(services.cas())
            .add_service(services.byte_stream())
            .add_service(cluster.into_service())
            .add_service(health);
        Port::new(self.listener, routes, metrics).auth(remexec_core::auth::AuthPolicy::open())
    }
}

/// For a scheduler with `[cluster] peers`: its peers, the Action Cache it shares with them over
/// `local`, and the `Peer` service that answers them from `local`. Otherwise `local` alone.
#[allow(clippy::type_complexity)]
pub async fn share_action_cache(
    config: &Config,
    bound: SocketAddr,
    local: Arc<dyn ActionCache>,
    metrics: &Metrics,
) -> Result<(
    Option<SchedulerPeers>,
    Arc<dyn ActionCache>,
    Option<PeerService>,
)> {
    let Some(peers) = SchedulerPeers::start(config, bound).await? else {
        return Ok((None, local, None));
    };
    let watched = peers.members();
    metrics.on_scrape(move |m| m.cluster_schedulers(watched.borrow().len()));
    let shared: Arc<dyn ActionCache> = peers.action_cache(Arc::clone(&local))?;
    Ok((Some(peers), shared, Some(PeerService::new(local))))
}

/// A scheduler's peers: the other schedulers, found from `[cluster] peers` seeds and
/// health-checked by a [`Membership`], and this scheduler's own name among them.
#[derive(Debug)]
pub struct SchedulerPeers {
    /// This scheduler's name: its advertised URL.
    pub name: String,
    membership: Membership,
    tls: ClientTls,
}

impl SchedulerPeers {
    /// The peers of a scheduler bound at `bound`, or `None` without `[cluster] peers`. Peers
    /// are reached with the `[worker]` client TLS settings (the cluster certificate).
    pub async fn start(config: &Config, bound: SocketAddr) -> Result<Option<Self>> {
        if config.cluster.peers.is_empty() {
            return Ok(None);
        }
        let tls = crate::security::worker_client_tls(config)?;
        let mut settings = MembershipConfig::new(config.cluster.peers.clone());
        settings.tls = tls.clone();
        // Named as the peers name it: the membership resolves every seed to addresses.
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let advertised = remexec_core::membership::advertised_url(
            config.cluster.advertise.as_deref(),
            bound,
            &host,
        );
        let timeout = Duration::from_secs(5);
        let name = remexec_core::membership::canonical_url(&advertised, timeout).await?;
        tracing::info!(%name, "this scheduler's name among its peers");
        let membership = Membership::start(settings)?;
        // A scheduler that names itself otherwise than its peers do splits the cluster's
        // views of who owns what: say so loudly.
        let (mut live, own) = (membership.members(), name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let listed = live.borrow_and_update().iter().any(|m| m.name == own);
            if !listed {
                tracing::error!(name = %own, live = ?live.borrow().iter().map(|m| &m.name).collect::<Vec<_>>(),
                    "this scheduler is not among the peers its --peer list resolves to: set --advertise to the URL they resolve it to");
            }
        });
        Ok(Some(Self {
            name,
            membership,
            tls,
        }))
    }

    /// The live schedulers, this one included.
    pub fn members(&self) -> tokio::sync::watch::Receiver<Vec<Member>> {
        self.membership.members()
    }

    /// Which scheduler owns each action and operation.
    pub fn routing(&self) -> remexec_scheduler::routing::Routing {
        remexec_scheduler::routing::Routing::new(
            self.name.clone(),
            self.members(),
            self.tls.clone(),
        )
    }

    /// The Action Cache shared with the peers, each entry on 2 schedulers, over this
    /// scheduler's own `local` cache.
    pub fn action_cache(&self, local: Arc<dyn ActionCache>) -> Result<Arc<ShardedActionCache>> {
        let sharded = Arc::new(ShardedActionCache::new(self.name.clone(), local, 2)?);
        Arc::clone(&sharded).follow(self.members(), self.tls.clone());
        Ok(sharded)
    }
}
