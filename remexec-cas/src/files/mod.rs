//! [`FileTable`]: files on disk keyed by [`Key`], written atomically, evicted LRU by bytes, and
//! re-indexed from disk at start. The disk blob store and the disk action cache build on it.
//!
//! Layout: `{root}/{namespace as 32 hex}/{function}/{first 2 hex}/{hash}-{size}`, plus
//! `{root}/tmp/` for uploads in progress, which is emptied at start. A namespace's directory
//! may hold `instance`, the instance name it hashes, for callers that list what is stored
//! ([`FileTable::keys`], [`FileTable::instance`]).
//!
//! A file's times record its entry's history, so that a restart keeps it: the mtime is its last
//! use, the atime its last reference (the epoch if never referenced; see
//! [`FileTable::with_index`]). The table's own reads open files with `O_NOATIME`, so only it
//! sets them.
//!
//! Entries of at most [`TableOptions::pack_up_to`] bytes are packed into segment files instead
//! (see [`segments`]): one `fdatasync` then makes many writers' entries durable, and the
//! table's inodes no longer grow with its entry count.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use futures::StreamExt;
use remexec_core::{ChunkStream, Digest, Error, Result};

use crate::key::Key;
use packing::compact_loop;
use remexec_core::lru::ByteLru;
use scan::{Found, read_names, scan, write_burst};
use segments::{Segments, Slot};

mod packing;
mod scan;
pub(crate) mod segments;
#[cfg(test)]
mod tests;

/// Checks a re-indexed file: given its key and length, keep it?
pub(crate) type Check = fn(&Key, u64) -> bool;

/// An entry's last use and last reference as its file's times record them (seconds since the
/// epoch): the mtime orders the index rebuilt after a restart, the atime renews its keep.
#[derive(Debug, Clone, Copy)]
struct Times {
    used: u64,
    referenced: u64,
    /// Where a packed entry's record is; `None` for an entry in a file of its own.
    place: Option<Slot>,
}

/// How a [`FileTable`] is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableOptions {
    /// Most bytes held; least recently used entries not kept are evicted beyond it.
    pub(crate) budget: u64,
    /// fsync each file and its directory before acknowledging it.
    pub(crate) sync: bool,
    /// How long a referenced entry is kept after its last reference, in seconds (0: never).
    pub(crate) keep_secs: u64,
    /// Entries of at most this many bytes, when their length is known before they are
    /// written, are packed into segments (0: none).
    pub(crate) pack_up_to: u64,
}

#[derive(Debug)]
pub(crate) struct FileTable {
    root: PathBuf,
    tmp: PathBuf,
    sync: bool,
    keep_secs: u64,
    /// The budget as opened; the index's is this less what [`reserve`](Self::reserve) set
    /// aside and the segments' overhead ([`Segments::overhead`]).
    total: u64,
    /// What [`reserve`](Self::reserve) set aside.
    beside: std::sync::atomic::AtomicU64,
    index: Mutex<ByteLru<Key, Times>>,
    /// Writes refused because kept entries fill the budget.
    refused: std::sync::atomic::AtomicU64,
    /// Instance names by namespace, as remembered in `instance` files.
    names: Mutex<std::collections::HashMap<u128, String>>,
    /// Files whose times should record a use now (and a reference, if `true`), for the thread
    /// that sets them.
    uses: std::sync::mpsc::SyncSender<Use>,
    /// Entries added and removed, for followers ([`FileTable::changes`]).
    changes: tokio::sync::broadcast::Sender<remexec_core::BlobChange>,
    /// The packed entries' segments, if entries are packed.
    segments: Option<Arc<Segments>>,
    pack_up_to: u64,
}

/// A use to record: in a file's times, or in the use journal for a packed entry.
enum Use {
    File(PathBuf, bool),
    Packed(Key, bool),
}

/// Changes a follower may fall behind by before it must start again.
const CHANGE_QUEUE: usize = 1 << 16;

