//! The REAPI gRPC services over a [`BlobStore`] and an [`ActionCache`].
//!
//! [`CacheServices`] builds them all; each service can also be mounted on its own in an
//! embedder's tonic server.

mod action_cache;
mod bytestream;
mod capabilities;
mod cas;
mod cluster;
mod compression;
mod peer;
mod watch;

use std::sync::Arc;

use remexec_core::{ActionCache, BlobStore, DigestFunction, Error, Result, validate_instance_name};

pub use action_cache::ActionCacheService;
pub use bytestream::ByteStreamService;
pub use capabilities::{CapabilitiesService, HIGH_API_VERSION, LOW_API_VERSION};
pub use cas::CasService;
pub use cluster::ClusterService;
pub use peer::PeerService;

use remexec_proto::bytestream::byte_stream_server::ByteStreamServer;
use remexec_proto::reapi::action_cache_server::ActionCacheServer;
use remexec_proto::reapi::capabilities_server::CapabilitiesServer;
use remexec_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;

use crate::store::verifying::VerifyingStore;

/// Limits the services enforce and advertise.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest total of blob bytes in one BatchUpdateBlobs or BatchReadBlobs (advertised as
    /// `max_batch_total_size_bytes`).
    pub max_batch_total_size: u64,
    /// Largest gRPC message accepted; a little above the batch limit so that an oversized batch
    /// gets a clear `INVALID_ARGUMENT` instead of a transport error.
    pub max_message_size: usize,
    /// Most bytes of stdout, stderr and output files inlined into one GetActionResult reply.
    pub max_inline_size: u64,
    /// Most directories in one GetTree page.
    pub max_tree_page_size: usize,
    /// How long an interrupted ByteStream upload waits to be resumed.
    pub upload_resume_window: std::time::Duration,
    /// How long a ByteStream Write may go without receiving data before it is interrupted
    /// (and parked for resumption).
    pub upload_idle_timeout: std::time::Duration,
    /// Most interrupted uploads parked for resumption at once; beyond it, interrupted uploads
    /// are dropped. Parked uploads hold a file and a task, never a thread.
    pub max_parked_uploads: usize,
    /// Largest blob accepted by ByteStream Write or BatchUpdateBlobs.
    pub max_blob_size: u64,
    /// Most digests in one FindMissingBlobs request.
    pub max_find_missing_digests: usize,
    /// Most blobs in one BatchUpdateBlobs or BatchReadBlobs request.
    pub max_batch_blobs: usize,
}

