//! Staging an input tree from the CAS into an action directory.
//!
//! The tree's distinct directories are fetched once ([`fetch_tree`]) and its layout is checked
//! against [`TreeLimits`] before anything is created. The layout is then laid out by core's
//! [`Materializer`] (depth first, every path of a shared directory, file-system work in batches
//! on tokio's blocking pool), with files hardlinked from the worker's [`FileCache`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use remexec_core::client::{FileSource, Materializer, Safety};
use remexec_core::merkle::{TreeLimits, fetch_tree};
use remexec_core::usage::Staging;
use remexec_core::{BlobStore, Digest, Error, Result};

use crate::file_cache::FileCache;

/// Blobs fetched into the file cache concurrently while staging.
const PARALLEL_FETCHES: usize = 32;

/// Files hardlinked from the file cache, fetched into it first when missing.
struct CachedFiles<'a> {
    cas: &'a dyn BlobStore,
    cache: &'a FileCache,
    instance: &'a str,
    /// Distinct files prepared, their bytes, those the cache held, and bytes fetched.
    files: AtomicU64,
    bytes: AtomicU64,
    hits: AtomicU64,
    fetched: AtomicU64,
}

#[async_trait::async_trait]
impl FileSource for CachedFiles<'_> {
    async fn prepare(&self, files: &[(Digest, bool)], refetch: bool) -> Result<()> {
        let wanted: Vec<(Digest, bool)> = files
            .iter()
            .copied()
            .filter(|&(digest, executable)| refetch || !self.cache.contains(digest, executable))
            .collect();
        let size = |files: &[(Digest, bool)]| files.iter().map(|(d, _)| d.size()).sum::<u64>();
        // A refetch (of files found damaged) adds to the bytes fetched, not to the files.
        if !refetch {
            let hits = (files.len() - wanted.len()) as u64;
            self.files.fetch_add(files.len() as u64, Ordering::Relaxed);
            self.bytes.fetch_add(size(files), Ordering::Relaxed);
            self.hits.fetch_add(hits, Ordering::Relaxed);
        }
        self.fetched.fetch_add(size(&wanted), Ordering::Relaxed);
        futures::stream::iter(wanted)
            .map(|(digest, executable)| {
                self.cache
                    .fetch(self.cas, self.instance, digest, executable)
            })
            .buffer_unordered(PARALLEL_FETCHES)
            .try_collect::<()>()
            .await
    }

    fn local_copy(&self, digest: &Digest, executable: bool) -> Option<PathBuf> {
        Some(self.cache.path(digest, executable))
    }

    async fn write(&self, _: File, path: &Path, digest: Digest, _: bool) -> Result<()> {
        Err(Error::Internal(
            format!("{}: {digest} has no cached copy", path.display()).into(),
        ))
    }

    fn mode(&self, executable: bool) -> u32 {
        if executable { 0o555 } else { 0o444 }
    }
}

/// Creates the tree rooted at `root_digest` under `root` (an existing, empty directory):
/// directories, hardlinked files (with their executable bit) and symlinks, at every path of the
/// layout. Returns what it took: the entries staged, the distinct files and their bytes, how
/// many the file cache held, and the bytes fetched into it.
///
/// A missing directory or file is `FailedPrecondition`; a tree beyond `limits` is
/// `InvalidArgument`, found before anything is created.
pub async fn stage_inputs(
    cas: &dyn BlobStore,
    cache: &FileCache,
    instance: &str,
    root_digest: Digest,
    root: &Path,
    limits: TreeLimits,
) -> Result<Staging> {
    let tree = fetch_tree(cas, instance, root_digest)
        .await
        .map_err(|e| match e {
            Error::NotFound(m) => Error::FailedPrecondition(m),
            e => e,
        })?;
    let entries = tree.check_limits(limits)?;
    let source = CachedFiles {
        cas,
        cache,
        instance,
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        fetched: AtomicU64::new(0),
    };
    let mut materializer = Materializer::new(root, &source, Safety::Fresh);
    materializer.tree(&tree, root_digest, "").await?;
    materializer.finish().await?;
    Ok(Staging {
        entries,
        files: source.files.into_inner(),
        bytes: source.bytes.into_inner(),
        cache_hits: source.hits.into_inner(),
        fetched_bytes: source.fetched.into_inner(),
    })
}