/// Uses waiting to be recorded in files' mtimes, at most; more are dropped (a use lost costs
/// only precision in the order rebuilt after a restart).
const USE_QUEUE: usize = 4096;

/// Starts the thread that sets the mtime of each file sent to it (and its atime, for a
/// reference) to the time it gets it, until every sender is gone.
fn use_recorder(journal: Option<PathBuf>) -> Result<std::sync::mpsc::SyncSender<Use>> {
    let (uses, queue) = std::sync::mpsc::sync_channel::<Use>(USE_QUEUE);
    std::thread::Builder::new()
        .name("remexec-uses".into())
        .spawn(move || record_loop(&queue, journal))
        .map_err(|e| Error::io("starting the thread that records uses", e))?;
    Ok(uses)
}

fn record_loop(queue: &std::sync::mpsc::Receiver<Use>, journal: Option<PathBuf>) {
    let mut out = journal.and_then(|path| {
        segments::UseJournal::open(path.clone())
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot open the use journal; uses of packed entries are not recorded"))
            .ok()
    });
    let mut next: std::result::Result<Use, std::sync::mpsc::RecvError> = queue.recv();
    while let Ok(usage) = next {
        let now = SystemTime::now();
        match usage {
            // A file gone meanwhile is no matter: its next use or the next rebuild notices.
            Use::File(path, referenced) => {
                if let Ok(file) = open_quietly(&path) {
                    let mut times = std::fs::FileTimes::new().set_modified(now);
                    if referenced {
                        times = times.set_accessed(now);
                    }
                    let _ = file.set_times(times);
                }
            }
            Use::Packed(key, referenced) => {
                if let Some(out) = &mut out {
                    out.record(&key, unix_secs(now), referenced);
                }
            }
        }
        // Written out whenever the queue is empty: a use lost to a crash costs only precision.
        next = queue.try_recv().or_else(|_| {
            if let Some(out) = &mut out {
                out.flush();
            }
            queue.recv()
        });
    }
}

/// How often a used file's mtime is brought up to date, at most: the precision of the order
/// the index is rebuilt in after a restart, at one syscall per file per this many seconds.
pub(crate) const USE_RESOLUTION_SECS: u64 = 60;

/// Seconds since the epoch.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens a file to read without the kernel recording the access in its atime (which records
/// references here); falls back to a plain open where `O_NOATIME` is not allowed.
fn open_quietly(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
}

/// Marks `key` used in `index` (and, with `keep_secs`, kept that long from `now`); where its
/// recorded use (or reference) is older than [`USE_RESOLUTION_SECS`], records now and queues
/// it in `stale` (with whether it is packed) to be recorded. Returns its place if present.
fn note_use(
    index: &mut ByteLru<Key, Times>,
    key: &Key,
    now: u64,
    keep_secs: Option<u64>,
    stale: &mut Vec<(Key, bool, bool)>,
) -> Option<Option<Slot>> {
    let times = index.get_mut(key)?;
    let place = times.place;
    let used = now.saturating_sub(times.used) >= USE_RESOLUTION_SECS;
    let referenced =
        keep_secs.is_some() && now.saturating_sub(times.referenced) >= USE_RESOLUTION_SECS;
    if used || referenced {
        times.used = now;
        if referenced {
            times.referenced = now;
        }
        stale.push((*key, referenced, place.is_some()));
    }
    if let Some(secs) = keep_secs {
        index.keep(key, keep_until(now, secs));
    }
    Some(place)
}

/// The end of a keep of `secs` from `now`, rounded up to [`USE_RESOLUTION_SECS`] so that
/// references within the same span extend it once.
fn keep_until(now: u64, secs: u64) -> u64 {
    (now + secs).div_ceil(USE_RESOLUTION_SECS) * USE_RESOLUTION_SECS
}

/// The file in a namespace's directory that holds its instance name.
const INSTANCE_FILE: &str = "instance";

