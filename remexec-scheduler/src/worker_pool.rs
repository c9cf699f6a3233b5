//! [`WorkerPool`]: an [`ExecutorPool`] of remote workers attached over remexec's worker protocol
//! (`remexec.worker.v1.WorkerService/Attach`).
//!
//! A worker name is held by one live connection at a time; results count only from the
//! connection holding the lease; a worker that does not answer a `cancel_lease` within the
//! cancel grace is detached as wedged.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use remexec_core::{Error, Result};
use remexec_proto::worker::v1::worker_message::Message as FromWorker;
use remexec_proto::worker::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use remexec_proto::worker::v1::{
    Demand, Executor, Lease, LeaseResult, SchedulerMessage, WorkerMessage, demand,
    scheduler_message,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::pool::{Cancel, ChangeNotifier, Changes, ExecutorInfo, ExecutorPool, Job, JobOutcome};

/// Heartbeat interval assumed when a worker does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A worker silent for this many heartbeat intervals is considered lost.
const MISSED_HEARTBEATS: u32 = 3;
/// How long a cancelled lease may take to report back before its worker is detached as wedged.
const CANCEL_GRACE: Duration = Duration::from_secs(30);
/// Largest message on the worker protocol, both ways: a `Lease` carries a Command of up to
/// 16 MiB, and a `LeaseResult` may carry large inlined outputs.
pub const MAX_WORKER_MESSAGE: usize = 64 * 1024 * 1024;

type Outbox = mpsc::Sender<Result<SchedulerMessage, Status>>;

#[derive(Debug)]
struct Connection {
    worker: String,
    outbox: Outbox,
    /// A flexible worker's shapes, as potential executors with ids `{worker}/shape:{id}`.
    shapes: Vec<ExecutorInfo>,
    /// The last demand sent to the worker.
    demand: Vec<(String, u64)>,
}

/// `executors` of worker `worker` as the scheduler lists them: ids prefixed `{worker}/`, or
/// `{worker}/shape:` for shapes. `InvalidArgument` for an empty or repeated id.
fn executor_infos(worker: &str, executors: &[Executor], prefix: &str) -> Result<Vec<ExecutorInfo>> {
    let mut ids = std::collections::HashSet::new();
    executors
        .iter()
        .map(|e| {
            if e.id.is_empty() || !ids.insert(e.id.as_str()) {
                return Err(Error::invalid(format!(
                    "worker {worker:?}: executor ids must be non-empty and unique, not {:?}",
                    e.id
                )));
            }
            Ok(ExecutorInfo {
                id: format!("{worker}/{prefix}{}", e.id),
                worker: worker.to_string(),
                properties: e
                    .properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect(),
            })
        })
        .collect()
}

#[derive(Debug, Default)]
struct PoolState {
    connections: HashMap<String, Connection>,
    executors: Vec<(ExecutorInfo, String)>,
    /// Leases awaiting a result: the connection holding each, and where its result goes.
    pending: HashMap<String, (String, oneshot::Sender<Result<JobOutcome>>)>,
}

#[derive(Debug)]
struct PoolInner {
    state: Mutex<PoolState>,
    changes: ChangeNotifier,
    shutdown: CancellationToken,
    cancel_grace: Duration,
}

/// Forgets a lease's pending entry when [`WorkerPool::run`] ends, returned or dropped, and
/// asks the worker to stop it if it was dropped before a result came.
struct PendingGuard<'a> {
    inner: &'a PoolInner,
    lease_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        let Some((conn, _)) = state.pending.remove(&self.lease_id) else {
            return;
        };
        if let Some(c) = state.connections.get(&conn) {
            let cancel = scheduler_message::Message::CancelLease(self.lease_id.clone());
            let _ = c.outbox.try_send(Ok(SchedulerMessage {
                message: Some(cancel),
            }));
        }
    }
}

/// Workers attached over gRPC. Mount [`WorkerPool::service`] on the scheduler's server and hand
/// the pool to the [`Scheduler`](crate::Scheduler).
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<PoolInner>,
}

