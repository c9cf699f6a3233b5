//! Health, readiness and drain: the gRPC health service on every port, and the admin HTTP port
//! with `/healthz`, `/readyz`, `/metrics` (Prometheus) and whatever pages a node adds (a
//! scheduler's status page).
//!
//! `/healthz`, `/readyz` and `/metrics` are open, for probes and scrapers: bind the admin port
//! to a private network. Pages a node adds check their own permissions.
//!
//! `/healthz` answers 200 while the process serves. `/readyz` and the gRPC health service
//! (`grpc.health.v1.Health`, never behind authentication) answer SERVING until shutdown begins;
//! then they turn NOT_SERVING (503) for the drain period, while the listeners still accept, so
//! that a load balancer or a Kubernetes probe stops sending new work before the server stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Error;
use crate::metrics::Metrics;

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

/// What the admin port serves.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Behind `/readyz`.
    pub readiness: Readiness,
    /// Behind `/metrics`.
    pub metrics: Metrics,
    /// More pages (a scheduler's status page), merged in.
    pub pages: Option<axum::Router>,
}

/// Serves the admin port on `listener` until `stop`.
pub async fn serve(listener: TcpListener, admin: Admin, stop: CancellationToken) {
    let readiness = admin.readiness.clone();
    let metrics = admin.metrics.clone();
    let mut app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
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
    if let Some(pages) = admin.pages {
        app = app.merge(pages);
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the admin port failed");
    }
}

/// An error as an HTTP response: 401, 403, 400 or 404 as its gRPC code says, else 500.
pub fn refusal(e: &Error) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = match e.code() {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

/// Keeps `readiness` at what `unready` says (`None`: ready; `Some(why)`: not, logged once
/// per change), asking every second, until `stop`.
pub fn watch_readiness(
    readiness: Readiness,
    unready: impl Fn() -> Option<String> + Send + 'static,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut was = None;
        loop {
            let now = unready();
            if was.as_ref() != Some(&now) {
                match &now {
                    Some(why) => tracing::warn!(%why, "not ready"),
                    None => tracing::info!("ready"),
                }
                readiness.set(now.is_none()).await;
                was = Some(now);
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    })
}