use remexec_core::fs::blocking;

/// The index of the entries `found` at start: in their order of use, with the keeps still
/// running, not yet evicted to `budget`. A file that a packed copy of the same entry replaces
/// is deleted.
fn rebuild(root: &Path, found: &mut [Found], budget: u64, keep_secs: u64) -> ByteLru<Key, Times> {
    // Least recently used first: a file's mtime is its last use (see `touch`).
    found.sort_by_key(|f| f.used);
    let mut index = ByteLru::new(budget);
    for f in found.iter() {
        let times = Times {
            used: unix_secs(f.used),
            referenced: unix_secs(f.referenced),
            place: f.place,
        };
        let replaced = index.insert_unbounded(f.key, f.len, times);
        if replaced.is_some_and(|old| old.place.is_none()) && f.place.is_some() {
            let _ = std::fs::remove_file(file_path(root, &f.key));
        }
    }
    // Keeps in the order they end; the epoch (never referenced) keeps nothing. A reference is
    // recorded at most once every USE_RESOLUTION_SECS, so it may be that much later than it
    // says.
    let now = unix_secs(SystemTime::now());
    found.sort_by_key(|f| f.referenced);
    for f in found.iter() {
        let referenced = unix_secs(f.referenced);
        let until = keep_until(referenced + USE_RESOLUTION_SECS, keep_secs);
        if keep_secs > 0 && referenced > 0 && until > now {
            index.keep(&f.key, until);
        }
    }
    index
}

/// The file of an entry that is not packed.
fn file_path(root: &Path, key: &Key) -> PathBuf {
    let hex = key.digest.hash_hex();
    root.join(format!("{:032x}", key.ns))
        .join(key.digest.function().name())
        .join(&hex[..2])
        .join(format!("{hex}-{}", key.digest.size()))
}

impl FileTable {
    /// Opens (creating if needed) the table at `root` and rebuilds its index from disk: the
    /// order of use from the files' mtimes and the use journal, the keeps still running from
    /// the files' atimes and the journal.
    pub(crate) async fn open(
        root: &Path,
        options: TableOptions,
        check: Check,
    ) -> Result<Arc<Self>> {
        let root = root.to_path_buf();
        let (table, compactions) =
            blocking(move || Self::open_blocking(root, options, check)).await?;
        let weak = Arc::downgrade(&table);
        tokio::spawn(compact_loop(weak, compactions));
        Ok(table)
    }

    fn open_blocking(
        root: PathBuf,
        options: TableOptions,
        check: Check,
    ) -> Result<(Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<u32>)> {
        let TableOptions {
            budget,
            sync,
            keep_secs,
            pack_up_to,
        } = options;
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
        // Packed entries are read back even when no more are packed.
        let mut journal = std::collections::HashMap::new();
        let (compactions, queue) = tokio::sync::mpsc::unbounded_channel();
        let segments = if pack_up_to > 0 || root.join(segments::DIR).exists() {
            // A sixteenth of the budget, so that dead records waiting for compaction are a
            // small part of it (a record larger than that has a segment of its own).
            let max_segment = (budget / 16).min(segments::MAX_SEGMENT);
            let (segments, records) = Segments::open(&root, sync, max_segment, compactions)?;
            journal = segments::read_uses(&root);
            scan::packed(records, &journal, check, &mut found);
            Some(segments)
        } else {
            None
        };
        let index = rebuild(&root, &mut found, budget, keep_secs);
        if let Some(segments) = &segments {
            for (_, times) in index.iter() {
                if let Some(slot) = times.place {
                    segments.alive(slot);
                }
            }
            // The journal keeps only what it says of entries still packed.
            let uses: Vec<_> = journal
                .keys()
                .filter_map(|k| Some((*k, index.peek(k).filter(|t| t.place.is_some())?)))
                .map(|(k, t)| (k, t.used, t.referenced))
                .collect();
            segments::rewrite_uses(&root, &uses)?;
        }
        let names = Mutex::new(read_names(&root));
        let uses = use_recorder(segments.as_ref().map(|_| Segments::uses_path(&root)))?;
        let table = Self {
            root,
            tmp,
            sync,
            keep_secs,
            total: budget,
            beside: Default::default(),
            index: Mutex::new(ByteLru::new(budget)),
            refused: Default::default(),
            names,
            uses,
            changes: tokio::sync::broadcast::channel(CHANGE_QUEUE).0,
            segments,
            pack_up_to,
        };
        let mut index = index;
        for (key, times) in index.evict_to_budget() {
            table.forget(&key, &times);
        }
        table.fit_budget(&mut index);
        if let Some(segments) = &table.segments {
            segments.queue_due();
        }
        let (segments, segment_bytes) = table.segments.as_ref().map_or((0, 0), |s| s.footprint());
        tracing::info!(root = %table.root.display(), entries = index.len(), bytes = index.bytes(), kept_bytes = index.kept_bytes(), segments, segment_bytes, "disk index rebuilt");
        *table.index.lock() = index;
        Ok((Arc::new(table), queue))
    }

