//! `remexec serve` and `remexec scheduler` as the [`Config`] describes them: the store trees
//! ([`store_specs`]), then a [`SchedulerNode`] over them and, for `serve`, a local worker
//! attached through an in-process link ([`BoundServer`]). Only the mapping from the config
//! lives here; the nodes are remexec-scheduler's and remexec-worker's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remexec_cas::spec::{CacheSpec, StoreSpec};
use remexec_cas::{CacheServices, MeteredStore, VerifyingStore};
use remexec_core::client::ClientTls;
use remexec_core::metrics::Metrics;
use remexec_core::server::admin::Readiness;
use remexec_core::{BlobStore, Error, Result};
use remexec_proto::cluster::v1::{cluster_server, peer_server};
use remexec_scheduler::WorkerPool;
use remexec_scheduler::node::{Listen, PortOptions, SchedulerNode};
use remexec_scheduler::routing::Routing;
use remexec_worker::node::WorkerNode;
use remexec_worker::{Isolation, Worker};

use crate::config::Config;
use crate::security::Security;

/// The trees of the external tier that `[external]` names, or `None` if it names none
/// ([`ExternalOptions::specs`](remexec_cas::external_options::ExternalOptions::specs)), with
/// its CA file read here and object store options from this process's environment.
pub async fn external_specs(config: &Config) -> Result<Option<(StoreSpec, CacheSpec)>> {
    let section = &config.external;
    let ca_pem = match section.ca_file.as_ref().filter(|_| section.is_set()) {
        Some(path) => Some(
            tokio::fs::read(path)
                .await
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
        ),
        None => None,
    };
    section.specs(ca_pem, std::env::vars())
}

/// The CAS and Action Cache trees `config` describes for `role`
/// ([`local_specs`](remexec_cas::options::local_specs)), with the `[external]` tier, if any.
pub async fn store_specs(config: &Config, role: Role) -> Result<(StoreSpec, CacheSpec)> {
    let (external, worker) = (external_specs(config).await?, role == Role::AllInOne);
    let (cas, ac) = (&config.cas, &config.action_cache);
    let specs = remexec_cas::options::local_specs(&config.data_dir, cas, ac, external, worker);
    Ok(specs)
}

/// Which parts one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// CAS, Action Cache, scheduler and a local worker: `remexec serve`.
    AllInOne,
    /// CAS, Action Cache and scheduler; workers attach over the network: `remexec scheduler`.
    Scheduler,
}

/// `remexec serve` or `remexec scheduler`, bound and not yet serving: a [`SchedulerNode`] and,
/// for `serve`, its local worker.
#[derive(Debug)]
pub struct BoundServer {
    node: SchedulerNode,
    local_worker: Option<Worker>,
}

impl BoundServer {
    /// `remexec serve` ([`Role::AllInOne`]) or `remexec scheduler` ([`Role::Scheduler`]):
    /// opens the stores `config` describes and binds its listen address (port 0 picks a free
    /// port).
    pub async fn bind(config: &Config, role: Role) -> Result<Self> {
        Self::bind_secured(config, role, Security::load(config)?).await
    }

    /// [`bind`](Self::bind) with `security` already loaded (keep a clone to
    /// [`reload`](Security::reload) its certificates).
    pub async fn bind_secured(config: &Config, role: Role, security: Security) -> Result<Self> {
        let isolation = Arc::new(remexec_worker::ProcessIsolation::default());
        Self::bind_with(config, role, security, isolation).await
    }

