//! [`ServerBuilder`]: a whole remexec server assembled as a library, over any [`BlobStore`],
//! [`ActionCache`], [`ExecutorPool`] and [`Isolation`], and the [`BoundServer`] it binds.
//!
//! This is the one crate that depends on remexec-cas, remexec-scheduler and remexec-worker, so
//! the composition lives here. By default the builder assembles exactly what `remexec serve`
//! runs; `remexec serve` and `remexec scheduler` only map their [`Config`] onto it
//! ([`BoundServer::bind`](crate::serve)).
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use remexec_bin::config::Config;
//! use remexec_bin::server::ServerBuilder;
//! use remexec_cas::{MemoryActionCache, MemoryStore};
//!
//! # async fn run() -> remexec_core::Result<()> {
//! let mut config = Config::default();
//! config.data_dir = std::env::temp_dir().join("remexec-doc"); // for the local worker
//! let server = ServerBuilder::new(config)
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .blob_store(Arc::new(MemoryStore::new(1 << 30)))
//!     .action_cache(Arc::new(MemoryActionCache::new(64 << 20)))
//!     .bind()
//!     .await?;
//! println!("listening on {}", server.local_addr()?);
//! server.serve(remexec_bin::serve::shutdown_signal()).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use remexec_cas::spec::{CacheSpec, ObjectSpec, StoreSpec, Upstream};
use remexec_cas::{CacheServices, MeteredStore, VerifyingStore};
use remexec_core::auth::{AuthLayer, AuthPolicy};
use remexec_core::client::ClientTls;
use remexec_core::metrics::Metrics;
use remexec_core::observe::ObserveLayer;
use remexec_core::tls::ServerTls;
use remexec_core::{ActionCache, BlobStore, Error, Result};
use remexec_scheduler::{ExecutionServices, ExecutorPool, Scheduler, WorkerPool};
use remexec_worker::{Isolation, ProcessIsolation, Worker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AcBackend, Config, ExternalKind, redact_url};
use crate::security::Security;
use crate::status::StatusSource;

