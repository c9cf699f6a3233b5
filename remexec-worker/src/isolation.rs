//! The [`Isolation`] trait and its [`ProcessIsolation`] backend.

use std::fmt::Debug;
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use remexec_core::{Error, Result};
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug)]
pub struct Spawn {
    /// `argv`; the first element is the program, looked up in `env`'s `PATH` if it has no `/`.
    pub args: Vec<String>,
    /// The complete environment; nothing else is inherited.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
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
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Exit>;
}

/// Plain processes: each command runs in its own process group, and the whole group is killed
/// when the command ends, times out or is cancelled.
#[derive(Debug, Default, Clone)]
pub struct ProcessIsolation;

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH just means the group is already gone.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[async_trait]
impl Isolation for ProcessIsolation {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Exit> {
        let program = spawn
            .args
            .first()
            .ok_or_else(|| Error::invalid("empty command"))?;
        let mut child = tokio::process::Command::new(program)
            .args(&spawn.args[1..])
            .env_clear()
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spawn.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(spawn.stdout))
            .stderr(Stdio::from(spawn.stderr))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::FailedPrecondition(format!("cannot start {program:?}: {e}")))?;
        let pid = child.id();
        let timeout = async {
            match spawn.timeout {
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
        // Whatever happened, nothing the command started may outlive it.
        kill_group(pid);
        let _ = child.wait().await;
        Ok(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::testing::isolation_conformance(&ProcessIsolation).await;
    }
}
