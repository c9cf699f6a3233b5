//! An in-process server for the gRPC tests.

#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use remexec_cas::{
    CacheServices, CompletenessCheckingCache, DiskActionCache, DiskStore, DiskStoreOptions, Limits,
};
use remexec_core::{ActionCache, BlobStore};
use remexec_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::reapi::action_cache_client::ActionCacheClient;
use remexec_proto::reapi::capabilities_client::CapabilitiesClient;
use remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

pub struct TestServer {
    pub channel: Channel,
    pub store: Arc<dyn BlobStore>,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        Self::start_sized(limits, 1 << 30).await
    }

    /// With a disk store of `budget` bytes.
    pub async fn start_sized(limits: Limits, budget: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(
            DiskStore::open(
                dir.path().join("cas"),
                DiskStoreOptions {
                    budget,
                    sync: false,
                    ..Default::default()
                },
            )
            .await
            .unwrap(),
        );
        let ac: Arc<dyn ActionCache> = Arc::new(
            DiskActionCache::open(dir.path().join("ac"), 1 << 20, false)
                .await
                .unwrap(),
        );
        let ac = Arc::new(CompletenessCheckingCache::new(ac, store.clone()));
        let routes = CacheServices::new(store.clone(), ac)
            .with_limits(limits)
            .into_routes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            store,
            addr,
            dir,
        }
    }

    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    pub fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel.clone())
    }

    pub fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel.clone())
    }
}

/// Asserts a gRPC error's code and that its message mentions `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

/// Reads a blob through ByteStream Read: the whole stream, or its error.
pub async fn read_all(
    server: &TestServer,
    name: String,
    offset: i64,
    limit: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = server
        .bytestream()
        .read(remexec_proto::google::bytestream::ReadRequest {
            resource_name: name,
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = tokio_stream::StreamExt::next(&mut stream).await {
        out.extend(msg?.data);
    }
    Ok(out)
}
