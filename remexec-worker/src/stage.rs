//! Staging an input tree from the CAS into an action directory.
//!
//! The tree's distinct directories are fetched once ([`fetch_tree`]) and its layout is checked
//! against [`TreeLimits`] before anything is created. The layout is then laid out by core's
//! [`Materializer`] (depth first, every path of a shared directory, file-system work in batches
//! on tokio's blocking pool), with files hardlinked from the worker's [`FileCache`].

use std::fs::File;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use remexec_core::client::{FileSource, Materializer, Safety};
use remexec_core::merkle::{TreeLimits, fetch_tree};
use remexec_core::{BlobStore, Digest, Error, Result};

use crate::file_cache::FileCache;

/// Blobs fetched into the file cache concurrently while staging.
const PARALLEL_FETCHES: usize = 32;

/// Files hardlinked from the file cache, fetched into it first when missing.
struct CachedFiles<'a> {
    cas: &'a dyn BlobStore,
    cache: &'a FileCache,
    instance: &'a str,
}

#[async_trait::async_trait]
impl FileSource for CachedFiles<'_> {
    async fn prepare(&self, files: &[(Digest, bool)], refetch: bool) -> Result<()> {
        let wanted: Vec<(Digest, bool)> = files
            .iter()
            .copied()
            .filter(|&(digest, executable)| refetch || !self.cache.contains(digest, executable))
            .collect();
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
/// layout. Returns the number of entries staged.
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
) -> Result<u64> {
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
    };
    let mut materializer = Materializer::new(root, &source, Safety::Fresh);
    materializer.tree(&tree, root_digest, "").await?;
    materializer.finish().await?;
    Ok(entries)
}
