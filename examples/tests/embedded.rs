//! The embedding examples, run: a scheduler node over a custom `ExecutorPool`, and a worker
//! node with a custom `Isolation` attached to a scheduler node, each executing an action as
//! Bazel would.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use remexec_core::reapi::GetCapabilitiesRequest;

#[path = "../embedded_worker.rs"]
#[allow(dead_code)]
mod embedded_worker;

use embedded_worker::embedded_scheduler;

#[tokio::test]
async fn a_scheduler_node_runs_actions_on_a_custom_pool_and_capabilities_advertise_execution() {
    let pool = Arc::new(embedded_scheduler::echo_pool());
    let url = embedded_scheduler::start(Some(pool)).await.unwrap();
    let (exit, stdout) =
        remexec_examples::execute(&url, &["hello", "pool"], &[("OSFamily", "echo")])
            .await
            .unwrap();
    assert_eq!((exit, stdout.as_str()), (0, "hello pool\n"));

    let channel = remexec_core::client::connect(&url).await.unwrap();
    let caps = remexec_core::client::capabilities_client(channel.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.execution_capabilities,
        Some(remexec_scheduler::execution_capabilities())
    );
    // No WorkerPool, so no WorkerService to attach to.
    let attach =
        remexec_proto::worker::v1::worker_service_client::WorkerServiceClient::new(channel)
            .attach(futures::stream::empty())
            .await
            .unwrap_err();
    assert_eq!(attach.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn a_worker_node_with_a_custom_isolation_runs_what_its_scheduler_node_leases() {
    let url = embedded_scheduler::start(None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counted = Arc::new(embedded_worker::Counted::default());
    embedded_worker::attach(&url, "embedded", dir.path().to_path_buf(), counted.clone()).unwrap();
    let (exit, stdout) = remexec_examples::execute(&url, &["echo", "hello"], &[])
        .await
        .unwrap();
    assert_eq!((exit, stdout.as_str()), (0, "hello\n"));
    assert_eq!(counted.runs.load(Ordering::Relaxed), 1);
}
