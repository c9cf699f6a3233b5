//! Executor groups as an operator describes them, set up on this host: each group's options
//! ([`GroupOptions`], deserializable from a config file's `[[worker.groups]]`), the isolation
//! backend they make ([`isolation`]), their executors' properties ([`executor_properties`]),
//! and a flexible worker's shapes over them ([`flexible`]).
//!
//! The caller finds the host's tools ([`Host`]); this module reads no configuration.
//!
//! ```no_run
//! # fn demo() -> remexec_core::Result<()> {
//! use remexec_worker::groups::{GroupOptions, Host, IsolationKind, Setup, isolation};
//! let group = GroupOptions { executors: 4, isolation: IsolationKind::Process, ..Default::default() };
//! let setup = Setup::new("worker-1", vec!["/usr/bin/my-worker".into(), "supervise".into()], Host::default());
//! let backend = isolation(&setup, &[group])?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use bytesize::ByteSize;
use remexec_core::{Error, Message, Result};
use serde::Deserialize;

use crate::flexible::{Flexible, Shape};
use crate::{
    ExecutorGroups, Isolation, NamespaceIsolation, ProcessIsolation, RunAs, SupervisorSetup,
};

/// The Docker image of actions that name none: the one `.ci/test-image` builds.
pub const DEFAULT_IMAGE: &str = "remexec-test:latest";

/// How a group's actions are isolated.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IsolationKind {
    /// Processes on the host, supervised in a PID namespace (docs/isolation.md).
    #[default]
    Process,
    /// User, mount, PID, network, UTS and IPC namespaces through bubblewrap.
    Namespaces,
    /// A container of the local Docker engine per action (the `docker` feature).
    Docker,
}

impl IsolationKind {
    /// Every kind, in order.
    pub const ALL: [Self; 3] = [Self::Process, Self::Namespaces, Self::Docker];

    /// The name in the config file and in the executor property `isolation`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Namespaces => "namespaces",
            Self::Docker => "docker",
        }
    }
}

/// `[[worker.groups]]`: executors that share an isolation, limits and properties.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupOptions {
    /// Names the group's executors (`{name}-0`, `{name}-1`, ...); unique in the worker.
    pub name: String,
    /// Executors of the group (actions it runs at once).
    pub executors: usize,
    /// How its actions are isolated.
    pub isolation: IsolationKind,
    /// With `namespaces`: CPUs per action (0: unlimited); also advertised as `cpu-count`.
    pub cpus_per_action: f64,
    /// With `namespaces`: memory per action (0: unlimited); also advertised as `memory-mb`.
    pub memory_per_action: ByteSize,
    /// With `namespaces` or `docker`: actions asking for `network=on` may use the network.
    pub allow_network: bool,
    /// With `docker`: the image of actions that name none (`container-image`).
    pub image: String,
    /// Extra properties of the group's executors.
    pub properties: BTreeMap<String, String>,
    /// With `namespaces`: run actions with their input root as `/` (Buildbarn's runner option
    /// of that name), as BuildStream expects.
    pub chroot_into_input_root: bool,
    /// The instance names whose actions this group runs, and only those: the scheduler sends
    /// every action of a listed instance name to the groups that list it. Empty: any instance
    /// name no group lists.
    pub instance_names: Vec<String>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            name: String::new(),
            executors: 1,
            isolation: IsolationKind::Process,
            cpus_per_action: 0.0,
            memory_per_action: ByteSize::b(0),
            allow_network: false,
            image: DEFAULT_IMAGE.into(),
            properties: BTreeMap::new(),
            chroot_into_input_root: false,
            instance_names: Vec::new(),
        }
    }
}

impl GroupOptions {
    /// The id of the group's executor `i`: `{name}-{i}`, or `{i}` for the unnamed group.
    pub fn executor_id(&self, i: usize) -> String {
        if self.name.is_empty() {
            i.to_string()
        } else {
            format!("{}-{i}", self.name)
        }
    }

    /// Its `cpus_per_action` and `memory_per_action`, if either is set.
    fn limits(&self) -> Option<crate::cgroups::Limits> {
        // check_groups refuses negative and non-finite values.
        let cpus = (self.cpus_per_action > 0.0).then_some(self.cpus_per_action);
        let bytes = self.memory_per_action.as_u64();
        let memory = (bytes > 0).then_some(bytes);
        (cpus.is_some() || memory.is_some()).then_some(crate::cgroups::Limits { cpus, memory })
    }
}

