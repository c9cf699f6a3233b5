//! The process backend as `serve` and `worker` set it up: every action under a supervisor in a
//! PID namespace of its own (so nothing outlives it or its worker), and, for a worker started
//! as root, as the unprivileged `[worker] run_as` user (created at start if missing).

use std::path::PathBuf;

use remexec_core::{Error, Result};
use std::sync::Arc;

use remexec_worker::{
    ExecutorGroups, Isolation, NamespaceIsolation, ProcessIsolation, RunAs, SupervisorSetup,
};

use crate::config::{Config, GroupSection, IsolationKind};
use remexec_worker::flexible::{Flexible, Shape};

/// The hidden subcommand `remexec` runs its supervisor under (`remexec supervise …`).
pub const SUPERVISE: &str = "supervise";

/// `name` found in this process's `PATH`, or in `/usr/bin` and `/bin`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The user `name`, created as a system user without a home or shell if it does not exist.
/// Refuses root and the worker's own user.
fn action_user(name: &str) -> Result<RunAs> {
    let lookup = || {
        nix::unistd::User::from_name(name)
            .map_err(|e| Error::internal(format!("looking up the user {name:?}"), e))
    };
    let user = match lookup()? {
        Some(user) => user,
        None => {
            let useradd = find_tool("useradd").ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the action user {name:?} does not exist and there is no useradd to create it: \
                     create it, or set [worker] run_as"
                ).into())
            })?;
            let out = std::process::Command::new(useradd)
                .args(["--system", "--user-group", "--no-create-home"])
                .args([
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .output()
                .map_err(|e| Error::io("running useradd", e))?;
            if !out.status.success() {
                return Err(Error::FailedPrecondition(
                    format!(
                        "creating the action user {name:?}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                    .into(),
                ));
            }
            tracing::info!(user = name, "created the action user");
            lookup()?.ok_or_else(|| {
                Error::Internal(format!("the user {name:?} is missing after useradd").into())
            })?
        }
    };
    if user.uid.is_root() || user.uid == nix::unistd::geteuid() {
        return Err(Error::invalid(format!(
            "[worker] run_as {name:?} is the worker's own user or root; actions need a user of their own"
        )));
    }
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// The isolation of `config`'s worker: each executor group's backend (see
/// [`process_isolation`] and [`namespace_isolation`]), behind [`ExecutorGroups`] when there
/// are several groups.
pub fn worker_isolation(
    config: &Config,
    supervisor: Vec<std::ffi::OsString>,
) -> Result<Arc<dyn Isolation>> {
    let groups = config.worker.groups(1);
    let mut names = std::collections::HashSet::new();
    for group in &groups {
        let cpus = group.cpus_per_action;
        if !cpus.is_finite() || cpus < 0.0 {
            return Err(Error::invalid(format!(
                "executor group {:?}: cpus_per_action must be 0 (unlimited) or positive, not {cpus}",
                group.name
            )));
        }
        // The name becomes part of executor ids, cgroup directories and container names.
        let safe = group.name.len() <= 64
            && group
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !safe {
            return Err(Error::invalid(format!(
                "executor group {:?}: a name is at most 64 letters, digits, '-' and '_'",
                group.name
            )));
        }
        if group.chroot_into_input_root && group.isolation != IsolationKind::Namespaces {
            return Err(Error::invalid(format!(
                "executor group {:?}: chroot_into_input_root needs isolation = \"namespaces\"",
                group.name
            )));
        }
        for instance in &group.instance_names {
            remexec_core::validate_instance_name(instance).map_err(|e| {
                Error::InvalidArgument(remexec_core::Message::caused_by(
                    format!("executor group {:?}: instance_names", group.name),
                    e,
                ))
            })?;
        }
        if !names.insert(group.name.clone()) || group.executors == 0 {
            return Err(Error::invalid(format!(
                "executor group {:?}: group names must be unique and groups need executors",
                group.name
            )));
        }
    }
    let isolation_of = |group: &GroupSection| -> Result<Arc<dyn Isolation>> {
        Ok(match group.isolation {
            IsolationKind::Process => {
                let isolation = process_isolation(config, supervisor.clone())?;
                match cgroup_limits(config, group)? {
                    Some(cgroups) => Arc::new(isolation.with_limits(cgroups)?),
                    None => Arc::new(isolation),
                }
            }
            IsolationKind::Namespaces => {
                Arc::new(namespace_isolation(config, group, supervisor.clone())?)
            }
            IsolationKind::Docker => docker_isolation(config, group, &supervisor)?,
        })
    };
    if let [group] = groups.as_slice() {
        return isolation_of(group);
    }
    let mut routed = ExecutorGroups::new();
    for group in &groups {
        let ids = (0..group.executors).map(|i| group.executor_id(i));
        routed = routed.group(ids, isolation_of(group)?);
    }
    Ok(Arc::new(routed))
}

/// The shapes of `[worker.flexible]`, if any: each named group's executors. `InvalidArgument`
/// for a group that does not exist or has no CPU limit, or a shape whose executors' CPUs
/// (`executors` times `cpus_per_action`) or memory do not fit in the section's `cpus` (0:
/// `machine_cpus`) or `memory` (0: unchecked): a flexible worker never promises more.
pub fn flexible(config: &Config, machine_cpus: usize) -> Result<Option<Flexible>> {
    let Some(section) = &config.worker.flexible else {
        return Ok(None);
    };
    let groups = config.worker.groups(machine_cpus);
    if section.groups.len() < 2 {
        return Err(Error::invalid(
            "[worker.flexible]: a flexible worker needs two or more shapes",
        ));
    }
    if let Some(name) = section
        .groups
        .iter()
        .find(|n| n.is_empty() || !groups.iter().any(|g| &g.name == *n))
    {
        return Err(Error::invalid(format!(
            "[worker.flexible] group {name:?}: no such [[worker.groups]]"
        )));
    }
    // Groups in no shape are always offered: the shapes share what they leave.
    let fixed = groups.iter().filter(|g| !section.groups.contains(&g.name));
    let (fixed_cpus, fixed_memory) = fixed.fold((0.0, 0u64), |(c, m), g| {
        let n = g.executors as u64;
        (
            c + n as f64 * g.cpus_per_action,
            m.saturating_add(n.saturating_mul(g.memory_per_action.as_u64())),
        )
    });
    let cpus = match section.cpus {
        0.0 => machine_cpus as f64,
        cpus => cpus,
    } - fixed_cpus;
    let memory = section.memory.as_u64().saturating_sub(fixed_memory);
    let mut shapes = Vec::new();
    for name in &section.groups {
        let bad = |why: String| Error::invalid(format!("[worker.flexible] group {name:?}: {why}"));
        let group = groups
            .iter()
            .find(|g| &g.name == name && !name.is_empty())
            .ok_or_else(|| bad("no such [[worker.groups]]".into()))?;
        let n = group.executors as f64;
        if group.cpus_per_action <= 0.0 || n * group.cpus_per_action > cpus {
            return Err(bad(format!(
                "{} executors of cpus_per_action {} must fit in the {cpus} CPUs that groups \
                 in no shape leave",
                group.executors, group.cpus_per_action
            )));
        }
        if section.memory.as_u64() > 0
            && (group.executors as u64).saturating_mul(group.memory_per_action.as_u64()) > memory
        {
            return Err(bad(format!(
                "its executors' memory_per_action exceed the {memory} bytes left"
            )));
        }
        shapes.push(Shape {
            name: name.clone(),
            executors: (0..group.executors).map(|i| group.executor_id(i)).collect(),
        });
    }
    let flexible = Flexible {
        shapes,
        max_wait: std::time::Duration::from_secs(section.max_wait_secs),
    };
    let ids: Vec<String> = groups
        .iter()
        .flat_map(|g| (0..g.executors).map(|i| g.executor_id(i)))
        .collect();
    flexible.validate(&ids).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by("[worker.flexible]", e))
    })?;
    Ok(Some(flexible))
}

