//! Staging an input tree from the CAS into an action directory.
//!
//! The tree's distinct directories are fetched once ([`fetch_tree`]) and its layout is checked
//! against [`TreeLimits`] before anything is created. The layout is then walked depth first,
//! so that a directory appearing at several paths is staged at each of them, with memory
//! proportional to the distinct directories plus the walk's stack. File-system work is done in
//! batches on tokio's blocking pool, never on the runtime's threads.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use remexec_core::merkle::{TreeLimits, fetch_tree};
use remexec_core::{BlobStore, Digest, Error, Result};

use crate::blocking::{StopFlag, blocking};
use crate::file_cache::{FileCache, link_or_copy};

/// Blobs fetched into the file cache concurrently while staging.
const PARALLEL_FETCHES: usize = 32;

/// File-system operations done per blocking call.
const BATCH: usize = 512;

/// One file-system operation of the staging.
#[derive(Debug)]
enum Op {
    Mkdir(PathBuf),
    Symlink {
        path: PathBuf,
        target: String,
    },
    Empty {
        path: PathBuf,
        executable: bool,
    },
    Link {
        path: PathBuf,
        cached: PathBuf,
        digest: Digest,
        executable: bool,
    },
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
    let f = root_digest.function();
    let tree = fetch_tree(cas, instance, root_digest)
        .await
        .map_err(|e| match e {
            Error::NotFound(m) => Error::FailedPrecondition(m),
            e => e,
        })?;
    let entries = tree.check_limits(limits)?;
    let stop = StopFlag::default();
    let _stop = stop.set_on_drop();
    let mut batch = Vec::with_capacity(BATCH);
    // Depth first over the layout: (directory, its path), children pushed after their mkdir.
    let mut stack = vec![(root_digest, root.to_path_buf())];
    while let Some((digest, path)) = stack.pop() {
        let dir = tree.directory(&digest)?;
        for child in &dir.directories {
            let child_path = path.join(&child.name);
            batch.push(Op::Mkdir(child_path.clone()));
            stack.push((
                Digest::from_field(f, child.digest.as_ref(), "directory")?,
                child_path,
            ));
        }
        for link in &dir.symlinks {
            batch.push(Op::Symlink {
                path: path.join(&link.name),
                target: link.target.clone(),
            });
        }
        for file in &dir.files {
            let digest = Digest::from_field(f, file.digest.as_ref(), "file")?;
            let (path, executable) = (path.join(&file.name), file.is_executable);
            batch.push(if digest.is_empty_blob() {
                Op::Empty { path, executable }
            } else {
                Op::Link {
                    path,
                    cached: cache.path(&digest, executable),
                    digest,
                    executable,
                }
            });
        }
        if batch.len() >= BATCH {
            let ops = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            run_batch(cas, cache, instance, ops, &stop).await?;
        }
    }
    run_batch(cas, cache, instance, batch, &stop).await?;
    Ok(entries)
}

/// Fetches the batch's files into the cache, then does its operations in one blocking call;
/// links whose cached file was evicted meanwhile are redone one by one.
async fn run_batch(
    cas: &dyn BlobStore,
    cache: &FileCache,
    instance: &str,
    ops: Vec<Op>,
    stop: &StopFlag,
) -> Result<()> {
    let mut wanted = HashSet::new();
    for op in &ops {
        if let Op::Link {
            digest, executable, ..
        } = op
            && !cache.contains(*digest, *executable)
        {
            wanted.insert((*digest, *executable));
        }
    }
    futures::stream::iter(wanted)
        .map(|(digest, executable)| cache.fetch(cas, instance, digest, executable))
        .buffer_unordered(PARALLEL_FETCHES)
        .try_collect::<()>()
        .await?;
    let stop = stop.clone();
    let evicted = blocking(move || apply(ops, &stop)).await?;
    for (path, digest, executable) in evicted {
        cache.link(cas, instance, digest, executable, &path).await?;
    }
    Ok(())
}

/// Does the operations in order (blocking); returns the links whose cached file was gone.
fn apply(ops: Vec<Op>, stop: &StopFlag) -> Result<Vec<(PathBuf, Digest, bool)>> {
    let mut evicted = Vec::new();
    for op in ops {
        stop.check()?;
        match op {
            Op::Mkdir(path) => std::fs::create_dir(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?,
            Op::Symlink { path, target } => std::os::unix::fs::symlink(&target, &path)
                .map_err(|e| Error::io(format!("symlinking {}", path.display()), e))?,
            Op::Empty { path, executable } => create_empty(&path, executable)?,
            Op::Link {
                path,
                cached,
                digest,
                executable,
            } => {
                if !link_or_copy(&cached, &path)? {
                    evicted.push((path, digest, executable));
                }
            }
        }
    }
    Ok(evicted)
}

fn create_empty(path: &Path, executable: bool) -> Result<()> {
    let mode = if executable { 0o555 } else { 0o444 };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting permissions of {}", path.display()), e))
}
