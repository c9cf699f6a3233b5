//! [`GrpcStore`]: a [`BlobStore`] that is a client of another server's REAPI CAS and ByteStream.
//!
//! Workers use it to reach a scheduler's CAS; later, peers use it to reach each other.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use remexec_core::{
    BlobRef, BlobStore, ChunkStream, Compressor, Digest, Error, ReadRange, ReadResource, Result,
    WriteResource, collect_chunks,
};
use remexec_proto::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::bytestream::{ReadRequest, WriteRequest};
use remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use remexec_proto::reapi::{
    BatchUpdateBlobsRequest, FindMissingBlobsRequest, batch_update_blobs_request,
};
use tonic::transport::Channel;

/// Blobs up to this size are uploaded with BatchUpdateBlobs, larger ones with ByteStream. A
/// batch request holds its blob in a `Vec`, gathered and copied twice before it is sent, while
/// ByteStream passes the chunks on as they came (`Bytes`): at 1 MiB that was most of a cluster
/// scheduler's copying.
const BATCH_LIMIT: u64 = 64 * 1024;
/// Chunks smaller than this are gathered (copied once) into messages of about this size; larger
/// ones are passed on as they are.
const GATHER: usize = 256 * 1024;

/// Request metadata under which a FindMissingBlobs only looks: remexec's CAS service does not
/// count the blobs found as referenced (see [`BlobStore::reference`]). What a store asks for
/// itself (repairs, existence checks before a write) is sent with it; a server that does not
/// know it ignores it.
pub const PEEK_HEADER: &str = "remexec-peek";
/// ByteStream write message size.
const WRITE_CHUNK: usize = 1024 * 1024;
/// Digests per FindMissingBlobs call.
const FIND_BATCH: usize = 10_000;

/// Sends `data`, the content of `digest`, as the ByteStream messages of the write `name`: chunks
/// of at least [`GATHER`] bytes as they came (split at [`WRITE_CHUNK`]), smaller ones gathered.
/// The message that reaches the digest's size finishes the write; a stream of another length
/// fails with `InvalidArgument`.
async fn feed(
    mut data: ChunkStream,
    name: String,
    digest: Digest,
    tx: tokio::sync::mpsc::Sender<WriteRequest>,
) -> Result<()> {
    let total = digest.size();
    let mut offset = 0u64;
    let mut gathered = bytes::BytesMut::new();
    let send = |piece: Bytes, offset: &mut u64| {
        let len = piece.len() as u64;
        let req = WriteRequest {
            resource_name: if *offset == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: *offset as i64,
            finish_write: *offset + len == total,
            data: piece,
        };
        *offset += len;
        req
    };
    loop {
        let chunk = data.next().await.transpose()?;
        let ended = chunk.is_none();
        let mut out = match chunk {
            Some(chunk) if gathered.is_empty() && chunk.len() >= GATHER => chunk,
            Some(chunk) => {
                gathered.extend_from_slice(&chunk);
                if gathered.len() < GATHER {
                    continue;
                }
                gathered.split().freeze()
            }
            None => gathered.split().freeze(),
        };
        if offset + out.len() as u64 > total {
            return Err(crate::files::size_mismatch(
                digest,
                offset + out.len() as u64,
                false,
            ));
        }
        while !out.is_empty() {
            let piece = out.split_to(out.len().min(WRITE_CHUNK));
            if tx.send(send(piece, &mut offset)).await.is_err() {
                // The call ended; it reports why.
                return Ok(());
            }
        }
        if ended {
            break;
        }
    }
    if offset != total {
        return Err(crate::files::size_mismatch(digest, offset, true));
    }
    Ok(())
}

/// Where a gRPC client's requests go upstream: the instance name and how it is described.
/// Shared by [`GrpcStore`] and [`GrpcActionCache`](crate::GrpcActionCache).
#[derive(Debug, Clone, Default)]
pub(crate) struct Upstream {
    /// The upstream instance name for every local one; `None` passes names through.
    pub(crate) instance: Option<String>,
    /// What [`describe`](Self::describe) names the server by.
    pub(crate) label: Option<String>,
}

impl Upstream {
    /// The upstream instance name for the local `instance`.
    pub(crate) fn instance(&self, instance: &str) -> String {
        self.instance.as_deref().unwrap_or(instance).to_string()
    }

    /// `Kind`, `Kind(label)`, `Kind(label, instance "x")` or `Kind(instance "x")`.
    pub(crate) fn describe(&self, kind: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(kind)?;
        match (&self.label, &self.instance) {
            (None, None) => Ok(()),
            (Some(label), None) => write!(f, "({label})"),
            (None, Some(name)) => write!(f, "(instance {name:?})"),
            (Some(label), Some(name)) => write!(f, "({label}, instance {name:?})"),
        }
    }
}

