//! Independent oracles that the fuzz targets compare remexec-core's validators against.
//!
//! Nothing here calls the validator it stands in for: each oracle restates the rule from the
//! REAPI and remexec documentation in its own, simpler way (string tests, a component stack for
//! symlink resolution, a memoised recursion for tree layout), so a disagreement points at one
//! side or the other, never at shared code.

use std::collections::{HashMap, HashSet};

use prost::Message;
use remexec_core::DigestFunction;
use remexec_core::reapi::{Digest, Directory, Tree};

/// Longest name of one path component, in bytes.
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes.
pub const TARGET_MAX: usize = 4095;

/// Splits fuzz input on `0xFF` (a byte no UTF-8 string contains) into at most `n` strings;
/// `None` if a part is not UTF-8. Missing parts are empty.
pub fn parts(data: &[u8], n: usize) -> Option<Vec<&str>> {
    let mut out: Vec<&str> = data
        .splitn(n, |&b| b == 0xFF)
        .map(std::str::from_utf8)
        .collect::<Result<_, _>>()
        .ok()?;
    out.resize(n, "");
    Some(out)
}

/// One path component: 1 to 255 bytes, not `.` or `..`, without `/` or NUL.
pub fn name_ok(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == 0)
}

/// A relative, normalised output path: one or more valid components joined by single `/`.
pub fn output_path_ok(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(name_ok)
}

/// An output path as a client may write it: non-empty, relative, one or more components
/// joined by single `/`, each `.`, `..` or a valid name.
pub fn result_path_ok(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(|c| c == "." || c == ".." || name_ok(c))
}

/// `path` (a [`result_path_ok`] path) below the working directory `wd` (normalised, or empty),
/// resolved lexically to normalised components below the input root; `None` if it climbs above
/// the input root or is not a valid path.
pub fn resolve_below<'a>(wd: &'a str, path: &'a str) -> Option<Vec<&'a str>> {
    if !result_path_ok(path) {
        return None;
    }
    let mut stack: Vec<&str> = wd.split('/').filter(|c| !c.is_empty()).collect();
    for component in path.split('/') {
        match component {
            "." => {}
            ".." => {
                stack.pop()?;
            }
            other => stack.push(other),
        }
    }
    Some(stack)
}

/// `a/b`, or whichever of them is non-empty.
pub fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// Exactly 64 lowercase hex digits.
pub fn hash_ok(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The value of a canonical decimal size (no sign, no leading zero, fits `i64`).
pub fn size_text(text: &str) -> Option<i64> {
    let n: i64 = text.parse().ok()?;
    (n >= 0 && n.to_string() == text).then_some(n)
}

/// A present wire digest with a valid hash and a non-negative size.
pub fn proto_digest_ok(digest: Option<&Digest>) -> bool {
    digest.is_some_and(|d| hash_ok(&d.hash) && d.size_bytes >= 0)
}

/// The wire digest of a message's encoding under `f`.
pub fn digest_of_message<M: Message>(f: DigestFunction, message: &M) -> Digest {
    f.digest_of(&message.encode_to_vec()).to_proto()
}

/// The directory a relative symlink target leads to, resolved lexically from the directory
/// holding the link at `link_path` (a normalised output path), as components below the root;
/// `None` if the walk ever climbs above the root.
///
/// A link path may itself hold `.` and `..` (as a client wrote it, relative to its working
/// directory): it is then placed below as many anonymous directories as it has `..`
/// components, and the target may climb no higher than the path itself did.
pub fn resolve_relative<'a>(link_path: &'a str, target: &'a str) -> Option<Vec<&'a str>> {
    // The link itself is the last component: a path ending in `.` or `..` names no link.
    if link_path
        .rsplit('/')
        .next()
        .is_some_and(|c| c == "." || c == "..")
    {
        return None;
    }
    let ups = link_path.split('/').filter(|c| *c == "..").count();
    let mut stack: Vec<&str> = vec![""; ups];
    let mut floor = ups;
    let mut dir: Vec<&str> = link_path.split('/').collect();
    dir.pop();
    for component in dir {
        match component {
            "." => {}
            ".." => {
                stack.pop()?;
            }
            other => stack.push(other),
        }
        floor = floor.min(stack.len());
    }
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if stack.len() == floor {
                    return None;
                }
                stack.pop();
            }
            other => stack.push(other),
        }
    }
    Some(stack.split_off(floor))
}

/// The output-symlink policy for a link at `link_path` ([`result_path_ok`]), whose last
/// component is a name: a non-empty target of at most 4095 bytes without NUL, absolute or
/// resolving inside the root.
pub fn symlink_ok(link_path: &str, target: &str) -> bool {
    !link_path
        .rsplit('/')
        .next()
        .is_some_and(|c| c == "." || c == "..")
        && !target.is_empty()
        && target.len() <= TARGET_MAX
        && !target.contains('\0')
        && (target.starts_with('/') || resolve_relative(link_path, target).is_some())
}

