//! [`DockerIsolation`] (feature `docker`): each action in a fresh container of the Docker
//! engine, through bollard.
//!
//! The image is the action's `container-image` platform property (`docker://name:tag`, as
//! Bazel's toolchain rules write it) or the backend's default; images are never pulled, so they
//! must be on the engine. The input root is bind-mounted at its own path and is the only host
//! directory the container sees; the working directory is the action's. The container has no
//! network (`none`) unless the backend allows it and the action asks (`network=on`), CPU and
//! memory limits as configured, a bounded number of processes, and the action's user when the
//! worker has one. A timeout or a cancel kills it; it is removed whatever happens, also when
//! the run is abandoned (its future dropped), and a new backend removes what an earlier
//! worker of the same name left behind. An action the kernel kills for want of memory gets a
//! line on its stderr that says so.
//!
//! Docker adds `HOSTNAME` (and `PATH`, when the action sets none) to the environment, and the
//! engine's init (process 1, so that the command gets signals as anywhere else) exits 127 with
//! a message on stderr for a program missing from the image: those are the two ways this
//! backend departs from the [`Isolation`] conformance suite.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use remexec_core::{Error, Result};
use tokio_util::sync::CancellationToken;

mod ahead;

use crate::cgroups::Limits;
use crate::isolation::hand_over;
use crate::supervisor::RunAs;
use crate::{Ahead, Ended, Exit, Isolation, NETWORK_PROPERTY, Spawn};

/// The platform property naming an action's image.
pub const IMAGE_PROPERTY: &str = "container-image";

/// The label every container of a backend carries, with the backend's name as its value.
const LABEL: &str = "remexec.worker";

/// The label with the id of the process that runs the container's backend.
const PID_LABEL: &str = "remexec.pid";

/// The label with the id of one backend instance, which its reaper goes by.
const BACKEND_LABEL: &str = "remexec.backend";

/// The supervisor argument that makes it a backend's reaper (see [`DockerIsolation::with_reaper`]).
pub const REAP: &str = "--reap-docker";

/// Most processes in one container.
const PIDS_LIMIT: i64 = 4096;

/// Numbers containers.
static CONTAINERS: AtomicU64 = AtomicU64::new(0);

/// Actions in Docker containers. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct DockerIsolation {
    docker: Docker,
    name: String,
    default_image: String,
    limits: Limits,
    run_as: Option<RunAs>,
    allow_network: bool,
    /// Unique among this engine's backends: the worker's name, process id and a number.
    id: String,
    reaper: Option<Arc<Reaper>>,
    /// Containers made ahead of need ([`ahead`](DockerIsolation::ahead)).
    ahead: Option<Arc<ahead::State>>,
}

fn engine(e: DockerError) -> Error {
    Error::Unavailable(remexec_core::Message::caused_by("the Docker engine", e))
}

/// The error of a container that could not be created: `FailedPrecondition` for an image not
/// on the engine.
fn not_created(e: DockerError) -> Error {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::FailedPrecondition(
            format!("the image is not on the Docker engine (images are never pulled): {message}")
                .into(),
        ),
        e => engine(e),
    }
}

impl DockerIsolation {
    /// Connects to the local engine (its unix socket), agreeing on an API version, and removes
    /// containers an earlier backend called `name` left behind. `Unavailable` if there is no
    /// engine.
    pub async fn connect(name: &str, default_image: &str, limits: Limits) -> Result<Self> {
        let docker = Docker::connect_with_unix_defaults()
            .map_err(engine)?
            .negotiate_version()
            .await
            .map_err(engine)?;
        docker.ping().await.map_err(engine)?;
        let isolation = Self {
            docker,
            name: name.to_string(),
            default_image: default_image.to_string(),
            limits,
            run_as: None,
            allow_network: false,
            // Unique on the engine, even for workers of one name in other PID namespaces.
            id: format!("{name}-{}", uuid::Uuid::new_v4()),
            reaper: None,
            ahead: None,
        };
        isolation.sweep().await?;
        Ok(isolation)
    }

    /// Runs actions as `run_as` (their input roots handed to it).
    pub fn run_as(mut self, run_as: Option<RunAs>) -> Self {
        self.run_as = run_as;
        self
    }

    /// Lets actions whose platform has `network=on` use the engine's default network.
    pub fn allow_network(mut self, yes: bool) -> Self {
        self.allow_network = yes;
        self
    }