/// A remote CAS reached over gRPC. Instance names are passed through unchanged, unless
/// [`with_upstream_instance`](Self::with_upstream_instance) maps them all onto one.
#[derive(Debug, Clone)]
pub struct GrpcStore {
    channel: Channel,
    upstream: Upstream,
}

impl GrpcStore {
    /// A store that talks to the server behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            upstream: Default::default(),
        }
    }

    /// Sends every request under the instance name `name` upstream, whatever the local
    /// instance name; `None` (the default) passes local names through.
    pub fn with_upstream_instance(mut self, name: Option<&str>) -> Self {
        self.upstream.instance = name.map(str::to_string);
        self
    }

    /// Names the server in [`describe`](BlobStore::describe), e.g. its URL: `Grpc(grpc://...)`.
    /// Never pass anything secret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.upstream.label = Some(label.into());
        self
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        remexec_core::client::cas_client(self.channel.clone())
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

impl GrpcStore {
    /// FindMissingBlobs, in batches per digest function; with `peek`, under [`PEEK_HEADER`].
    async fn ask_missing(
        &self,
        instance: &str,
        digests: &[Digest],
        peek: bool,
    ) -> Result<Vec<Digest>> {
        let mut missing = std::collections::HashSet::new();
        let mut by_function: Vec<(remexec_core::DigestFunction, Vec<Digest>)> = Vec::new();
        for d in digests {
            match by_function.iter_mut().find(|(f, _)| *f == d.function()) {
                Some((_, list)) => list.push(*d),
                None => by_function.push((d.function(), vec![*d])),
            }
        }
        for (function, list) in by_function {
            for chunk in list.chunks(FIND_BATCH) {
                let req = FindMissingBlobsRequest {
                    instance_name: self.upstream.instance(instance),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: function.to_proto(),
                };
                let mut req = tonic::Request::new(req);
                if peek {
                    req.metadata_mut().insert(
                        PEEK_HEADER,
                        tonic::metadata::MetadataValue::from_static("1"),
                    );
                }
                let resp = self.cas().find_missing_blobs(req).await?.into_inner();
                for d in resp.missing_blob_digests {
                    missing.insert(Digest::from_proto(function, &d)?);
                }
            }
        }
        // Keep the input order, as the contract asks.
        Ok(digests
            .iter()
            .filter(|d| missing.contains(d))
            .copied()
            .collect())
    }
}

