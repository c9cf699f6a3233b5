//! The stores as an operator describes them (a config file's `[cas]`, `[action_cache]` and
//! `[limits]`), and the trees they make on one machine ([`local_specs`]).
//!
//! ```
//! use remexec_cas::options::{ActionCacheOptions, CasOptions, LimitsOptions, local_specs};
//! let (cas, ac) = local_specs(
//!     std::path::Path::new("/var/lib/remexec"),
//!     &CasOptions::default(),
//!     &ActionCacheOptions::default(),
//!     None,
//!     false,
//! );
//! assert_eq!(cas.to_string(), "Verifying(Disk(/var/lib/remexec/cas, 10.0 GiB))");
//! assert!(LimitsOptions::default().check().is_ok());
//! ```

use std::path::Path;

use bytesize::ByteSize;
use remexec_core::merkle::TreeLimits;
use remexec_core::{Error, Result};
use serde::Deserialize;

use crate::Limits;
use crate::spec::{CacheSpec, StoreSpec};
use crate::store::disk::DiskStoreOptions;

/// `[cas]`: the disk blob store.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CasOptions {
    /// Most bytes of blobs kept on disk; least recently used blobs are evicted beyond it.
    pub disk_budget: ByteSize,
    /// fsync every blob and action result (and their directories) before acknowledging it.
    pub fsync: bool,
    /// Seconds a referenced blob is kept after its last reference (see
    /// [`DiskStoreOptions::keep_referenced`]).
    #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
    pub keep_referenced_secs: u64,
    /// Blobs of at most this size are packed into segment files (see
    /// [`DiskStoreOptions::pack_up_to`]; 0 packs none).
    pub pack_up_to: ByteSize,
}

impl CasOptions {
    /// The disk store these options describe.
    pub fn disk_store(&self) -> DiskStoreOptions {
        DiskStoreOptions {
            budget: self.disk_budget.as_u64(),
            sync: self.fsync,
            keep_referenced: std::time::Duration::from_secs(self.keep_referenced_secs),
            share_with: None,
            pack_up_to: self.pack_up_to.as_u64(),
        }
    }
}

/// `[action_cache]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ActionCacheOptions {
    /// `disk` (kept across restarts) or `memory`.
    pub backend: AcBackend,
    /// Most bytes of encoded results kept.
    pub budget: ByteSize,
    /// With the disk backend: bytes of recently used results also kept in memory (0: none).
    pub memory_budget: ByteSize,
    /// Report entries whose outputs are missing from the CAS as misses.
    pub check_completeness: bool,
}

/// Where action results live.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AcBackend {
    /// Files under `data_dir/ac`.
    Disk,
    /// RAM only.
    Memory,
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsOptions {
    /// Largest total of one BatchUpdateBlobs / BatchReadBlobs.
    pub max_batch_total_size: ByteSize,
    /// Most bytes inlined into one GetActionResult reply.
    pub max_inline_size: ByteSize,
    /// Largest gRPC message accepted or sent (0: twice max_batch_total_size, at least 8 MiB).
    pub max_message_size: ByteSize,
    /// Largest blob accepted by ByteStream Write or BatchUpdateBlobs.
    pub max_blob_size: ByteSize,
    /// Most digests in one FindMissingBlobs request.
    pub max_find_missing_digests: usize,
    /// Most blobs in one BatchUpdateBlobs or BatchReadBlobs request.
    pub max_batch_blobs: usize,
    /// Deepest input tree (at Execute, and in the worker's staging).
    pub max_tree_depth: u64,
    /// Most entries of an input tree laid out (at Execute, and in the worker's staging).
    pub max_tree_entries: u64,
    /// Most bytes of a Command's arguments and environment.
    pub max_command_size: ByteSize,
    /// Most concurrent gRPC streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Bytes a client may have in flight per connection (HTTP/2 connection window).
    pub connection_window: ByteSize,
    /// Bytes a client may have in flight per stream (HTTP/2 stream window).
    pub stream_window: ByteSize,
}

impl Default for CasOptions {
    fn default() -> Self {
        Self {
            disk_budget: ByteSize::gib(10),
            fsync: true,
            keep_referenced_secs: crate::store::disk::KEEP_REFERENCED.as_secs(),
            pack_up_to: ByteSize::b(crate::store::disk::PACK_UP_TO),
        }
    }
}

impl Default for ActionCacheOptions {
    fn default() -> Self {
        Self {
            backend: AcBackend::Disk,
            budget: ByteSize::gib(1),
            memory_budget: ByteSize::mib(64),
            check_completeness: true,
        }
    }
}

impl Default for LimitsOptions {
    fn default() -> Self {
        let defaults = Limits::default();
        let tree = TreeLimits::default();
        Self {
            max_batch_total_size: ByteSize::b(defaults.max_batch_total_size),
            max_inline_size: ByteSize::b(defaults.max_inline_size),
            max_message_size: ByteSize::b(0),
            max_blob_size: ByteSize::b(defaults.max_blob_size),
            max_find_missing_digests: defaults.max_find_missing_digests,
            max_batch_blobs: defaults.max_batch_blobs,
            max_tree_depth: tree.max_depth,
            max_tree_entries: tree.max_entries,
            max_command_size: ByteSize::b(remexec_core::merkle::DEFAULT_MAX_COMMAND_SIZE as u64),
            max_concurrent_streams: 1000,
            connection_window: ByteSize::b(u64::from(remexec_core::client::CONNECTION_WINDOW)),
            stream_window: ByteSize::b(u64::from(remexec_core::client::STREAM_WINDOW)),
        }
    }
}