/// The services of the client port, as reflection lists them (with the reflection services).
const CLIENT_SERVICES: &[&str] = &[
    "build.bazel.remote.execution.v2.Execution",
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.Capabilities",
    "google.bytestream.ByteStream",
    "google.longrunning.Operations",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The cluster service, on a cluster scheduler's client port.
const CLUSTER_SERVICE: &str = "remexec.cluster.v1.Cluster";

/// The schedulers' service to each other, on the client port of a scheduler with peers.
const PEER_SERVICE: &str = "remexec.cluster.v1.Peer";

/// The worker API's service, on the client port when there is no worker port.
const WORKER_SERVICE: &str = "remexec.worker.v1.WorkerService";

/// Longest a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The trees of the external tier that `[external]` names, or `None` if it names none: its
/// blob store and its action cache.
///
/// `grpc://` and `grpcs://` are an upstream REAPI server, reached by a
/// [`GrpcStore`](remexec_cas::GrpcStore) and a [`GrpcActionCache`](remexec_cas::GrpcActionCache)
/// on lazily connected channels (so the server starts while the upstream is down), with the
/// configured upstream instance name and CA file (read here). Any other scheme is an object
/// store, opened with the options of
/// [`object_store_options`](crate::config::ExternalSection::object_store_options) over this
/// process's environment.
pub async fn external_specs(config: &Config) -> Result<Option<(StoreSpec, CacheSpec)>> {
    let section = &config.external;
    if !section.is_set() {
        return Ok(None);
    }
    let label = redact_url(&section.url);
    match section.kind().map_err(Error::invalid)? {
        ExternalKind::Grpc => {
            if !section.options.is_empty() {
                return Err(Error::invalid(format!(
                    "external store {label}: [external.options] apply to object stores, not to an upstream server"
                )));
            }
            let instance = section.upstream_instance.clone();
            if let Some(name) = &instance {
                remexec_core::validate_instance_name(name)?;
            }
            let ca_pem = match &section.ca_file {
                Some(path) => Some(
                    tokio::fs::read(path)
                        .await
                        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
                ),
                None => None,
            };
            let upstream = Upstream {
                url: section.url.clone(),
                tls: ClientTls {
                    ca_pem,
                    domain: section.tls_domain.clone(),
                    identity: None,
                },
                instance,
                label,
            };
            Ok(Some((
                StoreSpec::Grpc(upstream.clone()),
                CacheSpec::Grpc(upstream),
            )))
        }
        ExternalKind::ObjectStore => {
            if section.upstream_instance.is_some()
                || section.ca_file.is_some()
                || section.tls_domain.is_some()
            {
                return Err(Error::invalid(format!(
                    "external store {label}: upstream_instance, ca_file and tls_domain apply to grpc:// and grpcs:// only"
                )));
            }
            let object = ObjectSpec {
                url: section.url.clone(),
                options: section
                    .object_store_options(std::env::vars())
                    .into_iter()
                    .collect(),
                settings: remexec_cas::external::ExternalSettings::default(),
            };
            Ok(Some((
                StoreSpec::Object(object.clone()),
                CacheSpec::Object(object),
            )))
        }
    }
}

/// The CAS and Action Cache trees `config` describes, with the `[external]` tier, if any,
/// behind the local ones:
/// - the CAS: a disk store in `{data_dir}/cas` ([`StoreSpec::Disk`]), in front of the external
///   store (`Tiered`: a write is acknowledged once the external store holds it, reads try the
///   disk first and fill it);
/// - the Action Cache: on disk in `{data_dir}/ac`, with a memory cache in front unless its
///   budget is 0, or in memory; in front of the external cache (written through, filled from
///   it on a miss); checked for completeness against the CAS if `check_completeness` is set.
pub async fn store_specs(config: &Config) -> Result<(StoreSpec, CacheSpec)> {
    let external = external_specs(config).await?;
    let mut store = StoreSpec::Disk {
        path: config.data_dir.join("cas"),
        budget: config.cas.disk_budget.as_u64(),
        fsync: config.cas.fsync,
    };
    let section = &config.action_cache;
    let budget = section.budget.as_u64();
    let mut ac = match section.backend {
        AcBackend::Disk => {
            let disk = CacheSpec::Disk {
                path: config.data_dir.join("ac"),
                budget,
                fsync: config.cas.fsync,
            };
            match section.memory_budget.as_u64() {
                0 => disk,
                front => CacheSpec::Tiered {
                    fast: Box::new(CacheSpec::Memory { budget: front }),
                    slow: Box::new(disk),
                },
            }
        }
        AcBackend::Memory => CacheSpec::Memory { budget },
    };
    if let Some((external_store, external_ac)) = external {
        store = StoreSpec::Tiered {
            fast: Box::new(store),
            slow: Box::new(external_store),
        };
        ac = CacheSpec::Tiered {
            fast: Box::new(ac),
            slow: Box::new(external_ac),
        };
    }
    if section.check_completeness {
        ac = CacheSpec::Completeness(Box::new(ac));
    }
    Ok((store, ac))
}

/// The stores `config` describes ([`store_specs`]), opened.
pub async fn open_stores(config: &Config) -> Result<(Arc<dyn BlobStore>, Arc<dyn ActionCache>)> {
    let (store, ac) = store_specs(config).await?;
    let store = store.build().await?;
    let ac = ac.build(Arc::clone(&store)).await?;
    Ok((store, ac))
}

/// Assembles a server: the cache services, the scheduler's Execution and Operations services,
/// an executor pool and optionally a local worker, on one gRPC port.
///
/// [`new`](Self::new) is today's `remexec serve` stack, configured by a [`Config`]: the stores
/// of [`open_stores`] (with the `[external]` store, if any, behind the local ones), a
/// [`WorkerPool`] whose `WorkerService` is mounted, and a local worker under
/// [`ProcessIsolation`] in `{data_dir}/worker`. Each part can be replaced:
///
/// - [`blob_store`](Self::blob_store), [`action_cache`](Self::action_cache): used as given
///   (the cache services hash-verify writes through them; the config's store settings,
///   `[external]` and `check_completeness` then do not apply to what was replaced);
/// - [`executor_pool`](Self::executor_pool): any [`ExecutorPool`]; then there is no
///   `WorkerService` and no local worker, which attaches only to a `WorkerPool`;
/// - [`isolation`](Self::isolation): how the local worker runs commands;
/// - [`local_worker`](Self::local_worker)`(false)`: `remexec scheduler`.
#[derive(Debug)]
pub struct ServerBuilder {
    config: Config,
    store: Option<Arc<dyn BlobStore>>,
    action_cache: Option<Arc<dyn ActionCache>>,
    pool: Option<Arc<dyn ExecutorPool>>,
    isolation: Arc<dyn Isolation>,
    local_worker: bool,
    security: Security,
    metrics: Metrics,
}

impl ServerBuilder {
    /// `remexec serve`'s stack as `config` describes it: listen address, data directory,
    /// stores, limits, scheduler and local worker settings.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            store: None,
            action_cache: None,
            pool: None,
            isolation: Arc::new(ProcessIsolation::default()),
            local_worker: true,
            security: Security::default(),
            metrics: Metrics::new(),
        }
    }

    /// Records into `metrics` (default: a fresh set, served on the admin port's `/metrics`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// TLS, authentication and the worker port (default: plaintext, open, no worker port).
    /// [`Security::load`] makes one from the config's `[tls]`, `[auth]` and `[cluster]`.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Listens on `addr` instead of the config's `listen` (port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Serves `store` as the CAS, instead of a [`DiskStore`](remexec_cas::DiskStore) in
    /// `{data_dir}/cas`.
    pub fn blob_store(mut self, store: Arc<dyn BlobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Serves `ac` as the Action Cache, instead of the one [`store_specs`] describes.
    pub fn action_cache(mut self, ac: Arc<dyn ActionCache>) -> Self {
        self.action_cache = Some(ac);
        self
    }

    /// Dispatches actions to `pool` instead of a [`WorkerPool`]. Turns the local worker off.
    pub fn executor_pool(mut self, pool: Arc<dyn ExecutorPool>) -> Self {
        self.pool = Some(pool);
        self.local_worker = false;
        self
    }

    /// Runs the local worker's commands under `isolation` instead of [`ProcessIsolation`].
    pub fn isolation(mut self, isolation: Arc<dyn Isolation>) -> Self {
        self.isolation = isolation;
        self
    }

    /// Whether to run a local worker (on by default, off after
    /// [`executor_pool`](Self::executor_pool)). It is `{host name}-local` unless the config's
    /// `[worker] name` says otherwise, works in `{data_dir}/worker` and attaches through an
    /// in-process pipe with the remote workers' protocol, with the server's own store as its CAS.
    pub fn local_worker(mut self, yes: bool) -> Self {
        self.local_worker = yes;
        self
    }

    /// Opens what was not given, assembles the services and binds the listen address (port 0
    /// picks a free port). `InvalidArgument` for a local worker with a custom executor pool,
    /// or a configuration the scheduler or worker refuses.
    pub async fn bind(self) -> Result<BoundServer> {
        let config = &self.config;
        if self.local_worker && self.pool.is_some() {
            return Err(Error::invalid(
                "a local worker attaches to the WorkerPool; it cannot run with a custom executor pool",
            ));
        }
        let metrics = self.metrics;
        let (pool, workers, given, cluster) =
            pool_and_store(config, self.pool, self.store, &metrics)?;
        let (store, ac) = given_or_opened(config, given, self.action_cache).await?;
        let (listener, bound) = bind_listener(config.listen).await?;
        let (peers, ac, peer_service) =
            crate::cluster::share_action_cache(config, bound, ac, &metrics).await?;
        tracing::info!(cas = %store, action_cache = %ac, ?pool, "assembling the server");
        config.check_limits().map_err(Error::invalid)?;
        let admin = match config.admin_listen {
            Some(addr) => Some(crate::admin::bind(addr).await?),
            None => None,
        };
        let (scheduler_config, routing) =
            scheduler_settings(config, peers.as_ref(), admin.as_ref())?;
        let scheduler = Scheduler::with_metrics(
            scheduler_config,
            Arc::clone(&store),
            Arc::clone(&ac),
            pool,
            metrics.clone(),
        )?;
        let mut execution = ExecutionServices::new(scheduler.clone());
        if let Some(routing) = routing {
            execution = execution.with_routing(routing);
        }
        let cache = CacheServices::new(Arc::clone(&store), Arc::clone(&ac))
            .with_metrics(metrics.clone())
            .with_limits(config.cache_limits())
            .with_execution(execution.capabilities());
        let (readiness, health) = crate::admin::Readiness::new();
        let observe = ObserveLayer::new(metrics.clone()).access_log(config.telemetry.access_log);
        let worker_port = match &self.security.worker_port {
            Some(port) => {
                let workers = workers.as_ref().ok_or_else(|| {
                    Error::invalid("a worker port needs the WorkerPool, not a custom executor pool")
                })?;
                // Workers read inputs and write outputs through the same CAS.
                let routes = cache.clone().into_routes();
                let routes = routes
                    .add_service(workers.service())
                    .add_service(health.clone());
                Some(Port::bind(port, routes, observe.clone()).await?)
            }
            None => None,
        };
        let routes = execution.add_to(cache.into_routes()).add_service(health);
        let (routes, extra) = cluster_routes(routes, cluster, peers.as_ref(), peer_service);
        // Without a worker port, workers attach on the client port.
        let worker_api = workers.as_ref().filter(|_| worker_port.is_none());
        let routes = with_reflection(routes, worker_api, &extra)?;
        let status = StatusSource {
            scheduler,
            store: Arc::clone(&store),
            ac,
            metrics: metrics.clone(),
            auth: self.security.auth.clone(),
            started: std::time::Instant::now(),
        };
        let local_worker = match self.local_worker {
            true => Some(local_worker(config, store, &metrics, self.isolation)?),
            false => None,
        };
        Ok(BoundServer {
            client_port: Port {
                listener,
                routes,
                tls: self.security.tls,
                auth: self.security.auth,
                observe,
            },
            worker_port,
            transport: Transport::of(config),
            admin: admin.map(|listener| {
                (
                    listener,
                    crate::admin::Admin {
                        readiness: readiness.clone(),
                        metrics,
                        status: Some(status),
                    },
                )
            }),
            readiness,
            drain: Duration::from_secs(config.drain_secs),
            workers,
            local_worker,
            _peers: peers,
        })
    }
}

