//! [`DiskActionCache`]: action results as files, written atomically and kept across restarts.
//!
//! Results are not packed into segments as small blobs are: a result replaced by a newer one
//! must stay replaced across a restart, and packed records are ordered by their last use, not
//! by when they were written (for blobs, two records of a key hold the same bytes).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Error, Result};
use tokio::io::AsyncReadExt;

use crate::files::{FileTable, Opened};
use crate::key::Key;

/// A disk-persisted [`ActionCache`], bounded by bytes with LRU eviction.
#[derive(Debug, Clone)]
pub struct DiskActionCache {
    files: Arc<FileTable>,
}

fn any_length(_: &Key, len: u64) -> bool {
    (1..=super::MAX_ENTRY_SIZE).contains(&len)
}

impl DiskActionCache {
    /// Opens the cache rooted at `root`, keeping at most `budget` bytes.
    pub async fn open(root: impl AsRef<Path>, budget: u64, sync: bool) -> Result<Self> {
        Ok(Self {
            files: FileTable::open(
                root.as_ref(),
                crate::files::TableOptions {
                    budget,
                    sync,
                    keep_secs: 0,
                    pack_up_to: 0,
                },
                any_length,
            )
            .await?,
        })
    }
}

#[async_trait]
impl ActionCache for DiskActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let key = Key::new(instance, action);
        let buf = match self.files.open_read(&key, any_length).await? {
            None => return Ok(None),
            Some(Opened::Packed(content)) => content.to_vec(),
            Some(Opened::File(mut file, len)) => {
                let mut buf = Vec::with_capacity(len as usize);
                file.read_to_end(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading an action result", e))?;
                buf
            }
        };
        match super::decode_entry(&buf) {
            Ok(result) => Ok(Some(result)),
            Err(e) => {
                tracing::error!(%action, error = %e, "stored action result is damaged; dropping it");
                self.files.discard(&key);
                Ok(None)
            }
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let bytes = super::encode_entry(&result)?;
        let len = bytes.len() as u64;
        let data = futures::stream::once(async { Ok(bytes) }).boxed();
        self.files
            .write(Key::new(instance, action), data, Some(len))
            .await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({})", self.files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::DigestFunction;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskActionCache::open(dir.path(), 1 << 20, true)
            .await
            .unwrap();
        remexec_core::testing::action_cache_conformance(Arc::new(cache)).await;
    }

    #[tokio::test]
    async fn survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let action = DigestFunction::Sha256.digest_of(b"a");
        let result = ActionResult {
            exit_code: 7,
            ..Default::default()
        };
        DiskActionCache::open(dir.path(), 1 << 20, true)
            .await
            .unwrap()
            .put("i", action, result.clone())
            .await
            .unwrap();
        let cache = DiskActionCache::open(dir.path(), 1 << 20, true)
            .await
            .unwrap();
        assert_eq!(cache.get("i", action).await.unwrap(), Some(result));
        // An empty result (exit 0, no outputs) is a valid entry too.
        let empty = DigestFunction::Sha256.digest_of(b"empty");
        cache
            .put("i", empty, ActionResult::default())
            .await
            .unwrap();
        assert_eq!(
            cache.get("i", empty).await.unwrap(),
            Some(ActionResult::default())
        );
    }

    #[tokio::test]
    async fn damaged_entries_are_misses_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskActionCache::open(dir.path(), 1 << 20, true)
            .await
            .unwrap();
        let action = DigestFunction::Sha256.digest_of(b"a");
        cache
            .put(
                "",
                action,
                ActionResult {
                    exit_code: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let path = cache.files.path(&Key::new("", action));
        for damage in [&b""[..], &b"\x01\xff\xff\xff"[..], &b"\x07garbage"[..]] {
            std::fs::write(&path, damage).unwrap();
            assert_eq!(cache.get("", action).await.unwrap(), None, "{damage:?}");
            assert!(!path.exists());
            cache
                .put(
                    "",
                    action,
                    ActionResult {
                        exit_code: 1,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
    }
}
