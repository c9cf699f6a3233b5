//! Content-addressable storage and action cache for remexec.
//!
//! - [`store`]: [`BlobStore`](remexec_core::BlobStore) backends ([`MemoryStore`],
//!   [`DiskStore`], [`GrpcStore`]) and wrappers ([`VerifyingStore`], [`TieredStore`]), composed
//!   as a tree of `Arc<dyn BlobStore>`; `Display` on a store shows the composition.
//! - [`ac`]: [`ActionCache`](remexec_core::ActionCache) backends ([`MemoryActionCache`],
//!   [`DiskActionCache`]) and the [`CompletenessCheckingCache`] wrapper.
//! - [`service`]: the REAPI Capabilities, ContentAddressableStorage, ByteStream and ActionCache
//!   gRPC services, which an embedder mounts in its own tonic server.
//! - [`asset`] (feature `asset`): the Remote Asset API's Fetch and Push services, which download
//!   from `http(s)` origins into the CAS and remember URIs in the Action Cache.
//!
//! ```
//! use std::sync::Arc;
//! use remexec_cas::{CacheServices, CompletenessCheckingCache, MemoryActionCache, MemoryStore};
//! use remexec_core::{BlobStore, BlobStoreExt, DigestFunction};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> remexec_core::Result<()> {
//! let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(64 << 20));
//! let ac = Arc::new(CompletenessCheckingCache::new(Arc::new(MemoryActionCache::new(16 << 20)), store.clone()));
//! let digest = DigestFunction::Sha256.digest_of(b"hello");
//! store.put_bytes("", digest, "hello".into()).await?;
//! assert!(store.contains("", digest).await?);
//! assert_eq!(store.to_string(), "Memory(64.0 MiB)");
//!
//! // Mount the REAPI services in any tonic server:
//! let routes = CacheServices::new(store, ac).into_routes();
//! let _server = tonic::transport::Server::builder().add_routes(routes);
//! # Ok(())
//! # }
//! ```

pub mod ac;
#[cfg(feature = "asset")]
pub mod asset;
pub mod asset_options;
pub mod cluster;
pub mod external;
pub mod external_options;
mod files;
mod key;
pub mod options;
pub mod service;
pub mod spec;
pub mod store;

pub use ac::completeness::{CheckBudget, CompletenessCheckingCache};
pub use ac::disk::DiskActionCache;
pub use ac::grpc::GrpcActionCache;
pub use ac::memory::MemoryActionCache;
pub use ac::object::ObjectActionCache;
pub use ac::sharded::{PeerActionCache, ShardedActionCache};
pub use ac::tiered::TieredActionCache;
pub use external::{ExternalSettings, open_object_store};
/// The `object_store` crate that [`ObjectBlobStore`] and [`ObjectActionCache`] are built on.
pub use object_store;
pub use service::{CacheServices, Limits};
pub use store::disk::{DiskStore, DiskStoreOptions};
pub use store::grpc::GrpcStore;
pub use store::memory::MemoryStore;
pub use store::metered::{MeteredStore, Transfer};
pub use store::object::ObjectBlobStore;
pub use store::replicated::ReplicatedStore;
pub use store::replicated::repair::{RepairReport, Repairer};
pub use store::small::SmallBlobCache;
pub use store::tiered::TieredStore;
pub use store::verifying::VerifyingStore;

use remexec_core::human_size as size;
