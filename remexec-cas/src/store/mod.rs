//! [`BlobStore`](remexec_core::BlobStore) backends and wrappers, one per module.

pub mod disk;
pub mod grpc;
pub mod memory;
pub mod verifying;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use remexec_core::{ChunkStream, Digest, Error, Result};

/// Length mismatch error, shared so every backend words it the same way.
pub(crate) fn size_mismatch(digest: Digest, got: u64, finished: bool) -> Error {
    if finished {
        Error::invalid(format!(
            "blob {digest}: received {got} bytes, digest says {}",
            digest.size()
        ))
    } else {
        Error::invalid(format!(
            "blob {digest}: received more than the {} bytes the digest says",
            digest.size()
        ))
    }
}

/// Reads a whole stream into memory, checking that its length equals `digest.size()`.
pub(crate) async fn read_exact_len(mut data: ChunkStream, digest: Digest) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(digest.size() as usize);
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > digest.size() {
            return Err(size_mismatch(
                digest,
                buf.len() as u64 + chunk.len() as u64,
                false,
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != digest.size() {
        return Err(size_mismatch(digest, buf.len() as u64, true));
    }
    Ok(buf.freeze())
}
