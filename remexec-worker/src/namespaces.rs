//! [`NamespaceIsolation`]: each action in its own user, mount, PID, network, UTS, IPC and
//! cgroup namespaces, through bubblewrap (`bwrap`), the sandbox tool Flatpak is built on.
//!
//! The action sees a file system of its own: the host's `/usr` and the `/bin`, `/sbin` and
//! `/lib*` beside it, read-only; a few files of `/etc`, read-only; a minimal `/dev`, its own
//! `/proc`, a private `/tmp`, and its input root, at the same path as on the host, the only
//! writable tree. It has no network but its own loopback, unless the worker allows it and the
//! action's platform asks (`network=on`). `bwrap --die-with-parent` ties the sandbox to the
//! worker: when the worker dies, `SIGKILL` included, every process of the action dies.
//!
//! With [`chroot_into_input_root`](NamespaceIsolation::chroot_into_input_root), as Buildbarn's
//! runner option of that name, the action sees nothing of the host's file system: its input
//! root is `/` (writable), with its own `/proc`, a minimal `/dev` and a private `/tmp` over it.
//! The program and everything it runs come from the input root, as BuildStream's sandboxes
//! expect. The action runs as root (uid and gid 0) of its user namespace, unless its platform
//! names `unixUID` and `unixGID`; outside the namespace it stays the worker's (or the action
//! user's) uid. `PWD` is set to the working directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use remexec_core::{Error, Result};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::ahead::{MakesAhead, Pool, Process, Ready};
use crate::cgroups::{ActionCgroups, CgroupLimits};
use crate::isolation::{Launch, check_program, hand_over, run_command};
use crate::supervisor::RunAs;
use crate::{Ahead, Ended, Isolation, Spawn};

/// Where a sandbox made ahead sees its waiter (the supervisor, bound read-only).
const WAITER: &str = "/.remexec-waiter";

/// The platform property an action sets to `on` to ask for the network.
pub const NETWORK_PROPERTY: &str = "network";

/// The files of `/etc` an action sees (read-only), where the host has them: users and groups,
/// name resolution, the dynamic linker's cache and Debian's alternatives (`cc`, `java`, ...).
const ETC: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "nsswitch.conf",
    "resolv.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
];

/// The top-level directories of the host's system tree an action sees read-only (or, where
/// they are symlinks as with a merged `/usr`, as the same symlinks).
const SYSTEM: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Actions in namespaces of their own, through `bwrap`. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct NamespaceIsolation {
    bwrap: PathBuf,
    setpriv: Option<PathBuf>,
    run_as: Option<RunAs>,
    allow_network: bool,
    chroot: bool,
    limits: Option<Arc<(CgroupLimits, Vec<OsString>)>>,
    /// `unshare` and the supervisor, to make input roots below a directory closed to the
    /// action user reachable ([`reveal_with`](NamespaceIsolation::reveal_with)).
    reveal: Option<Arc<(PathBuf, Vec<OsString>)>>,
    /// Sandboxes made ahead of need ([`ahead`](NamespaceIsolation::ahead)).
    ahead: Option<Arc<AheadState>>,
    /// The supervisor that starts each sandbox and reports what it used
    /// ([`measure_with`](NamespaceIsolation::measure_with)).
    measure: Option<Arc<Vec<OsString>>>,
}

/// The waiter of sandboxes made ahead (a program and its leading arguments), and the sandboxes,
/// by the directory they are made in and whether they have the network.
#[derive(Debug)]
struct AheadState {
    waiter: Vec<OsString>,
    pool: Pool<(PathBuf, bool), Sandbox>,
}

/// A sandbox made ahead: bubblewrap's process, the action's cgroups if it is limited, and the
/// file its supervisor reports to if one starts it.
type Sandbox = Process<Measure>;

/// How a sandbox's use is measured: its cgroups, and its supervisor's report.
#[derive(Debug, Default)]
pub(crate) struct Measure {
    cgroups: Option<ActionCgroups>,
    report: Option<tempfile::NamedTempFile>,
}