/// A readable description, as the stores' (`WorkerPool(2 workers, 8 executors)`), not the
/// whole state.
impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        write!(
            f,
            "WorkerPool({} workers, {} executors)",
            state.connections.len(),
            state.executors.len()
        )
    }
}

impl Default for WorkerPool {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::with_cancel_grace(CANCEL_GRACE)
    }

    /// An empty pool that detaches a worker as wedged when it does not answer a `cancel_lease`
    /// within `grace` (30 s for [`new`](Self::new)).
    pub fn with_cancel_grace(grace: Duration) -> Self {
        Self::build(grace)
    }

    fn build(grace: Duration) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                state: Mutex::default(),
                changes: ChangeNotifier::new(),
                shutdown: CancellationToken::new(),
                cancel_grace: grace,
            }),
        }
    }

    /// Closes every worker stream and refuses new ones, so that a graceful server shutdown is
    /// not held up by workers; their leases fail as `Unavailable`.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let conns: Vec<String> = self
            .inner
            .state
            .lock()
            .connections
            .keys()
            .cloned()
            .collect();
        for conn in conns {
            self.detach(&conn, "the scheduler is shutting down");
        }
    }

    /// The gRPC service workers attach to, accepting messages of up to
    /// [`MAX_WORKER_MESSAGE`] both ways.
    pub fn service(&self) -> WorkerServiceServer<Self> {
        WorkerServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_WORKER_MESSAGE)
            .max_encoding_message_size(MAX_WORKER_MESSAGE)
    }

    /// Names of the attached workers.
    pub fn workers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .state
            .lock()
            .connections
            .values()
            .map(|c| c.worker.clone())
            .collect();
        names.sort();
        names
    }

    fn bump(&self) {
        self.inner.changes.notify();
    }

    /// Forgets a connection: its executors go, and its leases fail as `Unavailable`.
    fn detach(&self, conn: &str, why: &str) {
        let failed: Vec<_> = {
            let mut state = self.inner.state.lock();
            let Some(connection) = state.connections.remove(conn) else {
                return;
            };
            tracing::warn!(worker = %connection.worker, %why, "worker detached");
            state.executors.retain(|(_, c)| c != conn);
            let leases: Vec<String> = state
                .pending
                .iter()
                .filter(|(_, (c, _))| c == conn)
                .map(|(id, _)| id.clone())
                .collect();
            leases
                .into_iter()
                .filter_map(|id| state.pending.remove(&id))
                .collect()
        };
        // Told first, so that the re-queued jobs meet the list without this worker's executors.
        self.bump();
        for (_, tx) in failed {
            let _ = tx.send(Err(Error::Unavailable(
                format!("worker lost: {why}").into(),
            )));
        }
    }

    /// Delivers a result from connection `conn`. A result for an unknown lease, or for a lease
    /// another connection holds, is ignored; it never detaches the worker.
    fn finish_lease(&self, conn: &str, result: LeaseResult) {
        let tx = {
            let mut state = self.inner.state.lock();
            match state.pending.get(&result.lease_id) {
                None => {
                    tracing::debug!(lease = %result.lease_id, "result for an unknown lease");
                    return;
                }
                Some((holder, _)) if holder != conn => {
                    tracing::warn!(lease = %result.lease_id, connection = %conn, "result from a connection that does not hold the lease; ignored");
                    return;
                }
                Some(_) => state.pending.remove(&result.lease_id).map(|(_, tx)| tx),
            }
        };
        let Some(tx) = tx else { return };
        let status = result.status.unwrap_or_default();
        let outcome = match (tonic::Code::from_i32(status.code), result.result) {
            (tonic::Code::Ok, Some(r)) => Ok(JobOutcome::Completed(r)),
            (tonic::Code::DeadlineExceeded, r) => Ok(JobOutcome::TimedOut(r.unwrap_or_default())),
            (tonic::Code::Cancelled, _) => Ok(JobOutcome::Cancelled),
            (tonic::Code::Aborted, _) => Ok(JobOutcome::Refused(status.message)),
            (tonic::Code::Ok, None) => Err(Error::Internal(
                "worker reported success without a result".into(),
            )),
            (_, _) => Err(Error::from_rpc_status(&status)),
        };
        let _ = tx.send(outcome);
    }

    /// Replaces the executors of connection `conn` (a flexible worker re-partitioning).
    fn set_executors(&self, conn: &str, executors: &[Executor]) -> Result<()> {
        {
            let mut state = self.inner.state.lock();
            let Some(worker) = state.connections.get(conn).map(|c| c.worker.clone()) else {
                return Ok(());
            };
            let infos = executor_infos(&worker, executors, "")?;
            tracing::info!(%worker, executors = ?executors.iter().map(|e| &e.id).collect::<Vec<_>>(), "worker changed its executors");
            state.executors.retain(|(_, c)| c != conn);
            state
                .executors
                .extend(infos.into_iter().map(|e| (e, conn.to_string())));
        }
        self.bump();
        Ok(())
    }

    /// Reads one worker's messages until its stream ends or it misses heartbeats.
    async fn read_worker(
        self,
        conn: String,
        mut inbound: Streaming<WorkerMessage>,
        heartbeat: Duration,
    ) {
        let deadline = heartbeat * MISSED_HEARTBEATS;
        let why = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(deadline, inbound.message()) => next,
                () = self.inner.shutdown.cancelled() => break "the scheduler is shutting down".to_string(),
            };
            match next {
                Err(_) => break format!("no heartbeat for {deadline:?}"),
                Ok(Err(status)) => break format!("stream failed: {}", status.message()),
                Ok(Ok(None)) => break "stream closed".to_string(),
                Ok(Ok(Some(msg))) => match msg.message {
                    Some(FromWorker::Result(result)) => self.finish_lease(&conn, result),
                    Some(FromWorker::Heartbeat(_) | FromWorker::Progress(_)) | None => {}
                    Some(FromWorker::Register(_)) => {
                        break "registered twice on one stream".to_string();
                    }
                    Some(FromWorker::SetExecutors(set)) => {
                        if let Err(e) = self.set_executors(&conn, &set.executors) {
                            break e.to_string();
                        }
                    }
                },
            }
        };
        self.detach(&conn, &why);
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerPool {
    type AttachStream = BoxStream<'static, Result<SchedulerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the scheduler is shutting down".into()).into());
        }
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(WorkerMessage {
                message: Some(FromWorker::Register(r)),
            }) => r,
            _ => return Err(Error::invalid("a worker must send Register first").into()),
        };
        if register.worker_name.is_empty() {
            return Err(Error::invalid("Register.worker_name is empty").into());
        }
        let heartbeat = match register.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        let name = &register.worker_name;
        let executors = executor_infos(name, &register.executors, "")?;
        let shapes = executor_infos(name, &register.shapes, "shape:")?;
        let conn = uuid::Uuid::new_v4().to_string();
        let (outbox, rx) = mpsc::channel(256);
        {
            let mut state = self.inner.state.lock();
            if state
                .connections
                .values()
                .any(|c| c.worker == register.worker_name)
            {
                tracing::warn!(worker = %register.worker_name, "refused a second connection under a live worker's name");
                return Err(Error::AlreadyExists(
                    format!(
                        "a worker named {:?} is already attached",
                        register.worker_name
                    )
                    .into(),
                )
                .into());
            }
            state.connections.insert(
                conn.clone(),
                Connection {
                    worker: register.worker_name.clone(),
                    outbox,
                    shapes,
                    demand: Vec::new(),
                },
            );
            state
                .executors
                .extend(executors.into_iter().map(|e| (e, conn.clone())));
        }
        tracing::info!(worker = %register.worker_name, executors = register.executors.len(), "worker attached");
        self.bump();
        tokio::spawn(self.clone().read_worker(conn, inbound, heartbeat));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        ))
    }
}

