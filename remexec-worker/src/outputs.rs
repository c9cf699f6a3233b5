//! Collecting an action's outputs into the CAS and an `ActionResult`.
//!
//! One blocking pass walks the declared outputs without following symlinks, opens only regular
//! files (never a FIFO or a device), hashes them and builds the `Directory` and `Tree`
//! messages. Then one `find_missing` asks the CAS which of those blobs it lacks, and only those
//! are uploaded, each file opened again the same careful way.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use remexec_core::fs::{lookup_beneath, open_regular};
use remexec_core::merkle::{encode_message, validate_symlink_target};
use remexec_core::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};

use crate::blocking::{StopFlag, blocking};

/// Files uploaded concurrently.
const PARALLEL_UPLOADS: usize = 8;

/// Deepest output directory collected.
const MAX_OUTPUT_DEPTH: usize = 512;

/// What a blocking scan found: blobs to upload if the CAS lacks them.
#[derive(Debug, Default)]
struct Scan {
    /// Regular files, by digest.
    files: Vec<(Digest, PathBuf)>,
    /// Encoded `Directory` and `Tree` messages.
    blobs: Vec<(Digest, Bytes)>,
}

/// Hashes an open file from its start (blocking).
fn hash_file(f: DigestFunction, file: &mut File, path: &Path) -> Result<Digest> {
    file.rewind()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut hasher = f.hasher();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Streams an open file from its start into the CAS.
async fn put_file(cas: &dyn BlobStore, instance: &str, digest: Digest, file: File) -> Result<()> {
    let mut file = tokio::fs::File::from_std(file);
    tokio::io::AsyncSeekExt::rewind(&mut file)
        .await
        .map_err(|e| Error::io("rewinding an output", e))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1024 * 1024)
        .map(|r| r.map_err(|e| Error::io("reading an output", e)));
    cas.put(instance, digest, stream.boxed()).await
}

/// Uploads the regular file at `path` (unless the CAS has it) and returns its digest. A path
/// that is not a regular file (a symlink, FIFO, device...) is `FailedPrecondition`; it is never
/// opened.
pub async fn upload_file(
    cas: &dyn BlobStore,
    instance: &str,
    function: DigestFunction,
    path: &Path,
) -> Result<Digest> {
    let p = path.to_path_buf();
    let (file, digest) = blocking(move || {
        let (mut file, _) = open_regular(&p)
            .map_err(|e| Error::io(format!("opening {}", p.display()), e))?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("{} is not a regular file", p.display()))
            })?;
        let digest = hash_file(function, &mut file, &p)?;
        Ok((file, digest))
    })
    .await?;
    upload_handle_hashed(cas, instance, digest, file).await?;
    Ok(digest)
}

/// Uploads what the open `file` holds, from its start, and returns its digest. The worker uses
/// it for stdout and stderr, which it holds open (the action cannot swap them).
pub(crate) async fn upload_handle(
    cas: &dyn BlobStore,
    instance: &str,
    function: DigestFunction,
    file: &File,
) -> Result<Digest> {
    let file = file
        .try_clone()
        .map_err(|e| Error::io("cloning a file handle", e))?;
    let (file, digest) = blocking(move || {
        let mut file = file;
        let digest = hash_file(function, &mut file, Path::new("captured output"))?;
        Ok((file, digest))
    })
    .await?;
    upload_handle_hashed(cas, instance, digest, file).await?;
    Ok(digest)
}

async fn upload_handle_hashed(
    cas: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    file: File,
) -> Result<()> {
    if digest.is_empty_blob() || cas.contains(instance, digest).await? {
        return Ok(());
    }
    put_file(cas, instance, digest, file).await
}

