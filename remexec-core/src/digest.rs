//! Content digests: a hash plus a size, tagged with the function that made the hash.

use std::fmt;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use reapi::digest_function::Value as ProtoFunction;

use crate::{Error, Result};

/// Length in bytes of every hash remexec supports.
const HASH_LEN: usize = 32;

/// A hash function that remexec can address content with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DigestFunction {
    /// SHA-256, REAPI's default.
    Sha256,
    /// BLAKE3 with 32-byte output.
    Blake3,
}

impl DigestFunction {
    /// Every supported function, in the order they are advertised.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The lowercase name used in ByteStream resource names (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }

    /// Parses a lowercase resource-name segment such as `blake3`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The `DigestFunction.Value` number of this function.
    pub fn to_proto(self) -> i32 {
        match self {
            Self::Sha256 => ProtoFunction::Sha256 as i32,
            Self::Blake3 => ProtoFunction::Blake3 as i32,
        }
    }

    /// Resolves the `digest_function` field of a request.
    ///
    /// `UNKNOWN` (0) means "unspecified", which REAPI defines as SHA-256 for 64-hex-digit hashes.
    /// Known but unsupported functions and unknown numbers are `InvalidArgument`.
    pub fn from_proto(value: i32) -> Result<Self> {
        match ProtoFunction::try_from(value) {
            Ok(ProtoFunction::Unknown | ProtoFunction::Sha256) => Ok(Self::Sha256),
            Ok(ProtoFunction::Blake3) => Ok(Self::Blake3),
            Ok(other) => Err(Error::invalid(format!(
                "unsupported digest function {}; supported: SHA256, BLAKE3",
                other.as_str_name()
            ))),
            Err(_) => Err(Error::invalid(format!(
                "unknown digest function number {value}"
            ))),
        }
    }

    /// A fresh streaming hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha256 => Hasher::Sha256(Box::default(), 0),
            Self::Blake3 => Hasher::Blake3(Box::default(), 0),
        }
    }

    /// The digest of `data`.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish()
    }

    /// The digest of the empty blob, which the gRPC services always report as present.
    pub fn empty_digest(self) -> Digest {
        self.digest_of(&[])
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A streaming hasher that also counts bytes, producing a [`Digest`].
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Hasher {
    /// SHA-256 state and byte count.
    Sha256(Box<sha2::Sha256>, u64),
    /// BLAKE3 state and byte count.
    Blake3(Box<blake3::Hasher>, u64),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("function", &self.function())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Hasher {
    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Self::Sha256(h, n) => {
                h.update(data);
                *n += data.len() as u64;
            }
            Self::Blake3(h, n) => {
                h.update(data);
                *n += data.len() as u64;
            }
        }
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Sha256(_, n) | Self::Blake3(_, n) => *n,
        }
    }

    /// The function this hasher computes.
    pub fn function(&self) -> DigestFunction {
        match self {
            Self::Sha256(..) => DigestFunction::Sha256,
            Self::Blake3(..) => DigestFunction::Blake3,
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let (function, hash, size) = match self {
            Self::Sha256(h, n) => (DigestFunction::Sha256, (*h).finalize().into(), n),
            Self::Blake3(h, n) => (DigestFunction::Blake3, *h.finalize().as_bytes(), n),
        };
        Digest {
            function,
            hash,
            size,
        }
    }
}

/// A validated content digest: function, hash bytes and size.
///
/// Its text form is `hash/size`, with the hash in lowercase hex. The function is not part of the
/// text form (as in REAPI); it is given when parsing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: [u8; HASH_LEN],
    size: u64,
}

impl Digest {
    /// Builds a digest from raw parts.
    pub fn new(function: DigestFunction, hash: [u8; HASH_LEN], size: u64) -> Self {
        Self {
            function,
            hash,
            size,
        }
    }

    /// Validates a lowercase hex hash and a size as sent on the wire.
    pub fn from_hex(function: DigestFunction, hex_hash: &str, size: i64) -> Result<Self> {
        if hex_hash.len() != HASH_LEN * 2 {
            return Err(Error::invalid(format!(
                "digest hash {hex_hash:?} has {} characters; {function} needs {}",
                hex_hash.len(),
                HASH_LEN * 2
            )));
        }
        let size = u64::try_from(size)
            .map_err(|_| Error::invalid(format!("digest size {size} is negative")))?;
        let mut hash = [0u8; HASH_LEN];
        faster_hex::hex_decode_with_case(
            hex_hash.as_bytes(),
            &mut hash,
            faster_hex::CheckCase::Lower,
        )
        .map_err(|_| Error::invalid(format!("digest hash {hex_hash:?} is not lowercase hex")))?;
        Ok(Self::new(function, hash, size))
    }

