//! [`Worker`]: runs leases from a scheduler on its executors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use remexec_core::apis::google::protobuf::Timestamp;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::reapi::{ActionResult, ExecutedActionMetadata};
use remexec_core::{BlobStore, Digest, DigestFunction, Error, Result};
use remexec_proto::worker::v1::scheduler_message::Message as FromScheduler;
use remexec_proto::worker::v1::worker_message::Message as ToScheduler;
use remexec_proto::worker::v1::worker_service_client::WorkerServiceClient;
use remexec_proto::worker::v1::{
    Executor, Heartbeat, Lease, LeaseResult, Property, Register, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::file_cache::FileCache;
use crate::isolation::{Exit, Isolation, Spawn};
use crate::outputs::{collect_outputs, upload_file};
use crate::stage::stage_inputs;

/// One executor's id and advertised properties.
#[derive(Clone, Debug)]
pub struct ExecutorSpec {
    /// Unique within the worker.
    pub id: String,
    /// Advertised `name=value` properties.
    pub properties: Vec<(String, String)>,
}

/// Worker settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Unique worker name, reported in `ExecutedActionMetadata.worker`.
    pub name: String,
    /// The executors; each runs one action at a time.
    pub executors: Vec<ExecutorSpec>,
    /// Directory for the file cache and action directories.
    pub work_dir: PathBuf,
    /// Byte budget of the input file cache.
    pub cache_budget: u64,
    /// How often to send heartbeats.
    pub heartbeat: Duration,
}

