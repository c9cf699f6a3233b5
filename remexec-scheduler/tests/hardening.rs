//! Hardening: per-caller operations over merged executions, lease deadlines, timeouts that
//! cannot be switched off, bounded memory and queue, dispatch across platform classes, and a
//! worker protocol that carries large messages and cannot be impersonated.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use remexec_core::apis::google::protobuf::Duration as ProtoDuration;
use remexec_core::reapi::{ActionResult, ExecuteRequest, ExecutionPolicy};
use remexec_core::{Error, Result};
use remexec_scheduler::testing::{ExecutorPoolCapabilities, NoHooks, executor_pool_conformance};
use remexec_scheduler::{
    Cancel, ExecutorInfo, ExecutorPool, Job, JobOutcome, Scheduler, SchedulerConfig,
};
use support::{
    FakePool, MapCache, MapStore, finish, request, response, setup, store_action,
    store_timed_action,
};
use tokio::sync::watch;

fn code(r: &remexec_core::reapi::ExecuteResponse) -> tonic::Code {
    tonic::Code::from_i32(r.status.as_ref().unwrap().code)
}

/// The operation's name. (Never hold `borrow()` across a scheduler call: it blocks publishing.)
fn name(rx: &watch::Receiver<remexec_core::apis::google::longrunning::Operation>) -> String {
    rx.borrow().name.clone()
}

/// Waits (up to 20 s) until `check` holds.
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

/// A pool held shut: nothing it runs finishes until permits are added to its gate.
fn gated(executors: usize) -> FakePool {
    let pool = FakePool::new(executors, &[], FakePool::ok());
    pool.gate.forget_permits(pool.gate.available_permits());
    pool
}

#[tokio::test]
async fn merged_executes_get_their_own_names_and_both_complete() {
    let s = setup(gated(1), |_| {});
    let digest = store_action(s.cas.as_ref(), &["merge"], &[], false).await;
    let a = s.scheduler.execute(request(digest)).await.unwrap();
    let b = s.scheduler.execute(request(digest)).await.unwrap();
    let (name_a, name_b) = (a.borrow().name.clone(), b.borrow().name.clone());
    assert_ne!(name_a, name_b, "each Execute gets its own operation");
    // Each name can be followed and looked up, and sees the same execution's stages.
    let follow_b = s.scheduler.subscribe(&name_b).await.unwrap();
    assert_eq!(follow_b.borrow().name, name_b);
    s.pool.gate.add_permits(100);
    for rx in [a, b, follow_b] {
        assert_eq!(code(&finish(rx).await), tonic::Code::Ok);
    }
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 1);
    for name in [&name_a, &name_b] {
        let op = s.scheduler.subscribe(name).await.unwrap().borrow().clone();
        assert!(op.done && op.name == *name);
    }
}

