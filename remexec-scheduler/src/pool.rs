//! The [`ExecutorPool`] trait: the scheduler's view of the executors it can dispatch to, and the
//! small types a pool needs to implement it: [`Cancel`], [`Changes`] and [`ChangeNotifier`].
//!
//! These are remexec's own types, so that a pool needs neither tokio's `watch` channels nor
//! tokio-util; internally they are a `CancellationToken` and a `watch` channel.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
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

impl ExecutorInfo {
    /// `count` executors of one worker, `{worker}/0` to `{worker}/{count - 1}`, each offering
    /// `properties`: the whole executor list of a pool whose executors never change.
    ///
    /// ```
    /// let executors = remexec_scheduler::ExecutorInfo::numbered("echo", 2, &[("OSFamily", "echo")]);
    /// assert_eq!(executors[1].id, "echo/1");
    /// assert_eq!(executors[1].properties, [("OSFamily".to_string(), "echo".to_string())]);
    /// ```
    pub fn numbered(worker: &str, count: usize, properties: &[(&str, &str)]) -> Vec<Self> {
        let properties: Vec<Property> = properties
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        (0..count)
            .map(|i| Self {
                id: format!("{worker}/{i}"),
                worker: worker.to_string(),
                properties: properties.clone(),
            })
            .collect()
    }
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
    /// The executor never started the job, with why: it had left the list (a flexible worker
    /// withdrew it) by the time the job reached it. The scheduler re-queues the job without
    /// counting an attempt, up to a bound.
    Refused(String),
}

/// Tells a running job to stop: the scheduler fires it when nobody waits for the job any more
/// or its lease deadline passes. Cheap to clone; every clone sees the same signal.
#[derive(Clone, Debug, Default)]
pub struct Cancel(CancellationToken);

impl Cancel {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (again is a no-op).
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether the signal has fired.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the signal has fired (at once if it has).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.0.cancelled()
    }

    /// A signal that fires with this one, and may also fire on its own.
    pub(crate) fn child(&self) -> Self {
        Self(self.0.child_token())
    }
}

/// The sending side of [`Changes`]: a pool whose executors come and go owns one and calls
/// [`notify`](Self::notify) whenever its executor list changes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChangeNotifier(Arc<watch::Sender<u64>>);

impl Default for ChangeNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeNotifier {
    /// A notifier nobody listens to yet.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    /// Wakes every [`Changes`] subscribed to this notifier.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A subscription that sees every later [`notify`](Self::notify).
    pub fn subscribe(&self) -> Changes {
        Changes(Some(self.0.subscribe()))
    }
}

/// What [`ExecutorPool::changes`] returns: resolves [`changed`](Self::changed) when the
/// executor list may have changed. Notifications that arrive while nobody waits are merged into
/// one, never lost.
#[derive(Debug)]
pub struct Changes(Option<watch::Receiver<u64>>);

impl Changes {
    /// Never changes: the default of pools whose executors are fixed.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether a change happened since the last call (or since the subscription), marking it
    /// seen; never blocks.
    pub(crate) fn take_change(&mut self) -> bool {
        let Some(rx) = &mut self.0 else { return false };
        let changed = rx.has_changed().unwrap_or(false);
        if changed {
            rx.borrow_and_update();
        }
        changed
    }

    /// Resolves after the next change, or at once if one happened since the last call (or since
    /// the subscription). Never resolves if there can be no more changes.
    pub async fn changed(&mut self) {
        let Some(rx) = &mut self.0 else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            // The notifier is gone, so the list cannot change any more.
            self.0 = None;
            std::future::pending::<()>().await;
        }
    }
}