impl Measure {
    /// What the sandbox used, once it has ended: see [`crate::usage`]. Removes the cgroups.
    async fn finish(self, stderr: std::fs::File) -> Result<remexec_core::usage::ActionUsage> {
        let report = match self.report {
            Some(file) => {
                let read = move || Ok(crate::usage::read_report(&file));
                crate::blocking::blocking(read).await?
            }
            None => None,
        };
        let counted = match self.cgroups {
            Some(cgroups) => Some(crate::cgroups::finish(cgroups, stderr).await?),
            None => None,
        };
        Ok(crate::usage::combine(report, counted))
    }
}

/// The uid and gid an action chrooted into its input root runs as inside its user namespace:
/// the platform's `unixUID` and `unixGID` (BuildStream's names), else 0.
fn chroot_ids(platform: &[(String, String)]) -> Result<(u32, u32)> {
    let id = |name: &str| -> Result<u32> {
        match platform.iter().rev().find(|(n, _)| n == name) {
            None => Ok(0),
            Some((_, v)) => v.trim().parse().map_err(|_| {
                Error::invalid(format!("platform property {name}={v:?} is not a number"))
            }),
        }
    };
    Ok((id("unixUID")?, id("unixGID")?))
}

impl NamespaceIsolation {
    /// Sandboxes with the `bwrap` at `bwrap`. With `run_as` (a worker started as root), the
    /// sandbox is started as that user through util-linux `setpriv`, so that the action is
    /// unprivileged outside its namespaces too; the input root is handed to it. Blocks while
    /// it checks, by sandboxing `true`, that the host allows it: `FailedPrecondition` with
    /// the reason if not (no user namespaces for this user, for example).
    pub fn new(bwrap: PathBuf, setpriv: Option<PathBuf>, run_as: Option<RunAs>) -> Result<Self> {
        if run_as.is_some() && setpriv.is_none() {
            return Err(Error::invalid(
                "running actions as another user needs setpriv",
            ));
        }
        let isolation = Self {
            bwrap,
            setpriv,
            run_as,
            allow_network: false,
            chroot: false,
            limits: None,
            reveal: None,
            ahead: None,
            measure: None,
        };
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a scratch directory", e))?;
        if let Some(run_as) = run_as {
            hand_over(scratch.path(), run_as)?;
        }
        let path = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let probe = isolation
            .command(
                &["true".to_string()],
                scratch.path(),
                scratch.path(),
                &path,
                false,
                None,
            )
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Error::FailedPrecondition(
                    format!("cannot start {}: {e}", isolation.bwrap.display()).into(),
                )
            })?;
        if !probe.status.success() {
            return Err(Error::FailedPrecondition(
                format!(
                    "this host cannot sandbox actions with {} ({}): {}",
                    isolation.bwrap.display(),
                    probe.status,
                    String::from_utf8_lossy(&probe.stderr).trim()
                )
                .into(),
            ));
        }
        Ok(isolation)
    }

    /// Limits each action's CPU and memory with `cgroups`: the sandbox is started by
    /// `supervisor` (a program and its leading arguments, as for
    /// [`SupervisorSetup`](crate::SupervisorSetup)), which joins the action's cgroups first,
    /// under `setpriv --pdeathsig SIGKILL`. An action killed for want of memory ends with a line
    /// on its stderr that says so. `InvalidArgument` without `setpriv`.
    pub fn with_limits(mut self, cgroups: CgroupLimits, supervisor: Vec<OsString>) -> Result<Self> {
        if self.setpriv.is_none() {
            return Err(Error::invalid("limits need util-linux setpriv"));
        }
        self.limits = Some(Arc::new((cgroups, supervisor)));
        Ok(self)
    }

    /// Measures what each action uses: its sandbox is started by `supervisor` (a program and
    /// its leading arguments, as for [`SupervisorSetup`](crate::SupervisorSetup)) under
    /// `setpriv --pdeathsig SIGKILL`, which waits for bubblewrap and reports the CPU time,
    /// largest resident set and I/O of every process it reaped (with limits, the supervisor
    /// that joins the cgroups does this already). `InvalidArgument` without `setpriv`.
    pub fn measure_with(mut self, supervisor: Vec<OsString>) -> Result<Self> {
        if self.setpriv.is_none() || supervisor.is_empty() {
            return Err(Error::invalid(
                "measuring needs util-linux setpriv and the supervisor",
            ));
        }
        self.measure = Some(Arc::new(supervisor));
        Ok(self)
    }

    /// Lets actions whose platform has `network=on` share the worker's network.
    pub fn allow_network(mut self, yes: bool) -> Self {
        self.allow_network = yes;
        self
    }

    /// With a `run_as` user: where a directory above an action's input root is closed to that
    /// user (a data dir below root's home of mode 0700), the sandbox is started by `supervisor`
    /// (a program and its leading arguments, as for [`SupervisorSetup`](crate::SupervisorSetup))
    /// in a mount namespace of its own made by util-linux `unshare`, which makes the input root
    /// reachable at its own path and then starts `bwrap` as the user
    /// ([`supervisor`](crate::supervisor)'s `--reveal`). Without it, such an input root cannot
    /// be bound into the sandbox.
    pub fn reveal_with(mut self, unshare: PathBuf, supervisor: Vec<OsString>) -> Self {
        self.reveal = Some(Arc::new((unshare, supervisor)));
        self
    }

    /// Makes sandboxes ahead of need ([`crate::ahead`]): [`AHEAD`](crate::ahead::AHEAD) of each
    /// kind, each waiting in `supervisor` (a program and its leading arguments, as for
    /// [`SupervisorSetup`](crate::SupervisorSetup)), which every sandbox sees read-only at
    /// `/.remexec-waiter`. Not for actions chrooted into their input roots, which see nothing
    /// of the host. Blocks while it checks, by running `true` so, that it works:
    /// `FailedPrecondition` with the reason if not (the action user cannot read the
    /// supervisor, for example).
    pub fn ahead(mut self, supervisor: Vec<OsString>) -> Result<Self> {
        if supervisor.is_empty() {
            return Err(Error::invalid("the supervisor is not named"));
        }
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a scratch directory", e))?;
        if let Some(run_as) = self.run_as {
            hand_over(scratch.path(), run_as)?;
        }
        let mut command = self.waiting(&supervisor, scratch.path(), false);
        let probe = command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                let spec = crate::supervisor::spec(&["true".into()], &[], scratch.path())
                    .map_err(std::io::Error::other)?;
                let mut stdin = child.stdin.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
                stdin.write_all(&spec)?;
                drop(stdin);
                child.wait_with_output()
            })
            .map_err(|e| Error::io("starting a sandbox made ahead", e))?;
        if !probe.status.success() {
            return Err(Error::FailedPrecondition(
                format!(
                    "sandboxes made ahead of need do not work here ({}): {}",
                    probe.status,
                    String::from_utf8_lossy(&probe.stderr).trim()
                )
                .into(),
            ));
        }
        self.ahead = Some(Arc::new(AheadState {
            waiter: supervisor,
            pool: Pool::default(),
        }));
        Ok(self)
    }

    /// The sandbox of input root `root` whose command is `waiter` ([`AWAIT`](crate::supervisor::AWAIT)).
    fn waiting(&self, waiter: &[OsString], root: &Path, network: bool) -> std::process::Command {
        let mut args = vec![WAITER.to_string()];
        args.extend(waiter[1..].iter().map(|a| a.to_string_lossy().into_owned()));
        args.push(crate::supervisor::AWAIT.to_string());
        self.command(&args, root, root, &[], network, waiter.first())
    }

    /// Runs every action with its input root as `/`: see the [module documentation](self).
    pub fn chroot_into_input_root(mut self, yes: bool) -> Self {
        self.chroot = yes;
        self
    }

    /// The command that runs `args` in a sandbox whose writable tree is `root`, with the host's
    /// `waiter` at [`WAITER`] if given.
    fn command(
        &self,
        args: &[String],
        root: &Path,
        cwd: &Path,
        env: &[(String, String)],
        network: bool,
        waiter: Option<&OsString>,
    ) -> std::process::Command {
        let mut command = self.bwrap_command(network, root, env);
        command.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
        if let Some(waiter) = waiter {
            command.arg("--ro-bind").arg(waiter).arg(WAITER);
        }
        // Nothing outside the input root and the private /tmp is writable.
        command.args(["--remount-ro", "/"]);
        let (root, cwd): (OsString, OsString) = (root.into(), cwd.into());
        command
            .arg("--bind")
            .arg(&root)
            .arg(&root)
            .arg("--chdir")
            .arg(&cwd)
            .arg("--")
            .args(args);
        command
    }

    /// The command that runs `args` with `root` as `/`, in `cwd` (below `root`), as `ids`
    /// inside the user namespace.
    fn chroot_command(
        &self,
        args: &[String],
        root: &Path,
        cwd: &Path,
        env: &[(String, String)],
        network: bool,
        ids: (u32, u32),
    ) -> Result<std::process::Command> {
        let inside = cwd.strip_prefix(root).map_err(|_| {
            Error::Internal(
                format!(
                    "working directory {} is not below the input root {}",
                    cwd.display(),
                    root.display()
                )
                .into(),
            )
        })?;
        let mut command = self.bwrap_command(network, root, env);
        command.args(["--unshare-user", "--uid"]);
        command
            .arg(ids.0.to_string())
            .arg("--gid")
            .arg(ids.1.to_string());
        command.arg("--bind").arg(root).arg("/");
        command.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        command
            .arg("--chdir")
            .arg(Path::new("/").join(inside))
            .arg("--")
            .args(args);
        Ok(command)
    }

    /// `bwrap` (as the action user, through `setpriv`, where there is one) with the namespaces
    /// and the host tree the action sees, before its own mounts.
    ///
    /// The action's environment `env` goes to bwrap as `--clearenv --setenv …`: whatever starts
    /// bwrap as root (`setpriv`, the supervisor) starts with none, so that nothing an action
    /// sets (`LD_PRELOAD`) reaches a process that runs as root.
    fn bwrap_command(
        &self,
        network: bool,
        root: &Path,
        env: &[(String, String)],
    ) -> std::process::Command {
        let closed = |r: RunAs| crate::supervisor::closed_ancestor(root, r).is_some();
        let mut command = match (&self.setpriv, self.run_as, &self.reveal) {
            // `setpriv --pdeathsig SIGKILL -- unshare --mount -- SUPERVISOR --reveal ROOT --uid
            // U --gid G -- bwrap …`: the supervisor dies with the worker, and bwrap with it.
            (Some(setpriv), Some(r), Some(reveal)) if closed(r) => {
                let (unshare, supervisor) = (&reveal.0, &reveal.1);
                let mut c = std::process::Command::new(setpriv);
                c.args(["--pdeathsig", "SIGKILL", "--"])
                    .arg(unshare)
                    .args(["--mount", "--"])
                    .args(supervisor)
                    .arg(crate::supervisor::STDIN)
                    .arg(crate::supervisor::REVEAL)
                    .arg(root)
                    .args(crate::supervisor::arguments(
                        Some(r),
                        &[self.bwrap.to_string_lossy().into_owned()],
                    ))
                    // Not the worker's own directory, which the reveal may hide.
                    .current_dir("/");
                c
            }
            (Some(setpriv), Some(r), _) => {
                let mut c = std::process::Command::new(setpriv);
                c.arg(format!("--reuid={}", r.uid))
                    .arg(format!("--regid={}", r.gid))
                    .args(["--clear-groups", "--"])
                    .arg(&self.bwrap);
                c
            }
            _ => std::process::Command::new(&self.bwrap),
        };
        command.args(["--unshare-all", "--die-with-parent", "--new-session"]);
        if network {
            command.arg("--share-net");
        }
        command.args(["--hostname", "remexec", "--clearenv"]);
        for (name, value) in env {
            command.arg("--setenv").arg(name).arg(value);
        }
        if self.chroot {
            return command;
        }
        for name in SYSTEM {
            let host = Path::new("/").join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&host) {
                        command.arg("--symlink").arg(target).arg(&host);
                    }
                }
                Ok(m) if m.is_dir() => {
                    command.arg("--ro-bind").arg(&host).arg(&host);
                }
                _ => {}
            }
        }
        for name in ETC {
            let host = Path::new("/etc").join(name);
            if host.exists() {
                command.arg("--ro-bind").arg(&host).arg(&host);
            }
        }
        command
    }
}

