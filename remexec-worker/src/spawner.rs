//! How a supervised action's supervisor is started: by a thread of the worker that makes a PID
//! namespace for each (a worker started as root), or through the supervisor's own outer step
//! (see [`supervisor`](crate::supervisor)); and the lifeline that tells the supervisor whether
//! the worker is still there.
//!
//! A worker started as root may make PID namespaces itself. For each action, a new thread of
//! its own calls `unshare(CLONE_NEWPID)` (which a thread may do only once) and starts the
//! supervisor, which is then at once process 1 of a new namespace: one program fewer per action
//! than the outer step, which must start the supervisor again inside the namespace. The thread
//! lives until the action has ended, since the supervisor's parent-death signal follows the
//! thread that started it.

use std::io;
use std::process::Stdio;
use std::sync::mpsc;

use nix::sched::{CloneFlags, unshare};
use tokio::sync::oneshot;

/// The worker's end of the lifeline: standard input of every supervisor is a pipe whose only
/// writer this is. Process 1 checks, once its parent-death signal is armed, that the writer is
/// still open: if the worker's process is gone, nothing runs. This narrows the window in which
/// a worker's death goes unnoticed, but does not close it: the pipe hangs up only once the
/// worker's last thread has gone, while the parent-death signal follows the thread that
/// started the process.
#[derive(Debug)]
pub(crate) struct Lifeline {
    reader: io::PipeReader,
    /// Never written; held so that the pipe hangs up only when the worker is gone.
    _writer: io::PipeWriter,
}

impl Lifeline {
    pub(crate) fn new() -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        Ok(Self {
            reader,
            _writer: writer,
        })
    }

    /// A supervisor's standard input.
    pub(crate) fn stdin(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.reader.try_clone()?))
    }
}

/// Keeps the thread that started a supervisor alive; dropped once the action has ended.
#[derive(Debug)]
pub(crate) struct Holder {
    _thread: mpsc::Sender<()>,
}

/// Starts `command` as process 1 of a new PID namespace, killed when dropped, from a new thread
/// that lives until the returned [`Holder`] is dropped.
pub(crate) async fn spawn_in_namespace(
    command: std::process::Command,
) -> io::Result<(tokio::process::Child, Holder)> {
    let runtime = tokio::runtime::Handle::current();
    let (reply, child) = oneshot::channel();
    let (holder, held) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("remexec-spawner".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            let started = unshare(CloneFlags::CLONE_NEWPID)
                .map_err(io::Error::from)
                .and_then(|()| {
                    tokio::process::Command::from(command)
                        .kill_on_drop(true)
                        .spawn()
                });
            let ok = started.is_ok();
            if reply.send(started).is_ok() && ok {
                // Returns once the holder is dropped.
                let _ = held.recv();
            }
        })?;
    let child = child
        .await
        .map_err(|_| io::Error::other("the thread starting the supervisor is gone"))??;
    Ok((child, Holder { _thread: holder }))
}

/// Whether this thread may make PID namespaces: started as root with `CAP_SYS_ADMIN`. Checked
/// on a thread of its own, whose namespace for children is then thrown away.
pub(crate) fn may_make_namespaces() -> bool {
    std::thread::spawn(|| unshare(CloneFlags::CLONE_NEWPID).is_ok())
        .join()
        .unwrap_or(false)
}

/// `command`'s output, started as [`spawn_in_namespace`] starts it (`direct`) or as is, from a thread of
/// its own that waits for it. Blocks.
pub(crate) fn output(
    mut command: std::process::Command,
    direct: bool,
) -> io::Result<std::process::Output> {
    std::thread::spawn(move || {
        if direct {
            unshare(CloneFlags::CLONE_NEWPID).map_err(io::Error::from)?;
        }
        command.output()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(io::Error::other(
            "the thread starting the supervisor panicked",
        ))
    })
}