#[async_trait]
impl BlobStore for GrpcStore {
    /// Asks with [`PEEK_HEADER`]: a remexec upstream does not count this as a reference.
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.ask_missing(instance, digests, true).await
    }

    /// A plain FindMissingBlobs, which every REAPI server (remexec's included) counts as a
    /// reference.
    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.ask_missing(instance, digests, false).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        if digest.size() <= BATCH_LIMIT {
            let bytes = collect_chunks(data, digest.size()).await?;
            let req = BatchUpdateBlobsRequest {
                instance_name: self.upstream.instance(instance),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(digest.to_proto()),
                    data: bytes.to_vec(),
                    compressor: 0,
                }],
                digest_function: digest.function().to_proto(),
            };
            let resp = self.cas().batch_update_blobs(req).await?.into_inner();
            let status = resp.responses.into_iter().next().and_then(|r| r.status);
            return remexec_core::client::status_result(status.as_ref());
        }
        let name = WriteResource {
            instance: self.upstream.instance(instance),
            uuid: uuid::Uuid::new_v4().to_string(),
            blob: BlobRef {
                compressor: Compressor::Identity,
                digest,
            },
            metadata: None,
        }
        .to_string();
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let feeder = feed(data, name, digest, tx);
        let mut client = self.bytestream();
        let call = client.write(tokio_stream::wrappers::ReceiverStream::new(rx));
        let (fed, written) = tokio::join!(feeder, call);
        fed?;
        written?;
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        if range.limit == Some(0) {
            // ByteStream reads `read_limit: 0` as "no limit": answer a zero-length read here.
            if !self.find_missing(instance, &[digest]).await?.is_empty() {
                return Ok(None);
            }
            range.resolve(digest.size())?;
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let name = ReadResource {
            instance: self.upstream.instance(instance),
            blob: BlobRef {
                compressor: Compressor::Identity,
                digest,
            },
        }
        .to_string();
        let req = ReadRequest {
            resource_name: name,
            read_offset: range.offset as i64,
            read_limit: range.limit.map_or(0, |l| l as i64),
        };
        let mut stream = match self.bytestream().read(req).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        // Some servers report a missing blob as the first item of the stream.
        let first = match stream.message().await {
            Ok(first) => first,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let head = futures::stream::iter(first.map(|m| Ok(m.data)));
        let rest = stream.map(|m| m.map(|m| m.data).map_err(Error::from));
        Ok(Some(head.chain(rest).boxed()))
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.upstream.describe("Grpc", f)
    }
    /// A REAPI server refuses a blob that does not hash to its digest (`INVALID_ARGUMENT`).
    fn verifies_writes(&self) -> bool {
        true
    }
    /// A remexec worker's CAS port says (`Cluster/Status`); another server cannot (`None`).
    async fn room(&self) -> Result<Option<u64>> {
        use remexec_proto::cluster::v1::{StatusRequest, cluster_client::ClusterClient};
        let mut client = ClusterClient::new(self.channel.clone());
        match client.status(StatusRequest {}).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                let own = answer.members.first().filter(|_| !answer.worker.is_empty());
                Ok(own.and_then(|m| m.room))
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(s.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryActionCache, MemoryStore};
    use remexec_core::BlobStoreExt;
    use std::sync::Arc;

    /// `store` served on loopback, with an empty Action Cache.
    async fn serve(store: Arc<MemoryStore>) -> (String, Channel) {
        let ac = Arc::new(MemoryActionCache::new(1 << 20));
        crate::service::serve_on_loopback(store, ac).await
    }

    #[tokio::test]
    async fn conformance_against_a_real_server() {
        let (_, channel) = serve(Arc::new(MemoryStore::new(256 << 20))).await;
        // The server hashes what it is sent, so the client store verifies content too.
        let caps = remexec_core::testing::BlobStoreCapabilities::new().verifies_content(true);
        remexec_core::testing::blob_store_conformance_with(Arc::new(GrpcStore::new(channel)), caps)
            .await;
    }

    #[tokio::test]
    async fn every_local_instance_maps_onto_the_upstream_instance() {
        let back = Arc::new(MemoryStore::new(16 << 20));
        let (url, channel) = serve(back.clone()).await;
        let store = GrpcStore::new(channel)
            .with_upstream_instance(Some("up/stream"))
            .with_label(url.clone());
        assert_eq!(
            (&store as &dyn BlobStore).to_string(),
            format!("Grpc({url}, instance \"up/stream\")")
        );
        let small = remexec_core::testing::content(1, 100);
        let large = remexec_core::testing::content(2, (BATCH_LIMIT + 1) as usize);
        for (local, data) in [("a", &small), ("b/c", &large)] {
            let digest = remexec_core::DigestFunction::Sha256.digest_of(data);
            store.put_bytes(local, digest, data.clone()).await.unwrap();
            // Upstream, it is under the upstream name only.
            assert!(back.contains("up/stream", digest).await.unwrap());
            assert!(!back.contains(local, digest).await.unwrap());
            // Every local name reads it back through the same upstream name.
            for reader in ["", "a", "other"] {
                assert!(
                    store
                        .find_missing(reader, &[digest])
                        .await
                        .unwrap()
                        .is_empty()
                );
                let got = store.get_bytes(reader, digest, u64::MAX).await.unwrap();
                assert_eq!(got.as_ref(), Some(data));
            }
        }
    }

    /// Streamed uploads pass chunks on as they come, gathering small ones: every chunking
    /// arrives whole, and a stream shorter or longer than its digest says stores nothing.
    #[tokio::test]
    async fn streamed_uploads_arrive_whole_in_any_chunking() {
        let back = Arc::new(MemoryStore::new(64 << 20));
        let (_, channel) = serve(back.clone()).await;
        let store = GrpcStore::new(channel);
        let f = remexec_core::DigestFunction::Sha256;
        let sizes = [BATCH_LIMIT as usize + 1, GATHER + 7, 3 * WRITE_CHUNK + 5];
        for (i, size) in sizes.into_iter().enumerate() {
            for chunk in [1000, 100 * 1024, GATHER, WRITE_CHUNK + WRITE_CHUNK / 2] {
                let data = remexec_core::testing::content((i * 10 + chunk) as u64, size);
                let digest = f.digest_of(&data);
                let stream = remexec_core::testing::chunked(data.clone(), chunk);
                store.put("", digest, stream).await.unwrap();
                let got = back.get_bytes("", digest, u64::MAX).await.unwrap();
                assert_eq!(got.as_ref(), Some(&data), "{size} in chunks of {chunk}");
            }
        }
        let data = remexec_core::testing::content(99, 300 * 1024);
        let digest = f.digest_of(&data);
        for wrong in [
            data.slice(..data.len() - 1),
            [data.clone(), data.slice(..1)].concat().into(),
        ] {
            let stream = remexec_core::testing::chunked(wrong, 64 * 1024);
            let err = store.put("", digest, stream).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(!back.contains("", digest).await.unwrap());
        }
    }
}
