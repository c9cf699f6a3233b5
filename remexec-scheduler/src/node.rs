//! [`SchedulerNode`]: a whole scheduler, assembled as a library over any stores, Action Cache
//! and executor pool, on the port stack of `remexec_core::server`.
//!
//! The node serves, on its client port, the storage services it is given (remexec-cas's
//! `CacheServices`, or an embedder's), Execution and Operations, the worker API (unless a
//! separate worker port is configured, or a custom [`ExecutorPool`] replaces the
//! [`WorkerPool`]), gRPC health and reflection, each request through the port's TLS and
//! authentication policy; and optionally an admin HTTP port with `/healthz`, `/readyz`,
//! `/metrics` and the status page ([`crate::status`]). Shutdown reports not-ready first, waits
//! the drain period, then stops.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use remexec_core::auth::AuthPolicy;
//! use remexec_scheduler::node::SchedulerNode;
//! # use remexec_core::{ActionCache, BlobStore};
//!
//! # async fn run(store: Arc<dyn BlobStore>, ac: Arc<dyn ActionCache>, storage: tonic::service::Routes) -> remexec_core::Result<()> {
//! // `storage`: the CAS, ByteStream, ActionCache and Capabilities services over `store` and
//! // `ac`, e.g. remexec-cas's `CacheServices::new(store, ac).with_execution(..).into_routes()`.
//! let node = SchedulerNode::builder(store, ac, storage)
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .auth(AuthPolicy::open())
//!     .bind()
//!     .await?;
//! println!("scheduler on {}", node.local_addr()?);
//! node.serve(std::future::pending()).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remexec_core::auth::AuthPolicy;
use remexec_core::metrics::Metrics;
use remexec_core::observe::ObserveLayer;
use remexec_core::server::admin::{Admin, Readiness};
use remexec_core::server::{Port, SHUTDOWN_GRACE, Transport};
use remexec_core::tls::ServerTls;
use remexec_core::{ActionCache, BlobStore, Error, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routing::Routing;
use crate::status::StatusSource;
use crate::{ExecutionServices, ExecutorPool, Scheduler, SchedulerConfig, WorkerPool};

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

/// The worker API's service, on the client port when there is no worker port.
const WORKER_SERVICE: &str = "remexec.worker.v1.WorkerService";

/// Where a port listens, and whom it admits.
#[derive(Debug)]
pub struct PortOptions {
    /// The address to bind (port 0 picks a free port), or a listener already bound.
    pub listen: Listen,
    /// TLS, or plaintext with `None`.
    pub tls: Option<ServerTls>,
    /// Who may call what.
    pub auth: AuthPolicy,
}

/// An address to bind, or a listener already bound.
#[derive(Debug)]
pub enum Listen {
    /// Bound by the node.
    Addr(SocketAddr),
    /// Bound by the caller.
    Listener(TcpListener),
}

impl Listen {
    async fn bind(self, what: &str) -> Result<TcpListener> {
        match self {
            Listen::Addr(addr) => remexec_core::server::bind(addr, what).await,
            Listen::Listener(listener) => Ok(listener),
        }
    }
}

/// Services an embedder adds to the client port, and their names.
struct Mount(
    Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send + Sync>,
    Vec<&'static str>,
);

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Mount").field(&self.1).finish()
    }
}

/// How actions reach executors.
#[derive(Debug)]
enum Pool {
    Workers(WorkerPool),
    Custom(Arc<dyn ExecutorPool>),
}

