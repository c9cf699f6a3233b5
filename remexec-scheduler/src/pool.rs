//! The [`ExecutorPool`] trait: the scheduler's view of the executors it can dispatch to.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use remexec_core::reapi::{Action, ActionResult, Command};
use remexec_core::{Digest, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::platform::Property;

/// One executor: runs one action at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorInfo {
    /// Unique within the pool, e.g. `worker-1/3`.
    pub id: String,
    /// The worker (machine or process) it belongs to.
    pub worker: String,
    /// What it offers, matched against actions' platforms.
    pub properties: Vec<Property>,
}

/// An action to run, with everything a worker needs to find its inputs.
#[derive(Clone, Debug)]
pub struct Job {
    /// Unique id of this attempt.
    pub lease_id: String,
    /// Instance name the action belongs to.
    pub instance: String,
    /// Digest of the `Action` (its function is the request's digest function).
    pub action_digest: Digest,
    /// The decoded `Action`.
    pub action: Action,
    /// The decoded `Command`.
    pub command: Command,
    /// Effective timeout: the action's, capped by the scheduler's maximum.
    pub timeout: Option<Duration>,
    /// When the action entered the queue.
    pub queued_at: SystemTime,
}

/// How a job ended on its executor.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// The command ran to completion (any exit code).
    Completed(ActionResult),
    /// The command overran its timeout and was killed; the result holds whatever output exists.
    TimedOut(ActionResult),
    /// The job was cancelled and its processes killed.
    Cancelled,
}

/// Executors the scheduler dispatches to.
///
/// # Contract
/// - [`executors`](ExecutorPool::executors) lists the live executors; the scheduler tracks which
///   of them are busy with its own jobs and never gives one executor two jobs at once.
/// - [`changes`](ExecutorPool::changes) ticks whenever that list changes, so the scheduler can
///   dispatch as soon as an executor appears.
/// - [`run`](ExecutorPool::run) runs a job and returns its outcome. A failing command is
///   `Ok(Completed)` with its exit code. `Err(Unavailable)` means the executor was lost (the
///   scheduler re-queues the job); any other `Err` is an infrastructure failure reported to the
///   client. When `cancel` fires, the pool stops the job and returns `Ok(Cancelled)`.
/// - `cancel` also fires when the job's lease deadline (its timeout plus
///   `SchedulerConfig::lease_allowance`) passes. If `run` has not returned
///   `SchedulerConfig::cancel_grace` after a cancel, the scheduler drops its future and frees
///   the executor: pools must clean up when the future is dropped.
#[async_trait]
pub trait ExecutorPool: Send + Sync + Debug + 'static {
    /// The live executors.
    fn executors(&self) -> Vec<ExecutorInfo>;

    /// A receiver that changes whenever the executor list does.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Runs `job` on the executor with id `executor`.
    async fn run(&self, executor: &str, job: Job, cancel: CancellationToken) -> Result<JobOutcome>;
}
