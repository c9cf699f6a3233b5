//! The REAPI services over real gRPC: happy paths, bad input and its status codes.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{TestServer, assert_status, read_all};
use prost::Message;
use remexec_core::testing::content;
use remexec_core::{BlobStoreExt, Digest, DigestFunction};
use remexec_proto::google::bytestream::{QueryWriteStatusRequest, WriteRequest};
use remexec_proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode,
    FileNode, FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest,
    GetTreeRequest, OutputFile, UpdateActionResultRequest, batch_update_blobs_request, compressor,
    digest_function,
};
use tokio_stream::StreamExt;
use tonic::Code;

const SHA256: DigestFunction = DigestFunction::Sha256;

fn update_entry(data: &[u8], digest: reapi::Digest) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest),
        data: data.to_vec(),
        compressor: 0,
    }
}

fn write_stream(
    name: String,
    data: Bytes,
    chunk: usize,
    finish: bool,
) -> impl tokio_stream::Stream<Item = WriteRequest> {
    let chunks: Vec<_> = (0..data.len().div_ceil(chunk).max(1))
        .map(|i| {
            let start = (i * chunk).min(data.len());
            let end = ((i + 1) * chunk).min(data.len());
            WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: start as i64,
                finish_write: finish && end == data.len(),
                data: data[start..end].to_vec(),
            }
        })
        .collect();
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn capabilities_advertise_what_works() {
    let server = TestServer::start().await;
    let caps = server
        .capabilities()
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(
        cache.digest_functions,
        vec![
            digest_function::Value::Sha256 as i32,
            digest_function::Value::Blake3 as i32
        ]
    );
    assert_eq!(
        cache.supported_compressors,
        vec![compressor::Value::Zstd as i32]
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(caps.low_api_version.unwrap().major, 2);
    let high = caps.high_api_version.unwrap();
    assert_eq!((high.major, high.minor), (2, 3));
    assert!(!caps.execution_capabilities.unwrap().exec_enabled);
}

#[tokio::test]
async fn bytestream_round_trip_ranges_and_early_completion() {
    let server = TestServer::start().await;
    let data = content(1, 3 * 1024 * 1024 + 5);
    let d = SHA256.digest_of(&data);
    let name = format!("inst/a/uploads/{}/blobs/{d}", uuid::Uuid::new_v4());
    let resp = server
        .bytestream()
        .write(write_stream(name.clone(), data.clone(), 1 << 20, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, d.size() as i64);
    assert_eq!(
        read_all(&server, format!("inst/a/blobs/{d}"), 0, 0)
            .await
            .unwrap(),
        data
    );
    assert_eq!(
        read_all(&server, format!("inst/a/blobs/{d}"), 100, 50)
            .await
            .unwrap(),
        &data[100..150]
    );
    assert_status(
        read_all(&server, format!("inst/a/blobs/{d}"), d.size() as i64 + 1, 0).await,
        Code::OutOfRange,
        "past the end",
    );
    // Another instance does not see it.
    assert_status(
        read_all(&server, format!("other/blobs/{d}"), 0, 0).await,
        Code::NotFound,
        "not in the CAS",
    );
    // Uploading it again completes after the first message, without the rest of the data.
    let resp = server
        .bytestream()
        .write(write_stream(name, data.slice(..10), 10, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, d.size() as i64);
    // The empty blob always exists.
    let empty = SHA256.empty_digest();
    assert_eq!(
        read_all(&server, format!("blobs/{empty}"), 0, 0)
            .await
            .unwrap(),
        Vec::<u8>::new()
    );
}

#[tokio::test]
async fn bytestream_resumes_an_interrupted_upload() {
    let server = TestServer::start().await;
    let data = content(2, 1 << 20);
    let d = SHA256.digest_of(&data);
    let name = format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4());
    // First stream sends 300 KiB and ends without finish_write.
    let first = server
        .bytestream()
        .write(write_stream(
            name.clone(),
            data.slice(..300 * 1024),
            100 * 1024,
            false,
        ))
        .await;
    assert_status(first, Code::InvalidArgument, "without finish_write");
    let status = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.committed_size, status.complete),
        (300 * 1024, false)
    );
    // Resume from the committed offset.
    let rest: Vec<WriteRequest> = write_stream(name.clone(), data.clone(), 100 * 1024, true)
        .filter(|r| r.write_offset >= 300 * 1024)
        .map(|mut r| {
            r.resource_name = name.clone();
            r
        })
        .collect()
        .await;
    let resp = server
        .bytestream()
        .write(tokio_stream::iter(rest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, d.size() as i64);
    let status = server
        .bytestream()
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.complete);
    assert_eq!(
        server
            .store
            .get_bytes("", d, u64::MAX)
            .await
            .unwrap()
            .unwrap(),
        data
    );
}

