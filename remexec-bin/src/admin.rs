//! Health, readiness and drain: the gRPC health service on every port, and the admin HTTP port
//! (`--admin-listen`) with `/healthz` and `/readyz`.
//!
//! `/healthz` answers 200 while the process serves. `/readyz` and the gRPC health service
//! (`grpc.health.v1.Health`, never behind authentication) answer SERVING until shutdown begins;
//! then they turn NOT_SERVING (503) for the drain period, while the listeners still accept, so
//! that a load balancer or a Kubernetes probe stops sending new work before the server stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::routing::get;
use remexec_core::{Error, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Whether the server takes new work; shared by the gRPC health service and `/readyz`.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Readiness {
    /// A ready state and the gRPC health service that reports it (for the whole server, the
    /// empty service name).
    pub fn new() -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        (
            Self {
                ready: Arc::new(AtomicBool::new(true)),
                reporter,
            },
            service,
        )
    }

    /// Whether new work is welcome.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the server ready or not, for `/readyz` and the gRPC health service.
    pub async fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

/// Binds the admin port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the admin port {addr}"), e))
}

/// Serves `/healthz` and `/readyz` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, readiness: Readiness, stop: CancellationToken) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    if readiness.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the admin port failed");
    }
}