#[tokio::test]
async fn cancelling_one_merged_caller_leaves_the_execution_running() {
    let s = setup(gated(1), |_| {});
    let digest = store_action(s.cas.as_ref(), &["shared"], &[], false).await;
    let a = s.scheduler.execute(request(digest)).await.unwrap();
    let b = s.scheduler.execute(request(digest)).await.unwrap();
    eventually("dispatch", || s.pool.runs.load(Ordering::SeqCst) == 1).await;
    s.scheduler.cancel(&name(&a)).unwrap();
    assert_eq!(code(&finish(a).await), tonic::Code::Cancelled);
    // The other caller still waits; the execution was not cancelled.
    assert!(!b.borrow().done);
    s.pool.gate.add_permits(100);
    let rb = finish(b).await;
    assert_eq!(code(&rb), tonic::Code::Ok, "{rb:?}");
    assert_eq!(rb.result.unwrap().stdout_raw, b"shared");
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 1);

    // Cancelling every caller cancels the execution through the pool.
    let digest = store_action(s.cas.as_ref(), &["both"], &[], false).await;
    s.pool.gate.forget_permits(s.pool.gate.available_permits());
    let a = s.scheduler.execute(request(digest)).await.unwrap();
    let b = s.scheduler.execute(request(digest)).await.unwrap();
    eventually("dispatch", || s.pool.runs.load(Ordering::SeqCst) == 2).await;
    let running = s.pool.running.clone();
    assert_eq!(running.lock().unwrap().len(), 1);
    s.scheduler.cancel(&name(&a)).unwrap();
    assert_eq!(running.lock().unwrap().len(), 1, "one caller is left");
    s.scheduler.cancel(&name(&b)).unwrap();
    eventually("the run is cancelled", || {
        running.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(code(&finish(b).await), tonic::Code::Cancelled);
    // A queued execution whose callers all cancel leaves the queue.
    let blocker = store_action(s.cas.as_ref(), &["blocker"], &[], false).await;
    let _busy = s.scheduler.execute(request(blocker)).await.unwrap();
    eventually("dispatch", || s.pool.runs.load(Ordering::SeqCst) == 3).await;
    let digest = store_action(s.cas.as_ref(), &["queued"], &[], false).await;
    let a = s.scheduler.execute(request(digest)).await.unwrap();
    let b = s.scheduler.execute(request(digest)).await.unwrap();
    assert_eq!(s.scheduler.queued(), 1);
    s.scheduler.cancel(&name(&a)).unwrap();
    assert_eq!(s.scheduler.queued(), 1);
    s.scheduler.cancel(&name(&b)).unwrap();
    assert_eq!(s.scheduler.queued(), 0);
}

#[tokio::test]
async fn do_not_cache_actions_are_never_merged() {
    let s = setup(gated(2), |_| {});
    let digest = store_action(s.cas.as_ref(), &["uncached"], &[], true).await;
    let a = s.scheduler.execute(request(digest)).await.unwrap();
    let b = s.scheduler.execute(request(digest)).await.unwrap();
    eventually("both dispatched", || {
        s.pool.runs.load(Ordering::SeqCst) == 2
    })
    .await;
    s.pool.gate.add_permits(100);
    finish(a).await;
    finish(b).await;
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_never_observes_a_finished_operation() {
    // The pool completes instantly, so executions finish while others try to join them.
    let s = setup(FakePool::new(4, &[], FakePool::ok()), |_| {});
    let digest = store_action(s.cas.as_ref(), &["instant"], &[], false).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let scheduler = s.scheduler.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let req = ExecuteRequest {
                        skip_cache_lookup: true,
                        ..request(digest)
                    };
                    let mut rx = scheduler.execute(req).await.unwrap();
                    {
                        // What the caller got at join time is its first, unseen-change-free
                        // value: it must not be a finished operation.
                        let first = rx.borrow();
                        assert!(
                            !first.done || first.has_changed(),
                            "joined an execution that had already finished"
                        );
                    }
                    while !rx.borrow_and_update().done {
                        rx.changed().await.unwrap();
                    }
                    assert_eq!(code(&response(&rx.borrow())), tonic::Code::Ok);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.pool.double_booked.load(Ordering::SeqCst), 0);
}

/// A pool whose `run` never returns, not even when cancelled, for jobs whose first argument is
/// "hang"; other jobs complete at once, or end cancelled if cancelled before they start.
#[derive(Debug, Clone, Default)]
struct HangPool {
    ran: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl ExecutorPool for HangPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        ExecutorInfo::numbered("h", 1, &[])
    }
    async fn run(&self, _: &str, job: Job, cancel: Cancel) -> Result<JobOutcome> {
        self.ran
            .lock()
            .unwrap()
            .push(job.command.arguments[0].clone());
        if job.command.arguments[0] == "hang" {
            std::future::pending::<()>().await;
        }
        if cancel.is_cancelled() {
            return Ok(JobOutcome::Cancelled);
        }
        Ok(JobOutcome::Completed(ActionResult::default()))
    }
}

#[tokio::test]
async fn the_hanging_pool_passes_the_conformance_suite_outside_its_hangs() {
    executor_pool_conformance(
        &HangPool::default(),
        ExecutorPoolCapabilities::new(),
        &NoHooks,
    )
    .await;
}

