//! What the scheduler tells operators: metrics for each execution, its phase spans, failed
//! results kept in the CAS with a link in `ExecuteResponse.message`, the recent actions, and
//! the [`SchedulerStatus`] snapshot behind the status page, and the one encoding of status links
//! ([`action_path`], [`split_digest`], [`parse_digest`]).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prost::Message;
use remexec_core::metrics::{ExecutionOutcome, Metrics, Phase};
use remexec_core::reapi::{ExecuteResponse, RequestMetadata};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};
use serde::Serialize;

use crate::platform::Property;

/// How many finished actions the status page lists.
const RECENT: usize = 100;

/// The admin port's path of an action's page, `/action/HASH/SIZE?instance=I`, with
/// `&response=HASH/SIZE` naming the `ExecuteResponse` kept for a failure and
/// `&invocation=ID` the build it ran for: the one place the format is written. `action` and
/// `response` are digests as `hash/size` text (a [`Digest`]'s `Display`); the instance name is
/// percent-encoded; an invocation id that is not one ([`is_invocation_id`]) is left out. The
/// admin port reads it back with [`split_digest`].
///
/// ```
/// use remexec_scheduler::observe::{action_path, split_digest};
/// let path = action_path("ab12/3", "team a", Some("cd34/5"), Some("inv-1"));
/// assert_eq!(path, "/action/ab12/3?instance=team%20a&response=cd34/5&invocation=inv-1");
/// assert_eq!(split_digest("cd34/5"), Some(("cd34", "5")));
/// assert_eq!(action_path("ab12/3", "", None, Some("<x>")), "/action/ab12/3?instance=");
/// ```
pub fn action_path(
    action: &str,
    instance: &str,
    response: Option<&str>,
    invocation: Option<&str>,
) -> String {
    let instance =
        percent_encoding::utf8_percent_encode(instance, percent_encoding::NON_ALPHANUMERIC);
    let mut path = format!("/action/{action}?instance={instance}");
    if let Some(response) = response {
        path += &format!("&response={response}");
    }
    if let Some(id) = invocation.filter(|id| is_invocation_id(id)) {
        path += &format!("&invocation={id}");
    }
    path
}

/// Longest invocation id.
const MAX_INVOCATION_ID: usize = 128;

/// Whether `id` can name an invocation (Bazel's are UUIDs): up to 128 letters, digits or
/// `._:-`, at least one a letter or digit, so that it is safe in a path, a query and a page as
/// it is.
pub fn is_invocation_id(id: &str) -> bool {
    id.len() <= MAX_INVOCATION_ID
        && id.bytes().any(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The hash and size of a digest written as `hash/size` (as in [`action_path`]); `None` if it
/// has no `/`.
pub fn split_digest(text: &str) -> Option<(&str, &str)> {
    text.split_once('/')
}

/// A finished action, as the status page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ActionRecord {
    /// The instance name.
    pub instance: String,
    /// The action digest, `hash/size`.
    pub action: String,
    /// Bazel's mnemonic for the action, if the client sent one.
    pub mnemonic: String,
    /// The target it was built for, if the client said.
    pub target: String,
    /// The client's invocation id.
    pub tool_invocation_id: String,
    /// The executor it ran on, if it ran.
    pub executor: String,
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// The command's exit code, if it ran.
    pub exit_code: Option<i32>,
    /// Seconds since the epoch when it ended.
    pub finished_at: u64,
    /// Seconds spent in each phase the worker timed.
    pub phases: Vec<(Phase, f64)>,
    /// The digest, `hash/size`, of the `ExecuteResponse` kept in the CAS for a failure.
    pub response: Option<String>,
    /// CPU seconds (user and system) and peak memory in bytes, if its worker measured them.
    pub usage: Option<(f64, u64)>,
}

/// An action on an executor now.
#[derive(Clone, Debug, Serialize)]
pub struct RunningAction {
    /// The executor.
    pub executor: String,
    /// The instance name.
    pub instance: String,
    /// The action digest, `hash/size`.
    pub action: String,
    /// Bazel's mnemonic, if sent.
    pub mnemonic: String,
    /// The target, if sent.
    pub target: String,
    /// Seconds it has been running.
    pub running_secs: f64,
}

/// Queued actions of one platform.
#[derive(Clone, Debug, Serialize)]
pub struct QueuedPlatform {
    /// The platform, `name=value` pairs joined by commas (empty for none).
    pub platform: String,
    /// Actions waiting.
    pub actions: usize,
}

/// An executor and whether it is busy.
#[derive(Clone, Debug, Serialize)]
pub struct ExecutorStatus {
    /// The executor id.
    pub id: String,
    /// Its worker.
    pub worker: String,
    /// What it offers.
    pub properties: Vec<Property>,
    /// Whether it runs an action now.
    pub busy: bool,
}

/// A snapshot of the scheduler, for the status page and `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct SchedulerStatus {
    /// The executors, with their properties.
    pub executors: Vec<ExecutorStatus>,
    /// Queued actions, by platform.
    pub queued: Vec<QueuedPlatform>,
    /// Actions running now.
    pub running: Vec<RunningAction>,
    /// Finished actions, newest first.
    pub recent: Vec<ActionRecord>,
}

