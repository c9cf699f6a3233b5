//! [`TieredActionCache`]: a fast cache (usually memory) in front of a slow, durable one.

use std::sync::Arc;

use async_trait::async_trait;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Result};

/// Reads from `fast` first and fills it from `slow` on a miss; writes go to `slow` (the source of
/// truth) first, then to `fast`.
///
/// A `put` that fails on `slow` leaves `fast` untouched, so the fast tier never holds what the
/// durable tier lost.
#[derive(Debug, Clone)]
pub struct TieredActionCache {
    fast: Arc<dyn ActionCache>,
    slow: Arc<dyn ActionCache>,
}

impl TieredActionCache {
    /// `fast` in front of `slow`.
    pub fn new(fast: Arc<dyn ActionCache>, slow: Arc<dyn ActionCache>) -> Self {
        Self { fast, slow }
    }
}

#[async_trait]
impl ActionCache for TieredActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        if let Some(hit) = self.fast.get(instance, action).await? {
            return Ok(Some(hit));
        }
        let Some(result) = self.slow.get(instance, action).await? else {
            return Ok(None);
        };
        self.fast.put(instance, action, result.clone()).await?;
        Ok(Some(result))
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        self.slow.put(instance, action, result.clone()).await?;
        self.fast.put(instance, action, result).await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tiered({}, {})", self.fast, self.slow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskActionCache, MemoryActionCache};
    use remexec_core::DigestFunction;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let slow = Arc::new(
            DiskActionCache::open(dir.path(), 1 << 20, false)
                .await
                .unwrap(),
        );
        remexec_core::testing::action_cache_conformance(Arc::new(TieredActionCache::new(
            Arc::new(MemoryActionCache::new(1 << 20)),
            slow,
        )))
        .await;
    }

    #[tokio::test]
    async fn misses_in_the_fast_tier_are_filled_from_the_slow_one() {
        let dir = tempfile::tempdir().unwrap();
        let action = DigestFunction::Sha256.digest_of(b"a");
        let result = ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        DiskActionCache::open(dir.path(), 1 << 20, false)
            .await
            .unwrap()
            .put("", action, result.clone())
            .await
            .unwrap();
        // A restart: the memory tier is empty, the disk tier is not.
        let fast = Arc::new(MemoryActionCache::new(1 << 20));
        let slow = Arc::new(
            DiskActionCache::open(dir.path(), 1 << 20, false)
                .await
                .unwrap(),
        );
        let tiered = TieredActionCache::new(fast.clone(), slow);
        assert!(fast.get("", action).await.unwrap().is_none());
        assert_eq!(tiered.get("", action).await.unwrap(), Some(result.clone()));
        assert_eq!(fast.get("", action).await.unwrap(), Some(result));
    }
}
