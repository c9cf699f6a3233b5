//! `remexec tls dev-certs DIR`: writes [`remexec_core::dev_certs`] into `DIR`.

use std::path::Path;

use remexec_core::{Error, Result};

pub use remexec_core::dev_certs::FILES;

/// Writes the demo certificates and keys into `dir` (created if missing; existing files are
/// replaced), keys readable by the owner only.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    for file in remexec_core::dev_certs::generate()? {
        save(dir, file.name, file.contents.as_bytes(), file.mode)?;
    }
    Ok(())
}

fn save(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
