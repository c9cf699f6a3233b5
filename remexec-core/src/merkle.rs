//! Merkle-tree helpers for REAPI `Directory` and `Tree` messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, Tree};
use bytes::Bytes;
use prost::Message;

use crate::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};

/// Largest `Directory` message remexec will decode.
pub const MAX_DIRECTORY_SIZE: u64 = 16 * 1024 * 1024;

/// Longest file, directory or symlink name, in bytes (the usual file-system limit).
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` is a valid single path component.
pub fn validate_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "name {:?}... is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    } else if name == "." || name == ".." {
        "is . or .."
    } else if name.contains('/') {
        "contains /"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(Error::invalid(format!("name {name:?} {problem}")))
}

/// Checks an output path: relative, `/`-separated, with no empty, `.` or `..` segments.
pub fn validate_output_path(path: &str) -> Result<()> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(Error::invalid(format!(
            "output path {path:?} must be relative, non-empty and without a trailing /"
        )));
    }
    for segment in path.split('/') {
        validate_name(segment).map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(
                format!("output path {path:?}"),
                e,
            ))
        })?;
    }
    Ok(())
}

/// Checks an output path as a client may write it in a `Command` or find it in an
/// `ActionResult`: relative to the working directory, `/`-separated, non-empty, with no empty
/// segments, each segment `.`, `..` or a valid name ([`validate_name`]). Whether it stays inside
/// the input root depends on the working directory: [`resolve_output_path`] checks that.
pub fn validate_result_path(path: &str) -> Result<()> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(Error::invalid(format!(
            "output path {path:?} must be relative, non-empty and without a trailing /"
        )));
    }
    for segment in path.split('/').filter(|s| *s != "." && *s != "..") {
        validate_name(segment).map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(
                format!("output path {path:?}"),
                e,
            ))
        })?;
    }
    Ok(())
}

/// Resolves `path` (an output path, or the working directory with `working_directory` empty)
/// lexically against `working_directory`, both relative to the input root: the normalised
/// `/`-separated path below the input root, `""` for the input root itself.
///
/// REAPI allows `.` and `..` segments (BuildStream sends `.` and `../../../install`); a path that
/// climbs above the input root is `InvalidArgument`. `..` is resolved lexically: the worker never
/// walks through a symlink to find an output, so the lexical path is the real one.
pub fn resolve_output_path(working_directory: &str, path: &str) -> Result<String> {
    validate_result_path(path)?;
    let mut resolved: Vec<&str> = Vec::new();
    for segment in working_directory.split('/').chain(path.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return Err(Error::invalid(format!(
                        "output path {path:?} climbs above the input root from the working directory {working_directory:?}"
                    )));
                }
            }
            name => resolved.push(name),
        }
    }
    Ok(resolved.join("/"))
}

/// Resolves a `Command.working_directory` below the input root ([`resolve_output_path`]):
/// `""` for an empty one, the input root itself.
pub fn resolve_working_directory(working_directory: &str) -> Result<String> {
    if working_directory.is_empty() {
        return Ok(String::new());
    }
    resolve_output_path("", working_directory).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by("command.working_directory", e))
    })
}

/// Checks a `Command`'s paths: its working directory and every output path (REAPI v2.1's
/// `output_paths` and v2.0's lists) resolve inside the input root ([`resolve_output_path`]).
/// Returns the working directory resolved below the input root.
#[allow(deprecated)] // output_files and output_directories: REAPI v2.0 clients still send them
pub fn validate_command_paths(
    command: &bazel_remote_apis::build::bazel::remote::execution::v2::Command,
) -> Result<String> {
    let workdir = resolve_working_directory(&command.working_directory)?;
    let outputs = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories);
    for path in outputs {
        resolve_output_path(&workdir, path)
            .map_err(|e| Error::InvalidArgument(crate::Message::caused_by("command", e)))?;
    }
    Ok(workdir)
}

/// Checks a `Directory`: every name valid, each list sorted and unique, no name used twice
/// across files, directories and symlinks, and every digest valid for `function`.
pub fn validate_directory(function: DigestFunction, dir: &Directory) -> Result<()> {
    let lists: [(&str, Vec<&str>); 3] = [
        ("file", dir.files.iter().map(|f| f.name.as_str()).collect()),
        (
            "directory",
            dir.directories.iter().map(|d| d.name.as_str()).collect(),
        ),
        (
            "symlink",
            dir.symlinks.iter().map(|s| s.name.as_str()).collect(),
        ),
    ];
    let mut seen = HashSet::new();
    for (kind, names) in &lists {
        for (i, name) in names.iter().enumerate() {
            validate_name(name).map_err(|e| Error::invalid(format!("directory: {kind} {e}")))?;
            if i > 0 && names[i - 1] >= *name {
                return Err(Error::invalid(format!(
                    "directory: {kind} names are not sorted and unique at {:?}, {name:?}",
                    names[i - 1]
                )));
            }
            if !seen.insert(*name) {
                return Err(Error::invalid(format!(
                    "directory: name {name:?} is used twice"
                )));
            }
        }
    }
    for f in &dir.files {
        Digest::from_field(
            function,
            f.digest.as_ref(),
            &format!("file {:?} digest", f.name),
        )?;
    }
    for d in &dir.directories {
        Digest::from_field(
            function,
            d.digest.as_ref(),
            &format!("directory {:?} digest", d.name),
        )?;
    }
    for s in &dir.symlinks {
        if s.target.is_empty() || s.target.contains('\0') {
            return Err(Error::invalid(format!(
                "directory: symlink {:?} has an invalid target",
                s.name
            )));
        }
    }
    Ok(())
}

/// Encodes a message and returns its digest and bytes.
pub fn encode_message<M: Message>(function: DigestFunction, message: &M) -> (Digest, Bytes) {
    let bytes = Bytes::from(message.encode_to_vec());
    (function.digest_of(&bytes), bytes)
}

/// Fetches and validates one `Directory` from the store; `Ok(None)` if it is missing.
pub async fn fetch_directory(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
) -> Result<Option<Directory>> {
    if digest.size() > MAX_DIRECTORY_SIZE {
        return Err(Error::invalid(format!(
            "directory {digest} is larger than {MAX_DIRECTORY_SIZE} bytes"
        )));
    }
    let Some(bytes) = store
        .get_bytes(instance, digest, MAX_DIRECTORY_SIZE)
        .await?
    else {
        if digest.is_empty_blob() {
            return Ok(Some(Directory::default()));
        }
        return Ok(None);
    };
    // A store that returned other bytes (a lying upstream) could otherwise make a "tree" with
    // a cycle, which no hashed tree can have; directories are small, hashing them is cheap.
    if digest.function().digest_of(&bytes) != digest {
        return Err(Error::Internal(
            format!("the store returned other bytes for directory {digest}").into(),
        ));
    }
    let dir = Directory::decode(bytes).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(
            format!("directory {digest} does not decode"),
            e,
        ))
    })?;
    validate_directory(digest.function(), &dir).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(format!("directory {digest}"), e))
    })?;
    Ok(Some(dir))
}

/// Longest symlink target accepted in a result, in bytes (Linux's `PATH_MAX` less the NUL).
pub const MAX_SYMLINK_TARGET_LEN: usize = 4095;

/// Checks an output symlink against remexec's one symlink policy, used for worker results,
/// `UpdateActionResult` and downloads alike.
///
/// `path` is where the symlink lives, relative to the root its outputs are relative to (the
/// action's working directory). The target must be non-empty, at most
/// [`MAX_SYMLINK_TARGET_LEN`] bytes and free of NUL. Absolute targets are allowed (the server
/// advertises `symlink_absolute_path_strategy: ALLOWED`). A relative target, resolved lexically
/// from the symlink's own directory, must not climb above the root. Nothing in remexec writes
/// through a symlink, whatever its target.
pub fn validate_symlink_target(path: &str, target: &str) -> Result<()> {
    // The depth below is counted from `path`'s segments, which may hold `.` and `..`; the
    // last one names the link itself.
    validate_result_path(path)?;
    let problem = if path
        .rsplit('/')
        .next()
        .is_some_and(|l| l == "." || l == "..")
    {
        "is at a path that does not end in a name"
    } else if target.is_empty() {
        "is empty"
    } else if target.len() > MAX_SYMLINK_TARGET_LEN {
        "is too long"
    } else if target.contains('\0') {
        "contains NUL"
    } else if target.starts_with('/') {
        return Ok(());
    } else {
        // The symlink's directory, and the lowest point `path` itself reaches: the root the
        // target must stay within (the working directory, or the input root above it for an
        // output such as `../out/link`, whose own path the scheduler checked).
        let (mut depth, mut floor) = (0_i64, 0_i64);
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments[..segments.len() - 1] {
            match *segment {
                "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            floor = floor.min(depth);
        }
        let mut escapes = false;
        for segment in target.split('/') {
            match segment {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            escapes |= depth < floor;
        }
        if !escapes {
            return Ok(());
        }
        "climbs above the root"
    };
    Err(Error::invalid(format!(
        "symlink {path:?}: target {:?} {problem}",
        target.chars().take(64).collect::<String>()
    )))
}

/// Checks an `ActionResult` before it is stored or returned, the same way for worker results
/// and `UpdateActionResult`: every output path relative ([`validate_result_path`]: as the
/// client wrote it in the `Command`, so `.` and `..` segments are allowed) and used once, every digest valid for `function`, inlined file
/// contents matching their digests, and every output symlink within
/// [`validate_symlink_target`]'s policy. The `Tree` blobs of output directories are not
/// fetched here.
#[allow(deprecated)] // output_file_symlinks and output_directory_symlinks are REAPI v2.0's
pub fn validate_action_result(
    function: DigestFunction,
    result: &bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult,
) -> Result<()> {
    let mut paths = HashSet::new();
    let mut claim = |path: &str| -> Result<()> {
        validate_result_path(path)?;
        if !paths.insert(path.to_string()) {
            return Err(Error::invalid(format!(
                "output path {path:?} is used twice"
            )));
        }
        Ok(())
    };
    for file in &result.output_files {
        claim(&file.path)?;
        let digest = Digest::from_field(
            function,
            file.digest.as_ref(),
            &format!("output file {:?} digest", file.path),
        )?;
        if !file.contents.is_empty() && function.digest_of(&file.contents) != digest {
            return Err(Error::invalid(format!(
                "inlined contents of output file {:?} do not match its digest",
                file.path
            )));
        }
    }
    for dir in &result.output_directories {
        claim(&dir.path)?;
        Digest::from_field(
            function,
            dir.tree_digest.as_ref(),
            &format!("output directory {:?} tree_digest", dir.path),
        )?;
        if let Some(root) = &dir.root_directory_digest {
            Digest::from_proto(function, root).map_err(|e| {
                Error::InvalidArgument(crate::Message::caused_by(
                    format!("output directory {:?} root_directory_digest", dir.path),
                    e,
                ))
            })?;
        }
    }
    // output_symlinks repeats the v2.0 lists for older clients: a path may be in both.
    let mut symlinks = HashSet::new();
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        if symlinks.insert((link.path.as_str(), link.target.as_str())) {
            claim(&link.path)?;
            validate_symlink_target(&link.path, &link.target)?;
        }
    }
    for (digest, name) in [
        (&result.stdout_digest, "stdout_digest"),
        (&result.stderr_digest, "stderr_digest"),
    ] {
        if let Some(d) = digest {
            Digest::from_proto(function, d)
                .map_err(|e| Error::InvalidArgument(crate::Message::caused_by(name, e)))?;
        }
    }
    Ok(())
}

/// The blobs an ActionResult names itself (output files, output trees and their root
/// Directories, stdout and stderr; not the files inside the trees), once each, without the
/// empty blob and the digests that do not parse.
pub fn result_blobs(
    function: DigestFunction,
    result: &bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult,
) -> Vec<Digest> {
    let dirs = result.output_directories.iter();
    let named = result.output_files.iter().map(|f| f.digest.as_ref());
    let named = named
        .chain(dirs.clone().map(|d| d.tree_digest.as_ref()))
        .chain(dirs.map(|d| d.root_directory_digest.as_ref()))
        .chain([result.stdout_digest.as_ref(), result.stderr_digest.as_ref()]);
    let mut seen = HashSet::new();
    named
        .flatten()
        .filter_map(|d| Digest::from_proto(function, d).ok())
        .filter(|d| !d.is_empty_blob() && seen.insert(*d))
        .collect()
}

/// Limits on an input tree as it would be laid out on disk, where a directory that appears at
/// several paths counts at each of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLimits {
    /// Most files, symlinks and directories over all paths.
    pub max_entries: u64,
    /// Deepest nesting of directories below the root.
    pub max_depth: u64,
}

/// The largest Command (arguments and environment, encoded) a scheduler takes by default.
pub const DEFAULT_MAX_COMMAND_SIZE: usize = 2 << 20;

impl Default for TreeLimits {
    fn default() -> Self {
        Self {
            max_entries: 4_000_000,
            max_depth: 512,
        }
    }
}

/// Directories fetched concurrently by [`walk_tree`].
const PARALLEL_DIRECTORIES: usize = 32;

/// Every distinct directory of a tree, each fetched and validated once.
///
/// Memory is proportional to the distinct directories, however many paths they appear at:
/// [`InputTree::check_limits`] measures the tree as laid out, without expanding it.
#[derive(Clone, Debug)]
pub struct InputTree {
    /// The root directory's digest.
    pub root: Digest,
    /// Every distinct directory, by digest, the root included.
    pub directories: HashMap<Digest, Directory>,
}

impl InputTree {
    /// The directory with this digest; `Internal` if the tree does not hold it (it always does
    /// for digests found inside the tree).
    pub fn directory(&self, digest: &Digest) -> Result<&Directory> {
        self.directories
            .get(digest)
            .ok_or_else(|| Error::Internal(format!("directory {digest} is not in the tree").into()))
    }

    /// Counts the entries and depth of the tree as laid out on disk, where a directory counts
    /// at every path it appears at, and fails with `InvalidArgument` beyond `limits`. Returns
    /// the entry count. Work is proportional to the distinct directories.
    pub fn check_limits(&self, limits: TreeLimits) -> Result<u64> {
        let f = self.root.function();
        // (entries below, depth below) per directory, computed children first.
        let mut sizes: HashMap<Digest, (u64, u64)> = HashMap::with_capacity(self.directories.len());
        let mut stack = vec![(self.root, false)];
        while let Some((digest, children_done)) = stack.pop() {
            if sizes.contains_key(&digest) {
                continue;
            }
            let dir = self.directory(&digest)?;
            let children = dir
                .directories
                .iter()
                .map(|c| Digest::from_field(f, c.digest.as_ref(), "directory"));
            if !children_done {
                stack.push((digest, true));
                for child in children {
                    let child = child?;
                    if !sizes.contains_key(&child) {
                        stack.push((child, false));
                    }
                }
                continue;
            }
            let mut entries = (dir.files.len() + dir.symlinks.len()) as u64;
            let mut depth = 0;
            for child in children {
                let (child_entries, child_depth) = sizes[&child?];
                entries = entries.saturating_add(1).saturating_add(child_entries);
                depth = depth.max(child_depth + 1);
            }
            sizes.insert(digest, (entries, depth));
        }
        let (entries, depth) = sizes[&self.root];
        if entries > limits.max_entries {
            return Err(Error::invalid(format!(
                "input tree {} has {entries} entries laid out; the limit is {}",
                self.root, limits.max_entries
            )));
        }
        if depth > limits.max_depth {
            return Err(Error::invalid(format!(
                "input tree {} is {depth} directories deep; the limit is {}",
                self.root, limits.max_depth
            )));
        }
        Ok(entries)
    }
}

/// Fetches every distinct directory of the tree rooted at `root`, level by level and several
/// at a time ([`walk_tree`]). A missing directory is `NotFound` naming it.
pub async fn fetch_tree(store: &dyn BlobStore, instance: &str, root: Digest) -> Result<InputTree> {
    let walk = walk_tree(store, instance, root, u64::MAX).await?;
    match walk.missing.first() {
        Some(digest) => Err(Error::NotFound(
            format!("directory {digest} is not in the CAS").into(),
        )),
        None => Ok(walk.tree),
    }
}

/// What [`walk_tree`] found.
#[derive(Debug)]
pub struct TreeWalk {
    /// Every distinct directory the store holds, by digest.
    pub tree: InputTree,
    /// The directories the store lacks, in breadth-first order (their subtrees are unknown).
    pub missing: Vec<Digest>,
    /// Every distinct non-empty file digest of the directories found, in the order met.
    pub files: Vec<Digest>,
}

/// Walks the tree rooted at `root` breadth first, a level at a time and 32 directories at
/// once: the one walk of an input tree, for the
/// scheduler's input check and the worker's staging. Each distinct directory is fetched once;
/// missing ones are listed, not errors. `InvalidArgument` as soon as the distinct directories
/// and files exceed `max_entries` (distinct entries never outnumber the laid-out ones), before
/// the rest of the tree is held.
pub async fn walk_tree(
    store: &dyn BlobStore,
    instance: &str,
    root: Digest,
    max_entries: u64,
) -> Result<TreeWalk> {
    use futures::{StreamExt, TryStreamExt};
    let f = root.function();
    let mut directories = HashMap::new();
    let (mut missing, mut files) = (Vec::new(), Vec::new());
    let mut seen_files = HashSet::new();
    let mut level = vec![root];
    let mut seen = HashSet::from([root]);
    while !level.is_empty() {
        let fetched: Vec<(Digest, Option<Directory>)> = futures::stream::iter(level)
            .map(|digest| async move {
                Ok::<_, Error>((digest, fetch_directory(store, instance, digest).await?))
            })
            .buffered(PARALLEL_DIRECTORIES)
            .try_collect()
            .await?;
        level = Vec::new();
        for (digest, dir) in fetched {
            let Some(dir) = dir else {
                missing.push(digest);
                continue;
            };
            for child in &dir.directories {
                let child = Digest::from_field(f, child.digest.as_ref(), "directory")?;
                if seen.insert(child) {
                    level.push(child);
                }
            }
            for file in &dir.files {
                let d = Digest::from_field(f, file.digest.as_ref(), "file")?;
                if !d.is_empty_blob() && seen_files.insert(d) {
                    files.push(d);
                }
            }
            directories.insert(digest, dir);
            if (seen.len() + seen_files.len()) as u64 > max_entries {
                return Err(Error::invalid(format!(
                    "input tree {root} has more than {max_entries} entries"
                )));
            }
        }
    }
    Ok(TreeWalk {
        tree: InputTree { root, directories },
        missing,
        files,
    })
}

/// Walks a tree breadth first, yielding each distinct directory once, a page at a time.
///
/// One walk serves every page: it holds the digests seen and still to visit, never paths, so
/// memory is proportional to the distinct directories plus one page.
#[derive(Debug)]
pub struct TreeWalker {
    store: Arc<dyn BlobStore>,
    instance: String,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
    visited: usize,
}

impl TreeWalker {
    /// A walk of the tree rooted at `root`.
    pub fn new(store: Arc<dyn BlobStore>, instance: impl Into<String>, root: Digest) -> Self {
        Self {
            store,
            instance: instance.into(),
            queue: VecDeque::from([root]),
            seen: HashSet::from([root]),
            visited: 0,
        }
    }

    /// Directories yielded so far.
    pub fn visited(&self) -> usize {
        self.visited
    }

    /// Whether every directory has been yielded.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next directories, at most `max_count` of them and, beyond the first, at most
    /// `max_bytes` encoded. Empty once the walk is done. A missing directory is `NotFound`.
    pub async fn next_page(
        &mut self,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Directory>> {
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < max_count.max(1) {
            let Some(&digest) = self.queue.front() else {
                break;
            };
            let dir = fetch_directory(self.store.as_ref(), &self.instance, digest)
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!("directory {digest} is not in the CAS").into())
                })?;
            let len = dir.encoded_len();
            if !page.is_empty() && bytes + len > max_bytes {
                break;
            }
            self.queue.pop_front();
            for child in &dir.directories {
                let child =
                    Digest::from_field(digest.function(), child.digest.as_ref(), "directory")?;
                if self.seen.insert(child) {
                    self.queue.push_back(child);
                }
            }
            bytes += len;
            self.visited += 1;
            page.push(dir);
        }
        Ok(page)
    }
}

/// Builds a `Tree` for the directory at `root`, fetching every distinct descendant.
pub async fn build_tree(store: &dyn BlobStore, instance: &str, root: Digest) -> Result<Tree> {
    let mut tree = fetch_tree(store, instance, root).await?;
    // Children in breadth-first order, each distinct directory once.
    let mut order = vec![root];
    let mut seen = HashSet::from([root]);
    let mut next = 0;
    while next < order.len() {
        for child in &tree.directory(&order[next])?.directories {
            let child = Digest::from_field(root.function(), child.digest.as_ref(), "directory")?;
            if seen.insert(child) {
                order.push(child);
            }
        }
        next += 1;
    }
    let mut dirs = order.iter().filter_map(|d| tree.directories.remove(d));
    Ok(Tree {
        root: dirs.next(),
        children: dirs.collect(),
    })
}

/// Every file digest referenced anywhere in `tree`, deduplicated, plus validation of each
/// directory in it.
pub fn tree_file_digests(function: DigestFunction, tree: &Tree) -> Result<Vec<Digest>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in tree.root.iter().chain(&tree.children) {
        validate_directory(function, dir)?;
        for file in &dir.files {
            let d = Digest::from_field(function, file.digest.as_ref(), "file")?;
            if seen.insert(d) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_remote_apis::build::bazel::remote::execution::v2::{
        DirectoryNode, FileNode, SymlinkNode,
    };

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(DigestFunction::Sha256.digest_of(name.as_bytes()).to_proto()),
            ..Default::default()
        }
    }

    #[test]
    fn directory_validation() {
        let f = DigestFunction::Sha256;
        let ok = Directory {
            files: vec![file("a"), file("b")],
            ..Default::default()
        };
        validate_directory(f, &ok).unwrap();
        let cases: Vec<(Directory, &str)> = vec![
            (
                Directory {
                    files: vec![file("b"), file("a")],
                    ..Default::default()
                },
                "sorted",
            ),
            (
                Directory {
                    files: vec![file("a"), file("a")],
                    ..Default::default()
                },
                "sorted",
            ),
            (
                Directory {
                    files: vec![file("")],
                    ..Default::default()
                },
                "empty",
            ),
            (
                Directory {
                    files: vec![file("..")],
                    ..Default::default()
                },
                ". or ..",
            ),
            (
                Directory {
                    files: vec![file("a/b")],
                    ..Default::default()
                },
                "contains /",
            ),
            (
                Directory {
                    files: vec![file("x")],
                    directories: vec![DirectoryNode {
                        name: "x".into(),
                        digest: Some(f.empty_digest().to_proto()),
                    }],
                    ..Default::default()
                },
                "used twice",
            ),
            (
                Directory {
                    files: vec![FileNode {
                        name: "a".into(),
                        digest: None,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "missing",
            ),
            (
                Directory {
                    symlinks: vec![SymlinkNode {
                        name: "s".into(),
                        target: String::new(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                "target",
            ),
        ];
        for (dir, needle) in cases {
            let err = validate_directory(f, &dir).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn names_are_at_most_255_bytes() {
        validate_name(&"n".repeat(255)).unwrap();
        let err = validate_name(&"n".repeat(256)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("256 bytes"), "{err}");
        assert!(validate_output_path(&format!("a/{}", "n".repeat(300))).is_err());
    }

    #[test]
    fn output_paths_resolve_within_the_input_root() {
        for (wd, path, resolved) in [
            ("", "out", "out"),
            ("a/b", "out/x", "a/b/out/x"),
            ("buildstream/p/e", ".", "buildstream/p/e"),
            ("buildstream/p/e", "../../../install", "install"),
            ("buildstream/p/e", "../../..", ""),
            ("a", "./b/./c/../d", "a/b/d"),
            ("", "..x/.y", "..x/.y"),
        ] {
            assert_eq!(
                resolve_output_path(wd, path).unwrap(),
                resolved,
                "{wd} {path}"
            );
        }
        for (wd, path, why) in [
            ("", "..", "climbs above"),
            ("a/b", "../../../etc", "climbs above"),
            ("a", "b/../../../x", "climbs above"),
            ("", "/etc", "relative"),
            ("", "a//b", "is empty"),
            ("", "a/", "trailing"),
            ("", "", "non-empty"),
            ("", "a/\0", "NUL"),
        ] {
            let err = resolve_output_path(wd, path).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(why), "{wd} {path}: {err}");
        }
    }

    #[test]
    fn symlink_policy() {
        for (path, target) in [
            ("link", "target"),
            ("a/b/link", "../x"),
            ("a/b/link", "../../x"),
            ("a/link", "./b/../c"),
            ("link", "/usr/bin/python3"),
            ("./a/link", "../x"),
            ("../../out/link", "../x"),
            ("../../out/link", "../out/./y"),
            ("a/../link", "x"),
        ] {
            validate_symlink_target(path, target)
                .unwrap_or_else(|e| panic!("{path} -> {target}: {e}"));
        }
        for (path, target, why) in [
            ("link", "..", "climbs"),
            ("link", "../etc/passwd", "climbs"),
            ("a/b/link", "../../../x", "climbs"),
            ("a/link", "b/../../../x", "climbs"),
            ("link", "", "empty"),
            ("link", "a\0b", "NUL"),
            ("./a/link", "../../x", "climbs"),
            ("b/a/..", "x", "does not end in a name"),
            ("l/.", "x", "does not end in a name"),
            ("../../out/link", "../../x", "climbs"),
            ("a/../link", "../x", "climbs"),
        ] {
            let err = validate_symlink_target(path, target).unwrap_err();
            assert!(err.to_string().contains(why), "{path} -> {target}: {err}");
        }
        assert!(validate_symlink_target("l", &"a/".repeat(3000)).is_err());
    }

    #[test]
    fn action_results_are_validated() {
        use bazel_remote_apis::build::bazel::remote::execution::v2::{
            ActionResult, OutputFile, OutputSymlink,
        };
        let f = DigestFunction::Sha256;
        let file = |path: &str| OutputFile {
            path: path.into(),
            digest: Some(f.digest_of(b"x").to_proto()),
            ..Default::default()
        };
        let link = |path: &str, target: &str| OutputSymlink {
            path: path.into(),
            target: target.into(),
            ..Default::default()
        };
        let ok = ActionResult {
            output_files: vec![file("out/a")],
            output_symlinks: vec![link("out/l", "a")],
            ..Default::default()
        };
        validate_action_result(f, &ok).unwrap();
        #[allow(deprecated)]
        let v20 = ActionResult {
            output_file_symlinks: vec![link("out/l", "a")],
            ..ok.clone()
        };
        validate_action_result(f, &v20).unwrap();
        // Paths are as the client wrote them in its Command, relative to its working directory,
        // which may lie below the input root: `.` and `..` are the client's to resolve.
        let dotted = ActionResult {
            output_files: vec![file("a/../../x"), file("./y")],
            output_symlinks: vec![link("../out/l", "../z")],
            ..Default::default()
        };
        validate_action_result(f, &dotted).unwrap();
        let bad = [
            ActionResult {
                output_files: vec![file("/etc/passwd")],
                ..Default::default()
            },
            ActionResult {
                output_files: vec![file("a//b")],
                ..Default::default()
            },
            ActionResult {
                output_files: vec![file("a"), file("a")],
                ..Default::default()
            },
            ActionResult {
                output_symlinks: vec![link("l", "../../home")],
                ..Default::default()
            },
            ActionResult {
                output_files: vec![file("l")],
                output_symlinks: vec![link("l", "x")],
                ..Default::default()
            },
            ActionResult {
                output_files: vec![OutputFile {
                    contents: b"y".to_vec(),
                    ..file("a")
                }],
                ..Default::default()
            },
        ];
        for result in bad {
            let err = validate_action_result(f, &result).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{result:?}");
        }
    }
}

#[cfg(test)]
mod lying_store_tests {
    use super::*;
    use crate::BlobStoreExt;
    use crate::testing::MapStore;
    use bazel_remote_apis::build::bazel::remote::execution::v2::DirectoryNode;

    #[tokio::test]
    async fn a_directory_whose_bytes_do_not_hash_to_its_digest_is_refused() {
        let store = MapStore::default();
        // A directory that names itself as its child: only a store that lies can serve it.
        let hash = *DigestFunction::Sha256.digest_of(b"some other bytes").hash();
        let cyclic = |claimed: Digest| Directory {
            directories: vec![DirectoryNode {
                name: "loop".into(),
                digest: Some(claimed.to_proto()),
            }],
            ..Default::default()
        };
        // The digest's size must be that of the bytes that name it.
        let (claimed, bytes) = (1..200)
            .map(|size| Digest::new(DigestFunction::Sha256, hash, size))
            .map(|d| (d, prost::Message::encode_to_vec(&cyclic(d))))
            .find(|(d, bytes)| bytes.len() as u64 == d.size())
            .unwrap();
        store.put_bytes("", claimed, bytes.into()).await.unwrap();
        let error = fetch_directory(&store, "", claimed).await.unwrap_err();
        assert!(error.to_string().contains("other bytes"), "{error}");
        let error = fetch_tree(&store, "", claimed).await.unwrap_err();
        assert!(error.to_string().contains("other bytes"), "{error}");
    }
}
