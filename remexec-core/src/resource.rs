//! ByteStream resource names and instance names.
//!
//! Reads: `{instance}/blobs/{function/}{hash}/{size}` and
//! `{instance}/compressed-blobs/{compressor}/{function/}{hash}/{size}`.
//! Writes: `{instance}/uploads/{uuid}/blobs/...` or `.../compressed-blobs/...`, optionally followed
//! by `/{metadata}`. The instance name may be empty or contain slashes. The function segment is
//! required for BLAKE3; for SHA-256 it is optional when parsing and omitted when formatting
//! (both have 64-hex-digit hashes).

use std::fmt;

use bazel_remote_apis::build::bazel::remote::execution::v2::compressor::Value as ProtoCompressor;

use crate::{Digest, DigestFunction, Error, Result};

/// Segments that may not appear in an instance name, because they start the rest of a resource
/// name or another API's path.
pub const RESERVED_SEGMENTS: [&str; 7] = [
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
];

/// Checks an instance name: empty, or `/`-separated non-empty segments, none of them `.`, `..`
/// or reserved.
pub fn validate_instance_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    for segment in name.split('/') {
        let problem = if segment.is_empty() {
            "has an empty segment"
        } else if segment == "." || segment == ".." {
            "has a . or .. segment"
        } else if RESERVED_SEGMENTS.contains(&segment) {
            "has a reserved segment"
        } else if segment.chars().any(char::is_control) {
            "has a control character"
        } else {
            continue;
        };
        return Err(Error::invalid(format!("instance name {name:?} {problem}")));
    }
    Ok(())
}

/// How a blob's bytes are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compressor {
    /// Plain bytes (`blobs/`).
    #[default]
    Identity,
    /// Zstandard (`compressed-blobs/zstd/`).
    Zstd,
}

impl Compressor {
    /// The lowercase name used in resource names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Zstd => "zstd",
        }
    }

    /// The `Compressor.Value` number.
    pub fn to_proto(self) -> i32 {
        match self {
            Self::Identity => ProtoCompressor::Identity as i32,
            Self::Zstd => ProtoCompressor::Zstd as i32,
        }
    }

    /// Resolves a `Compressor.Value` from a request; unsupported ones are `InvalidArgument`.
    pub fn from_proto(value: i32) -> Result<Self> {
        match ProtoCompressor::try_from(value) {
            Ok(ProtoCompressor::Identity) => Ok(Self::Identity),
            Ok(ProtoCompressor::Zstd) => Ok(Self::Zstd),
            Ok(other) => Err(Error::invalid(format!(
                "unsupported compressor {}; supported: IDENTITY, ZSTD",
                other.as_str_name()
            ))),
            Err(_) => Err(Error::invalid(format!("unknown compressor number {value}"))),
        }
    }

    fn from_segment(name: &str) -> Result<Self> {
        match name {
            "zstd" => Ok(Self::Zstd),
            other => Err(Error::invalid(format!(
                "unsupported compressor {other:?} in resource name; supported: zstd"
            ))),
        }
    }
}

/// The blob part of a resource name: compressor and digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// How the bytes travel.
    pub compressor: Compressor,
    /// The uncompressed content's digest.
    pub digest: Digest,
}

/// A parsed ByteStream `Read` resource name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReadResource {
    /// The instance name (may be empty).
    pub instance: String,
    /// The blob to read.
    pub blob: BlobRef,
}

/// A parsed ByteStream `Write` resource name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WriteResource {
    /// The instance name (may be empty).
    pub instance: String,
    /// The client's upload id, which makes an upload resumable.
    pub uuid: String,
    /// The blob being written.
    pub blob: BlobRef,
    /// Optional trailing metadata, without its leading `/`; ignored by the server.
    pub metadata: Option<String>,
}

