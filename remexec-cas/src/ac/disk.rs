//! [`DiskActionCache`]: action results as files, written atomically and kept across restarts.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Error, Result};
use tokio::io::AsyncReadExt;

use crate::files::FileTable;
use crate::key::Key;

/// Largest encoded `ActionResult` accepted.
const MAX_RESULT_SIZE: u64 = 16 * 1024 * 1024;

/// A disk-persisted [`ActionCache`], bounded by bytes with LRU eviction.
#[derive(Debug, Clone)]
pub struct DiskActionCache {
    files: Arc<FileTable>,
}

fn any_length(_: &Key, len: u64) -> bool {
    len <= MAX_RESULT_SIZE
}

impl DiskActionCache {
    /// Opens the cache rooted at `root`, keeping at most `budget` bytes.
    pub async fn open(root: impl AsRef<Path>, budget: u64, sync: bool) -> Result<Self> {
        Ok(Self { files: FileTable::open(root.as_ref(), budget, sync, any_length).await? })
    }
}

#[async_trait]
impl ActionCache for DiskActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let key = Key::new(instance, action);
        let Some((mut file, len)) = self.files.open_read(&key, any_length).await? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).await.map_err(|e| Error::io("reading an action result", e))?;
        let result = ActionResult::decode(&buf[..])
            .map_err(|e| Error::Internal(format!("stored action result for {action} does not decode: {e}")))?;
        Ok(Some(result))
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let bytes = Bytes::from(result.encode_to_vec());
        if bytes.len() as u64 > MAX_RESULT_SIZE {
            return Err(Error::invalid(format!("action result of {} bytes is too large", bytes.len())));
        }
        let data = futures::stream::once(async { Ok(bytes) }).boxed();
        self.files.write(Key::new(instance, action), data, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::DigestFunction;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskActionCache::open(dir.path(), 1 << 20, true).await.unwrap();
        remexec_core::testing::action_cache_conformance(Arc::new(cache)).await;
    }

    #[tokio::test]
    async fn survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let action = DigestFunction::Sha256.digest_of(b"a");
        let result = ActionResult { exit_code: 7, ..Default::default() };
        DiskActionCache::open(dir.path(), 1 << 20, true).await.unwrap().put("i", action, result.clone()).await.unwrap();
        let cache = DiskActionCache::open(dir.path(), 1 << 20, true).await.unwrap();
        assert_eq!(cache.get("i", action).await.unwrap(), Some(result));
    }
}
