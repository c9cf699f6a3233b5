//! The [`Scheduler`]: operations, the priority queue, merging of identical actions, dispatch to
//! an [`ExecutorPool`], retries and caching of results.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use remexec_core::apis::google::longrunning::{Operation, operation};
use remexec_core::apis::google::protobuf::Any;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::reapi::{
    ActionResult, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, execution_stage,
};
use remexec_core::{
    ActionCache, BlobStore, Digest, DigestFunction, Error, Result, validate_instance_name,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::inputs::{Loaded, load};
use crate::platform::{MatchRules, Property};
use crate::pool::{ExecutorInfo, ExecutorPool, Job, JobOutcome};

/// Scheduler settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// This scheduler's name; it appears in operation names (`operations/{name}/{uuid}`).
    pub name: String,
    /// How action platforms are matched against executor properties.
    pub match_rules: MatchRules,
    /// Upper bound on any action's timeout, also used when an action sets none.
    pub max_action_timeout: Duration,
    /// How often an action whose executor was lost is re-queued before the client gets
    /// UNAVAILABLE.
    pub max_retries: u32,
    /// How long an action that no executor can match waits for one to appear before it fails
    /// with FAILED_PRECONDITION.
    pub unmatched_grace: Duration,
    /// How long finished operations stay available to WaitExecution and GetOperation.
    pub retention: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            name: "s0".into(),
            match_rules: MatchRules::default(),
            max_action_timeout: Duration::from_secs(3600),
            max_retries: 3,
            unmatched_grace: Duration::from_secs(30),
            retention: Duration::from_secs(600),
        }
    }
}

/// One operation: an action being run (or run), shared by every client waiting on it.
#[derive(Debug)]
struct Op {
    name: String,
    key: (String, Digest),
    job: Job,
    requirements: Vec<Property>,
    priority: i32,
    do_not_cache: bool,
    attempts: AtomicU32,
    unmatched_since: Mutex<Option<Instant>>,
    tx: watch::Sender<Operation>,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    ops: HashMap<String, Arc<Op>>,
    /// Operations answered without running anything (cache hits, missing inputs).
    answered: HashMap<String, Operation>,
    inflight: HashMap<(String, Digest), Arc<Op>>,
    queue: BTreeMap<(i32, u64), Arc<Op>>,
    busy: HashSet<String>,
    seq: u64,
}

#[derive(Debug)]
struct Inner {
    config: SchedulerConfig,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCache>,
    pool: Arc<dyn ExecutorPool>,
    state: Mutex<State>,
    wake: Notify,
}

/// The scheduler. Cheap to clone; all clones share one queue.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

