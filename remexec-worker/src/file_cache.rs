//! [`FileCache`]: input files fetched from the CAS once and hardlinked into action directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use futures::StreamExt;
use lru::LruCache;
use remexec_core::{BlobStore, Digest, Error, ReadRange, Result};
use tokio::io::AsyncWriteExt;

/// LRU of `(digest, executable)` to size, plus the total size.
type Index = (LruCache<(Digest, bool), u64>, u64);

/// A bounded directory of read-only files named by digest and executable bit.
///
/// Files are fetched from the CAS into a temporary file, made read-only, and renamed into
/// place; actions get hardlinks, so a file used by many actions is fetched and stored once.
/// Least recently used files are evicted beyond the byte budget (hardlinks already made stay
/// valid). Actions must not modify their inputs: the cache trusts that they do not.
#[derive(Debug)]
pub struct FileCache {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
}

impl FileCache {
    /// A cache in `dir` (emptied first) holding at most `budget` bytes.
    pub fn open(dir: &Path, budget: u64) -> Result<Arc<Self>> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| Error::io(format!("clearing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            budget,
            index: Mutex::new((LruCache::unbounded(), 0)),
        }))
    }

    fn path(&self, digest: &Digest, executable: bool) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{}-{}",
            digest.function(),
            digest.hash_hex(),
            digest.size(),
            if executable { "x" } else { "r" }
        ))
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
            let cached = self.path(&digest, executable);
            if self.index.lock().0.get(&(digest, executable)).is_none() {
                self.fetch(cas, instance, digest, executable).await?;
            }
            match std::fs::hard_link(&cached, dest) {
                Ok(()) => return Ok(()),
                // Evicted between the lookup and the link: fetch again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.index.lock().0.pop(&(digest, executable));
                }
                Err(_) => {
                    // Another file system or too many links: copy instead.
                    std::fs::copy(&cached, dest)
                        .map_err(|e| Error::io(format!("copying to {}", dest.display()), e))?;
                    return Ok(());
                }
            }
        }
        Err(Error::Internal(format!(
            "input {digest} kept disappearing from the file cache"
        )))
    }

    async fn fetch(
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
                Error::FailedPrecondition(format!("input blob {digest} is not in the CAS"))
            })?;
        let temp = tempfile::Builder::new()
            .tempfile_in(self.dir.join("tmp"))
            .map_err(|e| Error::io("creating a cache file", e))?;
        let mut file = tokio::fs::File::from_std(
            temp.as_file()
                .try_clone()
                .map_err(|e| Error::io("cloning a file handle", e))?,
        );
        let mut hasher = digest.function().hasher();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io("writing a cache file", e))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::io("writing a cache file", e))?;
        if hasher.finish() != digest {
            return Err(Error::Internal(format!(
                "CAS returned wrong content for {digest}"
            )));
        }
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting permissions", e))?;
        temp.persist(self.path(&digest, executable))
            .map_err(|e| Error::io("renaming a cache file", e.error))?;
        let evicted = {
            let mut index = self.index.lock();
            let (entries, bytes) = &mut *index;
            if entries.put((digest, executable), digest.size()).is_none() {
                *bytes += digest.size();
            }
            let mut evicted = Vec::new();
            while *bytes > self.budget && entries.len() > 1 {
                let Some(((d, x), size)) = entries.pop_lru() else {
                    break;
                };
                *bytes -= size;
                evicted.push(self.path(&d, x));
            }
            evicted
        };
        for path in evicted {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}
