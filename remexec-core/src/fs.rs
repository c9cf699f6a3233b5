//! File-system helpers for trees that actions and clients control: nothing here follows a
//! symlink, blocks on a FIFO or device, or gives up on a directory an action made unwritable.
//!
//! These calls block; async callers run them with [`blocking`], on tokio's blocking pool.

use std::fs::{File, Metadata, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Runs blocking `work` on tokio's blocking pool and waits for it without blocking the
/// runtime's threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal("blocking file-system task failed", e))?
}

/// Removes the tree at `path` (nothing if it does not exist), even if an action made its
/// directories unwritable or unreadable: on a permission error every directory below is given
/// back its owner's `rwx` bits (symlinks are never followed) and the removal is tried again.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(_) => {
            restore_permissions(path);
            match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Ok(()) => Ok(()),
    }
}

/// Adds `u+rwx` to every directory from `path` down, best effort, never through a symlink.
fn restore_permissions(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

/// Makes `dir` an empty directory. Whatever is there is removed with [`remove_tree`]; what even
/// that cannot remove is renamed aside to `{dir}.stale-{n}`, so that leftovers never prevent a
/// start. Returns the name it was moved to, if it had to be.
pub fn reset_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let mut moved = None;
    if let Err(e) = remove_tree(dir) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut aside = dir.as_os_str().to_owned();
        aside.push(format!(".stale-{}-{nanos}", std::process::id()));
        let aside = PathBuf::from(aside);
        std::fs::rename(dir, &aside).map_err(|rename| {
            Error::io(
                format!("{} cannot be removed ({e}) nor moved aside", dir.display()),
                rename,
            )
        })?;
        moved = Some(aside);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Ok(moved)
}

/// Creates the directory `root/rel` and its missing parents, failing with `InvalidArgument` if
/// any component is a symlink or not a directory, so that nothing is created outside `root`.
/// `rel` is a `/`-separated relative path (empty for `root` itself).
pub fn create_dirs_beneath(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for segment in rel.split('/').filter(|s| !s.is_empty()) {
        if segment == ".." {
            return Err(Error::invalid(format!("path {rel:?} contains ..")));
        }
        path.push(segment);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "{rel:?}: {} is a symlink or a file, not a directory",
                    path.display()
                )));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Created meanwhile: fine if it is a real directory.
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => {}
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
    Ok(path)
}

/// The path of `root/rel` if every component but the last is a real directory (not a
/// symlink); `None` otherwise. The last component may be anything: check it with
/// `symlink_metadata`, or open it with [`open_regular`].
pub fn lookup_beneath(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    let mut segments = rel.split('/').filter(|s| !s.is_empty()).peekable();
    while let Some(segment) = segments.next() {
        if segment == ".." {
            return None;
        }
        path.push(segment);
        if segments.peek().is_some() && !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
        {
            return None;
        }
    }
    Some(path)
}

/// Opens `path` for reading if it is a regular file; `Ok(None)` if it is missing, a symlink, a
/// directory, a FIFO, a socket or a device. Such files are never opened, and the open itself
/// neither follows a symlink nor blocks, so a file swapped in meanwhile is caught as well.
pub fn open_regular(path: &Path) -> std::io::Result<Option<(File, Metadata)>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) || e.kind() == ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// Creates the file `root/rel` for writing, with its parents (see [`create_dirs_beneath`]). A
/// file or symlink already there is replaced, never written through; a directory there is an
/// `InvalidArgument` error.
pub fn create_file_beneath(root: &Path, rel: &str) -> Result<File> {
    let (parent, name) = match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel),
    };
    let path = create_dirs_beneath(root, parent)?.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::invalid(format!(
                "{rel:?}: {} is a directory",
                path.display()
            )));
        }
        Ok(_) => std::fs::remove_file(&path)
            .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?,
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Hardlinks `local` to `dest`, or copies it where a link is impossible (another file system,
/// too many links). `Ok(false)` if `local` is gone (evicted from a cache meanwhile); an entry
/// already at `dest` is an error.
pub fn link_or_copy(local: &Path, dest: &Path) -> Result<bool> {
    match std::fs::hard_link(local, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound && !local.exists() => Ok(false),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            Err(Error::io(format!("linking {}", dest.display()), e))
        }
        Err(_) => match std::fs::copy(local, dest) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound && !local.exists() => Ok(false),
            Err(e) => Err(Error::io(format!("copying to {}", dest.display()), e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_handles_unwritable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(root.join("a/b/f"), std::fs::Permissions::from_mode(0o444))
            .unwrap();
        std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        remove_tree(&root).unwrap();
    }

    #[test]
    fn beneath_never_passes_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(create_dirs_beneath(dir.path(), "link/x").is_err());
        assert!(create_file_beneath(dir.path(), "link/f").is_err());
        assert!(lookup_beneath(dir.path(), "link/f").is_none());
        // Replacing the symlink itself is fine: the link goes, its target is untouched.
        create_file_beneath(dir.path(), "link").unwrap();
        assert!(
            std::fs::symlink_metadata(dir.path().join("link"))
                .unwrap()
                .is_file()
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(create_dirs_beneath(dir.path(), "a/b/c").unwrap().is_dir());
    }

    #[test]
    fn open_regular_skips_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("f"), "x").unwrap();
        std::os::unix::fs::symlink("/dev/zero", p.join("zero")).unwrap();
        std::os::unix::fs::symlink("f", p.join("lf")).unwrap();
        nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_regular(&p.join("f")).unwrap().is_some());
        for name in ["zero", "lf", "fifo", "missing"] {
            assert!(open_regular(&p.join(name)).unwrap().is_none(), "{name}");
        }
        assert!(open_regular(Path::new("/dev/null")).unwrap().is_none());
    }
}