    /// Parses the text form `hash/size`.
    pub fn parse(function: DigestFunction, text: &str) -> Result<Self> {
        let (hash, size) = text.split_once('/').ok_or_else(|| {
            Error::invalid(format!("digest {text:?} is not of the form hash/size"))
        })?;
        Self::from_hex(function, hash, parse_size(size)?)
    }

    /// Validates a wire `Digest` message.
    pub fn from_proto(function: DigestFunction, digest: &reapi::Digest) -> Result<Self> {
        Self::from_hex(function, &digest.hash, digest.size_bytes)
    }

    /// Validates an optional wire `Digest` field, naming the field when it is absent.
    pub fn from_field(
        function: DigestFunction,
        digest: Option<&reapi::Digest>,
        field: &str,
    ) -> Result<Self> {
        let digest = digest.ok_or_else(|| Error::invalid(format!("{field} is missing")))?;
        Self::from_proto(function, digest)
            .map_err(|e| Error::InvalidArgument(crate::Message::caused_by(field, e)))
    }

    /// The wire form.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }

    /// The function that produced the hash.
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    /// The raw hash bytes.
    pub fn hash(&self) -> &[u8; HASH_LEN] {
        &self.hash
    }

    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        faster_hex::hex_string(&self.hash)
    }

    /// The size of the content in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this is the digest of the empty blob.
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == self.function.empty_digest()
    }
}

/// Parses a decimal size that must fit an `i64` (REAPI's `size_bytes`).
fn parse_size(text: &str) -> Result<i64> {
    if text.starts_with('-') {
        return Err(Error::invalid(format!("digest size {text} is negative")));
    }
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(Error::invalid(format!(
            "digest size {text:?} is not a decimal number"
        )));
    }
    text.parse::<i64>()
        .map_err(|_| Error::invalid(format!("digest size {text} is too large")))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.function, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_digests() {
        let d = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            d.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824/5"
        );
        assert!(DigestFunction::Sha256.empty_digest().is_empty_blob());
        assert!(!d.is_empty_blob());
        let b = DigestFunction::Blake3.empty_digest();
        assert_eq!(
            b.hash_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_ne!(b, DigestFunction::Sha256.empty_digest());
    }

    #[test]
    fn rejects_bad_digests() {
        let f = DigestFunction::Sha256;
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert!(Digest::from_hex(f, good, 5).is_ok());
        for (hash, size, needle) in [
            (&good[1..], 5, "characters"),
            (&good.to_uppercase()[..], 5, "lowercase hex"),
            (good, -1, "negative"),
        ] {
            let err = Digest::from_hex(f, hash, size).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        for text in [
            "",
            "abc",
            &format!("{good}/"),
            &format!("{good}/-3"),
            &format!("{good}/01"),
            &format!("{good}/x"),
        ] {
            assert!(Digest::parse(f, text).is_err(), "{text}");
        }
        assert!(
            DigestFunction::from_proto(2)
                .unwrap_err()
                .to_string()
                .contains("SHA1")
        );
        assert!(DigestFunction::from_proto(99).is_err());
        assert_eq!(
            DigestFunction::from_proto(0).unwrap(),
            DigestFunction::Sha256
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        for f in DigestFunction::ALL {
            let mut h = f.hasher();
            h.update(b"hel");
            h.update(b"lo");
            assert_eq!(h.finish(), f.digest_of(b"hello"));
        }
    }

    fn any_digest() -> impl Strategy<Value = Digest> {
        (
            prop::sample::select(DigestFunction::ALL.to_vec()),
            any::<[u8; 32]>(),
            0..=i64::MAX as u64,
        )
            .prop_map(|(f, h, s)| Digest::new(f, h, s))
    }

    proptest! {
        #[test]
        fn text_round_trip(d in any_digest()) {
            let text = d.to_string();
            prop_assert_eq!(Digest::parse(d.function(), &text).unwrap(), d);
        }

        #[test]
        fn proto_round_trip(d in any_digest()) {
            prop_assert_eq!(Digest::from_proto(d.function(), &d.to_proto()).unwrap(), d);
        }

        #[test]
        fn parse_accepts_only_canonical(s in "[0-9a-fA-F/x-]{0,80}") {
            if let Ok(d) = Digest::parse(DigestFunction::Sha256, &s) {
                prop_assert_eq!(d.to_string(), s);
            }
        }
    }
}
