//! External storage: a `remexec` in front of an upstream REAPI server (`--external-store
//! grpc://…`) that is wiped and still serves everything, TLS to the upstream (`grpcs://` with a
//! private CA), and the example configs of docs/examples.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::ServerProcess;
use remexec_bin::config::Config;
use remexec_bin::server::{BoundServer, Role};
use remexec_cas::{
    CacheServices, DiskActionCache, DiskStore, DiskStoreOptions, GrpcActionCache, GrpcStore,
    MemoryActionCache, MemoryStore,
};
use remexec_core::client::ClientTls;
use remexec_core::reapi::{ActionResult, OutputFile};
use remexec_core::testing::content;
use remexec_core::{ActionCache, BlobStore, BlobStoreExt, Digest, DigestFunction, Error};

/// What the proxy test writes: blobs, and an action result that names them.
struct Written {
    blobs: Vec<(Digest, Bytes)>,
    action: Digest,
    result: ActionResult,
}

fn sample() -> Written {
    // One blob for BatchUpdateBlobs, one large enough for ByteStream.
    let blobs: Vec<(Digest, Bytes)> = [content(1, 1000), content(2, 3 << 20)]
        .into_iter()
        .map(|data| (DigestFunction::Sha256.digest_of(&data), data))
        .collect();
    let result = ActionResult {
        exit_code: 0,
        output_files: vec![OutputFile {
            path: "out/big".into(),
            digest: Some(blobs[1].0.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(blobs[0].0.to_proto()),
        ..Default::default()
    };
    Written {
        blobs,
        action: DigestFunction::Sha256.digest_of(b"the proxied action"),
        result,
    }
}

/// A CAS and Action Cache client of the server at `url`.
fn clients(url: &str) -> (GrpcStore, GrpcActionCache) {
    let channel = remexec_core::client::connect_lazy(url).unwrap();
    (
        GrpcStore::new(channel.clone()),
        GrpcActionCache::new(channel),
    )
}

const INSTANCE: &str = "front/main";
const UPSTREAM: &str = "shared";

/// Starts `remexec scheduler` in front of `back` with `--external-store`, the upstream instance
/// name coming from a config file.
fn start_front(dir: &Path, back: &ServerProcess) -> ServerProcess {
    let config = dir.join("front.toml");
    std::fs::write(
        &config,
        format!("[external]\nupstream_instance = \"{UPSTREAM}\"\n"),
    )
    .unwrap();
    ServerProcess::start_role(
        "scheduler",
        &dir.join("front"),
        &[
            "-c",
            config.to_str().unwrap(),
            "--external-store",
            &back.url(),
        ],
    )
}

async fn assert_all_served(url: &str, w: &Written) {
    let (cas, ac) = clients(url);
    assert_eq!(
        ac.get(INSTANCE, w.action).await.unwrap(),
        Some(w.result.clone())
    );
    for (digest, data) in &w.blobs {
        let got = cas.get_bytes(INSTANCE, *digest, u64::MAX).await.unwrap();
        assert_eq!(got.as_ref(), Some(data), "blob {digest}");
    }
}

/// Whether every blob of `blobs` is on disk under `cas`: in a file named by its hash, or, if
/// small, packed in a segment file.
fn on_disk(cas: &std::path::Path, blobs: &[(Digest, Bytes)]) -> bool {
    let mut files = Vec::new();
    let mut stack = vec![cas.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let packed: Vec<Vec<u8>> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    blobs.iter().all(|(d, data)| {
        let hash = d.hash_hex();
        let named = files
            .iter()
            .any(|p| p.to_string_lossy().contains(hash.as_str()));
        named
            || packed
                .iter()
                .any(|seg| seg.windows(data.len().max(1)).any(|w| w == &data[..]))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_proxy_serves_everything_from_upstream_and_keeps_a_local_copy() {
    let dir = tempfile::tempdir().unwrap();
    let back = ServerProcess::start_role("scheduler", &dir.path().join("back"), &[]);
    let w = sample();

    let front = start_front(dir.path(), &back);
    let (cas, ac) = clients(&front.url());
    for (digest, data) in &w.blobs {
        cas.put_bytes(INSTANCE, *digest, data.clone())
            .await
            .unwrap();
    }
    ac.put(INSTANCE, w.action, w.result.clone()).await.unwrap();
    // Written through: upstream holds everything, under the upstream instance name.
    let (back_cas, back_ac) = clients(&back.url());
    let digests: Vec<Digest> = w.blobs.iter().map(|(d, _)| *d).collect();
    assert!(
        back_cas
            .find_missing(UPSTREAM, &digests)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        back_ac.get(UPSTREAM, w.action).await.unwrap(),
        Some(w.result.clone())
    );
    assert_eq!(back_ac.get(INSTANCE, w.action).await.unwrap(), None);
    front.terminate();

    // A full wipe of the front, restarted on the same config.
    std::fs::remove_dir_all(dir.path().join("front")).unwrap();
    let front = start_front(dir.path(), &back);
    assert_all_served(&front.url(), &w).await;
    // Reads fill the local disk beside the reader, in the background: wait for the blobs to
    // be on disk before stopping the server (a stop does not wait for fills in flight).
    let filled = || on_disk(&dir.path().join("front/cas"), &w.blobs);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !filled() {
        assert!(
            std::time::Instant::now() < deadline,
            "the reads never filled the local disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    front.terminate();

    // What was read is now in the front's own stores.
    let front_dir = dir.path().join("front");
    let options = DiskStoreOptions {
        budget: 1 << 30,
        sync: false,
        ..Default::default()
    };
    let disk = DiskStore::open(front_dir.join("cas"), options)
        .await
        .unwrap();
    assert!(
        disk.find_missing(INSTANCE, &digests)
            .await
            .unwrap()
            .is_empty()
    );
    let local_ac = DiskActionCache::open(front_dir.join("ac"), 1 << 30, false)
        .await
        .unwrap();
    assert_eq!(
        local_ac.get(INSTANCE, w.action).await.unwrap(),
        Some(w.result.clone())
    );
    drop((disk, local_ac));

    // Without the upstream, a wiped server has nothing: what the front served came from there.
    std::fs::remove_dir_all(&front_dir).unwrap();
    let alone = ServerProcess::start_role("scheduler", &front_dir, &[]);
    let (cas, ac) = clients(&alone.url());
    assert_eq!(ac.get(INSTANCE, w.action).await.unwrap(), None);
    assert_eq!(cas.find_missing(INSTANCE, &digests).await.unwrap(), digests);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_fails_writes_instead_of_acknowledging_them() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("grpc://{}", listener.local_addr().unwrap());
    drop(listener);
    // The front starts while its upstream is down (the channel connects lazily).
    let front = ServerProcess::start_role("scheduler", dir.path(), &["--external-store", &nobody]);
    let (cas, ac) = clients(&front.url());
    let w = sample();
    let (digest, data) = &w.blobs[0];
    let err = cas.put_bytes("", *digest, data.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let err = ac
        .put("", w.action, ActionResult::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it, as PEM:
/// (CA certificate, server certificate, server key).
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "remexec test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

/// Serves memory stores over TLS on a free loopback port: (the back store, its `grpcs://` URL).
async fn serve_tls(cert: &str, key: &str) -> (Arc<MemoryStore>, String) {
    let store = Arc::new(MemoryStore::new(64 << 20));
    let routes =
        CacheServices::new(store.clone(), Arc::new(MemoryActionCache::new(1 << 20))).into_routes();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_routes(routes)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (store, format!("grpcs://{addr}"))
}

#[tokio::test]
async fn an_upstream_over_tls_is_reached_with_its_ca_and_refused_without() {
    let (ca, cert, key) = certificates();
    let (back, url) = serve_tls(&cert, &key).await;
    let with_ca = ClientTls {
        ca_pem: Some(ca.clone().into_bytes()),
        ..ClientTls::default()
    };
    let channel = remexec_core::client::connect_with(&url, &with_ca)
        .await
        .unwrap();
    let store = GrpcStore::new(channel.clone());
    let ac = GrpcActionCache::new(channel);
    let w = sample();
    for (digest, data) in &w.blobs {
        store.put_bytes("", *digest, data.clone()).await.unwrap();
        assert!(back.contains("", *digest).await.unwrap());
    }
    ac.put("", w.action, w.result.clone()).await.unwrap();
    assert_eq!(ac.get("", w.action).await.unwrap(), Some(w.result.clone()));
    // The certificate names localhost too.
    let by_name = ClientTls {
        domain: Some("localhost".into()),
        ..with_ca.clone()
    };
    remexec_core::client::connect_with(&url, &by_name)
        .await
        .unwrap();

    // Without the CA (the public roots), with another CA, for another name, or in plaintext:
    // no connection, and nothing is sent.
    let (other_ca, _, _) = certificates();
    let refused = [
        ClientTls::default(),
        ClientTls {
            ca_pem: Some(other_ca.into_bytes()),
            ..ClientTls::default()
        },
        ClientTls {
            domain: Some("example.com".into()),
            ..with_ca
        },
    ];
    for tls in refused {
        let err = remexec_core::client::connect_with(&url, &tls)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{tls:?}: {err:?}");
    }
    let plain = url.replacen("grpcs://", "grpc://", 1);
    let (cas, _) = clients(&plain);
    assert!(cas.find_missing("", &[w.action]).await.is_err());
}

#[tokio::test]
async fn a_server_reaches_its_upstream_over_tls_with_the_configured_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let (back, url) = serve_tls(&cert, &key).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let mut config = Config::from_toml(&format!(
        "[external]\nurl = \"{url}\"\nca_file = {ca_file:?}\n"
    ))
    .unwrap();
    config.data_dir = dir.path().join("front");
    config.listen = "127.0.0.1:0".parse().unwrap();
    let front = BoundServer::bind(&config, Role::Scheduler).await.unwrap();
    let front_url = format!("grpc://{}", front.local_addr().unwrap());
    tokio::spawn(front.serve(std::future::pending()));
    let (cas, ac) = clients(&front_url);
    let w = sample();
    for (digest, data) in &w.blobs {
        cas.put_bytes("", *digest, data.clone()).await.unwrap();
        assert!(back.contains("", *digest).await.unwrap(), "written through");
    }
    ac.put("", w.action, w.result.clone()).await.unwrap();
    assert_eq!(ac.get("", w.action).await.unwrap(), Some(w.result));
}

#[test]
fn the_external_store_flag_and_section_are_read_and_checked() {
    use clap::Parser;
    use remexec_bin::cli::{Cli, Command};
    let resolve = |args: &[&str]| {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Serve(a) | Command::Scheduler(a) => a.resolve(),
            _ => unreachable!(),
        }
    };
    let config = resolve(&["remexec", "serve", "--external-store", "s3://bucket/prefix"]).unwrap();
    assert_eq!(config.external.url, "s3://bucket/prefix");
    let config = resolve(&["remexec", "scheduler", "--external-store", "grpc://h:1"]).unwrap();
    assert_eq!(config.external.url, "grpc://h:1");
    let err = resolve(&["remexec", "serve", "--external-store", "ftp://h/x"]).unwrap_err();
    assert!(err.contains("ftp"), "{err}");
    assert_eq!(resolve(&["remexec", "serve"]).unwrap().external.url, "");
}

#[test]
fn every_example_config_parses_and_names_an_external_store() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        // isolation.toml and buildstream.toml are about executor groups (tests/isolation.rs
        // and tests/e2e_clients.rs run them).
        let groups = path.ends_with("isolation.toml") || path.ends_with("buildstream.toml");
        if path.extension().is_some_and(|e| e == "toml") && !groups {
            let config = Config::from_file(&path).unwrap();
            config
                .external
                .kind()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "external-azure.toml",
            "external-file.toml",
            "external-gcs.toml",
            "external-s3.toml",
            "proxy.toml"
        ]
    );
}

/// The daemon's default build has every object-store backend the README names: s3://, gs://
/// and az:// open (nothing is sent before the first blob), and none says it needs a cargo
/// feature. The binary's default features in Cargo.toml list them.
#[test]
fn the_default_build_opens_s3_gcs_and_azure_stores() {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
    )
    .unwrap();
    let default = manifest
        .lines()
        .find(|l| l.starts_with("default = "))
        .expect("a default feature list");
    for feature in ["\"s3\"", "\"gcs\"", "\"azure\"", "\"docker\""] {
        assert!(default.contains(feature), "{feature} not in {default}");
    }
    let key = "a2V5"; // base64 of "key": the Azure builder wants one, never used here
    let azure = [
        ("AZURE_STORAGE_ACCOUNT_NAME", "devaccount"),
        ("AZURE_STORAGE_ACCOUNT_KEY", key),
    ];
    for url in [
        "s3://bucket/prefix",
        "gs://bucket/prefix",
        "az://container/prefix",
    ] {
        let data = tempfile::tempdir().unwrap();
        // Panics if the server exits before it listens.
        let server = ServerProcess::start_at(
            "127.0.0.1:0",
            data.path(),
            &["--external-store", url, "--executors", "1"],
            &azure,
        );
        drop(server);
    }
}
