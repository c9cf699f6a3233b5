//! The asset index: which blob or directory a URI and its qualifiers stand for, kept in the
//! Action Cache.
//!
//! Each association is an `ActionResult` with no outputs, stored under [`key`] of the asset's
//! kind, URI and qualifiers, whose `execution_metadata.auxiliary_metadata` holds one
//! [`AssetEntry`]. So the Action Cache's own bound (its entry count or bytes) bounds the index,
//! schedulers sharing an Action Cache share it, and an Action Cache written through to object
//! storage keeps it. Nobody can mistake a key for an action: it is the hash of a text that
//! starts with `remexec.asset.v1`, not of an encoded `Action`.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use remexec_core::{ActionCache, Digest, DigestFunction, Result};
use remexec_proto::asset::v1::AssetEntry;
use remexec_proto::build::bazel::remote::asset::v1::Qualifier;
use remexec_proto::google::protobuf::Any;
use remexec_proto::reapi::{ActionResult, ExecutedActionMetadata};

/// The `type_url` of an [`AssetEntry`] packed in an `Any`.
const ENTRY_TYPE: &str = "type.googleapis.com/remexec.asset.v1.AssetEntry";

/// What an asset is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A blob (FetchBlob, PushBlob).
    Blob,
    /// A root Directory (FetchDirectory, PushDirectory).
    Directory,
}

/// The Action Cache key of `kind` at `uri` with `qualifiers` (in any order): the hash of
/// `remexec.asset.v1`, the kind, the URI and the qualifiers sorted by name, each ended by a NUL
/// (which none of them may hold: see [`check_request`](super::check_request)).
pub(crate) fn key(
    function: DigestFunction,
    kind: Kind,
    uri: &str,
    qualifiers: &[Qualifier],
) -> Digest {
    let mut sorted: Vec<&Qualifier> = qualifiers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::from("remexec.asset.v1\0");
    text += match kind {
        Kind::Blob => "blob\0",
        Kind::Directory => "directory\0",
    };
    text += uri;
    text.push('\0');
    for q in sorted {
        text += &q.name;
        text.push('\0');
        text += &q.value;
        text.push('\0');
    }
    function.digest_of(text.as_bytes())
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The entry stored under `key`, if there is one that decodes.
pub(crate) async fn lookup(
    ac: &dyn ActionCache,
    instance: &str,
    key: Digest,
) -> Result<Option<AssetEntry>> {
    let Some(result) = ac.get(instance, key).await? else {
        return Ok(None);
    };
    let entry = result
        .execution_metadata
        .iter()
        .flat_map(|m| &m.auxiliary_metadata)
        .find(|any| any.type_url == ENTRY_TYPE)
        .and_then(|any| AssetEntry::decode(any.value.as_slice()).ok());
    Ok(entry)
}

/// Stores `entry` under `key`.
pub(crate) async fn record(
    ac: &dyn ActionCache,
    instance: &str,
    key: Digest,
    entry: &AssetEntry,
) -> Result<()> {
    let result = ActionResult {
        execution_metadata: Some(ExecutedActionMetadata {
            worker: "remexec asset index".into(),
            auxiliary_metadata: vec![Any {
                type_url: ENTRY_TYPE.into(),
                value: entry.encode_to_vec(),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    ac.put(instance, key, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, value: &str) -> Qualifier {
        Qualifier {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn keys_ignore_qualifier_order_and_tell_everything_else_apart() {
        let f = DigestFunction::Sha256;
        let a = [q("checksum.sri", "sha256-x"), q("bazel.canonical_id", "c")];
        let b = [q("bazel.canonical_id", "c"), q("checksum.sri", "sha256-x")];
        let base = key(f, Kind::Blob, "https://h/a", &a);
        assert_eq!(base, key(f, Kind::Blob, "https://h/a", &b));
        assert_ne!(base, key(f, Kind::Directory, "https://h/a", &a));
        assert_ne!(base, key(f, Kind::Blob, "https://h/b", &a));
        assert_ne!(base, key(f, Kind::Blob, "https://h/a", &a[..1]));
        // A value cannot pose as a name: the separators keep them apart.
        assert_ne!(
            key(f, Kind::Blob, "u", &[q("ab", "c")]),
            key(f, Kind::Blob, "u", &[q("a", "bc")])
        );
    }
}