fn split_instance<'a>(
    name: &'a str,
    segments: &[&'a str],
    markers: &[&str],
) -> Result<(String, usize)> {
    let at = segments
        .iter()
        .position(|s| markers.contains(s))
        .ok_or_else(|| {
            Error::invalid(format!(
                "resource name {name:?} has no {} segment",
                markers.join(" or ")
            ))
        })?;
    if segments[..at].iter().any(|s| s.is_empty()) {
        return Err(Error::invalid(format!(
            "resource name {name:?} has an empty segment before {}",
            segments[at]
        )));
    }
    let instance = segments[..at].join("/");
    validate_instance_name(&instance).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(
            format!("resource name {name:?}"),
            e,
        ))
    })?;
    Ok((instance, at))
}

/// Parses `blobs/{fn/}{hash}/{size}` or `compressed-blobs/{c}/{fn/}{hash}/{size}` starting at
/// `segments[0]`, returning the blob and how many segments it used.
fn parse_blob(name: &str, segments: &[&str]) -> Result<(BlobRef, usize)> {
    let bad = |why: &str| Error::invalid(format!("resource name {name:?}: {why}"));
    let (compressor, mut i) = match segments.first() {
        Some(&"blobs") => (Compressor::Identity, 1),
        Some(&"compressed-blobs") => {
            let c = segments.get(1).ok_or_else(|| bad("missing compressor"))?;
            (
                Compressor::from_segment(c).map_err(|e| bad(&e.to_string()))?,
                2,
            )
        }
        _ => return Err(bad("expected blobs or compressed-blobs")),
    };
    let mut function = DigestFunction::Sha256;
    let first = segments.get(i).ok_or_else(|| bad("missing hash"))?;
    if !first.bytes().all(|b| b.is_ascii_hexdigit()) {
        function = DigestFunction::from_name(first)
            .ok_or_else(|| bad(&format!("unsupported digest function {first:?}")))?;
        i += 1;
    }
    let hash = segments.get(i).ok_or_else(|| bad("missing hash"))?;
    let size = segments.get(i + 1).ok_or_else(|| bad("missing size"))?;
    let digest =
        Digest::parse(function, &format!("{hash}/{size}")).map_err(|e| bad(&e.to_string()))?;
    Ok((BlobRef { compressor, digest }, i + 2))
}

impl ReadResource {
    /// Parses a `Read` resource name.
    pub fn parse(name: &str) -> Result<Self> {
        let segments: Vec<&str> = name.split('/').collect();
        let (instance, at) = split_instance(name, &segments, &["blobs", "compressed-blobs"])?;
        let (blob, used) = parse_blob(name, &segments[at..])?;
        if at + used != segments.len() {
            return Err(Error::invalid(format!(
                "resource name {name:?} has trailing segments after the size"
            )));
        }
        Ok(Self { instance, blob })
    }
}

impl WriteResource {
    /// Parses a `Write` resource name.
    pub fn parse(name: &str) -> Result<Self> {
        let segments: Vec<&str> = name.split('/').collect();
        let (instance, at) = split_instance(name, &segments, &["uploads"])?;
        let uuid = segments
            .get(at + 1)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| Error::invalid(format!("resource name {name:?} has no upload id")))?;
        let (blob, used) = parse_blob(name, &segments[at + 2..])?;
        let rest = &segments[at + 2 + used..];
        let metadata = (!rest.is_empty()).then(|| rest.join("/"));
        Ok(Self {
            instance,
            uuid: uuid.to_string(),
            blob,
            metadata,
        })
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.compressor {
            Compressor::Identity => f.write_str("blobs/")?,
            c => write!(f, "compressed-blobs/{}/", c.name())?,
        }
        if self.digest.function() != DigestFunction::Sha256 {
            write!(f, "{}/", self.digest.function())?;
        }
        write!(f, "{}", self.digest)
    }
}

fn write_instance(f: &mut fmt::Formatter<'_>, instance: &str) -> fmt::Result {
    if instance.is_empty() {
        Ok(())
    } else {
        write!(f, "{instance}/")
    }
}

impl fmt::Display for ReadResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_instance(f, &self.instance)?;
        write!(f, "{}", self.blob)
    }
}

