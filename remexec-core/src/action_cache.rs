//! The [`ActionCache`] trait: results of actions, keyed by action digest.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult;

use crate::{Digest, Result};

/// A map from `(instance name, action digest)` to `ActionResult`.
///
/// # Contract
/// - **Namespaces.** Each instance name is its own namespace, and digests of different functions
///   never alias.
/// - **Misses.** [`get`](ActionCache::get) returns `Ok(None)` for an unknown action. `Err` means
///   the cache failed.
/// - **Last writer wins.** [`put`](ActionCache::put) replaces any earlier entry atomically: a
///   reader sees the old or the new result, never a mix or a torn entry.
/// - **No judgement.** The cache stores what it is given. Whether outputs still exist in the CAS
///   is a wrapper's business (see the completeness-checking cache in `remexec-cas`).
#[async_trait]
pub trait ActionCache: Send + Sync + Debug + 'static {
    /// The cached result of `action`, if any.
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>>;

    /// Records `result` as the result of `action`.
    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()>;

    /// Writes what this cache is, wrappers with what they wrap, for logs: for example
    /// `CompletenessChecking(Tiered(Memory(64 MiB), Disk(/var/cache/remexec/ac, 1 GiB)))`.
    /// `Display` on `dyn ActionCache` prints this. The default is the type's name.
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(short_type_name::<Self>())
    }
}

/// The last path segment of a type's name, without generic arguments.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let name = std::any::type_name::<T>();
    let name = name.split('<').next().unwrap_or(name);
    name.rsplit("::").next().unwrap_or(name)
}

impl std::fmt::Display for dyn ActionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.describe(f)
    }
}

#[async_trait]
impl<T: ActionCache + ?Sized> ActionCache for Arc<T> {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        (**self).get(instance, action).await
    }
    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        (**self).put(instance, action, result).await
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).describe(f)
    }
}