impl WorkerConfig {
    /// `executors` identical executors offering `properties`.
    pub fn new(
        name: impl Into<String>,
        work_dir: PathBuf,
        executors: usize,
        properties: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: name.into(),
            executors: (0..executors)
                .map(|i| ExecutorSpec {
                    id: i.to_string(),
                    properties: properties.clone(),
                })
                .collect(),
            work_dir,
            cache_budget: 10 << 30,
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// A worker: stages inputs, runs commands under an [`Isolation`], uploads outputs.
#[derive(Debug, Clone)]
pub struct Worker {
    config: Arc<WorkerConfig>,
    cas: Arc<dyn BlobStore>,
    isolation: Arc<dyn Isolation>,
    cache: Arc<FileCache>,
    /// Executors running a lease now: one lease per executor, whoever sends it.
    busy: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Marks an executor busy for as long as it lives.
struct BusyGuard(Arc<Mutex<std::collections::HashSet<String>>>, String);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn rpc_status(code: tonic::Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

impl Worker {
    /// A worker reading and writing blobs through `cas`.
    pub fn new(
        config: WorkerConfig,
        cas: Arc<dyn BlobStore>,
        isolation: Arc<dyn Isolation>,
    ) -> Result<Self> {
        let cache = FileCache::open(&config.work_dir.join("cache"), config.cache_budget)?;
        let actions = config.work_dir.join("actions");
        if actions.exists() {
            std::fs::remove_dir_all(&actions)
                .map_err(|e| Error::io(format!("clearing {}", actions.display()), e))?;
        }
        std::fs::create_dir_all(&actions)
            .map_err(|e| Error::io(format!("creating {}", actions.display()), e))?;
        Ok(Self {
            config: Arc::new(config),
            cas,
            isolation,
            cache,
            busy: Arc::default(),
        })
    }

    /// Attaches to the scheduler behind `channel` and serves leases, reconnecting with backoff
    /// whenever the connection drops. Returns only when `stop` fires.
    pub async fn run(&self, channel: Channel, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            match self.serve(channel.clone(), stop.clone()).await {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => {
                    tracing::warn!(worker = %self.config.name, "scheduler closed the connection")
                }
                Err(e) => {
                    tracing::warn!(worker = %self.config.name, error = %e, "scheduler connection failed")
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {},
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One attach session: registers, then runs leases until the stream ends or `stop` fires.
    /// Leases still running when it ends are cancelled (the scheduler re-queues them).
    pub async fn serve(&self, channel: Channel, stop: CancellationToken) -> Result<()> {
        let (tx, rx) = mpsc::channel::<WorkerMessage>(256);
        let executors = self
            .config
            .executors
            .iter()
            .map(|e| Executor {
                id: e.id.clone(),
                properties: e
                    .properties
                    .iter()
                    .map(|(n, v)| Property {
                        name: n.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            })
            .collect();
        let register = Register {
            worker_name: self.config.name.clone(),
            executors,
            heartbeat_interval_ms: self.config.heartbeat.as_millis() as u64,
        };
        let send = |m| WorkerMessage { message: Some(m) };
        tx.send(send(ToScheduler::Register(register)))
            .await
            .map_err(|_| Error::Internal("outbox closed".into()))?;
        let mut inbound = WorkerServiceClient::new(channel)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(Error::from)?
            .into_inner();
        tracing::info!(worker = %self.config.name, "attached to scheduler");
        let running: Arc<Mutex<HashMap<String, CancellationToken>>> = Arc::default();
        let session = stop.child_token();
        // However this function ends (even dropped), the session's leases and heartbeats stop.
        let _session_guard = session.clone().drop_guard();
        let heartbeat = {
            let (tx, session, every) = (tx.clone(), session.clone(), self.config.heartbeat);
            tokio::spawn(async move {
                while tokio::time::timeout(every, session.cancelled())
                    .await
                    .is_err()
                {
                    if tx
                        .send(send(ToScheduler::Heartbeat(Heartbeat {})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let result = loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                () = session.cancelled() => break Ok(()),
            };
            match next {
                Ok(Some(msg)) => match msg.message {
                    Some(FromScheduler::Lease(lease)) => {
                        let cancel = session.child_token();
                        running
                            .lock()
                            .insert(lease.lease_id.clone(), cancel.clone());
                        let (this, tx, running) = (self.clone(), tx.clone(), Arc::clone(&running));
                        tokio::spawn(async move {
                            let id = lease.lease_id.clone();
                            let result = this.execute(lease, cancel).await;
                            running.lock().remove(&id);
                            let _ = tx.send(send(ToScheduler::Result(result))).await;
                        });
                    }
                    Some(FromScheduler::CancelLease(id)) => {
                        if let Some(token) = running.lock().get(&id) {
                            token.cancel();
                        }
                    }
                    None => {}
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(Error::from(status)),
            }
        };
        session.cancel();
        heartbeat.abort();
        drop(tx);
        result
    }

    /// Runs one lease to its end and reports how it went. Never fails: infrastructure errors
    /// become the result's status.
    ///
    /// A lease for an unknown executor, or for one that is already running a lease, is refused
    /// with `UNAVAILABLE` (the scheduler re-queues it): a worker never runs more actions than it
    /// has executors.
    pub async fn execute(&self, lease: Lease, cancel: CancellationToken) -> LeaseResult {
        let lease_id = lease.lease_id.clone();
        let refuse = |why: String| LeaseResult {
            lease_id: lease_id.clone(),
            result: None,
            status: Some(rpc_status(tonic::Code::Unavailable, why)),
        };
        if !self
            .config
            .executors
            .iter()
            .any(|e| e.id == lease.executor_id)
        {
            return refuse(format!(
                "worker {} has no executor {:?}",
                self.config.name, lease.executor_id
            ));
        }
        if !self.busy.lock().insert(lease.executor_id.clone()) {
            return refuse(format!(
                "executor {:?} of worker {} is busy",
                lease.executor_id, self.config.name
            ));
        }
        let _busy = BusyGuard(Arc::clone(&self.busy), lease.executor_id.clone());
        let dir = self.config.work_dir.join("actions").join(&lease_id);
        let outcome = self.execute_in(&dir, lease, cancel).await;
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the action directory");
        }
        match outcome {
            Ok((result, status)) => LeaseResult {
                lease_id,
                result: Some(result),
                status: Some(status),
            },
            Err(e) => {
                tracing::warn!(lease = %lease_id, error = %e, "lease failed");
                LeaseResult {
                    lease_id,
                    result: None,
                    status: Some(e.to_rpc_status()),
                }
            }
        }
    }

    async fn execute_in(
        &self,
        dir: &std::path::Path,
        lease: Lease,
        cancel: CancellationToken,
    ) -> Result<(ActionResult, RpcStatus)> {
        let worker_start = SystemTime::now();
        let function = DigestFunction::from_proto(lease.digest_function)?;
        let action = lease
            .action
            .ok_or_else(|| Error::invalid("lease without an action"))?;
        let command = lease
            .command
            .ok_or_else(|| Error::invalid("lease without a command"))?;
        let root_digest = Digest::from_field(
            function,
            action.input_root_digest.as_ref(),
            "input_root_digest",
        )?;
        let instance = lease.instance_name.as_str();
        let root = dir.join("root");
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let fetch_start = SystemTime::now();
        // Staging and uploading stop as soon as the lease is cancelled, so that the executor is
        // really free when the scheduler is told it is.
        let cancelled = || {
            Ok((
                ActionResult::default(),
                rpc_status(tonic::Code::Cancelled, "cancelled"),
            ))
        };
        tokio::select! {
            staged = stage_inputs(self.cas.as_ref(), &self.cache, instance, root_digest, &root) => staged?,
            () = cancel.cancelled() => return cancelled(),
        }
        let fetch_done = SystemTime::now();
        let workdir = root.join(&command.working_directory);
        create_output_parents(&command, &workdir)?;
        let spawn = Spawn {
            args: command.arguments.clone(),
            env: command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            cwd: workdir.clone(),
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            timeout: (lease.timeout_ms > 0).then(|| Duration::from_millis(lease.timeout_ms)),
        };
        let exec_start = SystemTime::now();
        let exit = self.isolation.run(spawn.clone(), cancel.clone()).await?;
        let exec_done = SystemTime::now();
        let mut result = ActionResult::default();
        let status = match exit {
            Exit::Exited(code) => {
                result.exit_code = code;
                rpc_status(tonic::Code::Ok, "")
            }
            Exit::TimedOut => {
                result.exit_code = -1;
                rpc_status(tonic::Code::DeadlineExceeded, "action timed out")
            }
            Exit::Cancelled => {
                return Ok((result, rpc_status(tonic::Code::Cancelled, "cancelled")));
            }
        };
        let upload = async {
            collect_outputs(
                self.cas.as_ref(),
                instance,
                function,
                &command,
                &workdir,
                &mut result,
            )
            .await?;
            result.stdout_digest = Some(
                upload_file(self.cas.as_ref(), instance, function, &spawn.stdout)
                    .await?
                    .to_proto(),
            );
            result.stderr_digest = Some(
                upload_file(self.cas.as_ref(), instance, function, &spawn.stderr)
                    .await?
                    .to_proto(),
            );
            Ok::<(), Error>(())
        };
        tokio::select! {
            uploaded = upload => uploaded?,
            () = cancel.cancelled() => return cancelled(),
        }
        let upload_done = SystemTime::now();
        let queued = UNIX_EPOCH + Duration::from_nanos(lease.queued_at_unix_nanos.max(0) as u64);
        result.execution_metadata = Some(ExecutedActionMetadata {
            worker: self.config.name.clone(),
            queued_timestamp: Some(timestamp(queued)),
            worker_start_timestamp: Some(timestamp(worker_start)),
            input_fetch_start_timestamp: Some(timestamp(fetch_start)),
            input_fetch_completed_timestamp: Some(timestamp(fetch_done)),
            execution_start_timestamp: Some(timestamp(exec_start)),
            execution_completed_timestamp: Some(timestamp(exec_done)),
            output_upload_start_timestamp: Some(timestamp(exec_done)),
            output_upload_completed_timestamp: Some(timestamp(upload_done)),
            worker_completed_timestamp: Some(timestamp(SystemTime::now())),
            ..Default::default()
        });
        Ok((result, status))
    }
}

/// Creates the parent directory of every declared output, and v2.0 output directories
/// themselves, so commands can write into them.
#[allow(deprecated)] // output_files and output_directories are REAPI v2.0's
fn create_output_parents(
    command: &remexec_core::reapi::Command,
    workdir: &std::path::Path,
) -> Result<()> {
    let mkdir = |p: &std::path::Path| {
        std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
    };
    mkdir(workdir)?;
    for path in command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
    {
        if let Some(parent) = workdir.join(path).parent() {
            mkdir(parent)?;
        }
    }
    for dir in &command.output_directories {
        mkdir(&workdir.join(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProcessIsolation;
    use remexec_core::reapi::{Action, Command, Directory};
    use remexec_core::{ChunkStream, ReadRange};

    /// A CAS that holds nothing: enough for actions with an empty input root and empty output.
    #[derive(Debug)]
    struct EmptyCas;

    #[async_trait::async_trait]
    impl BlobStore for EmptyCas {
        async fn find_missing(&self, _: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
            Ok(digests.to_vec())
        }
        async fn put(&self, _: &str, _: Digest, _: ChunkStream) -> Result<()> {
            Err(Error::Unimplemented("read-only".into()))
        }
        async fn get(&self, _: &str, _: Digest, _: ReadRange) -> Result<Option<ChunkStream>> {
            Ok(None)
        }
    }

    fn lease(id: &str, executor: &str) -> Lease {
        let f = DigestFunction::Sha256;
        let (root, _) = remexec_core::merkle::encode_message(f, &Directory::default());
        Lease {
            lease_id: id.into(),
            executor_id: executor.into(),
            action_digest: Some(f.digest_of(id.as_bytes()).to_proto()),
            digest_function: f.to_proto(),
            action: Some(Action {
                input_root_digest: Some(root.to_proto()),
                ..Default::default()
            }),
            command: Some(Command {
                arguments: vec!["/bin/sh".into(), "-c".into(), "sleep 0.5".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn never_runs_two_leases_on_one_executor() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(
            WorkerConfig::new("w", dir.path().to_path_buf(), 2, vec![]),
            Arc::new(EmptyCas),
            Arc::new(ProcessIsolation),
        )
        .unwrap();
        let code = |r: &LeaseResult| r.status.as_ref().map_or(0, |s| s.code);
        let (a, b, c, d) = tokio::join!(
            worker.execute(lease("a", "0"), CancellationToken::new()),
            worker.execute(lease("b", "0"), CancellationToken::new()),
            worker.execute(lease("c", "1"), CancellationToken::new()),
            worker.execute(lease("d", "7"), CancellationToken::new()),
        );
        let codes = [code(&a), code(&b), code(&c), code(&d)];
        // Exactly one of the two leases for executor 0 ran; executor 1 ran; 7 does not exist.
        assert_eq!(
            codes
                .iter()
                .filter(|c| **c == tonic::Code::Unavailable as i32)
                .count(),
            2,
            "{codes:?}"
        );
        assert_eq!(codes[2], 0);
        assert_eq!(codes[3], tonic::Code::Unavailable as i32);
        assert!(a.result.is_some() || b.result.is_some());
        // Once finished, executor 0 takes a lease again.
        assert_eq!(
            code(
                &worker
                    .execute(lease("e", "0"), CancellationToken::new())
                    .await
            ),
            0
        );
    }
}
