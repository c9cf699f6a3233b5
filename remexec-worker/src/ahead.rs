//! Sandboxes made ahead of need: what [`Isolation::ready`](crate::Isolation::ready) hands out.
//!
//! Setting up a sandbox (bubblewrap's namespaces and mounts) takes several milliseconds, most
//! of it waiting on the kernel, not working. A backend that makes sandboxes ahead starts each
//! one with a *waiter* as its command (the supervisor's [`AWAIT`](crate::supervisor::AWAIT) mode) and an empty input root
//! bound in, `DIRS/ahead-XXXXXX/root`, while no action needs it yet. The worker stages the next
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

/// A sandbox made ahead: its directory (`…/ahead-XXXXXX`, whose `root` is the input root bound
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
    let handed = async {
        stdin.write_all(spec).await.map_err(handing)?;
        stdin.shutdown().await.map_err(handing)
    };
    tokio::time::timeout(PROMPT, handed)
        .await
        .map_err(|_| Error::Unavailable("the sandbox did not take its command".into()))?
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

/// How many kinds of sandbox a backend keeps ready at once: those of the kinds asked for
/// least recently go (clients choose images).
const KINDS: usize = 2;

/// How many sandboxes in a row may die unused before a backend stops making them ahead.
const DEAD_LIMIT: usize = 8;

/// How long a kind of sandbox that could not be made is not tried again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How long making one sandbox, or handing it its command, may take.
pub(crate) const PROMPT: std::time::Duration = std::time::Duration::from_secs(60);

/// The sandboxes of one backend made ahead, by kind (`K`: what must match, with the
/// directory they were made in), and those handed out, by input root.
#[derive(Debug)]
pub(crate) struct Pool<K, T> {
    state: parking_lot::Mutex<State<K, T>>,
}

#[derive(Debug)]
struct State<K, T> {
    /// Ready, by kind; at most [`KINDS`] kinds, the latest asked for first in `recent`.
    ready: std::collections::HashMap<K, Vec<Ready<T>>>,
    recent: std::collections::VecDeque<K>,
    /// Being made, by kind.
    making: std::collections::HashMap<K, usize>,
    /// Handed out by [`Pool::take`], by input root, until [`Pool::handed`] claims them.
    handed: std::collections::HashMap<PathBuf, Ready<T>>,
    /// Sandboxes found dead before they were used, in a row.
    dead: usize,
    /// When making one of a kind last failed (an image not on the engine).
    failed: std::collections::HashMap<K, std::time::Instant>,
}

