//! [`CompletenessCheckingCache`]: hides results whose outputs are no longer in the CAS.

use std::sync::Arc;

use async_trait::async_trait;
use prost::Message;
use remexec_core::reapi::{ActionResult, Tree};
use remexec_core::{ActionCache, BlobStore, BlobStoreExt, Digest, Result, merkle};

/// Largest `Tree` blob the check will read.
const MAX_TREE_SIZE: u64 = 64 * 1024 * 1024;

/// Reports an entry as a miss unless every blob it refers to is in the CAS: output files,
/// every file inside output directory trees (and the tree blobs), stdout and stderr.
///
/// Without this, a client would get a hit whose outputs it cannot download. Entries are checked
/// on every `get`; `put` passes through unchanged.
#[derive(Debug, Clone)]
pub struct CompletenessCheckingCache {
    inner: Arc<dyn ActionCache>,
    cas: Arc<dyn BlobStore>,
}

impl CompletenessCheckingCache {
    /// Checks entries of `inner` against `cas`.
    pub fn new(inner: Arc<dyn ActionCache>, cas: Arc<dyn BlobStore>) -> Self {
        Self { inner, cas }
    }

    /// Whether every blob `result` refers to is present. Malformed entries count as incomplete.
    async fn is_complete(
        &self,
        instance: &str,
        action: Digest,
        result: &ActionResult,
    ) -> Result<bool> {
        let f = action.function();
        let mut needed = Vec::new();
        let mut trees = Vec::new();
        let parsed: Result<()> = (|| {
            for file in &result.output_files {
                needed.push(Digest::from_field(f, file.digest.as_ref(), "output file")?);
            }
            for dir in &result.output_directories {
                trees.push(Digest::from_field(
                    f,
                    dir.tree_digest.as_ref(),
                    "output directory",
                )?);
            }
            for (digest, name) in [
                (&result.stdout_digest, "stdout"),
                (&result.stderr_digest, "stderr"),
            ] {
                if let Some(d) = digest {
                    needed.push(
                        Digest::from_proto(f, d)
                            .map_err(|e| remexec_core::Error::invalid(format!("{name}: {e}")))?,
                    );
                }
            }
            Ok(())
        })();
        if let Err(e) = parsed {
            tracing::warn!(%action, error = %e, "action result is malformed; treating as a miss");
            return Ok(false);
        }
        for tree_digest in trees {
            if tree_digest.size() > MAX_TREE_SIZE {
                tracing::warn!(%action, tree = %tree_digest, "output tree too large to check; treating as a miss");
                return Ok(false);
            }
            let Some(bytes) = self
                .cas
                .get_bytes(instance, tree_digest, MAX_TREE_SIZE)
                .await?
            else {
                return Ok(false);
            };
            let Ok(tree) = Tree::decode(bytes) else {
                return Ok(false);
            };
            match merkle::tree_file_digests(f, &tree) {
                Ok(files) => needed.extend(files),
                Err(_) => return Ok(false),
            }
        }
        needed.retain(|d| !d.is_empty_blob());
        Ok(self.cas.find_missing(instance, &needed).await?.is_empty())
    }
}

#[async_trait]
impl ActionCache for CompletenessCheckingCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let Some(result) = self.inner.get(instance, action).await? else {
            return Ok(None);
        };
        if self.is_complete(instance, action, &result).await? {
            Ok(Some(result))
        } else {
            tracing::debug!(%action, "action result refers to missing blobs; reporting a miss");
            Ok(None)
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        self.inner.put(instance, action, result).await
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
        assert_eq!(cache.get("", action).await.unwrap(), Some(result));
    }

    #[tokio::test]
    async fn conformance() {
        // With no outputs referenced, the wrapper must behave exactly like its inner cache.
        let cas: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(1 << 20));
        for instance in ["", "many"] {
            cas.put_bytes(instance, DigestFunction::Sha256.digest_of(b"a"), "a".into())
                .await
                .unwrap();
        }
        let cache = CompletenessCheckingCache::new(Arc::new(MemoryActionCache::new(1 << 20)), cas);
        remexec_core::testing::action_cache_conformance(Arc::new(cache)).await;
    }
}
