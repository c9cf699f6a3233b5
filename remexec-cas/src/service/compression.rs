//! zstd for `compressed-blobs` and compressed batch entries, streaming where sizes are unbounded.

use bytes::Bytes;
use futures::StreamExt;
use remexec_core::{ChunkStream, Compressor, Digest, Error, Result};
use tokio_util::io::{ReaderStream, StreamReader};

/// Chunk size of decoded and encoded streams.
const CHUNK: usize = 256 * 1024;

fn to_io(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

fn from_io(e: std::io::Error, what: &str) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(e) => Error::InvalidArgument(remexec_core::Message::caused_by(what, e)),
    }
}

/// Compresses a stream of plain chunks.
pub(crate) fn compress_stream(compressor: Compressor, data: ChunkStream) -> ChunkStream {
    match compressor {
        Compressor::Zstd => {
            let reader = StreamReader::new(data.map(|r| r.map_err(to_io)));
            let encoder = async_compression::tokio::bufread::ZstdEncoder::with_quality(
                reader,
                async_compression::Level::Fastest,
            );
            ReaderStream::with_capacity(encoder, CHUNK)
                .map(|r| r.map_err(|e| from_io(e, "compressing")))
                .boxed()
        }
        _ => data,
    }
}

/// Decompresses a stream of compressed chunks.
pub(crate) fn decompress_stream(compressor: Compressor, data: ChunkStream) -> ChunkStream {
    match compressor {
        Compressor::Zstd => {
            let reader = StreamReader::new(data.map(|r| r.map_err(to_io)));
            let decoder = async_compression::tokio::bufread::ZstdDecoder::new(reader);
            ReaderStream::with_capacity(decoder, CHUNK)
                .map(|r| r.map_err(|e| from_io(e, "invalid zstd data")))
                .boxed()
        }
        _ => data,
    }
}

/// Decompresses one batch entry, refusing output larger than the digest says.
pub(crate) fn decompress_bytes(
    compressor: Compressor,
    data: Bytes,
    digest: Digest,
) -> Result<Bytes> {
    match compressor {
        Compressor::Zstd => {
            let limit =
                usize::try_from(digest.size()).map_err(|_| Error::invalid("blob too large"))?;
            zstd::bulk::decompress(&data, limit)
                .map(Bytes::from)
                .map_err(|e| {
                    Error::InvalidArgument(remexec_core::Message::caused_by(
                        format!("blob {digest}: invalid zstd data or larger than its digest says"),
                        e,
                    ))
                })
        }
        _ => Ok(data),
    }
}

/// Compresses one batch entry.
pub(crate) fn compress_bytes(compressor: Compressor, data: Bytes) -> Result<Bytes> {
    match compressor {
        Compressor::Zstd => zstd::bulk::compress(&data, 1)
            .map(Bytes::from)
            .map_err(|e| Error::internal("zstd compression failed", e)),
        _ => Ok(data),
    }
}