    pub(crate) fn path(&self, key: &Key) -> PathBuf {
        file_path(&self.root, key)
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

    /// Every entry added or removed from now on (see [`remexec_core::ListBlobs::changes`]);
    /// entries of namespaces whose instance name is not known are left out.
    pub(crate) fn changes(&self) -> tokio::sync::broadcast::Receiver<remexec_core::BlobChange> {
        self.changes.subscribe()
    }

    /// Tells followers, if any, that `key` was added or removed.
    fn publish(&self, key: &Key, present: bool) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        if let Some(instance) = self.instance(key.ns) {
            let digest = key.digest;
            let _ = self.changes.send(remexec_core::BlobChange {
                instance,
                digest,
                present,
            });
        }
    }

    /// Tells followers that `key` is gone and frees what held it (`times` were its index's).
    fn forget(&self, key: &Key, times: &Times) {
        self.publish(key, false);
        self.free(key, times.place);
    }

    /// Deletes the file of `key` (at `place` None), or counts its record at `place` dead.
    fn free(&self, key: &Key, place: Option<Slot>) {
        match (place, &self.segments) {
            (Some(slot), Some(segments)) => segments.dead(slot),
            (Some(_), None) => {}
            (None, _) => {
                let path = self.path(key);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete evicted file");
                }
            }
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.index.lock().budget()
    }

    /// Bytes held, budget, bytes evicted and kept, and writes refused.
    pub(crate) fn store_usage(&self) -> remexec_core::metrics::StoreUsage {
        let mut index = self.index.lock();
        index.release(unix_secs(SystemTime::now()));
        remexec_core::metrics::StoreUsage {
            refused_writes: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            ..index.usage()
        }
    }

    /// Sets `bytes` of the budget aside for files kept beside the table, evicting (never kept
    /// entries) to fit what is left.
    pub(crate) fn reserve(&self, bytes: u64) {
        self.beside
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        let mut index = self.index.lock();
        self.fit_budget(&mut index);
    }

    /// Sets the index's budget to the table's, less what is set aside beside it and the
    /// segments' overhead, evicting (never kept entries) to fit.
    fn fit_budget(&self, index: &mut ByteLru<Key, Times>) {
        let overhead = self.segments.as_ref().map_or(0, |s| s.overhead());
        let beside = self.beside.load(std::sync::atomic::Ordering::Relaxed);
        let budget = self.total.saturating_sub(beside.saturating_add(overhead));
        if budget != index.budget() {
            for (key, times) in index.set_budget(budget) {
                self.forget(&key, &times);
            }
        }
    }

