//! Operations: the messages clients see, one [`Op`] per Execute call, the [`Execution`] that
//! merged callers share, and [`Retained`], the bounded memory of finished operations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use parking_lot::Mutex;
use prost::Message;
use remexec_core::apis::google::longrunning::{Operation, operation};
use remexec_core::apis::google::protobuf::Any;
use remexec_core::apis::google::rpc::Status as RpcStatus;
use remexec_core::reapi::{ExecuteOperationMetadata, ExecuteResponse, execution_stage};
use remexec_core::{Digest, DigestFunction};
use tokio::sync::watch;

use crate::SchedulerConfig;
use crate::platform::Property;
use crate::pool::{Cancel, Job};

pub(crate) fn any<M: Message>(type_name: &str, message: &M) -> Any {
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

/// The operation message named `name` for `digest` at `stage`; done if `response` is given.
pub(crate) fn operation(
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

/// An action outcome's status (the documented exception to choosing codes in `Error::code`).
pub(crate) fn status(code: tonic::Code, message: impl Into<String>) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// A done response carrying only `status`.
pub(crate) fn failed(code: tonic::Code, message: impl Into<String>) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(status(code, message)),
        ..Default::default()
    }
}

/// FAILED_PRECONDITION with one `MISSING` violation per blob, which makes clients re-upload.
pub(crate) fn missing_status(missing: &[Digest]) -> RpcStatus {
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

/// One caller's operation: its own name and channel, even when it shares an [`Execution`].
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) name: String,
    pub(crate) tx: watch::Sender<Operation>,
}

impl Op {
    /// A new operation showing `initial`, and the caller's receiver.
    pub(crate) fn new(initial: Operation) -> (Arc<Self>, watch::Receiver<Operation>) {
        let (tx, rx) = watch::channel(initial);
        let name = rx.borrow().name.clone();
        (Arc::new(Self { name, tx }), rx)
    }

    /// Publishes a stage, or the final state if `response` is given.
    pub(crate) fn publish(
        &self,
        digest: Digest,
        stage: execution_stage::Value,
        response: Option<ExecuteResponse>,
    ) -> Operation {
        let op = operation(&self.name, digest, stage, response);
        self.tx.send_replace(op.clone());
        op
    }
}

/// The mutable part of an [`Execution`], changed only under the scheduler's state lock.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The callers still waiting; each gets every stage change under its own name.
    pub(crate) waiters: Vec<Arc<Op>>,
    /// The stage last published; a joining caller starts there.
    pub(crate) stage: execution_stage::Value,
    /// The queue position while queued.
    pub(crate) queued: Option<crate::queue::Position>,
    /// The requirements it is queued with: the action's own, or larger ones learned sizing
    /// chose (see `sizing`).
    pub(crate) class: Vec<Property>,
    /// Completed or abandoned: nobody may join any more.
    pub(crate) over: bool,
}

/// One run (with retries) of an action, shared by every caller merged into it.
#[derive(Debug)]
pub(crate) struct Execution {
    /// Instance name and action digest.
    pub(crate) key: (String, Digest),
    pub(crate) job: Job,
    /// Its shape, for learned sizing.
    pub(crate) shape: String,
    /// The `memory-mb` learned sizing asked for (0: none), and that of the executor whose
    /// memory kill made it run again (0: none).
    pub(crate) sized_mb: u64,
    pub(crate) memory_retry_from_mb: std::sync::atomic::AtomicU64,
    /// The platform's metric label (what the action asks for, not what sizing made of it).
    pub(crate) platform: String,
    /// What the first caller said of the action.
    pub(crate) metadata: remexec_core::reapi::RequestMetadata,
    /// Whose turn it is in the queue: the first caller's invocation.
    pub(crate) invocation: String,
    /// The first caller's Execute span: the parent of the phase spans.
    pub(crate) span: tracing::Span,
    pub(crate) priority: i32,
    pub(crate) do_not_cache: bool,
    pub(crate) attempts: AtomicU32,
    /// Times an executor refused the job before starting it.
    pub(crate) refusals: AtomicU32,
    /// Fires when no caller is left waiting.
    pub(crate) cancel: Cancel,
    pub(crate) shared: Mutex<Shared>,
}

impl Execution {
    /// Sets the stage and publishes it to every waiter.
    pub(crate) fn fan_out(&self, stage: execution_stage::Value) {
        let mut shared = self.shared.lock();
        shared.stage = stage;
        for op in &shared.waiters {
            op.publish(self.key.1, stage, None);
        }
    }
}

/// What is remembered of a finished operation.
#[derive(Debug, Clone)]
pub(crate) enum Finished {
    /// The final message.
    Done(Operation),
    /// Answered from the Action Cache: only the key, re-read on lookup.
    Cached { instance: String, digest: Digest },
}

/// Fixed cost charged per remembered operation, for the map entries around it.
const ENTRY_OVERHEAD: usize = 128;

/// Finished operations, bounded by count, bytes and age; the oldest go first.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    entries: HashMap<String, (Finished, usize)>,
    order: VecDeque<(String, Instant)>,
    bytes: usize,
}

impl Retained {
    /// Remembers `finished` under `name`, then evicts beyond the budgets.
    pub(crate) fn insert(&mut self, name: String, finished: Finished, config: &SchedulerConfig) {
        let cost = ENTRY_OVERHEAD
            + name.len()
            + match &finished {
                Finished::Done(op) => op.encoded_len(),
                Finished::Cached { instance, .. } => instance.len() + 64,
            };
        if let Some((_, old)) = self.entries.insert(name.clone(), (finished, cost)) {
            self.bytes -= old;
        }
        self.bytes += cost;
        self.order.push_back((name, Instant::now()));
        self.evict(config);
    }

    /// The finished operation named `name`, if still remembered.
    pub(crate) fn lookup(&self, name: &str) -> Option<&Finished> {
        self.entries.get(name).map(|(f, _)| f)
    }

    /// Forgets the oldest operations while any budget is exceeded.
    pub(crate) fn evict(&mut self, config: &SchedulerConfig) {
        while let Some((name, at)) = self.order.front() {
            let over = self.entries.len() > config.retained_operations
                || self.bytes > config.retained_bytes
                || at.elapsed() >= config.retention;
            if !over {
                break;
            }
            if let Some((_, cost)) = self.entries.remove(name) {
                self.bytes -= cost;
            }
            self.order.pop_front();
        }
    }

    /// Number of operations remembered.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
