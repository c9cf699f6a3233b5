//! The conformance suite every [`ExecutorPool`] runs (feature `testing`).
//!
//! Each contract point is a named function that takes the pool (and, where it needs them, the
//! pool's [`ExecutorPoolCapabilities`] and [`PoolHooks`]) and panics with a description of what
//! the pool broke. [`executor_pool_conformance`] runs them all. The suite submits two kinds of
//! job, which a pool that runs real commands runs as they are and a fake interprets:
//!
//! - [`ECHO`] (`echo conformance`) completes with exit code 0;
//! - [`SLEEP`] (`sleep 3600`) runs until it is cancelled, if the pool has
//!   [`long_jobs`](ExecutorPoolCapabilities::long_jobs); otherwise the suite only submits it
//!   already cancelled.
//!
//! What the trait cannot make happen (an executor appearing, or being lost) the suite asks of
//! [`PoolHooks`], and only if the capabilities say the pool supports it. A pool whose executors
//! are fixed and whose jobs end at once needs neither:
//!
//! ```
//! # async fn check(pool: &dyn remexec_scheduler::ExecutorPool) {
//! use remexec_scheduler::testing::{ExecutorPoolCapabilities, NoHooks, executor_pool_conformance};
//!
//! executor_pool_conformance(pool, ExecutorPoolCapabilities::new(), &NoHooks).await;
//! # }
//! ```

#![allow(clippy::unwrap_used, clippy::panic)] // test support: panics are how it reports

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use remexec_core::reapi::{Action, Command};
use remexec_core::{DigestFunction, Error, Result};

use crate::{Cancel, ExecutorPool, Job, JobOutcome};

/// A job that completes at once with exit code 0.
pub const ECHO: &[&str] = &["echo", "conformance"];
/// A job that runs until it is cancelled.
pub const SLEEP: &[&str] = &["sleep", "3600"];

/// Longest the suite waits for anything a pool should do promptly.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a job that should still be running is watched before the suite acts on it.
const SETTLE: Duration = Duration::from_millis(200);

/// What a pool does beyond the contract's minimum, so that the suite checks it too.
///
/// [`new`](Self::new) is a pool with fixed executors whose jobs end at once; the builder
/// methods turn on more.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecutorPoolCapabilities {
    /// Executors come and go: [`PoolHooks::add_executor`] adds one, and
    /// [`changes`](ExecutorPool::changes) must resolve when it appears. Without it the list must
    /// stay as it is and `changes` must not resolve.
    pub changing_executors: bool,
    /// A [`SLEEP`] job keeps running until it is cancelled, so the suite can cancel or drop a
    /// running job.
    pub long_jobs: bool,
    /// [`PoolHooks::lose_executor`] makes an executor vanish while it runs a job.
    pub loses_executors: bool,
}

impl ExecutorPoolCapabilities {
    /// Fixed executors, jobs that end at once, no executor loss.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`changing_executors`](Self::changing_executors).
    pub fn changing_executors(mut self, yes: bool) -> Self {
        self.changing_executors = yes;
        self
    }

    /// Sets [`long_jobs`](Self::long_jobs).
    pub fn long_jobs(mut self, yes: bool) -> Self {
        self.long_jobs = yes;
        self
    }

    /// Sets [`loses_executors`](Self::loses_executors).
    pub fn loses_executors(mut self, yes: bool) -> Self {
        self.loses_executors = yes;
        self
    }
}

/// How the suite makes things happen to a pool that the [`ExecutorPool`] trait cannot ask for.
/// Each method is called only if the pool's [`ExecutorPoolCapabilities`] say it supports it;
/// the defaults panic.
#[async_trait]
pub trait PoolHooks: Send + Sync {
    /// Makes a new executor appear, for example by attaching a worker.
    async fn add_executor(&self) {
        panic!("the suite called add_executor, but the hooks do not implement it");
    }

    /// Makes the executor with id `executor` vanish as if its machine died, while it may be
    /// running a job.
    async fn lose_executor(&self, executor: &str) {
        panic!("the suite called lose_executor({executor:?}), but the hooks do not implement it");
    }
}