/// `[worker.flexible]`: the named groups are shapes of the machine, offered one at a time and
/// switched as the queue asks ([`crate::flexible`]); other groups are always offered.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlexibleOptions {
    /// The groups that are shapes, the first offered at start; two or more.
    pub groups: Vec<String>,
    /// Longest a shape with waiting actions is kept from its turn (seconds), once the active
    /// one has had as long; the drain of running actions comes on top.
    pub max_wait_secs: u64,
    /// CPUs the shapes share: each shape's executors times its `cpus_per_action` must fit.
    /// 0 means the machine's.
    pub cpus: f64,
    /// Memory the shapes share, checked the same way with `memory_per_action`; 0 checks
    /// nothing.
    pub memory: ByteSize,
}

impl Default for FlexibleOptions {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            max_wait_secs: 30,
            cpus: 0.0,
            memory: ByteSize::b(0),
        }
    }
}

/// The host's tools the backends use, as the caller found them (on its `PATH`, say).
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// bubblewrap, for `namespaces`.
    pub bwrap: Option<PathBuf>,
    /// util-linux's `setpriv`, to drop to the action user.
    pub setpriv: Option<PathBuf>,
    /// util-linux's `unshare`, for the mount namespace in which `namespaces`' supervisor
    /// reveals input roots.
    pub unshare: Option<PathBuf>,
    /// `useradd`, to create a missing action user.
    pub useradd: Option<PathBuf>,
}

/// What every group's backend shares: the worker's name (which names cgroups and
/// containers), the action user, the supervisor, the host's tools.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Setup {
    /// The worker's name.
    pub worker: String,
    /// The unprivileged user a worker started as root runs actions as (created if missing);
    /// empty keeps root, with a warning.
    pub run_as: String,
    /// The supervisor program and its leading arguments: a binary that embeds a worker runs
    /// [`crate::supervise`] under its own. It starts once or twice per action, so a small
    /// program that runs just [`crate::supervisor::main`] saves time (`remexec-supervisor`).
    pub supervisor: Vec<OsString>,
    /// The program, and its leading arguments, that removes a Docker backend's containers once
    /// the worker is gone: [`crate::supervise`] under a binary's own (started once per backend).
    /// `new` makes it the supervisor.
    pub reaper: Vec<OsString>,
    /// The host's tools.
    pub host: Host,
}

impl Setup {
    /// Worker `worker` with supervisor `supervisor` and `host`'s tools; actions of a worker
    /// started as root run as `remexec-action`.
    pub fn new(worker: impl Into<String>, supervisor: Vec<OsString>, host: Host) -> Self {
        Self {
            worker: worker.into(),
            run_as: "remexec-action".into(),
            reaper: supervisor.clone(),
            supervisor,
            host,
        }
    }

    /// The name of `group`'s cgroups and containers: `{worker}[-{group}]`.
    fn name_of(&self, group: &GroupOptions) -> String {
        match group.name.as_str() {
            "" => self.worker.clone(),
            group => format!("{}-{group}", self.worker),
        }
    }

    /// The user actions run as: `run_as` for a worker started as root (unless empty), else
    /// none, with a warning.
    fn run_as(&self) -> Result<Option<RunAs>> {
        let root = nix::unistd::geteuid().is_root();
        Ok(match (root, self.run_as.as_str()) {
            (true, "") => {
                tracing::warn!("[worker] run_as is empty: actions run as root");
                None
            }
            (true, name) => Some(action_user(name, self.host.useradd.as_ref())?),
            (false, _) => {
                tracing::warn!(
                    "the worker is not root: actions run as its own user; start it as root to run \
                     them as [worker] run_as"
                );
                None
            }
        })
    }
}

