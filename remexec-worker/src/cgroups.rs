//! CPU and memory limits for one action at a time, through cgroup v1's `cpu` and `memory`
//! controllers: a cgroup per action below the worker's own, which the action's supervisor
//! joins before it starts the command, so that every process of the action is counted.
//!
//! cgroup v2 (a unified hierarchy with the controllers) is not supported yet:
//! [`CgroupLimits::detect`] says so rather than run actions unlimited.

use std::path::{Path, PathBuf};

use remexec_core::{Error, Result};

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

/// Where the per-action cgroups go: one directory per controller.
#[derive(Clone, Debug)]
pub struct CgroupLimits {
    limits: Limits,
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
}

/// The cgroups of one running action; removed when dropped (once its processes are gone).
#[derive(Debug)]
pub(crate) struct ActionCgroups {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    pub(crate) memory_limit: Option<u64>,
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
    /// own (`…/remexec-{worker}/`). `FailedPrecondition` if the controllers a limit needs are
    /// not mounted as cgroup v1, or their directory cannot be created.
    pub fn detect(worker: &str, limits: Limits) -> Result<Self> {
        let mut found = Self {
            limits,
            cpu: None,
            memory: None,
        };
        for (controller, wanted, slot) in [
            ("cpu", limits.cpus.is_some(), &mut found.cpu),
            ("memory", limits.memory.is_some(), &mut found.memory),
        ] {
            if !wanted {
                continue;
            }
            let own = own_v1_dir(controller).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "a {controller} limit needs the cgroup v1 {controller} controller at \
                     /sys/fs/cgroup/{controller}; cgroup v2 limits are not supported yet"
                ))
            })?;
            let dir = own.join(format!("remexec-{worker}"));
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "cannot create the cgroup {}: {e}",
                    dir.display()
                ))
            })?;
            *slot = Some(dir);
        }
        Ok(found)
    }

    /// The limits applied.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Creates the cgroups of the action `id` with the limits set. Blocks.
    pub(crate) fn create(&self, id: &str) -> Result<ActionCgroups> {
        let mut action = ActionCgroups {
            dirs: Vec::new(),
            memory: None,
            memory_limit: self.limits.memory,
        };
        if let (Some(parent), Some(cpus)) = (&self.cpu, self.limits.cpus) {
            let dir = parent.join(id);
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            action.dirs.push(dir.clone());
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

    /// Whether the kernel killed a process of the action for want of memory.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        std::fs::read_to_string(dir.join("memory.oom_control")).is_ok_and(|s| {
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

/// After the action: tells its `stderr` if the kernel killed it for want of memory, and
/// removes its cgroups (on the blocking pool).
pub(crate) async fn finish(cgroups: ActionCgroups, stderr: std::fs::File) -> Result<()> {
    crate::blocking::blocking(move || {
        if cgroups.oom_killed() {
            use std::io::Write as _;
            let limit = cgroups.memory_limit.unwrap_or_default();
            let mut stderr = stderr;
            let _ = writeln!(
                stderr,
                "remexec: the action was killed: it exceeded its memory limit of {limit} bytes"
            );
        }
        drop(cgroups);
        Ok(())
    })
    .await
}
