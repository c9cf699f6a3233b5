//! `WorkerPool` over a real tonic server on 127.0.0.1, with fake workers: it passes the
//! `ExecutorPool` conformance suite, names cannot be taken over, results count only from the
//! lease holder, large messages travel, bad results never detach, dropped runs cancel their
//! lease, and wedged workers are detached.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use remexec_core::Error;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::reapi::{ActionResult, Command};
use remexec_proto::worker::v1::worker_message::Message as M;
use remexec_proto::worker::v1::{
    Lease, LeaseResult, Register, SchedulerMessage, WorkerMessage, scheduler_message,
};
use remexec_scheduler::testing::{ExecutorPoolCapabilities, PoolHooks, executor_pool_conformance};
use remexec_scheduler::{Cancel, ExecutorPool, JobOutcome, WorkerPool};
use support::{FakeWorker, attach, bare_job, serve_pool};

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
    cancel: Cancel,
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
    let job = run(&pool, "w/0", "l1", Cancel::new());
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
    let job = run(&pool, "a/0", "la", Cancel::new());
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
        tokio::spawn(async move { pool.run("w/0", job, Cancel::new()).await })
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
    let job = run(&pool, "w/0", "dropped", Cancel::new());
    let lease = next_lease(&mut worker).await;
    job.abort();
    assert!(job.await.unwrap_err().is_cancelled());
    assert_eq!(
        next(&mut worker).await,
        scheduler_message::Message::CancelLease(lease.lease_id.clone())
    );
    // The late result is ignored, and the worker stays.
    send_result(&worker, &lease.lease_id, 0, exit(0)).await;
    let again = run(&pool, "w/0", "again", Cancel::new());
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
    let cancel = Cancel::new();
    let cancelled = run(&pool, "w/0", "c", cancel.clone());
    next_lease(&mut worker).await;
    let other = run(&pool, "w/1", "o", Cancel::new());
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

/// Answers leases like a worker: a `sleep` lease when it is cancelled (`CANCELLED`), any other
/// at once with exit code 0. Ends, detaching the worker, when the task is aborted.
async fn answer_leases(mut worker: FakeWorker) {
    let mut sleeping = Vec::new();
    while let Ok(Some(msg)) = worker.1.message().await {
        match msg.message {
            Some(scheduler_message::Message::Lease(lease)) => {
                let args = lease.command.unwrap_or_default().arguments;
                if args.first().is_some_and(|a| a == "sleep") {
                    sleeping.push(lease.lease_id);
                } else {
                    send_result(&worker, &lease.lease_id, 0, exit(0)).await;
                }
            }
            Some(scheduler_message::Message::CancelLease(id)) => {
                if let Some(i) = sleeping.iter().position(|l| *l == id) {
                    sleeping.remove(i);
                    let cancelled = tonic::Code::Cancelled as i32;
                    send_result(&worker, &id, cancelled, exit(-1)).await;
                }
            }
            _ => {}
        }
    }
}

/// Attaches fake workers answering leases (`add_executor`), and kills them (`lose_executor`).
struct FakeWorkers {
    channel: tonic::transport::Channel,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl FakeWorkers {
    async fn attach(&self) {
        let name = format!("w{}", self.tasks.lock().unwrap().len());
        let worker = attach(&self.channel, &name).await.unwrap();
        let task = tokio::spawn(answer_leases(worker));
        self.tasks.lock().unwrap().insert(name, task);
    }
}

#[async_trait]
impl PoolHooks for FakeWorkers {
    async fn add_executor(&self) {
        self.attach().await;
    }
    async fn lose_executor(&self, executor: &str) {
        let worker = executor.split('/').next().unwrap();
        self.tasks.lock().unwrap()[worker].abort();
    }
}

#[tokio::test]
async fn the_worker_pool_passes_the_conformance_suite() {
    let pool = WorkerPool::new();
    let workers = FakeWorkers {
        channel: serve_pool(&pool).await,
        tasks: Mutex::default(),
    };
    workers.attach().await;
    eventually("attached", || pool.executors().len() == 2).await;
    let caps = ExecutorPoolCapabilities::new()
        .changing_executors(true)
        .long_jobs(true)
        .loses_executors(true);
    executor_pool_conformance(&pool, caps, &workers).await;
}

#[tokio::test]
async fn a_flexible_worker_changes_its_executors_and_hears_the_demand() {
    use remexec_proto::worker::v1::{Demand, Executor, Property, SetExecutors, demand};
    let pool = WorkerPool::new();
    let channel = serve_pool(&pool).await;
    let mut worker = attach(&channel, "w").await.unwrap();
    eventually("attached", || pool.executors().len() == 2).await;
    let set = |ids: &[&str]| WorkerMessage {
        message: Some(M::SetExecutors(SetExecutors {
            executors: ids
                .iter()
                .map(|id| Executor {
                    id: id.to_string(),
                    properties: vec![Property {
                        name: "cores".into(),
                        value: "4".into(),
                    }],
                })
                .collect(),
        })),
    };
    worker.0.send(set(&["big"])).await.unwrap();
    eventually("re-partitioned", || {
        pool.executors()
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>()
            == ["w/big"]
    })
    .await;
    // A job for an executor that left the list is refused, not lost.
    let refused = pool.run("w/0", bare_job("late"), Cancel::new()).await;
    assert!(matches!(refused, Ok(JobOutcome::Refused(_))), "{refused:?}");
    // So is one the worker refuses as ABORTED (it withdrew the executor meanwhile).
    let job = run(&pool, "w/big", "withdrawn", Cancel::new());
    let lease = next_lease(&mut worker).await;
    send_result(
        &worker,
        &lease.lease_id,
        tonic::Code::Aborted as i32,
        exit(0),
    )
    .await;
    assert!(matches!(job.await.unwrap(), Ok(JobOutcome::Refused(_))));
    // A worker registering shapes hears how many queued actions match each.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WorkerMessage {
        message: Some(M::Register(Register {
            worker_name: "flex".into(),
            shapes: vec![Executor {
                id: "large".into(),
                properties: vec![],
            }],
            heartbeat_interval_ms: 10_000,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound =
        remexec_proto::worker::v1::worker_service_client::WorkerServiceClient::new(channel.clone())
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
    eventually("shapes listed", || pool.potential().len() == 1).await;
    assert_eq!(pool.potential()[0].id, "flex/shape:large");
    pool.demand(&[("flex/shape:large".into(), 3)]);
    pool.demand(&[("flex/shape:large".into(), 3)]);
    pool.demand(&[("flex/shape:large".into(), 0)]);
    for queued in [3, 0] {
        let message = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let expected = Demand {
            shapes: vec![demand::Shape {
                id: "large".into(),
                queued,
            }],
        };
        assert_eq!(
            message.message,
            Some(scheduler_message::Message::Demand(expected)),
            "sent once per change"
        );
    }
    // Repeated executor ids detach the worker.
    worker.0.send(set(&["x", "x"])).await.unwrap();
    eventually("detached", || pool.workers() == ["flex".to_string()]).await;
}