/// A valid `Directory`: valid names, each list strictly sorted, no name in two entries, every
/// digest valid, every symlink target non-empty and NUL-free.
pub fn directory_ok(dir: &Directory) -> bool {
    let files: Vec<&str> = dir.files.iter().map(|f| f.name.as_str()).collect();
    let dirs: Vec<&str> = dir.directories.iter().map(|d| d.name.as_str()).collect();
    let links: Vec<&str> = dir.symlinks.iter().map(|s| s.name.as_str()).collect();
    let mut all = HashSet::new();
    for list in [&files, &dirs, &links] {
        if !list.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()) {
            return false;
        }
        if !list.iter().all(|n| name_ok(n) && all.insert(*n)) {
            return false;
        }
    }
    dir.files.iter().all(|f| proto_digest_ok(f.digest.as_ref()))
        && dir
            .directories
            .iter()
            .all(|d| proto_digest_ok(d.digest.as_ref()))
        && dir
            .symlinks
            .iter()
            .all(|s| !s.target.is_empty() && !s.target.contains('\0'))
}

/// Rewrites every `DirectoryNode` digest with an empty hash and a `size_bytes` of `j` into the
/// real digest of `tree.children[j]`, if `j` is a valid index and (inside `children[i]`) `j > i`,
/// so that fuzz inputs and generated trees can name their children without hashing. Children
/// are linked last to first, so each link sees the final encoding of its target.
pub fn link_children(f: DigestFunction, tree: &mut Tree) {
    let n = tree.children.len();
    let mut digests: Vec<Option<Digest>> = vec![None; n];
    for i in (0..n).rev() {
        link_directory(&mut tree.children[i], &digests, i + 1);
        digests[i] = Some(digest_of_message(f, &tree.children[i]));
    }
    if let Some(root) = tree.root.as_mut() {
        link_directory(root, &digests, 0);
    }
}

fn link_directory(dir: &mut Directory, digests: &[Option<Digest>], first: usize) {
    for node in &mut dir.directories {
        let Some(d) = node.digest.as_mut().filter(|d| d.hash.is_empty()) else {
            continue;
        };
        let index = usize::try_from(d.size_bytes).ok().filter(|&j| j >= first);
        if let Some(Some(target)) = index.and_then(|j| digests.get(j)) {
            *d = target.clone();
        }
    }
}

/// What [`tree_layout`] finds wrong with a `Tree`, or its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeVerdict {
    /// Some directory of the tree is invalid.
    BadDirectory,
    /// Some directory names a child directory the tree does not hold.
    MissingChild,
    /// Entries (saturating) and depth of the tree as laid out below its root.
    Layout {
        /// Files, symlinks and directories over all paths.
        entries: u64,
        /// Deepest nesting of directories below the root.
        depth: u64,
    },
}

/// Checks a `Tree` the way an output directory's tree must be: every directory (the root is
/// the default `Directory` when absent) valid and every child present; then measures the tree
/// as laid out, a directory counting at every path where it appears.
pub fn tree_layout(f: DigestFunction, tree: &Tree) -> TreeVerdict {
    let root = tree.root.clone().unwrap_or_default();
    let all: Vec<&Directory> = tree.children.iter().chain([&root]).collect();
    if !all.iter().all(|d| directory_ok(d)) {
        return TreeVerdict::BadDirectory;
    }
    let by_digest: HashMap<(String, i64), &Directory> = all
        .iter()
        .map(|d| {
            let digest = digest_of_message(f, *d);
            ((digest.hash, digest.size_bytes), *d)
        })
        .collect();
    let key = |d: &Digest| (d.hash.clone(), d.size_bytes);
    let children_present = all.iter().all(|dir| {
        dir.directories.iter().all(|node| {
            node.digest
                .as_ref()
                .is_some_and(|d| by_digest.contains_key(&key(d)))
        })
    });
    if !children_present {
        return TreeVerdict::MissingChild;
    }
    let mut memo = HashMap::new();
    let (entries, depth) = measure(&root, &by_digest, &mut memo);
    TreeVerdict::Layout { entries, depth }
}

type Memo = HashMap<(String, i64), (u64, u64)>;

/// Entries and depth below `dir`, memoised by child digest. Recursion depth is bounded by the
/// number of distinct directories, since content addressing rules out cycles.
fn measure(
    dir: &Directory,
    by: &HashMap<(String, i64), &Directory>,
    memo: &mut Memo,
) -> (u64, u64) {
    let mut entries = (dir.files.len() + dir.symlinks.len()) as u64;
    let mut depth = 0;
    for node in &dir.directories {
        let Some(d) = node.digest.as_ref() else {
            continue;
        };
        let key = (d.hash.clone(), d.size_bytes);
        let below = match memo.get(&key) {
            Some(&m) => m,
            None => {
                let Some(child) = by.get(&key) else { continue };
                let m = measure(child, by, memo);
                memo.insert(key, m);
                m
            }
        };
        entries = entries.saturating_add(1).saturating_add(below.0);
        depth = depth.max(below.1 + 1);
    }
    (entries, depth)
}

/// Whether `name` matches the glob `pattern`, where `*` matches any run of bytes and
/// everything else itself: a memoised recursion over (pattern, name) suffixes.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    glob(pattern.as_bytes(), name.as_bytes(), &mut HashMap::new())
}

fn glob(p: &[u8], n: &[u8], memo: &mut HashMap<(usize, usize), bool>) -> bool {
    if let Some(&known) = memo.get(&(p.len(), n.len())) {
        return known;
    }
    let result = match p.first() {
        None => n.is_empty(),
        Some(b'*') => glob(&p[1..], n, memo) || (!n.is_empty() && glob(p, &n[1..], memo)),
        Some(&c) => n.first() == Some(&c) && glob(&p[1..], &n[1..], memo),
    };
    memo.insert((p.len(), n.len()), result);
    result
}
