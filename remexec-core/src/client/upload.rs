//! Moving local files and directory trees into the CAS.
//!
//! A scan walks a tree in one blocking pass, never following a symlink and opening only
//! regular files (never a FIFO or a device, see [`open_regular`]); it hashes them and builds
//! the `Directory` and `Tree` messages into an [`UploadPlan`]. [`UploadPlan::upload`] then asks
//! the CAS which of those blobs it lacks, with one `FindMissingBlobs` per batch of digests, and
//! uploads only those, each file opened again the same careful way.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use tonic::transport::Channel;

use super::{blocking, cas_client, status_result};
use crate::fs::open_regular;
use crate::merkle::{encode_message, validate_symlink_target};
use crate::reapi::{
    BatchUpdateBlobsRequest, Directory, DirectoryNode, FileNode, SymlinkNode, Tree,
    batch_update_blobs_request,
};
use crate::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};

/// Blobs uploaded concurrently.
const PARALLEL_UPLOADS: usize = 8;

/// Digests per `find_missing` call.
const FIND_MISSING_BATCH: usize = 10_000;

/// Bytes read per blocking call while a file streams into the CAS.
const READ_CHUNK: usize = 1024 * 1024;

/// Bytes of blob content per `BatchUpdateBlobs` request of [`batch_update_blobs`].
pub const BATCH_UPLOAD_BYTES: usize = 2 << 20;

/// Deepest directory a scan descends into.
pub const MAX_SCAN_DEPTH: usize = 512;

/// Blobs found by a scan, to upload if the CAS lacks them.
#[derive(Debug, Default)]
pub struct UploadPlan {
    /// Regular files, by digest, read again from their path when uploaded.
    files: Vec<(Digest, PathBuf)>,
    /// Blobs held in memory (encoded `Directory` and `Tree` messages).
    blobs: Vec<(Digest, Bytes)>,
}

/// How [`UploadPlan::scan_tree`] treats what it finds.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct ScanOptions {
    /// Refuse (`FailedPrecondition`) symlinks that break remexec's output-symlink policy
    /// ([`validate_symlink_target`]); off, symlinks are recorded as they are.
    pub check_symlinks: bool,
}

impl ScanOptions {
    /// Options that check symlinks against the output-symlink policy.
    pub fn checking_symlinks() -> Self {
        Self {
            check_symlinks: true,
        }
    }
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

/// Whether a file's mode has an executable bit.
pub fn is_executable(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// `FailedPrecondition` unless the output symlink at `rel` obeys the output-symlink policy
/// ([`validate_symlink_target`]).
pub fn check_output_symlink(rel: &str, target: &str) -> Result<()> {
    validate_symlink_target(rel, target).map_err(|e| {
        Error::FailedPrecondition(crate::Message::caused_by(
            format!("output symlink {rel:?} refused"),
            e,
        ))
    })
}

/// The target of the symlink at `path`, read without following it (blocking).
pub fn read_symlink(path: &Path) -> Result<String> {
    Ok(std::fs::read_link(path)
        .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?
        .to_string_lossy()
        .into_owned())
}

impl UploadPlan {
    /// Adds an in-memory blob.
    pub fn push_blob(&mut self, digest: Digest, bytes: Bytes) {
        self.blobs.push((digest, bytes));
    }

    /// Hashes the file at `path` and adds it, if it is a regular file; `Ok(None)` for anything
    /// else (missing, a symlink, a directory, a FIFO, a device), which is never opened. Blocks.
    pub fn scan_file(&mut self, f: DigestFunction, path: &Path) -> Result<Option<(Digest, bool)>> {
        let Some((mut file, meta)) =
            open_regular(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?
        else {
            return Ok(None);
        };
        let digest = hash_file(f, &mut file, path)?;
        self.files.push((digest, path.to_path_buf()));
        Ok(Some((digest, is_executable(&meta))))
    }

    /// Scans the tree under `dir` into a `Tree` and returns the root `Directory`'s digest with
    /// it, adding every file and every encoded `Directory` (not the `Tree` itself). `rel` names
    /// `dir` in error messages and symlink checks. Symlinks are recorded, never followed;
    /// FIFOs, sockets and devices are skipped. `stop` is called before each directory: its
    /// error ends the scan. Blocks.
    pub fn scan_tree(
        &mut self,
        f: DigestFunction,
        dir: &Path,
        rel: &str,
        options: ScanOptions,
        stop: &dyn Fn() -> Result<()>,
    ) -> Result<(Digest, Tree)> {
        let mut scanner = DirScanner {
            f,
            plan: self,
            children: Vec::new(),
            seen: HashSet::new(),
            options,
            stop,
        };
        let root = scanner.directory(dir, rel, 0)?;
        let children = scanner.children;
        let (root_digest, bytes) = encode_message(f, &root);
        self.blobs.push((root_digest, bytes));
        Ok((
            root_digest,
            Tree {
                root: Some(root),
                children,
            },
        ))
    }

    /// Uploads what the plan holds and the CAS lacks: one [`reference`](BlobStore::reference)
    /// per batch of digests (what the CAS holds it keeps, as a client counts on), then the
    /// missing blobs, a few at a time. A file that is no longer a regular file is
    /// `FailedPrecondition`.
    pub async fn upload(self, store: &dyn BlobStore, instance: &str) -> Result<()> {
        let mut seen = HashSet::new();
        let digests: Vec<Digest> = self
            .files
            .iter()
            .map(|(d, _)| *d)
            .chain(self.blobs.iter().map(|(d, _)| *d))
            .filter(|d| !d.is_empty_blob() && seen.insert(*d))
            .collect();
        let mut missing = HashSet::new();
        for batch in digests.chunks(FIND_MISSING_BATCH) {
            missing.extend(store.reference(instance, batch).await?);
        }
        let blobs: Vec<_> = self
            .blobs
            .into_iter()
            .filter(|(d, _)| missing.remove(d))
            .collect();
        let files: Vec<_> = self
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
                    Error::FailedPrecondition(
                        format!("{} changed while it was uploaded", path.display()).into(),
                    )
                })?;
                put_file(store, instance, digest, file.0).await
            })
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<()>()
            .await?;
        put_blobs(store, instance, blobs).await
    }
}

