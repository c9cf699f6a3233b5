//! Containers made ahead of need ([`crate::ahead`]) for [`DockerIsolation`].
//!
//! A container made ahead is created and started with a waiter as its command (under the
//! engine's init, as every action's container), its input root bound in, and its standard input
//! attached. An image need not hold anything of remexec's: the waiter (the supervisor), and the
//! host's dynamic loader and the libraries it needs (found by `ldd`), are bound read-only at
//! `/.remexec`, and the waiter is started through that loader. The waiter then `exec`s the
//! action's command, which runs on the image's own loader and libraries. Containers are removed
//! when their action ends (in the background), or when the backend drops them unused.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bollard::models::{Mount, MountType};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
use remexec_core::{Error, Result};
use tokio_util::sync::CancellationToken;

use super::{CONTAINERS, DockerIsolation, Removal, engine};
use crate::ahead::{MakesAhead, Pool, Ready, Waiting};
use crate::{Ahead, Ended, Exit, Spawn};

/// Where a container made ahead sees its waiter, and the host's loader and libraries.
const WAITER_DIR: &str = "/.remexec";

/// A backend's containers made ahead: their command and mounts, and the pool, by the directory
/// they are made in, the image and whether they have the network.
#[derive(Debug)]
pub(super) struct State {
    cmd: Vec<String>,
    mounts: Vec<Mount>,
    pool: Pool<(PathBuf, String, bool), Container>,
}

/// A container made ahead: its name, its standard input until the action's command is handed
/// over, and the task copying its output. Removed (in the background) when dropped.
pub(crate) struct Container {
    name: String,
    input: Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    pump: Option<tokio::task::JoinHandle<()>>,
    _removal: Removal,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.name)
            .finish()
    }
}

impl Waiting for Container {
    fn waits(&mut self) -> bool {
        // Its output ends when it does.
        self.pump.as_ref().is_some_and(|p| !p.is_finished())
    }
}