/// Builds a [`SchedulerNode`]; see [`SchedulerNode::builder`].
#[derive(Debug)]
pub struct SchedulerNodeBuilder {
    config: SchedulerConfig,
    store: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCache>,
    storage: tonic::service::Routes,
    pool: Pool,
    client: PortOptions,
    worker_port: Option<PortOptions>,
    transport: Transport,
    metrics: Metrics,
    access_log: bool,
    admin: Option<SocketAddr>,
    drain: Duration,
    routing: Option<Arc<Routing>>,
    services: Vec<Mount>,
    descriptors: Vec<&'static [u8]>,
    version: String,
    events: Option<crate::events::BuildEvents>,
    keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl SchedulerNodeBuilder {
    /// The scheduler's settings (default: [`SchedulerConfig::default`]).
    pub fn config(mut self, config: SchedulerConfig) -> Self {
        self.config = config;
        self
    }

    /// Dispatches to `pool`, whose workers attach over remexec's worker protocol (default: a
    /// fresh [`WorkerPool`]).
    pub fn worker_pool(mut self, pool: WorkerPool) -> Self {
        self.pool = Pool::Workers(pool);
        self
    }

    /// Dispatches to any `pool` instead of a [`WorkerPool`]; there is then no worker API.
    pub fn executor_pool(mut self, pool: Arc<dyn ExecutorPool>) -> Self {
        self.pool = Pool::Custom(pool);
        self
    }

    /// Listens on `addr` (default 127.0.0.1:8980; port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.client.listen = Listen::Addr(addr);
        self
    }