    /// Starts this backend's reaper: `command` (a program and its leading arguments) with
    /// [`REAP`] and the backend's id, in a process group of its own, which waits for its
    /// standard input to end and then removes every container of the backend. The backend holds
    /// the other end of that pipe until its last clone is dropped, or its process dies, SIGKILL
    /// included: so a killed worker's containers go with it, not at its next start. For
    /// `remexec`, `command` is its supervisor (`remexec supervise`); a binary embedding a worker
    /// calls [`crate::supervise`], which hands [`REAP`] to [`reap`].
    pub fn with_reaper(mut self, command: &[std::ffi::OsString]) -> Result<Self> {
        let (program, leading) = command
            .split_first()
            .ok_or_else(|| Error::invalid("the reaper command is empty"))?;
        let child = std::process::Command::new(program)
            .args(leading)
            .args([REAP, &self.id])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(format!("starting the reaper {program:?}"), e))?;
        self.reaper = Some(Arc::new(Reaper(Some(child))));
        Ok(self)
    }

    /// Removes the containers labelled with this backend's name whose process is gone: what a
    /// killed worker left. Those of a live process (another worker of the same name on this
    /// engine) are left alone.
    async fn sweep(&self) -> Result<()> {
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{LABEL}={}", self.name)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        for container in self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine)?
        {
            let owner = container
                .labels
                .as_ref()
                .and_then(|l| l.get(PID_LABEL))
                .and_then(|pid| pid.parse::<i32>().ok());
            let owner_lives = owner.is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            });
            if owner_lives {
                continue;
            }
            if let Some(id) = container.id {
                tracing::warn!(container = %id, "removing a container left behind");
                self.remove(&id).await;
            }
        }
        Ok(())
    }

    async fn remove(&self, name: &str) {
        let force = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.docker.remove_container(name, Some(force)).await {
            tracing::warn!(container = name, error = %e, "could not remove a container");
        }
    }

    /// The image and network of an action of `platform`. `InvalidArgument` for an image
    /// reference that is not one (the client chooses it).
    fn kind(&self, platform: &[(String, String)]) -> Result<(String, bool)> {
        let property = |name: &str| {
            platform
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let image = property(IMAGE_PROPERTY)
            .map(|i| i.strip_prefix("docker://").unwrap_or(i))
            .unwrap_or(&self.default_image);
        check_image(image)?;
        let network = self.allow_network && property(NETWORK_PROPERTY) == Some("on");
        Ok((image.to_string(), network))
    }

    /// The container of `spawn`. `InvalidArgument` for an image reference that is not one
    /// (the client chooses it).
    fn body(&self, spawn: &Spawn) -> Result<ContainerCreateBody> {
        let (image, network) = self.kind(&spawn.platform)?;
        let mut body = self.container(&image, network, &spawn.input_root, Vec::new());
        body.cmd = Some(spawn.args.clone());
        body.env = Some(spawn.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        body.working_dir = Some(spawn.cwd.to_string_lossy().into_owned());
        Ok(body)
    }

    /// A container of `image` with `root` bound at its own path (and `mounts`), the network if
    /// `network`, the backend's limits, user and labels; no command yet.
    fn container(
        &self,
        image: &str,
        network: bool,
        root: &std::path::Path,
        mut mounts: Vec<Mount>,
    ) -> ContainerCreateBody {
        let root = root.to_string_lossy().into_owned();
        mounts.push(Mount {
            typ: Some(MountType::BIND),
            source: Some(root.clone()),
            target: Some(root),
            read_only: Some(false),
            ..Default::default()
        });
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(if network { "bridge" } else { "none" }.into()),
            nano_cpus: self.limits.cpus.map(|c| (c * 1e9).round() as i64),
            memory: self
                .limits
                .memory
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            memory_swap: self
                .limits
                .memory
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            pids_limit: Some(PIDS_LIMIT),
            // The engine's init is process 1, so that the command gets signals as anywhere
            // else (process 1 ignores those it has no handler for) and orphans are reaped.
            init: Some(true),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(image.to_string()),
            user: self.run_as.map(|r| format!("{}:{}", r.uid, r.gid)),
            labels: Some(HashMap::from([
                (LABEL.to_string(), self.name.clone()),
                (PID_LABEL.to_string(), std::process::id().to_string()),
                (BACKEND_LABEL.to_string(), self.id.clone()),
            ])),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Starts the created container `name`, copies its output into `spawn`'s files, and waits
    /// for it to end, time out or be cancelled.
    async fn run_created(
        &self,
        name: &str,
        spawn: &Spawn,
        cancel: &CancellationToken,
    ) -> Result<Ended> {
        let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
        let (_, pump) = self
            .attach(name, false, (clone(&spawn.stdout)?, clone(&spawn.stderr)?))
            .await?;
        if let Err(e) = self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            // Typically the program does not exist in the image.
            return Err(Error::FailedPrecondition(
                format!("cannot start {:?} in a container: {e}", spawn.args.first()).into(),
            ));
        }
        let (exit, oom) = self.finish(name, spawn, cancel, pump).await?;
        if oom {
            self.tell_oom(&spawn.stderr)?;
        }
        Ok(ended(exit, oom))
    }

    /// Attaches to the container `name` (its standard input too, if `stdin`), and copies its
    /// output into `out`'s files until it ends.
    async fn attach(
        &self,
        name: &str,
        stdin: bool,
        out: (std::fs::File, std::fs::File),
    ) -> Result<(
        std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
        tokio::task::JoinHandle<()>,
    )> {
        let options = AttachContainerOptionsBuilder::new()
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .stream(true)
            // Attached before the start, as `docker run` does: a replay of the logs as well
            // could repeat output the stream also carries.
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(name, Some(options))
            .await
            .map_err(engine)?;
        let (mut stdout, mut stderr) = out;
        let mut output = attached.output;
        let pump = tokio::spawn(async move {
            while let Some(Ok(item)) = output.next().await {
                let _ = match item {
                    LogOutput::StdOut { message } => stdout.write_all(&message),
                    LogOutput::StdErr { message } => stderr.write_all(&message),
                    _ => Ok(()),
                };
            }
        });
        Ok((attached.input, pump))
    }

    /// Waits for the started container `name` to end, time out or be cancelled (then kills
    /// it), and for `pump` to have copied its output: how it ended, and whether the kernel
    /// killed it for want of memory.
    async fn finish(
        &self,
        name: &str,
        spawn: &Spawn,
        cancel: &CancellationToken,
        pump: tokio::task::JoinHandle<()>,
    ) -> Result<(Exit, bool)> {
        let not_running = || {
            WaitContainerOptionsBuilder::new()
                .condition("not-running")
                .build()
        };
        let mut wait = self.docker.wait_container(name, Some(not_running()));
        let timeout = async {
            match spawn.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => futures::future::pending().await,
            }
        };
        let ended = tokio::select! {
            _ = wait.next() => None,
            () = timeout => Some(Exit::TimedOut),
            () = cancel.cancelled() => Some(Exit::Cancelled),
        };
        if ended.is_some() {
            let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
            let _ = self.docker.kill_container(name, Some(kill)).await;
            let _ = self
                .docker
                .wait_container(name, Some(not_running()))
                .next()
                .await;
        }
        let mut pump = pump;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut pump)
            .await
            .is_err()
        {
            // Nothing may write to the output files once this returns.
            pump.abort();
            let _ = pump.await;
        }
        let mut state = self.state(name).await?;
        // The engine may learn of an out-of-memory kill a moment after the exit: a killed
        // container of a memory-limited backend is asked again for up to a second.
        let killed = state.exit_code == Some(128 + 9);
        for _ in 0..10 {
            if !killed || self.limits.memory.is_none() || state.oom_killed == Some(true) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            state = self.state(name).await?;
        }
        let exit = match ended {
            Some(exit) => exit,
            None => Exit::Exited(i32::try_from(state.exit_code.unwrap_or(-1)).unwrap_or(-1)),
        };
        Ok((exit, state.oom_killed == Some(true)))
    }

    /// The container `name`'s state.
    async fn state(&self, name: &str) -> Result<bollard::models::ContainerState> {
        Ok(self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(engine)?
            .state
            .unwrap_or_default())
    }

    /// Tells the action's `stderr` that it was killed for want of memory.
    fn tell_oom(&self, stderr: &std::fs::File) -> Result<()> {
        let limit = self.limits.memory.unwrap_or_default();
        let mut stderr = stderr
            .try_clone()
            .map_err(|e| Error::io("cloning a handle", e))?;
        let _ = writeln!(
            stderr,
            "remexec: the action was killed: it exceeded its memory limit of {limit} bytes"
        );
        Ok(())
    }
}

