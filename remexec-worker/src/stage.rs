//! Staging an input tree from the CAS into an action directory.

use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use remexec_core::merkle::walk_tree;
use remexec_core::{BlobStore, Digest, Error, Result};

use crate::file_cache::FileCache;

/// Files linked concurrently while staging.
const PARALLEL_FILES: usize = 32;

/// Creates the tree rooted at `root_digest` under `root`: directories, hardlinked files (with
/// their executable bit) and symlinks.
pub async fn stage_inputs(
    cas: &dyn BlobStore,
    cache: &FileCache,
    instance: &str,
    root_digest: Digest,
    root: &Path,
) -> Result<()> {
    let (entries, _) = walk_tree(cas, instance, root_digest, 0, usize::MAX)
        .await
        .map_err(|e| match e {
            Error::NotFound(m) => Error::FailedPrecondition(m),
            e => e,
        })?;
    let mut files = Vec::new();
    for entry in &entries {
        let dir = root.join(&entry.path);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        for link in &entry.directory.symlinks {
            let path = dir.join(&link.name);
            std::os::unix::fs::symlink(&link.target, &path)
                .map_err(|e| Error::io(format!("symlinking {}", path.display()), e))?;
        }
        for file in &entry.directory.files {
            let digest = Digest::from_field(root_digest.function(), file.digest.as_ref(), "file")?;
            files.push((digest, file.is_executable, dir.join(&file.name)));
        }
    }
    futures::stream::iter(files)
        .map(|(digest, executable, path)| async move {
            if digest.is_empty_blob() {
                create_empty(&path, executable)
            } else {
                cache.link(cas, instance, digest, executable, &path).await
            }
        })
        .buffer_unordered(PARALLEL_FILES)
        .try_collect::<()>()
        .await
}

fn create_empty(path: &Path, executable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::File::create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mode = if executable { 0o555 } else { 0o444 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting permissions", e))
}