    /// Whether `key` is held and kept now.
    pub(crate) fn kept(&self, key: &Key) -> bool {
        let now = unix_secs(SystemTime::now());
        self.index
            .lock()
            .kept_until(key)
            .is_some_and(|until| until > now)
    }

    /// `Ok` if a file of `len` bytes under `key` fits once every entry not kept is evicted;
    /// else counts a refused write and says why, as `ResourceExhausted`.
    pub(crate) fn check_room(&self, key: &Key, len: u64) -> Result<()> {
        let mut index = self.index.lock();
        self.check_room_locked(&mut index, key, len)
    }

    fn check_room_locked(
        &self,
        index: &mut ByteLru<Key, Times>,
        key: &Key,
        len: u64,
    ) -> Result<()> {
        index.release(unix_secs(SystemTime::now()));
        if index.fits(key, len) {
            return Ok(());
        }
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(Error::ResourceExhausted(
            format!(
                "no room for blob {}: referenced blobs fill the store ({} of its {} budget), and a referenced blob is kept {} s after its last reference; raise the budget or lower keep_referenced_secs",
                key.digest,
                crate::size(index.kept_bytes()),
                crate::size(index.budget()),
                self.keep_secs,
            )
            .into(),
        ))
    }

    /// Bytes and entries indexed now.
    pub(crate) fn usage(&self) -> (u64, usize) {
        let index = self.index.lock();
        (index.bytes(), index.len())
    }

    /// Whether the key is present; marks it as recently used, in the index and, at most once
    /// every [`USE_RESOLUTION_SECS`], in its file's mtime, so that the order survives a restart.
    pub(crate) fn touch(&self, key: &Key) -> bool {
        self.touch_place(key).is_some()
    }

    /// [`touch`](Self::touch), returning the place of a present entry.
    fn touch_place(&self, key: &Key) -> Option<Option<Slot>> {
        let mut stale = Vec::new();
        let now = unix_secs(SystemTime::now());
        let place = note_use(&mut self.index.lock(), key, now, None, &mut stale);
        self.record_uses(stale);
        place
    }

    /// Runs `f` with the index locked, for batch lookups: each one a [`touch`](Self::touch),
    /// and with `reference`, a reference too: the entry is kept from eviction for the table's
    /// keep time from now, recorded in its file's atime (at most once every
    /// [`USE_RESOLUTION_SECS`]) so that the keep survives a restart.
    pub(crate) fn with_index<T>(
        &self,
        reference: bool,
        f: impl FnOnce(&mut dyn FnMut(&Key) -> bool) -> T,
    ) -> T {
        let mut stale = Vec::new();
        let now = unix_secs(SystemTime::now());
        let keep = (reference && self.keep_secs > 0).then_some(self.keep_secs);
        let out = {
            let mut index = self.index.lock();
            index.release(now);
            f(&mut |k| note_use(&mut index, k, now, keep, &mut stale).is_some())
        };
        self.record_uses(stale);
        out
    }

