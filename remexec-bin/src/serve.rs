//! `remexec serve`: composes stores and services from a [`Config`] and serves them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remexec_cas::{
    CacheServices, CompletenessCheckingCache, DiskActionCache, DiskStore, DiskStoreOptions,
    MemoryActionCache,
};
use remexec_core::{ActionCache, BlobStore, Error, Result};
use futures::StreamExt;
use tokio::net::TcpListener;

use crate::config::{AcBackend, Config};

/// HTTP/2 flow-control windows: large enough that one stream can fill a fast link.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Opens the stores under `config.data_dir` and builds the cache services.
pub async fn cache_services(config: &Config) -> Result<CacheServices> {
    let cas_dir = config.data_dir.join("cas");
    let store: Arc<dyn BlobStore> = Arc::new(
        DiskStore::open(
            &cas_dir,
            DiskStoreOptions {
                budget: config.cas.disk_budget.as_u64(),
                sync: config.cas.fsync,
            },
        )
        .await?,
    );
    let budget = config.action_cache.budget.as_u64();
    let mut ac: Arc<dyn ActionCache> = match config.action_cache.backend {
        AcBackend::Disk => Arc::new(
            DiskActionCache::open(config.data_dir.join("ac"), budget, config.cas.fsync).await?,
        ),
        AcBackend::Memory => Arc::new(MemoryActionCache::new(budget)),
    };
    if config.action_cache.check_completeness {
        ac = Arc::new(CompletenessCheckingCache::new(ac, Arc::clone(&store)));
    }
    Ok(CacheServices::new(store, ac).with_limits(config.cache_limits()))
}

/// A bound, not yet serving, server.
#[derive(Debug)]
pub struct BoundServer {
    listener: TcpListener,
    services: CacheServices,
}

impl BoundServer {
    /// Opens the stores and binds the listen address (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Self> {
        let services = cache_services(config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io(format!("binding {}", config.listen), e))?;
        Ok(Self { listener, services })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        // `Server::tcp_nodelay` applies only to listeners tonic binds itself; set it per stream.
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        });
        tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(self.services.into_routes())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| Error::Internal(format!("gRPC server failed: {e}")))
    }
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
