//! Health, readiness and drain of a real `remexec serve`: `/healthz`, `/readyz` and the gRPC
//! health service, before and after SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::ServerProcess;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The status code of `GET path` on `addr`, or `None` if nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    common::http_get(addr, path, &[]).map(|(code, _)| code)
}

/// The gRPC health of the whole server through a new connection to `url`.
async fn grpc_health(url: &str) -> Option<ServingStatus> {
    let channel = remexec_core::client::connect(url).await.ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

// Multi-threaded, so that this process's client connections answer the server's GOAWAY
// while the test thread blocks waiting for the server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_the_server_unready_before_its_listeners_close() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-secs",
            "3",
            "--executors",
            "1",
        ],
    );
    let admin = server.admin_addr.expect("an admin port");
    let url = server.url();
    assert_eq!(http_status(admin, "/healthz"), Some(200));
    assert_eq!(http_status(admin, "/readyz"), Some(200));
    assert_eq!(http_status(admin, "/nothing"), Some(404));
    assert_eq!(grpc_health(&url).await, Some(ServingStatus::Serving));

    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).unwrap());
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Within the drain period: not ready on both, while new connections are still served.
    let deadline = Instant::now() + Duration::from_secs(2);
    while http_status(admin, "/readyz") != Some(503) {
        assert!(
            Instant::now() < deadline,
            "/readyz still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(grpc_health(&url).await, Some(ServingStatus::NotServing));
    assert_eq!(http_status(admin, "/healthz"), Some(200));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the checks ran past the drain period"
    );
    // Then the server stops.
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "closed before the drain period ended: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "did not stop after draining: {took:?}"
    );
    assert_eq!(grpc_health(&url).await, None);
}