/// A listener on `addr`, and the address actually bound (port 0 picks one).
async fn bind_listener(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    Ok((listener, bound))
}

/// The scheduler's settings from `config`, and for a cluster scheduler (one with `peers`) the
/// routing of actions and operations among the schedulers, whose id names its operations.
fn scheduler_settings(
    config: &Config,
    peers: Option<&crate::cluster::SchedulerPeers>,
    admin: Option<&TcpListener>,
) -> Result<(
    remexec_scheduler::SchedulerConfig,
    Option<Arc<remexec_scheduler::routing::Routing>>,
)> {
    let mut scheduler_config = config.scheduler_config().map_err(Error::invalid)?;
    // Any scheduler of a cluster takes any call; each action and operation has an owner.
    let routing = peers.map(|p| Arc::new(p.routing()));
    if let Some(routing) = &routing {
        scheduler_config.name = routing.id().to_string();
    }
    // Links to failed actions name the port actually bound (port 0 picks one).
    let bound = admin.and_then(|a| a.local_addr().ok());
    scheduler_config.status_url = config.status_url(bound);
    Ok((scheduler_config, routing))
}

/// `routes` with what a cluster scheduler serves besides: the `Cluster` service (listing the
/// scheduler `peers`, if any) and the `Peer` service; and the names of those services.
fn cluster_routes(
    mut routes: tonic::service::Routes,
    cluster: Option<remexec_cas::service::ClusterService>,
    peers: Option<&crate::cluster::SchedulerPeers>,
    peer_service: Option<remexec_cas::service::PeerService>,
) -> (tonic::service::Routes, Vec<&'static str>) {
    let mut served = Vec::new();
    if let Some(mut cluster) = cluster {
        if let Some(peers) = peers {
            cluster = cluster.with_schedulers(peers.name.clone(), peers.members());
        }
        routes = routes.add_service(cluster.into_service());
        served.push(CLUSTER_SERVICE);
    }
    if let Some(service) = peer_service {
        routes = routes.add_service(service.into_service());
        served.push(PEER_SERVICE);
    }
    (routes, served)
}

