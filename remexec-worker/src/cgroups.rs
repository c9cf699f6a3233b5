//! CPU and memory limits for one action at a time, through cgroups: a cgroup per action below
//! the worker's own, which the action's supervisor joins before it starts the command, so that
//! every process of the action is counted.
//!
//! - **cgroup v1** (`/sys/fs/cgroup/{cpu,memory}` mounted separately): a `remexec-{worker}`
//!   directory below the worker's cgroup in each controller, a CFS quota
//!   (`cpu.cfs_quota_us`) and `memory.limit_in_bytes` per action.
//! - **cgroup v2** (the unified hierarchy at `/sys/fs/cgroup`): the controllers must be
//!   delegated to the worker's cgroup (systemd's `Delegate=yes`, or a container's own
//!   cgroup namespace). Since a cgroup v2 with processes cannot hand controllers to its
//!   children, the worker first moves the processes of its cgroup into a `remexec-main` leaf,
//!   then enables `cpu` and `memory` for `remexec-{worker}`, whose children (the actions) get
//!   `cpu.max`, `memory.max` and `memory.swap.max = 0`.
//!
//! Where neither is usable, [`CgroupLimits::detect`] fails with the reason rather than run
//! actions unlimited.

use std::path::{Path, PathBuf};

use remexec_core::{Error, Result};

use crate::usage::CgroupUsage;

/// What each action may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// CPUs (a CFS quota of `cpus` × the period); fractions are fine.
    pub cpus: Option<f64>,
    /// Bytes of memory (with page cache), beyond which the kernel kills the action.
    pub memory: Option<u64>,
}

/// The period of the CFS quota, in microseconds.
const CFS_PERIOD_US: u64 = 100_000;

/// Where the per-action cgroups go.
#[derive(Clone, Debug)]
pub struct CgroupLimits {
    limits: Limits,
    /// cgroup v1: one directory per controller.
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    /// cgroup v2: the one directory, with the controllers enabled for its children.
    unified: Option<PathBuf>,
}

/// The cgroups of one running action; removed when dropped (once its processes are gone).
#[derive(Debug)]
pub(crate) struct ActionCgroups {
    dirs: Vec<PathBuf>,
    /// The directory that counts CPU time (v1: the `cpu,cpuacct` one, if any; v2: the one).
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    pub(crate) memory_limit: Option<u64>,
    unified: bool,
}

/// The leaf a worker on cgroup v2 moves its cgroup's processes to.
const LEAF: &str = "remexec-main";

/// Moves every process of cgroup `own` into its [`LEAF`], again while that makes progress (a
/// process may fork meanwhile), so that `own` can hand controllers to its children; enabling
/// them then fails if any process is left.
fn move_to_leaf(own: &Path) -> Result<()> {
    let leaf = own.join(LEAF);
    make_dir(&leaf)?;
    let mut last = String::new();
    for _ in 0..10 {
        let procs = std::fs::read_to_string(own.join("cgroup.procs"))
            .map_err(|e| Error::io(format!("reading {}", own.display()), e))?;
        if procs.trim().is_empty() || procs == last {
            break;
        }
        for pid in procs.split_whitespace() {
            // A process may have ended meanwhile.
            let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
        }
        last = procs;
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// This process's cgroup v1 directory for `controller`, from `/proc/self/cgroup` and the
/// mount at `/sys/fs/cgroup/{controller}`.
fn own_v1_dir(controller: &str) -> Option<PathBuf> {
    let mount = Path::new("/sys/fs/cgroup").join(controller);
    mount.join("cgroup.procs").exists().then_some(())?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.trim_start_matches('/').to_string())
    })?;
    let dir = mount.join(path);
    // Inside a container the path may name the host's hierarchy: use the mount's root then.
    Some(if dir.is_dir() { dir } else { mount })
}

