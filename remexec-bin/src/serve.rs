//! `remexec worker`, and what `serve` and `worker` share: the worker's settings from a
//! [`Config`], and the signals. [`BoundServer`] (`serve`, `scheduler`) lives in
//! [`crate::server`] and is re-exported here.

use std::future::Future;
use std::sync::Arc;

use remexec_cas::cluster::storage_membership_with;
use remexec_core::auth::AuthPolicy;
use remexec_core::server::Port;
use remexec_core::{BlobStore, Error, Result};
use remexec_worker::Worker;
use remexec_worker::node::WorkerNode;

use crate::config::Config;
use crate::security::Security;
pub use crate::server::{BoundServer, Role};
pub use remexec_core::server::shutdown_signal;

/// `remexec worker`: attaches to a scheduler and runs its leases under `isolation` until
/// `shutdown`. SIGHUP is logged and otherwise ignored: the worker reads its certificate at
/// start.
pub async fn run_worker(
    config: &Config,
    isolation: Arc<dyn remexec_worker::Isolation>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.check_limits().map_err(Error::InvalidArgument)?;
    let _hup = tokio::spawn(async {
        let kind = tokio::signal::unix::SignalKind::hangup();
        if let Ok(mut hup) = tokio::signal::unix::signal(kind) {
            while hup.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP: a worker reads its certificate at start; restart it to use a new one"
                );
            }
        }
    });
    let tls = crate::security::worker_client_tls(config)?;
    let channels = schedulers(config)
        .iter()
        .map(|url| remexec_core::client::connect_lazy_with(url, &tls))
        .collect::<Result<Vec<_>>>()?;
    let channel = channels
        .first()
        .cloned()
        .ok_or_else(|| Error::invalid("a worker needs a scheduler (--scheduler)"))?;
    let settings = crate::settings::worker_config(config, "")?;
    if (channels.len() > 1 || config.worker.discover_schedulers) && config.worker.listen.is_none() {
        return Err(Error::invalid(
            "a worker serving several schedulers reads and writes the cluster's CAS: start it with --listen",
        ));
    }
    if settings.flexible.is_some() && channels.len() > 1 {
        return Err(Error::invalid(
            "a flexible worker ([worker.flexible]) serves one scheduler, not several",
        ));
    }
    let name = settings.name.clone();
    let cas_port = match config.worker.listen {
        Some(_) => crate::security::worker_cas_port(config)?,
        None => None,
    };
    let mut storage = None;
    // With --listen, the worker keeps blobs for the cluster and reads and writes through it.
    let cluster = match config.worker.listen {
        Some(listen) => {
            let secure = cas_port.is_some();
            Some(crate::cluster::worker_cas(config, listen, &name, secure).await?)
        }
        None => None,
    };
    let cas: Arc<dyn BlobStore> = match &cluster {
        Some(c) => c.store.clone(),
        None => Arc::new(remexec_cas::GrpcStore::new(channel.clone())),
    };
    let worker = Worker::new(settings, cas, isolation)?;
    let metrics = remexec_core::metrics::Metrics::new();
    let mut node = WorkerNode::new(worker.clone())
        .transport(config.transport())
        .metrics(metrics.clone());
    if let Some(cluster) = cluster {
        let addr = remexec_core::server::bound_addr(&cluster.listener, "CAS port")?;
        println!("remexec: cas port on {addr} ({})", cluster.url);
        // Other members are reached, and reach this one, with the cluster certificate.
        let stop = node.stopping();
        let (seeds, terms) = (config.cluster.storage.clone(), cluster.terms());
        let members = storage.insert(storage_membership_with(
            seeds,
            terms,
            tls.clone(),
            Some(&name),
        )?);
        let (listener, routes) = cluster.start(members, &name, tls.clone(), &metrics, stop);
        let port = Port::new(listener, routes, metrics.clone());
        node = node.port(match cas_port {
            Some((tls, auth)) => port.tls(Some(tls)).auth(auth),
            None => port.auth(AuthPolicy::open()),
        });
    }
    if let Some(addr) = config.admin_listen {
        let listener = remexec_core::server::bind(addr, "admin port").await?;
        let bound = remexec_core::server::bound_addr(&listener, "admin port")?;
        println!("remexec: admin port on {bound}");
        node = node.admin(listener, config.worker.min_free_disk.as_u64());
    }
    node = match config.worker.discover_schedulers {
        true => node.discover(schedulers(config), tls),
        false => channels.into_iter().fold(node, WorkerNode::scheduler),
    };
    let ran = node.run(shutdown).await;
    // Off an etcd roster at once.
    if let Some(storage) = storage {
        storage.deregistered().await;
    }
    ran
}

/// The scheduler URLs of `[worker] scheduler` (comma-separated).
fn schedulers(config: &Config) -> Vec<String> {
    config
        .worker
        .scheduler
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reloads `security`'s certificates from `config`'s files on every SIGHUP, for as long as the
/// returned task runs.
pub fn reload_on_sighup(config: Config, security: Security) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if security.tls.is_none()
                && security
                    .worker_port
                    .as_ref()
                    .is_none_or(|p| p.tls.is_none())
            {
                tracing::info!("SIGHUP: no TLS configured, nothing to reload");
                continue;
            }
            match security.reload(&config) {
                Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificates"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reloading the TLS certificates failed; keeping the old ones")
                }
            }
        }
    })
}
