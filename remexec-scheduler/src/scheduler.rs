//! The [`Scheduler`]: operations, the queue, merging of identical actions, dispatch to an
//! [`ExecutorPool`], lease deadlines, retries and caching of results.
//!
//! Every Execute gets its own [`Op`] (name and channel). Callers of the same cacheable action
//! share one [`Execution`]; stage changes fan out to each waiter under its own name. One mutex
//! guards the live operations, the in-flight map, the queue and the busy executors; joining an
//! execution and completing it both happen under it, so a join never sees a finished one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use remexec_core::apis::google::longrunning::Operation;
use remexec_core::apis::google::protobuf::Duration as ProtoDuration;
use remexec_core::metrics::Metrics;
use remexec_core::reapi::{
    ActionResult, ExecuteRequest, ExecuteResponse, RequestMetadata, execution_stage,
};
use remexec_core::{
    ActionCache, BlobStore, Digest, DigestFunction, Error, Result, merkle::validate_action_result,
    validate_instance_name,
};
use tokio::sync::{Notify, watch};

use crate::SchedulerConfig;
use crate::inputs::{Loaded, load};
use crate::observe::{
    ExecutorStatus, Finished as Done, Observer, QueuedPlatform, RunningAction, SchedulerStatus,
    platform_label,
};
use crate::operations::{
    Execution, Finished, Op, Retained, Shared, failed, missing_status, operation, status,
};
use crate::platform::{INSTANCE_PROPERTY, Property};
use crate::pool::{Cancel, ExecutorInfo, ExecutorPool, Job, JobOutcome};
use crate::queue::{Queue, canonical};

/// Most times executors may refuse one action before it fails (`UNAVAILABLE`): a worker that
/// keeps offering an executor it refuses cannot keep an action cycling.
const MAX_REFUSALS: u32 = 100;

use execution_stage::Value as Stage;

#[derive(Debug, Default)]
struct State {
    /// Operations some caller still waits on, by name, with the execution they follow.
    live: HashMap<String, (Arc<Op>, Arc<Execution>)>,
    /// Finished operations, within the retention budgets.
    finished: Retained,
    /// Cacheable executions not yet over, by instance and action digest: what Execute joins.
    inflight: HashMap<(String, Digest), Arc<Execution>>,
    queue: Queue<Arc<Execution>>,
    busy: HashSet<String>,
    /// What each busy executor runs, and since when.
    running: HashMap<String, (Arc<Execution>, std::time::Instant)>,
}

#[derive(Debug)]
struct Inner {
    config: SchedulerConfig,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCache>,
    pool: Arc<dyn ExecutorPool>,
    state: Mutex<State>,
    wake: Notify,
    observer: Observer,
    /// Instance names some executor has served by name ([`INSTANCE_PROPERTY`]): their actions
    /// go only to executors that name them. It only grows, so that such actions wait for their
    /// executors rather than run elsewhere while those are away.
    claimed: parking_lot::RwLock<HashSet<String>>,
    /// The pool's changes not yet looked at for claims by [`Inner::refresh_claims`].
    claim_changes: Mutex<crate::pool::Changes>,
    /// The executors the dispatch passes see.
    snapshot: Mutex<Snapshot>,
    /// What each shape of action needed before.
    sizing: crate::sizing::Sizing,
}

/// How long a dispatch pass may use the pool's executor list without asking the pool again,
/// when the pool reports no change: what [`ExecutorPool`]'s contract promises the pool.
const SNAPSHOT_AGE: Duration = Duration::from_millis(200);

/// The pool's executors, de-duplicated, as last read; read again when the pool reports a change
/// or [`SNAPSHOT_AGE`] has passed, so that a pass among thousands of executors does not copy
/// them all each time.
#[derive(Debug)]
struct Snapshot {
    changes: crate::pool::Changes,
    taken: Option<(std::time::Instant, Arc<[ExecutorInfo]>)>,
}

/// The scheduler. Cheap to clone; all clones share one queue.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// How one dispatch of a job ended.
enum Ended {
    /// The pool returned.
    Returned(Result<JobOutcome>),
    /// The lease deadline passed; the pool returned this within the grace, or nothing.
    Revoked(Duration, Option<Result<JobOutcome>>),
    /// Cancelled, and the pool did not return within the grace.
    Abandoned,
}

