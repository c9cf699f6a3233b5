//! TLS, mutual TLS, bearer tokens, JWTs, anonymous access and the worker port, against real
//! `remexec` processes over real TLS, with certificates from `remexec tls dev-certs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ServerProcess, dev_certs, path_arg as arg};
use remexec_core::DigestFunction;
use remexec_core::client::{self, ClientIdentity, ClientTls};
use remexec_core::reapi::{
    ActionResult, BatchUpdateBlobsRequest, Digest as PbDigest, ExecuteRequest,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest,
    UpdateActionResultRequest, batch_update_blobs_request,
};
use remexec_proto::bytestream::WriteRequest;
use remexec_proto::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::worker::v1::worker_service_client::WorkerServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Trusts `dir`'s CA; presents `dir/{identity}.pem` if given.
fn tls(dir: &Path, identity: Option<&str>) -> ClientTls {
    ClientTls {
        ca_pem: Some(std::fs::read(dir.join("ca.pem")).unwrap()),
        domain: None,
        identity: identity.map(|name| ClientIdentity {
            cert_pem: std::fs::read(dir.join(format!("{name}.pem"))).unwrap(),
            key_pem: std::fs::read(dir.join(format!("{name}.key"))).unwrap(),
        }),
    }
}

fn grpcs(addr: std::net::SocketAddr) -> String {
    format!("grpcs://localhost:{}", addr.port())
}

async fn channel(url: &str, tls: &ClientTls) -> Result<Channel, remexec_core::Error> {
    client::connect_with(url, tls).await
}

/// GetCapabilities through `url`: the code, or `Ok` (a failed connection is `Unavailable`).
async fn capabilities(url: &str, tls: &ClientTls) -> Code {
    let Ok(channel) = channel(url, tls).await else {
        return Code::Unavailable;
    };
    match client::capabilities_client(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn bearer<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

fn blob() -> (PbDigest, Vec<u8>) {
    let data = b"security test blob".to_vec();
    (DigestFunction::Sha256.digest_of(&data).to_proto(), data)
}

/// The code of each of the four writes (UpdateActionResult, BatchUpdateBlobs, ByteStream
/// Write, Execute) on `instance` with `token`.
async fn writes(channel: &Channel, instance: &str, token: Option<&str>) -> [Code; 4] {
    let (digest, data) = blob();
    let update = client::action_cache_client(channel.clone())
        .update_action_result(bearer(
            UpdateActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(digest.clone()),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            },
            token,
        ))
        .await;
    let batch = client::cas_client(channel.clone())
        .batch_update_blobs(bearer(
            BatchUpdateBlobsRequest {
                instance_name: instance.into(),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(digest.clone()),
                    data: data.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            token,
        ))
        .await;
    let prefix = if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    };
    let write = WriteRequest {
        resource_name: format!(
            "{prefix}uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            digest.hash,
            digest.size_bytes
        ),
        write_offset: 0,
        finish_write: true,
        data: data.into(),
    };
    let write = ByteStreamClient::new(channel.clone())
        .write(bearer(futures::stream::iter([write]), token))
        .await;
    let execute = client::execution_client(channel.clone())
        .execute(bearer(
            ExecuteRequest {
                instance_name: instance.into(),
                action_digest: Some(digest),
                skip_cache_lookup: true,
                ..Default::default()
            },
            token,
        ))
        .await;
    [code(update), code(batch), code(write), code(execute)]
}

async fn read(channel: &Channel, instance: &str, token: Option<&str>) -> Code {
    let (digest, _) = blob();
    let get = client::action_cache_client(channel.clone())
        .get_action_result(bearer(
            GetActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(digest),
                ..Default::default()
            },
            token,
        ))
        .await;
    code(get)
}

async fn find_missing(channel: &Channel, instance: &str, token: Option<&str>) -> Code {
    let (digest, _) = blob();
    code(
        client::cas_client(channel.clone())
            .find_missing_blobs(bearer(
                FindMissingBlobsRequest {
                    instance_name: instance.into(),
                    blob_digests: vec![digest],
                    ..Default::default()
                },
                token,
            ))
            .await,
    )
}