#[async_trait]
impl Isolation for NamespaceIsolation {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended> {
        // Claimed first, so that any early return below drops (kills) it.
        let ready = self
            .ahead
            .as_ref()
            .and_then(|a| a.pool.handed(&spawn.input_root));
        let program = spawn
            .args
            .first()
            .ok_or_else(|| Error::invalid("empty command"))?;
        // Chrooted, the program is looked up in the input root by the sandbox itself.
        if !self.chroot {
            check_program(program, &spawn.env, &spawn.cwd)?;
        }
        if let Some(run_as) = self.run_as {
            let root = spawn.input_root.clone();
            crate::blocking::blocking(move || hand_over(&root, run_as)).await?;
        }
        if let Some(ready) = ready {
            return run_ready(ready, spawn, cancel).await;
        }
        let network = self.network(&spawn.platform);
        let command = if self.chroot {
            let ids = chroot_ids(&spawn.platform)?;
            let (root, cwd) = (&spawn.input_root, &spawn.cwd);
            self.chroot_command(&spawn.args, root, cwd, &spawn.env, network, ids)?
        } else {
            // bwrap sets PWD to the working directory; the environment must be exactly the
            // action's, so coreutils' env removes it again (or restores the action's own).
            let mut args = vec!["/usr/bin/env".to_string()];
            match spawn.env.iter().rev().find(|(k, _)| k == "PWD") {
                Some((_, pwd)) => args.push(format!("PWD={pwd}")),
                None => args.extend(["-u".to_string(), "PWD".to_string()]),
            }
            args.extend(spawn.args.iter().cloned());
            self.command(
                &args,
                &spawn.input_root,
                &spawn.cwd,
                &spawn.env,
                network,
                None,
            )
        };
        let (command, measure) = self.measured(command).await?;
        let launch = Launch {
            env_elsewhere: true,
            usage_file: measure.report,
            ..Launch::default()
        };
        run_command(command, spawn, measure.cgroups, launch, cancel).await
    }

