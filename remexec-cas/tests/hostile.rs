//! Hostile clients against the cache services: stalled uploads must not stall anyone else.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, assert_status, read_all};
use remexec_cas::Limits;
use remexec_core::testing::content;
use remexec_core::{BlobStoreExt, DigestFunction};
use remexec_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
use remexec_proto::reapi::BatchReadBlobsRequest;
use tonic::Code;

const SHA256: DigestFunction = DigestFunction::Sha256;

/// Files in the store's upload directory: one per upload that has received data.
fn uploads_in_progress(server: &TestServer) -> usize {
    std::fs::read_dir(server.dir.path().join("cas/tmp")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_stall_nothing_else() {
    const STALLED: usize = 520;
    let server = TestServer::start().await;
    let stored: Vec<_> = (0..4).map(|i| content(i, 64 * 1024)).collect();
    let digests: Vec<_> = stored.iter().map(|b| SHA256.digest_of(b)).collect();
    for (b, d) in stored.iter().zip(&digests) {
        server.store.put_bytes("", *d, b.clone()).await.unwrap();
    }
    // 520 uploads over 8 connections (HTTP/2 limits streams per connection), each sending one
    // byte of a larger blob and then nothing, with the stream held open. The blobs are larger
    // than the disk store packs (64 KiB), so that each upload shows as a file in `cas/tmp`.
    // (A packed upload is gathered in memory by its task, up to 64 KiB, and holds no thread.)
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let mut held = Vec::new();
    for i in 0..STALLED {
        let blob = content(1000 + i as u64, 128 * 1024);
        let d = SHA256.digest_of(&blob);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(WriteRequest {
            resource_name: format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4()),
            write_offset: 0,
            finish_write: false,
            data: blob[..1].to_vec(),
        })
        .await
        .unwrap();
        let mut client = ByteStreamClient::new(channels[i % channels.len()].clone());
        held.push((
            tx,
            tokio::spawn(async move {
                client
                    .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            }),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while uploads_in_progress(&server) < STALLED && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        uploads_in_progress(&server),
        STALLED,
        "every stalled upload has started"
    );
    // Reads of stored blobs still answer promptly, both batch and ByteStream.
    let batch = tokio::time::timeout(
        Duration::from_secs(3),
        server.cas().batch_read_blobs(BatchReadBlobsRequest {
            digests: digests.iter().map(|d| d.to_proto()).collect(),
            ..Default::default()
        }),
    )
    .await
    .expect("BatchReadBlobs answered while uploads stall")
    .unwrap()
    .into_inner();
    for (response, blob) in batch.responses.iter().zip(&stored) {
        assert_eq!(response.data, blob.to_vec());
    }
    for (d, blob) in digests.iter().zip(&stored) {
        let read = read_all(&server, format!("blobs/{d}"), 0, 0);
        let out = tokio::time::timeout(Duration::from_secs(3), read)
            .await
            .expect("ByteStream Read answered while uploads stall")
            .unwrap();
        assert_eq!(out, blob.to_vec());
    }
    drop(held);
}

#[tokio::test]
async fn an_idle_upload_is_cut_off_and_can_resume() {
    let mut limits = Limits::default();
    limits.upload_idle_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(limits).await;
    let blob = content(7, 8192);
    let d = SHA256.digest_of(&blob);
    let name = format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: blob[..100].to_vec(),
    })
    .await
    .unwrap();
    let result = server
        .bytestream()
        .write(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    assert_status(result, Code::DeadlineExceeded, "no data for");
    drop(tx);
    let status = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (100, false));
    let rest = WriteRequest {
        resource_name: name,
        write_offset: 100,
        finish_write: true,
        data: blob[100..].to_vec(),
    };
    let done = server
        .bytestream()
        .write(tokio_stream::iter([rest]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_size, d.size() as i64);
    assert_eq!(
        server
            .store
            .get_bytes("", d, u64::MAX)
            .await
            .unwrap()
            .unwrap(),
        blob
    );
}