/// The label of a platform: its `name=value` pairs, joined by commas.
pub(crate) fn platform_label(platform: &[Property]) -> String {
    platform
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How a response ended.
pub(crate) fn outcome_of(response: &ExecuteResponse) -> ExecutionOutcome {
    let code = response
        .status
        .as_ref()
        .map_or(tonic::Code::Ok, |s| tonic::Code::from_i32(s.code));
    match code {
        tonic::Code::Ok if response.cached_result => ExecutionOutcome::Cached,
        tonic::Code::Ok => match &response.result {
            Some(r) if r.exit_code == 0 => ExecutionOutcome::Success,
            Some(_) => ExecutionOutcome::NonZeroExit,
            None => ExecutionOutcome::Error,
        },
        tonic::Code::DeadlineExceeded => ExecutionOutcome::TimedOut,
        tonic::Code::Cancelled => ExecutionOutcome::Cancelled,
        _ => ExecutionOutcome::Error,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an execution was, for [`Observer::finished`].
pub(crate) struct Finished<'a> {
    pub(crate) instance: &'a str,
    pub(crate) action: Digest,
    pub(crate) metadata: &'a RequestMetadata,
    pub(crate) span: &'a tracing::Span,
    pub(crate) executor: Option<&'a str>,
}

/// Called with each finished action (see [`crate::Scheduler::on_action_finished`]).
pub type ActionHook = Box<dyn Fn(&ActionRecord) + Send + Sync>;

/// The scheduler's observability state.
pub(crate) struct Observer {
    pub(crate) metrics: Metrics,
    status_url: Option<String>,
    pub(crate) hooks: parking_lot::RwLock<Vec<ActionHook>>,
    recent: Mutex<VecDeque<ActionRecord>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("status_url", &self.status_url)
            .field("hooks", &self.hooks.read().len())
            .finish_non_exhaustive()
    }
}

impl Observer {
    pub(crate) fn new(metrics: Metrics, status_url: Option<String>) -> Self {
        Self {
            metrics,
            status_url: status_url.map(|u| u.trim_end_matches('/').to_string()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            hooks: parking_lot::RwLock::new(Vec::new()),
        }
    }

    pub(crate) fn recent(&self) -> Vec<ActionRecord> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Records a finished execution: counts it, times its phases (metrics and spans), and for a
    /// failure keeps the response in `cas` and points `response.message` at it.
    pub(crate) async fn finished(
        &self,
        cas: &dyn BlobStore,
        done: Finished<'_>,
        response: &mut ExecuteResponse,
    ) {
        let outcome = outcome_of(response);
        self.metrics.execution(outcome);
        let meta = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref());
        let phases = meta.map(remexec_core::observe::phases).unwrap_or_default();
        let usage = meta.and_then(remexec_core::usage::ActionUsage::of);
        // Counted once, when it ran: a cache hit's result (which a client may have written
        // itself with UpdateActionResult) is not.
        if let Some(usage) = usage
            .as_ref()
            .filter(|_| outcome != ExecutionOutcome::Cached)
        {
            self.metrics.action_usage(usage);
        }
        for (phase, start, end) in &phases {
            let took = end.duration_since(*start).unwrap_or(Duration::ZERO);
            self.metrics.phase(*phase, took);
        }
        remexec_core::observe::phase_spans(
            done.span,
            done.metadata,
            done.action,
            outcome.as_str(),
            &phases,
        );
        let kept = match outcome.is_failure() && outcome != ExecutionOutcome::Cancelled {
            true => self.keep(cas, &done, response).await,
            false => None,
        };
        let record = ActionRecord {
            instance: done.instance.to_string(),
            action: done.action.to_string(),
            mnemonic: done.metadata.action_mnemonic.clone(),
            target: done.metadata.target_id.clone(),
            tool_invocation_id: done.metadata.tool_invocation_id.clone(),
            executor: done.executor.unwrap_or_default().to_string(),
            outcome,
            exit_code: response.result.as_ref().map(|r| r.exit_code),
            finished_at: unix_secs(SystemTime::now()),
            phases: phases
                .iter()
                .map(|(p, s, e)| (*p, e.duration_since(*s).map_or(0.0, |d| d.as_secs_f64())))
                .collect(),
            response: kept.map(|d| d.to_string()),
            usage: usage.filter(|u| u.measured()).map(|u| {
                let cpu = (u.user_cpu_micros + u.system_cpu_micros) as f64 / 1e6;
                (cpu, u.peak_memory_bytes)
            }),
        };
        for hook in self.hooks.read().iter() {
            hook(&record);
        }
        let mut recent = self.recent.lock();
        if recent.len() == RECENT {
            recent.pop_back();
        }
        recent.push_front(record);
    }

    /// Stores `response` in the CAS and appends where to see it to its message.
    async fn keep(
        &self,
        cas: &dyn BlobStore,
        done: &Finished<'_>,
        response: &mut ExecuteResponse,
    ) -> Option<Digest> {
        let bytes = bytes::Bytes::from(response.encode_to_vec());
        let digest = done.action.function().digest_of(&bytes);
        if let Err(e) = cas.put_bytes(done.instance, digest, bytes).await {
            tracing::warn!(action = %done.action, error = %e, "could not keep the failed response in the CAS");
            return None;
        }
        let link = match &self.status_url {
            Some(base) => format!(
                "{base}{}",
                action_path(
                    &done.action.to_string(),
                    done.instance,
                    Some(&digest.to_string()),
                    Some(&done.metadata.tool_invocation_id)
                )
            ),
            None => format!(
                "the ExecuteResponse is kept in the CAS as {digest}: remexec show action {} --response {digest}",
                done.action
            ),
        };
        let sep = if response.message.is_empty() {
            ""
        } else {
            "\n"
        };
        response.message = format!("{}{sep}remexec: {link}", response.message);
        Some(digest)
    }
}

/// `HASH/SIZE` of a SHA-256 digest (the digest function the status links use).
pub fn parse_digest(hash: &str, size: &str) -> Result<Digest> {
    Digest::parse(DigestFunction::Sha256, &format!("{hash}/{size}"))
        .or_else(|_| Digest::parse(DigestFunction::Blake3, &format!("{hash}/{size}")))
        .map_err(|e| Error::InvalidArgument(remexec_core::Message::caused_by("not a digest", e)))
}
