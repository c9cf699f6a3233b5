//! A worker's settings as the config describes them: its name, its executors and their
//! properties, its cache and limits (`serve`'s local worker and `remexec worker`).

use std::time::Duration;

use remexec_core::Result;
use remexec_worker::{ExecutorSpec, WorkerConfig};

use crate::config::{Config, GroupSection, IsolationKind};

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
    let name = config.worker_name(default_suffix);
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