/// What an executor must offer to run `job`: its platform, canonical, where the scheduler alone
/// sets [`INSTANCE_PROPERTY`]: to the job's instance name if some executor serves that name
/// (`claimed`), else not at all. A client cannot choose executors reserved for another instance.
fn requirements_of(job: &Job, claimed: &HashSet<String>) -> Vec<Property> {
    let mut requirements = remexec_core::platform::properties(&job.action, &job.command);
    requirements.retain(|(name, _)| name != INSTANCE_PROPERTY);
    if claimed.contains(&job.instance) {
        requirements.push((INSTANCE_PROPERTY.to_string(), job.instance.clone()));
    }
    canonical(requirements)
}

/// The timeout a job runs under: the action's, unless it is absent, negative, rounds to zero
/// milliseconds or exceeds `max`, in which case `max`. Timeouts cannot be switched off.
pub(crate) fn effective_timeout(requested: Option<&ProtoDuration>, max: Duration) -> Duration {
    let Some(t) = requested else { return max };
    if t.seconds < 0 || t.nanos < 0 {
        return max;
    }
    let d =
        Duration::from_secs(t.seconds as u64).saturating_add(Duration::from_nanos(t.nanos as u64));
    if d.as_millis() == 0 || d > max {
        max
    } else {
        d
    }
}

fn cached_response(result: ActionResult) -> ExecuteResponse {
    ExecuteResponse {
        result: Some(result),
        cached_result: true,
        status: Some(status(tonic::Code::Ok, "")),
        ..Default::default()
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("operation {name:?} is unknown or has expired").into())
}

impl Scheduler {
    /// A scheduler over the given stores and pool; starts its dispatch task on the current
    /// tokio runtime. `InvalidArgument` if `config` does not [validate](SchedulerConfig::validate).
    pub fn new(
        config: SchedulerConfig,
        cas: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCache>,
        pool: Arc<dyn ExecutorPool>,
    ) -> Result<Self> {
        Self::with_metrics(config, cas, ac, pool, Metrics::new())
    }

    /// [`new`](Self::new), recording into `metrics`: executions by outcome, phase and queue
    /// durations, and (when scraped) queue depths, workers and busy and idle executors.
    pub fn with_metrics(
        config: SchedulerConfig,
        cas: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCache>,
        pool: Arc<dyn ExecutorPool>,
        metrics: Metrics,
    ) -> Result<Self> {
        config.validate()?;
        let observer = Observer::new(metrics.clone(), config.status_url.clone());
        let (pool_changes, snapshot_changes) = (pool.changes(), pool.changes());
        let served = config.served_instances.iter().cloned().collect();
        let sizing = crate::sizing::Sizing::new(config.sizing_history);
        let inner = Arc::new(Inner {
            sizing,
            config,
            cas,
            ac,
            pool,
            state: Mutex::default(),
            wake: Notify::new(),
            observer,
            claimed: parking_lot::RwLock::new(served),
            claim_changes: Mutex::new(pool_changes),
            snapshot: Mutex::new(Snapshot {
                changes: snapshot_changes,
                taken: None,
            }),
        });
        inner.note_claims(&inner.pool.executors());
        tokio::spawn(dispatch_loop(Arc::downgrade(&inner)));
        // A weak reference: the figures must not keep a dropped scheduler alive.
        let weak = Arc::downgrade(&inner);
        metrics.on_scrape(move |m| {
            if let Some(inner) = weak.upgrade() {
                let status = Scheduler { inner }.status();
                let depths = status.queued.into_iter().map(|q| (q.platform, q.actions));
                m.queue_depths(depths);
                let mut workers: Vec<&str> =
                    status.executors.iter().map(|e| e.worker.as_str()).collect();
                workers.sort_unstable();
                workers.dedup();
                let busy = status.executors.iter().filter(|e| e.busy).count();
                m.executors(workers.len(), busy, status.executors.len() - busy);
            }
        });
        Ok(Self { inner })
    }