#[tokio::test]
async fn plaintext_to_a_tls_port_fails_and_only_the_right_ca_is_trusted() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let data = tempfile::tempdir().unwrap();
    let c = certs.path();
    let server = ServerProcess::start_role(
        "scheduler",
        data.path(),
        &[
            "--tls-cert",
            &arg(c, "server.pem"),
            "--tls-key",
            &arg(c, "server.key"),
        ],
    );
    assert_ne!(
        capabilities(&server.url(), &ClientTls::default()).await,
        Code::Ok
    );
    // The built-in roots do not know the demo CA.
    assert_ne!(
        capabilities(&grpcs(server.addr), &ClientTls::default()).await,
        Code::Ok
    );
    let other = tempfile::tempdir().unwrap();
    dev_certs(other.path());
    assert_ne!(
        capabilities(&grpcs(server.addr), &tls(other.path(), None)).await,
        Code::Ok
    );
    assert_eq!(
        capabilities(&grpcs(server.addr), &tls(c, None)).await,
        Code::Ok
    );
}

#[tokio::test]
async fn an_mtls_scheduler_refuses_clients_without_a_certificate_of_its_ca() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let c = certs.path();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_role(
        "scheduler",
        data.path(),
        &[
            "--tls-cert",
            &arg(c, "server.pem"),
            "--tls-key",
            &arg(c, "server.key"),
            "--client-ca",
            &arg(c, "ca.pem"),
        ],
    );
    let url = grpcs(server.addr);
    assert_ne!(capabilities(&url, &tls(c, None)).await, Code::Ok);
    let other = tempfile::tempdir().unwrap();
    dev_certs(other.path());
    let mut foreign = tls(c, None);
    foreign.identity = tls(other.path(), Some("client")).identity;
    assert_ne!(capabilities(&url, &foreign).await, Code::Ok);
    assert_eq!(capabilities(&url, &tls(c, Some("client"))).await, Code::Ok);
    let channel = channel(&url, &tls(c, Some("client"))).await.unwrap();
    assert_eq!(read(&channel, "any/instance", None).await, Code::NotFound);
    assert_eq!(writes(&channel, "", None).await[..2], [Code::Ok, Code::Ok]);
}

fn token_file(dir: &Path, entries: &[(&str, &str, &str, &str)]) -> String {
    let mut text = String::new();
    for (name, token, permissions, instances) in entries {
        text += &format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\npermissions = [{permissions}]\ninstances = [{instances}]\n",
            remexec_core::auth::hash_token(token)
        );
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn tokens_are_checked_and_give_exactly_their_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        dir.path(),
        &[
            ("reader", "reader-secret", r#""cache-read""#, r#""*""#),
            (
                "team-a",
                "team-a-secret",
                r#""cache-read", "cache-write", "execute""#,
                r#""a""#,
            ),
        ],
    );
    let server = ServerProcess::start_role(
        "scheduler",
        &dir.path().join("data"),
        &["--token-file", &tokens],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    assert_eq!(read(&channel, "", None).await, Code::Unauthenticated);
    assert_eq!(
        read(&channel, "", Some("wrong")).await,
        Code::Unauthenticated
    );
    assert_eq!(
        read(&channel, "", Some("reader-secret")).await,
        Code::NotFound
    );
    assert_eq!(
        find_missing(&channel, "x", Some("reader-secret")).await,
        Code::Ok
    );
    assert_eq!(
        writes(&channel, "", Some("reader-secret")).await,
        [Code::PermissionDenied; 4],
        "a read-only token writes nothing"
    );
    assert_eq!(
        read(&channel, "b", Some("team-a-secret")).await,
        Code::PermissionDenied
    );
    assert_eq!(
        find_missing(&channel, "b", Some("team-a-secret")).await,
        Code::PermissionDenied
    );
    assert_eq!(
        writes(&channel, "b", Some("team-a-secret")).await,
        [Code::PermissionDenied; 4]
    );
    assert_eq!(
        read(&channel, "a", Some("team-a-secret")).await,
        Code::NotFound
    );
    let [update, batch, write, _] = writes(&channel, "a", Some("team-a-secret")).await;
    assert_eq!([update, batch, write], [Code::Ok; 3]);
    assert_eq!(read(&channel, "a", Some("team-a-secret")).await, Code::Ok);
    // The reader sees team a's entry (it may read every instance) but the refused writes of
    // instance "" stored nothing.
    assert_eq!(read(&channel, "a", Some("reader-secret")).await, Code::Ok);
    assert_eq!(
        read(&channel, "", Some("reader-secret")).await,
        Code::NotFound
    );
}

#[tokio::test]
async fn anonymous_callers_can_be_read_only_while_a_token_writes() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        dir.path(),
        &[(
            "ci",
            "ci-secret",
            r#""cache-read", "cache-write""#,
            r#""*""#,
        )],
    );
    let server = ServerProcess::start_role(
        "scheduler",
        &dir.path().join("data"),
        &["--token-file", &tokens, "--allow-anonymous", "cache-read"],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    assert_eq!(read(&channel, "", None).await, Code::NotFound);
    assert_eq!(
        writes(&channel, "", None).await,
        [Code::PermissionDenied; 4]
    );
    assert_eq!(
        read(&channel, "", Some("bad-secret")).await,
        Code::Unauthenticated
    );
    assert_eq!(writes(&channel, "", Some("ci-secret")).await[0], Code::Ok);
    assert_eq!(read(&channel, "", None).await, Code::Ok);
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    permissions: Vec<String>,
}