/// Executors the scheduler dispatches to.
///
/// A pool whose executors never change implements [`executors`](ExecutorPool::executors)
/// (see [`ExecutorInfo::numbered`]) and [`run`](ExecutorPool::run) only. The conformance suite in
/// `remexec_scheduler::testing` (feature `testing`) checks an implementation against this
/// contract.
///
/// # Contract
/// - [`executors`](ExecutorPool::executors) lists the live executors, with unique ids; the
///   scheduler tracks which of them are busy with its own jobs and never gives one executor two
///   jobs at once.
/// - [`changes`](ExecutorPool::changes) resolves whenever that list changes, so the scheduler
///   can dispatch as soon as an executor appears (it also looks at least every 200 ms). Pools
///   with a fixed list keep the default, which never changes; others return
///   [`ChangeNotifier::subscribe`].
/// - [`run`](ExecutorPool::run) runs a job and returns its outcome. A failing command is
///   `Ok(Completed)` with its exit code. `Ok(Refused)` means the executor is not (any more) in
///   the list and never started the job; `Err(Unavailable)` means the executor was lost while
///   it ran. The scheduler re-queues the job after either; any other `Err` is an
///   infrastructure failure reported to the client. When `cancel` fires, also before `run` is
///   called, the pool stops the job and returns `Ok(Cancelled)` (or the job's outcome, if it
///   ended first).
/// - `cancel` also fires when the job's lease deadline (its timeout plus
///   `SchedulerConfig::lease_allowance`) passes. If `run` has not returned
///   `SchedulerConfig::cancel_grace` after a cancel, the scheduler drops its future and frees
///   the executor: pools must clean up when the future is dropped.
#[async_trait]
pub trait ExecutorPool: Send + Sync + Debug + 'static {
    /// The live executors.
    fn executors(&self) -> Vec<ExecutorInfo>;

    /// A subscription that resolves whenever the executor list changes. The default never
    /// resolves, for pools whose executors are fixed.
    fn changes(&self) -> Changes {
        Changes::none()
    }

    /// Executors the pool could offer instead of some of the live ones: the shapes of flexible
    /// workers, which re-partition their machine as the queue asks. An action that matches one
    /// waits for it instead of failing as unmatched, and [`demand`](ExecutorPool::demand) tells
    /// the pool how many wait. The default is none.
    fn potential(&self) -> Vec<ExecutorInfo> {
        Vec::new()
    }

    /// Called after each dispatch pass that found [`potential`](ExecutorPool::potential)
    /// executors, with, for each of them (by id), how many queued actions it matches. The
    /// default ignores it.
    fn demand(&self, _queued: &[(String, usize)]) {}

    /// Runs `job` on the executor with id `executor`, until it ends or `cancel` fires.
    async fn run(&self, executor: &str, job: Job, cancel: Cancel) -> Result<JobOutcome>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `changes` resolves within 50 ms.
    async fn resolves(changes: &mut Changes) -> bool {
        tokio::time::timeout(Duration::from_millis(50), changes.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn changes_merge_notifications_and_never_resolve_without_a_notifier() {
        let notifier = ChangeNotifier::new();
        let mut changes = notifier.subscribe();
        assert!(!resolves(&mut changes).await, "no change yet");
        notifier.notify();
        notifier.notify();
        assert!(resolves(&mut changes).await);
        assert!(
            !resolves(&mut changes).await,
            "two notifications are one change"
        );
        notifier.clone().notify();
        drop(notifier);
        assert!(
            resolves(&mut changes).await,
            "a change before the notifier went"
        );
        assert!(!resolves(&mut changes).await, "no notifier, no change");
        assert!(!resolves(&mut Changes::none()).await);
    }

    #[tokio::test]
    async fn cancel_reaches_clones_and_children() {
        let cancel = Cancel::new();
        let child = cancel.child();
        assert!(!child.is_cancelled());
        child.cancel();
        assert!(!cancel.is_cancelled(), "a child does not cancel its parent");
        let child = cancel.child();
        cancel.clone().cancel();
        assert!(cancel.is_cancelled() && child.is_cancelled());
        tokio::time::timeout(Duration::from_secs(1), child.cancelled())
            .await
            .unwrap();
    }
}
