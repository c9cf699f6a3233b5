//! Laying out directory trees from the CAS on a local file system.
//!
//! One engine, [`Materializer`], serves both the worker's input staging and a client's output
//! download. It walks a tree's layout depth first, so that a directory appearing at several
//! paths is laid out at each of them, with memory proportional to the distinct directories plus
//! the walk's stack, and does the file-system work in batches on tokio's blocking pool. How a
//! file's content arrives is a [`FileSource`]: the worker hardlinks from its file cache, a
//! client streams from the CAS ([`CasFiles`]) with a digest check.
//!
//! [`download_outputs`] validates an `ActionResult` and every output `Tree` before anything is
//! written, then lays the outputs out with [`Safety::Beneath`]: nothing is created through a
//! symlink, and symlinks are made last.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};
use prost::Message;

use super::blocking;
use crate::fs::{create_dirs_beneath, create_file_beneath};
use crate::merkle::{
    InputTree, TreeLimits, encode_message, resolve_output_path, validate_action_result,
    validate_directory, validate_symlink_target,
};
use crate::reapi::{ActionResult, Directory, Tree};
use crate::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, ReadRange, Result};

/// File-system operations done per blocking call.
const BATCH: usize = 512;

/// Files written by [`FileSource::write`] concurrently.
const PARALLEL_WRITES: usize = 8;

/// Times a batch's vanished local copies are fetched again before giving up.
const REFETCHES: usize = 3;

/// Largest output `Tree` blob [`download_outputs`] fetches.
pub const MAX_TREE_SIZE: u64 = 256 << 20;

/// Where the content of the files being laid out comes from.
#[async_trait::async_trait]
pub trait FileSource: Send + Sync {
    /// Called before each batch with the `(digest, executable)` of the files it will take from
    /// [`FileSource::local_copy`], so that they are local by then. `refetch` says their local
    /// copies turned out to be gone: fetch them even if they seem present.
    async fn prepare(&self, files: &[(Digest, bool)], refetch: bool) -> Result<()>;

    /// A local file with `digest`'s content and its final mode, to hardlink (or copy) from;
    /// `None` to have [`FileSource::write`] fill a new file instead.
    fn local_copy(&self, digest: &Digest, executable: bool) -> Option<PathBuf>;

    /// Fills `file`, new and empty at `path`, with `digest`'s content and sets its mode;
    /// content that does not match `digest` is an error.
    async fn write(&self, file: File, path: &Path, digest: Digest, executable: bool) -> Result<()>;

    /// The mode of a file, used for empty files, which are created without the source.
    fn mode(&self, executable: bool) -> u32;
}

/// How much a [`Materializer`] may trust the directory it writes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Safety {
    /// The root is an empty directory that only this materializer writes into: entries are
    /// created directly, symlinks in layout order. Each name is created once, never replaced.
    Fresh,
    /// The root may already hold anything, symlinks included: no directory or file is created
    /// through a symlink ([`create_dirs_beneath`], [`create_file_beneath`]), files and symlinks
    /// already there are replaced, and symlinks are made after everything else.
    Beneath,
}

/// One file-system operation, on a path relative to the root.
#[derive(Debug)]
enum Op {
    Mkdir(String),
    Symlink(String, String),
    Empty(String, bool),
    Link {
        rel: String,
        local: PathBuf,
        digest: Digest,
        executable: bool,
    },
    Write(String, Digest, bool),
}

/// What a blocking batch left to do asynchronously.
#[derive(Default)]
struct Leftovers {
    /// Links whose local copy vanished: `(rel, local, digest, executable)`.
    vanished: Vec<(String, PathBuf, Digest, bool)>,
    /// Files created empty for [`FileSource::write`].
    created: Vec<(File, PathBuf, Digest, bool)>,
}

