//! The cluster's parts as the config describes them: a scheduler's CAS over its workers, a
//! worker's share of the CAS ([`remexec_cas::cluster`]), and the schedulers sharing the Action
//! Cache ([`Peers`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use remexec_cas::DiskStore;
use remexec_cas::cluster::{WorkerCas, WorkerCasOptions};
use remexec_cas::service::PeerService;
use remexec_core::client::ClientTls;
use remexec_core::membership::Peers;
use remexec_core::metrics::Metrics;
use remexec_core::{ActionCache, Result};

use crate::config::Config;

/// Opens `{data_dir}/cas` and binds `listen`, for worker `name`: its share of the cluster's
/// CAS, served over TLS if `secure`.
pub async fn worker_cas(
    config: &Config,
    listen: SocketAddr,
    name: &str,
    secure: bool,
) -> Result<WorkerCas> {
    // The file cache and the action directories count against the same disk budget.
    let mut disk_options = config.cas.disk_store();
    disk_options.share_with = Some(config.data_dir.join("worker"));
    let disk = DiskStore::open(config.data_dir.join("cas"), disk_options).await?;
    let mut options = WorkerCasOptions::new(config.cluster.replicas.unwrap_or(2));
    options.repair_bandwidth = config.cluster.repair_bandwidth.as_u64();
    options.repair_interval = Duration::from_secs(config.cluster.repair_interval_secs);
    (options.limits, options.tls) = (config.cache_limits(), secure);
    options.keep_referenced = config.cas.disk_store().keep_referenced;
    let advertise = config.cluster.advertise.as_deref();
    WorkerCas::bind(Arc::new(disk), listen, advertise, name, options).await
}

/// For a scheduler with `[cluster] peers` bound at `bound`: its peers, the Action Cache it
/// shares with them over `local`, and the `Peer` service
/// ([`remexec_cas::cluster::share_action_cache`]). Otherwise `local` alone.
#[allow(clippy::type_complexity)]
pub async fn share_action_cache(
    config: &Config,
    bound: SocketAddr,
    local: Arc<dyn ActionCache>,
    tls: &ClientTls,
    metrics: &Metrics,
) -> Result<(Option<Peers>, Arc<dyn ActionCache>, Option<PeerService>)> {
    if config.cluster.peers.is_empty() {
        return Ok((None, local, None));
    }
    let (seeds, advertise) = (
        config.cluster.peers.clone(),
        config.cluster.advertise.as_deref(),
    );
    let (peers, shared, service) =
        remexec_cas::cluster::share_action_cache(seeds, advertise, bound, local, tls, metrics)
            .await?;
    Ok((Some(peers), shared, Some(service)))
}
