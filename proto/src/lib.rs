//! Protocol types for remexec.
//!
//! - REAPI v2 (v2.12), ByteStream, google.longrunning and google.rpc come from the
//!   [`bazel_remote_apis`] crate and are re-exported here, so every remexec crate uses the same
//!   types.
//! - The Build Event Service (`google.devtools.build.v1`) is compiled from the vendored
//!   googleapis files in `reflection/`, and Bazel's Build Event Protocol
//!   (`build_event_stream`) from a wire-compatible subset in `protos/`.
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

/// remexec's cluster service: where blobs are, and the state of the cluster's CAS.
pub mod cluster {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("remexec.cluster.v1");
    }
}

/// What each action used (CPU, memory, I/O, staging), as workers report it in
/// `ExecutedActionMetadata.auxiliary_metadata`.
pub mod usage {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("remexec.usage.v1");
    }
}

/// The Build Event Service (`google.devtools.build.v1`), through which Bazel streams a build's
/// events (`--bes_backend`).
pub mod build_events {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("google.devtools.build.v1");
    }
}

/// Bazel's Build Event Protocol (`build_event_stream.BuildEvent`, the `bazel_event` of the Build
/// Event Service): a wire-compatible subset, enough for the invocation pages.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod build_event_stream {
    tonic::include_proto!("build_event_stream");
}

pub use prost_types;

/// What remexec's Remote Asset service keeps in the Action Cache for each association.
pub mod asset {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("remexec.asset.v1");
    }
}

/// An encoded `google.protobuf.FileDescriptorSet` of every service remexec serves except
/// `grpc.health.v1` (which `tonic-health` describes itself), for gRPC server reflection, e.g. with
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
///
/// It holds the real REAPI v2 `remote_execution.proto` (services `Execution`, `ActionCache`,
/// `ContentAddressableStorage` and `Capabilities`), `google/bytestream/bytestream.proto`,
/// `google/longrunning/operations.proto`, the Build Event Service's
/// `google/devtools/build/v1/publish_build_event.proto` (`PublishBuildEvent`), remexec's own
/// `remexec/worker/v1/worker.proto` (`WorkerService`) and all the files they import, with comments and custom options. The
/// upstream files are vendored under `proto/reflection/` (see its README for their origin);
/// `build.rs` compiles them with protox, apart from the name-only stubs that the Rust code
/// generation uses.
///
/// ```
/// let set = remexec_proto::FILE_DESCRIPTOR_SET;
/// assert!(!set.is_empty());
/// ```
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reflection_descriptor_set.bin"));
