//! [`ActionCache`](remexec_core::ActionCache) backends and wrappers, one per module.

pub mod completeness;
pub mod disk;
pub mod grpc;
pub mod memory;
pub mod object;
pub mod sharded;
pub mod tiered;

use bytes::Bytes;
use prost::Message;
use remexec_core::reapi::ActionResult;
use remexec_core::{Error, Result};

/// Largest stored entry of the persistent caches (disk, object store), format byte included.
pub(crate) const MAX_ENTRY_SIZE: u64 = 16 * 1024 * 1024 + 1;

/// First byte of every stored entry. An empty `ActionResult` encodes to zero bytes, so without it
/// a truncated entry would read as a valid "exit 0, no outputs" result.
const FORMAT_V1: u8 = 1;

/// A result as the persistent caches store it: the format byte, then the encoded message.
/// `InvalidArgument` beyond [`MAX_ENTRY_SIZE`].
pub(crate) fn encode_entry(result: &ActionResult) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(1 + result.encoded_len());
    buf.push(FORMAT_V1);
    result
        .encode(&mut buf)
        .map_err(|e| Error::internal("encoding an action result", e))?;
    if buf.len() as u64 > MAX_ENTRY_SIZE {
        return Err(Error::invalid(format!(
            "action result of {} bytes is too large",
            buf.len()
        )));
    }
    Ok(Bytes::from(buf))
}

/// Decodes a stored entry; `Err(why)` if it is damaged or of an unknown format.
pub(crate) fn decode_entry(bytes: &[u8]) -> std::result::Result<ActionResult, String> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => ActionResult::decode(body).map_err(|e| e.to_string()),
        _ => Err("unknown format".to_string()),
    }
}
