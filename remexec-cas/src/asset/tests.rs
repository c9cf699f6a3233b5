//! The asset services against a real HTTP origin on loopback, called in process.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use remexec_core::{BlobStore, BlobStoreExt, DigestFunction};
use sha2::Digest as _;

use super::*;
use crate::{MemoryActionCache, MemoryStore};

/// An origin serving `files` by name, counting requests; `/slow` never finishes and
/// `/redirect/NAME` redirects to NAME's URL at `localhost`.
struct Origin {
    url: String,
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    files: Arc<Vec<(&'static str, Vec<u8>)>>,
    hits: Arc<AtomicUsize>,
    port: u16,
}

async fn serve_file(State(s): State<Served>, UrlPath(name): UrlPath<String>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if name == "slow" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(target) = name.strip_prefix("redirect-") {
        return Redirect::temporary(&format!("http://localhost:{}/{target}", s.port))
            .into_response();
    }
    match s.files.iter().find(|(n, _)| *n == name) {
        Some((_, data)) => data.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn origin(files: Vec<(&'static str, Vec<u8>)>) -> Origin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let state = Served {
        files: Arc::new(files),
        hits: Arc::clone(&hits),
        port,
    };
    let app = axum::Router::new()
        .route("/{name}", axum::routing::get(serve_file))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Origin {
        url: format!("http://127.0.0.1:{port}"),
        hits,
    }
}

fn service(options: AssetOptions) -> (AssetService, Arc<dyn BlobStore>) {
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(64 << 20));
    let ac = Arc::new(MemoryActionCache::new(16 << 20));
    (
        AssetService::new(Arc::clone(&store), ac, options).unwrap(),
        store,
    )
}

fn loopback_allowed() -> AssetOptions {
    AssetOptions {
        private_addresses: true,
        ..AssetOptions::default()
    }
}

fn q(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

fn sri(data: &[u8]) -> Qualifier {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data));
    q("checksum.sri", &format!("sha256-{hash}"))
}

fn blob_request(uris: &[String], qualifiers: Vec<Qualifier>) -> api::FetchBlobRequest {
    api::FetchBlobRequest {
        uris: uris.to_vec(),
        qualifiers,
        ..Default::default()
    }
}

async fn fetch_blob(s: &AssetService, req: api::FetchBlobRequest) -> api::FetchBlobResponse {
    s.fetch_blob(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner()
}

fn code(status: &Option<remexec_proto::google::rpc::Status>) -> tonic::Code {
    tonic::Code::from_i32(status.as_ref().unwrap().code)
}

#[tokio::test]
async fn a_fetched_blob_is_stored_and_answered_from_the_index_after() {
    let data = b"the origin's content".to_vec();
    let origin = origin(vec![("a.txt", data.clone())]).await;
    let (s, store) = service(loopback_allowed());
    let uri = format!("{}/a.txt", origin.url);
    let req = blob_request(std::slice::from_ref(&uri), vec![sri(&data)]);
    let first = fetch_blob(&s, req.clone()).await;
    assert_eq!(code(&first.status), tonic::Code::Ok, "{:?}", first.status);
    assert_eq!(first.uri, uri);
    let digest = DigestFunction::Sha256.digest_of(&data);
    assert_eq!(first.blob_digest, Some(digest.to_proto()));
    assert_eq!(
        store.get_bytes("", digest, 1 << 20).await.unwrap().unwrap(),
        data
    );
    let second = fetch_blob(&s, req.clone()).await;
    assert_eq!(second.blob_digest, first.blob_digest);
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        1,
        "the second came from the index"
    );
    // Content older than the client accepts is fetched again.
    let mut fresh = req;
    fresh.oldest_content_accepted = Some(Timestamp {
        seconds: index::now() + 10,
        nanos: 0,
    });
    let third = fetch_blob(&s, fresh).await;
    assert_eq!(third.blob_digest, first.blob_digest);
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_wrong_checksum_is_aborted_and_nothing_is_stored_or_remembered() {
    let data = b"tampered".to_vec();
    let origin = origin(vec![("a.txt", data.clone())]).await;
    let (s, store) = service(loopback_allowed());
    let uri = format!("{}/a.txt", origin.url);
    let wrong = fetch_blob(
        &s,
        blob_request(std::slice::from_ref(&uri), vec![sri(b"expected")]),
    )
    .await;
    assert_eq!(
        code(&wrong.status),
        tonic::Code::Aborted,
        "{:?}",
        wrong.status
    );
    assert_eq!(wrong.blob_digest, None);
    let digest = DigestFunction::Sha256.digest_of(&data);
    assert!(!store.contains("", digest).await.unwrap());
    // The same wrong checksum again goes to the origin again: no association was kept.
    let again = fetch_blob(&s, blob_request(&[uri], vec![sri(b"expected")])).await;
    assert_eq!(code(&again.status), tonic::Code::Aborted);
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn later_uris_are_tried_when_earlier_ones_fail() {
    let origin = origin(vec![("b.txt", b"b".to_vec())]).await;
    let (s, _) = service(loopback_allowed());
    let uris = [
        format!("{}/missing", origin.url),
        format!("{}/b.txt", origin.url),
    ];
    let got = fetch_blob(&s, blob_request(&uris, vec![])).await;
    assert_eq!(code(&got.status), tonic::Code::Ok);
    assert_eq!(got.uri, uris[1]);
    let missing = fetch_blob(&s, blob_request(&uris[..1], vec![])).await;
    assert_eq!(
        code(&missing.status),
        tonic::Code::NotFound,
        "{:?}",
        missing.status
    );
}

#[tokio::test]
async fn loopback_and_private_origins_are_refused_unless_allowed() {
    let origin = origin(vec![("a.txt", b"secret".to_vec())]).await;
    let (s, _) = service(AssetOptions::default());
    let port = origin.url.rsplit(':').next().unwrap();
    for uri in [
        format!("{}/a.txt", origin.url),
        // A name that resolves to loopback is refused as well, before any connection.
        format!("http://localhost:{port}/a.txt"),
        format!("http://[::ffff:127.0.0.1]:{port}/a.txt"),
    ] {
        let got = fetch_blob(&s, blob_request(std::slice::from_ref(&uri), vec![])).await;
        assert_eq!(
            code(&got.status),
            tonic::Code::PermissionDenied,
            "{uri}: {:?}",
            got.status
        );
    }
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        0,
        "no request reached the origin"
    );
    // A redirect to a host not on the list is not followed.
    let listed = AssetOptions {
        allowed_hosts: Some(vec!["127.0.0.1".into()]),
        private_addresses: true,
        ..AssetOptions::default()
    };
    let (s, _) = service(listed);
    let got = fetch_blob(
        &s,
        blob_request(&[format!("{}/redirect-a.txt", origin.url)], vec![]),
    )
    .await;
    assert_eq!(
        code(&got.status),
        tonic::Code::PermissionDenied,
        "{:?}",
        got.status
    );
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        1,
        "only the redirect itself"
    );
}

#[tokio::test]
async fn downloads_take_turns_and_are_counted() {
    let origin = origin(vec![("a.txt", b"a".to_vec())]).await;
    let metrics = remexec_core::metrics::Metrics::new();
    let (s, _) = service(AssetOptions {
        max_concurrent_fetches: 1,
        ..loopback_allowed()
    });
    let s = s.with_metrics(metrics.clone());
    // One download never ends; the next waits for its turn, within its own timeout.
    let stuck = s.clone();
    let slow = blob_request(&[format!("{}/slow", origin.url)], vec![]);
    let hold = tokio::spawn(async move { fetch_blob(&stuck, slow).await });
    while origin.hits.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut waiting = blob_request(&[format!("{}/a.txt", origin.url)], vec![]);
    waiting.timeout = Some(ProtoDuration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let got = fetch_blob(&s, waiting.clone()).await;
    assert_eq!(
        code(&got.status),
        tonic::Code::DeadlineExceeded,
        "{:?}",
        got.status
    );
    assert!(got.status.unwrap().message.contains("no turn"));
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        1,
        "it never reached the origin"
    );
    hold.abort();
    let _ = hold.await;
    // The turn is free again: fetched, then answered from the index.
    waiting.timeout = None;
    assert_eq!(
        code(&fetch_blob(&s, waiting.clone()).await.status),
        tonic::Code::Ok
    );
    assert_eq!(code(&fetch_blob(&s, waiting).await.status), tonic::Code::Ok);
    let text = metrics.encode();
    for line in [
        r#"remexec_asset_fetches_total{result="failed"} 1"#,
        r#"remexec_asset_fetches_total{result="origin"} 1"#,
        r#"remexec_asset_fetches_total{result="index"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn downloads_are_bounded_in_size_and_time() {
    let origin = origin(vec![("big", vec![7u8; 100_000])]).await;
    let small = AssetOptions {
        max_size: 50_000,
        ..loopback_allowed()
    };
    let (s, _) = service(small);
    let big = fetch_blob(&s, blob_request(&[format!("{}/big", origin.url)], vec![])).await;
    assert_eq!(
        code(&big.status),
        tonic::Code::ResourceExhausted,
        "{:?}",
        big.status
    );
    let mut slow = blob_request(&[format!("{}/slow", origin.url)], vec![]);
    slow.timeout = Some(ProtoDuration {
        seconds: 0,
        nanos: 300_000_000,
    });
    let got = fetch_blob(&s, slow).await;
    assert_eq!(
        code(&got.status),
        tonic::Code::DeadlineExceeded,
        "{:?}",
        got.status
    );
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() {
    let (s, _) = service(loopback_allowed());
    let uri = vec!["http://127.0.0.1:1/a".to_string()];
    for (req, why) in [
        (blob_request(&[], vec![]), "no URI"),
        (
            blob_request(&uri, vec![q("a", "1"), q("a", "2")]),
            "a qualifier twice",
        ),
        (
            blob_request(&uri, vec![q("git.branch", "main")]),
            "a qualifier no download honours",
        ),
        (
            blob_request(&uri, vec![q("checksum.sri", "md5-AAAA")]),
            "an unusable checksum",
        ),
        (
            blob_request(&uri, vec![q("http_header:bad name", "x")]),
            "a malformed header",
        ),
        (blob_request(&["a\0b".into()], vec![]), "a NUL"),
        (
            blob_request(&["x".repeat(70_000)], vec![]),
            "an oversized URI",
        ),
    ] {
        let err = s.fetch_blob(tonic::Request::new(req)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err:?}");
    }
    let mut bad_instance = blob_request(&uri, vec![]);
    bad_instance.instance_name = "../x".into();
    let err = s
        .fetch_blob(tonic::Request::new(bad_instance))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn pushed_blobs_are_fetched_without_an_origin_until_they_expire() {
    let (s, store) = service(AssetOptions {
        fetch: false,
        ..AssetOptions::default()
    });
    let uri = "https://example.com/pushed.txt".to_string();
    let qualifiers = vec![q("vcs.commit", "abc")];
    let data = b"pushed";
    let digest = DigestFunction::Sha256.digest_of(data);
    let push = |expire_at: Option<Timestamp>| api::PushBlobRequest {
        uris: vec![uri.clone()],
        qualifiers: qualifiers.clone(),
        blob_digest: Some(digest.to_proto()),
        expire_at,
        ..Default::default()
    };
    // Content the CAS lacks cannot be pushed.
    let err = s
        .push_blob(tonic::Request::new(push(None)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    store
        .put_bytes("", digest, data.to_vec().into())
        .await
        .unwrap();
    s.push_blob(tonic::Request::new(push(None))).await.unwrap();
    let got = fetch_blob(
        &s,
        blob_request(std::slice::from_ref(&uri), qualifiers.clone()),
    )
    .await;
    assert_eq!(code(&got.status), tonic::Code::Ok);
    assert_eq!(got.blob_digest, Some(digest.to_proto()));
    // Other qualifiers are another asset: unknown here, and this server does not download.
    let other = fetch_blob(&s, blob_request(std::slice::from_ref(&uri), vec![])).await;
    assert_eq!(code(&other.status), tonic::Code::NotFound);
    // An association that has expired is not used.
    let past = Timestamp {
        seconds: index::now() - 10,
        nanos: 0,
    };
    s.push_blob(tonic::Request::new(push(Some(past))))
        .await
        .unwrap();
    let expired = fetch_blob(&s, blob_request(&[uri], qualifiers)).await;
    assert_eq!(code(&expired.status), tonic::Code::NotFound);
}

fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw: the builder itself refuses `..`, a hostile archive does not.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, data) in entries {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o755);
        writer.start_file(*path, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

async fn fetch_dir(s: &AssetService, uri: String) -> api::FetchDirectoryResponse {
    let req = api::FetchDirectoryRequest {
        uris: vec![uri],
        ..Default::default()
    };
    s.fetch_directory(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn archives_are_unpacked_into_directory_trees_within_their_limits() {
    let good_tar = tar_gz(&[("src/a.c", b"int a;", 0o644), ("run.sh", b"echo", 0o755)]);
    let good_zip = zip(&[("src/a.c", b"int a;"), ("run.sh", b"echo")]);
    let evil_tar = tar_gz(&[("../escaped", b"x", 0o644)]);
    let bomb_zip = zip(&[("zeros", &vec![0u8; 200_000])]);
    let origin = origin(vec![
        ("good.tar.gz", good_tar),
        ("good.zip", good_zip),
        ("evil.tar.gz", evil_tar),
        ("bomb.zip", bomb_zip),
    ])
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let (s, store) = service(AssetOptions {
        max_size: 100_000,
        scratch: Some(scratch.path().to_path_buf()),
        ..loopback_allowed()
    });
    for name in ["good.tar.gz", "good.zip"] {
        let got = fetch_dir(&s, format!("{}/{name}", origin.url)).await;
        assert_eq!(
            code(&got.status),
            tonic::Code::Ok,
            "{name}: {:?}",
            got.status
        );
        let root = Digest::from_proto(DigestFunction::Sha256, &got.root_directory_digest.unwrap())
            .unwrap();
        let tree = remexec_core::merkle::fetch_tree(&*store, "", root)
            .await
            .unwrap();
        let top = tree.directory(&root).unwrap();
        assert_eq!(top.directories[0].name, "src", "{name}");
        assert_eq!(top.files[0].name, "run.sh");
        assert!(top.files[0].is_executable, "{name}");
        let src = Digest::from_proto(
            DigestFunction::Sha256,
            top.directories[0].digest.as_ref().unwrap(),
        )
        .unwrap();
        let file = tree.directory(&src).unwrap().files[0]
            .digest
            .clone()
            .unwrap();
        let file = Digest::from_proto(DigestFunction::Sha256, &file).unwrap();
        assert_eq!(
            store.get_bytes("", file, 100).await.unwrap().unwrap(),
            &b"int a;"[..]
        );
    }
    for name in ["evil.tar.gz", "bomb.zip"] {
        let got = fetch_dir(&s, format!("{}/{name}", origin.url)).await;
        assert_eq!(
            code(&got.status),
            tonic::Code::InvalidArgument,
            "{name}: {:?}",
            got.status
        );
    }
    assert!(!scratch.path().join("escaped").exists());
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "scratch is cleaned up"
    );
}

/// An `https` origin: Python's HTTP server behind TLS with a demo certificate for 127.0.0.1,
/// serving `dir`. Its port, and the CA that signed its certificate.
fn https_origin(dir: &std::path::Path) -> (std::process::Child, u16, Vec<u8>) {
    let files = remexec_core::dev_certs::generate().unwrap();
    let file = |name: &str| {
        let f = files.iter().find(|f| f.name == name).unwrap();
        std::fs::write(dir.join(name), &f.contents).unwrap();
        f.contents.clone().into_bytes()
    };
    let ca = file("ca.pem");
    file("server.pem");
    file("server.key");
    let script = "import http.server, ssl, sys\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain('server.pem', 'server.key')\n\
        srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
        print(srv.server_address[1], flush=True)\n\
        srv.serve_forever()\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    (child, line.trim().parse().unwrap(), ca)
}

#[tokio::test]
async fn https_origins_are_fetched_over_tls_trusting_only_the_roots_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"over tls").unwrap();
    let (mut child, port, ca) = https_origin(dir.path());
    let uri = format!("https://127.0.0.1:{port}/a.txt");
    // The demo CA is no web root: refused.
    let (untrusting, _) = service(loopback_allowed());
    let got = fetch_blob(
        &untrusting,
        blob_request(std::slice::from_ref(&uri), vec![]),
    )
    .await;
    assert_eq!(
        code(&got.status),
        tonic::Code::Unavailable,
        "{:?}",
        got.status
    );
    let (trusting, store) = service(AssetOptions {
        extra_roots: vec![ca],
        ..loopback_allowed()
    });
    let got = fetch_blob(&trusting, blob_request(&[uri], vec![sri(b"over tls")])).await;
    assert_eq!(code(&got.status), tonic::Code::Ok, "{:?}", got.status);
    let digest = DigestFunction::Sha256.digest_of(b"over tls");
    assert_eq!(got.blob_digest, Some(digest.to_proto()));
    assert!(store.contains("", digest).await.unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A tar that plants a symlink out of the archive and then writes through it.
fn tar_through_a_symlink(outside: &std::path::Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_link_name(outside).unwrap();
    builder.append_data(&mut link, "link", &[][..]).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_size(4);
    file.set_mode(0o644);
    file.set_entry_type(tar::EntryType::Regular);
    let name = b"link/evil";
    file.as_old_mut().name[..name.len()].copy_from_slice(name);
    file.set_cksum();
    builder.append(&file, &b"evil"[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn archives_never_write_through_their_own_symlinks_and_redirect_loops_end() {
    let outside = tempfile::tempdir().unwrap();
    let origin = origin(vec![
        ("through.tar.gz", tar_through_a_symlink(outside.path())),
        ("a.txt", b"a".to_vec()),
    ])
    .await;
    let (s, _) = service(loopback_allowed());
    let got = fetch_dir(&s, format!("{}/through.tar.gz", origin.url)).await;
    assert_eq!(
        code(&got.status),
        tonic::Code::InvalidArgument,
        "{:?}",
        got.status
    );
    assert!(
        !outside.path().join("evil").exists(),
        "written through the symlink"
    );
    // Eleven redirects (each to localhost, allowed here) are one too many.
    let chain = format!("{}/{}a.txt", origin.url, "redirect-".repeat(11));
    let got = fetch_blob(&s, blob_request(&[chain], vec![])).await;
    assert_eq!(
        code(&got.status),
        tonic::Code::Unavailable,
        "{:?}",
        got.status
    );
    assert!(got.status.unwrap().message.contains("redirect"));
    let ten = format!("{}/{}a.txt", origin.url, "redirect-".repeat(10));
    let got = fetch_blob(&s, blob_request(&[ten], vec![])).await;
    assert_eq!(code(&got.status), tonic::Code::Ok, "{:?}", got.status);
}
