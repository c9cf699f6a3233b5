//! [`FileTable`]: files on disk keyed by [`Key`], written atomically, evicted LRU by bytes, and
//! re-indexed from disk at start. The disk blob store and the disk action cache build on it.
//!
//! Layout: `{root}/{namespace as 32 hex}/{function}/{first 2 hex}/{hash}-{size}`, plus
//! `{root}/tmp/` for uploads in progress, which is emptied at start. A namespace's directory
//! may hold `instance`, the instance name it hashes, for callers that list what is stored
//! ([`FileTable::keys`], [`FileTable::instance`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use futures::StreamExt;
use remexec_core::{ChunkStream, Digest, DigestFunction, Error, Result};

use crate::key::Key;
use remexec_core::lru::ByteLru;

/// Checks a re-indexed file: given its key and length, keep it?
pub(crate) type Check = fn(&Key, u64) -> bool;

#[derive(Debug)]
pub(crate) struct FileTable {
    root: PathBuf,
    tmp: PathBuf,
    sync: bool,
    /// Each entry's last use as its file's mtime records it (seconds since the epoch): the
    /// order the index is rebuilt in after a restart.
    index: Mutex<ByteLru<Key, u64>>,
    /// Instance names by namespace, as remembered in `instance` files.
    names: Mutex<std::collections::HashMap<u128, String>>,
    /// Files whose mtime should record a use now, for the thread that sets them.
    uses: std::sync::mpsc::SyncSender<PathBuf>,
}

/// Uses waiting to be recorded in files' mtimes, at most; more are dropped (a use lost costs
/// only precision in the order rebuilt after a restart).
const USE_QUEUE: usize = 4096;

/// Starts the thread that sets the mtime of each file sent to it to the time it gets it,
/// until every sender is gone.
fn use_recorder() -> Result<std::sync::mpsc::SyncSender<PathBuf>> {
    let (uses, paths) = std::sync::mpsc::sync_channel::<PathBuf>(USE_QUEUE);
    std::thread::Builder::new()
        .name("remexec-uses".into())
        .spawn(move || {
            for path in paths {
                // A file gone meanwhile is no matter: its next use or the next rebuild notices.
                if let Ok(file) = std::fs::File::open(&path) {
                    let _ =
                        file.set_times(std::fs::FileTimes::new().set_modified(SystemTime::now()));
                }
            }
        })
        .map_err(|e| Error::io("starting the thread that records uses", e))?;
    Ok(uses)
}

/// How often a used file's mtime is brought up to date, at most: the precision of the order
/// the index is rebuilt in after a restart, at one syscall per file per this many seconds.
pub(crate) const USE_RESOLUTION_SECS: u64 = 60;

/// Seconds since the epoch.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Marks `key` used in `index`; if its file's recorded use is older than
/// [`USE_RESOLUTION_SECS`], records now and queues the file in `stale` for its mtime.
fn note_use(index: &mut ByteLru<Key, u64>, key: &Key, stale: &mut Vec<Key>) -> bool {
    let Some(used) = index.get_mut(key) else {
        return false;
    };
    let now = unix_secs(SystemTime::now());
    if now.saturating_sub(*used) >= USE_RESOLUTION_SECS {
        *used = now;
        stale.push(*key);
    }
    true
}

/// The file in a namespace's directory that holds its instance name.
const INSTANCE_FILE: &str = "instance";

use remexec_core::fs::blocking;

