//! Real clients against a real `remexec serve`: Bazel 4.2.3 as a remote cache, and BuildGrid's
//! `bgd` command-line client.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, fixtures, require_tool};

#[test]
fn bazel_builds_with_remote_cache_and_rebuilds_from_it() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/cache_e2e.sh"))
        .arg(server.url())
        .env("BAZEL", bazel)
        .status()
        .unwrap();
    assert!(status.success(), "cache_e2e.sh failed: {status}");
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "clean shutdown on SIGTERM"
    );
}

#[test]
fn buildgrid_bgd_client_uploads_downloads_and_uses_the_action_cache() {
    let Some(bgd) = require_tool("BGD", "bgd") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--action-cache", "memory"]);
    for instance in ["", "team/a"] {
        let status = Command::new("bash")
            .arg(fixtures().join("bgd/bgd_e2e.sh"))
            .arg(server.url())
            .arg(&bgd)
            .env("BGD_E2E_INSTANCE", instance)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "bgd_e2e.sh failed for instance {instance:?}: {status}"
        );
    }
}

#[test]
fn buildgrid_bgd_executes_a_command_and_gets_its_outputs() {
    let Some(bgd) = require_tool("BGD", "bgd") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "2"]);
    std::fs::create_dir_all(work.path().join("in/sub")).unwrap();
    std::fs::write(work.path().join("in/sub/f.txt"), "abc\n").unwrap();
    let out = Command::new(&bgd)
        .args([
            "execute",
            "--remote",
            &server.url(),
            "command",
            "--output-file",
            "out.txt",
            "in",
            "--",
        ])
        .args(["sh", "-c", "cat sub/f.txt sub/f.txt > out.txt; echo done"])
        .current_dir(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bgd failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("done: true"), "{stdout}");
    // bgd downloads outputs into ./testing by default.
    assert_eq!(
        std::fs::read_to_string(work.path().join("testing/out.txt")).unwrap(),
        "abc\nabc\n"
    );
}