fn jwt(secret: &[u8], exp_from_now: i64, permissions: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: "tester".into(),
        exp: now.saturating_add_signed(exp_from_now),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn jwts_are_verified_and_an_expired_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"a-shared-hs256-secret-of-at-least-32-bytes";
    std::fs::write(dir.path().join("jwt.key"), secret).unwrap();
    let server = ServerProcess::start_role(
        "scheduler",
        &dir.path().join("data"),
        &["--jwt-key", &arg(dir.path(), "jwt.key")],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    let reader = jwt(secret, 600, &["cache-read"]);
    assert_eq!(read(&channel, "", Some(&reader)).await, Code::NotFound);
    assert_eq!(
        writes(&channel, "", Some(&reader)).await,
        [Code::PermissionDenied; 4]
    );
    let expired = jwt(secret, -600, &["cache-read", "cache-write"]);
    assert_eq!(
        read(&channel, "", Some(&expired)).await,
        Code::Unauthenticated
    );
    let forged = jwt(
        b"another-secret-another-secret-another",
        600,
        &["cache-write"],
    );
    assert_eq!(
        read(&channel, "", Some(&forged)).await,
        Code::Unauthenticated
    );
    let writer = jwt(secret, 600, &["cache-read", "cache-write"]);
    assert_eq!(
        writes(&channel, "", Some(&writer)).await[..3],
        [Code::Ok; 3]
    );
}

/// Opens the worker API's Attach stream through `url`; the code it gets.
async fn attach(url: &str, tls: &ClientTls) -> Code {
    let Ok(channel) = channel(url, tls).await else {
        return Code::Unavailable;
    };
    // One empty message (not a registration), then the stream stays open.
    let (keep, rx) = tokio::sync::mpsc::channel(1);
    keep.send(remexec_proto::worker::v1::WorkerMessage::default())
        .await
        .unwrap();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    match tokio::time::timeout(
        Duration::from_secs(10),
        WorkerServiceClient::new(channel).attach(stream),
    )
    .await
    {
        Ok(result) => code(result),
        Err(_) => Code::DeadlineExceeded,
    }
}

#[tokio::test]
async fn the_worker_port_admits_cluster_certificates_only() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let c = certs.path();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_role(
        "scheduler",
        data.path(),
        &[
            "--tls-cert",
            &arg(c, "server.pem"),
            "--tls-key",
            &arg(c, "server.key"),
            "--client-ca",
            &arg(c, "ca.pem"),
            "--worker-listen",
            "127.0.0.1:0",
        ],
    );
    let worker_port = server.worker_addr.expect("a worker port");
    let url = grpcs(worker_port);
    assert_ne!(
        attach(&format!("grpc://{worker_port}"), &ClientTls::default()).await,
        Code::Ok
    );
    assert_ne!(attach(&url, &tls(c, None)).await, Code::Ok);
    assert_eq!(
        attach(&url, &tls(c, Some("client"))).await,
        Code::PermissionDenied
    );
    // Past authentication, the worker service itself refuses a stream that does not register.
    assert_eq!(
        attach(&url, &tls(c, Some("cluster"))).await,
        Code::InvalidArgument
    );
    // The client port serves no worker API at all, whoever asks.
    assert_eq!(
        attach(&grpcs(server.addr), &tls(c, Some("cluster"))).await,
        Code::Unimplemented
    );
}

