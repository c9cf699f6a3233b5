//! The client layer: what remexec's own tools, its worker and embedders share to talk to a
//! REAPI server and to move trees between a file system and the CAS.
//!
//! - [`endpoint()`], [`connect`]: channels from `grpc://` and `grpcs://` URLs with remexec's HTTP/2 windows,
//!   and clients with 64 MiB message limits ([`cas_client`], [`execution_client`], ...).
//! - [`ActionBuilder`]: a `Command` and an `Action`, sorted as REAPI wants, encoded, uploaded.
//! - [`execute()`]: Execute, then follow the operation to its `ExecuteResponse`, reconnecting
//!   with `WaitExecution` if the stream breaks.
//! - [`upload_directory`], [`UploadPlan`]: a local tree into the CAS, scanned and hashed in one
//!   blocking pass that never follows a symlink nor opens a FIFO or device, then one
//!   `FindMissingBlobs` per batch and only the missing blobs uploaded.
//! - [`Materializer`], [`download_outputs`]: trees out of the CAS onto disk, validated first,
//!   never written through a symlink, every blob checked against its digest.
//! - [`show`]: readable summaries of actions, results and responses.
//!
//! Blocking file-system work runs on tokio's blocking pool. The store side is any
//! [`BlobStore`](crate::BlobStore): a remote CAS through `remexec_cas::GrpcStore`, or a local
//! one.
//!
//! ```no_run
//! use remexec_core::client::{self, ActionBuilder, FollowOptions};
//! use remexec_core::{BlobStore, DigestFunction};
//!
//! # async fn run(store: &dyn BlobStore) -> remexec_core::Result<()> {
//! let f = DigestFunction::Sha256;
//! let channel = client::connect("grpc://127.0.0.1:8980").await?;
//! let (root, _) = client::upload_directory(store, "", f, "src".as_ref()).await?;
//! let built = ActionBuilder::new(["/bin/ls", "-l"]).env("PATH", "/bin").build(f, root);
//! built.upload(store, "").await?;
//! let request = remexec_core::reapi::ExecuteRequest {
//!     action_digest: Some(built.action_digest.to_proto()),
//!     digest_function: f.to_proto(),
//!     ..Default::default()
//! };
//! let response = client::execute(channel, request, &FollowOptions::default(), |name, meta| {
//!     eprintln!("{name}: stage {}", meta.stage);
//! })
//! .await?;
//! client::status_result(response.status.as_ref())?;
//! if let Some(result) = &response.result {
//!     client::download_outputs(store, "", f, result, "out".as_ref()).await?;
//! }
//! # Ok(())
//! # }
//! ```

mod action;
#[cfg(feature = "bench")]
pub mod bench;
mod endpoint;
mod execute;
mod materialize;
pub mod show;
mod upload;

#[cfg(test)]
mod tests;

pub use action::{ActionBuilder, BuiltAction};
pub use endpoint::{
    CONNECT_TIMEOUT, CONNECTION_WINDOW, Channels, ClientIdentity, ClientTls, KEEPALIVE, MAX_FRAME,
    MAX_MESSAGE_SIZE, STREAM_WINDOW, action_cache_client, capabilities_client, cas_client, connect,
    connect_lazy, connect_lazy_with, connect_with, endpoint, endpoint_with, execution_client,
};
pub use execute::{FollowOptions, execute, operation_response};
pub use materialize::{
    CasFiles, FileSource, MAX_TREE_SIZE, Materializer, Safety, download_directory,
    download_outputs, output_tree,
};
pub use upload::{
    BATCH_UPLOAD_BYTES, MAX_SCAN_DEPTH, ScanOptions, UploadPlan, batch_update_blobs,
    check_output_symlink, is_executable, read_symlink, upload_blobs, upload_directory, upload_file,
    upload_open_file,
};

use crate::apis::google::rpc::Status as RpcStatus;
use crate::{Error, Result};

/// `Ok` for a missing or `OK` `google.rpc.Status` (inside a batch or `ExecuteResponse`), else
/// the [`enum@Error`] for its code ([`Error::from_rpc_status`]).
pub fn status_result(status: Option<&RpcStatus>) -> Result<()> {
    match status {
        Some(s) if s.code != 0 => Err(Error::from_rpc_status(s)),
        _ => Ok(()),
    }
}

use crate::fs::blocking;
