//! [`MemoryActionCache`]: action results in RAM, least recently used evicted beyond a budget.

use parking_lot::Mutex;

use async_trait::async_trait;
use prost::Message;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Result};

use crate::key::Key;
use remexec_core::lru::ByteLru;

/// An in-memory [`ActionCache`] bounded by the encoded size of its results.
#[derive(Debug)]
pub struct MemoryActionCache {
    index: Mutex<ByteLru<Key, ActionResult>>,
}

impl MemoryActionCache {
    /// A cache holding at most `budget` bytes of encoded results.
    pub fn new(budget: u64) -> Self {
        Self {
            index: Mutex::new(ByteLru::new(budget)),
        }
    }
}

#[async_trait]
impl ActionCache for MemoryActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        Ok(self.index.lock().get(&Key::new(instance, action)).cloned())
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let cost = result.encoded_len() as u64 + 128;
        self.index
            .lock()
            .insert(Key::new(instance, action), cost, result);
        Ok(())
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({})", crate::size(self.index.lock().budget()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance() {
        remexec_core::testing::action_cache_conformance(Arc::new(MemoryActionCache::new(1 << 20)))
            .await;
    }
}