/// The Docker backend of `group` (feature `docker`): containers of the local engine, from the
/// group's image unless the action names one, and a reaper (`supervisor` with
/// [`remexec_worker::docker::REAP`]) that removes them if the worker is killed.
/// `FailedPrecondition` without the feature or an engine.
#[cfg(feature = "docker")]
fn docker_isolation(
    config: &Config,
    group: &GroupSection,
    supervisor: &[std::ffi::OsString],
) -> Result<Arc<dyn Isolation>> {
    let worker = config.worker_name("");
    let name = match group.name.as_str() {
        "" => worker,
        group => format!("{worker}-{group}"),
    };
    let limits = limits(group).unwrap_or(remexec_worker::cgroups::Limits {
        cpus: None,
        memory: None,
    });
    // Called while the runtime is being set up: connect on it.
    let connect = remexec_worker::DockerIsolation::connect(&name, &group.image, limits);
    let isolation =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(connect))
            .map_err(|e| {
                Error::FailedPrecondition(remexec_core::Message::caused_by(
                    "isolation = \"docker\"",
                    e,
                ))
            })?;
    Ok(Arc::new(
        isolation
            .run_as(run_as(config)?)
            .allow_network(group.allow_network)
            .with_reaper(supervisor)?,
    ))
}

#[cfg(not(feature = "docker"))]
fn docker_isolation(
    _: &Config,
    _: &GroupSection,
    _: &[std::ffi::OsString],
) -> Result<Arc<dyn Isolation>> {
    Err(Error::FailedPrecondition(
        "isolation = \"docker\" needs a remexec built with the docker feature".into(),
    ))
}

