//! Merkle-tree helpers for REAPI `Directory` and `Tree` messages.

use std::collections::{HashSet, VecDeque};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Directory, Tree};
use bytes::Bytes;
use prost::Message;

use crate::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};

/// Largest `Directory` message remexec will decode.
pub const MAX_DIRECTORY_SIZE: u64 = 16 * 1024 * 1024;

/// Checks that `name` is a valid single path component.
pub fn validate_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "is empty"
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
        validate_name(segment).map_err(|e| Error::invalid(format!("output path {path:?}: {e}")))?;
    }
    Ok(())
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
    let dir = Directory::decode(bytes)
        .map_err(|e| Error::invalid(format!("directory {digest} does not decode: {e}")))?;
    validate_directory(digest.function(), &dir)
        .map_err(|e| Error::invalid(format!("directory {digest}: {e}")))?;
    Ok(Some(dir))
}

/// One step of a breadth-first walk of an input root.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Path from the root, `/`-separated; empty for the root.
    pub path: String,
    /// The directory's digest.
    pub digest: Digest,
    /// The validated directory.
    pub directory: Directory,
}

/// Walks the tree rooted at `root` breadth first, in name order, visiting each distinct
/// directory digest once.
///
/// Skips the first `skip` directories and stops after `limit` more, which is what paging needs.
/// Returns the entries and whether more remain. A missing directory is `NotFound` naming it.
pub async fn walk_tree(
    store: &dyn BlobStore,
    instance: &str,
    root: Digest,
    skip: usize,
    limit: usize,
) -> Result<(Vec<WalkEntry>, bool)> {
    let mut queue = VecDeque::from([(String::new(), root)]);
    let mut seen = HashSet::from([root]);
    let mut visited = 0usize;
    let mut out = Vec::new();
    while let Some((path, digest)) = queue.pop_front() {
        if out.len() == limit {
            return Ok((out, true));
        }
        let directory = fetch_directory(store, instance, digest)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("directory {digest} at {path:?} is not in the CAS"))
            })?;
        for child in &directory.directories {
            let child_digest =
                Digest::from_field(digest.function(), child.digest.as_ref(), "directory")?;
            if seen.insert(child_digest) {
                let child_path = if path.is_empty() {
                    child.name.clone()
                } else {
                    format!("{path}/{}", child.name)
                };
                queue.push_back((child_path, child_digest));
            }
        }
        if visited >= skip {
            out.push(WalkEntry {
                path,
                digest,
                directory,
            });
        }
        visited += 1;
    }
    Ok((out, false))
}

/// Builds a `Tree` for the directory at `root`, fetching every descendant.
pub async fn build_tree(store: &dyn BlobStore, instance: &str, root: Digest) -> Result<Tree> {
    let (mut entries, _) = walk_tree(store, instance, root, 0, usize::MAX).await?;
    let root_dir = entries.remove(0).directory;
    Ok(Tree {
        root: Some(root_dir),
        children: entries.into_iter().map(|e| e.directory).collect(),
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
}
