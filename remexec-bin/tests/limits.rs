//! Every `[limits]` setting refuses what exceeds it, with a clear error and the right code,
//! against a real `remexec scheduler` started with small limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::ServerProcess;
use remexec_cas::GrpcStore;
use remexec_core::client;
use remexec_core::merkle::encode_message;
use remexec_core::reapi::{
    Action, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Command, Directory, DirectoryNode,
    ExecuteRequest, FindMissingBlobsRequest, GetActionResultRequest, batch_update_blobs_request,
};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction};
use remexec_proto::bytestream::WriteRequest;
use remexec_proto::bytestream::byte_stream_client::ByteStreamClient;
use tonic::Code;
use tonic::transport::Channel;

const SHA256: DigestFunction = DigestFunction::Sha256;

const LIMITS: &str = "
[limits]
max_batch_total_size = 32768
max_message_size = 65536
max_blob_size = 1024
max_find_missing_digests = 10
max_batch_blobs = 3
max_tree_depth = 3
max_tree_entries = 50
max_command_size = 1000
max_concurrent_streams = 1
";

fn start(dir: &std::path::Path) -> ServerProcess {
    std::fs::write(dir.join("limits.toml"), LIMITS).unwrap();
    let config = dir.join("limits.toml").display().to_string();
    ServerProcess::start_role("scheduler", &dir.join("data"), &["--config", &config])
}

fn digests(n: usize) -> Vec<remexec_core::reapi::Digest> {
    (0..n)
        .map(|i| SHA256.digest_of(format!("blob {i}").as_bytes()).to_proto())
        .collect()
}

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, limit: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(limit), "{status:?}");
}

#[tokio::test]
async fn counts_sizes_and_message_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let channel = client::connect(&server.url()).await.unwrap();
    let mut cas = client::cas_client(channel.clone());
    let find = |n| FindMissingBlobsRequest {
        blob_digests: digests(n),
        ..Default::default()
    };
    cas.find_missing_blobs(find(10)).await.unwrap();
    refused(
        cas.find_missing_blobs(find(11)).await,
        "max_find_missing_digests",
    );
    let read = BatchReadBlobsRequest {
        digests: digests(4),
        ..Default::default()
    };
    refused(cas.batch_read_blobs(read).await, "max_batch_blobs");
    let blob = |data: Vec<u8>| batch_update_blobs_request::Request {
        digest: Some(SHA256.digest_of(&data).to_proto()),
        data,
        ..Default::default()
    };
    let four = BatchUpdateBlobsRequest {
        requests: (0..4u8).map(|i| blob(vec![i])).collect(),
        ..Default::default()
    };
    refused(cas.batch_update_blobs(four).await, "max_batch_blobs");

    // A blob over max_blob_size: refused in a batch (its own status) and by ByteStream, and
    // never stored.
    let big = vec![7u8; 2048];
    let big_digest = SHA256.digest_of(&big);
    let batch = BatchUpdateBlobsRequest {
        requests: vec![blob(big.clone())],
        ..Default::default()
    };
    let response = cas.batch_update_blobs(batch).await.unwrap().into_inner();
    let status = response.responses[0].status.clone().unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    let write = WriteRequest {
        resource_name: format!(
            "uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            big_digest.hash_hex(),
            big.len()
        ),
        write_offset: 0,
        finish_write: true,
        data: big.into(),
    };
    refused(
        ByteStreamClient::new(channel.clone())
            .write(futures::stream::iter([write]))
            .await,
        "max_blob_size",
    );
    let store = GrpcStore::new(channel.clone());
    assert!(!store.contains("", big_digest).await.unwrap());

    // A message over max_message_size never reaches a handler.
    let huge = GetActionResultRequest {
        instance_name: "x".repeat(100_000),
        action_digest: Some(digests(1)[0].clone()),
        ..Default::default()
    };
    let status = client::action_cache_client(channel)
        .get_action_result(huge)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// Uploads an Action for `command` over the input root `root` (with `dirs`), returns it.
async fn action(store: &dyn BlobStore, command: &Command, dirs: &[Directory]) -> Digest {
    let mut root = None;
    for dir in dirs {
        let (digest, bytes) = encode_message(SHA256, dir);
        store.put_bytes("", digest, bytes).await.unwrap();
        root = Some(digest);
    }
    let (command_digest, command_bytes) = encode_message(SHA256, command);
    store
        .put_bytes("", command_digest, command_bytes)
        .await
        .unwrap();
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.unwrap().to_proto()),
        ..Default::default()
    };
    let (digest, bytes) = encode_message(SHA256, &action);
    store.put_bytes("", digest, bytes).await.unwrap();
    digest
}