#[async_trait]
impl ExecutorPool for WorkerPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        self.inner
            .state
            .lock()
            .executors
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    fn changes(&self) -> Changes {
        self.inner.changes.subscribe()
    }

    fn potential(&self) -> Vec<ExecutorInfo> {
        let state = self.inner.state.lock();
        state
            .connections
            .values()
            .flat_map(|c| c.shapes.iter().cloned())
            .collect()
    }

    /// Sends each flexible worker the demand for its shapes, when it changed.
    fn demand(&self, queued: &[(String, usize)]) {
        let counts: HashMap<&str, usize> = queued.iter().map(|(id, n)| (id.as_str(), *n)).collect();
        let mut state = self.inner.state.lock();
        for connection in state.connections.values_mut() {
            if connection.shapes.is_empty() {
                continue;
            }
            let prefix = format!("{}/shape:", connection.worker);
            let demand: Vec<(String, u64)> = connection
                .shapes
                .iter()
                .map(|s| {
                    let id = s.id.strip_prefix(&prefix).unwrap_or(&s.id).to_string();
                    (id, counts.get(s.id.as_str()).copied().unwrap_or(0) as u64)
                })
                .collect();
            if demand == connection.demand {
                continue;
            }
            let message = Demand {
                shapes: demand
                    .iter()
                    .map(|(id, queued)| demand::Shape {
                        id: id.clone(),
                        queued: *queued,
                    })
                    .collect(),
            };
            let message = scheduler_message::Message::Demand(message);
            // Only remembered once sent: a full outbox is tried again on the next pass.
            if connection
                .outbox
                .try_send(Ok(SchedulerMessage {
                    message: Some(message),
                }))
                .is_ok()
            {
                connection.demand = demand;
            }
        }
    }

    async fn run(&self, executor: &str, job: Job, cancel: Cancel) -> Result<JobOutcome> {
        let (tx, mut rx) = oneshot::channel();
        let lease_id = job.lease_id.clone();
        let (outbox, conn, executor_id) = {
            let mut state = self.inner.state.lock();
            let gone = || JobOutcome::Refused(format!("executor {executor} is gone"));
            let Some((info, conn)) = state
                .executors
                .iter()
                .find(|(e, _)| e.id == executor)
                .cloned()
            else {
                return Ok(gone());
            };
            let Some(outbox) = state.connections.get(&conn).map(|c| c.outbox.clone()) else {
                return Ok(gone());
            };
            state.pending.insert(lease_id.clone(), (conn.clone(), tx));
            let local_id = info
                .id
                .strip_prefix(&format!("{}/", info.worker))
                .unwrap_or(&info.id)
                .to_string();
            (outbox, conn, local_id)
        };
        let _guard = PendingGuard {
            inner: &self.inner,
            lease_id: lease_id.clone(),
        };
        let lease = Lease {
            lease_id: lease_id.clone(),
            executor_id,
            instance_name: job.instance,
            action_digest: Some(job.action_digest.to_proto()),
            digest_function: job.action_digest.function().to_proto(),
            action: Some(job.action),
            command: Some(job.command),
            // 0 would mean "no timeout" to the worker: a timeout under 1 ms is 1 ms.
            timeout_ms: job.timeout.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            queued_at_unix_nanos: job
                .queued_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        };
        let send = |m| outbox.send(Ok(SchedulerMessage { message: Some(m) }));
        if send(scheduler_message::Message::Lease(lease))
            .await
            .is_err()
        {
            return Err(Error::Unavailable(
                format!("executor {executor}'s worker is gone").into(),
            ));
        }
        tokio::select! {
            r = &mut rx => return r.unwrap_or_else(|_| Err(Error::Unavailable("worker lost".into()))),
            () = cancel.cancelled() => {}
        }
        let _ = send(scheduler_message::Message::CancelLease(lease_id.clone())).await;
        let grace = self.inner.cancel_grace;
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Ok(JobOutcome::Cancelled),
            Err(_) => {
                self.detach(
                    &conn,
                    &format!("wedged: lease {lease_id} was not answered within {grace:?} of its cancellation"),
                );
                Ok(JobOutcome::Cancelled)
            }
        }
    }
}