    /// Serves the client port on a listener the caller bound.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.client.listen = Listen::Listener(listener);
        self
    }

    /// Serves the client port over `tls` (default: plaintext).
    pub fn tls(mut self, tls: Option<ServerTls>) -> Self {
        self.client.tls = tls;
        self
    }

    /// Admits clients by `auth` (default: nobody; [`AuthPolicy::open`] for everybody).
    pub fn auth(mut self, auth: AuthPolicy) -> Self {
        self.client.auth = auth;
        self
    }

    /// Serves the worker API, with the storage services, on a port of its own (default: on
    /// the client port). Needs the [`WorkerPool`].
    pub fn worker_port(mut self, port: PortOptions) -> Self {
        self.worker_port = Some(port);
        self
    }

    /// HTTP/2 and message limits of every port.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Records into `metrics` (default: a fresh set, served on the admin port's `/metrics`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Logs one line per call.
    pub fn access_log(mut self, yes: bool) -> Self {
        self.access_log = yes;
        self
    }

    /// Serves the admin HTTP port on `addr`. Unless the config sets a `status_url`, links to
    /// failed actions name this port.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Reports not-ready for `drain` before it stops (default: no drain).
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Shares actions and operations with other schedulers: `routing` says which one owns
    /// each, and its id names this scheduler's operations.
    pub fn routing(mut self, routing: Arc<Routing>) -> Self {
        self.routing = Some(routing);
        self
    }

    /// Serves more services on the client port: `mount` adds them to the port's routes (e.g.
    /// `|routes| routes.add_service(mine)`), and reflection lists them under `names`.
    pub fn services(
        mut self,
        mount: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send + Sync + 'static,
        names: Vec<&'static str>,
    ) -> Self {
        self.services.push(Mount(Box::new(mount), names));
        self
    }

    /// Reflection describes the types of these encoded descriptor sets too (default: remexec's
    /// own, `remexec_proto::FILE_DESCRIPTOR_SET`).
    pub fn descriptors(mut self, set: &'static [u8]) -> Self {
        self.descriptors.push(set);
        self
    }

    /// The version the status page reports (default: the crate's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Serves the Build Event Service of `events` on the client port, records the node's
    /// remote actions under their invocations, and shows invocations on the admin port
    /// (nothing for `None`).
    pub fn build_events(mut self, events: impl Into<Option<crate::events::BuildEvents>>) -> Self {
        let Some(events) = events.into() else {
            return self;
        };
        let service = events.service();
        self.events = Some(events);
        self.services(
            move |routes| routes.add_service(service),
            vec![crate::events::SERVICE_NAME],
        )
    }

    /// Keeps `value` alive as long as the node (the membership its routing follows, say).
    pub fn keep(mut self, value: impl std::any::Any + Send + Sync) -> Self {
        self.keep.push(Box::new(value));
        self
    }

    /// Binds the ports and assembles the services. `InvalidArgument` for a worker port without
    /// the [`WorkerPool`], or settings the scheduler refuses.
    pub async fn bind(self) -> Result<SchedulerNode> {
        let admin = match self.admin {
            Some(addr) => Some(remexec_core::server::bind(addr, "admin port").await?),
            None => None,
        };
        let config = settle(self.config, admin.as_ref(), self.routing.as_deref());
        let (pool, workers): (Arc<dyn ExecutorPool>, Option<WorkerPool>) = match self.pool {
            Pool::Workers(workers) => (Arc::new(workers.clone()), Some(workers)),
            Pool::Custom(pool) => (pool, None),
        };
        let metrics = self.metrics;
        let store = Arc::clone(&self.store);
        let scheduler = Scheduler::with_metrics(
            config,
            Arc::clone(&store),
            Arc::clone(&self.ac),
            pool,
            metrics.clone(),
        )?;
        let mut execution = ExecutionServices::new(scheduler.clone());
        if let Some(routing) = self.routing {
            execution = execution.with_routing(routing);
        }
        let (readiness, health) = Readiness::new();
        let observe = ObserveLayer::new(metrics.clone()).access_log(self.access_log);
        let worker_port = match self.worker_port {
            Some(options) => {
                let workers = workers.as_ref().ok_or_else(|| {
                    Error::invalid("a worker port needs the WorkerPool, not a custom executor pool")
                })?;
                // Workers read inputs and write outputs through the same CAS.
                let routes = self
                    .storage
                    .clone()
                    .add_service(workers.service())
                    .add_service(health.clone());
                let listener = options.listen.bind("worker port").await?;
                Some(
                    Port::new(listener, routes, metrics.clone())
                        .tls(options.tls)
                        .auth(options.auth)
                        .observe(observe.clone()),
                )
            }
            None => None,
        };
        let served_workers = workers.as_ref().filter(|_| worker_port.is_none());
        let routes = client_routes(
            execution.add_to(self.storage).add_service(health),
            self.services,
            served_workers,
            self.descriptors,
        )?;
        let listener = self.client.listen.bind("client port").await?;
        let client_port = Port::new(listener, routes, metrics.clone())
            .tls(self.client.tls)
            .auth(self.client.auth.clone())
            .observe(observe);
        let status = StatusSource {
            scheduler: scheduler.clone(),
            store,
            ac: self.ac,
            metrics: metrics.clone(),
            auth: self.client.auth,
            started: Instant::now(),
            version: self.version,
            events: self.events,
        };
        if let Some(events) = &status.events {
            events.follow(&scheduler);
            events.count_into(&metrics);
        }
        let admin = admin.map(|listener| {
            let pages = crate::pages::pages(status, readiness.clone());
            let admin = Admin {
                readiness: readiness.clone(),
                metrics,
                pages: Some(pages),
            };
            (listener, admin)
        });
        Ok(SchedulerNode {
            client_port,
            worker_port,
            transport: self.transport,
            admin,
            readiness,
            drain: self.drain,
            workers,
            scheduler,
            stop: CancellationToken::new(),
            _keep: self.keep,
        })
    }
}

