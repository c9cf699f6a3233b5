//! Keys that namespace digests by instance name.

use remexec_core::Digest;
use sha2::Digest as _;

/// `(instance namespace, digest)`: the identity of a stored blob or action result.
///
/// The namespace is the first 128 bits of SHA-256 over the instance name (zero for the empty
/// name), so keys are small, `Copy`, and turn into directory names without escaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) ns: u128,
    pub(crate) digest: Digest,
}

impl Key {
    pub(crate) fn new(instance: &str, digest: Digest) -> Self {
        Self {
            ns: namespace(instance),
            digest,
        }
    }
}

pub(crate) fn namespace(instance: &str) -> u128 {
    if instance.is_empty() {
        return 0;
    }
    let hash = sha2::Sha256::digest(instance.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash[..16]);
    u128::from_be_bytes(first).max(1)
}
