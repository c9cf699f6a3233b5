//! [`CompletenessCheckingCache`]: hides results whose outputs are no longer in the CAS.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message;
use remexec_core::reapi::{ActionResult, Tree};
use remexec_core::{ActionCache, BlobStore, BlobStoreExt, Digest, Result, merkle};

use crate::key::Key;
use remexec_core::lru::ByteLru;

/// Largest `Tree` blob the check will read.
const MAX_TREE_SIZE: u64 = 64 * 1024 * 1024;

/// How much one check may do before it gives up and reports a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckBudget {
    /// Most bytes of `Tree` blobs read from the CAS for one entry.
    pub tree_bytes: u64,
    /// Most distinct blobs looked up for one entry.
    pub blobs: usize,
    /// Bytes of memory for the file lists of trees already read, shared by all checks.
    pub tree_cache_bytes: u64,
}

impl Default for CheckBudget {
    fn default() -> Self {
        Self {
            tree_bytes: 256 * 1024 * 1024,
            blobs: 1_000_000,
            tree_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Reports an entry as a miss unless every blob it refers to is in the CAS: output files,
/// every file inside output directory trees (and the tree blobs), stdout and stderr.
///
/// The blobs of every entry it returns or stores are [referenced](BlobStore::reference) in the
/// CAS, so that a client told of a result can still download its outputs for the CAS's keep
/// time.
///
/// Without this, a client would get a hit whose outputs it cannot download. Entries are checked
/// on every `get`: each distinct tree once, the file lists of trees already read come from a
/// bounded cache, and a check that would read more than its [`CheckBudget`] reports a miss.
/// `put` passes straight through.
#[derive(Debug, Clone)]
pub struct CompletenessCheckingCache {
    inner: Arc<dyn ActionCache>,
    cas: Arc<dyn BlobStore>,
    budget: CheckBudget,
    /// What trees read before refer to, by tree.
    trees: Arc<Mutex<ByteLru<Key, Arc<TreeBlobs>>>>,
}

/// The blobs an output `Tree` refers to.
#[derive(Debug)]
struct TreeBlobs {
    /// Its files.
    files: Vec<Digest>,
    /// Its Directory messages, root first: needed in the CAS only by a result that names its
    /// root Directory (`root_directory_digest`).
    directories: Vec<Digest>,
}

/// Why an entry is not complete (for the log), or `None` if it is.
type Verdict = Option<String>;

impl CompletenessCheckingCache {
    /// Checks entries of `inner` against `cas`, within the default [`CheckBudget`].
    pub fn new(inner: Arc<dyn ActionCache>, cas: Arc<dyn BlobStore>) -> Self {
        Self::with_budget(inner, cas, CheckBudget::default())
    }

    /// Checks entries of `inner` against `cas` within `budget`.
    pub fn with_budget(
        inner: Arc<dyn ActionCache>,
        cas: Arc<dyn BlobStore>,
        budget: CheckBudget,
    ) -> Self {
        Self {
            inner,
            cas,
            budget,
            trees: Arc::new(Mutex::new(ByteLru::new(budget.tree_cache_bytes))),
        }
    }

    /// The blobs the tree blob `digest` refers to, from the cache or the CAS; `Ok(None)` if it
    /// is missing or malformed. Adds what it reads to `read`.
    async fn tree_blobs(
        &self,
        instance: &str,
        digest: Digest,
        read: &mut u64,
    ) -> Result<Option<Arc<TreeBlobs>>> {
        let key = Key::new(instance, digest);
        if let Some(files) = self.trees.lock().get(&key) {
            return Ok(Some(Arc::clone(files)));
        }
        *read += digest.size();
        if digest.size() > MAX_TREE_SIZE || *read > self.budget.tree_bytes {
            return Ok(None);
        }
        let Some(bytes) = self.cas.get_bytes(instance, digest, MAX_TREE_SIZE).await? else {
            return Ok(None);
        };
        let Ok(tree) = Tree::decode(bytes) else {
            return Ok(None);
        };
        let f = digest.function();
        let Ok(files) = merkle::tree_file_digests(f, &tree) else {
            return Ok(None);
        };
        let directories = tree.root.iter().chain(&tree.children);
        let directories = directories
            .map(|d| merkle::encode_message(f, d).0)
            .collect();
        let blobs = Arc::new(TreeBlobs { files, directories });
        let count = blobs.files.len() + blobs.directories.len();
        let cost = 64 + count as u64 * std::mem::size_of::<Digest>() as u64;
        self.trees.lock().insert(key, cost, Arc::clone(&blobs));
        Ok(Some(blobs))
    }

    /// Whether every blob `result` refers to is present, referencing those that are.
    /// Malformed entries count as incomplete.
    async fn check(
        &self,
        instance: &str,
        action: Digest,
        result: &ActionResult,
    ) -> Result<Verdict> {
        let f = action.function();
        if let Err(e) = merkle::validate_action_result(f, result) {
            return Ok(Some(format!("malformed: {e}")));
        }
        let field = |d: &Option<remexec_core::reapi::Digest>| {
            d.as_ref().and_then(|d| Digest::from_proto(f, d).ok())
        };
        let mut needed: HashSet<Digest> = result
            .output_files
            .iter()
            .filter_map(|file| field(&file.digest))
            .chain(field(&result.stdout_digest))
            .chain(field(&result.stderr_digest))
            .collect();
        let mut read = 0;
        for dir in &result.output_directories {
            let Some(tree) = field(&dir.tree_digest) else {
                continue;
            };
            let Some(blobs) = self.tree_blobs(instance, tree, &mut read).await? else {
                return Ok(Some(format!(
                    "output tree {tree} is missing, malformed or over the budget"
                )));
            };
            // The tree blob itself must be downloadable too, even if its list came from the cache.
            needed.insert(tree);
            needed.extend(blobs.files.iter().copied());
            // A client told of the root Directory fetches the Directory messages themselves.
            if let Some(root) = field(&dir.root_directory_digest) {
                needed.insert(root);
                needed.extend(blobs.directories.iter().copied());
            }
            if needed.len() > self.budget.blobs {
                return Ok(Some(format!(
                    "refers to more than {} blobs",
                    self.budget.blobs
                )));
            }
        }
        needed.retain(|d| !d.is_empty_blob());
        let needed: Vec<Digest> = needed.into_iter().collect();
        let missing = self.cas.reference(instance, &needed).await?;
        Ok((!missing.is_empty()).then(|| {
            format!(
                "{} blobs are missing, such as {}",
                missing.len(),
                missing[0]
            )
        }))
    }
}

#[async_trait]
impl ActionCache for CompletenessCheckingCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let Some(result) = self.inner.get(instance, action).await? else {
            return Ok(None);
        };
        match self.check(instance, action, &result).await? {
            None => Ok(Some(result)),
            Some(why) => {
                tracing::debug!(%action, %why, "action result is incomplete; reporting a miss");
                Ok(None)
            }
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        if let Some(why) = self.check(instance, action, &result).await? {
            tracing::debug!(%action, %why, "storing an incomplete action result");
        }
        self.inner.put(instance, action, result).await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompletenessChecking({})", self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ac::memory::MemoryActionCache;
    use crate::store::memory::MemoryStore;
    use remexec_core::reapi::{Directory, FileNode, OutputDirectory, OutputFile};
    use remexec_core::{DigestFunction, merkle::encode_message};

    #[tokio::test]
    async fn incomplete_entries_are_misses() {
        let f = DigestFunction::Sha256;
        let cas: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(1 << 20));
        let cache =
            CompletenessCheckingCache::new(Arc::new(MemoryActionCache::new(1 << 20)), cas.clone());
        let action = f.digest_of(b"action");
        let out = f.digest_of(b"out");
        let inner_file = f.digest_of(b"inner");
        let tree = Tree {
            root: Some(Directory {
                files: vec![FileNode {
                    name: "x".into(),
                    digest: Some(inner_file.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        };
        let (tree_digest, tree_bytes) = encode_message(f, &tree);
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "o".into(),
                digest: Some(out.to_proto()),
                ..Default::default()
            }],
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            }],
            stdout_digest: Some(f.empty_digest().to_proto()),
            ..Default::default()
        };
        cache.put("", action, result.clone()).await.unwrap();
        assert!(
            cache.get("", action).await.unwrap().is_none(),
            "nothing in CAS yet"
        );
        cas.put_bytes("", out, "out".into()).await.unwrap();
        assert!(
            cache.get("", action).await.unwrap().is_none(),
            "tree missing"
        );
        cas.put_bytes("", tree_digest, tree_bytes).await.unwrap();
        assert!(
            cache.get("", action).await.unwrap().is_none(),
            "file inside tree missing"
        );
        cas.put_bytes("", inner_file, "inner".into()).await.unwrap();
        assert_eq!(cache.get("", action).await.unwrap(), Some(result.clone()));

        // Told of its root Directory (output_directory_format), a client fetches the Directory
        // messages themselves: the entry is complete only once they are in the CAS too.
        let root = tree.root.clone().unwrap();
        let (root_digest, root_bytes) = encode_message(f, &root);
        let mut with_root = result;
        with_root.output_directories[0].root_directory_digest = Some(root_digest.to_proto());
        let other = f.digest_of(b"other action");
        cache.put("", other, with_root.clone()).await.unwrap();
        assert!(
            cache.get("", other).await.unwrap().is_none(),
            "root Directory missing"
        );
        cas.put_bytes("", root_digest, root_bytes).await.unwrap();
        assert_eq!(cache.get("", other).await.unwrap(), Some(with_root));
    }

    #[tokio::test]
    async fn trees_are_read_once_and_checks_are_bounded() {
        let f = DigestFunction::Sha256;
        let cas = Arc::new(crate::store::CountingStore::new());
        let budget = CheckBudget {
            blobs: 1000,
            ..CheckBudget::default()
        };
        let cache = CompletenessCheckingCache::with_budget(
            Arc::new(MemoryActionCache::new(64 << 20)),
            cas.clone(),
            budget,
        );
        let file = f.digest_of(b"inner");
        cas.put_bytes("", file, "inner".into()).await.unwrap();
        let tree = Tree {
            root: Some(Directory {
                files: vec![FileNode {
                    name: "x".into(),
                    digest: Some(file.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        };
        let (tree_digest, tree_bytes) = encode_message(f, &tree);
        cas.put_bytes("", tree_digest, tree_bytes).await.unwrap();
        // 20,000 output directories naming the same tree.
        let result = ActionResult {
            output_directories: (0..20_000)
                .map(|i| OutputDirectory {
                    path: format!("d{i}"),
                    tree_digest: Some(tree_digest.to_proto()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let action = f.digest_of(b"action");
        cache.put("", action, result.clone()).await.unwrap();
        assert!(cache.get("", action).await.unwrap().is_some());
        assert_eq!(cas.take_gets(), 1, "the tree is read once");
        assert!(cache.get("", action).await.unwrap().is_some());
        assert_eq!(cas.take_gets(), 0, "its file list is cached");
        // A tree listing more files than the budget allows is a miss, even with every file
        // present.
        for i in 0..2000 {
            let data = format!("{i}");
            cas.put_bytes("", f.digest_of(data.as_bytes()), data.into())
                .await
                .unwrap();
        }
        let big = Tree {
            root: Some(Directory {
                files: (0..2000)
                    .map(|i| FileNode {
                        name: format!("f{i:05}"),
                        digest: Some(f.digest_of(format!("{i}").as_bytes()).to_proto()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            children: vec![],
        };
        let (big_digest, big_bytes) = encode_message(f, &big);
        cas.put_bytes("", big_digest, big_bytes).await.unwrap();
        let over = ActionResult {
            output_directories: vec![OutputDirectory {
                path: "big".into(),
                tree_digest: Some(big_digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        cache.put("", action, over.clone()).await.unwrap();
        assert!(cache.get("", action).await.unwrap().is_none());
        let roomy = CompletenessCheckingCache::new(Arc::new(MemoryActionCache::new(1 << 20)), cas);
        roomy.put("", action, over).await.unwrap();
        assert!(
            roomy.get("", action).await.unwrap().is_some(),
            "complete within a larger budget"
        );
    }

    #[tokio::test]
    async fn conformance() {
        // The suite's results refer to no blobs: the wrapper must behave like its inner cache.
        let cas: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(1 << 20));
        let cache = CompletenessCheckingCache::new(Arc::new(MemoryActionCache::new(1 << 20)), cas);
        remexec_core::testing::action_cache_conformance(Arc::new(cache)).await;
    }
}