/// `config` with what binding settled: links to failed actions name the admin port actually
/// bound (port 0 picks one) unless a status URL is set, and a cluster scheduler is named by
/// its routing id.
fn settle(
    mut config: SchedulerConfig,
    admin: Option<&TcpListener>,
    routing: Option<&Routing>,
) -> SchedulerConfig {
    if config.status_url.is_none() {
        config.status_url = admin.and_then(|a| a.local_addr().ok()).map(|mut addr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
    }
    if let Some(routing) = routing {
        config.name = routing.id().to_string();
    }
    config
}

/// The client port's routes: `routes` (storage, execution, health), the embedder's `mounts`,
/// the worker API of `workers` if it is served here, and reflection listing exactly these.
fn client_routes(
    mut routes: tonic::service::Routes,
    mounts: Vec<Mount>,
    workers: Option<&WorkerPool>,
    descriptors: Vec<&'static [u8]>,
) -> Result<tonic::service::Routes> {
    let mut served = CLIENT_SERVICES.to_vec();
    for Mount(mount, names) in mounts {
        routes = mount(routes);
        served.extend(names);
    }
    if let Some(workers) = workers {
        routes = routes.add_service(workers.service());
        served.push(WORKER_SERVICE);
    }
    let mut sets = vec![remexec_proto::FILE_DESCRIPTOR_SET];
    sets.extend(descriptors);
    let (v1, v1alpha) = remexec_core::server::reflection::services_for(&sets, &served)?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// A bound scheduler, not yet serving: from [`SchedulerNode::builder`].
#[derive(Debug)]
pub struct SchedulerNode {
    client_port: Port,
    worker_port: Option<Port>,
    transport: Transport,
    admin: Option<(TcpListener, Admin)>,
    readiness: Readiness,
    drain: Duration,
    workers: Option<WorkerPool>,
    scheduler: Scheduler,
    stop: CancellationToken,
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl SchedulerNode {
    /// A node over `store` and `ac`, serving `storage` (the cache services over them) beside
    /// the execution services. Everything else has a default: 127.0.0.1:8980, plaintext,
    /// nobody admitted until [`auth`](SchedulerNodeBuilder::auth), a [`WorkerPool`], no admin
    /// port.
    pub fn builder(
        store: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCache>,
        storage: tonic::service::Routes,
    ) -> SchedulerNodeBuilder {
        SchedulerNodeBuilder {
            config: SchedulerConfig::default(),
            store,
            ac,
            storage,
            pool: Pool::Workers(WorkerPool::new()),
            client: PortOptions {
                listen: Listen::Addr(SocketAddr::from(([127, 0, 0, 1], 8980))),
                tls: None,
                auth: AuthPolicy::builder().build(),
            },
            worker_port: None,
            transport: Transport::default(),
            metrics: Metrics::new(),
            access_log: false,
            admin: None,
            drain: Duration::ZERO,
            routing: None,
            services: Vec::new(),
            descriptors: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            events: None,
            keep: Vec::new(),
        }
    }

    /// The client port's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.client_port.local_addr()
    }

    /// The worker port's address, if there is one.
    pub fn worker_addr(&self) -> Result<Option<SocketAddr>> {
        self.worker_port.as_ref().map(Port::local_addr).transpose()
    }

    /// The admin port's address, if there is one.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>> {
        self.admin
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
            .transpose()
            .map_err(|e| Error::io("reading the admin port's address", e))
    }

    /// Whether the node reports itself ready (shared with the health service).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Cancelled when the node stops serving.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// An in-process channel to the worker API, for a worker in this process (`remexec
    /// serve`'s own): no port, no TLS, no credentials, served until the node stops. `None`
    /// with a custom executor pool.
    pub fn worker_channel(&self) -> Option<tonic::transport::Channel> {
        let workers = self.workers.as_ref()?;
        Some(remexec_core::server::pipe::channel(
            workers.service(),
            self.stop.clone(),
        ))
    }

    /// Serves until `shutdown` completes; then reports not-ready for the drain period, stops
    /// accepting, and lets requests in flight finish (at most 20 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let stop = self.stop;
        if let Some((listener, admin)) = self.admin {
            tokio::spawn(remexec_core::server::admin::serve(
                listener,
                admin,
                stop.clone(),
            ));
        }
        let transport = self.transport;
        let client = self.client_port.serve(transport, stop.clone());
        let worker_port = match self.worker_port {
            Some(port) => port.serve(transport, stop.clone()),
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
