//! [`WorkerNode`]: a worker attached to its schedulers, assembled as a library: the
//! [`Worker`] (its executors, isolation and CAS), the schedulers it serves (given, or
//! discovered and followed), any ports it serves besides (a cluster worker's CAS port), and an
//! admin HTTP port whose `/readyz` says whether it is attached with disk to spare.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use remexec_worker::node::WorkerNode;
//! use remexec_worker::{ProcessIsolation, Worker, WorkerConfig};
//! # use remexec_core::BlobStore;
//!
//! # async fn run(cas: Arc<dyn BlobStore>) -> remexec_core::Result<()> {
//! // `cas`: the scheduler's CAS, e.g. remexec-cas's `GrpcStore` on the same channel.
//! let channel = remexec_core::client::connect_lazy("grpc://127.0.0.1:8980")?;
//! let settings = WorkerConfig::new("w1", "/var/lib/remexec/worker".into(), 4, Vec::new());
//! let worker = Worker::new(settings, cas, Arc::new(ProcessIsolation::default()))?;
//! WorkerNode::new(worker)
//!     .scheduler(channel)
//!     .run(std::future::pending())
//!     .await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;

use remexec_core::client::ClientTls;
use remexec_core::membership::{Membership, MembershipConfig, follow};
use remexec_core::metrics::Metrics;
use remexec_core::server::admin::{Admin, Readiness};
use remexec_core::server::{Port, Transport};
use remexec_core::{Error, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::Worker;

/// The schedulers a worker serves.
#[derive(Debug)]
enum Schedulers {
    /// These, one session each.
    Given(Vec<Channel>),
    /// Every scheduler the seeds resolve to, as a health-checked membership finds them.
    Discovered { seeds: Vec<String>, tls: ClientTls },
}

/// A worker and what it serves; see the [module docs](self).
#[derive(Debug)]
pub struct WorkerNode {
    worker: Worker,
    schedulers: Schedulers,
    ports: Vec<Port>,
    transport: Transport,
    admin: Option<(TcpListener, u64)>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl WorkerNode {
    /// A node for `worker`, attached to no scheduler yet.
    pub fn new(worker: Worker) -> Self {
        Self {
            worker,
            schedulers: Schedulers::Given(Vec::new()),
            ports: Vec::new(),
            transport: Transport::default(),
            admin: None,
            metrics: Metrics::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Cancelled when the node stops (for tasks that should stop with it).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves the scheduler at the other end of `channel` too (a session each; a session
    /// reconnects until the node stops).
    pub fn scheduler(mut self, channel: Channel) -> Self {
        match &mut self.schedulers {
            Schedulers::Given(channels) => channels.push(channel),
            Schedulers::Discovered { .. } => self.schedulers = Schedulers::Given(vec![channel]),
        }
        self
    }

    /// Serves every scheduler that `seeds` (URLs; a DNS name stands for all its addresses)
    /// resolve to, reached with `tls`: a session starts when a scheduler passes its health
    /// checks and ends when it goes. Replaces [`scheduler`](Self::scheduler).
    pub fn discover(mut self, seeds: Vec<String>, tls: ClientTls) -> Self {
        self.schedulers = Schedulers::Discovered { seeds, tls };
        self
    }

    /// Serves `port` too, for as long as the node runs (a cluster worker's CAS port).
    pub fn port(mut self, port: Port) -> Self {
        self.ports.push(port);
        self
    }

    /// HTTP/2 and message limits of the node's ports.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Serves the admin HTTP port on `listener`: `/readyz` answers ready while the worker is
    /// attached and its disk has `min_free_disk` bytes free.
    pub fn admin(mut self, listener: TcpListener, min_free_disk: u64) -> Self {
        self.admin = Some((listener, min_free_disk));
        self
    }

    /// Records into `metrics` (served on the admin port's `/metrics`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown` completes (or every session ends): `InvalidArgument` without a
    /// scheduler.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        if matches!(&self.schedulers, Schedulers::Given(c) if c.is_empty()) {
            return Err(Error::invalid("a worker needs a scheduler"));
        }
        let stop = self.stop;
        for port in self.ports {
            let served = port.serve(self.transport, stop.clone());
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "a worker port failed");
                }
            });
        }
        if let Some((listener, min_free)) = self.admin {
            serve_admin(listener, min_free, &self.worker, self.metrics, &stop);
        }
        let worker = &self.worker;
        let run: futures::future::BoxFuture<'_, ()> = match self.schedulers {
            Schedulers::Discovered { seeds, tls } => {
                Box::pin(serve_discovered(seeds, worker, tls, stop.clone()))
            }
            Schedulers::Given(channels) => {
                let runs = channels.into_iter().map(|c| worker.run(c, stop.clone()));
                Box::pin(async move {
                    futures::future::join_all(runs).await;
                })
            }
        };
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {},
            () = shutdown => stop.cancel(),
        }
        stop.cancel();
        Ok(())
    }
}

/// The worker's admin port on `listener`: readiness (attached, disk free), metrics, until
/// `stop`.
fn serve_admin(
    listener: TcpListener,
    min_free: u64,
    worker: &Worker,
    metrics: Metrics,
    stop: &CancellationToken,
) {
    let (readiness, _health) = Readiness::new();
    let watched = worker.clone();
    metrics.on_scrape(move |m| m.store_usage("worker_cache", watched.cache_usage()));
    let admin = Admin {
        readiness: readiness.clone(),
        metrics,
        pages: None,
    };
    tokio::spawn(remexec_core::server::admin::serve(
        listener,
        admin,
        stop.clone(),
    ));
    let watched = worker.clone();
    remexec_core::server::admin::watch_readiness(
        readiness,
        move || watched.unready(min_free),
        stop.clone(),
    );
}

/// Serves every scheduler that `seeds` resolve to, as a health-checked [`Membership`] finds
/// them, one session each, until `stop`: a session starts when its scheduler appears and ends
/// when it goes.
async fn serve_discovered(
    seeds: Vec<String>,
    worker: &Worker,
    tls: ClientTls,
    stop: CancellationToken,
) {
    let mut settings = MembershipConfig::new(seeds);
    settings.tls = tls.clone();
    let membership = match Membership::start(settings) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot discover the schedulers");
            return;
        }
    };
    let (worker, sessions_stop) = (worker.clone(), stop.clone());
    let mut sessions: HashMap<String, CancellationToken> = HashMap::new();
    let task = follow(
        membership.members(),
        tls,
        |_| true,
        move |members, channels| {
            sessions.retain(|url, session| {
                let keep = members.iter().any(|m| m.url == *url);
                if !keep {
                    tracing::info!(%url, "a scheduler left");
                    session.cancel();
                }
                keep
            });
            for member in members {
                let url = &member.url;
                if sessions.contains_key(url) {
                    continue;
                }
                let Some(channel) = channels.get(url) else {
                    continue;
                };
                tracing::info!(%url, "a scheduler joined");
                let session = sessions_stop.child_token();
                let (worker, channel, token) = (worker.clone(), channel.clone(), session.clone());
                tokio::spawn(async move { worker.run(channel, token).await });
                sessions.insert(url.clone(), session);
            }
        },
    );
    // The membership lives as long as this function, which ends with `stop` (every session
    // is a child of it) or with the membership.
    let abort = task.abort_handle();
    tokio::select! {
        () = stop.cancelled() => abort.abort(),
        ended = task => if let Err(e) = ended {
            tracing::error!(error = %e, "following the schedulers failed");
        }
    }
    drop(membership);
}