#[tokio::test]
async fn a_job_past_its_lease_deadline_is_revoked_and_its_executor_freed() {
    let cas = Arc::new(MapStore::default());
    let pool = HangPool::default();
    let mut config = SchedulerConfig::default();
    config.max_action_timeout = Duration::from_millis(100);
    config.lease_allowance = Duration::from_millis(200);
    config.cancel_grace = Duration::from_millis(100);
    let scheduler = Scheduler::new(
        config,
        cas.clone(),
        Arc::new(MapCache::default()),
        Arc::new(pool.clone()),
    )
    .unwrap();
    let hang = store_action(cas.as_ref(), &["hang"], &[], false).await;
    let next = store_action(cas.as_ref(), &["next"], &[], false).await;
    let start = Instant::now();
    let hung = scheduler.execute(request(hang)).await.unwrap();
    let queued = scheduler.execute(request(next)).await.unwrap();
    let r = finish(hung).await;
    assert_eq!(code(&r), tonic::Code::DeadlineExceeded);
    let message = &r.status.unwrap().message;
    assert!(message.contains("lease deadline passed"), "{message}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The executor is free again and takes the next job.
    assert_eq!(code(&finish(queued).await), tonic::Code::Ok);
    assert_eq!(*pool.ran.lock().unwrap(), vec!["hang", "next"]);
}

#[tokio::test]
async fn tiny_and_negative_timeouts_become_the_maximum() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let script: support::Script = Arc::new(move |job: &Job, _| {
        record.lock().unwrap().push(job.timeout);
        Ok(JobOutcome::Completed(ActionResult::default()))
    });
    let max = Duration::from_secs(42);
    let s = setup(FakePool::new(1, &[], script), |c| {
        c.max_action_timeout = max
    });
    let timeouts = [(0, 1), (-1, 0), (0, -5), (1_000_000, 0), (0, 0), (2, 0)];
    for (i, (seconds, nanos)) in timeouts.into_iter().enumerate() {
        let t = ProtoDuration { seconds, nanos };
        let digest =
            store_timed_action(s.cas.as_ref(), &[&i.to_string()], &[], true, Some(t)).await;
        let r = finish(s.scheduler.execute(request(digest)).await.unwrap()).await;
        assert_eq!(code(&r), tonic::Code::Ok, "{seconds}s {nanos}ns: {r:?}");
    }
    let seen = seen.lock().unwrap().clone();
    let expected = [max, max, max, max, max, Duration::from_secs(2)].map(Some);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_zero_max_action_timeout_is_rejected() {
    let mut config = SchedulerConfig::default();
    config.max_action_timeout = Duration::ZERO;
    let e = config.validate().unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    assert!(e.to_string().contains("max_action_timeout"), "{e}");
    let made = Scheduler::new(
        config,
        Arc::new(MapStore::default()),
        Arc::new(MapCache::default()),
        Arc::new(FakePool::new(1, &[], FakePool::ok())),
    );
    assert!(matches!(made, Err(Error::InvalidArgument(_))));
    assert!(SchedulerConfig::default().validate().is_ok());
}

#[tokio::test]
async fn finished_operations_are_kept_within_the_count_and_byte_budgets() {
    let big: support::Script = Arc::new(|job: &Job, _| {
        let size: usize = job.command.arguments[1].parse().unwrap();
        Ok(JobOutcome::Completed(ActionResult {
            stdout_raw: vec![b'x'; size],
            ..Default::default()
        }))
    });
    let s = setup(FakePool::new(1, &[], big), |c| {
        c.retained_operations = 3;
        c.retained_bytes = 20_000;
    });
    let mut names = Vec::new();
    for (i, size) in [10, 10, 10, 10, 10, 15_000, 15_000].iter().enumerate() {
        let digest = store_action(
            s.cas.as_ref(),
            &[&i.to_string(), &size.to_string()],
            &[],
            true,
        )
        .await;
        let rx = s.scheduler.execute(request(digest)).await.unwrap();
        names.push(rx.borrow().name.clone());
        finish(rx).await;
    }
    let known = |name: &String| {
        let scheduler = s.scheduler.clone();
        let name = name.clone();
        async move { scheduler.subscribe(&name).await.map(|_| ()) }
    };
    // Count: only the 3 newest of the first 5 would be left; bytes: the second 15 kB result
    // pushes everything older than it out.
    for name in &names[..6] {
        assert!(
            matches!(known(name).await, Err(Error::NotFound(_))),
            "{name}"
        );
    }
    assert!(known(&names[6]).await.is_ok());
    assert_eq!(s.scheduler.retained(), 1);

    // Age: with no retention, a finished operation is forgotten at once.
    let s = setup(FakePool::new(1, &[], FakePool::ok()), |c| {
        c.retention = Duration::ZERO;
        c.retained_operations = 3;
    });
    let digest = store_action(s.cas.as_ref(), &["aged"], &[], false).await;
    let rx = s.scheduler.execute(request(digest)).await.unwrap();
    let name = rx.borrow().name.clone();
    finish(rx).await;
    assert!(matches!(
        s.scheduler.subscribe(&name).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn cache_hit_operations_reread_the_action_cache() {
    let s = setup(FakePool::new(1, &[], FakePool::ok()), |_| {});
    let digest = store_action(s.cas.as_ref(), &["hit"], &[], false).await;
    finish(s.scheduler.execute(request(digest)).await.unwrap()).await;
    let rx = s.scheduler.execute(request(digest)).await.unwrap();
    let name = rx.borrow().name.clone();
    assert!(finish(rx).await.cached_result);
    let again = response(&s.scheduler.subscribe(&name).await.unwrap().borrow());
    assert!(again.cached_result);
    assert_eq!(again.result.unwrap().stdout_raw, b"hit");
    // The operation holds only the key: once the entry is gone, so is the operation.
    s.ac.0.lock().unwrap().clear();
    assert!(matches!(
        s.scheduler.subscribe(&name).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted() {
    let s = setup(gated(1), |c| {
        c.max_queued = 2;
        c.unmatched_grace = Duration::from_secs(60);
    });
    let mut waits = Vec::new();
    for i in 0..3 {
        let digest = store_action(s.cas.as_ref(), &[&format!("q{i}")], &[], false).await;
        waits.push(s.scheduler.execute(request(digest)).await.unwrap());
        // The first one leaves the queue for the only executor.
        eventually("dispatch", || s.pool.runs.load(Ordering::SeqCst) == 1).await;
    }
    assert_eq!(s.scheduler.queued(), 2);
    let digest = store_action(s.cas.as_ref(), &["one too many"], &[], false).await;
    let refused = s.scheduler.execute(request(digest)).await;
    let Err(e) = refused else {
        panic!("queued beyond max_queued")
    };
    assert!(matches!(e, Error::ResourceExhausted(_)), "{e:?}");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // Joining an action already in flight needs no queue slot.
    let joined = store_action(s.cas.as_ref(), &["q2"], &[], false).await;
    waits.push(s.scheduler.execute(request(joined)).await.unwrap());
    s.pool.gate.add_permits(100);
    for w in waits {
        assert_eq!(code(&finish(w).await), tonic::Code::Ok);
    }
}

#[tokio::test]
async fn dispatch_across_platform_classes_follows_priority_and_never_double_books() {
    let s = setup(gated(0), |c| c.unmatched_grace = Duration::from_secs(60));
    let mut waits = Vec::new();
    // Three classes, priorities interleaved across them.
    let classes: [&[(&str, &str)]; 3] = [&[("os", "linux")], &[("os", "mac")], &[]];
    for (i, p) in [4, -3, 7, 0, -9, 2, 5, -1, 3].into_iter().enumerate() {
        let platform = classes[i % 3];
        let digest = store_action(s.cas.as_ref(), &[&format!("p{p}")], platform, false).await;
        let req = ExecuteRequest {
            execution_policy: Some(ExecutionPolicy { priority: p }),
            ..request(digest)
        };
        waits.push(s.scheduler.execute(req).await.unwrap());
    }
    // One executor serving every class, so jobs leave in global priority order.
    s.pool.executors.lock().unwrap().push(ExecutorInfo {
        id: "both/0".into(),
        worker: "both".into(),
        properties: vec![("os".into(), "linux".into()), ("os".into(), "mac".into())],
    });
    s.pool.changes.notify();
    s.pool.gate.add_permits(100);
    for w in waits {
        finish(w).await;
    }
    assert_eq!(
        *s.pool.order.lock().unwrap(),
        ["p-9", "p-3", "p-1", "p0", "p2", "p3", "p4", "p5", "p7"]
    );
    assert_eq!(s.pool.double_booked.load(Ordering::SeqCst), 0);

    // Many executors and classes at once: every job runs, none double-booked.
    let s = setup(FakePool::new(0, &[], FakePool::ok()), |_| {});
    for e in 0..12 {
        s.pool.executors.lock().unwrap().push(ExecutorInfo {
            id: format!("w/{e}"),
            worker: "w".into(),
            properties: vec![("pool".into(), format!("p{}", e % 3))],
        });
    }
    let mut waits = Vec::new();
    for i in 0..60 {
        let pool = format!("p{}", i % 3);
        let digest = store_action(
            s.cas.as_ref(),
            &[&format!("m{i}")],
            &[("pool", &pool)],
            true,
        )
        .await;
        waits.push(s.scheduler.execute(request(digest)).await.unwrap());
    }
    for w in waits {
        assert_eq!(code(&finish(w).await), tonic::Code::Ok);
    }
    assert_eq!(s.pool.double_booked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn invalid_worker_results_are_refused_and_never_cached() {
    use remexec_core::reapi::OutputSymlink;
    let escaping: support::Script = Arc::new(|_, _| {
        Ok(JobOutcome::Completed(ActionResult {
            output_symlinks: vec![OutputSymlink {
                path: "link".into(),
                target: "../../../../home".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    });
    let s = setup(FakePool::new(1, &[], escaping), |_| {});
    let action = store_action(s.cas.as_ref(), &["true"], &[], false).await;
    let response = finish(s.scheduler.execute(request(action)).await.unwrap()).await;
    assert_eq!(code(&response), tonic::Code::FailedPrecondition);
    let message = &response.status.as_ref().unwrap().message;
    assert!(message.contains("climbs above"), "{message}");
    assert!(response.result.is_none());
    assert!(
        s.ac.0.lock().unwrap().is_empty(),
        "an invalid result was cached"
    );
}

#[tokio::test]
async fn tree_bombs_are_refused_before_they_are_queued() {
    use prost::Message;
    use remexec_core::reapi::{Action, Command, Directory, DirectoryNode};
    use remexec_core::{BlobStoreExt, DigestFunction};
    let s = setup(FakePool::new(1, &[], FakePool::ok()), |_| {});
    let f = DigestFunction::Sha256;
    let put = |bytes: Vec<u8>| {
        let cas = Arc::clone(&s.cas);
        async move {
            let d = f.digest_of(&bytes);
            cas.put_bytes("", d, bytes.into()).await.unwrap();
            d
        }
    };
    // 40 levels, each directory holding the next one twice: 2^40 paths, 41 directories.
    let mut dir = put(Directory::default().encode_to_vec()).await;
    for _ in 0..40 {
        let node = |name: &str| DirectoryNode {
            name: name.into(),
            digest: Some(dir.to_proto()),
        };
        dir = put(Directory {
            directories: vec![node("a"), node("b")],
            ..Default::default()
        }
        .encode_to_vec())
        .await;
    }
    let command = put(Command {
        arguments: vec!["true".into()],
        ..Default::default()
    }
    .encode_to_vec())
    .await;
    let action = put(Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(dir.to_proto()),
        ..Default::default()
    }
    .encode_to_vec())
    .await;
    let err = s.scheduler.execute(request(action)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("entries"), "{err}");
    assert_eq!(s.pool.runs.load(Ordering::SeqCst), 0);
}

/// A pool that lists one executor and refuses every job on it.
#[derive(Debug, Default)]
struct RefusingPool {
    refused: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl ExecutorPool for RefusingPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        ExecutorInfo::numbered("r", 1, &[])
    }
    async fn run(&self, _: &str, _: Job, _: Cancel) -> Result<JobOutcome> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        Ok(JobOutcome::Refused("not offered now".into()))
    }
}

#[tokio::test]
async fn an_executor_that_always_refuses_cannot_keep_an_action_cycling() {
    let cas = Arc::new(MapStore::default());
    let pool = Arc::new(RefusingPool::default());
    let scheduler = Scheduler::new(
        SchedulerConfig::default(),
        cas.clone(),
        Arc::new(MapCache::default()),
        pool.clone(),
    )
    .unwrap();
    let digest = store_action(cas.as_ref(), &["true"], &[], false).await;
    let r = finish(scheduler.execute(request(digest)).await.unwrap()).await;
    assert_eq!(code(&r), tonic::Code::Unavailable);
    let message = r.status.unwrap().message;
    assert!(
        message.contains("refused this action 101 times"),
        "{message}"
    );
    // Refusals are not attempts: max_retries (3) did not stop it sooner.
    assert_eq!(pool.refused.load(Ordering::SeqCst), 101);
}
