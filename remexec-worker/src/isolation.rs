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
    use std::time::Instant;

    fn spawn(dir: &std::path::Path, script: &str, timeout: Option<Duration>) -> Spawn {
        let create = |name: &str| File::create(dir.join(name)).unwrap();
        Spawn {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("GREETING".into(), "hi".into()),
            ],
            cwd: dir.to_path_buf(),
            stdout: create("stdout"),
            stderr: create("stderr"),
            timeout,
        }
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }

    #[tokio::test]
    async fn exit_codes_env_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let exit = ProcessIsolation
            .run(
                spawn(
                    dir.path(),
                    "echo $GREETING; echo err >&2; pwd; exit 3",
                    None,
                ),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(exit, Exit::Exited(3));
        let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
        assert_eq!(out, format!("hi\n{}\n", dir.path().display()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stderr")).unwrap(),
            "err\n"
        );
        let missing = Spawn {
            args: vec!["/nonexistent/prog".into()],
            ..spawn(dir.path(), "", None)
        };
        assert!(
            ProcessIsolation
                .run(missing, CancellationToken::new())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn timeout_and_cancel_kill_grandchildren() {
        for cancel_it in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            // The command forks a sleeping grandchild that records its pid, then sleeps itself.
            let script = "sh -c 'echo $$ > grandchild.pid; exec sleep 300' & sleep 300";
            let cancel = CancellationToken::new();
            let timeout = (!cancel_it).then_some(Duration::from_millis(500));
            let start = Instant::now();
            let run = ProcessIsolation.run(spawn(dir.path(), script, timeout), cancel.clone());
            let canceller = async {
                if cancel_it {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    cancel.cancel();
                }
            };
            let (exit, ()) = tokio::join!(run, canceller);
            assert_eq!(
                exit.unwrap(),
                if cancel_it {
                    Exit::Cancelled
                } else {
                    Exit::TimedOut
                }
            );
            assert!(start.elapsed() < Duration::from_secs(30));
            let pid: i32 = std::fs::read_to_string(dir.path().join("grandchild.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!alive(pid), "grandchild {pid} outlived its action");
        }
    }

    #[tokio::test]
    async fn background_processes_die_with_a_normal_exit() {
        let dir = tempfile::tempdir().unwrap();
        let script = "sh -c 'echo $$ > bg.pid; exec sleep 300' & sleep 0.2; exit 0";
        assert_eq!(
            ProcessIsolation
                .run(spawn(dir.path(), script, None), CancellationToken::new())
                .await
                .unwrap(),
            Exit::Exited(0)
        );
        let pid: i32 = std::fs::read_to_string(dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!alive(pid), "background process {pid} outlived its action");
    }
}
