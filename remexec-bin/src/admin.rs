//! Health, readiness and drain: the gRPC health service on every port, and the admin HTTP port
//! (`--admin-listen`) with `/healthz`, `/readyz`, `/metrics` (Prometheus) and, on a scheduler,
//! the status page ([`crate::status`]).
//!
//! `/healthz`, `/readyz` and `/metrics` are open, for probes and scrapers: bind the admin port
//! to a private network. The status page needs the `admin` permission once authentication is
//! configured.
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

use crate::status::StatusSource;

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

/// What the admin port serves.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Behind `/readyz`.
    pub readiness: Readiness,
    /// Behind `/metrics`.
    pub metrics: remexec_core::metrics::Metrics,
    /// Behind the status page, on a scheduler.
    pub status: Option<StatusSource>,
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
    if let Some(source) = admin.status {
        app = app.merge(status_routes(source, admin.readiness));
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the admin port failed");
    }
}

/// An error as an HTTP response: 401, 403, 400 or 404 as its gRPC code says, else 500.
fn refusal(e: &Error) -> axum::response::Response {
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

/// The query of an action page.
#[derive(Debug, serde::Deserialize)]
struct ActionQuery {
    #[serde(default)]
    instance: String,
    response: Option<String>,
}

/// `/`, `/status` and `/action/HASH/SIZE`.
fn status_routes(source: StatusSource, readiness: Readiness) -> axum::Router {
    use axum::extract::{Path, Query, State};
    use axum::response::{Html, IntoResponse, Json, Response};
    type S = (StatusSource, Readiness);
    async fn json(State((src, ready)): State<S>, headers: http::HeaderMap) -> Response {
        match src.authorize(&headers, "/status") {
            Ok(()) => Json(src.snapshot(ready.is_ready())).into_response(),
            Err(e) => refusal(&e),
        }
    }
    async fn html(State((src, ready)): State<S>, headers: http::HeaderMap) -> Response {
        match src.authorize(&headers, "/") {
            Ok(()) => Html(crate::status::page(&src.snapshot(ready.is_ready()))).into_response(),
            Err(e) => refusal(&e),
        }
    }
    async fn action(
        State((src, _)): State<S>,
        headers: http::HeaderMap,
        Path((hash, size)): Path<(String, String)>,
        Query(query): Query<ActionQuery>,
    ) -> Response {
        let page = async {
            src.authorize(&headers, "/action")?;
            let action = crate::status::parse_digest(&hash, &size)?;
            let response = match query
                .response
                .as_deref()
                .and_then(remexec_scheduler::observe::split_digest)
            {
                Some((h, s)) => Some(crate::status::parse_digest(h, s)?),
                None => None,
            };
            src.action_page(action, &query.instance, response).await
        };
        match page.await {
            Ok(page) => Html(page).into_response(),
            Err(e) => refusal(&e),
        }
    }
    axum::Router::new()
        .route("/", get(html))
        .route("/status", get(json))
        .route("/action/{hash}/{size}", get(action))
        .with_state((source, readiness))
}