/// The hooks of a pool that supports none of the optional capabilities.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl PoolHooks for NoHooks {}

/// A job running `arguments`, with an empty action and a lease id of its own.
pub fn job(arguments: &[&str]) -> Job {
    Job {
        lease_id: uuid::Uuid::new_v4().to_string(),
        instance: String::new(),
        action_digest: DigestFunction::Sha256.digest_of(arguments.join(" ").as_bytes()),
        action: Action::default(),
        command: Command {
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        timeout: Some(Duration::from_secs(3600)),
        queued_at: SystemTime::now(),
    }
}

/// Runs every check against `pool`, plus those of the capabilities in `caps`, using `hooks`
/// for what the trait cannot ask for. The pool needs at least one executor; executor loss is
/// checked last, since it takes one away.
pub async fn executor_pool_conformance(
    pool: &dyn ExecutorPool,
    caps: ExecutorPoolCapabilities,
    hooks: &dyn PoolHooks,
) {
    lists_and_notifies_changes(pool, caps, hooks).await;
    runs_a_job(pool).await;
    cancel_returns_cancelled(pool, caps).await;
    dropped_run_frees_the_executor(pool, caps).await;
    lost_executor_is_unavailable(pool, caps, hooks).await;
}

/// Waits for `what` for at most [`PATIENCE`].
async fn promptly<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {PATIENCE:?}"))
}

/// Polls `run` for [`SETTLE`], panicking if it ends: it should be running a [`SLEEP`].
async fn keeps_running<F: Future<Output = Result<JobOutcome>> + Unpin>(run: &mut F) {
    tokio::select! {
        outcome = run => panic!("a sleep job ended before it was cancelled: {outcome:?}"),
        () = tokio::time::sleep(SETTLE) => {}
    }
}

/// The id of the pool's first executor.
fn first_executor(pool: &dyn ExecutorPool) -> String {
    let executors = pool.executors();
    let first = executors.first();
    first
        .unwrap_or_else(|| panic!("the suite needs a pool with at least one executor"))
        .id
        .clone()
}

/// `executors` lists executors with unique, non-empty ids. A pool with changing executors
/// resolves `changes` when one is added and then lists it; a fixed pool keeps its list and its
/// `changes` stays quiet.
pub async fn lists_and_notifies_changes(
    pool: &dyn ExecutorPool,
    caps: ExecutorPoolCapabilities,
    hooks: &dyn PoolHooks,
) {
    let before = pool.executors();
    assert!(!before.is_empty(), "the suite needs at least one executor");
    let mut ids: Vec<&str> = before.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "an executor id is empty"
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), before.len(), "executor ids are not unique");
    let mut changes = pool.changes();
    if !caps.changing_executors {
        tokio::select! {
            () = changes.changed() => panic!("a pool with fixed executors reported a change"),
            () = tokio::time::sleep(SETTLE) => {}
        }
        assert_eq!(pool.executors(), before, "a fixed pool's executors changed");
        return;
    }
    hooks.add_executor().await;
    promptly(
        "a change notification for an added executor",
        changes.changed(),
    )
    .await;
    let after = pool.executors();
    assert!(
        after.len() > before.len() && before.iter().all(|e| after.contains(e)),
        "after a change notification, the added executor is not listed: {before:?} then {after:?}"
    );
}

/// Every executor runs an [`ECHO`] job to `Completed` with exit code 0, all at once, and an
/// executor runs jobs one after another.
pub async fn runs_a_job(pool: &dyn ExecutorPool) {
    let executors = pool.executors();
    let runs = executors
        .iter()
        .map(|e| pool.run(&e.id, job(ECHO), Cancel::new()));
    let outcomes = promptly(
        "echo jobs on every executor",
        futures::future::join_all(runs),
    )
    .await;
    for (executor, outcome) in executors.iter().zip(outcomes) {
        match outcome {
            Ok(JobOutcome::Completed(result)) => assert_eq!(
                result.exit_code, 0,
                "echo on {} exited with {}",
                executor.id, result.exit_code
            ),
            other => panic!("echo on {} ended with {other:?}", executor.id),
        }
    }
    let first = first_executor(pool);
    let again = promptly("a second job", pool.run(&first, job(ECHO), Cancel::new())).await;
    assert!(
        matches!(again, Ok(JobOutcome::Completed(_))),
        "a second echo on {first} ended with {again:?}"
    );
}