    async fn ready(&self, ahead: Ahead<'_>) -> Option<PathBuf> {
        if self.chroot {
            return None;
        }
        let kind = (ahead.dirs.to_path_buf(), self.network(ahead.platform));
        crate::ahead::take_and_refill(self, kind)
    }
}

#[async_trait]
impl MakesAhead for NamespaceIsolation {
    type Kind = (PathBuf, bool);
    type Sandbox = Sandbox;

    fn pool(&self) -> Option<&Pool<Self::Kind, Sandbox>> {
        self.ahead.as_ref().map(|a| &a.pool)
    }

    fn dirs(kind: &Self::Kind) -> &Path {
        &kind.0
    }

    /// Starts a sandbox with the network if `kind` says so, whose command waits for the
    /// action's.
    async fn start(
        &self,
        kind: &Self::Kind,
        dir: &Path,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<Ready<Sandbox>> {
        let state = self
            .ahead
            .as_ref()
            .ok_or_else(|| Error::Internal("no sandboxes are made ahead".into()))?;
        let waiting = self.waiting(&state.waiter, &dir.join("root"), kind.1);
        let (mut command, extra) = self.measured(waiting).await?;
        let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
        command
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(clone(&stdout)?)
            .stderr(clone(&stderr)?);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.bwrap.display()), e))?;
        Ok(Ready {
            dir: dir.to_path_buf(),
            stdout,
            stderr,
            sandbox: Process { child, extra },
        })
    }
}

