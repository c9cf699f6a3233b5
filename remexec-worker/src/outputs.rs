//! Collecting an action's outputs into the CAS and an `ActionResult`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use remexec_core::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use remexec_core::{
    BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result, merkle::encode_message,
};

/// Uploads the file at `path` (unless the CAS has it) and returns its digest.
pub async fn upload_file(
    cas: &dyn BlobStore,
    instance: &str,
    function: DigestFunction,
    path: &Path,
) -> Result<Digest> {
    let p = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || -> Result<Digest> {
        use std::io::Read;
        let mut file = std::fs::File::open(&p)
            .map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
        let mut hasher = function.hasher();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    if digest.is_empty_blob() || cas.contains(instance, digest).await? {
        return Ok(digest);
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024)
        .map(|r| r.map_err(|e| Error::io("reading an output", e)));
    cas.put(instance, digest, stream.boxed()).await?;
    Ok(digest)
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Builds (and uploads) the `Directory` for `dir`, collecting every sub-directory into `children`.
fn directory<'a>(
    cas: &'a dyn BlobStore,
    instance: &'a str,
    f: DigestFunction,
    dir: &'a Path,
    children: &'a mut Vec<Directory>,
) -> futures::future::BoxFuture<'a, Result<Directory>> {
    Box::pin(async move {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .flatten()
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut out = Directory::default();
        for entry in entries {
            let name = entry
                .file_name()
                .to_str()
                .ok_or_else(|| {
                    Error::invalid(format!("output name {:?} is not UTF-8", entry.file_name()))
                })?
                .to_string();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| Error::io("readlink", e))?;
                out.symlinks.push(SymlinkNode {
                    name,
                    target: target.to_string_lossy().into_owned(),
                    ..Default::default()
                });
            } else if meta.is_dir() {
                let sub = directory(cas, instance, f, &path, children).await?;
                let (digest, bytes) = encode_message(f, &sub);
                cas.put_bytes(instance, digest, bytes).await?;
                children.push(sub);
                out.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            } else if meta.is_file() {
                let digest = upload_file(cas, instance, f, &path).await?;
                out.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&meta),
                    ..Default::default()
                });
            }
        }
        Ok(out)
    })
}

/// Uploads every file and `Directory` under `dir`; returns the root directory's digest and the
/// whole `Tree`. The root digest makes `dir` usable as an action's input root.
pub async fn upload_directory(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    dir: &Path,
) -> Result<(Digest, Tree)> {
    let mut children = Vec::new();
    let root = directory(cas, instance, f, dir, &mut children).await?;
    let (root_digest, bytes) = encode_message(f, &root);
    cas.put_bytes(instance, root_digest, bytes).await?;
    let mut seen = std::collections::HashSet::new();
    children.retain(|c| seen.insert(encode_message(f, c).0));
    Ok((
        root_digest,
        Tree {
            root: Some(root),
            children,
        },
    ))
}

/// Uploads the tree under `dir` and returns the digest of its `Tree` message.
async fn upload_tree(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    dir: &Path,
) -> Result<Digest> {
    let (_, tree) = upload_directory(cas, instance, f, dir).await?;
    let (digest, bytes): (Digest, Bytes) = encode_message(f, &tree);
    cas.put_bytes(instance, digest, bytes).await?;
    Ok(digest)
}

/// Collects the outputs `command` declares, relative to `workdir`, into `result`.
///
/// REAPI v2.1+ `output_paths` and v2.0 `output_files`/`output_directories` are both honoured.
/// Missing outputs are skipped; symlinks are reported as symlinks, not followed.
#[allow(deprecated)] // output_files, output_directories and the *_symlinks fields are REAPI v2.0's
pub async fn collect_outputs(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    command: &Command,
    workdir: &Path,
    result: &mut ActionResult,
) -> Result<()> {
    let v2_1 = !command.output_paths.is_empty();
    let declared: Vec<(&String, bool)> = if v2_1 {
        command.output_paths.iter().map(|p| (p, false)).collect()
    } else {
        command
            .output_files
            .iter()
            .map(|p| (p, false))
            .chain(command.output_directories.iter().map(|p| (p, true)))
            .collect()
    };
    for (rel, declared_dir) in declared {
        let path = workdir.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| Error::io("readlink", e))?
                .to_string_lossy()
                .into_owned();
            let link = OutputSymlink {
                path: rel.clone(),
                target,
                ..Default::default()
            };
            if !v2_1 {
                if declared_dir {
                    result.output_directory_symlinks.push(link.clone())
                } else {
                    result.output_file_symlinks.push(link.clone())
                }
            }
            result.output_symlinks.push(link);
        } else if meta.is_dir() {
            let tree_digest = upload_tree(cas, instance, f, &path).await?;
            result.output_directories.push(OutputDirectory {
                path: rel.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            });
        } else if meta.is_file() {
            let digest = upload_file(cas, instance, f, &path).await?;
            result.output_files.push(OutputFile {
                path: rel.clone(),
                digest: Some(digest.to_proto()),
                is_executable: is_executable(&meta),
                ..Default::default()
            });
        }
    }
    Ok(())
}