/// Lays out files, directories, symlinks and whole trees under a root, in batches.
///
/// Queue entries with [`Materializer::dir`], [`Materializer::file`],
/// [`Materializer::symlink`] and [`Materializer::tree`]; [`Materializer::finish`] does what is
/// left. Parents are queued before what they hold. Dropping a materializer stops its blocking
/// work at the next operation.
pub struct Materializer<'a> {
    root: PathBuf,
    source: &'a dyn FileSource,
    safety: Safety,
    batch: Vec<Op>,
    /// Symlinks deferred to the end ([`Safety::Beneath`]).
    symlinks: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Materializer<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Materializer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Materializer")
            .field("root", &self.root)
            .field("safety", &self.safety)
            .finish_non_exhaustive()
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl<'a> Materializer<'a> {
    /// A materializer writing under `root` (which must exist) with files from `source`.
    pub fn new(root: &Path, source: &'a dyn FileSource, safety: Safety) -> Self {
        Self {
            root: root.to_path_buf(),
            source,
            safety,
            batch: Vec::with_capacity(BATCH),
            symlinks: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn push(&mut self, op: Op) -> Result<()> {
        self.batch.push(op);
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues the directory `rel` (its parent must be queued or exist).
    pub async fn dir(&mut self, rel: &str) -> Result<()> {
        self.push(Op::Mkdir(rel.to_string())).await
    }

    /// Queues the file `rel` with `digest`'s content.
    pub async fn file(&mut self, rel: &str, digest: Digest, executable: bool) -> Result<()> {
        let rel = rel.to_string();
        let op = if digest.is_empty_blob() {
            Op::Empty(rel, executable)
        } else if let Some(local) = self.source.local_copy(&digest, executable) {
            Op::Link {
                rel,
                local,
                digest,
                executable,
            }
        } else {
            Op::Write(rel, digest, executable)
        };
        self.push(op).await
    }

    /// Queues the symlink `rel` pointing at `target` (made last under [`Safety::Beneath`]).
    pub async fn symlink(&mut self, rel: &str, target: &str) -> Result<()> {
        if self.safety == Safety::Beneath {
            self.symlinks.push((rel.to_string(), target.to_string()));
            return Ok(());
        }
        self.push(Op::Symlink(rel.to_string(), target.to_string()))
            .await
    }

    /// Queues the layout of `tree`'s directory `top` at `base` (`base` itself too, unless it
    /// is empty), depth first: every path at which a directory appears.
    pub async fn tree(&mut self, tree: &InputTree, top: Digest, base: &str) -> Result<()> {
        let f = top.function();
        if !base.is_empty() {
            self.dir(base).await?;
        }
        let mut stack = vec![(top, base.to_string())];
        while let Some((digest, path)) = stack.pop() {
            let dir = tree.directory(&digest)?;
            for child in &dir.directories {
                let child_path = join(&path, &child.name);
                self.dir(&child_path).await?;
                let child_digest = Digest::from_field(f, child.digest.as_ref(), "directory")?;
                stack.push((child_digest, child_path));
            }
            for link in &dir.symlinks {
                self.symlink(&join(&path, &link.name), &link.target).await?;
            }
            for file in &dir.files {
                let digest = Digest::from_field(f, file.digest.as_ref(), "file")?;
                self.file(&join(&path, &file.name), digest, file.is_executable)
                    .await?;
            }
        }
        Ok(())
    }

    /// Does everything still queued, the deferred symlinks last.
    pub async fn finish(mut self) -> Result<()> {
        self.flush().await?;
        let mut made = HashSet::new();
        let mut symlinks = std::mem::take(&mut self.symlinks);
        // The same symlink may be listed twice (REAPI v2.0 and v2.1 fields): made once.
        symlinks.retain(|(rel, _)| made.insert(rel.clone()));
        for chunk in symlinks.chunks(BATCH) {
            let ops = chunk
                .iter()
                .map(|(rel, target)| Op::Symlink(rel.clone(), target.clone()))
                .collect();
            self.apply(ops).await?;
        }
        Ok(())
    }

    /// Prepares the batch's local copies, does its operations in one blocking call, then
    /// writes the files the source fills and links again those whose local copy vanished.
    async fn flush(&mut self) -> Result<()> {
        let ops = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if ops.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<(Digest, bool)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Link {
                    digest, executable, ..
                } => Some((*digest, *executable)),
                _ => None,
            })
            .collect();
        if !wanted.is_empty() {
            let wanted: Vec<_> = wanted.into_iter().collect();
            self.source.prepare(&wanted, false).await?;
        }
        let mut leftovers = self.apply(ops).await?;
        let source = self.source;
        futures::stream::iter(std::mem::take(&mut leftovers.created))
            .map(|(file, path, digest, executable)| async move {
                source.write(file, &path, digest, executable).await
            })
            .buffer_unordered(PARALLEL_WRITES)
            .try_collect::<()>()
            .await?;
        for _ in 0..REFETCHES {
            if leftovers.vanished.is_empty() {
                return Ok(());
            }
            let again: Vec<_> = leftovers
                .vanished
                .iter()
                .map(|(_, _, d, x)| (*d, *x))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            self.source.prepare(&again, true).await?;
            let ops = leftovers
                .vanished
                .drain(..)
                .map(|(rel, local, digest, executable)| Op::Link {
                    rel,
                    local,
                    digest,
                    executable,
                })
                .collect();
            leftovers = self.apply(ops).await?;
        }
        match leftovers.vanished.first() {
            None => Ok(()),
            Some((_, _, digest, _)) => Err(Error::Internal(
                format!("the local copy of {digest} kept disappearing").into(),
            )),
        }
    }

    /// Does `ops` in order on the blocking pool.
    async fn apply(&self, ops: Vec<Op>) -> Result<Leftovers> {
        let (root, safety, stop) = (self.root.clone(), self.safety, Arc::clone(&self.stop));
        let modes = [self.source.mode(false), self.source.mode(true)];
        blocking(move || {
            let mut left = Leftovers::default();
            for op in ops {
                if stop.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled("abandoned while laying out a tree".into()));
                }
                apply_one(&root, safety, modes, op, &mut left)?;
            }
            Ok(left)
        })
        .await
    }
}