/// Runs `spawn` in `sandbox`, made ahead for its input root.
async fn run_ready(
    mut ready: Ready<Sandbox>,
    spawn: Spawn,
    cancel: CancellationToken,
) -> Result<Ended> {
    let spec = crate::supervisor::spec(&spawn.args, &spawn.env, &spawn.cwd)?;
    let sandbox = &mut ready.sandbox;
    sandbox.start(&spec).await?;
    let exit = crate::isolation::wait(&mut sandbox.child, spawn.timeout, cancel).await;
    let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
    let own = (clone(&ready.stdout)?, clone(&ready.stderr)?);
    crate::ahead::copy_output(own, (&spawn.stdout, &spawn.stderr)).await?;
    // The waiter `exec`s the command: what measures is the supervisor that started the
    // sandbox, and its cgroups, if any.
    let measure = std::mem::take(&mut ready.sandbox.extra);
    let usage = measure.finish(clone(&spawn.stderr)?).await?;
    Ok(Ended { exit: exit?, usage })
}

impl NamespaceIsolation {
    /// Whether an action of `platform` gets the network.
    fn network(&self, platform: &[(String, String)]) -> bool {
        self.allow_network
            && platform
                .iter()
                .any(|(n, v)| n == NETWORK_PROPERTY && v == "on")
    }