impl Limits {
    /// `InvalidArgument` for a blob over [`max_blob_size`](Self::max_blob_size).
    pub fn check_blob_size(&self, digest: remexec_core::Digest) -> remexec_core::Result<()> {
        let max = self.max_blob_size;
        if digest.size() > max {
            return Err(remexec_core::Error::invalid(format!(
                "blob {digest} is over the max_blob_size limit of {max} bytes"
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_total_size: 4 * 1024 * 1024,
            max_message_size: 8 * 1024 * 1024,
            max_inline_size: 1024 * 1024,
            max_tree_page_size: 1000,
            upload_resume_window: std::time::Duration::from_secs(60),
            upload_idle_timeout: std::time::Duration::from_secs(60),
            max_parked_uploads: 256,
            max_blob_size: 64 << 30,
            max_find_missing_digests: 100_000,
            max_batch_blobs: 10_000,
        }
    }
}

/// All the cache services of one server, sharing a store, an action cache and limits.
///
/// Writes through these services are always hash-verified: by the store itself if it says so
/// ([`BlobStore::verifies_writes`]: a tree with a [`VerifyingStore`], a cluster's replicated
/// store), else by a [`VerifyingStore`] the services put in front of it. Each write is hashed
/// once.
#[derive(Clone, Debug)]
pub struct CacheServices {
    pub(crate) store: Arc<dyn BlobStore>,
    pub(crate) ac: Arc<dyn ActionCache>,
    pub(crate) limits: Limits,
    pub(crate) execution: Option<remexec_proto::reapi::ExecutionCapabilities>,
    pub(crate) metrics: remexec_core::metrics::Metrics,
}

impl CacheServices {
    /// Services over `store` (verified on write, by itself or here) and `ac`, with default
    /// limits.
    pub fn new(store: Arc<dyn BlobStore>, ac: Arc<dyn ActionCache>) -> Self {
        Self {
            store: VerifyingStore::unless_verified(store),
            ac,
            limits: Limits::default(),
            execution: None,
            metrics: remexec_core::metrics::Metrics::new(),
        }
    }

    /// The store as the services write to it: the one given, behind a [`VerifyingStore`] unless
    /// it verifies writes itself.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// Records into `metrics`: blob bytes in and out ([`MeteredStore`](crate::MeteredStore)),
    /// Action Cache hits and misses, and (when scraped) the store's usage as `store="cas"`.
    pub fn with_metrics(mut self, metrics: remexec_core::metrics::Metrics) -> Self {
        let store = Arc::clone(&self.store);
        metrics.on_scrape(move |m| {
            if let Some(usage) = store.usage() {
                m.store_usage("cas", usage);
            }
        });
        self.store = Arc::new(crate::MeteredStore::new(self.store, metrics.clone()));
        self.metrics = metrics;
        self
    }

    /// Replaces the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Advertises execution in Capabilities, for servers that also mount an Execution service.
    pub fn with_execution(
        mut self,
        execution: remexec_proto::reapi::ExecutionCapabilities,
    ) -> Self {
        self.execution = Some(execution);
        self
    }

    /// The Capabilities service.
    pub fn capabilities(&self) -> CapabilitiesServer<CapabilitiesService> {
        let service = CapabilitiesService::new(self.limits.clone());
        CapabilitiesServer::new(match &self.execution {
            Some(execution) => service.with_execution(execution.clone()),
            None => service,
        })
    }

    /// The ContentAddressableStorage service.
    pub fn cas(&self) -> ContentAddressableStorageServer<CasService> {
        ContentAddressableStorageServer::new(CasService::new(self.clone()))
            .max_decoding_message_size(self.limits.max_message_size)
            .max_encoding_message_size(self.limits.max_message_size)
    }

    /// The ByteStream service.
    pub fn byte_stream(&self) -> ByteStreamServer<ByteStreamService> {
        ByteStreamServer::new(ByteStreamService::new(self.clone()))
            .max_decoding_message_size(self.limits.max_message_size)
            .max_encoding_message_size(self.limits.max_message_size)
    }

    /// The ActionCache service.
    pub fn action_cache(&self) -> ActionCacheServer<ActionCacheService> {
        ActionCacheServer::new(ActionCacheService::new(self.clone()))
            .max_decoding_message_size(self.limits.max_message_size)
            .max_encoding_message_size(self.limits.max_message_size)
    }

    /// All four services as tonic routes, ready for `Server::builder().add_routes(...)` or to
    /// merge with an embedder's own services.
    pub fn into_routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.capabilities())
            .add_service(self.cas())
            .add_service(self.byte_stream())
            .add_service(self.action_cache())
    }
}

/// Validates a request's instance name and digest function.
pub(crate) fn request_scope(instance: &str, digest_function: i32) -> Result<DigestFunction> {
    validate_instance_name(instance)?;
    DigestFunction::from_proto(digest_function)
}

/// The action a GetActionResult request names, its instance name and digest function checked.
pub(crate) fn action_to_get(
    req: &remexec_proto::reapi::GetActionResultRequest,
) -> Result<remexec_core::Digest> {
    let function = request_scope(&req.instance_name, req.digest_function)?;
    remexec_core::Digest::from_field(function, req.action_digest.as_ref(), "action_digest")
}

/// The action and result an UpdateActionResult request stores, its instance name, digest
/// function and result checked.
pub(crate) fn result_to_store(
    req: remexec_proto::reapi::UpdateActionResultRequest,
) -> Result<(remexec_core::Digest, remexec_proto::reapi::ActionResult)> {
    let function = request_scope(&req.instance_name, req.digest_function)?;
    let action =
        remexec_core::Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
    let result = req
        .action_result
        .ok_or_else(|| Error::invalid("action_result is missing"))?;
    remexec_core::merkle::validate_action_result(function, &result)?;
    Ok((action, result))
}

/// Converts a core result into a tonic response.
pub(crate) fn respond<T>(result: Result<T>) -> Result<tonic::Response<T>, tonic::Status> {
    result.map(tonic::Response::new).map_err(|e: Error| {
        if e.code() == tonic::Code::Internal {
            tracing::error!(error = %e, "request failed");
        }
        e.into()
    })
}

/// Serves `store` and `ac` on a loopback port for tests: the URL and a channel to it.
#[cfg(test)]
pub(crate) async fn serve_on_loopback(
    store: std::sync::Arc<dyn BlobStore>,
    ac: std::sync::Arc<dyn remexec_core::ActionCache>,
) -> (String, tonic::transport::Channel) {
    let routes = CacheServices::new(store, ac).into_routes();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("grpc://{addr}");
    let channel = remexec_core::client::connect(&url).await.expect("connect");
    (url, channel)
}