#[tokio::test]
async fn zstd_blobs_round_trip_over_bytestream_and_batch() {
    let server = TestServer::start().await;
    let data = Bytes::from(b"compressible ".repeat(100_000));
    let d = DigestFunction::Blake3.digest_of(&data);
    let compressed = Bytes::from(zstd::bulk::compress(&data, 3).unwrap());
    let name = format!(
        "uploads/{}/compressed-blobs/zstd/blake3/{d}",
        uuid::Uuid::new_v4()
    );
    server
        .bytestream()
        .write(write_stream(name, compressed, 4096, true))
        .await
        .unwrap();
    let got = read_all(&server, format!("compressed-blobs/zstd/blake3/{d}"), 0, 0)
        .await
        .unwrap();
    assert_eq!(zstd::stream::decode_all(&got[..]).unwrap(), data);
    assert!(got.len() < data.len() / 10);
    assert_eq!(
        read_all(&server, format!("blobs/blake3/{d}"), 0, 0)
            .await
            .unwrap(),
        data
    );
    assert_status(
        read_all(&server, format!("compressed-blobs/zstd/blake3/{d}"), 0, 5).await,
        Code::InvalidArgument,
        "read_limit",
    );

    let small = Bytes::from_static(b"small zstd blob small zstd blob");
    let sd = SHA256.digest_of(&small);
    let entry = batch_update_blobs_request::Request {
        digest: Some(sd.to_proto()),
        data: zstd::bulk::compress(&small, 1).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    };
    let resp = server
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![entry],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    let read = server
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![sd.to_proto()],
            acceptable_compressors: vec![compressor::Value::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].compressor, compressor::Value::Zstd as i32);
    assert_eq!(
        zstd::stream::decode_all(&read.responses[0].data[..]).unwrap(),
        small
    );
}

#[tokio::test]
async fn wrong_hash_or_size_is_rejected_and_nothing_stored() {
    let server = TestServer::start().await;
    let data = content(3, 200_000);
    let good = SHA256.digest_of(&data);
    let wrong_hash = SHA256.digest_of(b"something else");
    let wrong_hash = Digest::new(SHA256, *wrong_hash.hash(), good.size());
    let wrong_size = Digest::new(SHA256, *good.hash(), good.size() - 1);
    for (d, needle) in [(wrong_hash, "hashes to"), (wrong_size, "digest says")] {
        let name = format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4());
        let result = server
            .bytestream()
            .write(write_stream(name, data.clone(), 50_000, true))
            .await;
        assert_status(result, Code::InvalidArgument, needle);
        assert!(!server.store.contains("", d).await.unwrap());
        let resp = server
            .cas()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![update_entry(&data, d.to_proto())],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let status = resp.responses[0].status.clone().unwrap();
        assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
        assert!(status.message.contains(needle), "{status:?}");
        assert!(!server.store.contains("", d).await.unwrap());
    }
    let missing = server
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![wrong_hash.to_proto(), wrong_size.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing_blob_digests.len(), 2);
}

