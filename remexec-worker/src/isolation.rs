//! The [`Isolation`] trait and its [`ProcessIsolation`] backend.

use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use remexec_core::usage::ActionUsage;
use remexec_core::{Error, Result};
use tokio_util::sync::CancellationToken;

use crate::spawner::Lifeline;
use crate::supervisor::RunAs;

/// What to run.
#[derive(Debug)]
pub struct Spawn {
    /// `argv`; the first element is the program, looked up in `env`'s `PATH` if it has no `/`.
    pub args: Vec<String>,
    /// The complete environment; nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The input root: the one tree the command may write (`cwd` is in it).
    pub input_root: PathBuf,
    /// The action's platform properties, for backends that let an action ask for something
    /// (`network=on`, a `container-image`).
    pub platform: Vec<(String, String)>,
    /// The executor that runs it (its id within the worker), for [`ExecutorGroups`].
    pub executor: String,
    /// Receives standard output: an open file the worker holds another handle to (an unlinked
    /// temporary file), so that the command cannot swap it for a FIFO or a device.
    pub stdout: File,
    /// Receives standard error, like `stdout`.
    pub stderr: File,
    /// Kill the command after this long (the worker always sets one).
    pub timeout: Option<Duration>,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited by itself with this code (128 + signal number if a signal killed it).
    Exited(i32),
    /// It overran its timeout and was killed.
    TimedOut,
    /// It was cancelled and killed.
    Cancelled,
}

/// How a command ended, and what it used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ended {
    /// How it ended.
    pub exit: Exit,
    /// What it used, as far as the backend measures it: CPU time, peak memory and I/O under
    /// the supervised process backend and wherever the action has cgroups of its own;
    /// [`ActionUsage::default`] (not measured) elsewhere. The worker adds the staging figures.
    pub usage: ActionUsage,
}

impl From<Exit> for Ended {
    /// An end with nothing measured.
    fn from(exit: Exit) -> Self {
        Self {
            exit,
            usage: ActionUsage::default(),
        }
    }
}

/// What an action needs of a sandbox made ahead of need ([`Isolation::ready`]).
#[derive(Clone, Copy, Debug)]
pub struct Ahead<'a> {
    /// The executor that will run it.
    pub executor: &'a str,
    /// The directory in which the backend makes the sandboxes' directories.
    pub dirs: &'a Path,
    /// The action's platform properties.
    pub platform: &'a [(String, String)],
}

/// Runs commands in some form of isolation.
///
/// # Contract
/// - The command gets exactly `args`, `env` and `cwd`, with stdin empty and stdout/stderr
///   written to the given open files (never reopened by path).
/// - When `run` returns, no process started for the command is left running: on exit, timeout
///   or cancel, every process it started is killed.
/// - A command that fails is `Ok(Exited(code))`; `Err` means the command could not be run at all
///   (for example the program does not exist).
#[async_trait]
pub trait Isolation: Send + Sync + Debug + 'static {
    /// Runs the command to completion, timeout or cancellation.
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended>;

    /// A sandbox made ahead of need for an action like `ahead`'s: the directory (in
    /// `ahead.dirs`) whose `root` subdirectory must be the action's input root, which the
    /// caller stages and passes to [`run`](Self::run), and removes afterwards. `None` if no
    /// sandbox is ready: the action runs in one made when it starts. Either way the backend
    /// may start making sandboxes for actions of this kind. Never reused across actions. The
    /// default makes none.
    async fn ready(&self, ahead: Ahead<'_>) -> Option<PathBuf> {
        let _ = ahead;
        None
    }
}

/// Executor groups: each executor's actions go to the isolation of its group, so that one
/// worker can offer, for example, namespaced executors beside a Docker one.
#[derive(Clone, Debug, Default)]
pub struct ExecutorGroups {
    by_executor: std::collections::HashMap<String, Arc<dyn Isolation>>,
}

impl ExecutorGroups {
    /// No groups yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the actions of `executors` (their ids) under `isolation`.
    pub fn group(
        mut self,
        executors: impl IntoIterator<Item = String>,
        isolation: Arc<dyn Isolation>,
    ) -> Self {
        for id in executors {
            self.by_executor.insert(id, Arc::clone(&isolation));
        }
        self
    }
}

#[async_trait]
impl Isolation for ExecutorGroups {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended> {
        let isolation = self.by_executor.get(&spawn.executor).ok_or_else(|| {
            Error::Internal(format!("executor {:?} belongs to no group", spawn.executor).into())
        })?;
        isolation.run(spawn, cancel).await
    }

    async fn ready(&self, ahead: Ahead<'_>) -> Option<PathBuf> {
        self.by_executor.get(ahead.executor)?.ready(ahead).await
    }
}

