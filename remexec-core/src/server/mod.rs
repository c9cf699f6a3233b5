//! The port stack every remexec node serves its gRPC services on: TLS, the [`AuthLayer`], the
//! [`ObserveLayer`] (metrics, traces, access log), HTTP/2 limits, graceful shutdown; plus the
//! pieces around it: readiness and the admin HTTP port ([`admin`]), server reflection
//! ([`reflection`]) and in-process links ([`pipe`]).
//!
//! A node builds its [`tonic::service::Routes`], binds a [`Port`] and serves it until a
//! [`CancellationToken`] is cancelled:
//!
//! ```no_run
//! use remexec_core::auth::AuthPolicy;
//! use remexec_core::metrics::Metrics;
//! use remexec_core::server::{Port, Transport};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run(routes: tonic::service::Routes) -> remexec_core::Result<()> {
//! let port = Port::bind("127.0.0.1:0".parse().unwrap(), routes, Metrics::new()).await?
//!     .auth(AuthPolicy::open());
//! println!("serving on {}", port.local_addr()?);
//! port.serve(Transport::default(), CancellationToken::new()).await
//! # }
//! ```

pub mod admin;
pub mod pipe;
pub mod reflection;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthLayer, AuthPolicy};
use crate::metrics::Metrics;
use crate::observe::ObserveLayer;
use crate::tls::ServerTls;
use crate::{Error, Result};

/// Longest a graceful shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// HTTP/2 and message limits, the same on every port of a node.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Transport {
    /// Largest gRPC message, in bytes (enforced by the [`AuthLayer`] before any service).
    pub max_message_size: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 connection flow-control window, in bytes.
    pub connection_window: u32,
    /// HTTP/2 stream flow-control window, in bytes.
    pub stream_window: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            max_message_size: 8 << 20,
            max_concurrent_streams: 1024,
            connection_window: 16 << 20,
            stream_window: 4 << 20,
        }
    }
}

impl Transport {
    /// Limits of `max_message_size` bytes per message, the other limits as given.
    pub fn new(
        max_message_size: usize,
        max_concurrent_streams: u32,
        connection_window: u32,
        stream_window: u32,
    ) -> Self {
        Self {
            max_message_size,
            max_concurrent_streams,
            connection_window,
            stream_window,
        }
    }
}

/// A listener on `addr` (port 0 picks a free port); `what` names it in errors.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the {what} {addr}"), e))
}

/// The address `listener` is bound at (the port picked for port 0); `what` names it in errors.
pub fn bound_addr(listener: &TcpListener, what: &str) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::io(format!("reading the {what}'s address"), e))
}

/// One listening gRPC port: its routes, TLS and authentication policy, and what records its
/// calls. Bound, not yet serving.
#[derive(Debug)]
pub struct Port {
    listener: TcpListener,
    routes: tonic::service::Routes,
    tls: Option<ServerTls>,
    auth: AuthPolicy,
    observe: ObserveLayer,
}

impl Port {
    /// A plaintext port on `listener`, serving `routes`, recording calls into `metrics`. Its
    /// policy admits nobody until [`auth`](Self::auth) says otherwise.
    pub fn new(listener: TcpListener, routes: tonic::service::Routes, metrics: Metrics) -> Self {
        Self {
            listener,
            routes,
            tls: None,
            auth: AuthPolicy::builder().build(),
            observe: ObserveLayer::new(metrics),
        }
    }

    /// [`new`](Self::new) on a listener bound to `addr`.
    pub async fn bind(
        addr: SocketAddr,
        routes: tonic::service::Routes,
        metrics: Metrics,
    ) -> Result<Self> {
        Ok(Self::new(bind(addr, "port").await?, routes, metrics))
    }

    /// Serves over `tls` (or plaintext with `None`).
    pub fn tls(mut self, tls: Option<ServerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Every request is authenticated and authorized by `auth`.
    pub fn auth(mut self, auth: AuthPolicy) -> Self {
        self.auth = auth;
        self
    }

    /// Records calls through `observe` (to turn the access log on, say).
    pub fn observe(mut self, observe: ObserveLayer) -> Self {
        self.observe = observe;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading a port's bound address", e))
    }

    /// Serves until `stop` is cancelled, then lets requests in flight finish: over TLS if the
    /// port has TLS, every request through its [`AuthLayer`], inside its [`ObserveLayer`].
    pub fn serve(
        self,
        transport: Transport,
        stop: CancellationToken,
    ) -> BoxFuture<'static, Result<()>> {
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(transport.stream_window)
            .initial_connection_window_size(transport.connection_window)
            .max_frame_size(crate::client::MAX_FRAME)
            .max_concurrent_streams(transport.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Outermost, so that refused calls are counted and logged too.
            .layer(self.observe)
            .layer(AuthLayer::new(self.auth, transport.max_message_size))
            .add_routes(self.routes);
        let shutdown = async move { stop.cancelled().await };
        let failed = |e: tonic::transport::Error| Error::internal("gRPC server failed", e);
        match self.tls {
            Some(tls) => {
                let incoming = tls.incoming(self.listener);
                Box::pin(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await
                        .map_err(failed)
                })
            }
            None => {
                // `Server::tcp_nodelay` applies only to listeners tonic binds itself; set it
                // per stream.
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(self.listener).map(|stream| {
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
