//! Protocol types for remexec.
//!
//! - REAPI v2 (v2.12), ByteStream, google.longrunning and google.rpc come from the
//!   [`bazel_remote_apis`] crate and are re-exported here, so every remexec crate uses the same
//!   types.
//! - remexec's own protocols are compiled from `protos/` with protox and tonic-prost-build at build
//!   time; no system `protoc` is needed. REAPI messages they mention map to the crate's types.
//!
//! ```
//! use remexec_proto::reapi::Digest;
//! use remexec_proto::worker::v1::Lease;
//!
//! let lease = Lease {
//!     lease_id: "l1".into(),
//!     action_digest: Some(Digest { hash: "ab".repeat(32), size_bytes: 3 }),
//!     ..Default::default()
//! };
//! assert_eq!(lease.action_digest.unwrap().size_bytes, 3);
//! ```

pub use bazel_remote_apis::{build, google};

/// Shorthand for `build::bazel::remote::execution::v2`.
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

/// ByteStream with `bytes::Bytes` data fields: the same service and wire format as
/// [`google::bytestream`], without a copy per chunk. remexec serves and calls ByteStream with
/// these types; clients built on [`google::bytestream`] interoperate unchanged.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bytestream {
    tonic::include_proto!("google.bytestream");
}

/// remexec's scheduler/worker protocol.
pub mod worker {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("remexec.worker.v1");
    }
}