    /// A snapshot of executors, queue, running and recent actions.
    pub fn status(&self) -> SchedulerStatus {
        let executors = self.inner.pool.executors();
        let state = self.inner.state.lock();
        let now = std::time::Instant::now();
        let running = state
            .running
            .iter()
            .map(|(executor, (exec, since))| RunningAction {
                executor: executor.clone(),
                instance: exec.key.0.clone(),
                action: exec.key.1.to_string(),
                mnemonic: exec.metadata.action_mnemonic.clone(),
                target: exec.metadata.target_id.clone(),
                running_secs: now.duration_since(*since).as_secs_f64(),
            })
            .collect();
        let queued = state
            .queue
            .depths()
            .into_iter()
            .map(|(platform, actions)| QueuedPlatform {
                platform: platform_label(platform),
                actions,
            })
            .collect();
        let executors = executors
            .into_iter()
            .map(|e| ExecutorStatus {
                busy: state.busy.contains(&e.id),
                id: e.id,
                worker: e.worker,
                properties: e.properties,
            })
            .collect();
        drop(state);
        SchedulerStatus {
            executors,
            queued,
            running,
            recent: self.inner.observer.recent(),
        }
    }

    /// Calls `hook` with each action that ends, after the status page records it.
    pub fn on_action_finished(&self, hook: crate::observe::ActionHook) {
        self.inner.observer.hooks.write().push(hook);
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    /// Starts the execution of an action, or joins an identical cacheable one in flight. The
    /// caller gets its own operation either way; the receiver sees every stage change.
    /// `ResourceExhausted` if the queue is full.
    pub async fn execute(&self, req: ExecuteRequest) -> Result<watch::Receiver<Operation>> {
        self.execute_with(req, RequestMetadata::default()).await
    }

    /// [`execute`](Self::execute) for a client that sent `metadata`: the execution's metrics,
    /// phase spans (children of the current span) and status-page entry carry it, and the
    /// queue takes turns between its invocation and others ([`execute_as`](Self::execute_as)).
    pub async fn execute_with(
        &self,
        req: ExecuteRequest,
        metadata: RequestMetadata,
    ) -> Result<watch::Receiver<Operation>> {
        self.execute_as(req, metadata, "").await
    }

    /// [`execute_with`](Self::execute_with) for an authenticated `caller` (a principal's name):
    /// at equal priority the queue takes turns between invocations, told apart by
    /// `metadata.tool_invocation_id`, else `correlated_invocations_id`, else `caller`.
    pub async fn execute_as(
        &self,
        req: ExecuteRequest,
        metadata: RequestMetadata,
        caller: &str,
    ) -> Result<watch::Receiver<Operation>> {
        validate_instance_name(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let inner = &self.inner;
        let key = (req.instance_name, digest);
        let cached = match req.skip_cache_lookup {
            true => None,
            false => {
                let found = inner.ac.get(&key.0, digest).await?;
                // Shown beside GetActionResult's lookups on the status page.
                inner.observer.metrics.execute_cache_check(found.is_some());
                found
            }
        };
        if let Some(result) = cached {
            let name = inner.new_name();
            let mut response = cached_response(result);
            let done = Done {
                instance: &key.0,
                action: digest,
                metadata: &metadata,
                span: &tracing::Span::current(),
                executor: None,
            };
            inner
                .observer
                .finished(inner.cas.as_ref(), done, &mut response)
                .await;
            let op = operation(&name, digest, Stage::Completed, Some(response));
            let (instance, digest) = key;
            inner.retain(name, Finished::Cached { instance, digest });
            return Ok(watch::channel(op).1);
        }
        if let Some(rx) = inner.join(&mut inner.state.lock(), &key) {
            return Ok(rx);
        }
        let (action, command) =
            match load(inner.cas.as_ref(), &key.0, digest, &inner.config).await? {
                Loaded::Ready(loaded) => *loaded,
                Loaded::Missing(missing) => {
                    let name = inner.new_name();
                    let response = ExecuteResponse {
                        status: Some(missing_status(&missing)),
                        ..Default::default()
                    };
                    let op = operation(&name, digest, Stage::Completed, Some(response));
                    inner.retain(name, Finished::Done(op.clone()));
                    return Ok(watch::channel(op).1);
                }
            };
        let timeout = effective_timeout(action.timeout.as_ref(), inner.config.max_action_timeout);
        let priority = req.execution_policy.as_ref().map_or(0, |p| p.priority);
        let do_not_cache = action.do_not_cache;
        let job = Job {
            lease_id: String::new(),
            instance: key.0.clone(),
            action_digest: digest,
            action,
            command,
            timeout: Some(timeout),
            queued_at: SystemTime::now(),
        };
        let invocation = crate::queue::invocation(&metadata, caller);
        let exec = inner.execution(key, job, metadata, invocation, (priority, do_not_cache))?;
        let rx = inner.start(exec)?;
        inner.wake.notify_one();
        Ok(rx)
    }

    /// Follows an existing operation, live or finished; `NotFound` if it is unknown, has been
    /// evicted, or was answered from the Action Cache and the entry is gone.
    pub async fn subscribe(&self, name: &str) -> Result<watch::Receiver<Operation>> {
        let (instance, digest) = {
            let mut state = self.inner.state.lock();
            state.finished.evict(&self.inner.config);
            if let Some((op, _)) = state.live.get(name) {
                return Ok(op.tx.subscribe());
            }
            match state.finished.lookup(name) {
                Some(Finished::Done(op)) => return Ok(watch::channel(op.clone()).1),
                Some(Finished::Cached { instance, digest }) => (instance.clone(), *digest),
                None => return Err(not_found(name)),
            }
        };
        match self.inner.ac.get(&instance, digest).await? {
            Some(result) => Ok(watch::channel(operation(
                name,
                digest,
                Stage::Completed,
                Some(cached_response(result)),
            ))
            .1),
            None => Err(Error::NotFound(format!(
                "operation {name:?} was answered from the Action Cache, which no longer holds it"
            ).into())),
        }
    }

    /// Cancels the caller's operation, which completes with CANCELLED. The execution behind it
    /// stops (dequeued, or cancelled through the pool) only when no other caller waits on it.
    /// Cancelling a finished operation does nothing.
    pub fn cancel(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        let mut state = inner.state.lock();
        let Some((op, exec)) = state.live.remove(name) else {
            return match state.finished.lookup(name) {
                Some(_) => Ok(()),
                None => Err(not_found(name)),
            };
        };
        let done = op.publish(
            exec.key.1,
            Stage::Completed,
            Some(failed(
                tonic::Code::Cancelled,
                "cancelled by CancelOperation",
            )),
        );
        state
            .finished
            .insert(op.name.clone(), Finished::Done(done), &inner.config);
        let mut shared = exec.shared.lock();
        shared.waiters.retain(|o| !Arc::ptr_eq(o, &op));
        if !shared.waiters.is_empty() {
            return Ok(());
        }
        shared.over = true;
        let queued = shared.queued.take();
        let class = shared.class.clone();
        drop(shared);
        if state
            .inflight
            .get(&exec.key)
            .is_some_and(|e| Arc::ptr_eq(e, &exec))
        {
            state.inflight.remove(&exec.key);
        }
        match queued {
            Some(position) => {
                state.queue.remove(&class, position);
            }
            None => exec.cancel.cancel(),
        }
        Ok(())
    }

    /// Number of actions queued and not yet dispatched.
    pub fn queued(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    /// Number of finished operations remembered for GetOperation and WaitExecution.
    pub fn retained(&self) -> usize {
        let mut state = self.inner.state.lock();
        state.finished.evict(&self.inner.config);
        state.finished.len()
    }
}

impl Inner {
    /// A new execution of `job`, queued with the requirements learned sizing gives it.
    fn execution(
        &self,
        key: (String, Digest),
        job: Job,
        metadata: RequestMetadata,
        invocation: String,
        (priority, do_not_cache): (i32, bool),
    ) -> Result<Arc<Execution>> {
        let inner = self;
        inner.refresh_claims();
        let requirements = requirements_of(&job, &inner.claimed.read());
        let function = key.1.function();
        let command = Digest::from_field(function, job.action.command_digest.as_ref(), "command")?;
        let shape = crate::sizing::shape(&key.0, &command, &requirements);
        let rules = &inner.config.match_rules;
        let there = || (inner.executors(), inner.pool.potential());
        let (class, sized) = inner.sizing.sized(&shape, &requirements, rules, there);
        let exec = Arc::new(Execution {
            key,
            platform: platform_label(&requirements),
            shape,
            sized_mb: sized,
            memory_retry_from_mb: 0.into(),
            invocation,
            metadata,
            span: tracing::Span::current(),
            job,
            priority,
            do_not_cache,
            attempts: AtomicU32::new(0),
            refusals: AtomicU32::new(0),
            cancel: Cancel::new(),
            shared: Mutex::new(Shared {
                waiters: Vec::new(),
                stage: Stage::Queued,
                queued: None,
                class,
                over: false,
            }),
        });
        Ok(exec)
    }

    fn new_name(&self) -> String {
        format!("operations/{}/{}", self.config.name, uuid::Uuid::new_v4())
    }

    fn retain(&self, name: String, finished: Finished) {
        self.state
            .lock()
            .finished
            .insert(name, finished, &self.config);
    }

    /// Joins the in-flight execution of `key`, if any, with a new operation at its stage.
    fn join(
        &self,
        state: &mut State,
        key: &(String, Digest),
    ) -> Option<watch::Receiver<Operation>> {
        let exec = Arc::clone(state.inflight.get(key)?);
        let name = self.new_name();
        let mut shared = exec.shared.lock();
        debug_assert!(!shared.over, "an execution that is over is never in flight");
        let (op, rx) = Op::new(operation(&name, key.1, shared.stage, None));
        shared.waiters.push(Arc::clone(&op));
        drop(shared);
        state.live.insert(name, (op, exec));
        Some(rx)
    }

    /// Queues a new execution with its first operation, unless an identical one appeared
    /// meanwhile (then joins it) or the queue is full.
    fn start(&self, exec: Arc<Execution>) -> Result<watch::Receiver<Operation>> {
        let mut state = self.state.lock();
        if let Some(rx) = self.join(&mut state, &exec.key) {
            return Ok(rx);
        }
        if state.queue.len() >= self.config.max_queued {
            return Err(Error::ResourceExhausted(
                format!(
                    "the execution queue is full ({} actions)",
                    self.config.max_queued
                )
                .into(),
            ));
        }
        let name = self.new_name();
        let (op, rx) = Op::new(operation(&name, exec.key.1, Stage::Queued, None));
        {
            let mut shared = exec.shared.lock();
            let position = state.queue.push(
                &shared.class,
                exec.priority,
                &exec.invocation,
                Arc::clone(&exec),
            );
            shared.waiters.push(Arc::clone(&op));
            shared.queued = Some(position);
        }
        if !exec.do_not_cache {
            state.inflight.insert(exec.key.clone(), Arc::clone(&exec));
        }
        state.live.insert(name, (op, exec));
        Ok(rx)
    }

    /// Ends an execution: every waiter gets `response` under its own name, and nobody can
    /// join it any more (both under the state lock).
    fn complete(&self, exec: &Arc<Execution>, response: ExecuteResponse) {
        let mut state = self.state.lock();
        if state
            .inflight
            .get(&exec.key)
            .is_some_and(|e| Arc::ptr_eq(e, exec))
        {
            state.inflight.remove(&exec.key);
        }
        let waiters = {
            let mut shared = exec.shared.lock();
            shared.over = true;
            shared.queued = None;
            shared.stage = Stage::Completed;
            std::mem::take(&mut shared.waiters)
        };
        for op in waiters {
            state.live.remove(&op.name);
            let done = op.publish(exec.key.1, Stage::Completed, Some(response.clone()));
            state
                .finished
                .insert(op.name.clone(), Finished::Done(done), &self.config);
        }
    }

    /// Re-queues an execution whose executor was lost, unless it is over; false if it is.
    fn requeue(&self, exec: &Arc<Execution>) -> bool {
        let mut state = self.state.lock();
        let mut shared = exec.shared.lock();
        if shared.over {
            return false;
        }
        shared.stage = Stage::Queued;
        for op in &shared.waiters {
            op.publish(exec.key.1, Stage::Queued, None);
        }
        let position = state.queue.push(
            &shared.class,
            exec.priority,
            &exec.invocation,
            Arc::clone(exec),
        );
        shared.queued = Some(position);
        true
    }

    /// Records the instance names the pool's executors serve, if they changed since the last
    /// look: an action is never placed by a stale claim.
    fn refresh_claims(&self) {
        let changed = self.claim_changes.lock().take_change();
        if changed {
            self.note_claims(&self.pool.executors());
        }
    }

    /// Records the instance names `executors` serve by name.
    fn note_claims(&self, executors: &[ExecutorInfo]) {
        let named = || {
            executors.iter().flat_map(|e| {
                e.properties
                    .iter()
                    .filter(|(n, v)| n == INSTANCE_PROPERTY && v != "*")
                    .map(|(_, v)| v)
            })
        };
        if named().all(|v| self.claimed.read().contains(v)) {
            return;
        }
        self.claimed.write().extend(named().cloned());
    }

    /// The pool's executors, from the [`Snapshot`].
    fn executors(&self) -> Arc<[ExecutorInfo]> {
        let mut snapshot = self.snapshot.lock();
        let changed = snapshot.changes.take_change();
        if let Some((at, executors)) = &snapshot.taken
            && !changed
            && at.elapsed() < SNAPSHOT_AGE
        {
            return Arc::clone(executors);
        }
        let mut executors = self.pool.executors();
        let mut ids = HashSet::with_capacity(executors.len());
        executors.retain(|e| ids.insert(e.id.clone()));
        self.note_claims(&executors);
        let executors: Arc<[ExecutorInfo]> = executors.into();
        snapshot.taken = Some((std::time::Instant::now(), Arc::clone(&executors)));
        executors
    }

    /// One dispatch pass: starts queued executions on idle executors, and fails those no
    /// executor has matched for the grace period.
    fn dispatch_once(self: &Arc<Self>) {
        let executors = self.executors();
        let potential = self.pool.potential();
        let pass = {
            let mut state = self.state.lock();
            state.finished.evict(&self.config);
            let State {
                queue,
                busy,
                running,
                ..
            } = &mut *state;
            let pass = queue.pass(
                &executors,
                &potential,
                busy,
                &self.config.match_rules,
                self.config.unmatched_grace,
            );
            let now = std::time::Instant::now();
            for (exec, e) in &pass.starts {
                busy.insert(executors[*e].id.clone());
                exec.shared.lock().queued = None;
                let waited = SystemTime::now()
                    .duration_since(exec.job.queued_at)
                    .unwrap_or_default();
                self.observer.metrics.queue_wait(&exec.platform, waited);
                running.insert(executors[*e].id.clone(), (Arc::clone(exec), now));
            }
            for (exec, _) in &pass.expired {
                exec.shared.lock().queued = None;
            }
            let waiting = queue.matching(&potential, &self.config.match_rules);
            (pass, waiting)
        };
        let (pass, waiting) = pass;
        if !potential.is_empty() {
            let demand: Vec<(String, usize)> =
                potential.into_iter().map(|e| e.id).zip(waiting).collect();
            self.pool.demand(&demand);
        }
        if !pass.expired.is_empty() {
            // Recording may write to the CAS: off the dispatch path.
            let inner = Arc::clone(self);
            tokio::spawn(async move {
                for (exec, why) in pass.expired {
                    let mut response = failed(tonic::Code::FailedPrecondition, why);
                    inner.observe(&exec, None, &mut response).await;
                    inner.complete(&exec, response);
                }
            });
        }
        for (exec, e) in pass.starts {
            tokio::spawn(Arc::clone(self).run(exec, executors[e].clone()));
        }
    }

    async fn run(self: Arc<Self>, exec: Arc<Execution>, executor: ExecutorInfo) {
        exec.fan_out(Stage::Executing);
        let mut job = exec.job.clone();
        job.lease_id = uuid::Uuid::new_v4().to_string();
        tracing::debug!(action = %exec.key.1, executor = %executor.id, lease = %job.lease_id, "dispatching");
        let ended = self.attempt(&exec, &executor.id, job).await;
        {
            let mut state = self.state.lock();
            state.busy.remove(&executor.id);
            state.running.remove(&executor.id);
        }
        self.wake.notify_one();
        if let Some(mut response) = self.respond(&exec, &executor, ended).await {
            self.observe(&exec, Some(&executor.id), &mut response).await;
            self.complete(&exec, response);
        }
    }

    /// Records a finished execution (see [`Observer::finished`]).
    async fn observe(
        &self,
        exec: &Execution,
        executor: Option<&str>,
        response: &mut ExecuteResponse,
    ) {
        let done = Done {
            instance: &exec.key.0,
            action: exec.key.1,
            metadata: &exec.metadata,
            span: &exec.span,
            executor,
        };
        self.observer
            .finished(self.cas.as_ref(), done, response)
            .await;
    }

    /// Runs one attempt under the lease deadline (timeout plus allowance). When the deadline
    /// passes or the execution is cancelled, the job's token fires and the pool gets
    /// `cancel_grace` to return before the scheduler stops waiting and drops its future.
    async fn attempt(&self, exec: &Execution, executor: &str, job: Job) -> Ended {
        let timeout = job.timeout.unwrap_or(self.config.max_action_timeout);
        let lease = timeout.saturating_add(self.config.lease_allowance);
        let token = exec.cancel.child();
        let run = self.pool.run(executor, job, token.clone());
        tokio::pin!(run);
        let revoked = tokio::select! {
            outcome = &mut run => return Ended::Returned(outcome),
            () = tokio::time::sleep(lease) => true,
            () = token.cancelled() => false,
        };
        if revoked {
            tracing::warn!(action = %exec.key.1, executor, ?lease, "lease deadline passed; revoking");
        }
        token.cancel();
        let late = tokio::time::timeout(self.config.cancel_grace, &mut run)
            .await
            .ok();
        if late.is_none() {
            tracing::warn!(action = %exec.key.1, executor, grace = ?self.config.cancel_grace, "the pool did not return a cancelled job; freeing its executor");
        }
        match (revoked, late) {
            (true, late) => Ended::Revoked(lease, late),
            (false, Some(outcome)) => Ended::Returned(outcome),
            (false, None) => Ended::Abandoned,
        }
    }

    /// The response for how an attempt ended; `None` if the execution was re-queued.
    async fn respond(
        &self,
        exec: &Arc<Execution>,
        executor: &ExecutorInfo,
        ended: Ended,
    ) -> Option<ExecuteResponse> {
        let outcome = match ended {
            Ended::Returned(outcome) => outcome,
            Ended::Revoked(lease, late) => {
                let result = match late {
                    Some(Ok(JobOutcome::Completed(r) | JobOutcome::TimedOut(r))) => Some(r),
                    _ => None,
                };
                return Some(ExecuteResponse {
                    result,
                    ..failed(
                        tonic::Code::DeadlineExceeded,
                        format!(
                            "the lease deadline passed: the job did not finish within {lease:?} \
                             (its timeout plus {:?} for fetching inputs and uploading outputs)",
                            self.config.lease_allowance
                        ),
                    )
                });
            }
            Ended::Abandoned => {
                return Some(failed(
                    tonic::Code::Cancelled,
                    "cancelled; the executor did not confirm in time",
                ));
            }
        };
        // A worker's result gets the same checks as UpdateActionResult before anyone sees it.
        let invalid = match &outcome {
            Ok(JobOutcome::Completed(r) | JobOutcome::TimedOut(r)) => {
                validate_action_result(exec.key.1.function(), r).err()
            }
            _ => None,
        };
        let outcome = match invalid {
            Some(e) => {
                tracing::warn!(action = %exec.key.1, executor = %executor.id, error = %e, "worker sent an invalid result");
                Err(Error::FailedPrecondition(remexec_core::Message::caused_by(
                    "the worker's result is invalid",
                    e,
                )))
            }
            None => outcome,
        };
        if let Ok(JobOutcome::Completed(result) | JobOutcome::TimedOut(result)) = &outcome
            && self.learn(exec, executor, result)
        {
            return None;
        }
        Some(match outcome {
            Ok(JobOutcome::Completed(mut result)) => {
                crate::sizing::say(exec, &mut result);
                self.cache(exec, &result).await;
                ExecuteResponse {
                    result: Some(result),
                    status: Some(status(tonic::Code::Ok, "")),
                    ..Default::default()
                }
            }
            Ok(JobOutcome::TimedOut(mut result)) => {
                crate::sizing::say(exec, &mut result);
                let limit = exec.job.timeout.unwrap_or_default();
                ExecuteResponse {
                    result: Some(result),
                    ..failed(
                        tonic::Code::DeadlineExceeded,
                        format!("action exceeded its timeout of {limit:?} and was killed"),
                    )
                }
            }
            Ok(JobOutcome::Cancelled) => failed(tonic::Code::Cancelled, "cancelled"),
            Ok(JobOutcome::Refused(why)) => self.retry(exec, executor, why, true)?,
            Err(Error::Unavailable(why)) => self.retry(exec, executor, why.to_string(), false)?,
            Err(Error::FailedPrecondition(why)) => {
                // Typically an input evicted since the check: report what is missing now, as
                // MISSING violations, so that the client uploads it again.
                let status =
                    match load(self.cas.as_ref(), &exec.key.0, exec.key.1, &self.config).await {
                        Ok(Loaded::Missing(missing)) => missing_status(&missing),
                        _ => status(tonic::Code::FailedPrecondition, why.to_string()),
                    };
                ExecuteResponse {
                    status: Some(status),
                    ..Default::default()
                }
            }
            Err(e) => ExecuteResponse {
                status: Some(e.to_rpc_status()),
                ..Default::default()
            },
        })
    }

    /// Learns what `result`, from `executor`, says of the action's shape; if the action was
    /// killed for want of memory, re-queues it once on an executor with more, if there is one
    /// (true: re-queued).
    fn learn(&self, exec: &Arc<Execution>, executor: &ExecutorInfo, result: &ActionResult) -> bool {
        let there = || (self.executors(), self.pool.potential());
        let rules = &self.config.match_rules;
        if !self.sizing.learn(exec, executor, result, rules, there) {
            return false;
        }
        let requeued = self.requeue(exec);
        self.wake.notify_one();
        requeued
    }

    /// Re-queues an execution whose executor refused it (`refused`) or was lost; `None` if it
    /// was re-queued, else the failure once it has been refused [`MAX_REFUSALS`] times or lost
    /// more than `max_retries` times.
    fn retry(
        &self,
        exec: &Arc<Execution>,
        executor: &ExecutorInfo,
        why: String,
        refused: bool,
    ) -> Option<ExecuteResponse> {
        let (count, limit, what) = match refused {
            true => (&exec.refusals, MAX_REFUSALS, "refused"),
            false => (&exec.attempts, self.config.max_retries, "lost"),
        };
        let times = count.fetch_add(1, Ordering::SeqCst) + 1;
        if times <= limit && self.requeue(exec) {
            match refused {
                true => {
                    tracing::debug!(action = %exec.key.1, executor = %executor.id, %why, times, "executor refused the job; re-queued")
                }
                false => {
                    tracing::warn!(action = %exec.key.1, executor = %executor.id, %why, times, "executor lost; re-queued")
                }
            }
            self.wake.notify_one();
            return None;
        }
        Some(failed(
            tonic::Code::Unavailable,
            format!("executors {what} this action {times} times: {why}"),
        ))
    }

    /// References the outputs the client is about to be told of; caches successful results
    /// unless the action says not to.
    async fn cache(&self, exec: &Execution, result: &ActionResult) {
        // The outputs it names, whatever the Action Cache does (a completeness-checking one
        // references the files in output trees too).
        let outputs = remexec_core::merkle::result_blobs(exec.key.1.function(), result);
        if let Err(e) = self.cas.reference(&exec.key.0, &outputs).await {
            tracing::warn!(action = %exec.key.1, error = %e, "could not reference the outputs");
        }
        if exec.do_not_cache || result.exit_code != 0 {
            return;
        }
        if let Err(e) = self.ac.put(&exec.key.0, exec.key.1, result.clone()).await {
            tracing::warn!(action = %exec.key.1, error = %e, "could not cache the result");
        }
    }
}

async fn dispatch_loop(weak: std::sync::Weak<Inner>) {
    let mut changes = match weak.upgrade() {
        Some(inner) => inner.pool.changes(),
        None => return,
    };
    loop {
        let Some(inner) = weak.upgrade() else { return };
        inner.dispatch_once();
        let tick = Duration::from_millis(200)
            .min(inner.config.unmatched_grace.max(Duration::from_millis(10)));
        tokio::select! {
            () = inner.wake.notified() => {}
            () = changes.changed() => {}
            () = tokio::time::sleep(tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_cannot_be_switched_off() {
        let max = Duration::from_secs(60);
        let t = |seconds, nanos| effective_timeout(Some(&ProtoDuration { seconds, nanos }), max);
        assert_eq!(effective_timeout(None, max), max);
        assert_eq!(t(0, 0), max);
        assert_eq!(t(0, 1), max, "1 ns rounds to 0 ms");
        assert_eq!(t(0, 999_999), max);
        assert_eq!(t(-5, 0), max);
        assert_eq!(t(0, -1), max);
        assert_eq!(t(61, 0), max);
        assert_eq!(t(i64::MAX, 999_999_999), max);
        assert_eq!(t(0, 1_000_000), Duration::from_millis(1));
        assert_eq!(t(30, 0), Duration::from_secs(30));
    }
}
