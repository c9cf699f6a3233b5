//! `google.bytestream.ByteStream` as the load generator calls it. The public generated types
//! carry `data` as a `Vec<u8>`, which would copy every chunk on both sides of the measurement;
//! these messages have the same fields and tags (the wire format is the public one) with
//! `data` as [`Bytes`], sent from and decoded into shared buffers.

use bytes::Bytes;
use futures::Stream;
use http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::{Error, Result};

/// `google.bytestream.ReadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ReadRequest {
    /// The blob's resource name.
    #[prost(string, tag = "1")]
    pub(super) resource_name: String,
    /// Where to start.
    #[prost(int64, tag = "2")]
    pub(super) read_offset: i64,
    /// Most bytes to read (0: all).
    #[prost(int64, tag = "3")]
    pub(super) read_limit: i64,
}

/// `google.bytestream.ReadResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ReadResponse {
    /// The next bytes.
    #[prost(bytes = "bytes", tag = "10")]
    pub(super) data: Bytes,
}

/// `google.bytestream.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WriteRequest {
    /// The upload's resource name (first message only).
    #[prost(string, tag = "1")]
    pub(super) resource_name: String,
    /// Where `data` goes.
    #[prost(int64, tag = "2")]
    pub(super) write_offset: i64,
    /// Whether this is the last message.
    #[prost(bool, tag = "3")]
    pub(super) finish_write: bool,
    /// The bytes.
    #[prost(bytes = "bytes", tag = "10")]
    pub(super) data: Bytes,
}

/// `google.bytestream.WriteResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct WriteResponse {
    /// Bytes the server holds.
    #[prost(int64, tag = "1")]
    pub(super) committed_size: i64,
}

/// Messages of up to 64 MiB either way.
const MAX_MESSAGE: usize = 64 << 20;

fn client(channel: &Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

async fn ready(grpc: &mut tonic::client::Grpc<Channel>) -> Result<()> {
    grpc.ready()
        .await
        .map_err(|e| Error::Unavailable(crate::Message::caused_by("ByteStream", e)))
}

/// `ByteStream/Read`.
pub(super) async fn read(
    channel: &Channel,
    request: ReadRequest,
) -> Result<tonic::Streaming<ReadResponse>> {
    let mut grpc = client(channel);
    ready(&mut grpc).await?;
    let path = PathAndQuery::from_static("/google.bytestream.ByteStream/Read");
    let codec = tonic_prost::ProstCodec::<ReadRequest, ReadResponse>::default();
    let response = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?;
    Ok(response.into_inner())
}

/// `ByteStream/Write`.
pub(super) async fn write(
    channel: &Channel,
    requests: impl Stream<Item = WriteRequest> + Send + 'static,
) -> Result<WriteResponse> {
    let mut grpc = client(channel);
    ready(&mut grpc).await?;
    let path = PathAndQuery::from_static("/google.bytestream.ByteStream/Write");
    let codec = tonic_prost::ProstCodec::<WriteRequest, WriteResponse>::default();
    let response = grpc
        .client_streaming(tonic::Request::new(requests), path, codec)
        .await?;
    Ok(response.into_inner())
}
