//! Unpacking downloaded archives for `FetchDirectory`: tar (plain or gzipped) and zip.
//!
//! Archives come from anywhere, so unpacking is bounded and confined: at most
//! [`ArchiveLimits::max_entries`] entries and [`ArchiveLimits::max_size`] bytes unpacked, counted
//! from what is actually written (a zip entry that inflates past its declared size is refused),
//! and nothing written outside the destination: the tar crate's `unpack_in` and zip's
//! `enclosed_name` refuse `..` and absolute paths, and files are created beneath the
//! destination without following symlinks. Symlinks are recorded as they are; hard links in a
//! tar may only name files inside it.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use remexec_core::{Error, Result};

/// How far an archive may unpack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArchiveLimits {
    /// Most entries (files, directories, links).
    pub(crate) max_entries: usize,
    /// Most bytes of file content.
    pub(crate) max_size: u64,
}

/// What an archive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Tar,
    TarGz,
    Zip,
}

impl Format {
    /// The format a `resource_type` qualifier (a MIME type) names.
    pub(crate) fn of_mime(mime: &str) -> Result<Self> {
        match mime {
            "application/x-tar" => Ok(Self::Tar),
            "application/gzip" | "application/x-gzip" | "application/x-compressed-tar" => {
                Ok(Self::TarGz)
            }
            "application/zip" => Ok(Self::Zip),
            other => Err(Error::invalid(format!(
                "resource_type {other:?} is not an archive this server unpacks \
                 (application/x-tar, application/gzip, application/zip)"
            ))),
        }
    }

    /// The format of an archive from `uri`, downloaded to `file`: by the URI's ending, else
    /// by the file's first bytes.
    pub(crate) fn detect(uri: &str, file: &Path) -> Result<Self> {
        let path = uri.split(['?', '#']).next().unwrap_or(uri);
        if path.ends_with(".tar") {
            return Ok(Self::Tar);
        }
        if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
            return Ok(Self::TarGz);
        }
        if path.ends_with(".zip") {
            return Ok(Self::Zip);
        }
        let mut magic = [0u8; 4];
        let read = File::open(file)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        Ok(match &magic[..read] {
            [0x50, 0x4b, 0x03, 0x04] => Self::Zip,
            [0x1f, 0x8b, ..] => Self::TarGz,
            _ => Self::Tar,
        })
    }
}

/// Unpacks the archive at `file` into the empty directory `dest`. Blocks. A malformed or
/// oversized archive is `InvalidArgument`, as the content the client named is unusable.
pub(crate) fn unpack(
    format: Format,
    file: &Path,
    dest: &Path,
    limits: ArchiveLimits,
) -> Result<()> {
    let open = File::open(file).map_err(|e| Error::io(format!("opening {}", file.display()), e))?;
    match format {
        Format::Tar => unpack_tar(BufReader::new(open), dest, limits),
        Format::TarGz => unpack_tar(
            flate2::read::GzDecoder::new(BufReader::new(open)),
            dest,
            limits,
        ),
        Format::Zip => unpack_zip(open, dest, limits),
    }
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("the archive cannot be unpacked: {what}"))
}

fn unpack_tar(reader: impl Read, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let (mut entries, mut bytes) = (0usize, 0u64);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(bad(format!("it has over {} entries", limits.max_entries)));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            // Devices, FIFOs and the like have no place in a Directory; extended headers are
            // read by the tar crate itself.
            continue;
        }
        bytes += entry.size();
        if bytes > limits.max_size {
            return Err(bad(format!("it unpacks to over {} bytes", limits.max_size)));
        }
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(bad(format!(
                "entry {:?} would be written outside the archive",
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn unpack_zip(reader: impl Read + Seek, dest: &Path, limits: ArchiveLimits) -> Result<()> {
    let mut archive = zip::ZipArchive::new(reader).map_err(bad)?;
    if archive.len() > limits.max_entries {
        return Err(bad(format!("it has over {} entries", limits.max_entries)));
    }
    let mut bytes = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(bad)?;
        let name = entry.name().to_string();
        let rel = entry.enclosed_name().ok_or_else(|| {
            bad(format!(
                "entry {name:?} would be written outside the archive"
            ))
        })?;
        let rel = rel
            .to_str()
            .ok_or_else(|| bad(format!("entry {name:?} is not UTF-8")))?
            .trim_end_matches('/')
            .to_string();
        if rel.is_empty() {
            continue;
        }
        if entry.is_dir() {
            remexec_core::fs::create_dirs_beneath(dest, &rel)?;
            continue;
        }
        // What is written is counted, not what the entry declares.
        let room = limits.max_size - bytes;
        let mut content = Vec::new();
        if entry.is_symlink() {
            (&mut entry)
                .take(4096)
                .read_to_end(&mut content)
                .map_err(bad)?;
            let target = String::from_utf8(content)
                .map_err(|_| bad(format!("symlink {name:?} has a target that is not UTF-8")))?;
            let (parent, file) = split(&rel);
            let dir = remexec_core::fs::create_dirs_beneath(dest, parent)?;
            std::os::unix::fs::symlink(&target, dir.join(file))
                .map_err(|e| Error::io(format!("creating symlink {rel}"), e))?;
            continue;
        }
        let mut out = remexec_core::fs::create_file_beneath(dest, &rel)?;
        let copied = std::io::copy(&mut (&mut entry).take(room + 1), &mut out).map_err(bad)?;
        bytes += copied;
        if bytes > limits.max_size {
            return Err(bad(format!("it unpacks to over {} bytes", limits.max_size)));
        }
        if entry.unix_mode().is_some_and(|m| m & 0o111 != 0) {
            use std::os::unix::fs::PermissionsExt;
            out.set_permissions(std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(format!("making {rel} executable"), e))?;
        }
    }
    Ok(())
}

/// `a/b/c` as (`a/b`, `c`); a bare name's parent is `""`.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}