impl<K, T> Default for Pool<K, T> {
    fn default() -> Self {
        Self {
            state: parking_lot::Mutex::new(State {
                ready: Default::default(),
                recent: Default::default(),
                making: Default::default(),
                handed: Default::default(),
                dead: 0,
                failed: Default::default(),
            }),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone, T: Waiting> Pool<K, T> {
    /// A ready sandbox of `kind` (its directory), now handed out; `None` if none waits. Also
    /// drops the handed-out sandboxes whose input roots are gone (their leases ended without
    /// running them), and the ready ones of kinds no longer asked for.
    pub(crate) fn take(&self, kind: &K) -> Option<PathBuf> {
        let mut dropped = Vec::new();
        let taken = {
            let mut state = self.state.lock();
            let gone: Vec<PathBuf> = state
                .handed
                .keys()
                .filter(|r| !r.exists())
                .cloned()
                .collect();
            dropped.extend(gone.iter().filter_map(|root| state.handed.remove(root)));
            state.recent.retain(|k| k != kind);
            state.recent.push_front(kind.clone());
            while state.recent.len() > KINDS {
                if let Some(old) = state.recent.pop_back() {
                    dropped.extend(state.ready.remove(&old).unwrap_or_default());
                }
            }
            state.take(kind, &mut dropped)
        };
        // Killed and removed outside the lock.
        for sandbox in dropped {
            let _ = std::fs::remove_dir_all(&sandbox.dir);
        }
        taken
    }

    /// The sandbox handed out for `root`, if it still waits.
    pub(crate) fn handed(&self, root: &Path) -> Option<Ready<T>> {
        let mut sandbox = self.state.lock().handed.remove(root)?;
        sandbox.sandbox.waits().then_some(sandbox)
    }

    /// How many more of `kind` to make now to have [`AHEAD`] (counted as being made).
    pub(crate) fn wanted(&self, kind: &K) -> usize {
        let mut state = self.state.lock();
        let failing = state
            .failed
            .get(kind)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if state.dead >= DEAD_LIMIT || failing {
            return 0;
        }
        let have = state.ready.get(kind).map_or(0, Vec::len);
        let making = state.making.entry(kind.clone()).or_default();
        let wanted = AHEAD.saturating_sub(have + *making);
        *making += wanted;
        wanted
    }

    /// A sandbox of `kind` is made (`Some`) or could not be.
    pub(crate) fn made(&self, kind: &K, sandbox: Option<Ready<T>>) {
        let unwanted = {
            let mut state = self.state.lock();
            if let Some(making) = state.making.get_mut(kind) {
                *making = making.saturating_sub(1);
            }
            // Kinds are the clients' to choose: nothing is kept of those not in use.
            state.making.retain(|_, n| *n > 0);
            state.failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
            match sandbox {
                Some(sandbox) if state.recent.contains(kind) => {
                    state.ready.entry(kind.clone()).or_default().push(sandbox);
                    None
                }
                // A kind no longer asked for.
                Some(sandbox) => Some(sandbox),
                None => {
                    state.failed.insert(kind.clone(), std::time::Instant::now());
                    None
                }
            }
        };
        if let Some(sandbox) = unwanted {
            let _ = std::fs::remove_dir_all(&sandbox.dir);
        }
    }
}

impl<K: Eq + std::hash::Hash, T: Waiting> State<K, T> {
    /// A live ready sandbox of `kind`, moved to `handed`; dead ones found go to `dropped`.
    fn take(&mut self, kind: &K, dropped: &mut Vec<Ready<T>>) -> Option<PathBuf> {
        while let Some(mut sandbox) = self.ready.get_mut(kind)?.pop() {
            if sandbox.sandbox.waits() {
                self.dead = 0;
                let dir = sandbox.dir.clone();
                self.handed.insert(sandbox.root(), sandbox);
                return Some(dir);
            }
            self.dead += 1;
            let said = read_start(&sandbox.stderr);
            tracing::warn!(
                dead = self.dead,
                said,
                "a sandbox made ahead of need died unused"
            );
            if self.dead == DEAD_LIMIT {
                tracing::warn!("no more sandboxes are made ahead of need");
            }
            dropped.push(sandbox);
        }
        None
    }
}

/// A fresh directory for a sandbox in `dirs`, with an unguessable name (so that nothing that
/// cannot list `dirs` finds it) and an empty `root` that only the worker may write to until
/// the action's inputs are staged and handed over: `(dir, stdout, stderr)`, the last two the
/// sandbox's output files. Blocks.
pub(crate) fn make_dir(dirs: &Path) -> Result<(PathBuf, File, File)> {
    let dir = tempfile::Builder::new()
        .prefix("ahead-")
        .tempdir_in(dirs)
        .map_err(|e| Error::io(format!("creating a directory in {}", dirs.display()), e))?
        .keep();
    use std::os::unix::fs::PermissionsExt as _;
    let searchable = std::fs::Permissions::from_mode(0o711);
    let root = dir.join("root");
    std::fs::set_permissions(&dir, searchable)
        .and_then(|()| std::fs::create_dir(&root))
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let file = || {
        tempfile::tempfile_in(&dir)
            .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))
    };
    Ok((dir.clone(), file()?, file()?))
}

/// A backend that makes sandboxes ahead of need, of kinds `Kind` (the directory they are made
/// in first).
#[async_trait::async_trait]
pub(crate) trait MakesAhead: Clone + Send + Sync + 'static {
    /// What must match between an action and a sandbox, with the directory it is made in.
    type Kind: Eq + std::hash::Hash + Clone + Send + Sync + 'static;
    /// What the backend keeps of a sandbox.
    type Sandbox: Waiting + 'static;

    /// Its pool, if it makes sandboxes ahead.
    fn pool(&self) -> Option<&Pool<Self::Kind, Self::Sandbox>>;

    /// The directory sandboxes of `kind` are made in.
    fn dirs(kind: &Self::Kind) -> &Path;

    /// Starts a sandbox of `kind` in `dir` (made by [`make`]), writing to these output files.
    async fn start(
        &self,
        kind: &Self::Kind,
        dir: &Path,
        stdout: File,
        stderr: File,
    ) -> Result<Ready<Self::Sandbox>>;
}

