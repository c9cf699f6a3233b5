//! `remexec worker`, and what `serve` and `worker` share: the worker's settings from a
//! [`Config`], and the signals. [`BoundServer`] (`serve`, `scheduler`) lives in
//! [`crate::server`] and is re-exported here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use remexec_core::{BlobStore, Error, Result};
use remexec_worker::node::WorkerNode;
use remexec_worker::{ExecutorSpec, Worker, WorkerConfig};

use crate::config::{Config, GroupSection, IsolationKind};
use crate::security::Security;
pub use crate::server::{BoundServer, Role};

/// The properties of a group's executors: this machine's (OSFamily, ISA, Arch, cpu-count,
/// memory-mb; a group's limits replace the last two), `network=on` where actions may ask for
/// the network, the `isolation` (and `unixUID=*`, `unixGID=*` when chrooted), then
/// `[worker] properties`, then the group's own, then one
/// `instance-name` per instance name the group serves.
pub fn executor_properties(config: &Config, group: &GroupSection) -> Vec<(String, String)> {
    let cpu_count = match group.cpus_per_action {
        c if c > 0.0 => c.ceil() as usize,
        _ => cpus(),
    };
    let mut props = vec![
        ("OSFamily".to_string(), std::env::consts::OS.to_string()),
        ("ISA".to_string(), remexec_worker::host_isa().to_string()),
        ("Arch".to_string(), std::env::consts::ARCH.to_string()),
        ("cpu-count".to_string(), cpu_count.to_string()),
    ];
    let memory = match group.memory_per_action.as_u64() {
        0 => memory_mb(),
        bytes => Some(bytes >> 20),
    };
    if let Some(mb) = memory {
        props.push(("memory-mb".into(), mb.to_string()));
    }
    // Actions that ask for the network (`network=on`) go where they may have it.
    let network = match group.isolation {
        IsolationKind::Process => true,
        IsolationKind::Namespaces | IsolationKind::Docker => group.allow_network,
    };
    if network {
        props.push((remexec_worker::NETWORK_PROPERTY.into(), "on".into()));
    }
    props.push(("isolation".into(), group.isolation.name().into()));
    if group.chroot_into_input_root {
        // Any uid and gid inside the sandbox: BuildStream asks with `unixUID` and `unixGID`.
        props.push(("unixUID".into(), "*".into()));
        props.push(("unixGID".into(), "*".into()));
    }
    if group.isolation == IsolationKind::Docker {
        // Any image: the action's `container-image` chooses it.
        props.push(("container-image".into(), "*".into()));
    }
    for (name, value) in config.worker.properties.iter().chain(&group.properties) {
        props.retain(|(n, _)| n != name);
        props.push((name.clone(), value.clone()));
    }
    // The instance names the group serves, which the scheduler matches on its own.
    props.retain(|(n, _)| n != remexec_scheduler::INSTANCE_PROPERTY);
    for instance in &group.instance_names {
        props.push((
            remexec_scheduler::INSTANCE_PROPERTY.into(),
            instance.clone(),
        ));
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
pub fn worker_config(config: &Config, default_suffix: &str) -> Result<WorkerConfig> {
    let name = if config.worker.name.is_empty() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".into());
        format!("{host}{default_suffix}")
    } else {
        config.worker.name.clone()
    };
    let mut worker = WorkerConfig::new(name, config.data_dir.join("worker"), 0, Vec::new());
    for group in config.worker.groups(cpus()) {
        let properties = executor_properties(config, &group);
        worker
            .executors
            .extend((0..group.executors).map(|i| ExecutorSpec {
                id: group.executor_id(i),
                properties: properties.clone(),
            }));
    }
    worker.cache_budget = config.worker.cache_budget.as_u64();
    // A lease without a timeout is still bounded, by the same maximum the scheduler applies.
    worker.max_action_timeout = Duration::from_secs(config.scheduler.max_action_timeout_secs);
    worker.tree_limits = config.tree_limits();
    worker.flexible = crate::sandbox::flexible(config, cpus())?;
    Ok(worker)
}

/// `remexec worker`: attaches to a scheduler and runs its leases under `isolation` until
/// `shutdown`. SIGHUP is logged and otherwise ignored: the worker reads its certificate at
/// start.
pub async fn run_worker(
    config: &Config,
    isolation: Arc<dyn remexec_worker::Isolation>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.check_limits().map_err(Error::invalid)?;
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
    let mut settings = worker_config(config, "")?;
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
    // With --listen, the worker keeps blobs for the cluster and reads and writes through it.
    let cluster = match config.worker.listen {
        Some(listen) => Some(crate::cluster::WorkerCas::open(config, listen, &name).await?),
        None => None,
    };
    let cas: Arc<dyn BlobStore> = match &cluster {
        Some(c) => {
            settings.cas = Some(remexec_worker::ClusterCas {
                url: c.url.clone(),
                replicas: c.replicas,
            });
            c.store.clone()
        }
        None => Arc::new(remexec_cas::GrpcStore::new(channel.clone())),
    };
    let worker = Worker::new(settings, cas, isolation)?;
    let metrics = remexec_core::metrics::Metrics::new();
    let mut node = WorkerNode::new(worker.clone())
        .transport(crate::server::transport(config))
        .metrics(metrics.clone());
    if let Some(cluster) = cluster {
        let addr = cluster
            .listener
            .local_addr()
            .map_err(|e| Error::io("reading the CAS port's address", e))?;
        println!("remexec: cas port on {addr} ({})", cluster.url);
        // Workers' CAS ports are plaintext: the scheduler's TLS settings do not apply to them.
        let peers = remexec_core::client::ClientTls::default();
        let stop = node.stopping();
        node = node.port(cluster.start(config, &worker, &name, peers, metrics.clone(), stop));
    }
    if let Some(addr) = config.admin_listen {
        let listener = remexec_core::server::bind(addr, "admin port").await?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("reading the admin port's address", e))?;
        println!("remexec: admin port on {bound}");
        node = node.admin(listener, config.worker.min_free_disk.as_u64());
    }
    node = match config.worker.discover_schedulers {
        true => node.discover(schedulers(config), tls),
        false => channels.into_iter().fold(node, WorkerNode::scheduler),
    };
    node.run(shutdown).await
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

#[cfg(test)]
mod property_tests {
    use super::*;

    /// A chrooted group takes any `unixUID` and `unixGID` (BuildStream's) and names the
    /// instances it serves; another group offers neither.
    #[test]
    fn chrooted_groups_take_any_uid_and_name_their_instances() {
        let config = Config::default();
        let chrooted = GroupSection {
            name: "bst".into(),
            isolation: IsolationKind::Namespaces,
            chroot_into_input_root: true,
            instance_names: vec!["buildstream".into()],
            ..GroupSection::default()
        };
        let props = executor_properties(&config, &chrooted);
        for (name, value) in [
            ("unixUID", "*"),
            ("unixGID", "*"),
            (remexec_scheduler::INSTANCE_PROPERTY, "buildstream"),
            ("ISA", remexec_worker::host_isa()),
        ] {
            assert!(
                props.iter().any(|(n, v)| n == name && v == value),
                "{name}={value} not in {props:?}"
            );
        }
        let plain = executor_properties(&config, &GroupSection::default());
        let named = |n: &str| plain.iter().any(|(p, _)| p == n);
        assert!(!named("unixUID") && !named(remexec_scheduler::INSTANCE_PROPERTY));
    }
}