impl CgroupLimits {
    /// Limits for the actions of the worker called `worker`, in cgroups below this process's
    /// own (`…/remexec-{worker}/`), on cgroup v2 when `/sys/fs/cgroup` is the unified
    /// hierarchy, else on cgroup v1. `FailedPrecondition` if the controllers a limit needs are
    /// not there (or not delegated), or the directories cannot be made.
    pub fn detect(worker: &str, limits: Limits) -> Result<Self> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            return Self::unified(root, &own, worker, limits);
        }
        let mut found = Self {
            limits,
            cpu: None,
            memory: None,
            unified: None,
        };
        for (controller, wanted, slot) in [
            ("cpu", limits.cpus.is_some(), &mut found.cpu),
            ("memory", limits.memory.is_some(), &mut found.memory),
        ] {
            if !wanted {
                continue;
            }
            let own =
                own_v1_dir(controller).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                    "a {controller} limit needs cgroups: the cgroup v1 {controller} controller \
                     at /sys/fs/cgroup/{controller}, or cgroup v2 at /sys/fs/cgroup"
                ).into())
                })?;
            let dir = own.join(format!("remexec-{worker}"));
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::FailedPrecondition(
                    format!("cannot create the cgroup {}: {e}", dir.display()).into(),
                )
            })?;
            *slot = Some(dir);
        }
        Ok(found)
    }

    /// Limits on cgroup v2 mounted at `root`, for a process whose `/proc/self/cgroup` reads
    /// `own` (see the [module documentation](self)).
    pub fn unified(root: &Path, own: &str, worker: &str, limits: Limits) -> Result<Self> {
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let mut own = root.join(path);
        if !own.is_dir() {
            // Inside a container the path may name the host's hierarchy.
            own = root.to_path_buf();
        }
        if own.file_name().is_some_and(|n| n == LEAF) {
            // A restarted worker starts in the leaf an earlier one moved it to.
            own.pop();
        }
        let wanted: Vec<&str> = [
            ("cpu", limits.cpus.is_some()),
            ("memory", limits.memory.is_some()),
        ]
        .into_iter()
        .filter_map(|(c, w)| w.then_some(c))
        .collect();
        let unusable = |why: String| {
            Error::FailedPrecondition(
                format!(
                    "cgroup v2 limits in {}: {why}; delegate the controllers to the worker \
                 (systemd Delegate=yes) or use cgroup v1",
                    own.display()
                )
                .into(),
            )
        };
        let available = std::fs::read_to_string(own.join("cgroup.controllers"))
            .map_err(|e| unusable(format!("cannot read cgroup.controllers: {e}")))?;
        let missing: Vec<&&str> = wanted
            .iter()
            .filter(|c| !available.split_whitespace().any(|a| a == **c))
            .collect();
        if !missing.is_empty() {
            return Err(unusable(format!(
                "the controllers {missing:?} are not available"
            )));
        }
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        let enable = enable.trim_end();
        let enabled =
            std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
        // The true root (it has no cgroup.type) may keep processes beside enabled children.
        let root_of_all = !own.join("cgroup.type").exists();
        if !wanted
            .iter()
            .all(|c| enabled.split_whitespace().any(|e| e == *c))
        {
            if !root_of_all {
                move_to_leaf(&own).map_err(|e| unusable(e.to_string()))?;
            }
            write(&own.join("cgroup.subtree_control"), enable)
                .map_err(|e| unusable(e.to_string()))?;
        }
        let dir = own.join(format!("remexec-{worker}"));
        make_dir(&dir).map_err(|e| unusable(e.to_string()))?;
        write(&dir.join("cgroup.subtree_control"), enable).map_err(|e| unusable(e.to_string()))?;
        Ok(Self {
            limits,
            cpu: None,
            memory: None,
            unified: Some(dir),
        })
    }

    /// The limits applied.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// [`create`](Self::create) on cgroup v2.
    fn create_unified(&self, parent: &Path, id: &str) -> Result<ActionCgroups> {
        let dir = parent.join(id);
        std::fs::create_dir(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut action = ActionCgroups {
            dirs: vec![dir.clone()],
            cpu: Some(dir.clone()),
            memory: None,
            memory_limit: self.limits.memory,
            unified: true,
        };
        if let Some(cpus) = self.limits.cpus {
            let quota = ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000);
            write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
        }
        if let Some(bytes) = self.limits.memory {
            write(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
            action.memory = Some(dir);
        }
        Ok(action)
    }

    /// Creates the cgroups of the action `id` with the limits set. Blocks.
    pub(crate) fn create(&self, id: &str) -> Result<ActionCgroups> {
        if let Some(parent) = &self.unified {
            return self.create_unified(parent, id);
        }
        let mut action = ActionCgroups {
            dirs: Vec::new(),
            cpu: None,
            memory: None,
            memory_limit: self.limits.memory,
            unified: false,
        };
        if let (Some(parent), Some(cpus)) = (&self.cpu, self.limits.cpus) {
            let dir = parent.join(id);
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            action.dirs.push(dir.clone());
            action.cpu = Some(dir.clone());
            let quota = ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000);
            write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let (Some(parent), Some(bytes)) = (&self.memory, self.limits.memory) {
            let dir = parent.join(id);
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            action.dirs.push(dir.clone());
            write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // No swap beyond the limit, where the kernel accounts swap.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
            action.memory = Some(dir);
        }
        Ok(action)
    }
}