/// Uploads what `scan` found and the CAS lacks: one `find_missing` for everything.
async fn upload_scan(cas: &dyn BlobStore, instance: &str, scan: Scan) -> Result<()> {
    let mut seen = HashSet::new();
    let digests: Vec<Digest> = scan
        .files
        .iter()
        .map(|(d, _)| *d)
        .chain(scan.blobs.iter().map(|(d, _)| *d))
        .filter(|d| !d.is_empty_blob() && seen.insert(*d))
        .collect();
    if digests.is_empty() {
        return Ok(());
    }
    let mut missing: HashSet<Digest> = cas
        .find_missing(instance, &digests)
        .await?
        .into_iter()
        .collect();
    let blobs: Vec<_> = scan
        .blobs
        .into_iter()
        .filter(|(d, _)| missing.remove(d))
        .collect();
    let files: Vec<_> = scan
        .files
        .into_iter()
        .filter(|(d, _)| missing.remove(d))
        .collect();
    futures::stream::iter(files)
        .map(|(digest, path)| async move {
            let p = path.clone();
            let file = blocking(move || {
                open_regular(&p).map_err(|e| Error::io(format!("opening {}", p.display()), e))
            })
            .await?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "output {} changed while it was collected",
                    path.display()
                ))
            })?;
            put_file(cas, instance, digest, file.0).await
        })
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<()>()
        .await?;
    futures::stream::iter(blobs)
        .map(|(digest, bytes)| cas.put_bytes(instance, digest, bytes))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<()>()
        .await
}

/// `FailedPrecondition` unless the output symlink at `rel` (relative to the working
/// directory) obeys remexec's symlink policy.
fn check_symlink(rel: &str, target: &str) -> Result<()> {
    validate_symlink_target(rel, target)
        .map_err(|e| Error::FailedPrecondition(format!("output symlink {rel:?} refused: {e}")))
}

/// Walks one directory of an output tree (blocking).
struct DirScanner<'a> {
    f: DigestFunction,
    scan: &'a mut Scan,
    /// Every distinct sub-directory, for the `Tree`.
    children: Vec<Directory>,
    seen: HashSet<Digest>,
    /// Whether symlinks are outputs, to be checked against the symlink policy.
    check_symlinks: bool,
    stop: &'a StopFlag,
}

impl DirScanner<'_> {
    /// The `Directory` for `dir`, whose path relative to the working directory is `rel`.
    fn directory(&mut self, dir: &Path, rel: &str, depth: usize) -> Result<Directory> {
        self.stop.check()?;
        if depth > MAX_OUTPUT_DEPTH {
            return Err(Error::FailedPrecondition(format!(
                "output directory {rel:?} is nested deeper than {MAX_OUTPUT_DEPTH} levels"
            )));
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut out = Directory::default();
        for entry in entries {
            let name = entry.file_name().into_string().map_err(|name| {
                Error::FailedPrecondition(format!("output name {name:?} is not UTF-8"))
            })?;
            let (path, sub_rel) = (entry.path(), format!("{rel}/{name}"));
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?
                    .to_string_lossy()
                    .into_owned();
                if self.check_symlinks {
                    check_symlink(&sub_rel, &target)?;
                }
                out.symlinks.push(SymlinkNode {
                    name,
                    target,
                    ..Default::default()
                });
            } else if meta.is_dir() {
                let sub = self.directory(&path, &sub_rel, depth + 1)?;
                let (digest, bytes) = encode_message(self.f, &sub);
                if self.seen.insert(digest) {
                    self.scan.blobs.push((digest, bytes));
                    self.children.push(sub);
                }
                out.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            } else if let Some((mut file, meta)) = open_regular(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?
            {
                let digest = hash_file(self.f, &mut file, &path)?;
                self.scan.files.push((digest, path));
                out.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&meta),
                    ..Default::default()
                });
            }
            // FIFOs, sockets and devices are not outputs.
        }
        Ok(out)
    }
}