/// `InvalidArgument` unless `image` looks like an image reference: at most 255 characters of
/// letters, digits and `._-/:@`, starting with a letter or digit.
/// How a container's command ended. The engine keeps no figures of a container that is gone,
/// so nothing is measured but a kill for want of memory.
fn ended(exit: Exit, memory_killed: bool) -> Ended {
    let usage = remexec_core::usage::ActionUsage {
        memory_killed,
        ..Default::default()
    };
    Ended { exit, usage }
}

fn check_image(image: &str) -> Result<()> {
    let valid = !image.is_empty()
        && image.len() <= 255
        && image.starts_with(|c: char| c.is_ascii_alphanumeric())
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    match valid {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{IMAGE_PROPERTY} {image:?} is not an image reference"
        ))),
    }
}

/// A backend's reaper process; dropping it closes the reaper's standard input, which makes it
/// remove what is left, and end.
#[derive(Debug)]
struct Reaper(Option<std::process::Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            drop(child.stdin.take());
            // Collected off the async threads, so that it leaves no zombie.
            std::thread::spawn(move || child.wait());
        }
    }
}

/// A backend's reaper (see [`DockerIsolation::with_reaper`]): waits until standard input ends,
/// then force-removes every container labelled with the backend `id`. Returns the exit code.
pub fn reap(id: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("remexec reaper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let removed = runtime.block_on(async {
        // SIGTERM, SIGINT and SIGHUP sent to the worker's whole group or cgroup (systemd's
        // stop, a terminal) must not end the reaper before it has cleaned up: handled here,
        // they no longer kill it.
        use tokio::signal::unix::{SignalKind, signal};
        let _held: Vec<_> = [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        })
        .await;
        // A hung engine must not keep the reaper forever.
        tokio::time::timeout(REAP_TIMEOUT, remove_backend(id))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(
                    "the Docker engine did not answer".into(),
                ))
            })
    });
    match removed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remexec reaper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Longest the reaper waits for the engine.
const REAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Force-removes every container labelled with the backend `id`.
async fn remove_backend(id: &str) -> Result<()> {
    {
        let docker = Docker::connect_with_unix_defaults()
            .map_err(engine)?
            .negotiate_version()
            .await
            .map_err(engine)?;
        let filters = HashMap::from([("label".to_string(), vec![format!("{BACKEND_LABEL}={id}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let force = RemoveContainerOptionsBuilder::new().force(true).build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(engine)?;
        for id in containers.into_iter().filter_map(|c| c.id) {
            if let Err(e) = docker.remove_container(&id, Some(force.clone())).await {
                eprintln!("remexec reaper: removing the container {id}: {e}");
            }
        }
        Ok(())
    }
}

/// Removes the container if the run is abandoned before it could.
struct Removal {
    docker: Docker,
    name: String,
    armed: bool,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let force = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = docker.remove_container(&name, Some(force)).await;
            });
        }
    }
}

#[async_trait]
impl Isolation for DockerIsolation {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended> {
        // Claimed first, so that any early return below drops (removes) it.
        let ready = self.handed(&spawn.input_root);
        if spawn.args.is_empty() {
            return Err(Error::invalid("empty command"));
        }
        if cancel.is_cancelled() {
            return Ok(Exit::Cancelled.into());
        }
        if let Some(run_as) = self.run_as {
            let root = spawn.input_root.clone();
            crate::blocking::blocking(move || hand_over(&root, run_as)).await?;
        }
        if let Some(ready) = ready {
            return self.run_ready(ready, spawn, cancel).await;
        }
        let body = self.body(&spawn)?;
        let n = CONTAINERS.fetch_add(1, Ordering::Relaxed);
        let name = format!("remexec-{}-{}-{n}", self.name, std::process::id());
        let create = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut removal = Removal {
            docker: self.docker.clone(),
            name: name.clone(),
            armed: true,
        };
        let created = self.docker.create_container(Some(create), body).await;
        if let Err(e) = created {
            removal.armed = false;
            return Err(not_created(e));
        }
        // Removed in the background when `removal` goes: its processes are gone already.
        self.run_created(&name, &spawn, &cancel).await
    }

    async fn ready(&self, ahead: Ahead<'_>) -> Option<std::path::PathBuf> {
        self.ready_dir(ahead)
    }
}