impl FileTable {
    /// Opens (creating if needed) the table at `root` and rebuilds its index from disk.
    pub(crate) async fn open(
        root: &Path,
        budget: u64,
        sync: bool,
        check: Check,
    ) -> Result<Arc<Self>> {
        let root = root.to_path_buf();
        blocking(move || {
            let tmp = root.join("tmp");
            // Leftover uploads never prevent a start: what cannot be removed is moved aside.
            if let Some(aside) = remexec_core::fs::reset_dir(&tmp)? {
                tracing::warn!(tmp = %tmp.display(), moved_to = %aside.display(), "could not remove leftover uploads; moved them aside");
            }
            // Only this process's user may enter: actions run as another user must not reach
            // stored blobs.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("restricting {}", root.display()), e))?;
            let mut found = Vec::new();
            scan(&root, check, &mut found)?;
            // Least recently used first: a file's mtime is its last use (see `touch`).
            found.sort_by_key(|(mtime, _, _)| *mtime);
            let mut index = ByteLru::new(budget);
            for (mtime, key, len) in found {
                index.insert_unbounded(key, len, unix_secs(mtime));
            }
            let names = Mutex::new(read_names(&root));
            let uses = use_recorder()?;
            let table =
                Self { root, tmp, sync, index: Mutex::new(ByteLru::new(budget)), names, uses };
            for (key, _) in index.evict_to_budget() {
                table.remove_file(&key);
            }
            tracing::info!(root = %table.root.display(), entries = index.len(), bytes = index.bytes(), "disk index rebuilt");
            *table.index.lock() = index;
            Ok(Arc::new(table))
        })
        .await
    }

    pub(crate) fn path(&self, key: &Key) -> PathBuf {
        let hex = key.digest.hash_hex();
        self.root
            .join(format!("{:032x}", key.ns))
            .join(key.digest.function().name())
            .join(&hex[..2])
            .join(format!("{hex}-{}", key.digest.size()))
    }

