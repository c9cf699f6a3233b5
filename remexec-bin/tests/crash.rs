//! Crash safety: a server process taking concurrent uploads is killed with SIGKILL mid-stream.
//! After a restart every acknowledged blob reads back hash-correct, and no partial blob is ever
//! visible or served.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::ServerProcess;
use remexec_core::testing::content;
use remexec_core::{Digest, DigestFunction};
use remexec_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::google::bytestream::{ReadRequest, WriteRequest};
use remexec_proto::reapi::FindMissingBlobsRequest;
use remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::Digest as _;
use tokio_stream::StreamExt;

const CHUNK: usize = 64 * 1024;

/// Uploads `data` slowly (a pause between chunks) so that uploads are mid-stream when killed.
async fn slow_upload(url: String, digest: Digest, data: Bytes) -> Result<(), tonic::Status> {
    let mut client = ByteStreamClient::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let name = format!("uploads/{}/blobs/{digest}", uuid::Uuid::new_v4());
    let total = data.len();
    let requests = async_stream_of(name, data);
    let response = client.write(requests).await?.into_inner();
    assert_eq!(response.committed_size as usize, total);
    Ok(())
}

fn async_stream_of(name: String, data: Bytes) -> impl tokio_stream::Stream<Item = WriteRequest> {
    let n = data.len().div_ceil(CHUNK);
    tokio_stream::iter(0..n).then(move |i| {
        let data = data.clone();
        let name = name.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let end = ((i + 1) * CHUNK).min(data.len());
            WriteRequest {
                resource_name: if i == 0 { name } else { String::new() },
                write_offset: (i * CHUNK) as i64,
                finish_write: end == data.len(),
                data: data[i * CHUNK..end].to_vec(),
            }
        }
    })
}

async fn read_back(url: &str, digest: Digest) -> Option<Vec<u8>> {
    let mut client = ByteStreamClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let req = ReadRequest {
        resource_name: format!("blobs/{digest}"),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = match client.read(req).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return None,
        Err(s) => panic!("read {digest}: {s}"),
    };
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(m) => out.extend(m.data),
            Err(s) if s.code() == tonic::Code::NotFound => return None,
            Err(s) => panic!("read {digest}: {s}"),
        }
    }
    Some(out)
}

/// Blobs from 1 byte to 2 MiB: mostly files of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_blobs_survive_sigkill_and_partial_blobs_never_appear() {
    let (acked, dir) = kill_mid_upload(|seed| 1 + (seed as usize * 7919) % (2 << 20)).await;
    check_files(dir.path(), &acked);
}

/// Blobs of up to 16 KiB, all packed into segments with group commit: none acknowledged is
/// lost to a kill, none torn is served, and they take a few files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_blobs_survive_sigkill_and_torn_ones_never_appear() {
    let (acked, dir) = kill_mid_upload(|seed| 1 + (seed as usize * 7919) % (16 << 10)).await;
    let segments = walk(&dir.path().join("cas/packed"));
    assert!(!segments.is_empty() && segments.len() <= 4, "{segments:?}");
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
}

/// Every file outside the segments hashes to its name, and no temp file survived the restart.
fn check_files(dir: &std::path::Path, acked: &BTreeSet<Digest>) {
    let mut files = 0;
    for entry in walk(&dir.join("cas")) {
        let name = entry.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            !entry.starts_with(dir.join("cas/tmp")),
            "temp file {name} left after restart"
        );
        if entry.starts_with(dir.join("cas/packed")) {
            continue;
        }
        let (hash, size) = name.split_once('-').unwrap();
        let bytes = std::fs::read(&entry).unwrap();
        assert_eq!(bytes.len().to_string(), size, "{name}");
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), hash, "{name}");
        files += 1;
    }
    let unpacked = acked.iter().filter(|d| d.size() > 64 << 10).count();
    assert!(files >= unpacked, "{files} files for {unpacked} blobs");
}

/// Eight writers upload blobs of `size(seed)` bytes to a server killed mid-stream; after a
/// restart every acknowledged blob reads back and every blob present is whole. Returns the
/// acknowledged blobs and the server's directory.
async fn kill_mid_upload(size: fn(u64) -> usize) -> (BTreeSet<Digest>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let url = server.http_url();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (url, acked, attempted) = (url.clone(), acked.clone(), attempted.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..1000u64 {
                // Sizes from 1 chunk to ~2 MiB; workers 0 and 1 upload the same blobs to
                // exercise concurrent writers of one digest.
                let seed = if worker < 2 {
                    round
                } else {
                    worker * 10_000 + round
                };
                let data = content(seed, size(seed));
                let digest = DigestFunction::Sha256.digest_of(&data);
                attempted.lock().unwrap().push(digest);
                match slow_upload(url.clone(), digest, data).await {
                    Ok(()) => {
                        acked.lock().unwrap().insert(digest);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let acked_before_kill = acked.lock().unwrap().len();
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted: BTreeSet<Digest> = attempted.lock().unwrap().iter().copied().collect();
    assert!(
        acked_before_kill >= 4,
        "too few uploads finished before the kill ({acked_before_kill}); the test proves nothing"
    );
    assert!(
        attempted.len() > acked.len(),
        "no upload was in flight at the kill"
    );

    let server = ServerProcess::start(dir.path(), &[]);
    let url = server.http_url();
    // Every acknowledged blob is present and hash-correct.
    for digest in &acked {
        let data = read_back(&url, *digest)
            .await
            .unwrap_or_else(|| panic!("acknowledged blob {digest} lost"));
        assert_eq!(
            DigestFunction::Sha256.digest_of(&data),
            *digest,
            "acknowledged blob {digest} corrupted"
        );
    }
    let present_unacked = check_present(&url, &attempted, &acked).await;
    eprintln!(
        "acked {} of {} attempted; {present_unacked} completed but unacknowledged",
        acked.len(),
        attempted.len()
    );
    drop(server);
    (acked, dir)
}

/// Every blob of `attempted` the server at `url` admits to holding, acknowledged or not, is
/// complete and correct, and none of `acked` is missing. Returns how many it holds that were
/// not acknowledged.
async fn check_present(url: &str, attempted: &BTreeSet<Digest>, acked: &BTreeSet<Digest>) -> usize {
    // Every blob the server admits to holding, acknowledged or not, is complete and correct.
    let mut cas = ContentAddressableStorageClient::connect(url.to_string())
        .await
        .unwrap();
    let query = FindMissingBlobsRequest {
        blob_digests: attempted.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let missing: BTreeSet<String> = cas
        .find_missing_blobs(query)
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
        .into_iter()
        .map(|d| d.hash)
        .collect();
    let mut present_unacked = 0;
    for digest in attempted {
        if missing.contains(&digest.hash_hex()) {
            assert!(
                !acked.contains(digest),
                "acknowledged blob {digest} reported missing"
            );
            continue;
        }
        let data = read_back(url, *digest)
            .await
            .expect("present blob readable");
        assert_eq!(
            DigestFunction::Sha256.digest_of(&data),
            *digest,
            "partial or corrupt blob {digest} served"
        );
        present_unacked += usize::from(!acked.contains(digest));
    }
    present_unacked
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