impl fmt::Display for WriteResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_instance(f, &self.instance)?;
        write!(f, "uploads/{}/{}", self.uuid, self.blob)?;
        match &self.metadata {
            Some(m) => write!(f, "/{m}"),
            None => Ok(()),
        }
    }
}

/// The header Bazel and other REAPI clients send their `RequestMetadata` in.
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_examples() {
        let r = ReadResource::parse(&format!("a/b/blobs/{H}/5")).unwrap();
        assert_eq!(r.instance, "a/b");
        assert_eq!(r.blob.compressor, Compressor::Identity);
        assert_eq!(r.blob.digest.function(), DigestFunction::Sha256);
        let r = ReadResource::parse(&format!("compressed-blobs/zstd/blake3/{H}/5")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.blob.compressor, Compressor::Zstd);
        assert_eq!(r.blob.digest.function(), DigestFunction::Blake3);
        let w =
            WriteResource::parse(&format!("i/uploads/u-1/blobs/sha256/{H}/5/meta/data")).unwrap();
        assert_eq!((w.instance.as_str(), w.uuid.as_str()), ("i", "u-1"));
        assert_eq!(w.metadata.as_deref(), Some("meta/data"));
        assert_eq!(
            w.to_string(),
            format!("i/uploads/u-1/blobs/{H}/5/meta/data")
        );
    }

    #[test]
    fn rejects_malformed() {
        for name in [
            String::new(),
            format!("blobs/{H}"),
            format!("blobs/{H}/-5"),
            format!("blobs/{H}/5/extra"),
            format!("blobs/md5/{H}/5"),
            format!("compressed-blobs/deflate/{H}/5"),
            format!("compressed-blobs/{H}/5"),
            format!("a//b/blobs/{H}/5"),
            format!("../blobs/{H}/5"),
            format!("blobs/{}/5", &H[..10]),
            format!("uploads/blobs/{H}/5"),
            format!("/blobs/{H}/5"),
            format!("a//blobs/{H}/5"),
        ] {
            let err = ReadResource::parse(&name).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        }
        assert!(WriteResource::parse(&format!("uploads//blobs/{H}/5")).is_err());
        assert!(WriteResource::parse(&format!("uploads/u/blobs/{H}")).is_err());
        let e = ReadResource::parse(&format!("compressed-blobs/brotli/{H}/5")).unwrap_err();
        assert!(e.to_string().contains("unsupported compressor"), "{e}");
    }

    fn instance() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9_.-]{1,8}", 0..4).prop_map(|segs| {
            segs.into_iter()
                .filter(|s| s != "." && s != "..")
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    fn blob() -> impl Strategy<Value = BlobRef> {
        (
            prop::sample::select(DigestFunction::ALL.to_vec()),
            any::<[u8; 32]>(),
            0..=i64::MAX as u64,
            prop::bool::ANY,
        )
            .prop_map(|(f, h, s, z)| BlobRef {
                compressor: if z {
                    Compressor::Zstd
                } else {
                    Compressor::Identity
                },
                digest: Digest::new(f, h, s),
            })
    }

    proptest! {
        #[test]
        fn read_round_trip(instance in instance(), blob in blob()) {
            let r = ReadResource { instance, blob };
            prop_assert_eq!(ReadResource::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn write_round_trip(
            instance in instance(),
            uuid in "[a-f0-9-]{1,36}",
            blob in blob(),
            metadata in prop::option::of("[a-z]{1,5}(/[a-z]{1,5}){0,2}"),
        ) {
            let w = WriteResource { instance, uuid, blob, metadata };
            prop_assert_eq!(WriteResource::parse(&w.to_string()).unwrap(), w);
        }

        #[test]
        fn parsed_names_format_back_equal(s in "([a-z]{1,3}/){0,2}(blobs|compressed-blobs/zstd)/(blake3/)?[0-9a-f]{64}/[0-9]{1,5}") {
            if let Ok(r) = ReadResource::parse(&s) {
                prop_assert_eq!(ReadResource::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