fn install(from: &Path, to: &Path) {
    for name in ["server.pem", "server.key"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

fn sighup(server: &ServerProcess) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_open_connections() {
    let (a, b, live) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    dev_certs(a.path());
    dev_certs(b.path());
    install(a.path(), live.path());
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_role(
        "scheduler",
        data.path(),
        &[
            "--tls-cert",
            &arg(live.path(), "server.pem"),
            "--tls-key",
            &arg(live.path(), "server.key"),
        ],
    );
    let url = grpcs(server.addr);
    let open = channel(&url, &tls(a.path(), None)).await.unwrap();
    assert_eq!(find_missing(&open, "", None).await, Code::Ok);

    install(b.path(), live.path());
    sighup(&server);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while capabilities(&url, &tls(b.path(), None)).await != Code::Ok {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(capabilities(&url, &tls(a.path(), None)).await, Code::Ok);
    // The connection opened before the reload still works (a reconnect would fail: it
    // trusts only the old CA).
    assert_eq!(find_missing(&open, "", None).await, Code::Ok);

    // A broken key is refused and the server keeps serving the last good certificate.
    std::fs::write(live.path().join("server.key"), "not a key").unwrap();
    sighup(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(capabilities(&url, &tls(b.path(), None)).await, Code::Ok);
    assert_eq!(find_missing(&open, "", None).await, Code::Ok);
}

#[test]
fn remexec_exec_runs_over_mutual_tls_with_its_tls_flags() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let c = certs.path();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--tls-cert",
            &arg(c, "server.pem"),
            "--tls-key",
            &arg(c, "server.key"),
            "--client-ca",
            &arg(c, "ca.pem"),
            "--executors",
            "1",
        ],
    );
    let run = |extra: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
            .args([
                "exec",
                "--server",
                &grpcs(server.addr),
                "--tls-ca",
                &arg(c, "ca.pem"),
            ])
            .args(extra)
            .args(["--", "echo", "over mTLS"])
            .current_dir(data.path())
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert!(
        !refused.status.success(),
        "ran without a client certificate"
    );
    let ok = run(&[
        "--tls-cert".into(),
        arg(c, "client.pem"),
        "--tls-key".into(),
        arg(c, "client.key"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "over mTLS\n");
}

#[test]
fn a_plaintext_worker_port_cannot_bypass_the_client_port_s_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        dir.path(),
        &[("ci", "ci-secret", r#""cache-read""#, r#""*""#)],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
        ])
        .args(["--token-file", &tokens, "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the worker port needs TLS"), "{stderr}");
}

#[tokio::test]
async fn with_its_own_cluster_ca_no_client_certificate_is_a_cluster_member() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    dev_certs(a.path());
    dev_certs(b.path());
    let start = |extra: &[&str]| {
        let data = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--tls-cert".to_string(),
            arg(a.path(), "server.pem"),
            "--tls-key".to_string(),
            arg(a.path(), "server.key"),
            "--client-ca".to_string(),
            arg(a.path(), "ca.pem"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (
            ServerProcess::start_role("scheduler", data.path(), &args),
            data,
        )
    };
    // One CA for clients and the cluster: its cluster certificate may attach on the client port.
    let (shared, _d1) = start(&[]);
    assert_eq!(
        attach(&grpcs(shared.addr), &tls(a.path(), Some("cluster"))).await,
        Code::InvalidArgument
    );
    assert_eq!(
        attach(&grpcs(shared.addr), &tls(a.path(), Some("client"))).await,
        Code::PermissionDenied
    );
    // A separate cluster CA: a certificate of the client CA named like a cluster member is not one.
    let cluster_ca = arg(b.path(), "ca.pem");
    let (separate, _d2) = start(&["--cluster-ca", &cluster_ca]);
    assert_eq!(
        attach(&grpcs(separate.addr), &tls(a.path(), Some("cluster"))).await,
        Code::PermissionDenied
    );
}

/// FindMissingBlobs of one blob on the CAS at `url`: the code, and whether it is present.
async fn holds(url: &str, tls: &ClientTls, digest: &PbDigest) -> (Code, bool) {
    let Ok(channel) = channel(url, tls).await else {
        return (Code::Unavailable, false);
    };
    let request = FindMissingBlobsRequest {
        blob_digests: vec![digest.clone()],
        ..Default::default()
    };
    match client::cas_client(channel)
        .find_missing_blobs(request)
        .await
    {
        Ok(reply) => (Code::Ok, reply.into_inner().missing_blob_digests.is_empty()),
        Err(status) => (status.code(), false),
    }
}

/// A scheduler (`--replicas 1`, TLS, reaching workers with the cluster certificate) and one
/// worker whose CAS port has the worker's cluster certificate; and that port.
fn tls_cluster(c: &Path, data: &Path) -> (ServerProcess, common::KillOnDrop, u16) {
    let config = data.join("scheduler.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            arg(c, "ca.pem"),
            arg(c, "cluster.pem"),
            arg(c, "cluster.key")
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (cert, key) = (arg(c, "server.pem"), arg(c, "server.key"));
    let port = common::free_port();
    let (listen, seed) = (
        format!("127.0.0.1:{port}"),
        format!("grpcs://127.0.0.1:{port}"),
    );
    let scheduler = ServerProcess::start_role(
        "scheduler",
        &data.join("scheduler"),
        &[
            "--config",
            &config,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--replicas",
            "1",
            "--storage",
            &seed,
        ],
    );
    let (ca, cert, key) = (
        arg(c, "ca.pem"),
        arg(c, "cluster.pem"),
        arg(c, "cluster.key"),
    );
    let worker = common::KillOnDrop(common::start_worker_at(
        &grpcs(scheduler.addr),
        "w1",
        &data.join("w1"),
        1,
        &[
            "--replicas",
            "1",
            "--listen",
            &listen,
            "--storage",
            &seed,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        std::process::Stdio::inherit(),
    ));
    (scheduler, worker, port)
}

/// Writes `data` through the scheduler at `front` until it takes it (the worker has joined).
async fn store_through(front: &Channel, digest: &PbDigest, data: &[u8]) -> bool {
    for _ in 0..100 {
        let request = BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(digest.clone()),
                data: data.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let reply = client::cas_client(front.clone())
            .batch_update_blobs(request)
            .await
            .unwrap()
            .into_inner();
        let ok = |r: &remexec_core::reapi::batch_update_blobs_response::Response| {
            r.status.as_ref().is_none_or(|s| s.code == 0)
        };
        if reply.responses.iter().all(ok) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A worker's CAS port, given the worker's cluster certificate: plaintext refused, no client
/// certificate refused, a client certificate that is not a cluster certificate refused, a
/// cluster certificate admitted; the scheduler reaches it with its own cluster certificate, so
/// a blob written through the scheduler lands there.
#[tokio::test]
async fn a_worker_cas_port_admits_cluster_certificates_only() {
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let c = certs.path();
    let data = tempfile::tempdir().unwrap();
    // The worker is killed when the test ends, whether it passes or not.
    let (scheduler, _worker, port) = tls_cluster(c, data.path());
    let (digest, bytes) = blob();
    let cas = format!("grpcs://localhost:{port}");
    let cluster = tls(c, Some("cluster"));
    let mut up = Code::Unavailable;
    for _ in 0..100 {
        up = holds(&cas, &cluster, &digest).await.0;
        if up == Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        up,
        Code::Ok,
        "the CAS port never admitted the cluster certificate"
    );
    let plain = format!("grpc://127.0.0.1:{port}");
    assert_ne!(
        holds(&plain, &ClientTls::default(), &digest).await.0,
        Code::Ok
    );
    assert_ne!(holds(&cas, &tls(c, None), &digest).await.0, Code::Ok);
    assert_eq!(
        holds(&cas, &tls(c, Some("client")), &digest).await.0,
        Code::PermissionDenied
    );
    // Through the scheduler, once the worker is a member: the blob lands on the worker.
    let front = channel(&grpcs(scheduler.addr), &tls(c, None))
        .await
        .unwrap();
    assert!(
        store_through(&front, &digest, &bytes).await,
        "the scheduler never stored the blob on its worker"
    );
    assert_eq!(holds(&cas, &cluster, &digest).await, (Code::Ok, true));
}

/// The Bazel cluster test over TLS: Bazel reaches the scheduler over TLS, the scheduler and the
/// worker reach the worker's CAS port with their cluster certificates, and every action runs
/// remotely, its results served from the cache on the rebuild.
#[test]
fn bazel_builds_on_a_cluster_whose_cas_ports_admit_cluster_certificates_only() {
    let Some(bazel) = common::require_tool("BAZEL", "bazel") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    dev_certs(certs.path());
    let c = certs.path();
    let data = tempfile::tempdir().unwrap();
    let (scheduler, _worker, _) = tls_cluster(c, data.path());
    let (digest, bytes) = blob();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let joined = runtime.block_on(async {
        let front = channel(&grpcs(scheduler.addr), &tls(c, None))
            .await
            .unwrap();
        store_through(&front, &digest, &bytes).await
    });
    assert!(joined, "the worker never joined the storage plane");
    let status = std::process::Command::new("bash")
        .arg(common::fixtures().join("bazel/exec_e2e.sh"))
        .arg(grpcs(scheduler.addr))
        .env("BAZEL", bazel)
        .env(
            "BAZEL_EXTRA_FLAGS",
            format!("--tls_certificate={}", arg(c, "ca.pem")),
        )
        .status()
        .unwrap();
    assert!(status.success(), "exec_e2e.sh over TLS failed: {status}");
}

/// Fetch needs `fetch` besides `cache-read`, and Push `cache-write`; through a real server, a
/// fetch from the cloud's metadata address is refused by the origin policy even for a caller
/// allowed to fetch.
#[tokio::test]
async fn fetching_needs_the_fetch_permission_and_pushing_cache_write() {
    use remexec_proto::build::bazel::remote::asset::v1::fetch_client::FetchClient;
    use remexec_proto::build::bazel::remote::asset::v1::push_client::PushClient;
    use remexec_proto::build::bazel::remote::asset::v1::{FetchBlobRequest, PushBlobRequest};
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(
        dir.path(),
        &[
            ("reader", "reader-secret", r#""cache-read""#, r#""*""#),
            (
                "fetcher",
                "fetcher-secret",
                r#""cache-read", "fetch""#,
                r#""*""#,
            ),
            (
                "writer",
                "writer-secret",
                r#""cache-read", "cache-write""#,
                r#""*""#,
            ),
        ],
    );
    let server = ServerProcess::start_role(
        "scheduler",
        &dir.path().join("data"),
        &["--token-file", &tokens],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    let fetch = |token: &'static str| {
        let channel = channel.clone();
        async move {
            let request = FetchBlobRequest {
                uris: vec!["http://169.254.169.254/latest/meta-data/".into()],
                ..Default::default()
            };
            FetchClient::new(channel)
                .fetch_blob(bearer(request, Some(token)))
                .await
        }
    };
    assert_eq!(code(fetch("reader-secret").await), Code::PermissionDenied);
    assert_eq!(code(fetch("writer-secret").await), Code::PermissionDenied);
    let reply = fetch("fetcher-secret").await.unwrap().into_inner();
    let status = reply.status.unwrap();
    assert_eq!(
        Code::from_i32(status.code),
        Code::PermissionDenied,
        "{status:?}"
    );
    assert!(status.message.contains("not public"), "{status:?}");
    assert_eq!(reply.blob_digest, None);
    let push = |token: &'static str| {
        let channel = channel.clone();
        async move {
            let request = PushBlobRequest {
                uris: vec!["https://example.com/a".into()],
                blob_digest: Some(blob().0),
                ..Default::default()
            };
            PushClient::new(channel)
                .push_blob(bearer(request, Some(token)))
                .await
        }
    };
    assert_eq!(code(push("fetcher-secret").await), Code::PermissionDenied);
    // Allowed, but the blob is not in the CAS.
    assert_eq!(code(push("writer-secret").await), Code::FailedPrecondition);
}