/// Creates the file `rel` under `root` for writing (blocking).
fn create_file(root: &Path, safety: Safety, rel: &str) -> Result<(File, PathBuf)> {
    let path = root.join(rel);
    let file = match safety {
        Safety::Fresh => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?,
        Safety::Beneath => create_file_beneath(root, rel)?,
    };
    Ok((file, path))
}

/// Does one operation (blocking).
fn apply_one(
    root: &Path,
    safety: Safety,
    modes: [u32; 2],
    op: Op,
    left: &mut Leftovers,
) -> Result<()> {
    match op {
        Op::Mkdir(rel) => match safety {
            Safety::Fresh => {
                let path = root.join(&rel);
                std::fs::create_dir(&path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            }
            Safety::Beneath => {
                create_dirs_beneath(root, &rel)?;
            }
        },
        Op::Symlink(rel, target) => {
            let path = root.join(&rel);
            if safety == Safety::Beneath {
                // Replaces a file or symlink left there; a directory there is a conflict.
                drop(create_file_beneath(root, &rel)?);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
            }
            std::os::unix::fs::symlink(&target, &path)
                .map_err(|e| Error::io(format!("symlinking {}", path.display()), e))?;
        }
        Op::Empty(rel, executable) => {
            let (file, path) = create_file(root, safety, &rel)?;
            file.set_permissions(std::fs::Permissions::from_mode(modes[executable as usize]))
                .map_err(|e| Error::io(format!("setting permissions of {}", path.display()), e))?;
        }
        Op::Link {
            rel,
            local,
            digest,
            executable,
        } => {
            if safety == Safety::Beneath {
                drop(create_file_beneath(root, &rel)?);
                let path = root.join(&rel);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
            }
            if !crate::fs::link_or_copy(&local, &root.join(&rel))? {
                left.vanished.push((rel, local, digest, executable));
            }
        }
        Op::Write(rel, digest, executable) => {
            let (file, path) = create_file(root, safety, &rel)?;
            left.created.push((file, path, digest, executable));
        }
    }
    Ok(())
}

/// Files streamed straight from a CAS, each checked against its digest (a file with the wrong
/// content is deleted); modes 0755 and 0644.
#[derive(Clone, Copy)]
pub struct CasFiles<'a> {
    store: &'a dyn BlobStore,
    instance: &'a str,
}