/// A chain of `depth` nested directories, innermost first (the root last).
fn nested(depth: usize) -> Vec<Directory> {
    let mut dirs = vec![Directory::default()];
    for _ in 0..depth {
        let (child, _) = encode_message(SHA256, dirs.last().unwrap());
        dirs.push(Directory {
            directories: vec![DirectoryNode {
                name: "d".into(),
                digest: Some(child.to_proto()),
            }],
            ..Default::default()
        });
    }
    dirs
}

async fn execute_code(channel: &Channel, action: Digest) -> (Code, String) {
    let request = ExecuteRequest {
        action_digest: Some(action.to_proto()),
        skip_cache_lookup: true,
        ..Default::default()
    };
    let result = client::execute(
        channel.clone(),
        request,
        &client::FollowOptions::default(),
        |_, _| {},
    )
    .await;
    match result {
        Err(e) => (e.code(), e.to_string()),
        Ok(response) => {
            let status = response.status.unwrap_or_default();
            (Code::from_i32(status.code), status.message)
        }
    }
}

#[tokio::test]
async fn commands_and_input_trees_over_their_limits_are_refused_at_execute() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let channel = client::connect(&server.url()).await.unwrap();
    let store = GrpcStore::new(channel.clone());
    let long = Command {
        arguments: vec!["/bin/echo".into(), "x".repeat(1000)],
        ..Default::default()
    };
    let (code, message) = execute_code(&channel, action(&store, &long, &nested(0)).await).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("max_command_size"), "{message}");

    let short = Command {
        arguments: vec!["/bin/true".into()],
        ..Default::default()
    };
    let (code, message) = execute_code(&channel, action(&store, &short, &nested(4)).await).await;
    assert_ne!(code, Code::Ok, "{message}");
    assert!(message.contains("deep"), "{message}");
    // A wide tree: 8 directories of 8 distinct files each, 72 entries over max_tree_entries =
    // 50 (each directory small enough for max_blob_size), none of the files uploaded: the walk
    // stops before asking for them.
    let leaf = |d: usize| Directory {
        files: (0..8)
            .map(|i| remexec_core::reapi::FileNode {
                name: format!("f{i}"),
                digest: Some(SHA256.digest_of(format!("{d}/{i}").as_bytes()).to_proto()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut dirs: Vec<Directory> = (0..8).map(leaf).collect();
    let root = Directory {
        directories: dirs
            .iter()
            .enumerate()
            .map(|(d, dir)| DirectoryNode {
                name: format!("d{d}"),
                digest: Some(encode_message(SHA256, dir).0.to_proto()),
            })
            .collect(),
        ..Default::default()
    };
    dirs.push(root);
    let (code, message) = execute_code(&channel, action(&store, &short, &dirs).await).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("entries"), "{message}");
}

#[tokio::test]
async fn a_connection_gets_at_most_max_concurrent_streams_calls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let channel = client::connect(&server.url()).await.unwrap();
    // One call holds the only stream: a Write that sent its first chunk and waits.
    let data = vec![1u8; 100];
    let digest = SHA256.digest_of(&data);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(WriteRequest {
        resource_name: format!(
            "uploads/{}/blobs/{}/100",
            uuid::Uuid::new_v4(),
            digest.hash_hex()
        ),
        write_offset: 0,
        finish_write: false,
        data: data[..50].to_vec().into(),
    })
    .await
    .unwrap();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut bytestream = ByteStreamClient::new(channel.clone());
    let write = tokio::spawn(async move { bytestream.write(stream).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cas = client::cas_client(channel.clone());
    let find = || FindMissingBlobsRequest {
        blob_digests: digests(1),
        ..Default::default()
    };
    let queued = tokio::time::timeout(Duration::from_secs(1), cas.find_missing_blobs(find())).await;
    assert!(
        queued.is_err(),
        "a second call ran beside the first: {queued:?}"
    );
    tx.send(WriteRequest {
        write_offset: 50,
        finish_write: true,
        data: data[50..].to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    write.await.unwrap().unwrap();
    cas.find_missing_blobs(find()).await.unwrap();
}

#[test]
fn a_zero_limit_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zero.toml");
    std::fs::write(&config, "[limits]\nmax_batch_blobs = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["scheduler", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.max_batch_blobs must be positive"),
        "{stderr}"
    );
}