/// Makes a sandbox of `kind`: its directory, then `backend`'s start in it; the directory goes
/// if that fails.
pub(crate) async fn make<B: MakesAhead>(backend: &B, kind: &B::Kind) -> Result<Ready<B::Sandbox>> {
    let dirs = B::dirs(kind).to_path_buf();
    let (dir, stdout, stderr) = crate::blocking::blocking(move || make_dir(&dirs)).await?;
    let made = backend.start(kind, &dir, stdout, stderr).await;
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

/// A ready sandbox of `kind` from `backend`'s pool (see [`Pool::take`]), and more made in the
/// background, each within [`PROMPT`], up to [`AHEAD`].
pub(crate) fn take_and_refill<B: MakesAhead>(backend: &B, kind: B::Kind) -> Option<PathBuf> {
    let pool = backend.pool()?;
    let taken = pool.take(&kind);
    for _ in 0..pool.wanted(&kind) {
        let (backend, kind) = (backend.clone(), kind.clone());
        tokio::spawn(async move {
            let made = match tokio::time::timeout(PROMPT, make(&backend, &kind)).await {
                Ok(made) => made,
                Err(_) => Err(Error::Unavailable("making a sandbox took too long".into())),
            };
            if let Err(e) = &made {
                tracing::warn!(error = %e, "could not make a sandbox ahead of need");
            }
            if let Some(pool) = backend.pool() {
                pool.made(&kind, made.ok());
            }
        });
    }
    taken
}

/// The first KiB of what a sandbox wrote to `file`, for a log line.
pub(crate) fn read_start(file: &File) -> String {
    use std::os::unix::fs::FileExt as _;
    let mut start = vec![0; 1024];
    let n = file.read_at(&mut start, 0).unwrap_or(0);
    String::from_utf8_lossy(&start[..n]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox that waits while its flag says so.
    #[derive(Debug)]
    struct Fake(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Waiting for Fake {
        fn waits(&mut self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn fake(dirs: &Path, alive: bool) -> Ready<Fake> {
        let (dir, stdout, stderr) = make_dir(dirs).unwrap();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(alive));
        Ready {
            dir,
            stdout,
            stderr,
            sandbox: Fake(flag),
        }
    }

    #[test]
    fn the_pool_hands_out_live_sandboxes_and_keeps_nothing_of_kinds_not_in_use() {
        let dirs = tempfile::tempdir().unwrap();
        let pool: Pool<&str, Fake> = Pool::default();
        // Nothing yet: none handed out, AHEAD wanted, and no more while those are being made.
        assert_eq!(pool.take(&"a"), None);
        assert_eq!(pool.wanted(&"a"), AHEAD);
        assert_eq!(pool.wanted(&"a"), 0);
        let made = fake(dirs.path(), true);
        let root = made.root();
        pool.made(&"a", Some(made));
        let dir = pool.take(&"a").unwrap();
        assert_eq!(dir.join("root"), root);
        assert!(pool.handed(&root).is_some(), "handed out once");
        assert!(pool.handed(&root).is_none(), "and only once");
        // A dead one is dropped with its directory, and none is handed out.
        let dead = fake(dirs.path(), false);
        let dead_dir = dead.dir.clone();
        pool.made(&"a", Some(dead));
        assert_eq!(pool.take(&"a"), None);
        assert!(!dead_dir.exists());
        // A third kind asked for drops the ready ones of the kind asked for least recently.
        let old = fake(dirs.path(), true);
        let old_dir = old.dir.clone();
        pool.made(&"a", Some(old));
        assert_eq!(pool.take(&"b"), None);
        assert_eq!(pool.take(&"c"), None);
        assert!(
            !old_dir.exists(),
            "a kind no longer asked for keeps nothing"
        );
        // One made for a kind no longer asked for is dropped at once.
        let late = fake(dirs.path(), true);
        let late_dir = late.dir.clone();
        pool.made(&"a", Some(late));
        assert!(!late_dir.exists());
        // A kind that could not be made is not tried again for a while.
        pool.made(&"c", None);
        assert_eq!(pool.wanted(&"c"), 0);
        // A handed-out sandbox whose directory is gone (its lease never ran it) goes at the
        // next request.
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (dir, stdout, stderr) = make_dir(dirs.path()).unwrap();
        let kept = Ready {
            dir,
            stdout,
            stderr,
            sandbox: Fake(std::sync::Arc::clone(&flag)),
        };
        let kept_root = kept.root();
        pool.made(&"b", Some(kept));
        let handed = pool.take(&"b").unwrap();
        std::fs::remove_dir_all(&handed).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&flag), 2);
        pool.take(&"b");
        assert_eq!(std::sync::Arc::strong_count(&flag), 1, "dropped");
        assert!(pool.handed(&kept_root).is_none());
    }

    #[test]
    fn after_eight_dead_in_a_row_none_are_made() {
        let dirs = tempfile::tempdir().unwrap();
        let pool: Pool<&str, Fake> = Pool::default();
        for _ in 0..DEAD_LIMIT {
            assert_eq!(pool.take(&"a"), None);
            pool.made(&"a", Some(fake(dirs.path(), false)));
        }
        assert_eq!(pool.take(&"a"), None);
        assert_eq!(pool.wanted(&"a"), 0);
    }

    #[test]
    fn sandbox_directories_are_unguessable_and_closed_until_handed_over() {
        use std::os::unix::fs::PermissionsExt as _;
        let dirs = tempfile::tempdir().unwrap();
        let (a, _, _) = make_dir(dirs.path()).unwrap();
        let (b, _, _) = make_dir(dirs.path()).unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("ahead-") && name.len() > "ahead-".len() + 4,
            "{name}"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a), 0o711, "searchable, not listable");
        let root = std::fs::metadata(a.join("root")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(root.uid(), nix::unistd::geteuid().as_raw(), "the worker's");
        assert_eq!(
            mode(&a.join("root")) & 0o022,
            0,
            "writable by the worker alone"
        );
    }
}