/// Scans the tree under `dir` into a `Tree` (blocking), queueing its blobs in `scan`.
fn scan_tree(
    f: DigestFunction,
    dir: &Path,
    rel: &str,
    check_symlinks: bool,
    scan: &mut Scan,
    stop: &StopFlag,
) -> Result<(Digest, Tree)> {
    let mut scanner = DirScanner {
        f,
        scan,
        children: Vec::new(),
        seen: HashSet::new(),
        check_symlinks,
        stop,
    };
    let root = scanner.directory(dir, rel, 0)?;
    let children = scanner.children;
    let (root_digest, bytes) = encode_message(f, &root);
    scan.blobs.push((root_digest, bytes));
    Ok((
        root_digest,
        Tree {
            root: Some(root),
            children,
        },
    ))
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Uploads every file and `Directory` under `dir` (unless the CAS has them); returns the root
/// directory's digest and the whole `Tree`. The root digest makes `dir` usable as an action's
/// input root. Symlinks are recorded, never followed; FIFOs, sockets and devices are skipped.
pub async fn upload_directory(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    dir: &Path,
) -> Result<(Digest, Tree)> {
    let dir = dir.to_path_buf();
    let (scan, root, tree) = blocking(move || {
        let mut scan = Scan::default();
        let (root, tree) = scan_tree(f, &dir, "", false, &mut scan, &StopFlag::default())?;
        Ok((scan, root, tree))
    })
    .await?;
    upload_scan(cas, instance, scan).await?;
    Ok((root, tree))
}

/// The declared outputs: `(path, declared as a directory)`.
#[allow(deprecated)] // output_files and output_directories are REAPI v2.0's
fn declared_outputs(command: &Command) -> Vec<(String, bool)> {
    if !command.output_paths.is_empty() {
        return command
            .output_paths
            .iter()
            .map(|p| (p.clone(), false))
            .collect();
    }
    command
        .output_files
        .iter()
        .map(|p| (p.clone(), false))
        .chain(command.output_directories.iter().map(|p| (p.clone(), true)))
        .collect()
}

/// Scans the declared outputs (blocking) into the output fields of an `ActionResult`.
#[allow(deprecated)] // the *_symlinks fields are REAPI v2.0's
fn scan_outputs(
    f: DigestFunction,
    workdir: &Path,
    declared: &[(String, bool)],
    v2_1: bool,
    stop: &StopFlag,
) -> Result<(ActionResult, Scan)> {
    let (mut result, mut scan) = (ActionResult::default(), Scan::default());
    for (rel, declared_dir) in declared {
        stop.check()?;
        // An output below a symlink, or missing, was not produced.
        let Some(path) = lookup_beneath(workdir, rel) else {
            continue;
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?
                .to_string_lossy()
                .into_owned();
            check_symlink(rel, &target)?;
            let link = OutputSymlink {
                path: rel.clone(),
                target,
                ..Default::default()
            };
            if !v2_1 {
                if *declared_dir {
                    result.output_directory_symlinks.push(link.clone())
                } else {
                    result.output_file_symlinks.push(link.clone())
                }
            }
            result.output_symlinks.push(link);
        } else if meta.is_dir() {
            let (_, tree) = scan_tree(f, &path, rel, true, &mut scan, stop)?;
            let (tree_digest, bytes) = encode_message(f, &tree);
            scan.blobs.push((tree_digest, bytes));
            result.output_directories.push(OutputDirectory {
                path: rel.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            });
        } else if let Some((mut file, meta)) =
            open_regular(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?
        {
            let digest = hash_file(f, &mut file, &path)?;
            scan.files.push((digest, path));
            result.output_files.push(OutputFile {
                path: rel.clone(),
                digest: Some(digest.to_proto()),
                is_executable: is_executable(&meta),
                ..Default::default()
            });
        }
        // A FIFO, socket or device was not produced.
    }
    Ok((result, scan))
}

/// Collects the outputs `command` declares, relative to `workdir`, into `result`.
///
/// REAPI v2.1+ `output_paths` and v2.0 `output_files`/`output_directories` are both honoured.
/// Missing outputs, outputs below a symlink, and FIFOs, sockets and devices are not produced;
/// symlinks are reported as symlinks, never followed, and must pass
/// [`validate_symlink_target`] (`FailedPrecondition` naming the symlink otherwise).
#[allow(deprecated)] // the *_symlinks fields are REAPI v2.0's
pub async fn collect_outputs(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    command: &Command,
    workdir: &Path,
    result: &mut ActionResult,
) -> Result<()> {
    let declared = declared_outputs(command);
    let v2_1 = !command.output_paths.is_empty();
    let workdir = workdir.to_path_buf();
    let stop = StopFlag::default();
    let _stop = stop.set_on_drop();
    let (found, scan) = blocking(move || scan_outputs(f, &workdir, &declared, v2_1, &stop)).await?;
    upload_scan(cas, instance, scan).await?;
    result.output_files.extend(found.output_files);
    result.output_directories.extend(found.output_directories);
    result.output_symlinks.extend(found.output_symlinks);
    result
        .output_file_symlinks
        .extend(found.output_file_symlinks);
    result
        .output_directory_symlinks
        .extend(found.output_directory_symlinks);
    Ok(())
}