/// The executor pool (and the `WorkerPool` behind it, unless one was given), and the blob
/// store: `given`, or for a cluster (`[cluster] replicas`) the workers' CAS with its `Cluster`
/// service.
#[allow(clippy::type_complexity)]
fn pool_and_store(
    config: &Config,
    pool: Option<Arc<dyn ExecutorPool>>,
    given: Option<Arc<dyn BlobStore>>,
    metrics: &Metrics,
) -> Result<(
    Arc<dyn ExecutorPool>,
    Option<WorkerPool>,
    Option<Arc<dyn BlobStore>>,
    Option<remexec_cas::service::ClusterService>,
)> {
    let (pool, workers): (Arc<dyn ExecutorPool>, _) = match pool {
        Some(pool) => (pool, None),
        None => {
            let workers = match config.cluster.replicas {
                Some(r) => WorkerPool::cluster(r),
                None => WorkerPool::new(),
            };
            (Arc::new(workers.clone()), Some(workers))
        }
    };
    // A cluster's CAS is on its workers.
    let (store, cluster) = match (given, config.cluster.replicas, &workers) {
        (None, Some(r), Some(workers)) => {
            let (store, service) = crate::cluster::scheduler_cas(r, workers, metrics)?;
            (Some(store as Arc<dyn BlobStore>), Some(service))
        }
        (store, _, _) => (store, None),
    };
    Ok((pool, workers, store, cluster))
}