/// Uploads in-memory blobs a few at a time.
async fn put_blobs(
    store: &dyn BlobStore,
    instance: &str,
    blobs: Vec<(Digest, Bytes)>,
) -> Result<()> {
    futures::stream::iter(blobs)
        .map(|(digest, bytes)| store.put_bytes(instance, digest, bytes))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<()>()
        .await
}

/// Uploads those of `blobs` the CAS lacks: one `reference` per batch of digests.
pub async fn upload_blobs(
    store: &dyn BlobStore,
    instance: &str,
    blobs: Vec<(Digest, Bytes)>,
) -> Result<()> {
    UploadPlan {
        files: Vec::new(),
        blobs,
    }
    .upload(store, instance)
    .await
}

/// Uploads `blobs` with `BatchUpdateBlobs` on `channel`, as few requests as fit
/// [`BATCH_UPLOAD_BYTES`] each (a larger blob goes alone); any failed item is the error. For
/// small blobs the caller knows to be missing; [`upload_blobs`] asks first.
pub async fn batch_update_blobs(
    channel: Channel,
    instance: &str,
    f: DigestFunction,
    blobs: Vec<(Digest, Bytes)>,
) -> Result<()> {
    let mut cas = cas_client(channel);
    let mut requests: Vec<Vec<batch_update_blobs_request::Request>> = vec![Vec::new()];
    let mut total = 0;
    for (digest, data) in blobs {
        if total + data.len() > BATCH_UPLOAD_BYTES && requests.last().is_some_and(|r| !r.is_empty())
        {
            requests.push(Vec::new());
            total = 0;
        }
        total += data.len();
        if let Some(last) = requests.last_mut() {
            last.push(batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: data.to_vec(),
                compressor: 0,
            });
        }
    }
    for requests in requests.into_iter().filter(|r| !r.is_empty()) {
        let response = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: instance.to_string(),
                requests,
                digest_function: f.to_proto(),
            })
            .await?;
        for item in response.into_inner().responses {
            status_result(item.status.as_ref())?;
        }
    }
    Ok(())
}

/// Streams an open file from its start into the CAS, reading on the blocking pool.
async fn put_file(store: &dyn BlobStore, instance: &str, digest: Digest, file: File) -> Result<()> {
    let stream = futures::stream::try_unfold((file, true), |(mut file, first)| async move {
        let (file, chunk) = blocking(move || {
            if first {
                file.rewind()
                    .map_err(|e| Error::io("rewinding a file", e))?;
            }
            let mut buf = Vec::with_capacity(READ_CHUNK);
            (&mut file)
                .take(READ_CHUNK as u64)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io("reading a file", e))?;
            Ok((file, buf))
        })
        .await?;
        Ok((!chunk.is_empty()).then(|| (Bytes::from(chunk), (file, false))))
    });
    store.put(instance, digest, stream.boxed()).await
}