    /// Has the times of the files of `keys` set to now, by the recorder thread (never by the
    /// caller's); uses beyond a full queue are dropped (a reference among them is then lost
    /// only to a restart within the keep time).
    fn record_uses(&self, keys: Vec<(Key, bool, bool)>) {
        let mut dropped = Vec::new();
        for (key, referenced, packed) in keys {
            let usage = if packed {
                Use::Packed(key, referenced)
            } else {
                Use::File(self.path(&key), referenced)
            };
            if self.uses.try_send(usage).is_err() {
                dropped.push(key);
            }
        }
        // Not recorded: the next use or reference tries again.
        if !dropped.is_empty() {
            let mut index = self.index.lock();
            for key in dropped {
                if let Some(times) = index.get_mut(&key) {
                    times.used = 0;
                    times.referenced = 0;
                }
            }
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
        if let (Some(segments), Some(len)) = (&self.segments, expected_len)
            && len <= self.pack_up_to
        {
            return self.write_packed(segments, key, data, len).await;
        }
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
            // Never referenced yet: the atime records references (see the module docs).
            temp.as_file()
                .set_times(std::fs::FileTimes::new().set_accessed(SystemTime::UNIX_EPOCH))
                .map_err(|e| Error::io("setting an upload's times", e))?;
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
            self.check_room_locked(&mut index, &key, len)?;
            // A file replacing one already referenced (a second upload of the same blob) takes
            // over the reference its atime records.
            let referenced = index.get(&key).map_or(0, |t| t.referenced);
            if referenced > 0 {
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(referenced);
                temp.as_file()
                    .set_times(std::fs::FileTimes::new().set_accessed(at))
                    .map_err(|e| Error::io("setting an upload's times", e))?;
            }
            temp.persist(&path)
                .map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))?;
            let now = unix_secs(SystemTime::now());
            let times = Times {
                used: now,
                referenced,
                place: None,
            };
            self.publish(&key, true);
            self.replaced(&key, None, index.insert(key, len, times));
        }
        if self.sync {
            sync_dir(&parent)?;
        }
        Ok(())
    }

    /// Frees what the entries `removed` from the index held, as `key`, now at `place`,
    /// replaced or evicted them: an entry replaced by `key` at another place (a file replaced
    /// by renaming is at the same), an evicted one whole.
    fn replaced(&self, key: &Key, place: Option<Slot>, removed: Vec<(Key, Times)>) {
        for (gone, times) in removed {
            if gone != *key {
                self.forget(&gone, &times);
            } else if times.place != place && (times.place.is_some() || place.is_some()) {
                self.free(&gone, times.place);
            }
        }
    }

    /// Forgets and deletes a damaged entry in a file of its own (if it was packed since, the
    /// record is left alone).
    pub(crate) fn discard(&self, key: &Key) {
        let mut index = self.index.lock();
        if index.peek(key).is_some_and(|t| t.place.is_some()) {
            return;
        }
        index.remove(key);
        self.publish(key, false);
        self.free(key, None);
    }

    /// Opens `key`'s entry, if present (a file with length accepted by `check`).
    pub(crate) async fn open_read(&self, key: &Key, check: Check) -> Result<Option<Opened>> {
        // An entry moved between the lookup and the read (its record compacted, its file
        // replaced by a record) is looked up again.
        let mut last = None;
        for _ in 0..3 {
            let found = match self.touch_place(key) {
                None => return Ok(None),
                Some(None) => self.open_file(key, check).await?,
                // Its segment gone twice at the same place: not moved, lost.
                Some(Some(slot)) if last == Some(slot) => {
                    self.drop_damaged(key, slot);
                    return Ok(None);
                }
                Some(Some(slot)) => {
                    last = Some(slot);
                    self.read_packed(key, slot).await?
                }
            };
            if let Some(found) = found {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Opens the file for `key`, if present with length accepted by `check`; `None` if the
    /// entry was packed meanwhile (look it up again).
    async fn open_file(&self, key: &Key, check: Check) -> Result<Option<Option<Opened>>> {
        let path = self.path(key);
        let opened = blocking({
            let path = path.clone();
            move || Ok(open_quietly(&path))
        })
        .await?;
        let file = match opened {
            Ok(f) => tokio::fs::File::from_std(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Gone for good only if the entry is still a file (not packed since).
                let mut index = self.index.lock();
                if index.peek(key).is_some_and(|t| t.place.is_some()) {
                    return Ok(None);
                }
                if index.remove(key).is_some() {
                    self.publish(key, false);
                }
                return Ok(Some(None));
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
            self.discard(key);
            return Ok(Some(None));
        }
        Ok(Some(Some(Opened::File(file, len))))
    }
}

/// An entry opened to be read.
pub(crate) enum Opened {
    /// An entry in a file of its own, and its length.
    File(tokio::fs::File, u64),
    /// A packed entry's content.
    Packed(bytes::Bytes),
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