/// `routes` with the worker API (if given) and the reflection services, which list exactly what
/// the port serves (for grpcurl and friends).
fn with_reflection(
    mut routes: tonic::service::Routes,
    worker_api: Option<&WorkerPool>,
    extra: &[&'static str],
) -> Result<tonic::service::Routes> {
    let mut served = CLIENT_SERVICES.to_vec();
    served.extend_from_slice(extra);
    if let Some(workers) = worker_api {
        routes = routes.add_service(workers.service());
        served.push(WORKER_SERVICE);
    }
    let (v1, v1alpha) = crate::reflection::services_for(&served)?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// `serve`'s own worker, over the server's store: its outputs are hashed again as they are
/// stored, like every other write, and counted like a remote worker's transfers.
fn local_worker(
    config: &Config,
    store: Arc<dyn BlobStore>,
    metrics: &Metrics,
    isolation: Arc<dyn Isolation>,
) -> Result<Worker> {
    let store = MeteredStore::new(Arc::new(VerifyingStore::new(store)), metrics.clone());
    Worker::new(
        crate::serve::worker_config(config, "-local")?,
        Arc::new(store),
        isolation,
    )
}

/// `store` and `ac` as given, or else as [`store_specs`] describes them (with the `[external]`
/// tier, if any, behind what is opened).
async fn given_or_opened(
    config: &Config,
    store: Option<Arc<dyn BlobStore>>,
    ac: Option<Arc<dyn ActionCache>>,
) -> Result<(Arc<dyn BlobStore>, Arc<dyn ActionCache>)> {
    if let (Some(store), Some(ac)) = (&store, &ac) {
        return Ok((Arc::clone(store), Arc::clone(ac)));
    }
    let (store_spec, ac_spec) = store_specs(config).await?;
    let store = match store {
        Some(store) => store,
        None => store_spec.build().await?,
    };
    let ac = match ac {
        Some(ac) => ac,
        None => ac_spec.build(Arc::clone(&store)).await?,
    };
    Ok((store, ac))
}

/// HTTP/2 and message limits of every port, from `[limits]`.
#[derive(Clone, Copy, Debug)]
struct Transport {
    max_message_size: usize,
    max_concurrent_streams: u32,
    connection_window: u32,
    stream_window: u32,
}

impl Transport {
    fn of(config: &Config) -> Self {
        let window = |b: bytesize::ByteSize| u32::try_from(b.as_u64()).unwrap_or(u32::MAX >> 1);
        Self {
            max_message_size: config.cache_limits().max_message_size,
            max_concurrent_streams: config.limits.max_concurrent_streams,
            connection_window: window(config.limits.connection_window),
            stream_window: window(config.limits.stream_window),
        }
    }
}

/// One listening port: its routes, TLS and policy.
#[derive(Debug)]
struct Port {
    listener: TcpListener,
    routes: tonic::service::Routes,
    tls: Option<ServerTls>,
    auth: AuthPolicy,
    observe: ObserveLayer,
}

impl Port {
    /// Binds the worker port `port` describes, serving `routes`.
    async fn bind(
        port: &crate::security::WorkerPort,
        routes: tonic::service::Routes,
        observe: ObserveLayer,
    ) -> Result<Self> {
        let listener = TcpListener::bind(port.listen)
            .await
            .map_err(|e| Error::io(format!("binding the worker port {}", port.listen), e))?;
        Ok(Port {
            listener,
            routes,
            tls: port.tls.clone(),
            auth: port.auth.clone(),
            observe,
        })
    }
}

/// A bound, not yet serving, server, from [`ServerBuilder::bind`].
#[derive(Debug)]
pub struct BoundServer {
    client_port: Port,
    /// The separate port of the worker API, if configured.
    worker_port: Option<Port>,
    transport: Transport,
    /// The admin HTTP port, if configured, and what it serves.
    admin: Option<(TcpListener, crate::admin::Admin)>,
    readiness: crate::admin::Readiness,
    /// How long the server reports not-ready before it stops.
    drain: Duration,
    /// The pool workers attach to, unless a custom pool was given.
    workers: Option<WorkerPool>,
    local_worker: Option<Worker>,
    /// The other schedulers, if any (kept for as long as the server runs).
    _peers: Option<crate::cluster::SchedulerPeers>,
}

impl BoundServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.client_port
            .listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))
    }

    /// The admin port's address, if there is one.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        self.admin
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
            .transpose()
            .map_err(|e| Error::io("reading the admin port's address", e))
    }

    /// Whether the server reports itself ready (shared with the health service).
    pub fn readiness(&self) -> crate::admin::Readiness {
        self.readiness.clone()
    }

    /// The worker port's address, if there is one.
    pub fn worker_addr(&self) -> Result<Option<SocketAddr>> {
        self.worker_port
            .as_ref()
            .map(|p| p.listener.local_addr())
            .transpose()
            .map_err(|e| Error::io("reading the worker port's address", e))
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish (at most 20 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let stop = CancellationToken::new();
        if let (Some(worker), Some(workers)) = (self.local_worker, &self.workers) {
            // The local worker takes leases over the same protocol as remote ones, through an
            // in-process pipe that no other process can reach; its CAS is the server's own
            // store, so blobs never cross it.
            let channel = crate::local::worker_channel(workers.service(), stop.clone());
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(channel, stop).await });
        }
        if let Some((listener, admin)) = self.admin {
            tokio::spawn(crate::admin::serve(listener, admin, stop.clone()));
        }
        let transport = self.transport;
        let client = serve_port(self.client_port, transport, stop.clone());
        let worker_port = match self.worker_port {
            Some(port) => serve_port(port, transport, stop.clone()),
            None => Box::pin(async { Ok(()) }),
        };
        let servers = futures::future::try_join(client, worker_port);
        let workers = self.workers;
        let (readiness, drain) = (self.readiness, self.drain);
        let trigger = async {
            shutdown.await;
            // Not ready first, so that balancers and probes stop sending work; then stop.
            readiness.set(false).await;
            if !drain.is_zero() {
                tracing::info!("not ready; draining for {drain:?} before closing the listeners");
                tokio::time::sleep(drain).await;
            }
            stop.cancel();
            if let Some(workers) = &workers {
                workers.shutdown();
            }
            futures::future::pending::<()>().await;
        };
        // Requests in flight get a bounded time to finish once shutdown starts.
        let drained = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            r = servers => r.map(|_| ()),
            () = trigger => Ok(()),
            () = drained => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; exiting anyway");
                Ok(())
            }
        };
        stop.cancel();
        result
    }
}