#[tokio::test]
async fn malformed_names_and_digests_are_invalid_argument() {
    let server = TestServer::start().await;
    let d = SHA256.digest_of(b"x");
    let h = d.hash_hex();
    for (name, needle) in [
        (format!("blobs/{h}"), "missing size"),
        (format!("blobs/{h}/-1"), "negative"),
        (format!("blobs/{}/1", &h[..20]), "characters"),
        (format!("blobs/md5/{h}/1"), "unsupported digest function"),
        (
            format!("compressed-blobs/deflate/{h}/1"),
            "unsupported compressor",
        ),
        (format!("a//b/blobs/{h}/1"), "empty segment"),
        ("nonsense".to_string(), "no blobs"),
    ] {
        assert_status(
            read_all(&server, name.clone(), 0, 0).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let write = server
        .bytestream()
        .write(write_stream(
            format!("uploads/x/blobs/{h}/-1"),
            Bytes::from_static(b"x"),
            1,
            true,
        ))
        .await;
    assert_status(write, Code::InvalidArgument, "negative");
    let write = server
        .bytestream()
        .write(write_stream(
            format!("uploads/x/compressed-blobs/brotli/{h}/1"),
            Bytes::from_static(b"x"),
            1,
            true,
        ))
        .await;
    assert_status(write, Code::InvalidArgument, "unsupported compressor");

    let bad_fn = FindMissingBlobsRequest {
        blob_digests: vec![d.to_proto()],
        digest_function: digest_function::Value::Md5 as i32,
        ..Default::default()
    };
    assert_status(
        server.cas().find_missing_blobs(bad_fn).await,
        Code::InvalidArgument,
        "unsupported digest function MD5",
    );
    let unknown_fn = FindMissingBlobsRequest {
        blob_digests: vec![d.to_proto()],
        digest_function: 77,
        ..Default::default()
    };
    assert_status(
        server.cas().find_missing_blobs(unknown_fn).await,
        Code::InvalidArgument,
        "unknown digest function",
    );
    let negative = FindMissingBlobsRequest {
        blob_digests: vec![reapi::Digest {
            hash: h.clone(),
            size_bytes: -5,
        }],
        ..Default::default()
    };
    assert_status(
        server.cas().find_missing_blobs(negative).await,
        Code::InvalidArgument,
        "negative",
    );
    let upper = FindMissingBlobsRequest {
        blob_digests: vec![reapi::Digest {
            hash: h.to_uppercase(),
            size_bytes: 1,
        }],
        ..Default::default()
    };
    assert_status(
        server.cas().find_missing_blobs(upper).await,
        Code::InvalidArgument,
        "lowercase hex",
    );

    let unknown_compressor = batch_update_blobs_request::Request {
        digest: Some(d.to_proto()),
        data: b"x".to_vec(),
        compressor: 2,
    };
    let resp = server
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![unknown_compressor],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.responses[0].status.clone().unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(
        status.message.contains("unsupported compressor DEFLATE"),
        "{status:?}"
    );
    assert!(!server.store.contains("", d).await.unwrap());

    let bad_instance = GetActionResultRequest {
        instance_name: "a/blobs/b".into(),
        action_digest: Some(d.to_proto()),
        ..Default::default()
    };
    assert_status(
        server.ac().get_action_result(bad_instance).await,
        Code::InvalidArgument,
        "reserved segment",
    );
}

#[tokio::test]
async fn batches_over_the_limit_are_rejected() {
    let server = TestServer::start().await;
    let blobs: Vec<Bytes> = (0..5).map(|i| content(10 + i, 1 << 20)).collect();
    let requests = blobs
        .iter()
        .map(|b| update_entry(b, SHA256.digest_of(b).to_proto()))
        .collect();
    let result = server
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "max_batch_total_size_bytes");
    for b in &blobs {
        assert!(
            !server
                .store
                .contains("", SHA256.digest_of(b))
                .await
                .unwrap(),
            "nothing stored"
        );
    }
    // A small compressed entry claiming a huge size is judged by its claim, before decompressing.
    let claim = reapi::Digest {
        hash: SHA256.digest_of(b"x").hash_hex(),
        size_bytes: 1 << 50,
    };
    let bomb = batch_update_blobs_request::Request {
        digest: Some(claim),
        data: zstd::bulk::compress(b"x", 1).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    };
    let result = server
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![bomb],
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "max_batch_total_size_bytes");
    let digests = blobs
        .iter()
        .map(|b| SHA256.digest_of(b).to_proto())
        .collect();
    let result = server
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests,
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, "max_batch_total_size_bytes");
}

#[tokio::test]
async fn batch_read_reports_missing_blobs_per_entry() {
    let server = TestServer::start().await;
    let present = Bytes::from_static(b"present");
    let pd = SHA256.digest_of(&present);
    server
        .store
        .put_bytes("", pd, present.clone())
        .await
        .unwrap();
    let absent = SHA256.digest_of(b"absent");
    let empty = SHA256.empty_digest();
    let resp = server
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![pd.to_proto(), absent.to_proto(), empty.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, Code::NotFound as i32, 0]);
    assert_eq!(resp.responses[0].data, present);
    let missing = server
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![pd.to_proto(), absent.to_proto(), empty.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing_blob_digests, vec![absent.to_proto()]);
}

