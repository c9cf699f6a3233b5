//! [`ObjectActionCache`]: action results as objects in an object store, one object per entry,
//! at `{prefix}/ac/{instance segment}/{function}/{hash}-{size}` (the layout of
//! [`store::object`](crate::store::object)).

use std::sync::Arc;

use async_trait::async_trait;
use object_store::ObjectStore;
use object_store::path::Path;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Result};

use crate::store::object::Backend;
use crate::store::object::ExternalSettings;

/// An [`ActionCache`] in an object store: each entry is one object, the format byte `1`
/// followed by the encoded `ActionResult`.
///
/// A put is one PUT, which object stores apply atomically, so the last writer wins and a
/// reader never sees a torn entry. A damaged or unknown entry is a miss (and is logged); the
/// next put replaces it. Calls have the timeout and retries of [`ExternalSettings`]; an
/// unreachable store is `Unavailable`, never a miss.
#[derive(Debug)]
pub struct ObjectActionCache {
    backend: Arc<Backend>,
}

impl ObjectActionCache {
    /// A cache of action results under `{prefix}/ac/` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, settings: ExternalSettings) -> Self {
        Self {
            backend: Arc::new(Backend::new(store, prefix, settings)),
        }
    }

    /// Sets what [`describe`](ActionCache::describe) shows inside `Object(...)`, as
    /// [`ObjectBlobStore::with_label`](crate::ObjectBlobStore::with_label) does.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.backend).label = label.into();
        self
    }
}

/// Reads and decodes the entry at `path`; `Ok(Err(why))` if it is damaged.
async fn read(
    store: &dyn ObjectStore,
    path: &Path,
) -> object_store::Result<std::result::Result<ActionResult, String>> {
    let result = store.get(path).await?;
    if result.meta.size > super::MAX_ENTRY_SIZE {
        return Ok(Err(format!("{} bytes is too large", result.meta.size)));
    }
    Ok(super::decode_entry(&result.bytes().await?))
}

#[async_trait]
impl ActionCache for ObjectActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let backend = &self.backend;
        let path = backend.path("ac", instance, action);
        let read = read(backend.store.as_ref(), &path);
        match backend
            .lookup("read the action result", &path, read)
            .await?
        {
            None => Ok(None),
            Some(Ok(result)) => Ok(Some(result)),
            Some(Err(e)) => {
                tracing::error!(%action, %path, error = %e, "stored action result is damaged; a miss");
                Ok(None)
            }
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let entry = super::encode_entry(&result)?;
        let backend = &self.backend;
        let path = backend.path("ac", instance, action);
        let put = backend.store.put(&path, entry.into());
        backend
            .call("write the action result", &path, put)
            .await
            .map(drop)
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object({})", self.backend.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use remexec_core::DigestFunction;

    #[tokio::test]
    async fn conformance() {
        let store = Arc::new(InMemory::new());
        let cache = ObjectActionCache::new(store, Path::from("p"), ExternalSettings::default());
        remexec_core::testing::action_cache_conformance(Arc::new(cache)).await;
    }

    #[tokio::test]
    async fn damaged_entries_are_misses_and_replaced() {
        let store = Arc::new(InMemory::new());
        let cache =
            ObjectActionCache::new(store.clone(), Path::default(), ExternalSettings::default());
        let action = DigestFunction::Sha256.digest_of(b"a");
        let path = Path::from(format!("ac/ifoo/sha256/{}-1", action.hash_hex()));
        for damage in [&b""[..], &b"\x01\xff\xff\xff"[..], &b"\x07garbage"[..]] {
            store
                .put(&path, bytes::Bytes::from_static(damage).into())
                .await
                .unwrap();
            assert_eq!(cache.get("foo", action).await.unwrap(), None, "{damage:?}");
        }
        let result = ActionResult::default();
        cache.put("foo", action, result.clone()).await.unwrap();
        assert_eq!(cache.get("foo", action).await.unwrap(), Some(result));
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(
            &stored[..],
            &[1],
            "an empty result is the format byte alone"
        );
    }
}