impl ActionCgroups {
    /// The directories whose `cgroup.procs` the supervisor joins.
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// What the cgroups counted: CPU time (v2 `cpu.stat`, v1 `cpuacct.usage_user` and
    /// `cpuacct.usage_sys` where `cpuacct` is mounted with `cpu`), peak memory (v2
    /// `memory.peak`, Linux 5.19 and later; v1 `memory.max_usage_in_bytes`) and whether the
    /// kernel killed a process for want of memory. Blocks.
    pub(crate) fn usage(&self) -> CgroupUsage {
        let number = |path: PathBuf| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let cpu = self.cpu.as_ref().and_then(|dir| match self.unified {
            true => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let field = |name| crate::usage::field(&stat, name, ' ');
                Some((field("user_usec")?, field("system_usec")?))
            }
            false => {
                let user = number(dir.join("cpuacct.usage_user"))?;
                let system = number(dir.join("cpuacct.usage_sys"))?;
                Some((user / 1000, system / 1000))
            }
        });
        let peak_memory = self.memory.as_ref().and_then(|dir| match self.unified {
            true => number(dir.join("memory.peak")),
            false => number(dir.join("memory.max_usage_in_bytes")),
        });
        CgroupUsage {
            cpu,
            peak_memory,
            memory_killed: self.oom_killed(),
        }
    }

    /// Whether the kernel killed a process of the action for want of memory.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let file = match self.unified {
            true => "memory.events",
            false => "memory.oom_control",
        };
        std::fs::read_to_string(dir.join(file)).is_ok_and(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim() != "0")
        })
    }
}

impl Drop for ActionCgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // A process killed with its namespace may take a moment to leave the cgroup.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The cgroups of the next action of this worker process, named `action-{pid}-{n}` so that
/// several workers on one host never collide. Blocks.
pub(crate) fn create_next(limits: &CgroupLimits) -> Result<ActionCgroups> {
    static ACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    limits.create(&format!("action-{}-{n}", std::process::id()))
}

