//! `remexec serve` and `remexec scheduler`: compose stores and services from a [`Config`] and
//! serve them; `serve` also runs a local worker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use remexec_cas::{
    CacheServices, CompletenessCheckingCache, DiskActionCache, DiskStore, DiskStoreOptions,
    MemoryActionCache, TieredActionCache,
};
use remexec_core::{ActionCache, BlobStore, DigestFunction, Error, Result};
use remexec_proto::reapi::{
    ExecutionCapabilities, PriorityCapabilities, digest_function,
    priority_capabilities::PriorityRange,
};
use remexec_scheduler::{ExecutionService, OperationsService, Scheduler, WorkerPool};
use remexec_worker::{ProcessIsolation, Worker, WorkerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AcBackend, Config};

/// HTTP/2 flow-control windows: large enough that one stream can fill a fast link.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Longest a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Which parts one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// CAS, Action Cache, scheduler and a local worker: `remexec serve`.
    AllInOne,
    /// CAS, Action Cache and scheduler; workers attach over the network: `remexec scheduler`.
    Scheduler,
}

/// The stores under `config.data_dir`.
pub async fn open_stores(config: &Config) -> Result<(Arc<dyn BlobStore>, Arc<dyn ActionCache>)> {
    let store: Arc<dyn BlobStore> = Arc::new(
        DiskStore::open(
            config.data_dir.join("cas"),
            DiskStoreOptions {
                budget: config.cas.disk_budget.as_u64(),
                sync: config.cas.fsync,
            },
        )
        .await?,
    );
    let budget = config.action_cache.budget.as_u64();
    let mut ac: Arc<dyn ActionCache> = match config.action_cache.backend {
        AcBackend::Disk => {
            let disk = Arc::new(
                DiskActionCache::open(config.data_dir.join("ac"), budget, config.cas.fsync).await?,
            );
            match config.action_cache.memory_budget.as_u64() {
                0 => disk,
                front => Arc::new(TieredActionCache::new(
                    Arc::new(MemoryActionCache::new(front)),
                    disk,
                )),
            }
        }
        AcBackend::Memory => Arc::new(MemoryActionCache::new(budget)),
    };
    if config.action_cache.check_completeness {
        ac = Arc::new(CompletenessCheckingCache::new(ac, Arc::clone(&store)));
    }
    Ok((store, ac))
}

/// What Capabilities says about execution.
pub fn execution_capabilities() -> ExecutionCapabilities {
    ExecutionCapabilities {
        digest_function: digest_function::Value::Sha256 as i32,
        exec_enabled: true,
        execution_priority_capabilities: Some(PriorityCapabilities {
            priorities: vec![PriorityRange {
                min_priority: i32::MIN,
                max_priority: i32::MAX,
            }],
        }),
        digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
        ..Default::default()
    }
}

/// The default executor properties of this machine plus the configured extras.
pub fn executor_properties(config: &Config) -> Vec<(String, String)> {
    let mut props = vec![
        ("OSFamily".to_string(), std::env::consts::OS.to_string()),
        ("Arch".to_string(), std::env::consts::ARCH.to_string()),
        ("cpu-count".to_string(), cpus().to_string()),
    ];
    if let Some(mb) = memory_mb() {
        props.push(("memory-mb".into(), mb.to_string()));
    }
    for (name, value) in &config.worker.properties {
        props.retain(|(n, _)| n != name);
        props.push((name.clone(), value.clone()));
    }
    props
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The worker's settings: name, executors and properties from `config`.
pub fn worker_config(config: &Config, default_suffix: &str) -> WorkerConfig {
    let name = if config.worker.name.is_empty() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".into());
        format!("{host}{default_suffix}")
    } else {
        config.worker.name.clone()
    };
    let executors = if config.worker.executors == 0 {
        cpus()
    } else {
        config.worker.executors
    };
    let mut worker = WorkerConfig::new(
        name,
        config.data_dir.join("worker"),
        executors,
        executor_properties(config),
    );
    worker.cache_budget = config.worker.cache_budget.as_u64();
    // A lease without a timeout is still bounded, by the same maximum the scheduler applies.
    worker.max_action_timeout = Duration::from_secs(config.scheduler.max_action_timeout_secs);
    worker
}

/// A bound, not yet serving, server.
#[derive(Debug)]
pub struct BoundServer {
    listener: TcpListener,
    routes: tonic::service::Routes,
    pool: WorkerPool,
    local_worker: Option<Worker>,
}

impl BoundServer {
    /// Opens the stores and binds the listen address (port 0 picks a free port).
    pub async fn bind(config: &Config, role: Role) -> Result<Self> {
        let (store, ac) = open_stores(config).await?;
        let pool = WorkerPool::new();
        let scheduler_config = config.scheduler.to_config().map_err(Error::invalid)?;
        let scheduler = Scheduler::new(
            scheduler_config,
            Arc::clone(&store),
            Arc::clone(&ac),
            Arc::new(pool.clone()),
        )?;
        let routes = CacheServices::new(Arc::clone(&store), ac)
            .with_limits(config.cache_limits())
            .with_execution(execution_capabilities())
            .into_routes()
            .add_service(ExecutionService::new(scheduler.clone()).into_server())
            .add_service(OperationsService::new(scheduler).into_server())
            .add_service(pool.service());
        let local_worker = match role {
            // Outputs are hashed again as they are stored, like every other write.
            Role::AllInOne => Some(Worker::new(
                worker_config(config, "-local"),
                Arc::new(remexec_cas::VerifyingStore::new(store)),
                Arc::new(ProcessIsolation),
            )?),
            Role::Scheduler => None,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(format!("binding {}", config.listen), e))?;
        Ok(Self {
            listener,
            routes,
            pool,
            local_worker,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let addr = self.local_addr()?;
        let stop = CancellationToken::new();
        let pool = self.pool.clone();
        if let Some(worker) = self.local_worker {
            // The local worker takes leases over the same protocol as remote ones, through
            // loopback; its CAS is the server's own store, so blobs never cross the socket.
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Error::Internal(e.to_string()))?
                .connect_lazy();
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(channel, stop).await });
        }
        // `Server::tcp_nodelay` applies only to listeners tonic binds itself; set it per stream.
        let incoming =
            tokio_stream::wrappers::TcpListenerStream::new(self.listener).map(|stream| {
                let stream = stream?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            });
        let result = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                stop.cancel();
                pool.shutdown();
            });
        // Requests in flight get a bounded time to finish once shutdown starts.
        let drained = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            r = result => r.map_err(|e| Error::Internal(format!("gRPC server failed: {e}"))),
            () = drained => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; exiting anyway");
                Ok(())
            }
        };
        stop.cancel();
        result
    }
}

/// `remexec worker`: attaches to a scheduler and runs its leases until `shutdown`.
pub async fn run_worker(config: &Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let url = config
        .worker
        .scheduler
        .replacen("grpc://", "http://", 1)
        .replacen("grpcs://", "https://", 1);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| Error::invalid(format!("scheduler URL {url:?}: {e}")))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .connect_lazy();
    let cas: Arc<dyn BlobStore> = Arc::new(remexec_cas::GrpcStore::new(channel.clone()));
    let worker = Worker::new(worker_config(config, ""), cas, Arc::new(ProcessIsolation))?;
    let stop = CancellationToken::new();
    let run = worker.run(channel, stop.clone());
    tokio::pin!(run);
    tokio::select! {
        () = &mut run => {},
        () = shutdown => stop.cancel(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