/// Stores a chain of `depth` directories, each with one file and one child; returns the root.
async fn store_chain(server: &TestServer, depth: usize) -> Digest {
    let mut child: Option<Digest> = None;
    for level in (0..depth).rev() {
        let file_data = format!("file at level {level}");
        let file = SHA256.digest_of(file_data.as_bytes());
        server
            .store
            .put_bytes("t", file, file_data.into())
            .await
            .unwrap();
        let dir = Directory {
            files: vec![FileNode {
                name: "f".into(),
                digest: Some(file.to_proto()),
                ..Default::default()
            }],
            directories: child
                .map(|c| DirectoryNode {
                    name: format!("d{}", level + 1),
                    digest: Some(c.to_proto()),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let bytes = Bytes::from(dir.encode_to_vec());
        let d = SHA256.digest_of(&bytes);
        server.store.put_bytes("t", d, bytes).await.unwrap();
        child = Some(d);
    }
    child.unwrap()
}

#[tokio::test]
async fn get_tree_pages_through_every_directory() {
    let server = TestServer::start().await;
    let root = store_chain(&server, 25).await;
    let mut token = String::new();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let req = GetTreeRequest {
            instance_name: "t".into(),
            root_digest: Some(root.to_proto()),
            page_size: 10,
            page_token: token.clone(),
            ..Default::default()
        };
        let mut stream = server.cas().get_tree(req).await.unwrap().into_inner();
        // Take only the first page of each call, then resume from its token.
        let page = stream.next().await.unwrap().unwrap();
        assert!(page.directories.len() <= 10);
        seen.extend(page.directories);
        calls += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((seen.len(), calls), (25, 3));
    // One call streams every page.
    let req = GetTreeRequest {
        instance_name: "t".into(),
        root_digest: Some(root.to_proto()),
        page_size: 7,
        ..Default::default()
    };
    let pages: Vec<_> = server
        .cas()
        .get_tree(req)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(pages.len(), 4);
    assert_eq!(
        pages
            .into_iter()
            .map(|p| p.unwrap().directories)
            .collect::<Vec<_>>()
            .concat(),
        seen
    );
    // The same tree as one Tree message, and every file in it.
    let tree = remexec_core::merkle::build_tree(server.store.as_ref(), "t", root)
        .await
        .unwrap();
    assert_eq!(tree.root.as_ref(), seen.first());
    assert_eq!(tree.children, seen[1..].to_vec());
    let files = remexec_core::merkle::tree_file_digests(SHA256, &tree).unwrap();
    assert_eq!(files.len(), 25);
    assert!(
        server
            .store
            .find_missing("t", &files)
            .await
            .unwrap()
            .is_empty()
    );
    // Missing root.
    let missing = GetTreeRequest {
        instance_name: "t".into(),
        root_digest: Some(SHA256.digest_of(b"nope").to_proto()),
        ..Default::default()
    };
    assert_status(
        server.cas().get_tree(missing).await,
        Code::NotFound,
        "not in the CAS",
    );
    let token = GetTreeRequest {
        instance_name: "t".into(),
        root_digest: Some(root.to_proto()),
        page_token: "zz".into(),
        ..Default::default()
    };
    assert_status(
        server.cas().get_tree(token).await,
        Code::InvalidArgument,
        "page_token",
    );
}

#[tokio::test]
async fn get_tree_rejects_an_invalid_directory() {
    let server = TestServer::start().await;
    let f = SHA256.digest_of(b"f");
    let unsorted = Directory {
        files: vec![
            FileNode {
                name: "b".into(),
                digest: Some(f.to_proto()),
                ..Default::default()
            },
            FileNode {
                name: "a".into(),
                digest: Some(f.to_proto()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let dotdot = Directory {
        files: vec![FileNode {
            name: "..".into(),
            digest: Some(f.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    for (dir, needle) in [(unsorted, "not sorted"), (dotdot, "is . or ..")] {
        let bytes = Bytes::from(dir.encode_to_vec());
        let d = SHA256.digest_of(&bytes);
        server.store.put_bytes("", d, bytes).await.unwrap();
        let req = GetTreeRequest {
            root_digest: Some(d.to_proto()),
            ..Default::default()
        };
        assert_status(
            server.cas().get_tree(req).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let garbage = Bytes::from_static(b"\xff\xff\xff not a proto");
    let d = SHA256.digest_of(&garbage);
    server.store.put_bytes("", d, garbage).await.unwrap();
    let req = GetTreeRequest {
        root_digest: Some(d.to_proto()),
        ..Default::default()
    };
    assert_status(
        server.cas().get_tree(req).await,
        Code::InvalidArgument,
        "does not decode",
    );
}

#[tokio::test]
async fn action_cache_round_trip_inlining_and_completeness() {
    let server = TestServer::start().await;
    let action = SHA256.digest_of(b"action");
    let out = Bytes::from_static(b"output bytes");
    let od = SHA256.digest_of(&out);
    let stdout = Bytes::from_static(b"hello on stdout");
    let sd = SHA256.digest_of(&stdout);
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "bin/out".into(),
            digest: Some(od.to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        stdout_digest: Some(sd.to_proto()),
        exit_code: 0,
        ..Default::default()
    };
    let get = |inline: bool| GetActionResultRequest {
        instance_name: "ci".into(),
        action_digest: Some(action.to_proto()),
        inline_stdout: inline,
        inline_output_files: if inline {
            vec!["bin/out".into()]
        } else {
            vec![]
        },
        ..Default::default()
    };
    assert_status(
        server.ac().get_action_result(get(false)).await,
        Code::NotFound,
        "no cached result",
    );
    let update = UpdateActionResultRequest {
        instance_name: "ci".into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    };
    server.ac().update_action_result(update).await.unwrap();
    // Outputs are not in the CAS yet: completeness checking reports a miss.
    assert_status(
        server.ac().get_action_result(get(false)).await,
        Code::NotFound,
        "no cached result",
    );
    server.store.put_bytes("ci", od, out.clone()).await.unwrap();
    server
        .store
        .put_bytes("ci", sd, stdout.clone())
        .await
        .unwrap();
    assert_eq!(
        server
            .ac()
            .get_action_result(get(false))
            .await
            .unwrap()
            .into_inner(),
        result
    );
    let inlined = server
        .ac()
        .get_action_result(get(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inlined.stdout_raw, stdout);
    assert_eq!(inlined.output_files[0].contents, out);
    // Instances are separate.
    let other = GetActionResultRequest {
        instance_name: "other".into(),
        ..get(false)
    };
    assert_status(
        server.ac().get_action_result(other).await,
        Code::NotFound,
        "no cached result",
    );
    // Bad results are rejected.
    let bad = ActionResult {
        output_files: vec![OutputFile {
            path: "/abs".into(),
            digest: Some(od.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let update = UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(bad),
        ..Default::default()
    };
    assert_status(
        server.ac().update_action_result(update).await,
        Code::InvalidArgument,
        "must be relative",
    );
    let update = UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: None,
        ..Default::default()
    };
    assert_status(
        server.ac().update_action_result(update).await,
        Code::InvalidArgument,
        "action_result is missing",
    );
}

/// FindMissingBlobs keeps what it finds, unless the caller only peeks (`remexec-peek`, as
/// remexec's own probes do): later writes evict the blob that was only looked at, not the one
/// that was found.
#[tokio::test]
async fn find_missing_references_what_it_finds_unless_the_caller_only_peeks() {
    use remexec_core::BlobStore;
    let server = TestServer::start_sized(remexec_cas::Limits::default(), 3_000).await;
    let client = remexec_cas::GrpcStore::new(server.channel.clone());
    let blob = |i: u8| {
        let data = bytes::Bytes::from(vec![i; 1_000]);
        (DigestFunction::Sha256.digest_of(&data), data)
    };
    let [a, b, c, d] = [1, 2, 3, 4].map(blob);
    for (digest, data) in [&a, &b] {
        client.put_bytes("", *digest, data.clone()).await.unwrap();
    }
    // `find_missing` sends the peek header; `reference` is a plain FindMissingBlobs.
    assert!(client.find_missing("", &[a.0]).await.unwrap().is_empty());
    assert!(client.reference("", &[b.0]).await.unwrap().is_empty());
    for (digest, data) in [&c, &d] {
        client.put_bytes("", *digest, data.clone()).await.unwrap();
    }
    assert_eq!(
        server.store.find_missing("", &[a.0, b.0]).await.unwrap(),
        vec![a.0],
        "the peeked blob went, the found one stayed"
    );
}
