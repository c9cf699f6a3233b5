//! The systemd units in `docs/systemd` are valid (`systemd-analyze verify`, with the unit's
//! binary path pointed at the one under test) and raise `LimitNOFILE`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_units_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\nLimitNOFILE="), "{}", path.display());
        let name = path.file_name().unwrap().to_owned();
        std::fs::write(
            dir.path().join(&name),
            text.replace("/usr/local/bin/remexec", env!("CARGO_BIN_EXE_remexec")),
        )
        .unwrap();
        names.push(dir.path().join(name));
    }
    assert_eq!(names.len(), 2);
    let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
    else {
        panic!("systemd-analyze is needed (Debian's systemd package)");
    };
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && report.trim().is_empty(), "{report}");
}