    /// Remembers that namespace `ns` is instance `name`'s (written once, atomically, and not
    /// needed for reads: a lost file only hides the namespace from [`keys`](Self::keys)'
    /// callers).
    pub(crate) fn remember_instance(&self, ns: u128, name: &str) -> Result<()> {
        if ns == 0 || self.names.lock().contains_key(&ns) {
            return Ok(());
        }
        let dir = self.root.join(format!("{ns:032x}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(|e| Error::io("creating an instance file", e))?;
        std::io::Write::write_all(&mut temp, name.as_bytes())
            .map_err(|e| Error::io("writing an instance file", e))?;
        temp.persist(dir.join(INSTANCE_FILE))
            .map_err(|e| Error::io("renaming an instance file", e.error))?;
        self.names.lock().insert(ns, name.to_string());
        Ok(())
    }

    /// The instance name of namespace `ns`, if known (always for the empty name's).
    pub(crate) fn instance(&self, ns: u128) -> Option<String> {
        if ns == 0 {
            return Some(String::new());
        }
        self.names.lock().get(&ns).cloned()
    }

    /// Every key indexed now.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.index.lock().keys().copied().collect()
    }

    fn remove_file(&self, key: &Key) {
        let path = self.path(key);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not delete evicted file");
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.index.lock().budget()
    }

    /// Bytes held, budget and bytes evicted.
    pub(crate) fn store_usage(&self) -> remexec_core::metrics::StoreUsage {
        self.index.lock().usage()
    }

    /// Bytes and entries indexed now.
    pub(crate) fn usage(&self) -> (u64, usize) {
        let index = self.index.lock();
        (index.bytes(), index.len())
    }

    /// Whether the key is present; marks it as recently used, in the index and, at most once
    /// every [`USE_RESOLUTION_SECS`], in its file's mtime, so that the order survives a restart.
    pub(crate) fn touch(&self, key: &Key) -> bool {
        let mut stale = Vec::new();
        let present = note_use(&mut self.index.lock(), key, &mut stale);
        self.record_uses(stale);
        present
    }

    /// Runs `f` with the index locked, for batch lookups (each one a [`touch`](Self::touch)).
    pub(crate) fn with_index<T>(&self, f: impl FnOnce(&mut dyn FnMut(&Key) -> bool) -> T) -> T {
        let mut stale = Vec::new();
        let out = {
            let mut index = self.index.lock();
            f(&mut |k| note_use(&mut index, k, &mut stale))
        };
        self.record_uses(stale);
        out
    }

    /// Has the mtime of the files of `keys` set to now, by the recorder thread (never by the
    /// caller's); uses beyond a full queue are dropped.
    fn record_uses(&self, keys: Vec<Key>) {
        for key in keys {
            let _ = self.uses.try_send(self.path(&key));
        }
    }

    /// Writes `data` under `key`. With `expected_len`, a stream of another length fails with
    /// `InvalidArgument`. The file becomes visible only once complete (and fsynced if `sync`).
    pub(crate) async fn write(
        self: &Arc<Self>,
        key: Key,
        data: ChunkStream,
        expected_len: Option<u64>,
    ) -> Result<()> {
        // The runtime waits for each burst of chunks, so no blocking thread ever waits on the
        // network (a stalled upload holds a task and a file, not a thread). A blocking thread
        // then writes the chunk and drains every chunk already available (running whatever the
        // stream does, such as hashing), so disk writes overlap with receiving the next burst.
        let tmp = self.tmp.clone();
        let mut temp = blocking(move || {
            tempfile::Builder::new()
                .prefix("up-")
                .tempfile_in(&tmp)
                .map_err(|e| {
                    Error::io(format!("creating a temporary file in {}", tmp.display()), e)
                })
        })
        .await?;
        let mut written = 0u64;
        let digest = key.digest;
        let mut data = Some(data);
        while let Some(mut stream) = data.take() {
            let Some(first) = stream.next().await else {
                break;
            };
            let first = first?;
            let (t, s, w) = blocking(move || {
                let ended = write_burst(
                    &mut temp,
                    &mut stream,
                    first,
                    &mut written,
                    expected_len,
                    digest,
                )?;
                Ok((temp, (!ended).then_some(stream), written))
            })
            .await?;
            (temp, data, written) = (t, s, w);
        }
        if expected_len.is_some_and(|n| written != n) {
            return Err(size_mismatch(digest, written, true));
        }
        let table = Arc::clone(self);
        blocking(move || {
            if table.sync {
                temp.as_file()
                    .sync_all()
                    .map_err(|e| Error::io("syncing an upload", e))?;
            }
            table.commit(key, temp, written)
        })
        .await
    }

    /// Renames the finished temp file into place and indexes it, evicting as needed. Done under
    /// the index lock so that eviction and insertion of the same key cannot interleave.
    fn commit(&self, key: Key, temp: tempfile::NamedTempFile, len: u64) -> Result<()> {
        let path = self.path(&key);
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let new_dirs = !parent.exists();
        if new_dirs {
            std::fs::create_dir_all(&parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            if self.sync {
                // Make the new directory entries themselves durable, up to the root.
                for dir in parent
                    .ancestors()
                    .skip(1)
                    .take_while(|d| d.starts_with(&self.root))
                {
                    sync_dir(dir)?;
                }
            }
        }
        {
            let mut index = self.index.lock();
            temp.persist(&path)
                .map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))?;
            for (evicted, _) in index.insert(key, len, unix_secs(SystemTime::now())) {
                if evicted != key {
                    self.remove_file(&evicted);
                }
            }
        }
        if self.sync {
            sync_dir(&parent)?;
        }
        Ok(())
    }

    /// Forgets and deletes a damaged entry.
    pub(crate) fn discard(&self, key: &Key) {
        let mut index = self.index.lock();
        index.remove(key);
        self.remove_file(key);
    }

    /// Opens the file for `key`, if present with length accepted by `check`.
    pub(crate) async fn open_read(
        &self,
        key: &Key,
        check: Check,
    ) -> Result<Option<(tokio::fs::File, u64)>> {
        if !self.touch(key) {
            return Ok(None);
        }
        let path = self.path(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.index.lock().remove(key);
                return Ok(None);
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        if !check(key, len) {
            tracing::error!(path = %path.display(), len, "stored file has the wrong length; dropping it");
            self.index.lock().remove(key);
            self.remove_file(key);
            return Ok(None);
        }
        Ok(Some((file, len)))
    }
}

/// `{root}, {budget}`, for the stores' descriptions.
impl std::fmt::Display for FileTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}", self.root.display(), crate::size(self.budget()))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// The instance names in the namespaces' `instance` files under `root` (a file whose name does
/// not hash to its directory is ignored).
fn read_names(root: &Path) -> std::collections::HashMap<u128, String> {
    let mut names = std::collections::HashMap::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Some(ns) = entry
            .file_name()
            .to_str()
            .and_then(|n| u128::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        if let Ok(name) = std::fs::read_to_string(entry.path().join(INSTANCE_FILE))
            && crate::key::namespace(&name) == ns
        {
            names.insert(ns, name);
        }
    }
    names
}