/// A group's `cpus_per_action` and `memory_per_action`, if either is set.
fn limits(group: &GroupSection) -> Option<remexec_worker::cgroups::Limits> {
    // worker_isolation refuses negative and non-finite values.
    let cpus = (group.cpus_per_action > 0.0).then_some(group.cpus_per_action);
    let bytes = group.memory_per_action.as_u64();
    let memory = (bytes > 0).then_some(bytes);
    (cpus.is_some() || memory.is_some()).then_some(remexec_worker::cgroups::Limits { cpus, memory })
}

/// The user actions run as: `[worker] run_as` for a worker started as root (unless empty),
/// else none, with a warning.
fn run_as(config: &Config) -> Result<Option<RunAs>> {
    let root = nix::unistd::geteuid().is_root();
    Ok(match (root, config.worker.run_as.as_str()) {
        (true, "") => {
            tracing::warn!("[worker] run_as is empty: actions run as root");
            None
        }
        (true, name) => Some(action_user(name)?),
        (false, _) => {
            tracing::warn!(
                "the worker is not root: actions run as its own user; start it as root to run \
                 them as [worker] run_as"
            );
            None
        }
    })
}

/// The namespaces backend of `group`: bubblewrap, started as `[worker] run_as` when the worker
/// is root. `FailedPrecondition` if `bwrap` is missing or the host forbids its namespaces.
///
/// With the group's `cpus_per_action` or `memory_per_action`, each action runs in cgroups with
/// those limits, joined by `supervisor` (see [`process_isolation`]).
pub fn namespace_isolation(
    config: &Config,
    group: &GroupSection,
    supervisor: Vec<std::ffi::OsString>,
) -> Result<NamespaceIsolation> {
    let bwrap = find_tool("bwrap").ok_or_else(|| {
        Error::FailedPrecondition(
            "isolation = \"namespaces\" needs bubblewrap (bwrap): apt-get install bubblewrap"
                .into(),
        )
    })?;
    let mut isolation = NamespaceIsolation::new(bwrap, find_tool("setpriv"), run_as(config)?)?
        .allow_network(group.allow_network)
        .chroot_into_input_root(group.chroot_into_input_root);
    if let Some(unshare) = find_tool("unshare") {
        isolation = isolation.reveal_with(unshare, supervisor.clone());
    }
    match cgroup_limits(config, group)? {
        None => Ok(isolation),
        Some(cgroups) => isolation.with_limits(cgroups, supervisor),
    }
}

/// The cgroups of `group`'s limits, if it has any: `…/remexec-{worker}[-{group}]/`.
fn cgroup_limits(
    config: &Config,
    group: &GroupSection,
) -> Result<Option<remexec_worker::cgroups::CgroupLimits>> {
    let Some(limits) = limits(group) else {
        return Ok(None);
    };
    let worker = config.worker_name("");
    let name = match group.name.as_str() {
        "" => worker,
        group => format!("{worker}-{group}"),
    };
    remexec_worker::cgroups::CgroupLimits::detect(&name, limits).map(Some)
}

/// The process backend for `config`'s worker. Supervised when the host allows it (else plain,
/// with a warning); as `[worker] run_as` when started as root (unless it is empty, which keeps
/// root, with a warning).
///
/// `supervisor` is the supervisor program and its leading arguments: for `remexec`, its own
/// path and [`SUPERVISE`]; a binary that embeds a worker calls
/// [`remexec_worker::supervise`] under its own.
pub fn process_isolation(
    config: &Config,
    supervisor: Vec<std::ffi::OsString>,
) -> Result<ProcessIsolation> {
    let run_as = run_as(config)?;
    let (Some(setpriv), Some(unshare)) = (find_tool("setpriv"), find_tool("unshare")) else {
        tracing::warn!(
            "setpriv or unshare (util-linux) is missing: actions run unsupervised, as the worker's user, \
             and may outlive a killed worker"
        );
        return Ok(ProcessIsolation::default());
    };
    let setup = SupervisorSetup {
        setpriv,
        unshare,
        supervisor,
        run_as,
    };
    match ProcessIsolation::supervised(setup) {
        Ok(isolation) => Ok(isolation),
        Err(e) if run_as.is_none() => {
            tracing::warn!(error = %e, "actions run unsupervised and may outlive a killed worker");
            Ok(ProcessIsolation::default())
        }
        // Running actions as root instead of the configured user would be a silent downgrade.
        Err(e) => Err(e),
    }
}