impl std::fmt::Debug for CasFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CasFiles")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl<'a> CasFiles<'a> {
    /// Files from `store`'s `instance`.
    pub fn new(store: &'a dyn BlobStore, instance: &'a str) -> Self {
        Self { store, instance }
    }
}

#[async_trait::async_trait]
impl FileSource for CasFiles<'_> {
    async fn prepare(&self, _: &[(Digest, bool)], _: bool) -> Result<()> {
        Ok(())
    }

    fn local_copy(&self, _: &Digest, _: bool) -> Option<PathBuf> {
        None
    }

    async fn write(&self, file: File, path: &Path, digest: Digest, executable: bool) -> Result<()> {
        let mut stream = self
            .store
            .get(self.instance, digest, ReadRange::ALL)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{digest} is not in the CAS").into()))?;
        // Hashing and writing happen on the blocking pool, one chunk per call.
        let mut state = (file, digest.function().hasher());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let shown = path.display().to_string();
            state = blocking(move || {
                use std::io::Write;
                let (mut file, mut hasher) = state;
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .map_err(|e| Error::io(format!("writing {shown}"), e))?;
                Ok((file, hasher))
            })
            .await?;
        }
        let (file, hasher) = state;
        let got = hasher.finish();
        let (path, mode) = (path.to_path_buf(), self.mode(executable));
        blocking(move || {
            if got != digest {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(Error::invalid(format!(
                    "{}: the CAS returned {got}, not {digest}",
                    path.display()
                )));
            }
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(format!("setting permissions of {}", path.display()), e))
        })
        .await
    }

    fn mode(&self, executable: bool) -> u32 {
        if executable { 0o755 } else { 0o644 }
    }
}

/// Decodes and validates an output directory's `Tree` into an [`InputTree`]: every directory
/// valid, every directory it names present, the layout within `limits`.
pub fn output_tree(f: DigestFunction, tree: Tree, limits: TreeLimits) -> Result<InputTree> {
    let root = tree.root.unwrap_or_default();
    let (root_digest, _) = encode_message(f, &root);
    let mut directories: HashMap<Digest, Directory> = HashMap::new();
    for dir in tree.children.into_iter().chain([root]) {
        validate_directory(f, &dir)?;
        directories.insert(encode_message(f, &dir).0, dir);
    }
    let tree = InputTree {
        root: root_digest,
        directories,
    };
    for dir in tree.directories.values() {
        for sub in &dir.directories {
            tree.directory(&Digest::from_field(f, sub.digest.as_ref(), "directory")?)
                .map_err(|_| Error::invalid("the tree lacks a directory it names"))?;
        }
    }
    tree.check_limits(limits)?;
    Ok(tree)
}

/// Fetches an output directory's `Tree` (at most [`MAX_TREE_SIZE`]) and validates it.
async fn fetch_output_tree(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    digest: Digest,
) -> Result<InputTree> {
    let bytes = store
        .get_bytes(instance, digest, MAX_TREE_SIZE)
        .await?
        .ok_or_else(|| Error::NotFound(format!("tree {digest} is not in the CAS").into()))?;
    let tree = Tree::decode(bytes).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(format!("tree {digest}"), e))
    })?;
    output_tree(f, tree, TreeLimits::default())
        .map_err(|e| Error::InvalidArgument(crate::Message::caused_by(format!("tree {digest}"), e)))
}