/// The user `name`, created with `useradd` as a system user without a home or shell if it
/// does not exist. Refuses root and the worker's own user.
fn action_user(name: &str, useradd: Option<&PathBuf>) -> Result<RunAs> {
    let lookup = || {
        nix::unistd::User::from_name(name)
            .map_err(|e| Error::internal(format!("looking up the user {name:?}"), e))
    };
    let user = match lookup()? {
        Some(user) => user,
        None => {
            let useradd = useradd.ok_or_else(|| {
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
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                let text = format!("creating the action user {name:?}: {why}");
                return Err(Error::FailedPrecondition(text.into()));
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

/// `InvalidArgument` unless every group has a safe unique name, executors, sane limits, and
/// options its isolation supports.
pub fn check_groups(groups: &[GroupOptions]) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for group in groups {
        let bad = |why: &str| Error::invalid(format!("executor group {:?}: {why}", group.name));
        let cpus = group.cpus_per_action;
        if !cpus.is_finite() || cpus < 0.0 {
            return Err(bad(&format!(
                "cpus_per_action must be 0 (unlimited) or positive, not {cpus}"
            )));
        }
        // The name becomes part of executor ids, cgroup directories and container names.
        let safe = group.name.len() <= 64
            && (group.name.chars()).all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !safe {
            return Err(bad("a name is at most 64 letters, digits, '-' and '_'"));
        }
        if group.chroot_into_input_root && group.isolation != IsolationKind::Namespaces {
            return Err(bad(
                "chroot_into_input_root needs isolation = \"namespaces\"",
            ));
        }
        for instance in &group.instance_names {
            remexec_core::validate_instance_name(instance).map_err(|e| {
                let context = format!("executor group {:?}: instance_names", group.name);
                Error::InvalidArgument(Message::caused_by(context, e))
            })?;
        }
        if !names.insert(group.name.clone()) || group.executors == 0 {
            return Err(bad("group names must be unique and groups need executors"));
        }
    }
    Ok(())
}

/// The isolation of a worker with `groups`: each group's backend (see [`process_isolation`]
/// and [`namespace_isolation`]), behind [`ExecutorGroups`] when there are several.
pub fn isolation(setup: &Setup, groups: &[GroupOptions]) -> Result<Arc<dyn Isolation>> {
    check_groups(groups)?;
    let isolation_of = |group: &GroupOptions| -> Result<Arc<dyn Isolation>> {
        Ok(match group.isolation {
            IsolationKind::Process => {
                let isolation = process_isolation(setup)?;
                match cgroup_limits(setup, group)? {
                    Some(cgroups) => Arc::new(isolation.with_limits(cgroups)?),
                    None => Arc::new(isolation),
                }
            }
            IsolationKind::Namespaces => Arc::new(namespace_isolation(setup, group)?),
            IsolationKind::Docker => docker_isolation(setup, group)?,
        })
    };
    if let [group] = groups {
        return isolation_of(group);
    }
    let mut routed = ExecutorGroups::new();
    for group in groups {
        let ids = (0..group.executors).map(|i| group.executor_id(i));
        routed = routed.group(ids, isolation_of(group)?);
    }
    Ok(Arc::new(routed))
}

/// The process backend. Supervised when the host allows it, as the action user when started as
/// root (unless `run_as` is empty, which keeps root, with a warning); else plain processes of
/// the worker's user, with a warning.
pub fn process_isolation(setup: &Setup) -> Result<ProcessIsolation> {
    let run_as = setup.run_as()?;
    let supervisor = setup.supervisor.clone();
    let config = SupervisorSetup { supervisor, run_as };
    match ProcessIsolation::supervised(config) {
        Ok(isolation) => Ok(isolation),
        // A host that allows no PID namespace (a container without CAP_SYS_ADMIN, say) runs
        // actions as plain processes of the worker's user, as it did when util-linux was
        // missing there: said loudly, since it is also not `run_as`.
        Err(e) => {
            tracing::warn!(
                error = %e,
                run_as = ?run_as,
                "actions run unsupervised, as the worker's user, and may outlive a killed worker"
            );
            Ok(ProcessIsolation::default())
        }
    }
}

/// The namespaces backend of `group`: bubblewrap, started as the action user when the worker
/// is root. `FailedPrecondition` if `bwrap` is missing or the host forbids its namespaces.
/// With the group's limits, each action runs in cgroups with those limits, joined by the
/// supervisor.
pub fn namespace_isolation(setup: &Setup, group: &GroupOptions) -> Result<NamespaceIsolation> {
    let bwrap = setup.host.bwrap.clone().ok_or_else(|| {
        Error::FailedPrecondition(
            "isolation = \"namespaces\" needs bubblewrap (bwrap): apt-get install bubblewrap"
                .into(),
        )
    })?;
    let setpriv = setup.host.setpriv.clone();
    let mut isolation = NamespaceIsolation::new(bwrap, setpriv, setup.run_as()?)?
        .allow_network(group.allow_network)
        .chroot_into_input_root(group.chroot_into_input_root);
    if let Some(unshare) = setup.host.unshare.clone() {
        isolation = isolation.reveal_with(unshare, setup.supervisor.clone());
    }
    if !group.chroot_into_input_root {
        isolation = match isolation.clone().ahead(setup.supervisor.clone()) {
            Ok(ahead) => ahead,
            Err(e) => {
                tracing::warn!(error = %e, "no sandboxes are made ahead of need");
                isolation
            }
        };
    }
    // What each action used, where the host has setpriv (the limits' supervisor measures too).
    if setup.host.setpriv.is_some() {
        isolation = isolation.measure_with(setup.supervisor.clone())?;
    }
    match cgroup_limits(setup, group)? {
        None => Ok(isolation),
        Some(cgroups) => isolation.with_limits(cgroups, setup.supervisor.clone()),
    }
}

/// The cgroups of `group`'s limits, if it has any: `…/remexec-{worker}[-{group}]/`.
fn cgroup_limits(
    setup: &Setup,
    group: &GroupOptions,
) -> Result<Option<crate::cgroups::CgroupLimits>> {
    let Some(limits) = group.limits() else {
        return Ok(None);
    };
    crate::cgroups::CgroupLimits::detect(&setup.name_of(group), limits).map(Some)
}

/// The Docker backend of `group` (feature `docker`): containers of the local engine, from the
/// group's image unless the action names one, and a reaper (the supervisor with
/// [`crate::docker::REAP`]) that removes them if the worker is killed. `FailedPrecondition`
/// without the feature or an engine.
#[cfg(feature = "docker")]
fn docker_isolation(setup: &Setup, group: &GroupOptions) -> Result<Arc<dyn Isolation>> {
    let limits = (group.limits()).unwrap_or(crate::cgroups::Limits {
        cpus: None,
        memory: None,
    });
    // Called while the runtime is being set up: connect on it.
    let name = setup.name_of(group);
    let connect = crate::DockerIsolation::connect(&name, &group.image, limits);
    let isolation =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(connect))
            .map_err(|e| {
                Error::FailedPrecondition(Message::caused_by("isolation = \"docker\"", e))
            })?;
    let isolation = isolation
        .run_as(setup.run_as()?)
        .allow_network(group.allow_network)
        .with_reaper(&setup.reaper)?;
    let ahead = isolation.clone().ahead(setup.supervisor.clone());
    let isolation =
        match tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(ahead)) {
            Ok(ahead) => ahead,
            Err(e) => {
                tracing::warn!(error = %e, "no containers are made ahead of need");
                isolation
            }
        };
    Ok(Arc::new(isolation))
}

#[cfg(not(feature = "docker"))]
fn docker_isolation(_: &Setup, _: &GroupOptions) -> Result<Arc<dyn Isolation>> {
    Err(Error::FailedPrecondition(
        "isolation = \"docker\" needs a remexec built with the docker feature".into(),
    ))
}

/// The shapes of `options` over `groups`, if there are options: each named group's executors.
/// `InvalidArgument` for a group that does not exist or has no CPU limit, or a shape whose
/// executors' CPUs (`executors` times `cpus_per_action`) or memory do not fit in the options'
/// `cpus` (0: `machine_cpus`) or `memory` (0: unchecked): a flexible worker never promises
/// more.
pub fn flexible(
    groups: &[GroupOptions],
    options: Option<&FlexibleOptions>,
    machine_cpus: usize,
) -> Result<Option<Flexible>> {
    let Some(section) = options else {
        return Ok(None);
    };
    if section.groups.len() < 2 {
        return Err(Error::invalid(
            "[worker.flexible]: a flexible worker needs two or more shapes",
        ));
    }
    if let Some(name) =
        (section.groups.iter()).find(|n| n.is_empty() || !groups.iter().any(|g| &g.name == *n))
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
    flexible
        .validate(&ids)
        .map_err(|e| Error::InvalidArgument(Message::caused_by("[worker.flexible]", e)))?;
    Ok(Some(flexible))
}

/// The properties of `group`'s executors: this machine's (OSFamily, ISA, Arch, cpu-count,
/// memory-mb; the group's limits replace the last two), `network=on` where actions may ask for
/// the network, the `isolation` (and `unixUID=*`, `unixGID=*` when chrooted), then `common`,
/// then the group's own, then one `instance-name` per instance name the group serves.
pub fn executor_properties(
    group: &GroupOptions,
    common: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let cpu_count = match group.cpus_per_action {
        c if c > 0.0 => c.ceil() as usize,
        _ => machine_cpus(),
    };
    let mut props = vec![
        ("OSFamily".to_string(), std::env::consts::OS.to_string()),
        ("ISA".to_string(), crate::host_isa().to_string()),
        ("Arch".to_string(), std::env::consts::ARCH.to_string()),
        ("cpu-count".to_string(), cpu_count.to_string()),
    ];
    let memory = match group.memory_per_action.as_u64() {
        0 => machine_memory_mb(),
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
        props.push((crate::NETWORK_PROPERTY.into(), "on".into()));
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
    for (name, value) in common.iter().chain(&group.properties) {
        props.retain(|(n, _)| n != name);
        props.push((name.clone(), value.clone()));
    }
    // The instance names the group serves, which the scheduler matches on its own.
    use remexec_core::platform::INSTANCE_PROPERTY;
    props.retain(|(n, _)| n != INSTANCE_PROPERTY);
    for instance in &group.instance_names {
        props.push((INSTANCE_PROPERTY.into(), instance.clone()));
    }
    props
}

/// This machine's CPUs.
pub fn machine_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// This machine's memory in MiB, from `/proc/meminfo`.
fn machine_memory_mb() -> Option<u64> {
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
