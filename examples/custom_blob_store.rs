//! Embedding remexec's CAS services, backed by your own `BlobStore`, in your own tonic server.
//!
//! Run with `cargo run -p remexec-examples --example custom_blob_store`. It starts a server on a
//! free loopback port that serves the REAPI cache services next to an embedder's own routes,
//! uploads and reads back a blob through gRPC as Bazel would, and exits.
//!
//! Its tests (`cargo test -p remexec-examples`) run remexec's `BlobStore` conformance suite on
//! the store, as every custom store should.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use remexec_cas::{CacheServices, MemoryActionCache};
use remexec_core::{
    BlobStore, ChunkStream, Digest, DigestFunction, Error, ReadRange, Result, collect_chunks,
};
use remexec_proto::google::bytestream::ReadRequest;
use remexec_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use remexec_proto::reapi::{BatchUpdateBlobsRequest, batch_update_blobs_request};

/// A toy store: a HashMap that counts the blobs it holds. Any backend works the same way.
#[derive(Debug, Default)]
struct CountingStore {
    blobs: Mutex<HashMap<(String, Digest), bytes::Bytes>>,
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let blobs = self
            .blobs
            .lock()
            .map_err(|_| Error::Internal("poisoned".into()))?;
        Ok(digests
            .iter()
            .filter(|d| !blobs.contains_key(&(instance.to_string(), **d)))
            .copied()
            .collect())
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        // collect_chunks ends with an error if the (verifying) stream was bad: then store nothing.
        let bytes = collect_chunks(data, digest.size()).await?;
        if bytes.len() as u64 != digest.size() {
            return Err(Error::invalid("length does not match the digest"));
        }
        let mut blobs = self
            .blobs
            .lock()
            .map_err(|_| Error::Internal("poisoned".into()))?;
        blobs.insert((instance.to_string(), digest), bytes);
        println!("store now holds {} blob(s)", blobs.len());
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let blobs = self
            .blobs
            .lock()
            .map_err(|_| Error::Internal("poisoned".into()))?;
        let Some(bytes) = blobs.get(&(instance.to_string(), digest)).cloned() else {
            return Ok(None);
        };
        Ok(Some(range.stream_of(&bytes)?))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(CountingStore::default());
    let ac = Arc::new(MemoryActionCache::new(16 << 20));
    let cache = CacheServices::new(store, ac);

    // Your own server: your settings, your other services, plus remexec's routes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(cache.into_routes())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    println!("serving REAPI on {addr}");

    // A client uploads a blob in a batch, then reads it through ByteStream.
    let url = format!("http://{addr}");
    let data = b"hello from an embedded remexec".to_vec();
    let digest = DigestFunction::Sha256.digest_of(&data);
    let mut cas = ContentAddressableStorageClient::connect(url.clone()).await?;
    let entry = batch_update_blobs_request::Request {
        digest: Some(digest.to_proto()),
        data: data.clone(),
        compressor: 0,
    };
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![entry],
            ..Default::default()
        })
        .await?;
    assert_eq!(
        resp.into_inner().responses[0]
            .status
            .as_ref()
            .map(|s| s.code),
        Some(0)
    );

    let mut bytestream = ByteStreamClient::connect(url).await?;
    let mut reads = bytestream
        .read(ReadRequest {
            resource_name: format!("blobs/{digest}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut back = Vec::new();
    while let Some(chunk) = reads.next().await {
        back.extend(chunk?.data);
    }
    assert_eq!(back, data);
    println!("read back {} bytes for {digest}", back.len());

    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store keeps the `BlobStore` contract: every custom store should run this suite.
    #[tokio::test]
    async fn counting_store_conformance() {
        remexec_core::testing::blob_store_conformance(Arc::new(CountingStore::default())).await;
    }
}
