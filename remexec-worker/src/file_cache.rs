//! [`FileCache`]: input files fetched from the CAS once and hardlinked into action directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use futures::StreamExt;
use remexec_core::lru::ByteLru;
use remexec_core::{BlobStore, Digest, Error, ReadRange, Result};

use crate::blocking::blocking;

/// A bounded directory of read-only files named by digest and executable bit.
///
/// Files are fetched from the CAS into a temporary file, hash-checked, made read-only, and
/// renamed into place; actions get hardlinks, so a file used by many actions is fetched and
/// stored once. Least recently used files are evicted beyond the byte budget (hardlinks already
/// made stay valid). Actions must not modify their inputs: the cache trusts that they do not.
///
/// Every file-system call but [`FileCache::open`]'s runs on tokio's blocking pool.
#[derive(Debug)]
pub struct FileCache {
    dir: PathBuf,
    /// The cached files, by `(digest, executable)`, costing their size.
    index: Mutex<ByteLru<(Digest, bool), ()>>,
}

impl FileCache {
    /// A cache in `dir` holding at most `budget` bytes. Whatever `dir` held is removed first,
    /// even trees an action made unwritable; what cannot be removed is moved aside (with a
    /// warning), so that leftovers never prevent a start. Blocks.
    pub fn open(dir: &Path, budget: u64) -> Result<Arc<Self>> {
        if let Some(aside) = remexec_core::fs::reset_dir(dir)? {
            tracing::warn!(
                dir = %dir.display(),
                moved_to = %aside.display(),
                "could not remove the old file cache; moved it aside"
            );
        }
        std::fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            index: Mutex::new(ByteLru::new(budget)),
        }))
    }

    /// Bytes held, budget and bytes evicted.
    pub(crate) fn usage(&self) -> remexec_core::metrics::StoreUsage {
        self.index.lock().usage()
    }

    /// Where the cached file for `digest` lives (whether or not it is cached now).
    pub(crate) fn path(&self, digest: &Digest, executable: bool) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{}-{}",
            digest.function(),
            digest.hash_hex(),
            digest.size(),
            if executable { "x" } else { "r" }
        ))
    }

    /// Whether the file is cached; marks it recently used.
    pub(crate) fn contains(&self, digest: Digest, executable: bool) -> bool {
        self.index.lock().touch(&(digest, executable))
    }

    /// Forgets a cached file that turned out to be gone.
    fn forget(&self, digest: Digest, executable: bool) {
        self.index.lock().remove(&(digest, executable));
    }

    /// Makes `dest` a hardlink to the cached file for `digest`, fetching it first if needed.
    pub async fn link(
        &self,
        cas: &dyn BlobStore,
        instance: &str,
        digest: Digest,
        executable: bool,
        dest: &Path,
    ) -> Result<()> {
        for _ in 0..3 {
            if !self.contains(digest, executable) {
                self.fetch(cas, instance, digest, executable).await?;
            }
            let (cached, dest) = (self.path(&digest, executable), dest.to_path_buf());
            if blocking(move || remexec_core::fs::link_or_copy(&cached, &dest)).await? {
                return Ok(());
            }
            // Evicted between the lookup and the link: fetch again.
            self.forget(digest, executable);
        }
        Err(Error::Internal(
            format!("input {digest} kept disappearing from the file cache").into(),
        ))
    }

    /// Fetches the blob into the cache (whether or not it is there already).
    pub(crate) async fn fetch(
        &self,
        cas: &dyn BlobStore,
        instance: &str,
        digest: Digest,
        executable: bool,
    ) -> Result<()> {
        let mut stream = cas
            .get(instance, digest, ReadRange::ALL)
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("input blob {digest} is not in the CAS").into())
            })?;
        let tmp = self.dir.join("tmp");
        let temp = blocking(move || {
            tempfile::Builder::new()
                .tempfile_in(tmp)
                .map_err(|e| Error::io("creating a cache file", e))
        })
        .await?;
        // Hashing and writing happen on the blocking pool, one chunk per call.
        let mut state = (temp, digest.function().hasher());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            state = blocking(move || {
                use std::io::Write;
                let (mut temp, mut hasher) = state;
                hasher.update(&chunk);
                temp.write_all(&chunk)
                    .map_err(|e| Error::io("writing a cache file", e))?;
                Ok((temp, hasher))
            })
            .await?;
        }
        let (temp, hasher) = state;
        if hasher.finish() != digest {
            return Err(Error::Internal(
                format!("CAS returned wrong content for {digest}").into(),
            ));
        }
        let dest = self.path(&digest, executable);
        blocking(move || {
            let mode = if executable { 0o555 } else { 0o444 };
            std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("setting permissions", e))?;
            temp.persist(dest)
                .map_err(|e| Error::io("renaming a cache file", e.error))?;
            Ok(())
        })
        .await?;
        let evicted = self.insert(digest, executable);
        if !evicted.is_empty() {
            blocking(move || {
                for path in evicted {
                    let _ = std::fs::remove_file(path);
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Records a fetched file; returns the paths of the files evicted to stay in budget.
    fn insert(&self, digest: Digest, executable: bool) -> Vec<PathBuf> {
        let key = (digest, executable);
        self.index
            .lock()
            .insert(key, digest.size(), ())
            .into_iter()
            .filter(|(k, ())| *k != key)
            .map(|((d, x), ())| self.path(&d, x))
            .collect()
    }
}
