//! External storage end to end, with real Bazel and a real S3-compatible server (moto): a
//! server whose local data is wiped serves a clean rebuild from S3 or from an upstream
//! remexec, and an S3 outage fails writes with UNAVAILABLE without losing anything.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Moto, ServerProcess, fixtures, free_port, require_tool, wait_until};
use remexec_core::client;
use remexec_core::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, batch_update_blobs_request,
};

/// Runs `exec_e2e.sh` against `url`, pausing after round 1 for `between` (which restarts or
/// wipes the server); round 2 must then be all remote cache hits with identical outputs.
fn exec_e2e_with_pause(bazel: &Path, url: &str, between: impl FnOnce()) {
    let pause = tempfile::tempdir().unwrap();
    let mut script = Command::new("bash")
        .arg(fixtures().join("bazel/exec_e2e.sh"))
        .arg(url)
        .env("BAZEL", bazel)
        .env("E2E_PAUSE_DIR", pause.path())
        .stdout(Stdio::inherit())
        .spawn()
        .unwrap();
    let paused = wait_until(600, || {
        pause.path().join("round1-done").exists() || script.try_wait().unwrap().is_some()
    });
    assert!(
        paused && pause.path().join("round1-done").exists(),
        "round 1 did not finish"
    );
    between();
    std::fs::write(pause.path().join("resume"), "").unwrap();
    let status = script.wait().unwrap();
    assert!(status.success(), "exec_e2e.sh failed: {status}");
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn a_wiped_server_rebuilds_from_s3_with_every_action_a_cache_hit() {
    let (Some(bazel), Some(moto_bin)) = (require_tool("BAZEL", "bazel"), Moto::binary()) else {
        return;
    };
    let moto = Moto::start(&moto_bin, free_port(), "remexec-e2e");
    let env = moto.env();
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = ["--external-store", "s3://remexec-e2e/wipe"];
    let server = ServerProcess::start_at(&listen, data.path(), &flags, &env_refs(&env));
    let url = server.url();
    let mut server = Some(server);
    exec_e2e_with_pause(&bazel, &url, || {
        // Stop the server, wipe its whole data directory, start it again empty.
        let status = server.take().unwrap().terminate();
        assert!(status.success(), "{status}");
        std::fs::remove_dir_all(data.path()).unwrap();
        server = Some(ServerProcess::start_at(
            &listen,
            data.path(),
            &flags,
            &env_refs(&env),
        ));
    });
    drop(moto);
}

#[test]
fn a_wiped_proxy_rebuilds_from_its_upstream_with_every_action_a_cache_hit() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let back_data = tempfile::tempdir().unwrap();
    let back = ServerProcess::start(back_data.path(), &["--executors", "1"]);
    let front_data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let upstream = back.url();
    let flags = ["--external-store", upstream.as_str()];
    let front = ServerProcess::start_at(&listen, front_data.path(), &flags, &[]);
    let url = front.url();
    let mut front = Some(front);
    exec_e2e_with_pause(&bazel, &url, || {
        let status = front.take().unwrap().terminate();
        assert!(status.success(), "{status}");
        std::fs::remove_dir_all(front_data.path()).unwrap();
        front = Some(ServerProcess::start_at(
            &listen,
            front_data.path(),
            &flags,
            &[],
        ));
    });
}

type CasClient =
    remexec_core::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        tonic::transport::Channel,
    >;

/// Uploads one small blob with BatchUpdateBlobs; returns the entry's status code.
async fn write_blob(cas: &mut CasClient, data: &'static [u8]) -> i32 {
    let f = remexec_core::DigestFunction::Sha256;
    let request = BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(f.digest_of(data).to_proto()),
            data: data.to_vec(),
            compressor: 0,
        }],
        ..Default::default()
    };
    let response = cas.batch_update_blobs(request).await.unwrap().into_inner();
    response.responses[0]
        .status
        .clone()
        .unwrap_or_default()
        .code
}

/// Builds `//gen:slow` (a 4 s action) remotely in a thread, without Bazel-side retries.
fn build_slow(
    url: String,
    bazel: std::path::PathBuf,
) -> std::thread::JoinHandle<std::process::ExitStatus> {
    std::thread::spawn(move || {
        Command::new("bash")
            .arg(fixtures().join("bazel/build_target.sh"))
            .args([
                url.as_str(),
                "//gen:slow",
                "gen/slow.txt",
                "slow action finished",
            ])
            .env("BAZEL", &bazel)
            .env("BAZEL_EXTRA_FLAGS", "--remote_retries=0")
            .status()
            .unwrap()
    })
}

#[tokio::test]
async fn an_s3_outage_fails_writes_with_unavailable_and_heals_without_a_restart() {
    let (Some(bazel), Some(moto_bin)) = (require_tool("BAZEL", "bazel"), Moto::binary()) else {
        return;
    };
    let moto_port = free_port();
    let moto = Moto::start(&moto_bin, moto_port, "remexec-outage");
    let env = moto.env();
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--external-store",
        "s3://remexec-outage/o",
        "--executors",
        "2",
    ];
    let server = ServerProcess::start_at(&listen, data.path(), &flags, &env_refs(&env));
    let mut cas = client::cas_client(client::connect(&server.url()).await.unwrap());
    assert_eq!(write_blob(&mut cas, b"before the outage").await, 0);

    // The S3 server dies in the middle of a build: Bazel's build of a slow action fails (its
    // outputs cannot be stored durably) instead of succeeding with lost outputs.
    let during = build_slow(server.url(), bazel.clone());
    std::thread::sleep(Duration::from_secs(3));
    moto.kill();
    let status = during.join().unwrap();
    assert!(
        !status.success(),
        "a build whose outputs could not be stored succeeded"
    );

    // Reads of blobs held locally still succeed; writes fail with UNAVAILABLE.
    let f = remexec_core::DigestFunction::Sha256;
    let read = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![f.digest_of(b"before the outage").to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].data, b"before the outage");
    let refused = write_blob(&mut cas, b"during the outage").await;
    assert_eq!(
        refused,
        tonic::Code::Unavailable as i32,
        "a write was not refused as UNAVAILABLE"
    );

    // S3 comes back (empty, on the same port): the same server builds again.
    let _moto = Moto::start(&moto_bin, moto_port, "remexec-outage");
    let after = build_slow(server.url(), bazel).join().unwrap();
    assert!(after.success(), "the build failed after S3 came back");
    assert_eq!(write_blob(&mut cas, b"after the outage").await, 0);
}
