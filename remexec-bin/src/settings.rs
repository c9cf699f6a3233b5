//! A worker's settings as the config describes them: its name, its executors and their
//! properties, its cache and limits (`serve`'s local worker and `remexec worker`).

use std::time::Duration;

use remexec_core::Result;
use remexec_worker::{ExecutorSpec, WorkerConfig};

use remexec_worker::groups::machine_cpus;

use crate::config::{Config, GroupSection};

/// The properties of a group's executors
/// ([`remexec_worker::groups::executor_properties`]), with `[worker] properties`.
pub fn executor_properties(config: &Config, group: &GroupSection) -> Vec<(String, String)> {
    remexec_worker::groups::executor_properties(group, &config.worker.properties)
}

/// The worker's settings: name, executors and properties from `config`.
pub fn worker_config(config: &Config, default_suffix: &str) -> Result<WorkerConfig> {
    let name = config.worker_name(default_suffix);
    let mut worker = WorkerConfig::new(name, config.data_dir.join("worker"), 0, Vec::new());
    let groups = config.worker.groups(machine_cpus());
    for group in &groups {
        let properties = executor_properties(config, group);
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
    let shapes = config.worker.flexible.as_ref();
    worker.flexible = remexec_worker::groups::flexible(&groups, shapes, machine_cpus())?;
    Ok(worker)
}
