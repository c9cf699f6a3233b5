//! Reading a table back at start ([`scan`], [`read_names`]) and writing uploads to files
//! ([`write_burst`]).

use std::path::Path;
use std::time::SystemTime;

use futures::StreamExt;
use remexec_core::{ChunkStream, Digest, DigestFunction, Error, Result};

use super::segments::{Record, Slot};
use super::{Check, INSTANCE_FILE, size_mismatch};
use crate::key::Key;

/// The instance names in the namespaces' `instance` files under `root` (a file whose name does
/// not hash to its directory is ignored).
pub(super) fn read_names(root: &Path) -> std::collections::HashMap<u128, String> {
    let mut names = std::collections::HashMap::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let Some(ns) = entry
            .file_name()
            .to_str()
            .and_then(|n| u128::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        if let Ok(name) = std::fs::read_to_string(entry.path().join(INSTANCE_FILE))
            && crate::key::namespace(&name) == ns
        {
            names.insert(ns, name);
        }
    }
    names
}

/// A file found by [`scan`].
pub(super) struct Found {
    pub(super) key: Key,
    pub(super) len: u64,
    /// Its mtime: its last use.
    pub(super) used: SystemTime,
    /// Its atime: its last reference.
    pub(super) referenced: SystemTime,
    /// Its record, for a packed entry.
    pub(super) place: Option<Slot>,
}

/// The packed entries of `records`, with their uses and references from the use journal
/// `uses`, those whose length `check` accepts (a record's use is its written time where the journal has none: a use comes after
/// the write, and a compacted record is written with its entry's last use).
pub(super) fn packed(
    records: Vec<Record>,
    uses: &std::collections::HashMap<Key, (u64, u64)>,
    check: Check,
    out: &mut Vec<Found>,
) {
    let secs = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
    for r in records {
        let len = u64::from(r.slot.len);
        if !check(&r.key, len) {
            tracing::warn!(digest = %r.key.digest, len, "ignoring a packed entry of the wrong length");
            continue;
        }
        let (used, referenced) = uses.get(&r.key).copied().unwrap_or_default();
        out.push(Found {
            key: r.key,
            len,
            used: secs(if used > 0 { used } else { r.written }),
            referenced: secs(referenced),
            place: Some(r.slot),
        });
    }
}

/// Finds every well-named file under `root`.
pub(super) fn scan(root: &Path, check: Check, out: &mut Vec<Found>) -> Result<()> {
    let read = |p: &Path| {
        std::fs::read_dir(p).map_err(|e| Error::io(format!("listing {}", p.display()), e))
    };
    // Below the root, anything that is not a readable directory is skipped, not fatal.
    let sub = |p: &Path| -> Vec<std::fs::DirEntry> {
        match std::fs::read_dir(p) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping unreadable entry in the store");
                Vec::new()
            }
        }
    };
    for ns_entry in read(root)?.flatten() {
        let Some(ns) = ns_entry
            .file_name()
            .to_str()
            .and_then(|n| u128::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        for fn_entry in sub(&ns_entry.path()) {
            let Some(function) = fn_entry
                .file_name()
                .to_str()
                .and_then(DigestFunction::from_name)
            else {
                continue;
            };
            for prefix in sub(&fn_entry.path()) {
                for file in sub(&prefix.path()) {
                    let name = file.file_name();
                    let parsed = name
                        .to_str()
                        .and_then(|n| n.split_once('-'))
                        .and_then(|(h, s)| Digest::from_hex(function, h, s.parse().ok()?).ok());
                    let (Some(digest), Ok(meta)) = (parsed, file.metadata()) else {
                        tracing::warn!(path = %file.path().display(), "ignoring unexpected file in the store");
                        continue;
                    };
                    let key = Key { ns, digest };
                    if !meta.is_file() || !check(&key, meta.len()) {
                        tracing::warn!(path = %file.path().display(), "removing damaged file from the store");
                        let _ = std::fs::remove_file(file.path());
                        continue;
                    }
                    out.push(Found {
                        key,
                        len: meta.len(),
                        used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        referenced: meta.accessed().unwrap_or(SystemTime::UNIX_EPOCH),
                        place: None,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Writes `first`, then every chunk of `data` that is ready without waiting, up to a burst of
/// 16 MiB. Returns whether the stream has ended. Runs on a blocking thread.
pub(super) fn write_burst(
    temp: &mut tempfile::NamedTempFile,
    data: &mut ChunkStream,
    first: bytes::Bytes,
    written: &mut u64,
    expected_len: Option<u64>,
    digest: Digest,
) -> Result<bool> {
    use futures::FutureExt;
    use std::io::Write;
    const BURST: u64 = 16 << 20;
    let start = *written;
    let mut chunk = first;
    loop {
        *written += chunk.len() as u64;
        if expected_len.is_some_and(|n| *written > n) {
            return Err(size_mismatch(digest, *written, false));
        }
        temp.write_all(&chunk)
            .map_err(|e| Error::io(format!("writing {}", temp.path().display()), e))?;
        if *written - start >= BURST {
            return Ok(false);
        }
        chunk = match data.next().now_or_never() {
            Some(Some(chunk)) => chunk?,
            Some(None) => return Ok(true),
            None => return Ok(false),
        };
    }
}
