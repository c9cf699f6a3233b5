//! Running one lease: stage the inputs, run the command, collect the outputs, remove the action
//! directory and report. Every phase is bounded: staging by
//! [`WorkerConfig::input_fetch_timeout`](crate::WorkerConfig::input_fetch_timeout), the run by
//! the lease's timeout capped by `max_action_timeout`, the upload by `output_upload_timeout`.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::client::upload_open_file;
use remexec_core::fs::create_dirs_beneath;
use remexec_core::merkle::{resolve_output_path, resolve_working_directory};
use remexec_core::reapi::{ActionResult, Command, ExecutedActionMetadata};
use remexec_core::timestamps::timestamp;
use remexec_core::usage::ActionUsage;
use remexec_core::{Digest, DigestFunction, Error, Result};
use remexec_proto::worker::v1::{Lease, LeaseResult};
use tokio_util::sync::CancellationToken;

use crate::blocking::blocking;
use crate::isolation::{Exit, Spawn};
use crate::outputs::collect_outputs;
use crate::stage::stage_inputs;
use crate::worker::Worker;

/// Marks an executor busy for as long as it lives.
struct BusyGuard(
    Arc<parking_lot::Mutex<std::collections::HashMap<String, String>>>,
    String,
    Arc<tokio::sync::watch::Sender<()>>,
);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
        self.2.send_replace(());
    }
}