/// Uploads the regular file at `path` (unless the CAS has it) and returns its digest. A path
/// that is not a regular file (a symlink, FIFO, device...) is `FailedPrecondition`; it is never
/// opened.
pub async fn upload_file(
    store: &dyn BlobStore,
    instance: &str,
    function: DigestFunction,
    path: &Path,
) -> Result<Digest> {
    let p = path.to_path_buf();
    let (file, digest) = blocking(move || {
        let (mut file, _) = open_regular(&p)
            .map_err(|e| Error::io(format!("opening {}", p.display()), e))?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("{} is not a regular file", p.display()).into())
            })?;
        let digest = hash_file(function, &mut file, &p)?;
        Ok((file, digest))
    })
    .await?;
    upload_hashed(store, instance, digest, file).await?;
    Ok(digest)
}

/// Uploads what the open `file` holds, from its start (unless the CAS has it), and returns its
/// digest. For files the caller holds open, such as captured stdout and stderr.
pub async fn upload_open_file(
    store: &dyn BlobStore,
    instance: &str,
    function: DigestFunction,
    file: &File,
) -> Result<Digest> {
    let file = file
        .try_clone()
        .map_err(|e| Error::io("cloning a file handle", e))?;
    let (file, digest) = blocking(move || {
        let mut file = file;
        let digest = hash_file(function, &mut file, Path::new("an open file"))?;
        Ok((file, digest))
    })
    .await?;
    upload_hashed(store, instance, digest, file).await?;
    Ok(digest)
}

async fn upload_hashed(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    file: File,
) -> Result<()> {
    // Referenced if the CAS holds it: kept, as a client counts on.
    if digest.is_empty_blob() || store.reference(instance, &[digest]).await?.is_empty() {
        return Ok(());
    }
    put_file(store, instance, digest, file).await
}

/// Uploads every file and `Directory` under `dir` (unless the CAS has them); returns the root
/// directory's digest and the whole `Tree`. The root digest makes `dir` usable as an action's
/// input root. Symlinks are recorded, never followed; FIFOs, sockets and devices are skipped.
pub async fn upload_directory(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    dir: &Path,
) -> Result<(Digest, Tree)> {
    let dir = dir.to_path_buf();
    let (plan, root, tree) = blocking(move || {
        let mut plan = UploadPlan::default();
        let (root, tree) = plan.scan_tree(f, &dir, "", ScanOptions::default(), &|| Ok(()))?;
        Ok((plan, root, tree))
    })
    .await?;
    plan.upload(store, instance).await?;
    Ok((root, tree))
}

/// Walks one directory tree (blocking).
struct DirScanner<'a> {
    f: DigestFunction,
    plan: &'a mut UploadPlan,
    /// Every distinct sub-directory, for the `Tree`.
    children: Vec<Directory>,
    seen: HashSet<Digest>,
    options: ScanOptions,
    stop: &'a dyn Fn() -> Result<()>,
}

impl DirScanner<'_> {
    /// The `Directory` for `dir`, whose path relative to the scan's base is `rel`.
    fn directory(&mut self, dir: &Path, rel: &str, depth: usize) -> Result<Directory> {
        (self.stop)()?;
        if depth > MAX_SCAN_DEPTH {
            return Err(Error::FailedPrecondition(
                format!("directory {rel:?} is nested deeper than {MAX_SCAN_DEPTH} levels").into(),
            ));
        }
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut out = Directory::default();
        for entry in entries {
            let name = entry.file_name().into_string().map_err(|name| {
                Error::FailedPrecondition(format!("name {name:?} is not UTF-8").into())
            })?;
            let (path, sub_rel) = (entry.path(), format!("{rel}/{name}"));
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                let target = read_symlink(&path)?;
                if self.options.check_symlinks {
                    check_output_symlink(&sub_rel, &target)?;
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
                    self.plan.blobs.push((digest, bytes));
                    self.children.push(sub);
                }
                out.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            } else if let Some((digest, is_executable)) = self.plan.scan_file(self.f, &path)? {
                out.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable,
                    ..Default::default()
                });
            }
            // FIFOs, sockets and devices are skipped.
        }
        Ok(out)
    }
}
