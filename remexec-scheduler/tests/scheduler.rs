//! Scheduler behaviour against a scriptable executor pool: merging, priorities, platform
//! failures, missing inputs, retries after executor loss, caching, cancellation and
//! WaitExecution over gRPC.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use remexec_core::apis::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, Operation, operation,
};
use remexec_core::reapi::{
    ExecuteRequest, ExecuteResponse, ExecutionPolicy, WaitExecutionRequest, execution_stage,
};
use remexec_core::{ActionCache, DigestFunction, Error};
use remexec_scheduler::platform::MatchRules;
use remexec_scheduler::testing::{ExecutorPoolCapabilities, PoolHooks, executor_pool_conformance};
use remexec_scheduler::{ExecutionServices, ExecutorInfo, JobOutcome};
use support::{FakePool, finish, request, setup, store_action, store_action_in};

#[tokio::test]
async fn twenty_identical_executes_run_once() {
    let mut pool = FakePool::new(4, &[], FakePool::ok());
    pool.delay = Duration::from_millis(300);
    let s = setup(pool, |_| {});
    let digest = store_action(s.cas.as_ref(), &["echo", "once"], &[], false).await;
    let waits = (0..20).map(|_| {
        let scheduler = s.scheduler.clone();
        async move { finish(scheduler.execute(request(digest)).await.unwrap()).await }
    });
    let responses = futures::future::join_all(waits).await;
    assert_eq!(
        s.pool.runs.load(Ordering::SeqCst),
        1,
        "identical in-flight actions must merge"
    );
    for r in &responses {
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        assert_eq!(r.result.as_ref().unwrap().stdout_raw, b"echo once");
    }
    // Now cached: another Execute is a cache hit, not a run.
    let cached_rx = s.scheduler.execute(request(digest)).await.unwrap();
    let cached_name = cached_rx.borrow().name.clone();
    let cached = finish(cached_rx).await;
    // Even an operation answered from the cache can be looked up afterwards.
    assert!(
        s.scheduler
            .subscribe(&cached_name)
            .await
            .unwrap()
            .borrow()
            .done
    );
    assert!(cached.cached_result);
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 1);
    // skip_cache_lookup runs it again.
    let fresh = finish(
        s.scheduler
            .execute(ExecuteRequest {
                skip_cache_lookup: true,
                ..request(digest)
            })
            .await
            .unwrap(),
    )
    .await;
    assert!(!fresh.cached_result);
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn lower_priority_value_runs_sooner() {
    let pool = FakePool::new(1, &[], FakePool::ok());
    pool.gate.forget_permits(usize::MAX >> 4);
    let gate = pool.gate.clone();
    let s = setup(pool, |_| {});
    // The first action occupies the only executor while the others queue.
    let blocker = store_action(s.cas.as_ref(), &["blocker"], &[], false).await;
    let first = s.scheduler.execute(request(blocker)).await.unwrap();
    while s.pool.order.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut waits = vec![first];
    for p in [5, -2, 3, 0, -7] {
        let d = store_action(s.cas.as_ref(), &[&format!("p{p}")], &[], false).await;
        let req = ExecuteRequest {
            execution_policy: Some(ExecutionPolicy { priority: p }),
            ..request(d)
        };
        waits.push(s.scheduler.execute(req).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.add_permits(1000);
    for w in waits {
        finish(w).await;
    }
    assert_eq!(
        *s.pool.order.lock().unwrap(),
        vec!["blocker", "p-7", "p-2", "p0", "p3", "p5"]
    );
}

#[tokio::test]
async fn unsatisfiable_platform_fails_fast_naming_the_properties() {
    let s = setup(
        FakePool::new(
            2,
            &[("OSFamily", "linux"), ("cpu-count", "2")],
            FakePool::ok(),
        ),
        |_| {},
    );
    let digest = store_action(
        s.cas.as_ref(),
        &["x"],
        &[("OSFamily", "windows"), ("cpu-count", "1")],
        false,
    )
    .await;
    let start = Instant::now();
    let response = finish(s.scheduler.execute(request(digest)).await.unwrap()).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
    assert!(
        status.message.contains("OSFamily=windows"),
        "{}",
        status.message
    );
    assert!(
        !status.message.contains("cpu-count"),
        "satisfied properties are not blamed: {}",
        status.message
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn executors_that_serve_named_instances_get_those_actions_and_only_those() {
    use remexec_scheduler::INSTANCE_PROPERTY;
    let s = setup(
        FakePool::new(1, &[("OSFamily", "linux")], FakePool::ok()),
        |_| {},
    );
    s.pool.add(ExecutorInfo {
        id: "bst/0".into(),
        worker: "bst".into(),
        properties: vec![
            ("OSFamily".into(), "linux".into()),
            (INSTANCE_PROPERTY.into(), "bst".into()),
        ],
    });
    let linux = [("OSFamily", "linux")];
    // The client may not pick another instance's executors by naming the property itself.
    let spoofed = [("OSFamily", "linux"), (INSTANCE_PROPERTY, "bst")];
    let mut placed = Vec::new();
    for (instance, args, platform) in [
        ("bst", "built", &linux[..]),
        ("", "plain", &linux[..]),
        ("other", "spoofed", &spoofed[..]),
        ("bst", "built-again", &linux[..]),
    ] {
        let digest = store_action_in(s.cas.as_ref(), instance, &[args], platform, true, None).await;
        let rx = s
            .scheduler
            .execute(ExecuteRequest {
                instance_name: instance.into(),
                ..request(digest)
            })
            .await
            .unwrap();
        assert_eq!(finish(rx).await.status.unwrap().code, 0, "{args}");
        placed.push(s.pool.placed.lock().unwrap().last().cloned().unwrap());
    }
    let expected = [
        ("bst/0", "built"),
        ("w/0", "plain"),
        ("w/0", "spoofed"),
        ("bst/0", "built-again"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(e, a)| (e.to_string(), a.to_string()))
        .collect();
    assert_eq!(placed, expected);
}

#[tokio::test]
async fn instances_served_by_name_from_the_start_never_run_elsewhere() {
    let s = setup(
        FakePool::new(1, &[("OSFamily", "linux")], FakePool::ok()),
        |c| c.served_instances = vec!["bst".into()],
    );
    let digest = store_action_in(s.cas.as_ref(), "bst", &["early"], &[], true, None).await;
    let request = ExecuteRequest {
        instance_name: "bst".into(),
        ..request(digest)
    };
    fails_unmatched(&s, request, "instance-name=bst").await;
}

/// Executes `request`, which no executor may run: it fails FAILED_PRECONDITION saying
/// `because`, and nothing ran.
async fn fails_unmatched(s: &support::Setup, request: ExecuteRequest, because: &str) {
    let response = finish(s.scheduler.execute(request).await.unwrap()).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
    assert!(status.message.contains(because), "{}", status.message);
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_action_only_reserved_executors_could_run_fails_saying_so() {
    use remexec_scheduler::INSTANCE_PROPERTY;
    let s = setup(
        FakePool::new(
            1,
            &[("OSFamily", "linux"), (INSTANCE_PROPERTY, "bst")],
            FakePool::ok(),
        ),
        |_| {},
    );
    let digest = store_action(s.cas.as_ref(), &["bazel"], &[("OSFamily", "linux")], true).await;
    fails_unmatched(&s, request(digest), "serve other instance names only").await;
}

#[tokio::test]
async fn an_executor_appearing_within_the_grace_period_runs_the_action() {
    let s = setup(FakePool::new(0, &[], FakePool::ok()), |c| {
        c.unmatched_grace = Duration::from_secs(10)
    });
    let digest = store_action(s.cas.as_ref(), &["late"], &[("gpu", "1")], false).await;
    let rx = s.scheduler.execute(request(digest)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.pool
        .executors
        .lock()
        .unwrap()
        .push(remexec_scheduler::ExecutorInfo {
            id: "g/0".into(),
            worker: "g".into(),
            properties: vec![("gpu".into(), "1".into())],
        });
    s.pool.changes.notify();
    assert_eq!(finish(rx).await.status.unwrap().code, 0);
}

#[tokio::test]
async fn missing_inputs_are_reported_as_missing_violations() {
    use tonic_types::pb::PreconditionFailure;
    let s = setup(FakePool::new(1, &[], FakePool::ok()), |_| {});
    let digest = store_action(s.cas.as_ref(), &["x"], &[], false).await;
    let input = DigestFunction::Sha256.digest_of(b"input file");
    s.cas.remove("", input);
    let unknown_action = DigestFunction::Sha256.digest_of(b"never uploaded");
    for (action, expected) in [(digest, input), (unknown_action, unknown_action)] {
        let status = finish(s.scheduler.execute(request(action)).await.unwrap())
            .await
            .status
            .unwrap();
        assert_eq!(
            status.code,
            tonic::Code::FailedPrecondition as i32,
            "{status:?}"
        );
        assert_eq!(status.details.len(), 1);
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.PreconditionFailure"
        );
        let failure = PreconditionFailure::decode(&status.details[0].value[..]).unwrap();
        let subjects: Vec<_> = failure
            .violations
            .iter()
            .map(|v| (v.r#type.as_str(), v.subject.clone()))
            .collect();
        assert_eq!(subjects, vec![("MISSING", format!("blobs/{expected}"))]);
    }
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn lost_executors_requeue_then_give_up_with_unavailable() {
    // Fails as "executor lost" on the first two runs, then succeeds.
    let flaky: support::Script = Arc::new(|_, n| {
        if n < 2 {
            Err(Error::Unavailable("worker died".into()))
        } else {
            Ok(JobOutcome::Completed(Default::default()))
        }
    });
    let s = setup(FakePool::new(1, &[], flaky), |c| c.max_retries = 2);
    let digest = store_action(s.cas.as_ref(), &["x"], &[], false).await;
    assert_eq!(
        finish(s.scheduler.execute(request(digest)).await.unwrap())
            .await
            .status
            .unwrap()
            .code,
        0
    );
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 3);

    let dead: support::Script = Arc::new(|_, _| Err(Error::Unavailable("worker died".into())));
    let s = setup(FakePool::new(1, &[], dead), |c| c.max_retries = 2);
    let digest = store_action(s.cas.as_ref(), &["y"], &[], false).await;
    let status = finish(s.scheduler.execute(request(digest)).await.unwrap())
        .await
        .status
        .unwrap();
    assert_eq!(status.code, tonic::Code::Unavailable as i32);
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn only_successful_cacheable_results_are_cached() {
    let exit: support::Script = Arc::new(|job, _| {
        Ok(JobOutcome::Completed(remexec_core::reapi::ActionResult {
            exit_code: job.command.arguments[0].parse().unwrap(),
            ..Default::default()
        }))
    });
    let s = setup(FakePool::new(1, &[], exit), |_| {});
    for (args, no_cache, cached) in [("0", false, true), ("1", false, false), ("0", true, false)] {
        let digest = store_action(
            s.cas.as_ref(),
            &[args, if no_cache { "nc" } else { "c" }],
            &[],
            no_cache,
        )
        .await;
        finish(s.scheduler.execute(request(digest)).await.unwrap()).await;
        assert_eq!(
            s.ac.get("", digest).await.unwrap().is_some(),
            cached,
            "{args} do_not_cache={no_cache}"
        );
    }
}

#[tokio::test]
async fn wait_execution_get_and_cancel_over_grpc() {
    use remexec_core::apis::google::longrunning::operations_client::OperationsClient;
    use remexec_core::reapi::execution_client::ExecutionClient;
    let pool = FakePool::new(1, &[], FakePool::ok());
    pool.gate.forget_permits(usize::MAX >> 4);
    let gate = pool.gate.clone();
    let s = setup(pool, |_| {});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = ExecutionServices::new(s.scheduler.clone()).into_routes();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut exec = ExecutionClient::new(channel.clone());
    let mut ops = OperationsClient::new(channel);

    // A client starts an action, reads one update (the CACHE_CHECK stage), and goes away.
    let digest = store_action(s.cas.as_ref(), &["slow"], &[], false).await;
    let mut stream = exec.execute(request(digest)).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(stage(&first), execution_stage::Value::CacheCheck);
    let name = first.name;
    drop(stream);
    // It reconnects with WaitExecution and gets the rest.
    let mut resumed = exec
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    gate.add_permits(1000);
    let mut last = None;
    while let Some(op) = resumed.next().await {
        last = Some(op.unwrap());
    }
    let last = last.unwrap();
    assert!(last.done && last.name == name);
    assert_eq!(stage(&last), execution_stage::Value::Completed);

    // A fresh Execute streams the stages in order: CACHE_CHECK, QUEUED, EXECUTING, COMPLETED
    // (intermediate ones may be coalesced, never reordered).
    let digest = store_action(s.cas.as_ref(), &["stages"], &[], false).await;
    let stages: Vec<i32> = exec
        .execute(request(digest))
        .await
        .unwrap()
        .into_inner()
        .map(|op| stage(&op.unwrap()) as i32)
        .collect()
        .await;
    assert_eq!(
        stages.first(),
        Some(&(execution_stage::Value::CacheCheck as i32))
    );
    assert_eq!(
        stages.last(),
        Some(&(execution_stage::Value::Completed as i32))
    );
    assert!(stages.windows(2).all(|w| w[0] <= w[1]), "{stages:?}");
    // A cache hit: CACHE_CHECK, then COMPLETED with cached_result.
    let hit: Vec<Operation> = exec
        .execute(request(digest))
        .await
        .unwrap()
        .into_inner()
        .map(|op| op.unwrap())
        .collect()
        .await;
    assert_eq!(
        hit.iter().map(stage).collect::<Vec<_>>(),
        vec![
            execution_stage::Value::CacheCheck,
            execution_stage::Value::Completed
        ]
    );
    assert!(
        ops.get_operation(GetOperationRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner()
            .done
    );
    let unknown = exec
        .wait_execution(WaitExecutionRequest {
            name: "operations/s0/nope".into(),
        })
        .await
        .map(|_| ());
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(
        ops.get_operation(GetOperationRequest {
            name: "nope".into()
        })
        .await
        .unwrap_err()
        .code(),
        tonic::Code::NotFound
    );

    // Cancelling a running action ends it as CANCELLED.
    s.pool.gate.forget_permits(s.pool.gate.available_permits());
    let digest = store_action(s.cas.as_ref(), &["cancel me"], &[], false).await;
    let mut stream = exec.execute(request(digest)).await.unwrap().into_inner();
    let name = stream.next().await.unwrap().unwrap().name;
    while s.pool.order.lock().unwrap().last().map(String::as_str) != Some("cancel me") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ops.cancel_operation(CancelOperationRequest { name })
        .await
        .unwrap();
    let mut last = None;
    while let Some(op) = stream.next().await {
        last = Some(op.unwrap());
    }
    let Some(operation::Result::Response(any)) = last.unwrap().result else {
        panic!()
    };
    let response = ExecuteResponse::decode(&any.value[..]).unwrap();
    assert_eq!(response.status.unwrap().code, tonic::Code::Cancelled as i32);
}

fn stage(op: &Operation) -> execution_stage::Value {
    let meta = remexec_core::reapi::ExecuteOperationMetadata::decode(
        &op.metadata.as_ref().unwrap().value[..],
    )
    .unwrap();
    execution_stage::Value::try_from(meta.stage).unwrap()
}

#[test]
fn default_rules_treat_resources_as_minimums() {
    let rules = MatchRules::default();
    let offered = vec![("memory-mb".to_string(), "2048".to_string())];
    assert!(rules.matches(&[("memory-mb".into(), "1024".into())], &offered));
    assert!(!rules.matches(&[("memory-mb".into(), "4096".into())], &offered));
}

#[tokio::test]
async fn a_worker_that_misses_heartbeats_is_dropped() {
    use remexec_proto::worker::v1::worker_message::Message as M;
    use remexec_proto::worker::v1::worker_service_client::WorkerServiceClient;
    use remexec_proto::worker::v1::{Executor, Heartbeat, Register, WorkerMessage};
    use remexec_scheduler::{ExecutorPool, WorkerPool};
    let pool = WorkerPool::new();
    let channel = support::serve_pool(&pool).await;
    for heartbeats in [false, true] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let register = Register {
            worker_name: format!("w-{heartbeats}"),
            executors: vec![Executor {
                id: "0".into(),
                properties: vec![],
            }],
            heartbeat_interval_ms: 100,
            ..Default::default()
        };
        tx.send(WorkerMessage {
            message: Some(M::Register(register)),
        })
        .await
        .unwrap();
        let _inbound = WorkerServiceClient::new(channel.clone())
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.executors().len(), 1);
        // 3 missed intervals (300 ms) detach a silent worker; a heartbeating one stays.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(80)).await;
            if heartbeats {
                tx.send(WorkerMessage {
                    message: Some(M::Heartbeat(Heartbeat {})),
                })
                .await
                .unwrap();
            }
        }
        assert_eq!(
            pool.executors().len(),
            usize::from(heartbeats),
            "heartbeats={heartbeats}"
        );
        drop(tx);
        if heartbeats {
            pool.shutdown();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(pool.executors().is_empty());
            // After shutdown, new workers are refused.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(WorkerMessage {
                message: Some(M::Register(Register {
                    worker_name: "late".into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let refused = WorkerServiceClient::new(channel.clone())
                .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);
            return;
        }
    }
}

/// Adds executors to, and loses executors of, a [`FakePool`] for the conformance suite.
struct FakePoolHooks(FakePool);

#[async_trait::async_trait]
impl PoolHooks for FakePoolHooks {
    async fn add_executor(&self) {
        self.0
            .add(ExecutorInfo::numbered("added", 1, &[]).remove(0));
    }
    async fn lose_executor(&self, executor: &str) {
        self.0.lose(executor);
    }
}

#[tokio::test]
async fn the_fake_pool_passes_the_conformance_suite() {
    let pool = FakePool::new(2, &[], FakePool::ok());
    let caps = ExecutorPoolCapabilities::new()
        .changing_executors(true)
        .long_jobs(true)
        .loses_executors(true);
    executor_pool_conformance(&pool, caps, &FakePoolHooks(pool.clone())).await;
}

#[tokio::test]
async fn an_executor_a_pool_adds_without_telling_is_used_within_the_snapshot_age() {
    // Dispatch passes reuse the pool's executor list until the pool reports a change, and for
    // at most 200 ms: a pool that never reports one is still read again.
    let pool = FakePool::new(0, &[], FakePool::ok());
    let s = setup(pool, |c| c.unmatched_grace = Duration::from_secs(60));
    let d = store_action(s.cas.as_ref(), &["true"], &[], true).await;
    let rx = s.scheduler.execute(request(d)).await.unwrap();
    // Passes see, and keep, the empty list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.pool
        .executors
        .lock()
        .unwrap()
        .extend(ExecutorInfo::numbered("late", 1, &[]));
    let response = tokio::time::timeout(Duration::from_secs(2), finish(rx))
        .await
        .expect("the silently added executor was never used");
    assert_eq!(response.result.map(|r| r.exit_code), Some(0));
}

/// Fair scheduling: a 10-action build started while a 2,000-action build is running takes
/// turns with it, instead of waiting behind it. Counted in starts, not timed: between the small
/// build's submission and its last start, about as many of the big build's actions start as
/// its own (FIFO would start some 1,900 first).
#[tokio::test]
async fn a_small_build_takes_turns_with_a_big_one_already_running() {
    let mut pool = FakePool::new(4, &[], FakePool::ok());
    pool.delay = Duration::from_millis(2);
    let s = setup(pool, |c| c.max_queued = 10_000);
    let metadata = |id: &str| remexec_core::reapi::RequestMetadata {
        tool_invocation_id: id.into(),
        ..Default::default()
    };
    let mut big = Vec::new();
    for i in 0..2000 {
        let arg = format!("big-{i}");
        let digest = store_action(&*s.cas, &["true", &arg], &[], true).await;
        let rx = s
            .scheduler
            .execute_with(request(digest), metadata("big"))
            .await;
        big.push(rx.unwrap());
    }
    let mut small = Vec::new();
    for i in 0..10 {
        let arg = format!("small-{i}");
        small.push(store_action(&*s.cas, &["true", &arg], &[], true).await);
    }
    while s.pool.runs.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let submitted = s.pool.runs.load(Ordering::SeqCst);
    let mut waits = Vec::new();
    for digest in small {
        let rx = s
            .scheduler
            .execute_with(request(digest), metadata("small"))
            .await;
        waits.push(finish(rx.unwrap()));
    }
    for response in futures::future::join_all(waits).await {
        assert_eq!(response.result.unwrap().exit_code, 0);
    }
    let order = s.pool.order.lock().unwrap().clone();
    let last_small = order.iter().rposition(|a| a.contains("small")).unwrap();
    let big_between = order[submitted..last_small]
        .iter()
        .filter(|a| a.contains("big"))
        .count();
    assert!(
        big_between <= 10 + 8,
        "{big_between} of the big build's actions started before the small build's last"
    );
    drop(big);
}
