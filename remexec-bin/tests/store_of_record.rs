//! The CAS as a store of record: what a client was told is there stays there for the keep
//! time, whatever else is written meanwhile. Real Bazel builds without the bytes, then
//! unrelated uploads of five times the disk budget, then a rebuild that reads remote-only
//! outputs of the first build.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, fixtures, require_tool};

/// The servers' disk budget, and the unrelated uploads: five times as much.
const BUDGET_MIB: u64 = 64;

/// Runs `lost_inputs_e2e.sh` against `url`; `expect_lost` for the control.
fn lost_inputs_e2e(url: &str, bazel: &std::path::Path, expect_lost: bool) {
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/lost_inputs_e2e.sh"))
        .arg(url)
        .arg((5 * BUDGET_MIB).to_string())
        .env("BAZEL", bazel)
        .env("REMEXEC", env!("CARGO_BIN_EXE_remexec"))
        .env("EXPECT_LOST", if expect_lost { "1" } else { "0" })
        .status()
        .unwrap();
    assert!(status.success(), "lost_inputs_e2e.sh failed: {status}");
}

/// The control first: a server that keeps nothing referenced loses the first build's outputs
/// to the uploads, and Bazel's rebuild fails, so the test can tell. Then the default server.
#[test]
fn builds_without_the_bytes_survive_unrelated_uploads_of_five_times_the_budget() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let budget = format!("{BUDGET_MIB}MiB");
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("keep-nothing.toml");
    std::fs::write(&config, "[cas]\nkeep_referenced_secs = 0\n").unwrap();
    let server = ServerProcess::start(
        &data.path().join("data"),
        &["--disk-budget", &budget, "--config", config.to_str().unwrap()],
    );
    lost_inputs_e2e(&server.url(), &bazel, true);
    drop(server);

    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--disk-budget", &budget]);
    lost_inputs_e2e(&server.url(), &bazel, false);
    assert_eq!(server.terminate().code(), Some(0));
}