/// The dynamic loader `program` names and the libraries it loads, by `ldd`: `(None, [])` for
/// a static program. `FailedPrecondition` if `ldd` cannot tell.
fn loader_and_libraries(program: &Path) -> Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .env_clear()
        .output()
        .map_err(|e| Error::FailedPrecondition(format!("running ldd: {e}").into()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return match text.contains("not a dynamic executable") {
            true => Ok((None, Vec::new())),
            false => Err(Error::FailedPrecondition(
                format!(
                    "ldd {}: {}",
                    program.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
                .into(),
            )),
        };
    }
    let (mut loader, mut libraries) = (None, Vec::new());
    for line in text.lines() {
        let line = line.trim();
        match line.split_once("=>") {
            Some((_, found)) => match found.split_whitespace().next() {
                Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
                // `linux-vdso.so.1 =>` with nothing, or "not found".
                _ if found.contains("not found") => {
                    return Err(Error::FailedPrecondition(
                        format!(
                            "{} needs a library that is missing: {line}",
                            program.display()
                        )
                        .into(),
                    ));
                }
                _ => {}
            },
            None if line.starts_with('/') => {
                loader = line.split_whitespace().next().map(PathBuf::from);
            }
            None => {}
        }
    }
    Ok((loader, libraries))
}

impl State {
    /// The containers' command and mounts for the waiter `supervisor` (a program and its
    /// leading arguments).
    fn new(supervisor: &[OsString]) -> Result<Self> {
        let (program, leading) = supervisor
            .split_first()
            .ok_or_else(|| Error::invalid("the supervisor is not named"))?;
        let program = Path::new(program);
        let (loader, libraries) = loader_and_libraries(program)?;
        let inside = |name: &str| format!("{WAITER_DIR}/{name}");
        let bind = |host: &Path, name: &str| -> Result<Mount> {
            let host = host
                .canonicalize()
                .map_err(|e| Error::io(format!("finding {}", host.display()), e))?;
            Ok(Mount {
                typ: Some(MountType::BIND),
                source: Some(host.to_string_lossy().into_owned()),
                target: Some(inside(name)),
                read_only: Some(true),
                ..Default::default()
            })
        };
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut mounts = vec![bind(program, "waiter")?];
        let mut cmd = Vec::new();
        for library in &libraries {
            let name =
                file_name(library).ok_or_else(|| Error::invalid("a library without a name"))?;
            mounts.push(bind(library, &name)?);
        }
        if let Some(loader) = &loader {
            let name =
                file_name(loader).ok_or_else(|| Error::invalid("a loader without a name"))?;
            mounts.push(bind(loader, &name)?);
            cmd.extend([inside(&name), "--library-path".into(), WAITER_DIR.into()]);
        }
        cmd.push(inside("waiter"));
        cmd.extend(leading.iter().map(|a| a.to_string_lossy().into_owned()));
        // Over the image's environment, as a container made for the action gets it.
        cmd.extend([crate::supervisor::AWAIT, crate::supervisor::OVER_ENV].map(String::from));
        Ok(Self {
            cmd,
            mounts,
            pool: Pool::default(),
        })
    }
}

impl DockerIsolation {
    /// Makes containers ahead of need ([`crate::ahead`]): [`AHEAD`](crate::ahead::AHEAD) of
    /// each image and network, each waiting in `supervisor` (a program and its leading
    /// arguments, as for [`SupervisorSetup`](crate::SupervisorSetup)), which containers see
    /// read-only at `/.remexec` with the host's loader and the libraries it needs. Checks, by
    /// running `true` so in the default image, that it works: `FailedPrecondition` with the
    /// reason if not.
    pub async fn ahead(mut self, supervisor: Vec<OsString>) -> Result<Self> {
        self.ahead = Some(std::sync::Arc::new(State::new(&supervisor)?));
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a scratch directory", e))?;
        let kind = (
            scratch.path().to_path_buf(),
            self.default_image.clone(),
            false,
        );
        let ready = crate::ahead::make(&self, &kind).await?;
        let root = ready.root();
        let (stdout, stderr) = (tempfile::tempfile(), tempfile::tempfile());
        let clone = |f: std::io::Result<std::fs::File>| {
            f.map_err(|e| Error::io("creating a scratch file", e))
        };
        let spawn = Spawn {
            args: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: root.clone(),
            input_root: root,
            platform: Vec::new(),
            executor: String::new(),
            stdout: clone(stdout)?,
            stderr: clone(stderr)?,
            timeout: Some(std::time::Duration::from_secs(60)),
        };
        let said = spawn.stderr.try_clone();
        match self
            .run_ready(ready, spawn, CancellationToken::new())
            .await?
            .exit
        {
            Exit::Exited(0) => Ok(self),
            exit => Err(Error::FailedPrecondition(
                format!(
                    "containers made ahead of need do not work here ({exit:?}): {}",
                    said.map(|f| crate::ahead::read_start(&f))
                        .unwrap_or_default()
                )
                .into(),
            )),
        }
    }

    /// See [`Isolation::ready`](crate::Isolation::ready).
    pub(super) fn ready_dir(&self, ahead: Ahead<'_>) -> Option<PathBuf> {
        let (image, network) = self.kind(ahead.platform).ok()?;
        crate::ahead::take_and_refill(self, (ahead.dirs.to_path_buf(), image, network))
    }

    /// The container made ahead for `root`, if it still waits.
    pub(super) fn handed(&self, root: &Path) -> Option<Ready<Container>> {
        self.ahead.as_ref()?.pool.handed(root)
    }

    /// Runs `spawn` in `ready`, made ahead for its input root.
    pub(super) async fn run_ready(
        &self,
        mut ready: Ready<Container>,
        spawn: Spawn,
        cancel: CancellationToken,
    ) -> Result<Ended> {
        let spec = crate::supervisor::spec(&spawn.args, &spawn.env, &spawn.cwd)?;
        let sandbox = &mut ready.sandbox;
        let taken = (sandbox.input.take(), sandbox.pump.take());
        let (Some(input), Some(pump)) = taken else {
            return Err(Error::Internal("the container was started already".into()));
        };
        crate::ahead::hand(input, &spec).await?;
        let (exit, oom) = self.finish(&sandbox.name, &spawn, &cancel, pump).await?;
        let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
        let own = (clone(&ready.stdout)?, clone(&ready.stderr)?);
        crate::ahead::copy_output(own, (&spawn.stdout, &spawn.stderr)).await?;
        if oom {
            self.tell_oom(&spawn.stderr)?;
        }
        Ok(super::ended(exit, oom))
    }
}

#[async_trait::async_trait]
impl MakesAhead for DockerIsolation {
    type Kind = (PathBuf, String, bool);
    type Sandbox = Container;

    fn pool(&self) -> Option<&Pool<Self::Kind, Container>> {
        self.ahead.as_ref().map(|a| &a.pool)
    }

    fn dirs(kind: &Self::Kind) -> &Path {
        &kind.0
    }

    /// Creates and starts a container of `kind` in `dir` whose command waits for the
    /// action's.
    async fn start(
        &self,
        kind: &Self::Kind,
        dir: &Path,
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<Ready<Container>> {
        let state = self
            .ahead
            .as_ref()
            .ok_or_else(|| Error::Internal("no containers are made ahead".into()))?;
        let root = dir.join("root");
        let mut body = self.container(&kind.1, kind.2, &root, state.mounts.clone());
        body.cmd = Some(state.cmd.clone());
        body.working_dir = Some(root.to_string_lossy().into_owned());
        body.open_stdin = Some(true);
        body.stdin_once = Some(true);
        body.attach_stdin = Some(true);
        let n = CONTAINERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("remexec-{}-{}-a{n}", self.name, std::process::id());
        let create = CreateContainerOptionsBuilder::new().name(&name).build();
        self.docker
            .create_container(Some(create), body)
            .await
            .map_err(super::not_created)?;
        let removal = Removal {
            docker: self.docker.clone(),
            name: name.clone(),
            armed: true,
        };
        let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
        let (input, pump) = self
            .attach(&name, true, (clone(&stdout)?, clone(&stderr)?))
            .await?;
        self.docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .map_err(engine)?;
        Ok(Ready {
            dir: dir.to_path_buf(),
            stdout,
            stderr,
            sandbox: Container {
                name,
                input: Some(input),
                pump: Some(pump),
                _removal: removal,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiter_is_started_through_the_hosts_loader() {
        let state = State::new(&[OsString::from("/bin/sh")]).unwrap();
        // Debian's /bin/sh (dash) is dynamic: its loader, then the waiter.
        assert!(state.cmd[0].starts_with("/.remexec/ld-"), "{:?}", state.cmd);
        assert_eq!(
            &state.cmd[1..],
            [
                "--library-path",
                "/.remexec",
                "/.remexec/waiter",
                "--await",
                "--over-env"
            ]
        );
        let targets: Vec<_> = state
            .mounts
            .iter()
            .filter_map(|m| m.target.clone())
            .collect();
        assert!(
            targets.contains(&"/.remexec/libc.so.6".to_string()),
            "{targets:?}"
        );
        assert!(state.mounts.iter().all(|m| m.read_only == Some(true)));
        assert!(State::new(&[OsString::from("/nonexistent")]).is_err());
    }
}
