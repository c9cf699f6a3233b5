//! `WorkerPool` over a real tonic server on 127.0.0.1, with fake workers: names cannot be
//! taken over, results count only from the lease holder, large messages travel, bad results
//! never detach, dropped runs cancel their lease, and wedged workers are detached.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use remexec_core::Error;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::reapi::{ActionResult, Command};
use remexec_proto::worker::v1::worker_message::Message as M;
use remexec_proto::worker::v1::{
    Lease, LeaseResult, Register, SchedulerMessage, WorkerMessage, scheduler_message,
};
use remexec_scheduler::{ExecutorPool, JobOutcome, WorkerPool};
use support::{FakeWorker, attach, bare_job, serve_pool};
use tokio_util::sync::CancellationToken;

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next message the scheduler sends a fake worker.
async fn next(worker: &mut FakeWorker) -> scheduler_message::Message {
    let msg: SchedulerMessage = tokio::time::timeout(Duration::from_secs(20), worker.1.message())
        .await
        .expect("no message from the scheduler")
        .unwrap()
        .unwrap();
    msg.message.unwrap()
}

async fn next_lease(worker: &mut FakeWorker) -> Lease {
    match next(worker).await {
        scheduler_message::Message::Lease(lease) => lease,
        other => panic!("expected a lease, got {other:?}"),
    }
}

async fn send_result(worker: &FakeWorker, lease_id: &str, code: i32, result: ActionResult) {
    let result = LeaseResult {
        lease_id: lease_id.into(),
        status: Some(RpcStatus {
            code,
            ..Default::default()
        }),
        result: Some(result),
    };
    worker
        .0
        .send(WorkerMessage {
            message: Some(M::Result(result)),
        })
        .await
        .unwrap();
}

fn exit(code: i32) -> ActionResult {
    ActionResult {
        exit_code: code,
        ..Default::default()
    }
}

fn run(
    pool: &WorkerPool,
    executor: &str,
    lease: &str,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<remexec_core::Result<JobOutcome>> {
    let pool = pool.clone();
    let (executor, job) = (executor.to_string(), bare_job(lease));
    tokio::spawn(async move { pool.run(&executor, job, cancel).await })
}

#[tokio::test]
async fn a_second_register_under_a_live_name_is_refused() {
    let pool = WorkerPool::new();
    let channel = serve_pool(&pool).await;
    let mut live = attach(&channel, "w").await.unwrap();
    eventually("attached", || pool.executors().len() == 2).await;
    let refused = attach(&channel, "w").await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    // The live connection keeps its executors and its leases.
    assert_eq!(pool.workers(), vec!["w".to_string()]);
    assert_eq!(pool.executors().len(), 2);
    let job = run(&pool, "w/0", "l1", CancellationToken::new());
    let lease = next_lease(&mut live).await;
    send_result(&live, &lease.lease_id, 0, exit(3)).await;
    assert_eq!(job.await.unwrap().unwrap(), JobOutcome::Completed(exit(3)));
}

#[tokio::test]
async fn results_count_only_from_the_connection_holding_the_lease() {
    let pool = WorkerPool::new();
    let channel = serve_pool(&pool).await;
    let mut holder = attach(&channel, "a").await.unwrap();
    let intruder = attach(&channel, "b").await.unwrap();
    eventually("attached", || pool.executors().len() == 4).await;
    let job = run(&pool, "a/0", "la", CancellationToken::new());
    let lease = next_lease(&mut holder).await;
    send_result(&intruder, &lease.lease_id, 0, exit(66)).await;
    // A second Register on its stream detaches the intruder: by then its result was read.
    intruder
        .0
        .send(WorkerMessage {
            message: Some(M::Register(Register::default())),
        })
        .await
        .unwrap();
    eventually("intruder detached", || pool.workers() == ["a"]).await;
    assert!(
        !job.is_finished(),
        "a result from another connection was taken"
    );
    send_result(&holder, &lease.lease_id, 0, exit(0)).await;
    assert_eq!(job.await.unwrap().unwrap(), JobOutcome::Completed(exit(0)));
}

#[tokio::test]
async fn large_messages_travel_and_bad_results_never_detach() {
    let pool = WorkerPool::new();
    let channel = serve_pool(&pool).await;
    let mut worker = attach(&channel, "w").await.unwrap();
    eventually("attached", || pool.executors().len() == 2).await;
    let mut job = bare_job("big");
    job.command = Command {
        arguments: vec!["x".repeat(12 << 20)],
        ..Default::default()
    };
    let handle = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run("w/0", job, CancellationToken::new()).await })
    };
    let lease = next_lease(&mut worker).await;
    assert_eq!(lease.command.unwrap().arguments[0].len(), 12 << 20);
    // Results for unknown leases, with any status, are ignored.
    send_result(&worker, "no such lease", 0, exit(0)).await;
    send_result(&worker, "nor this", tonic::Code::Internal as i32, exit(1)).await;
    let big = ActionResult {
        stdout_raw: vec![b'o'; 20 << 20],
        ..Default::default()
    };
    send_result(&worker, &lease.lease_id, 0, big.clone()).await;
    assert_eq!(handle.await.unwrap().unwrap(), JobOutcome::Completed(big));
    assert_eq!(pool.workers(), vec!["w".to_string()]);
}

#[tokio::test]
async fn a_dropped_run_forgets_its_lease_and_cancels_it_on_the_worker() {
    let pool = WorkerPool::new();
    let channel = serve_pool(&pool).await;
    let mut worker = attach(&channel, "w").await.unwrap();
    eventually("attached", || pool.executors().len() == 2).await;
    let job = run(&pool, "w/0", "dropped", CancellationToken::new());
    let lease = next_lease(&mut worker).await;
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    assert_eq!(
        next(&mut worker).await,
        scheduler_message::Message::CancelLease(lease.lease_id.clone())
    );
    // The late result is ignored, and the worker stays.
    send_result(&worker, &lease.lease_id, 0, exit(0)).await;
    let again = run(&pool, "w/0", "again", CancellationToken::new());
    let lease = next_lease(&mut worker).await;
    send_result(&worker, &lease.lease_id, 0, exit(5)).await;
    assert_eq!(
        again.await.unwrap().unwrap(),
        JobOutcome::Completed(exit(5))
    );
}

#[tokio::test]
async fn a_worker_that_ignores_cancel_lease_is_detached() {
    let pool = WorkerPool::with_cancel_grace(Duration::from_millis(200));
    let channel = serve_pool(&pool).await;
    let mut worker = attach(&channel, "w").await.unwrap();
    eventually("attached", || pool.executors().len() == 2).await;
    let cancel = CancellationToken::new();
    let cancelled = run(&pool, "w/0", "c", cancel.clone());
    next_lease(&mut worker).await;
    let other = run(&pool, "w/1", "o", CancellationToken::new());
    next_lease(&mut worker).await;
    cancel.cancel();
    assert_eq!(
        next(&mut worker).await,
        scheduler_message::Message::CancelLease("c".into())
    );
    // The worker never answers: it is detached, and its other lease fails as Unavailable.
    assert_eq!(cancelled.await.unwrap().unwrap(), JobOutcome::Cancelled);
    assert!(matches!(other.await.unwrap(), Err(Error::Unavailable(_))));
    assert!(pool.executors().is_empty());
    assert!(pool.workers().is_empty());
}