    /// `command` (the sandbox) started by `setpriv --pdeathsig SIGKILL -- SUPERVISOR --cgroup
    /// DIR… --`, so that it runs in the action's cgroups and dies with the worker.
    /// `command` (a bubblewrap sandbox) as it is started: by the supervisor that joins the
    /// action's cgroups (with limits) or that measures it ([`measure_with`](Self::measure_with)),
    /// which reports to a new file; else as it is, unmeasured.
    async fn measured(
        &self,
        command: std::process::Command,
    ) -> Result<(std::process::Command, Measure)> {
        let (limits, supervisor) = match (&self.limits, &self.measure) {
            (Some(limits), _) => (Some(limits.0.clone()), &limits.1),
            (None, Some(supervisor)) => (None, &**supervisor),
            (None, None) => return Ok((command, Measure::default())),
        };
        let (cgroups, report) = crate::blocking::blocking(move || {
            let cgroups = limits
                .map(|l| crate::cgroups::create_next(&l))
                .transpose()?;
            Ok((cgroups, crate::isolation::usage_file()?))
        })
        .await?;
        let dirs = cgroups.as_ref().map_or(&[][..], |c| c.dirs());
        let command = self.supervised(&command, supervisor, dirs, report.path());
        let measure = Measure {
            cgroups,
            report: Some(report),
        };
        Ok((command, measure))
    }

    fn supervised(
        &self,
        command: &std::process::Command,
        supervisor: &[OsString],
        cgroups: &[PathBuf],
        usage: &Path,
    ) -> std::process::Command {
        let mut inner = vec![command.get_program().to_string_lossy().into_owned()];
        inner.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
        let setpriv = self
            .setpriv
            .as_ref()
            .expect("checked by with_limits and measure_with");
        let mut outer = std::process::Command::new(setpriv);
        outer
            .args(["--pdeathsig", "SIGKILL", "--"])
            .args(supervisor)
            .arg(crate::supervisor::STDIN)
            .arg(crate::supervisor::USAGE)
            .arg(usage)
            .args(crate::supervisor::with_cgroups(None, cgroups, &inner));
        outer
    }
}
