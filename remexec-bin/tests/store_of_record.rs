//! The CAS as a store of record: what a client was told is there stays there for the keep
//! time, whatever else is written meanwhile. Real Bazel builds without the bytes, then
//! unrelated uploads of five times the disk budget, then a rebuild that reads remote-only
//! outputs of the first build.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, require_tool};

/// The servers' disk budget, and the unrelated uploads: five times as much.
const BUDGET_MIB: u64 = 64;

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
        &[
            "--disk-budget",
            &budget,
            "--config",
            config.to_str().unwrap(),
        ],
    );
    common::lost_inputs_e2e(&bazel, &server.url(), 5 * BUDGET_MIB, None, true);
    drop(server);

    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--disk-budget", &budget]);
    common::lost_inputs_e2e(&bazel, &server.url(), 5 * BUDGET_MIB, None, false);
    assert_eq!(server.terminate().code(), Some(0));
}

/// The file `{hash}-{size}` of `data` somewhere under `root`, if the store holds it.
fn stored(root: &std::path::Path, data: &[u8]) -> bool {
    use sha2::Digest as _;
    let name = format!("{:x}-{}", sha2::Sha256::digest(data), data.len());
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_name().to_str() == Some(name.as_str()) {
                return true;
            }
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    false
}

/// `remexec cas upload FILE` against `url`: its exit status and stderr.
fn upload(url: &str, file: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["cas", "upload", "--server", url])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A budget of referenced blobs: FindMissingBlobs found them (a second `cas upload` asks
/// before it uploads), so a third blob gets RESOURCE_EXHAUSTED, before and after a restart,
/// counted on /metrics; nothing referenced is lost.
#[test]
fn a_store_full_of_referenced_blobs_refuses_writes_and_loses_none() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..3u8)
        .map(|i| {
            let bytes: Vec<u8> = (0..1_500_000u32).map(|n| (n % 251) as u8 ^ i).collect();
            let path = files.path().join(format!("blob{i}"));
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes)
        })
        .collect();
    let flags = ["--disk-budget", "4MB", "--admin-listen", "127.0.0.1:0"];
    let server = ServerProcess::start(data.path(), &flags);
    for (path, _) in &blobs[..2] {
        // The first upload stores it; the second finds it, which references it.
        assert!(upload(&server.url(), path).0);
        assert!(upload(&server.url(), path).0);
    }
    let (ok, stderr) = upload(&server.url(), &blobs[2].0);
    assert!(!ok, "a third blob fit: {stderr}");
    assert!(
        stderr.contains("referenced blobs fill the store"),
        "{stderr}"
    );
    // On the wire: RESOURCE_EXHAUSTED, for a ByteStream write as for a batch.
    let put = |url: String, bytes: Vec<u8>| async move {
        use remexec_core::BlobStoreExt;
        let channel = remexec_core::client::connect_lazy(&url).unwrap();
        let store = remexec_cas::GrpcStore::new(channel);
        let digest = remexec_core::DigestFunction::Sha256.digest_of(&bytes);
        store.put_bytes("", digest, bytes.into()).await
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for len in [1_500_000, 1_040_000] {
        let err = runtime
            .block_on(put(server.url(), blobs[2].1[..len].to_vec()))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    }
    assert_eq!(server.terminate().code(), Some(0));

    // The keeps are on disk: after a restart the store is still full, and says so.
    let server = ServerProcess::start(data.path(), &flags);
    let (ok, stderr) = upload(&server.url(), &blobs[2].0);
    assert!(
        !ok && stderr.contains("referenced blobs fill the store"),
        "{stderr}"
    );
    let (_, metrics) = common::http_get(server.admin_addr.unwrap(), "/metrics", &[]).unwrap();
    let series = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    assert_eq!(
        series(r#"remexec_store_refused_writes_total{store="cas"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series(r#"remexec_store_referenced_bytes{store="cas"}"#),
        3_000_000.0
    );
    for (_, bytes) in &blobs[..2] {
        assert!(
            stored(&data.path().join("cas"), bytes),
            "a referenced blob was lost"
        );
    }
    assert!(!stored(&data.path().join("cas"), &blobs[2].1));
    assert_eq!(server.terminate().code(), Some(0));
}

/// `serve`'s own worker counts against the disk budget: files in `{data_dir}/worker` (its file
/// cache and action directories) make the CAS evict unreferenced blobs until both fit.
#[test]
fn serve_counts_its_local_workers_files_against_the_disk_budget() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--disk-budget", "8MB"]);
    for i in 0..6u8 {
        let path = files.path().join(format!("blob{i}"));
        let bytes: Vec<u8> = (0..1_000_000u32).map(|n| (n % 251) as u8 ^ i).collect();
        std::fs::write(&path, bytes).unwrap();
        assert!(upload(&server.url(), &path).0);
    }
    let cas = data.path().join("cas");
    assert!(common::dir_bytes(&cas) >= 6_000_000);
    // The worker's directory grows by 5 MB: together they would be 11 MB.
    let worker = data.path().join("worker").join("cache");
    std::fs::create_dir_all(&worker).unwrap();
    std::fs::write(worker.join("big"), vec![7u8; 5_000_000]).unwrap();
    let held = || common::dir_bytes(&cas) + common::dir_bytes(&data.path().join("worker"));
    assert!(
        common::wait_until(30, || held() <= 8_000_000),
        "serve holds {} bytes",
        held()
    );
    assert_eq!(server.terminate().code(), Some(0));
}