/// Serves `routes` on `listener` in plaintext, open to everyone, with `config`'s transport
/// limits and calls recorded into `metrics`, until `stop`: a worker's CAS port.
pub(crate) fn serve_open(
    listener: TcpListener,
    routes: tonic::service::Routes,
    config: &Config,
    metrics: Metrics,
    stop: CancellationToken,
) -> BoxFuture<'static, Result<()>> {
    let port = Port {
        listener,
        routes,
        tls: None,
        auth: AuthPolicy::open(),
        observe: ObserveLayer::new(metrics),
    };
    serve_port(port, Transport::of(config), stop)
}

/// Serves one port until `stop`: over TLS if it has TLS, every request through its
/// [`AuthLayer`].
fn serve_port(
    port: Port,
    transport: Transport,
    stop: CancellationToken,
) -> BoxFuture<'static, Result<()>> {
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(transport.stream_window)
        .initial_connection_window_size(transport.connection_window)
        .max_concurrent_streams(transport.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Outermost, so that refused calls are counted and logged too.
        .layer(port.observe)
        .layer(AuthLayer::new(port.auth, transport.max_message_size))
        .add_routes(port.routes);
    let shutdown = async move { stop.cancelled().await };
    let failed = |e: tonic::transport::Error| Error::Internal(format!("gRPC server failed: {e}"));
    match port.tls {
        Some(tls) => {
            let incoming = tls.incoming(port.listener);
            Box::pin(async move {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(failed)
            })
        }
        None => {
            // `Server::tcp_nodelay` applies only to listeners tonic binds itself; set it per stream.
            let incoming =
                tokio_stream::wrappers::TcpListenerStream::new(port.listener).map(|stream| {
                    let stream = stream?;
                    stream.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(stream)
                });
            Box::pin(async move {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .map_err(failed)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use remexec_cas::{MemoryActionCache, MemoryStore};
    use remexec_core::reapi::{ActionResult, GetCapabilitiesRequest};
    use remexec_scheduler::{Cancel, ExecutorInfo, Job, JobOutcome};

    use super::*;

    #[derive(Debug)]
    struct OnePool;

    #[tonic::async_trait]
    impl ExecutorPool for OnePool {
        fn executors(&self) -> Vec<ExecutorInfo> {
            ExecutorInfo::numbered("one", 1, &[])
        }
        async fn run(&self, _: &str, _: Job, _: Cancel) -> Result<JobOutcome> {
            Ok(JobOutcome::Completed(ActionResult::default()))
        }
    }

    fn builder() -> ServerBuilder {
        let config = Config {
            data_dir: "/nonexistent/remexec".into(), // nothing may be opened there
            ..Config::default()
        };
        ServerBuilder::new(config)
            .listen("127.0.0.1:0".parse().unwrap())
            .blob_store(Arc::new(MemoryStore::new(1 << 20)))
            .action_cache(Arc::new(MemoryActionCache::new(1 << 20)))
    }

    #[tokio::test]
    async fn a_custom_pool_replaces_the_worker_pool_and_capabilities_advertise_execution() {
        let refused = builder()
            .executor_pool(Arc::new(OnePool))
            .local_worker(true)
            .bind()
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        let server = builder()
            .executor_pool(Arc::new(OnePool))
            .bind()
            .await
            .unwrap();
        let url = format!("grpc://{}", server.local_addr().unwrap());
        tokio::spawn(server.serve(std::future::pending()));
        let channel = remexec_core::client::connect(&url).await.unwrap();
        let caps = remexec_core::client::capabilities_client(channel.clone())
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            caps.execution_capabilities,
            Some(remexec_scheduler::execution_capabilities())
        );
        // No WorkerPool, so no WorkerService to attach to.
        let attach =
            remexec_proto::worker::v1::worker_service_client::WorkerServiceClient::new(channel)
                .attach(futures::stream::empty())
                .await
                .unwrap_err();
        assert_eq!(attach.code(), tonic::Code::Unimplemented);
    }

    /// A log sink the tests read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_startup_log_shows_the_composition_and_never_a_secret() {
        const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
        let mut cases = vec![
            ("memory://".to_string(), "Object(memory://)"),
            (
                format!("grpc://user:{SECRET}@127.0.0.1:1"),
                "Grpc(grpc://***@127.0.0.1:1)",
            ),
        ];
        if cfg!(feature = "s3") {
            cases.push(("s3://bucket/prefix".into(), "Object(s3://bucket/prefix)"));
        }
        for (url, shown) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                data_dir: dir.path().to_path_buf(),
                ..Config::default()
            };
            config.external.url = url.clone();
            if !url.starts_with("grpc") {
                for (key, value) in [
                    ("access_key_id", "AKIDEXAMPLE"),
                    ("secret_access_key", SECRET),
                    ("endpoint", "http://127.0.0.1:1"),
                    ("allow_http", "true"),
                    ("region", "us-east-1"),
                ] {
                    config.external.options.insert(key.into(), value.into());
                }
            }
            let log = Captured::default();
            let writer = log.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            let guard = tracing::subscriber::set_default(subscriber);
            let builder = ServerBuilder::new(config)
                .listen("127.0.0.1:0".parse().unwrap())
                .local_worker(false);
            let described = format!("{builder:?}");
            let server = builder.bind().await.unwrap();
            drop(guard);
            drop(server);
            let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
            let line = log
                .lines()
                .find(|l| l.contains("assembling the server"))
                .unwrap_or_else(|| panic!("{url}: no startup line in {log:?}"));
            assert!(
                line.contains(&format!("Tiered(Disk({}", dir.path().join("cas").display()))
                    && line.contains(&format!("{shown})")),
                "{url}: {line}"
            );
            for text in [&log, &described] {
                assert!(!text.contains(SECRET), "{url}: the secret is shown: {text}");
            }
        }
    }
}