/// Processes on the host.
///
/// [`default`](Self::default): each command runs in its own process group, which is killed
/// when the command ends, times out or is cancelled. Processes that leave the group, or that
/// outlive a killed worker, are not caught.
///
/// [`supervised`](Self::supervised): each command runs under a [supervisor](crate::supervisor)
/// in a PID namespace of its own, so that every process it starts dies with it, and with its
/// worker, `SIGKILL` included; with a [`RunAs`], as that unprivileged user, with its input root
/// handed to it and nothing else of the worker's writable by it.
#[derive(Debug, Default, Clone)]
pub struct ProcessIsolation {
    supervision: Option<Arc<Supervision>>,
}

/// What [`ProcessIsolation::supervised`] needs from the host.
#[derive(Clone, Debug)]
pub struct SupervisorSetup {
    /// The supervisor: a program and its leading arguments, which then get
    /// [`supervisor::arguments`](crate::supervisor::arguments) (for `remexec`, its own path and
    /// `supervise`).
    pub supervisor: Vec<OsString>,
    /// The user actions run as; `None` keeps the worker's (the only choice when it is not
    /// root).
    pub run_as: Option<RunAs>,
}

#[derive(Debug)]
struct Supervision {
    setup: SupervisorSetup,
    /// Each action's CPU and memory, if limited.
    limits: Option<crate::cgroups::CgroupLimits>,
    /// Every supervisor's standard input.
    lifeline: Lifeline,
    /// Whether the worker makes each PID namespace itself (it may: it is root).
    direct: bool,
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH just means the group is already gone.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

impl ProcessIsolation {
    /// Runs each command under `setup`'s supervisor in a PID namespace. Blocks while it checks,
    /// by starting a supervised `true`, that the host allows it: `FailedPrecondition` with the
    /// reason if not (PID or user namespaces disabled, a bad supervisor). Where this process
    /// may make PID namespaces itself (root), it checks that way too, and uses it if it works.
    pub fn supervised(setup: SupervisorSetup) -> Result<Self> {
        if setup.supervisor.is_empty() {
            return Err(Error::invalid("the supervisor is not named"));
        }
        if !nix::unistd::geteuid().is_root() && setup.run_as.is_some() {
            return Err(Error::invalid(
                "only a worker started as root can run actions as another user",
            ));
        }
        let lifeline = Lifeline::new().map_err(|e| Error::io("making a pipe", e))?;
        let mut supervision = Supervision {
            setup,
            limits: None,
            lifeline,
            direct: false,
        };
        // The outer step first, which any host that allows the namespaces can take; then, as
        // root, the worker's own, kept only if it works.
        supervision.probe()?;
        if crate::spawner::may_make_namespaces() {
            supervision.direct = true;
            if let Err(e) = supervision.probe() {
                tracing::warn!(error = %e, "actions' PID namespaces are made by their supervisors");
                supervision.direct = false;
            }
        }
        Ok(Self {
            supervision: Some(Arc::new(supervision)),
        })
    }

    /// Limits each action's CPU and memory with `cgroups`, which the supervisor joins before
    /// it starts the command. An action killed for want of memory ends with a line on its
    /// stderr that says so. `InvalidArgument` unless supervised.
    pub fn with_limits(mut self, cgroups: crate::cgroups::CgroupLimits) -> Result<Self> {
        let supervision = self
            .supervision
            .take()
            .ok_or_else(|| Error::invalid("limits need a supervised process backend"))?;
        let mut supervision = Arc::try_unwrap(supervision)
            .map_err(|_| Error::Internal("the process backend is shared already".into()))?;
        supervision.limits = Some(cgroups);
        self.supervision = Some(Arc::new(supervision));
        Ok(self)
    }