fn rpc_status(code: tonic::Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// Runs `work` for at most `limit`: `Ok(None)` if `cancel` fires first, `Unavailable` naming
/// the phase and its limit if the limit passes first (the scheduler retries elsewhere).
async fn phase<T>(
    name: &str,
    limit: Duration,
    cancel: &CancellationToken,
    work: impl Future<Output = Result<T>>,
) -> Result<Option<T>> {
    tokio::select! {
        done = tokio::time::timeout(limit, work) => match done {
            Ok(done) => done.map(Some),
            Err(_) => Err(Error::Unavailable(format!(
                "{name} did not finish within the worker's {limit:?} limit"
            ).into())),
        },
        () = cancel.cancelled() => Ok(None),
    }
}

/// The encoded size of `result` inside the `WorkerMessage` that carries it (field 4).
fn message_len(result: &LeaseResult) -> usize {
    let inner = result.encoded_len();
    1 + prost::length_delimiter_len(inner) + inner
}

/// `result`, or if it is too large to send, a result carrying only a `RESOURCE_EXHAUSTED`
/// status: only this action fails, never the stream.
fn bound_size(result: LeaseResult, max: usize) -> LeaseResult {
    let len = message_len(&result);
    if len <= max {
        return result;
    }
    tracing::warn!(lease = %result.lease_id, len, max, "lease result too large to send");
    let error = Error::ResourceExhausted(
        format!(
            "the action's result is {len} bytes encoded; the worker protocol's limit is {max} bytes"
        )
        .into(),
    );
    LeaseResult {
        lease_id: result.lease_id,
        result: None,
        status: Some(error.to_rpc_status()),
    }
}

/// The result status for how the command ended, setting the exit code; `None` if cancelled.
fn exit_status(exit: Exit, result: &mut ActionResult) -> Option<RpcStatus> {
    match exit {
        Exit::Exited(code) => {
            result.exit_code = code;
            Some(rpc_status(tonic::Code::Ok, ""))
        }
        Exit::TimedOut => {
            result.exit_code = -1;
            Some(rpc_status(
                tonic::Code::DeadlineExceeded,
                "action timed out",
            ))
        }
        Exit::Cancelled => None,
    }
}

/// When each phase of a lease started and ended.
struct Times {
    queued: SystemTime,
    worker_start: SystemTime,
    fetch_start: SystemTime,
    fetch_done: SystemTime,
    exec_start: SystemTime,
    exec_done: SystemTime,
    upload_done: SystemTime,
}

impl Times {
    fn metadata(&self, worker: &str) -> ExecutedActionMetadata {
        ExecutedActionMetadata {
            worker: worker.to_string(),
            queued_timestamp: Some(timestamp(self.queued)),
            worker_start_timestamp: Some(timestamp(self.worker_start)),
            input_fetch_start_timestamp: Some(timestamp(self.fetch_start)),
            input_fetch_completed_timestamp: Some(timestamp(self.fetch_done)),
            execution_start_timestamp: Some(timestamp(self.exec_start)),
            execution_completed_timestamp: Some(timestamp(self.exec_done)),
            output_upload_start_timestamp: Some(timestamp(self.exec_done)),
            output_upload_completed_timestamp: Some(timestamp(self.upload_done)),
            worker_completed_timestamp: Some(timestamp(SystemTime::now())),
            ..Default::default()
        }
    }
}

/// What `execute_in` reports: the result and its status, or `None` if cancelled.
type Outcome = Result<Option<(ActionResult, RpcStatus)>>;

impl Worker {
    /// Runs one lease to its end and reports how it went. Never fails: infrastructure errors
    /// become the result's status.
    ///
    /// A lease for an unknown executor, for one that is already running a lease, or for one a
    /// flexible worker does not offer now, is refused with `ABORTED` (the scheduler re-queues it
    /// without counting an attempt): a worker never runs more actions than it has executors. A phase that overruns its limit ends the lease `UNAVAILABLE` too; a
    /// result larger than `max_message_size` is replaced by `RESOURCE_EXHAUSTED`.
    pub async fn execute(&self, lease: Lease, cancel: CancellationToken) -> LeaseResult {
        let lease_id = lease.lease_id.clone();
        let refuse = |status: RpcStatus| LeaseResult {
            lease_id: lease_id.clone(),
            result: None,
            status: Some(status),
        };
        if let Err(e) = remexec_core::merkle::validate_name(&lease_id) {
            return refuse(
                Error::InvalidArgument(remexec_core::Message::caused_by("lease id", e))
                    .to_rpc_status(),
            );
        }
        if !self
            .config
            .executors
            .iter()
            .any(|e| e.id == lease.executor_id)
        {
            // ABORTED: never started, re-queued without counting an attempt.
            return refuse(rpc_status(
                tonic::Code::Aborted,
                format!(
                    "worker {} has no executor {:?}",
                    self.config.name, lease.executor_id
                ),
            ));
        }
        {
            // Checked and marked busy under the offer's lock, so that the offer never switches
            // shapes between the two.
            let mut offer = self.offer.as_ref().map(|o| o.lock());
            if offer
                .as_ref()
                .is_some_and(|o| !o.is_offered(&lease.executor_id))
            {
                // ABORTED: refused before it started, re-queued without counting an attempt.
                return refuse(rpc_status(
                    tonic::Code::Aborted,
                    format!(
                        "executor {:?} of worker {} is not offered now (flexible worker)",
                        lease.executor_id, self.config.name
                    ),
                ));
            }
            let mut busy = self.busy.lock();
            if busy.contains_key(&lease.executor_id) {
                return refuse(rpc_status(
                    tonic::Code::Aborted,
                    format!(
                        "executor {:?} of worker {} is busy",
                        lease.executor_id, self.config.name
                    ),
                ));
            }
            busy.insert(lease.executor_id.clone(), lease.lease_id.clone());
            drop(busy);
            if let Some(offer) = &mut offer {
                offer.started(&lease.executor_id);
            }
        }
        let _busy = BusyGuard(
            Arc::clone(&self.busy),
            lease.executor_id.clone(),
            Arc::clone(&self.busy_changed),
        );
        self.busy_changed.send_replace(());
        let dir = self.action_dir(&lease).await;
        let outcome = self.execute_in(&dir, lease, &cancel).await;
        // Processes are gone (the isolation's contract), so nothing writes here any more.
        let removed = dir.clone();
        let removal = blocking(move || {
            remexec_core::fs::remove_tree(&removed)
                .map_err(|e| Error::io(format!("removing {}", removed.display()), e))
        });
        if let Err(e) = removal.await {
            tracing::warn!(error = %e, "could not remove the action directory");
        }
        let result = match outcome {
            Ok(Some((result, status))) => LeaseResult {
                lease_id,
                result: Some(result),
                status: Some(status),
            },
            Ok(None) => refuse(rpc_status(tonic::Code::Cancelled, "cancelled")),
            Err(e) => {
                tracing::warn!(lease = %lease_id, error = %e, "lease failed");
                refuse(e.to_rpc_status())
            }
        };
        bound_size(result, self.config.max_message_size)
    }

    /// Where `lease` runs: a directory the isolation made a sandbox ahead for, or
    /// `actions/LEASE`.
    async fn action_dir(&self, lease: &Lease) -> PathBuf {
        let platform = match (&lease.action, &lease.command) {
            (Some(action), Some(command)) => remexec_core::platform::properties(action, command),
            _ => Vec::new(),
        };
        let dirs = self.config.work_dir.join(crate::ahead::DIR);
        let ahead = crate::Ahead {
            executor: &lease.executor_id,
            dirs: &dirs,
            platform: &platform,
        };
        match self.isolation.ready(ahead).await {
            Some(dir) => dir,
            None => self.config.work_dir.join("actions").join(&lease.lease_id),
        }
    }

    async fn execute_in(&self, dir: &Path, lease: Lease, cancel: &CancellationToken) -> Outcome {
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
        let created = root.clone();
        blocking(move || {
            std::fs::create_dir_all(&created)
                .map_err(|e| Error::io(format!("creating {}", created.display()), e))
        })
        .await?;
        let fetch_start = SystemTime::now();
        // Staging and uploading stop as soon as the lease is cancelled, so that the executor is
        // really free when the scheduler is told it is.
        let staging = stage_inputs(
            self.cas.as_ref(),
            &self.cache,
            instance,
            root_digest,
            &root,
            self.config.tree_limits,
        );
        let limit = self.config.input_fetch_timeout;
        let Some(staged) = phase("input fetch (staging)", limit, cancel, staging).await? else {
            return Ok(None);
        };
        let fetch_done = SystemTime::now();
        let input_root = root.clone();
        let (dir_owned, command) = (dir.to_path_buf(), Arc::new(command));
        let prepared = Arc::clone(&command);
        let (workdir, stdout, stderr) =
            blocking(move || prepare_run(&dir_owned, &root, &prepared)).await?;
        let clone = |f: &File| f.try_clone().map_err(|e| Error::io("cloning a handle", e));
        let spawn = Spawn {
            args: command.arguments.clone(),
            env: environment(&command),
            cwd: workdir.clone(),
            input_root: input_root.clone(),
            platform: remexec_core::platform::properties(&action, &command),
            executor: lease.executor_id.clone(),
            stdout: clone(&stdout)?,
            stderr: clone(&stderr)?,
            timeout: Some(self.config.action_timeout(lease.timeout_ms)),
        };
        let exec_start = SystemTime::now();
        let ended = self.isolation.run(spawn, cancel.clone()).await?;
        let exec_done = SystemTime::now();
        let mut result = ActionResult::default();
        let Some(status) = exit_status(ended.exit, &mut result) else {
            return Ok(None);
        };
        let upload = self.upload(
            (instance, function),
            &command,
            &input_root,
            (&stdout, &stderr),
            &mut result,
        );
        let limit = self.config.output_upload_timeout;
        if phase("output upload", limit, cancel, upload)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let times = Times {
            queued: UNIX_EPOCH + Duration::from_nanos(lease.queued_at_unix_nanos.max(0) as u64),
            worker_start,
            fetch_start,
            fetch_done,
            exec_start,
            exec_done,
            upload_done: SystemTime::now(),
        };
        let mut metadata = times.metadata(&self.config.name);
        let usage = ActionUsage {
            staging: Some(staged),
            ..ended.usage
        };
        usage.attach(&mut metadata);
        result.execution_metadata = Some(metadata);
        Ok(Some((result, status)))
    }
}

impl Worker {
    /// Uploads the outputs of `command` (run in `input_root`) and its standard output and error
    /// into `result`.
    async fn upload(
        &self,
        (instance, function): (&str, DigestFunction),
        command: &Command,
        input_root: &Path,
        (stdout, stderr): (&File, &File),
        result: &mut ActionResult,
    ) -> Result<()> {
        let cas = self.cas.as_ref();
        collect_outputs(cas, instance, function, command, input_root, result).await?;
        result.stdout_digest = Some(
            upload_open_file(cas, instance, function, stdout)
                .await?
                .to_proto(),
        );
        result.stderr_digest = Some(
            upload_open_file(cas, instance, function, stderr)
                .await?
                .to_proto(),
        );
        Ok(())
    }
}

/// The command's environment, in order.
fn environment(command: &Command) -> Vec<(String, String)> {
    command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect()
}

/// Creates the working directory, the parent of every declared output and v2.0 output
/// directories themselves, never through a symlink (an input symlink cannot make the worker
/// create anything outside the input root: that is `FailedPrecondition`), and the unlinked
/// files that capture stdout and stderr. Blocks.
#[allow(deprecated)] // output_files and output_directories are REAPI v2.0's
fn prepare_run(dir: &Path, root: &Path, command: &Command) -> Result<(PathBuf, File, File)> {
    let wd = resolve_working_directory(&command.working_directory)?;
    let mkdirs = |rel: &str| {
        create_dirs_beneath(root, rel).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::FailedPrecondition(
                format!("cannot create the directory {rel:?} below the input root: {m}").into(),
            ),
            e => e,
        })
    };
    let workdir = mkdirs(&wd)?;
    for path in command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
    {
        if let Some((parent, _)) = resolve_output_path(&wd, path)?.rsplit_once('/') {
            mkdirs(parent)?;
        }
    }
    for path in &command.output_directories {
        mkdirs(&resolve_output_path(&wd, path)?)?;
    }
    let capture = || {
        tempfile::tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))
    };
    Ok((workdir, capture()?, capture()?))
}
