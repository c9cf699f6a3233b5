//! Sandboxes made ahead of need: what [`Isolation::ready`](crate::Isolation::ready) hands out.
//!
//! Setting up a sandbox (bubblewrap's namespaces and mounts) takes several milliseconds, most
//! of it waiting on the kernel, not working. A backend that makes sandboxes ahead starts each
//! one with a *waiter* as its command (the supervisor's [`AWAIT`](crate::supervisor::AWAIT) mode) and an empty input root
//! bound in, `DIRS/ahead-N/root`, while no action needs it yet. The worker stages the next
//! action's inputs into that directory. [`run`](crate::Isolation::run) then writes the
//! action's command, environment and working directory to the waiter's standard input and
//! closes it, and the waiter `exec`s the command: the action pays for one process start, not
//! for the sandbox.
//!
//! A sandbox is used for one action, never again. Its output goes to unlinked files of its
//! own, copied into the action's when it ends. Sandboxes not used are killed with the backend
//! (or with the worker: `--die-with-parent`).

use std::fs::File;
use std::path::{Path, PathBuf};

use remexec_core::{Error, Result};

/// The directory, in a worker's work directory, of its sandboxes made ahead.
pub(crate) const DIR: &str = "ahead";

/// How many sandboxes a backend keeps ready for each kind of action.
pub const AHEAD: usize = 4;

/// What a backend keeps of a sandbox made ahead.
pub(crate) trait Waiting: Send {
    /// Whether its waiter still waits (it has not died).
    fn waits(&mut self) -> bool;
}

/// A sandbox made ahead: its directory (`…/ahead-N`, whose `root` is the input root bound
/// in), its output files, and the backend's own part.
#[derive(Debug)]
pub(crate) struct Ready<T> {
    pub(crate) dir: PathBuf,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    pub(crate) sandbox: T,
}