impl LimitsOptions {
    /// The cache services' limits.
    pub fn cache_limits(&self) -> Limits {
        let mut limits = Limits::default();
        let l = self;
        limits.max_batch_total_size = l.max_batch_total_size.as_u64();
        limits.max_message_size = match usize::try_from(l.max_message_size.as_u64()) {
            Ok(0) | Err(_) => (limits.max_batch_total_size as usize)
                .saturating_mul(2)
                .max(limits.max_message_size),
            Ok(size) => size,
        };
        limits.max_inline_size = l.max_inline_size.as_u64();
        limits.max_blob_size = l.max_blob_size.as_u64();
        limits.max_find_missing_digests = l.max_find_missing_digests;
        limits.max_batch_blobs = l.max_batch_blobs;
        limits
    }

    /// The tree depth and entries.
    pub fn tree_limits(&self) -> TreeLimits {
        TreeLimits {
            max_entries: self.max_tree_entries,
            max_depth: self.max_tree_depth,
        }
    }

    /// `InvalidArgument` unless every count and size is positive, a set message size holds a
    /// batch, and the HTTP/2 windows are below 2 GiB.
    pub fn check(&self) -> Result<()> {
        let l = self;
        for (name, value) in [
            ("max_blob_size", l.max_blob_size.as_u64()),
            (
                "max_find_missing_digests",
                l.max_find_missing_digests as u64,
            ),
            ("max_batch_blobs", l.max_batch_blobs as u64),
            ("max_tree_depth", l.max_tree_depth),
            ("max_tree_entries", l.max_tree_entries),
            ("max_command_size", l.max_command_size.as_u64()),
            (
                "max_concurrent_streams",
                u64::from(l.max_concurrent_streams),
            ),
            ("connection_window", l.connection_window.as_u64()),
            ("stream_window", l.stream_window.as_u64()),
        ] {
            if value == 0 {
                return Err(Error::invalid(format!("limits.{name} must be positive")));
            }
        }
        let message = l.max_message_size.as_u64();
        if message != 0 && message < l.max_batch_total_size.as_u64() {
            return Err(Error::invalid(
                "limits.max_message_size must be at least max_batch_total_size (or 0)",
            ));
        }
        if l.connection_window.as_u64() > u64::from(u32::MAX >> 1)
            || l.stream_window.as_u64() > u64::from(u32::MAX >> 1)
        {
            return Err(Error::invalid(
                "limits.connection_window and stream_window must be below 2 GiB",
            ));
        }
        Ok(())
    }
}

/// The CAS and Action Cache trees of one machine under `data_dir`, with an `external` tier,
/// if any, behind the local ones:
/// - the CAS: a disk store in `{data_dir}/cas` ([`StoreSpec::Disk`]), in front of the external
///   store (`Tiered`: a write is acknowledged once the external store holds it, reads try the
///   disk first and fill it), every write hashed once on its way in (`Verifying`);
/// - the Action Cache: on disk in `{data_dir}/ac`, with a memory cache in front unless its
///   `memory_budget` is 0, or in memory; in front of the external cache (written through,
///   filled from it on a miss); checked for completeness against the CAS if
///   `check_completeness` is set.
///
/// With `local_worker` (`serve`'s own worker, whose file cache and action directories are in
/// `{data_dir}/worker`), those files count against the CAS's disk budget too
/// ([`DiskStoreOptions::share_with`]).
pub fn local_specs(
    data_dir: &Path,
    cas: &CasOptions,
    ac: &ActionCacheOptions,
    external: Option<(StoreSpec, CacheSpec)>,
    local_worker: bool,
) -> (StoreSpec, CacheSpec) {
    let options = DiskStoreOptions {
        share_with: local_worker.then(|| data_dir.join("worker")),
        ..cas.disk_store()
    };
    let mut store = StoreSpec::Disk {
        path: data_dir.join("cas"),
        options,
    };
    let budget = ac.budget.as_u64();
    let mut cache = match ac.backend {
        AcBackend::Disk => {
            let disk = CacheSpec::Disk {
                path: data_dir.join("ac"),
                budget,
                fsync: cas.fsync,
            };
            match ac.memory_budget.as_u64() {
                0 => disk,
                front => CacheSpec::Tiered {
                    fast: Box::new(CacheSpec::Memory { budget: front }),
                    slow: Box::new(disk),
                },
            }
        }
        AcBackend::Memory => CacheSpec::Memory { budget },
    };
    if let Some((external_store, external_ac)) = external {
        store = StoreSpec::Tiered {
            fast: Box::new(store),
            slow: Box::new(external_store),
        };
        cache = CacheSpec::Tiered {
            fast: Box::new(cache),
            slow: Box::new(external_ac),
        };
    }
    if ac.check_completeness {
        cache = CacheSpec::Completeness(Box::new(cache));
    }
    // Every write is hashed once, on its way in: clients' and the local worker's alike.
    (StoreSpec::Verifying(Box::new(store)), cache)
}