    /// Whether commands run supervised, and as which user.
    pub fn run_as(&self) -> Option<Option<RunAs>> {
        self.supervision.as_ref().map(|s| s.setup.run_as)
    }
}

impl Supervision {
    /// Starts a supervised `true` as actions will start, and waits for it: `FailedPrecondition`
    /// with the reason if the host does not allow it (PID or user namespaces disabled, a bad
    /// supervisor). Blocks.
    fn probe(&self) -> Result<()> {
        let mut command = self.command(&["true".to_string()], None, None, None, None, &[]);
        let stdin = self
            .lifeline
            .stdin()
            .map_err(|e| Error::io("cloning a handle", e))?;
        command.stdin(stdin);
        let supervisor = &self.setup.supervisor[0];
        let probe = crate::spawner::output(command, self.direct).map_err(|e| {
            Error::FailedPrecondition(
                format!(
                    "cannot start {supervisor:?}, which runs each action in a PID namespace: {e}"
                )
                .into(),
            )
        })?;
        if !probe.status.success() {
            return Err(Error::FailedPrecondition(
                format!(
                    "this host cannot run actions in a PID namespace of their own ({}): {}",
                    probe.status,
                    String::from_utf8_lossy(&probe.stderr).trim()
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// `SUPERVISOR… --process-1 [--reveal ROOT] [--uid U --gid G] -- ARGS…` for the
    /// worker's own PID namespace (`direct`), else `SUPERVISOR… --pid-namespace WORKER_PID …`.
    ///
    /// With a [`RunAs`], the supervisor's process 1 gets a mount namespace of its own, in which
    /// it makes `input_root` reachable by the action's user at its own path
    /// ([`supervisor`](crate::supervisor)'s `--reveal`).
    fn command(
        &self,
        args: &[String],
        cwd: Option<&Path>,
        input_root: Option<&Path>,
        env_file: Option<&Path>,
        usage: Option<&Path>,
        cgroups: &[PathBuf],
    ) -> std::process::Command {
        let setup = &self.setup;
        let mut command = std::process::Command::new(&setup.supervisor[0]);
        command.args(&setup.supervisor[1..]);
        match self.direct {
            true => command.arg(crate::supervisor::PROCESS_1),
            false => command
                .arg(crate::supervisor::PID_NAMESPACE)
                .arg(std::process::id().to_string()),
        };
        let reveal = input_root.filter(|_| setup.run_as.is_some());
        if let Some(root) = reveal {
            command.arg(crate::supervisor::REVEAL).arg(root);
        }
        if let Some(file) = env_file {
            command.arg(crate::supervisor::ENV_FILE).arg(file);
        }
        if let Some(file) = usage {
            command.arg(crate::supervisor::USAGE).arg(file);
        }
        command.args(crate::supervisor::with_cgroups(setup.run_as, cgroups, args));
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command
    }
}

/// Checks that `program` can be found: a path (relative to `cwd`) to an executable file, or a
/// name found in `env`'s `PATH` (default `/usr/bin:/bin`). `FailedPrecondition` if not, so
/// that a missing program is an error, not the supervisor's exit code.
pub(crate) fn check_program(program: &str, env: &[(String, String)], cwd: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(&cwd.join(program))
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or("/usr/bin:/bin", |(_, v)| v.as_str());
        !program.is_empty()
            && path
                .split(':')
                .any(|dir| executable(&cwd.join(dir).join(program)))
    };
    match found {
        true => Ok(()),
        false => Err(Error::FailedPrecondition(
            format!("cannot start {program:?}: no such executable file").into(),
        )),
    }
}

/// Hands every directory of `root` (not through symlinks) to `run_as`, so that the action can
/// create its outputs; files stay as they are (hard-linked inputs remain the worker's,
/// read-only). Blocks.
pub(crate) fn hand_over(root: &Path, run_as: RunAs) -> Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        std::os::unix::fs::lchown(&dir, Some(run_as.uid), Some(run_as.gid))
            .map_err(|e| Error::io(format!("handing {} to the action's user", dir.display()), e))?;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Waits for `child` to end, time out or be cancelled, then kills its process group.
pub(crate) async fn wait(
    child: &mut tokio::process::Child,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Result<Exit> {
    let pid = child.id();
    let timeout = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => futures::future::pending().await,
        }
    };
    let exit = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Error::io("waiting for the command", e))?;
            use std::os::unix::process::ExitStatusExt;
            Exit::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        () = timeout => Exit::TimedOut,
        () = cancel.cancelled() => Exit::Cancelled,
    };
    // Whatever happened, nothing the command started may outlive it (supervised: killing the
    // group kills the supervisor, whose death kills the namespace).
    kill_group(pid);
    let _ = child.wait().await;
    Ok(exit)
}

#[async_trait]
impl Isolation for ProcessIsolation {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended> {
        let program = spawn
            .args
            .first()
            .ok_or_else(|| Error::invalid("empty command"))?;
        let (mut cgroups, mut launch) = (None, Launch::default());
        let command = match &self.supervision {
            None => {
                let mut command = std::process::Command::new(program);
                command.args(&spawn.args[1..]).current_dir(&spawn.cwd);
                command
            }
            Some(supervision) => {
                check_program(program, &spawn.env, &spawn.cwd)?;
                if let Some(run_as) = supervision.setup.run_as {
                    let root = spawn.input_root.clone();
                    crate::blocking::blocking(move || hand_over(&root, run_as)).await?;
                }
                if let Some(limits) = &supervision.limits {
                    let limits = limits.clone();
                    let created =
                        crate::blocking::blocking(move || crate::cgroups::create_next(&limits))
                            .await?;
                    cgroups = Some(created);
                }
                let dirs = cgroups.as_ref().map_or(&[][..], |c| c.dirs());
                let stdin = supervision.lifeline.stdin();
                launch.stdin = Some(stdin.map_err(|e| Error::io("cloning a handle", e))?);
                launch.in_namespace = supervision.direct;
                let env = crate::supervisor::encode_environment(&spawn.env)?;
                let (env_file, usage_file) = crate::blocking::blocking(move || {
                    use std::io::Write as _;
                    let mut file = tempfile::NamedTempFile::new()
                        .map_err(|e| Error::io("creating the environment file", e))?;
                    file.write_all(&env)
                        .map_err(|e| Error::io("writing the environment file", e))?;
                    Ok((file, usage_file()?))
                })
                .await?;
                let (cwd, root) = (Some(spawn.cwd.as_path()), Some(spawn.input_root.as_path()));
                let (file, usage) = (Some(env_file.path()), Some(usage_file.path()));
                let command = supervision.command(&spawn.args, cwd, root, file, usage, dirs);
                launch.env_file = Some(env_file);
                launch.usage_file = Some(usage_file);
                command
            }
        };
        run_command(command, spawn, cgroups, launch, cancel).await
    }
}

/// How [`run_command`] starts its command.
#[derive(Debug, Default)]
pub(crate) struct Launch {
    /// Its standard input; empty if none.
    pub(crate) stdin: Option<Stdio>,
    /// Whether it starts as process 1 of a new PID namespace
    /// ([`spawn_in_namespace`](crate::spawner::spawn_in_namespace)).
    pub(crate) in_namespace: bool,
    /// Whether the command's environment reaches it some other way (bwrap's `--setenv`), so
    /// that `command` starts with none: nothing an action sets reaches a process that runs as
    /// root.
    pub(crate) env_elsewhere: bool,
    /// The supervisor's [`ENV_FILE`](crate::supervisor::ENV_FILE), kept until the command
    /// ends; `command` starts with no environment then too.
    pub(crate) env_file: Option<tempfile::NamedTempFile>,
    /// The file the supervisor writes its [`USAGE`](crate::supervisor::USAGE) report to.
    pub(crate) usage_file: Option<tempfile::NamedTempFile>,
}

/// An empty file for a supervisor's [`USAGE`](crate::supervisor::USAGE) report, in the
/// system's temporary directory (as the environment file), readable and writable by the
/// worker's user alone. Blocks.
pub(crate) fn usage_file() -> Result<tempfile::NamedTempFile> {
    tempfile::NamedTempFile::new().map_err(|e| Error::io("creating the usage file", e))
}

/// Runs `command` (which starts `spawn`'s command, through whatever wrappers) with exactly
/// `spawn`'s environment and output files, in its own process group, as `launch` says; waits
/// for it to end, time out or be cancelled; then tells its stderr of an out-of-memory kill,
/// removes `cgroups`, and reports what the command used (the supervisor's report in
/// `launch.usage_file`, and the cgroups' figures).
pub(crate) async fn run_command(
    mut command: std::process::Command,
    spawn: Spawn,
    cgroups: Option<crate::cgroups::ActionCgroups>,
    launch: Launch,
    cancel: CancellationToken,
) -> Result<Ended> {
    let program = spawn.args.first().cloned().unwrap_or_default();
    let stderr = spawn
        .stderr
        .try_clone()
        .map_err(|e| Error::io("cloning a handle", e))?;
    command
        .stdin(launch.stdin.unwrap_or_else(Stdio::null))
        .env_clear();
    // Kept until the command ends.
    let (env_file, usage_file) = (launch.env_file, launch.usage_file);
    if !launch.env_elsewhere && env_file.is_none() {
        command.envs(spawn.env.iter().map(|(k, v)| (k, v)));
    }
    command
        .stdout(Stdio::from(spawn.stdout))
        .stderr(Stdio::from(spawn.stderr))
        .process_group(0);
    let cannot_start = |e| {
        Error::FailedPrecondition(remexec_core::Message::caused_by(
            format!("cannot start {program:?}"),
            e,
        ))
    };
    let (child, _holder) = match launch.in_namespace {
        true => {
            let (child, holder) = crate::spawner::spawn_in_namespace(command)
                .await
                .map_err(cannot_start)?;
            (child, Some(holder))
        }
        false => {
            let child = tokio::process::Command::from(command)
                .kill_on_drop(true)
                .spawn();
            (child.map_err(cannot_start)?, None)
        }
    };
    let mut child = child;
    let exit = wait(&mut child, spawn.timeout, cancel).await;
    drop(env_file);
    let report = match usage_file {
        Some(file) => {
            let read = move || Ok(crate::usage::read_report(&file));
            crate::blocking::blocking(read).await?
        }
        None => None,
    };
    let counted = match cgroups {
        Some(cgroups) => Some(crate::cgroups::finish(cgroups, stderr).await?),
        None => None,
    };
    Ok(Ended {
        exit: exit?,
        usage: crate::usage::combine(report, counted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::testing::isolation_conformance(&ProcessIsolation::default()).await;
    }
}