impl<T> Ready<T> {
    /// The input root the sandbox was made for.
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// A sandbox made ahead as a process on this host (whose standard input is the waiter's), in
/// its own process group, killed with its group when dropped.
#[derive(Debug)]
pub(crate) struct Process<T> {
    pub(crate) child: tokio::process::Child,
    /// What the backend needs to finish it (cgroups).
    pub(crate) extra: T,
}

impl<T: Send> Waiting for Process<T> {
    fn waits(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl<T> Process<T> {
    /// Hands the waiter its command: the action starts.
    pub(crate) async fn start(&mut self, spec: &[u8]) -> Result<()> {
        let stdin = self.child.stdin.take();
        let stdin =
            stdin.ok_or_else(|| Error::Internal("the sandbox was started already".into()))?;
        hand(stdin, spec).await
    }
}

/// Writes `spec` to a waiter's standard input, and closes it.
pub(crate) async fn hand(mut stdin: impl tokio::io::AsyncWrite + Unpin, spec: &[u8]) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let handing = |e| Error::io("handing the command to its sandbox", e);
    stdin.write_all(spec).await.map_err(handing)?;
    stdin.shutdown().await.map_err(handing)
}

impl<T> Drop for Process<T> {
    fn drop(&mut self) {
        // The waiter's group: the sandbox and whatever its command left (killed by `wait`
        // already when it ran).
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Copies what a sandbox made ahead wrote to its own output files into the action's.
pub(crate) async fn copy_output(from: (File, File), to: (&File, &File)) -> Result<()> {
    let clone = |f: &File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
    let (mut out, mut err) = (clone(to.0)?, clone(to.1)?);
    crate::blocking::blocking(move || {
        use std::io::Seek as _;
        for (mut from, to) in [(from.0, &mut out), (from.1, &mut err)] {
            from.rewind()
                .and_then(|_| std::io::copy(&mut from, to))
                .map_err(|e| Error::io("copying the action's output", e))?;
        }
        Ok(())
    })
    .await
}

/// The sandboxes of one backend made ahead, by kind (`K`: what must match, with the
/// directory they were made in), and those handed out, by input root.
#[derive(Debug)]
pub(crate) struct Pool<K, T> {
    #[allow(clippy::type_complexity)]
    ready: parking_lot::Mutex<std::collections::HashMap<K, Vec<Ready<T>>>>,
    /// Being made, by kind.
    making: parking_lot::Mutex<std::collections::HashMap<K, usize>>,
    handed: parking_lot::Mutex<std::collections::HashMap<PathBuf, Ready<T>>>,
    /// Sandboxes found dead before they were used: after [`DEAD_LIMIT`], none are made.
    dead: std::sync::atomic::AtomicUsize,
    /// When making one of a kind last failed (an image not on the engine): none of that kind
    /// are made for [`RETRY_AFTER`].
    failed: parking_lot::Mutex<std::collections::HashMap<K, std::time::Instant>>,
}

/// How long a kind of sandbox that could not be made is not tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How many sandboxes may die unused before a backend stops making them ahead.
const DEAD_LIMIT: usize = 8;

impl<K: Eq + std::hash::Hash + Clone, T: Waiting> Default for Pool<K, T> {
    fn default() -> Self {
        Self {
            ready: Default::default(),
            making: Default::default(),
            handed: Default::default(),
            dead: Default::default(),
            failed: Default::default(),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone, T: Waiting> Pool<K, T> {
    /// A ready sandbox of `kind` (its directory), now handed out; `None` if none waits.
    pub(crate) fn take(&self, kind: &K) -> Option<PathBuf> {
        let mut ready = self.ready.lock();
        let list = ready.get_mut(kind)?;
        while let Some(mut sandbox) = list.pop() {
            if sandbox.sandbox.waits() {
                let dir = sandbox.dir.clone();
                self.handed.lock().insert(sandbox.root(), sandbox);
                return Some(dir);
            }
            let dead = 1 + self.dead.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let said = read_start(&sandbox.stderr);
            tracing::warn!(dead, said, "a sandbox made ahead of need died unused");
            if dead == DEAD_LIMIT {
                tracing::warn!("no more sandboxes are made ahead of need");
            }
            // Small and empty: removed here rather than handed to another thread.
            let _ = std::fs::remove_dir_all(&sandbox.dir);
        }
        None
    }

    /// The sandbox handed out for `root`, if it still waits.
    pub(crate) fn handed(&self, root: &Path) -> Option<Ready<T>> {
        let mut sandbox = self.handed.lock().remove(root)?;
        sandbox.sandbox.waits().then_some(sandbox)
    }

    /// How many more of `kind` to make now to have [`AHEAD`] (counted as being made).
    pub(crate) fn wanted(&self, kind: &K) -> usize {
        if self.dead.load(std::sync::atomic::Ordering::Relaxed) >= DEAD_LIMIT
            || self
                .failed
                .lock()
                .get(kind)
                .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return 0;
        }
        let have = self.ready.lock().get(kind).map_or(0, Vec::len);
        let mut making = self.making.lock();
        let making = making.entry(kind.clone()).or_default();
        let wanted = AHEAD.saturating_sub(have + *making);
        *making += wanted;
        wanted
    }

    /// A fresh directory name for a sandbox in `dirs`.
    pub(crate) fn dir_in(&self, dirs: &Path) -> PathBuf {
        // One count for the process: backends of one worker share its directory.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dirs.join(format!("ahead-{}-{n}", std::process::id()))
    }

    /// A sandbox of `kind` is made (`Some`) or could not be.
    pub(crate) fn made(&self, kind: &K, sandbox: Option<Ready<T>>) {
        if let Some(making) = self.making.lock().get_mut(kind) {
            *making = making.saturating_sub(1);
        }
        if let Some(sandbox) = sandbox {
            self.ready
                .lock()
                .entry(kind.clone())
                .or_default()
                .push(sandbox);
        }
    }
}

/// The first KiB of what a sandbox wrote to `file`, for a log line.
pub(crate) fn read_start(file: &File) -> String {
    use std::os::unix::fs::FileExt as _;
    let mut start = vec![0; 1024];
    let n = file.read_at(&mut start, 0).unwrap_or(0);
    String::from_utf8_lossy(&start[..n]).trim().to_string()
}

/// Creates `dir/root` (and `dir`), and the sandbox's two output files in `dir`. Blocks.
pub(crate) fn make_dir(dir: &Path) -> Result<(File, File)> {
    let root = dir.join("root");
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let file = || {
        tempfile::tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))
    };
    Ok((file()?, file()?))
}