fn any<M: Message>(type_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// The CACHE_CHECK stage of `op`: same name and action, not done. Execute streams start with it;
/// the check itself has run by the time the stream starts.
pub(crate) fn cache_check_stage(op: &Operation) -> Operation {
    let mut metadata = op
        .metadata
        .as_ref()
        .and_then(|m| ExecuteOperationMetadata::decode(&m.value[..]).ok())
        .unwrap_or_default();
    metadata.stage = execution_stage::Value::CacheCheck as i32;
    Operation {
        name: op.name.clone(),
        metadata: Some(any(
            "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
            &metadata,
        )),
        done: false,
        result: None,
    }
}

fn operation(
    name: &str,
    digest: Digest,
    stage: execution_stage::Value,
    response: Option<ExecuteResponse>,
) -> Operation {
    let metadata = ExecuteOperationMetadata {
        stage: stage as i32,
        action_digest: Some(digest.to_proto()),
        digest_function: digest.function().to_proto(),
        ..Default::default()
    };
    Operation {
        name: name.to_string(),
        metadata: Some(any(
            "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
            &metadata,
        )),
        done: response.is_some(),
        result: response.map(|r| {
            operation::Result::Response(any("build.bazel.remote.execution.v2.ExecuteResponse", &r))
        }),
    }
}

fn status(code: tonic::Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// FAILED_PRECONDITION with one `MISSING` violation per blob, which makes clients re-upload.
fn missing_status(missing: &[Digest]) -> RpcStatus {
    use tonic_types::pb::{PreconditionFailure, precondition_failure::Violation};
    let failure = PreconditionFailure {
        violations: missing
            .iter()
            .map(|d| Violation {
                r#type: "MISSING".into(),
                subject: match d.function() {
                    DigestFunction::Sha256 => format!("blobs/{d}"),
                    f => format!("blobs/{f}/{d}"),
                },
                description: "blob is not in the CAS".into(),
            })
            .collect(),
    };
    RpcStatus {
        code: tonic::Code::FailedPrecondition as i32,
        message: format!(
            "{} blob(s) needed by the action are missing from the CAS",
            missing.len()
        ),
        details: vec![any("google.rpc.PreconditionFailure", &failure)],
    }
}

#[allow(deprecated)] // Command.platform: where REAPI v2.0-v2.1 clients put it
fn platform_of(job: &Job) -> Vec<Property> {
    let platform = job
        .action
        .platform
        .as_ref()
        .or(job.command.platform.as_ref());
    platform
        .map(|p| {
            p.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

impl Scheduler {
    /// A scheduler over the given stores and pool; starts its dispatch task on the current
    /// tokio runtime.
    pub fn new(
        config: SchedulerConfig,
        cas: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCache>,
        pool: Arc<dyn ExecutorPool>,
    ) -> Self {
        let inner = Arc::new(Inner {
            config,
            cas,
            ac,
            pool,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(dispatch_loop(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    /// Starts (or joins) the execution of an action. The receiver sees every stage change.
    pub async fn execute(&self, req: ExecuteRequest) -> Result<watch::Receiver<Operation>> {
        validate_instance_name(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let instance = req.instance_name;
        let done = |response: ExecuteResponse| {
            let name = format!(
                "operations/{}/{}",
                self.inner.config.name,
                uuid::Uuid::new_v4()
            );
            let op = operation(
                &name,
                digest,
                execution_stage::Value::Completed,
                Some(response),
            );
            self.inner
                .state
                .lock()
                .answered
                .insert(name.clone(), op.clone());
            self.inner.expire(name);
            watch::channel(op).1
        };
        if !req.skip_cache_lookup
            && let Some(result) = self.inner.ac.get(&instance, digest).await?
        {
            return Ok(done(ExecuteResponse {
                result: Some(result),
                cached_result: true,
                status: Some(status(tonic::Code::Ok, "")),
                ..Default::default()
            }));
        }
        if let Some(op) = self
            .inner
            .state
            .lock()
            .inflight
            .get(&(instance.clone(), digest))
        {
            return Ok(op.tx.subscribe());
        }
        let (action, command) = match load(self.inner.cas.as_ref(), &instance, digest).await? {
            Loaded::Ready(loaded) => *loaded,
            Loaded::Missing(missing) => {
                return Ok(done(ExecuteResponse {
                    status: Some(missing_status(&missing)),
                    ..Default::default()
                }));
            }
        };
        let max = self.inner.config.max_action_timeout;
        let timeout = action
            .timeout
            .as_ref()
            .map(|t| Duration::new(t.seconds as u64, t.nanos as u32))
            .filter(|t| !t.is_zero())
            .map_or(max, |t| t.min(max));
        let priority = req.execution_policy.as_ref().map_or(0, |p| p.priority);
        let do_not_cache = action.do_not_cache;
        let job = Job {
            lease_id: String::new(),
            instance: instance.clone(),
            action_digest: digest,
            action,
            command,
            timeout: Some(timeout),
            queued_at: SystemTime::now(),
        };
        let name = format!(
            "operations/{}/{}",
            self.inner.config.name,
            uuid::Uuid::new_v4()
        );
        let (tx, rx) = watch::channel(operation(
            &name,
            digest,
            execution_stage::Value::Queued,
            None,
        ));
        let op = Arc::new(Op {
            name: name.clone(),
            key: (instance, digest),
            requirements: platform_of(&job),
            job,
            priority,
            do_not_cache,
            attempts: AtomicU32::new(0),
            unmatched_since: Mutex::new(None),
            tx,
            cancel: CancellationToken::new(),
        });
        {
            let mut state = self.inner.state.lock();
            if let Some(existing) = state.inflight.get(&op.key) {
                return Ok(existing.tx.subscribe());
            }
            state.inflight.insert(op.key.clone(), Arc::clone(&op));
            state.ops.insert(name, Arc::clone(&op));
            enqueue(&mut state, op);
        }
        self.inner.wake.notify_one();
        Ok(rx)
    }

    /// Follows an existing operation; `NotFound` if it is unknown or has expired.
    pub fn subscribe(&self, name: &str) -> Result<watch::Receiver<Operation>> {
        let state = self.inner.state.lock();
        if let Some(op) = state.ops.get(name) {
            return Ok(op.tx.subscribe());
        }
        state
            .answered
            .get(name)
            .map(|op| watch::channel(op.clone()).1)
            .ok_or_else(|| Error::NotFound(format!("operation {name:?} is unknown or has expired")))
    }

    /// Cancels an operation: a queued action is dropped, a running one is killed.
    pub fn cancel(&self, name: &str) -> Result<()> {
        let (op, was_queued) = {
            let mut state = self.inner.state.lock();
            let op = state.ops.get(name).cloned().ok_or_else(|| {
                Error::NotFound(format!("operation {name:?} is unknown or has expired"))
            })?;
            let key = state
                .queue
                .iter()
                .find(|(_, o)| Arc::ptr_eq(o, &op))
                .map(|(k, _)| *k);
            if let Some(key) = key {
                state.queue.remove(&key);
            }
            (op, key.is_some())
        };
        if was_queued {
            let response = ExecuteResponse {
                status: Some(status(tonic::Code::Cancelled, "cancelled while queued")),
                ..Default::default()
            };
            self.inner.complete(&op, response);
        } else {
            op.cancel.cancel();
        }
        Ok(())
    }

    /// Number of operations queued and not yet dispatched.
    pub fn queued(&self) -> usize {
        self.inner.state.lock().queue.len()
    }
}

fn enqueue(state: &mut State, op: Arc<Op>) {
    state.seq += 1;
    let key = (op.priority, state.seq);
    state.queue.insert(key, op);
}

impl Inner {
    fn set_stage(&self, op: &Op, stage: execution_stage::Value) {
        op.tx
            .send_replace(operation(&op.name, op.key.1, stage, None));
    }

    /// Publishes the final state, forgets the in-flight entry, and expires the operation later.
    fn complete(self: &Arc<Self>, op: &Arc<Op>, response: ExecuteResponse) {
        op.tx.send_replace(operation(
            &op.name,
            op.key.1,
            execution_stage::Value::Completed,
            Some(response),
        ));
        {
            let mut state = self.state.lock();
            if state
                .inflight
                .get(&op.key)
                .is_some_and(|o| Arc::ptr_eq(o, op))
            {
                state.inflight.remove(&op.key);
            }
        }
        self.expire(op.name.clone());
    }

    /// Forgets a finished operation once the retention period is over.
    fn expire(self: &Arc<Self>, name: String) {
        let weak = Arc::downgrade(self);
        let retention = self.config.retention;
        tokio::spawn(async move {
            tokio::time::sleep(retention).await;
            if let Some(inner) = weak.upgrade() {
                let mut state = inner.state.lock();
                state.ops.remove(&name);
                state.answered.remove(&name);
            }
        });
    }

    /// Matches queued operations to idle executors, in priority order; fails those no executor
    /// can ever match once the grace period is over.
    fn dispatch_once(self: &Arc<Self>) {
        let executors = self.pool.executors();
        let rules = &self.config.match_rules;
        let mut starts = Vec::new();
        let mut failures = Vec::new();
        {
            let mut state = self.state.lock();
            let mut idle: Vec<&ExecutorInfo> = executors
                .iter()
                .filter(|e| !state.busy.contains(&e.id))
                .collect();
            let mut taken = Vec::new();
            for (key, op) in &state.queue {
                if let Some(i) = idle
                    .iter()
                    .position(|e| rules.matches(&op.requirements, &e.properties))
                {
                    starts.push((Arc::clone(op), idle.remove(i).clone()));
                    taken.push(*key);
                    continue;
                }
                let mut since = op.unmatched_since.lock();
                if executors
                    .iter()
                    .any(|e| rules.matches(&op.requirements, &e.properties))
                {
                    *since = None;
                } else if since.get_or_insert_with(Instant::now).elapsed()
                    >= self.config.unmatched_grace
                {
                    failures.push((
                        Arc::clone(op),
                        unmatched_message(rules, &op.requirements, &executors),
                    ));
                    taken.push(*key);
                }
            }
            for key in taken {
                state.queue.remove(&key);
            }
            for (_, executor) in &starts {
                state.busy.insert(executor.id.clone());
            }
        }
        for (op, message) in failures {
            self.complete(
                &op,
                ExecuteResponse {
                    status: Some(status(tonic::Code::FailedPrecondition, message)),
                    ..Default::default()
                },
            );
        }
        for (op, executor) in starts {
            tokio::spawn(Arc::clone(self).run(op, executor));
        }
    }

    async fn run(self: Arc<Self>, op: Arc<Op>, executor: ExecutorInfo) {
        self.set_stage(&op, execution_stage::Value::Executing);
        let mut job = op.job.clone();
        job.lease_id = uuid::Uuid::new_v4().to_string();
        tracing::debug!(operation = %op.name, executor = %executor.id, "dispatching");
        let outcome = self.pool.run(&executor.id, job, op.cancel.clone()).await;
        self.state.lock().busy.remove(&executor.id);
        self.wake.notify_one();
        let ok = || Some(status(tonic::Code::Ok, ""));
        let response = match outcome {
            Ok(JobOutcome::Completed(result)) => {
                self.cache(&op, &result).await;
                ExecuteResponse {
                    result: Some(result),
                    status: ok(),
                    ..Default::default()
                }
            }
            Ok(JobOutcome::TimedOut(result)) => {
                let limit = op.job.timeout.unwrap_or_default();
                ExecuteResponse {
                    result: Some(result),
                    status: Some(status(
                        tonic::Code::DeadlineExceeded,
                        format!("action exceeded its timeout of {limit:?} and was killed"),
                    )),
                    ..Default::default()
                }
            }
            Ok(JobOutcome::Cancelled) => ExecuteResponse {
                status: Some(status(tonic::Code::Cancelled, "cancelled")),
                ..Default::default()
            },
            Err(Error::Unavailable(why)) => {
                let attempts = op.attempts.fetch_add(1, Ordering::SeqCst) + 1;
                if attempts <= self.config.max_retries && !op.cancel.is_cancelled() {
                    tracing::warn!(operation = %op.name, executor = %executor.id, %why, attempts, "executor lost; re-queueing");
                    self.set_stage(&op, execution_stage::Value::Queued);
                    enqueue(&mut self.state.lock(), Arc::clone(&op));
                    self.wake.notify_one();
                    return;
                }
                ExecuteResponse {
                    status: Some(status(
                        tonic::Code::Unavailable,
                        format!("executors were lost {attempts} times running this action: {why}"),
                    )),
                    ..Default::default()
                }
            }
            Err(Error::FailedPrecondition(why)) => {
                // Typically an input evicted since the check: report what is missing now, as
                // MISSING violations, so that the client uploads it again.
                let status = match load(self.cas.as_ref(), &op.key.0, op.key.1).await {
                    Ok(Loaded::Missing(missing)) => missing_status(&missing),
                    _ => status(tonic::Code::FailedPrecondition, why),
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
        };
        self.complete(&op, response);
    }

    /// Caches successful results unless the action says not to.
    async fn cache(&self, op: &Op, result: &ActionResult) {
        if op.do_not_cache || result.exit_code != 0 {
            return;
        }
        if let Err(e) = self.ac.put(&op.key.0, op.key.1, result.clone()).await {
            tracing::warn!(operation = %op.name, error = %e, "could not cache the result");
        }
    }
}

fn unmatched_message(
    rules: &MatchRules,
    requested: &[Property],
    executors: &[ExecutorInfo],
) -> String {
    if executors.is_empty() {
        return "no executor can run this action: no executors are registered".into();
    }
    let closest = executors
        .iter()
        .map(|e| rules.unmatched(requested, &e.properties))
        .min_by_key(Vec::len)
        .unwrap_or_default();
    let list: Vec<String> = closest.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!(
        "no executor can run this action: unmatched platform properties {} (among {} executors)",
        list.join(", "),
        executors.len()
    )
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
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep(tick) => {}
        }
    }
}