/// Writes an action's outputs under `out` (created if missing), never outside it: the result,
/// every output `Tree`, every entry name and every symlink are validated before anything is
/// written; directories and files are never created through a symlink, even one left in `out`
/// by an earlier run; symlinks are made last; every file is checked against its digest.
#[allow(deprecated)] // the v2.0 *_symlinks fields
pub async fn download_outputs(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    result: &ActionResult,
    out: &Path,
) -> Result<()> {
    validate_action_result(f, result)?;
    // Paths are relative to the action's working directory, and `out` stands for it: a path
    // whose `..` would leave `out` is refused, and `.` segments are resolved away.
    let local = |path: &str| resolve_output_path("", path);
    let mut trees = Vec::with_capacity(result.output_directories.len());
    for dir in &result.output_directories {
        let digest = Digest::from_field(f, dir.tree_digest.as_ref(), "tree")?;
        let tree = fetch_output_tree(store, instance, f, digest).await?;
        let path = local(&dir.path)?;
        // Symlinks are checked where they will be, relative to the working directory.
        check_tree_symlinks(&tree, &path)?;
        trees.push((path, tree));
    }
    let created = out.to_path_buf();
    blocking(move || {
        std::fs::create_dir_all(&created)
            .map_err(|e| Error::io(format!("creating {}", created.display()), e))
    })
    .await?;
    let source = CasFiles::new(store, instance);
    let mut m = Materializer::new(out, &source, Safety::Beneath);
    for file in &result.output_files {
        let digest = Digest::from_field(f, file.digest.as_ref(), "output file")?;
        m.file(&local(&file.path)?, digest, file.is_executable)
            .await?;
    }
    for (path, tree) in &trees {
        m.tree(tree, tree.root, path).await?;
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        // Checked again where it will be made, below `out`.
        let path = local(&link.path)?;
        validate_symlink_target(&path, &link.target)?;
        m.symlink(&path, &link.target).await?;
    }
    m.finish().await
}

/// Writes the directory tree `root` (the digest of a `Directory`) under `out` (created if
/// missing), never outside it: the whole tree is fetched, validated and measured against
/// [`TreeLimits::default`] before anything is written, its symlinks are checked against the
/// output-symlink policy, and every file is checked against its digest.
pub async fn download_directory(
    store: &dyn BlobStore,
    instance: &str,
    root: Digest,
    out: &Path,
) -> Result<()> {
    let tree = crate::merkle::fetch_tree(store, instance, root).await?;
    tree.check_limits(TreeLimits::default())?;
    check_tree_symlinks(&tree, "")?;
    let created = out.to_path_buf();
    blocking(move || {
        std::fs::create_dir_all(&created)
            .map_err(|e| Error::io(format!("creating {}", created.display()), e))
    })
    .await?;
    let source = CasFiles::new(store, instance);
    let mut m = Materializer::new(out, &source, Safety::Beneath);
    m.tree(&tree, root, "").await?;
    m.finish().await
}

/// Checks every symlink of `tree`'s layout at `base` against the output-symlink policy. Work
/// is bounded by the tree's checked limits.
fn check_tree_symlinks(tree: &InputTree, base: &str) -> Result<()> {
    let f = tree.root.function();
    let mut stack = vec![(tree.root, base.to_string())];
    while let Some((digest, path)) = stack.pop() {
        let dir = tree.directory(&digest)?;
        for link in &dir.symlinks {
            validate_symlink_target(&join(&path, &link.name), &link.target)?;
        }
        for sub in &dir.directories {
            let d = Digest::from_field(f, sub.digest.as_ref(), "directory")?;
            stack.push((d, join(&path, &sub.name)));
        }
    }
    Ok(())
}