/// A job cancelled before `run` is called, and (with long jobs) a running job when it is
/// cancelled, end `Ok(Cancelled)`; the executor then runs the next job.
pub async fn cancel_returns_cancelled(pool: &dyn ExecutorPool, caps: ExecutorPoolCapabilities) {
    let executor = first_executor(pool);
    let cancel = Cancel::new();
    cancel.cancel();
    let outcome = promptly(
        "the end of a job cancelled before it started",
        pool.run(&executor, job(SLEEP), cancel),
    )
    .await;
    assert!(
        matches!(outcome, Ok(JobOutcome::Cancelled)),
        "a job cancelled before it started ended with {outcome:?}"
    );
    if caps.long_jobs {
        let cancel = Cancel::new();
        let mut run = pool.run(&executor, job(SLEEP), cancel.clone());
        keeps_running(&mut run).await;
        cancel.cancel();
        let outcome = promptly("the end of a cancelled job", run).await;
        assert!(
            matches!(outcome, Ok(JobOutcome::Cancelled)),
            "a cancelled running job ended with {outcome:?}"
        );
    }
    let next = promptly(
        "a job after a cancelled one",
        pool.run(&executor, job(ECHO), Cancel::new()),
    )
    .await;
    assert!(
        matches!(next, Ok(JobOutcome::Completed(_))),
        "after a cancel, echo on {executor} ended with {next:?}"
    );
}

/// With long jobs: dropping a running job's future (what the scheduler does when a cancelled
/// job overruns its grace) leaves the executor able to run the next job.
pub async fn dropped_run_frees_the_executor(
    pool: &dyn ExecutorPool,
    caps: ExecutorPoolCapabilities,
) {
    if !caps.long_jobs {
        return;
    }
    let executor = first_executor(pool);
    let mut run = pool.run(&executor, job(SLEEP), Cancel::new());
    keeps_running(&mut run).await;
    drop(run);
    let next = promptly(
        "a job after a dropped one",
        pool.run(&executor, job(ECHO), Cancel::new()),
    )
    .await;
    assert!(
        matches!(next, Ok(JobOutcome::Completed(_))),
        "after a dropped run, echo on {executor} ended with {next:?}"
    );
}

/// With executor loss: a job running on an executor that is lost ends `Err(Unavailable)` (with
/// long jobs), `changes` resolves, the executor leaves the list, and running a job on it is
/// `Ok(Refused)` (or `Err(Unavailable)`).
pub async fn lost_executor_is_unavailable(
    pool: &dyn ExecutorPool,
    caps: ExecutorPoolCapabilities,
    hooks: &dyn PoolHooks,
) {
    if !caps.loses_executors {
        return;
    }
    let executor = first_executor(pool);
    let mut changes = pool.changes();
    let mut run = caps
        .long_jobs
        .then(|| pool.run(&executor, job(SLEEP), Cancel::new()));
    if let Some(run) = &mut run {
        keeps_running(run).await;
    }
    hooks.lose_executor(&executor).await;
    if let Some(run) = run {
        let outcome = promptly("the end of a job on a lost executor", run).await;
        assert!(
            matches!(outcome, Err(Error::Unavailable(_))),
            "a job on a lost executor ended with {outcome:?}"
        );
    }
    promptly(
        "a change notification for a lost executor",
        changes.changed(),
    )
    .await;
    assert!(
        pool.executors().iter().all(|e| e.id != executor),
        "the lost executor {executor} is still listed"
    );
    let again = promptly(
        "a job on a lost executor",
        pool.run(&executor, job(ECHO), Cancel::new()),
    )
    .await;
    // Never started: refused (or, as pools before `Refused` said, unavailable).
    assert!(
        matches!(
            again,
            Ok(JobOutcome::Refused(_)) | Err(Error::Unavailable(_))
        ),
        "a job on the lost executor {executor} ended with {again:?}"
    );
}