/// Finds every well-named file under `root`, as `(mtime, key, len)`.
fn scan(root: &Path, check: Check, out: &mut Vec<(SystemTime, Key, u64)>) -> Result<()> {
    let read = |p: &Path| {
        std::fs::read_dir(p).map_err(|e| Error::io(format!("listing {}", p.display()), e))
    };
    // Below the root, anything that is not a readable directory is skipped, not fatal.
    let sub = |p: &Path| -> Vec<std::fs::DirEntry> {
        match std::fs::read_dir(p) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping unreadable entry in the store");
                Vec::new()
            }
        }
    };
    for ns_entry in read(root)?.flatten() {
        let Some(ns) = ns_entry
            .file_name()
            .to_str()
            .and_then(|n| u128::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        for fn_entry in sub(&ns_entry.path()) {
            let Some(function) = fn_entry
                .file_name()
                .to_str()
                .and_then(DigestFunction::from_name)
            else {
                continue;
            };
            for prefix in sub(&fn_entry.path()) {
                for file in sub(&prefix.path()) {
                    let name = file.file_name();
                    let parsed = name
                        .to_str()
                        .and_then(|n| n.split_once('-'))
                        .and_then(|(h, s)| Digest::from_hex(function, h, s.parse().ok()?).ok());
                    let (Some(digest), Ok(meta)) = (parsed, file.metadata()) else {
                        tracing::warn!(path = %file.path().display(), "ignoring unexpected file in the store");
                        continue;
                    };
                    let key = Key { ns, digest };
                    if !meta.is_file() || !check(&key, meta.len()) {
                        tracing::warn!(path = %file.path().display(), "removing damaged file from the store");
                        let _ = std::fs::remove_file(file.path());
                        continue;
                    }
                    out.push((
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        key,
                        meta.len(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Writes `first`, then every chunk of `data` that is ready without waiting, up to a burst of
/// 16 MiB. Returns whether the stream has ended. Runs on a blocking thread.
fn write_burst(
    temp: &mut tempfile::NamedTempFile,
    data: &mut ChunkStream,
    first: bytes::Bytes,
    written: &mut u64,
    expected_len: Option<u64>,
    digest: Digest,
) -> Result<bool> {
    use futures::FutureExt;
    use std::io::Write;
    const BURST: u64 = 16 << 20;
    let start = *written;
    let mut chunk = first;
    loop {
        *written += chunk.len() as u64;
        if expected_len.is_some_and(|n| *written > n) {
            return Err(size_mismatch(digest, *written, false));
        }
        temp.write_all(&chunk)
            .map_err(|e| Error::io(format!("writing {}", temp.path().display()), e))?;
        if *written - start >= BURST {
            return Ok(false);
        }
        chunk = match data.next().now_or_never() {
            Some(Some(chunk)) => chunk?,
            Some(None) => return Ok(true),
            None => return Ok(false),
        };
    }
}

/// Length mismatch error, shared so every backend words it the same way.
pub(crate) fn size_mismatch(digest: Digest, got: u64, finished: bool) -> Error {
    if finished {
        Error::invalid(format!(
            "blob {digest}: received {got} bytes, digest says {}",
            digest.size()
        ))
    } else {
        Error::invalid(format!(
            "blob {digest}: received more than the {} bytes the digest says",
            digest.size()
        ))
    }
}
