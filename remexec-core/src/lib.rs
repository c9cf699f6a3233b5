//! Core types and traits of remexec, a Remote Execution API v2 server.
//!
//! This crate holds what every other remexec crate shares and depends on no other remexec
//! crate:
//! - [`Digest`] and [`DigestFunction`] (SHA-256 and BLAKE3) with streaming hashers;
//! - ByteStream resource names ([`ReadResource`], [`WriteResource`]) and instance names;
//! - Merkle helpers for `Directory` and `Tree` messages ([`merkle`]);
//! - file-system helpers that never follow a symlink or block on a FIFO ([`fs`]);
//! - the [`BlobStore`] and [`ActionCache`] traits that storage backends implement;
//! - authentication and per-instance permissions, enforced by one tower layer ([`auth`]);
//! - server-side TLS with reloadable certificates ([`tls`]);
//! - Prometheus figures ([`metrics`]) and the layer that records every call's ([`observe`]);
//! - with the `server` feature, the port stack every node serves on (`server`);
//! - the [`enum@Error`] enum, whose [`Error::code`] is the one place gRPC codes are chosen;
//! - with the `testing` feature, conformance suites that every backend runs.
//!
//! ```
//! use remexec_core::{Digest, DigestFunction, ReadResource};
//!
//! let digest = DigestFunction::Sha256.digest_of(b"hello");
//! assert_eq!(digest.size(), 5);
//! let name = format!("my/instance/blobs/{digest}");
//! let parsed = ReadResource::parse(&name)?;
//! assert_eq!(parsed.instance, "my/instance");
//! assert_eq!(parsed.blob.digest, digest);
//! assert_eq!(parsed.to_string(), name);
//! assert!(Digest::parse(DigestFunction::Sha256, "abc/-1").is_err());
//! # Ok::<(), remexec_core::Error>(())
//! ```

mod action_cache;
#[cfg(feature = "auth")]
pub mod auth;
mod blob_store;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "dev-certs")]
pub mod dev_certs;
mod digest;
pub mod durations;
mod error;
#[cfg(feature = "export")]
pub mod export;
pub mod fs;
pub mod lru;
#[cfg(feature = "client")]
pub mod membership;
pub mod merkle;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "metrics")]
pub mod observe;
pub mod placement;
pub mod platform;
mod resource;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timestamps;
#[cfg(feature = "tls")]
pub mod tls;
pub mod usage;

pub use action_cache::ActionCache;
pub use blob_store::{
    BlobChange, BlobStore, BlobStoreExt, ChunkStream, ListBlobs, ReadRange, StoreUsage,
    collect_chunks,
};
pub use digest::{Digest, DigestFunction, Hasher};
pub use error::{Error, Message, Result, ok_rpc_status};
pub use resource::{
    BlobRef, Compressor, REQUEST_METADATA_HEADER, RESERVED_SEGMENTS, ReadResource, WriteResource,
    validate_instance_name,
};

/// The REAPI, ByteStream, longrunning and google.rpc types this crate's API uses.
pub use bazel_remote_apis as apis;
/// Shorthand for the REAPI v2 module.
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

/// A byte count as people read it (`10 GiB`), for descriptions and reports.
pub fn human_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}