/// After the action: reads what its cgroups counted, tells its `stderr` if the kernel killed
/// it for want of memory, and removes its cgroups (on the blocking pool).
pub(crate) async fn finish(cgroups: ActionCgroups, stderr: std::fs::File) -> Result<CgroupUsage> {
    crate::blocking::blocking(move || {
        let usage = cgroups.usage();
        if usage.memory_killed {
            use std::io::Write as _;
            let limit = cgroups.memory_limit.unwrap_or_default();
            let mut stderr = stderr;
            let _ = writeln!(
                stderr,
                "remexec: the action was killed: it exceeded its memory limit of {limit} bytes"
            );
        }
        drop(cgroups);
        Ok(usage)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup v2 mount where this process is in `/work` (plain
    /// files: the kernel's side is not there, only what the worker writes).
    fn fake_unified(controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        let own = root.path().join("work");
        std::fs::create_dir(&own).unwrap();
        std::fs::write(own.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(own.join("cgroup.procs"), "4242\n").unwrap();
        std::fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        // Not the root of the hierarchy: it has a type.
        std::fs::write(own.join("cgroup.type"), "domain").unwrap();
        root
    }

    #[test]
    fn cgroup_v2_at_the_root_moves_nothing_and_a_restart_reuses_the_leaf() {
        let limits = Limits {
            cpus: Some(1.0),
            memory: None,
        };
        // The true root (no cgroup.type) may keep processes beside enabled children.
        let root = fake_unified("cpu memory");
        std::fs::write(root.path().join("cgroup.procs"), "1\n").unwrap();
        CgroupLimits::unified(root.path(), "0::/\n", "w", limits).unwrap();
        assert!(!root.path().join("remexec-main").exists());
        assert!(root.path().join("remexec-w").is_dir());
        // A worker restarted inside the leaf an earlier one made works from its parent.
        let root = fake_unified("cpu memory");
        CgroupLimits::unified(root.path(), OWN, "w", limits).unwrap();
        let leaf = root.path().join("work/remexec-main");
        std::fs::write(leaf.join("cgroup.controllers"), "cpu memory").unwrap();
        CgroupLimits::unified(root.path(), "0::/work/remexec-main\n", "w", limits).unwrap();
        assert!(!leaf.join("remexec-main").exists() && !leaf.join("remexec-w").exists());
    }

    const OWN: &str = "0::/work\n";

    #[test]
    fn cgroup_v2_moves_the_worker_to_a_leaf_and_limits_each_action() {
        let root = fake_unified("cpuset cpu io memory pids");
        let limits = Limits {
            cpus: Some(1.5),
            memory: Some(64 << 20),
        };
        let cgroups = CgroupLimits::unified(root.path(), OWN, "w", limits).unwrap();
        let own = root.path().join("work");
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        // The worker's processes left its cgroup, whose children get the controllers.
        assert_eq!(read(own.join("remexec-main/cgroup.procs")), "4242");
        assert_eq!(read(own.join("cgroup.subtree_control")), "+cpu +memory");
        assert_eq!(
            read(own.join("remexec-w/cgroup.subtree_control")),
            "+cpu +memory"
        );
        let action = cgroups.create("a1").unwrap();
        let dir = own.join("remexec-w/a1");
        assert_eq!(action.dirs(), std::slice::from_ref(&dir));
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
        assert!(!action.oom_killed());
        std::fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert!(action.oom_killed());
        // Plain files keep the fake directory from being removed: clean up as the kernel would.
        for f in ["cpu.max", "memory.max", "memory.events"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        drop(action);
        assert!(!dir.exists());
    }

    #[test]
    fn cgroup_v2_without_the_controllers_is_a_clear_error() {
        let root = fake_unified("cpuset cpu io pids");
        let limits = Limits {
            cpus: Some(1.0),
            memory: Some(1 << 30),
        };
        let err = CgroupLimits::unified(root.path(), OWN, "w", limits).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("\"memory\""), "{err}");
        assert!(err.to_string().contains("Delegate=yes"), "{err}");
        // A CPU limit alone needs only cpu.
        let cpu_only = Limits {
            cpus: Some(1.0),
            memory: None,
        };
        let cgroups = CgroupLimits::unified(root.path(), OWN, "w", cpu_only).unwrap();
        let action = cgroups.create("a").unwrap();
        assert!(root.path().join("work/remexec-w/a/cpu.max").exists());
        assert!(!root.path().join("work/remexec-w/a/memory.max").exists());
        std::fs::remove_file(root.path().join("work/remexec-w/a/cpu.max")).unwrap();
        drop(action);
    }
}