    /// [`bind_secured`](Self::bind_secured), the local worker running its actions under
    /// `isolation` (`remexec serve` gives it [`worker_isolation`](crate::sandbox::worker_isolation);
    /// the default is plain processes).
    pub async fn bind_with(
        config: &Config,
        role: Role,
        security: Security,
        isolation: Arc<dyn Isolation>,
    ) -> Result<Self> {
        config.check_limits().map_err(Error::InvalidArgument)?;
        let metrics = Metrics::new();
        let workers = WorkerPool::new();
        let (store_spec, ac_spec) = store_specs(config, role).await?;
        // Workers' CAS ports and the peers are reached with the cluster certificate: read once,
        // and only by a scheduler that has either.
        let cluster_tls =
            match config.cluster.replicas.is_some() || !config.cluster.peers.is_empty() {
                true => crate::security::worker_client_tls(config)?,
                false => ClientTls::default(),
            };
        let (store, cluster) = match config.cluster.replicas {
            Some(r) => {
                let mut options = remexec_cas::cluster::SchedulerStoreOptions::new(r);
                options.small_blob_cache = config.cluster.small_blob_cache.as_u64();
                options.keep_referenced = config.cas.disk_store().keep_referenced;
                let seeds = config.cluster.storage.clone();
                let (store, service) =
                    remexec_cas::cluster::scheduler_store(seeds, &options, &cluster_tls, &metrics)?;
                (store, Some(service))
            }
            None => (store_spec.build().await?, None),
        };
        let ac = ac_spec.build(Arc::clone(&store)).await?;
        let listener = remexec_core::server::bind(config.listen, "client port").await?;
        let bound = remexec_core::server::bound_addr(&listener, "client port")?;
        let (peers, ac, peer_service) =
            crate::cluster::share_action_cache(config, bound, ac, &cluster_tls, &metrics).await?;
        tracing::info!(cas = %store, action_cache = %ac, pool = ?workers, "assembling the server");
        let storage = CacheServices::new(Arc::clone(&store), Arc::clone(&ac))
            .with_metrics(metrics.clone())
            .with_limits(config.cache_limits())
            .with_execution(remexec_scheduler::execution_capabilities())
            .into_routes();
        let cluster = cluster.map(|cluster| match &peers {
            Some(peers) => cluster.with_schedulers(peers.name.clone(), peers.members()),
            None => cluster,
        });
        let ca = config.asset.ca.as_deref().map(std::fs::read).transpose();
        let ca = ca.map_err(|e| Error::io("reading [asset] ca", e))?;
        let assets = (config.asset).mount((&store, &ac), ca, &config.data_dir, &metrics)?;
        let scheduler_config = config.scheduler_config().map_err(Error::InvalidArgument)?;
        let mut node = SchedulerNode::builder(Arc::clone(&store), ac, storage)
            .config(scheduler_config)
            .worker_pool(workers)
            .listener(listener)
            .tls(security.tls)
            .auth(security.auth)
            .transport(config.transport())
            .metrics(metrics.clone())
            .access_log(config.telemetry.access_log)
            .drain(Duration::from_secs(config.drain_secs))
            .build_events(config.build_events.open(&config.data_dir)?)
            .version(crate::status::VERSION);
        if let Some(cluster) = cluster {
            let names = vec![cluster_server::SERVICE_NAME];
            node = node.services(|r| r.add_service(cluster.into_service()), names);
        }
        if let Some(peer) = peer_service {
            let names = vec![peer_server::SERVICE_NAME];
            node = node.services(|r| r.add_service(peer.into_service()), names);
        }
        if let Some(mount) = assets {
            node = node.services(mount, Vec::new());
        }
        if let Some(port) = security.worker_port {
            node = node.worker_port(PortOptions {
                listen: Listen::Addr(port.listen),
                tls: port.tls,
                auth: port.auth,
            });
        }
        if let Some(addr) = config.admin_listen {
            node = node.admin(addr);
        }
        if let Some(peers) = peers {
            let routing = Routing::new(peers.name.clone(), peers.members(), cluster_tls);
            node = node.routing(Arc::new(routing)).keep(peers);
        }
        let node = node.bind().await?;
        let local_worker = match role {
            Role::AllInOne => Some(local_worker(config, store, &metrics, isolation)?),
            Role::Scheduler => None,
        };
        Ok(Self { node, local_worker })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.node.local_addr()
    }

    /// The admin port's address, if there is one.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        self.node.admin_addr()
    }

    /// Whether the server reports itself ready (shared with the health service).
    pub fn readiness(&self) -> Readiness {
        self.node.readiness()
    }

    /// The worker port's address, if there is one.
    pub fn worker_addr(&self) -> Result<Option<SocketAddr>> {
        self.node.worker_addr()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (at most 20 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        if let (Some(worker), Some(channel)) = (self.local_worker, self.node.worker_channel()) {
            // The local worker takes leases over the same protocol as remote ones, through an
            // in-process link that no other process can reach; its CAS is the server's own
            // store, so blobs never cross it.
            let stop = self.node.stopping();
            let local = WorkerNode::new(worker).scheduler(channel);
            tokio::spawn(async move {
                if let Err(e) = local.run(stop.cancelled_owned()).await {
                    tracing::error!(error = %e, "the local worker stopped");
                }
            });
        }
        self.node.serve(shutdown).await
    }
}

/// `serve`'s own worker, over the server's store: its outputs are hashed again as they are
/// stored, like every other write, and counted like a remote worker's transfers.
fn local_worker(
    config: &Config,
    store: Arc<dyn BlobStore>,
    metrics: &Metrics,
    isolation: Arc<dyn Isolation>,
) -> Result<Worker> {
    let store = MeteredStore::new(VerifyingStore::unless_verified(store), metrics.clone());
    Worker::new(
        crate::settings::worker_config(config, "-local")?,
        Arc::new(store),
        isolation,
    )
}
