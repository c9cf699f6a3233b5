//! [`Metrics`]: the Prometheus figures every remexec part records into, and their text
//! exposition for a `/metrics` endpoint.
//!
//! One [`Metrics`] is shared (it is cheap to clone) by the RPC layer
//! ([`ObserveLayer`](crate::observe::ObserveLayer)), the stores, the cache services and the
//! scheduler. Figures that are states rather than events (store usage, queue depth, workers)
//! are read when scraped, by the closures given to [`Metrics::on_scrape`]. The names and a
//! PromQL example for each are in `docs/metrics.md`.
//!
//! ```
//! use std::time::Duration;
//!
//! use remexec_core::metrics::{ExecutionOutcome, Metrics};
//!
//! let metrics = Metrics::new();
//! metrics.execution(ExecutionOutcome::Success);
//! metrics.rpc("/build.bazel.remote.execution.v2.Execution/Execute", tonic::Code::Ok, Duration::from_millis(3));
//! let text = metrics.encode();
//! assert!(text.contains(r#"remexec_executions_total{outcome="success"} 1"#));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How an execution ended, as counted by `remexec_executions_total{outcome}` and shown on the
/// status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecutionOutcome {
    /// The command ran and exited 0.
    Success,
    /// The command ran and exited with another code.
    NonZeroExit,
    /// The command overran its timeout (or its lease) and was killed.
    TimedOut,
    /// Nobody waited any more, or a client cancelled it.
    Cancelled,
    /// Answered from the Action Cache by Execute, without running.
    Cached,
    /// The action could not run: missing inputs, no matching executor, lost executors or
    /// another infrastructure failure.
    Error,
}

/// How a Remote Asset Fetch was answered (`remexec_asset_fetches_total`'s `result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssetFetch {
    /// From the asset index: fetched or pushed before.
    Index,
    /// Downloaded from an origin.
    Origin,
    /// Every origin failed; the response's status says how.
    Failed,
}

impl AssetFetch {
    /// The label value: `index`, `origin`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Index => "index",
            Self::Origin => "origin",
            Self::Failed => "failed",
        }
    }
}

impl ExecutionOutcome {
    /// The label value: `success`, `non_zero_exit`, `timed_out`, `cancelled`, `cached`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::NonZeroExit => "non_zero_exit",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Cached => "cached",
            Self::Error => "error",
        }
    }

    /// Whether a result worth keeping for inspection came of it: the action ran and did not
    /// succeed.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Success | Self::Cached)
    }
}

impl fmt::Display for ExecutionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase of an execution, timed by the worker (`ExecutedActionMetadata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// From entering the queue to a worker starting it.
    Queued,
    /// Staging the input tree.
    InputFetch,
    /// Running the command.
    Run,
    /// Uploading the outputs.
    Upload,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [Self::Queued, Self::InputFetch, Self::Run, Self::Upload];

    /// The label value: `queued`, `input_fetch`, `run`, `upload`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InputFetch => "input_fetch",
            Self::Run => "run",
            Self::Upload => "upload",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

pub use crate::blob_store::StoreUsage;

type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

struct Families {
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram>,
    cas_received: Counter,
    cas_sent: Counter,
    store_used: Family<StoreLabels, Gauge>,
    store_limit: Family<StoreLabels, Gauge>,
    store_evicted: Family<StoreLabels, Counter>,
    store_referenced: Family<StoreLabels, Gauge>,
    store_refused: Family<StoreLabels, Counter>,
    ac_lookups: Family<ResultLabels, Counter>,
    execute_checks: Family<ResultLabels, Counter>,
    asset_fetches: Family<ResultLabels, Counter>,
    queue_depth: Family<PlatformLabels, Gauge>,
    queue_seconds: Family<PlatformLabels, Histogram>,
    executions: Family<OutcomeLabels, Counter>,
    phase_seconds: Family<PhaseLabels, Histogram>,
    action_cpu_seconds: Family<ModeLabels, Histogram>,
    action_peak_memory: Histogram,
    action_io_bytes: Family<DirectionLabels, Histogram>,
    workers: Gauge,
    executors: Family<StateLabels, Gauge>,
    cluster_members: Gauge,
    cluster_schedulers: Gauge,
    copies_to_make: Gauge,
    copies_made: Counter,
    unreachable_members: Gauge,
    build_events: Counter,
    build_event_streams: Gauge,
    invocations_kept: Gauge,
    invocations_kept_bytes: Gauge,
}

struct Inner {
    registry: Registry,
    families: Families,
    refresh: Mutex<Vec<Refresh>>,
    /// The platform label values in use: clients choose platforms, so they are capped.
    platforms: Mutex<std::collections::HashSet<String>>,
}

/// Most distinct `platform` label values; further platforms are labelled `other`.
pub const MAX_PLATFORM_LABELS: usize = 100;

/// The Prometheus figures of one server. Cheap to clone; clones share the figures.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The Build Event Service's figures.
fn register_build_events(r: &mut Registry, f: &Families) {
    r.register(
        "remexec_build_events",
        "Build events applied (acknowledged once stored), duplicates of a resumed stream not counted",
        f.build_events.clone(),
    );
    r.register(
        "remexec_build_event_streams",
        "Build event streams open now",
        f.build_event_streams.clone(),
    );
    r.register(
        "remexec_invocations_kept",
        "Invocations the build event store holds",
        f.invocations_kept.clone(),
    );
    r.register(
        "remexec_invocations_kept_bytes",
        "Bytes of the invocation records the build event store holds",
        f.invocations_kept_bytes.clone(),
    );
}

/// The stores' figures: size, budget, evictions, referenced bytes and refused writes.
fn register_stores(r: &mut Registry, f: &Families) {
    r.register(
        "remexec_store_size_bytes",
        "Bytes of blob content a store holds",
        f.store_used.clone(),
    );
    r.register(
        "remexec_store_limit_bytes",
        "A store's byte budget",
        f.store_limit.clone(),
    );
    r.register(
        "remexec_store_evicted_bytes",
        "Bytes a store has evicted since it was opened",
        f.store_evicted.clone(),
    );
    r.register(
        "remexec_store_referenced_bytes",
        "Bytes of blobs a store keeps because they are referenced (named in results or found by clients)",
        f.store_referenced.clone(),
    );
    r.register(
        "remexec_store_refused_writes",
        "Writes a store refused because referenced blobs fill its budget",
        f.store_refused.clone(),
    );
}

/// What executed actions used: CPU time, peak memory and I/O.
fn register_actions(r: &mut Registry, f: &Families) {
    r.register(
        "remexec_action_cpu_seconds",
        "CPU time each executed action used, by mode (user or system), as its worker measured it",
        f.action_cpu_seconds.clone(),
    );
    r.register(
        "remexec_action_peak_memory_bytes",
        "Peak memory of each executed action, as its worker measured it",
        f.action_peak_memory.clone(),
    );
    r.register(
        "remexec_action_io_bytes",
        "Bytes each executed action read or wrote through system calls, by direction (read or written)",
        f.action_io_bytes.clone(),
    );
}

/// A registry holding every family of `f`, with their names and help texts.
fn registry(f: &Families) -> Registry {
    let mut r = Registry::default();
    r.register(
        "remexec_rpc_requests",
        "gRPC calls finished, by method and status code",
        f.rpc_requests.clone(),
    );
    r.register(
        "remexec_rpc_duration_seconds",
        "gRPC call latency until the response ended, by method and status code",
        f.rpc_seconds.clone(),
    );
    r.register(
        "remexec_cas_received_bytes",
        "Blob bytes written into the CAS through its services",
        f.cas_received.clone(),
    );
    r.register(
        "remexec_cas_sent_bytes",
        "Blob bytes read from the CAS through its services",
        f.cas_sent.clone(),
    );
    register_stores(&mut r, f);
    r.register(
        "remexec_action_cache_lookups",
        "GetActionResult calls, by result (hit or miss)",
        f.ac_lookups.clone(),
    );
    register_build_events(&mut r, f);
    r.register(
        "remexec_asset_fetches",
        "Remote Asset Fetch calls, by result: index (answered from the asset index), origin (downloaded) or failed (the origin's failure, in the response's status)",
        f.asset_fetches.clone(),
    );
    r.register(
        "remexec_execute_cache_checks",
        "Execute's own Action Cache checks (skip_cache_lookup unset), by result (hit or miss)",
        f.execute_checks.clone(),
    );
    r.register(
        "remexec_queue_depth",
        "Actions waiting for an executor, by platform",
        f.queue_depth.clone(),
    );
    r.register(
        "remexec_queue_duration_seconds",
        "Time actions waited in the queue before dispatch, by platform",
        f.queue_seconds.clone(),
    );
    r.register(
        "remexec_executions",
        "Executions finished, by outcome",
        f.executions.clone(),
    );
    r.register(
        "remexec_execution_phase_duration_seconds",
        "Time spent in each phase of an execution, as the worker timed it",
        f.phase_seconds.clone(),
    );
    register_actions(&mut r, f);
    r.register(
        "remexec_workers",
        "Workers attached to the scheduler",
        f.workers.clone(),
    );
    r.register(
        "remexec_cluster_members",
        "Workers serving the cluster's CAS, as this instance sees them",
        f.cluster_members.clone(),
    );
    r.register(
        "remexec_cluster_schedulers",
        "Live schedulers sharing the Action Cache, as this scheduler sees them",
        f.cluster_schedulers.clone(),
    );
    r.register(
        "remexec_cluster_copies_to_make",
        "Copies of its blobs this worker still has to make so that each has R live replicas",
        f.copies_to_make.clone(),
    );
    r.register(
        "remexec_cluster_copies_made",
        "Copies of its blobs re-replication made on other members from this worker",
        f.copies_made.clone(),
    );
    r.register(
        "remexec_cluster_unreachable_members",
        "Members of the cluster's CAS on the roster that this instance cannot reach",
        f.unreachable_members.clone(),
    );
    r.register(
        "remexec_executors",
        "Executors, by state (busy or idle)",
        f.executors.clone(),
    );
    r
}

/// Latency buckets: 1 ms to about 9 minutes, doubling.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 20)
}

impl Metrics {
    /// A fresh set of figures, all zero, in a registry of its own.
    pub fn new() -> Self {
        let seconds = || Histogram::new(seconds_buckets());
        let families = Families {
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds),
            cas_received: Counter::default(),
            cas_sent: Counter::default(),
            store_used: Family::default(),
            store_limit: Family::default(),
            store_evicted: Family::default(),
            store_referenced: Family::default(),
            store_refused: Family::default(),
            ac_lookups: Family::default(),
            execute_checks: Family::default(),
            asset_fetches: Family::default(),
            queue_depth: Family::default(),
            queue_seconds: Family::new_with_constructor(seconds),
            executions: Family::default(),
            phase_seconds: Family::new_with_constructor(seconds),
            action_cpu_seconds: Family::new_with_constructor(seconds),
            // 1 MiB to 32 GiB, doubling.
            action_peak_memory: Histogram::new(exponential_buckets(1048576.0, 2.0, 16)),
            // 4 KiB to 16 GiB, quadrupling.
            action_io_bytes: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(4096.0, 4.0, 12))
            }),
            workers: Gauge::default(),
            executors: Family::default(),
            cluster_members: Gauge::default(),
            cluster_schedulers: Gauge::default(),
            copies_to_make: Gauge::default(),
            copies_made: Counter::default(),
            unreachable_members: Gauge::default(),
            build_events: Counter::default(),
            build_event_streams: Gauge::default(),
            invocations_kept: Gauge::default(),
            invocations_kept_bytes: Gauge::default(),
        };
        let r = registry(&families);
        Self {
            inner: Arc::new(Inner {
                registry: r,
                families,
                refresh: Mutex::new(Vec::new()),
                platforms: Mutex::default(),
            }),
        }
    }

    fn f(&self) -> &Families {
        &self.inner.families
    }

    /// Runs `refresh` before every [`encode`](Self::encode), to set the figures that are
    /// states (store usage, queue depth, workers).
    pub fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.inner.refresh.lock().push(Box::new(refresh));
    }

    /// The figures in the Prometheus text format (OpenMetrics), refreshed first.
    pub fn encode(&self) -> String {
        // Take the closures out while running them, so that one may register another.
        let refresh = std::mem::take(&mut *self.inner.refresh.lock());
        for f in &refresh {
            f(self);
        }
        {
            let mut slot = self.inner.refresh.lock();
            let added = std::mem::replace(&mut *slot, refresh);
            slot.extend(added);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// One gRPC call finished with `code` after `elapsed`.
    pub fn rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let labels = RpcLabels {
            method: method.to_string(),
            code: code_name(code).to_string(),
        };
        self.f().rpc_requests.get_or_create(&labels).inc();
        self.f()
            .rpc_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Blob bytes written into the CAS.
    pub fn cas_received(&self, bytes: u64) {
        self.f().cas_received.inc_by(bytes);
    }

    /// Blob bytes read from the CAS.
    pub fn cas_sent(&self, bytes: u64) {
        self.f().cas_sent.inc_by(bytes);
    }

    /// Sets the usage figures of the store called `store`.
    pub fn store_usage(&self, store: &str, usage: StoreUsage) {
        let labels = StoreLabels {
            store: store.to_string(),
        };
        let set = |family: &Family<StoreLabels, Gauge>, v: u64| {
            family
                .get_or_create(&labels)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.f().store_used, usage.used_bytes);
        set(&self.f().store_limit, usage.limit_bytes);
        set(&self.f().store_referenced, usage.referenced_bytes);
        // The store counts evictions and refusals itself; the counters catch up with it.
        let catch_up = |family: &Family<StoreLabels, Counter>, total: u64| {
            let counter = family.get_or_create(&labels);
            let counted = counter.get();
            if total > counted {
                counter.inc_by(total - counted);
            }
        };
        catch_up(&self.f().store_evicted, usage.evicted_bytes);
        catch_up(&self.f().store_refused, usage.refused_writes);
    }

    /// A client looked up the Action Cache.
    pub fn action_cache_lookup(&self, hit: bool) {
        count_result(&self.f().ac_lookups, hit);
    }

    /// Execute looked up the Action Cache before running an action. Counted apart from
    /// [`action_cache_lookup`](Self::action_cache_lookup): Bazel makes both for an action it
    /// then runs, and one miss must not count twice.
    pub fn execute_cache_check(&self, hit: bool) {
        count_result(&self.f().execute_checks, hit);
    }

    /// A Remote Asset Fetch was answered.
    pub fn asset_fetch(&self, result: AssetFetch) {
        let result = result.as_str();
        self.f()
            .asset_fetches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Execute's Action Cache checks so far: hits and misses.
    pub fn execute_cache_checks(&self) -> (u64, u64) {
        hits_and_misses(&self.f().execute_checks)
    }

    /// Client Action Cache lookups so far: hits and misses.
    pub fn action_cache_lookups(&self) -> (u64, u64) {
        hits_and_misses(&self.f().ac_lookups)
    }

    /// `platform` as a label value: itself while fewer than [`MAX_PLATFORM_LABELS`] are in use,
    /// else `other`.
    fn platform_label(&self, platform: &str) -> PlatformLabels {
        let mut seen = self.inner.platforms.lock();
        let platform = if seen.contains(platform) {
            platform.to_string()
        } else if seen.len() < MAX_PLATFORM_LABELS {
            seen.insert(platform.to_string());
            platform.to_string()
        } else {
            "other".to_string()
        };
        PlatformLabels { platform }
    }

    /// Replaces the queue depths: actions waiting, by platform label.
    pub fn queue_depths(&self, depths: impl IntoIterator<Item = (String, usize)>) {
        let family = &self.f().queue_depth;
        family.clear();
        for (platform, n) in depths {
            let gauge = family.get_or_create(&self.platform_label(&platform));
            gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// An action of `platform` waited `waited` in the queue before dispatch.
    pub fn queue_wait(&self, platform: &str, waited: Duration) {
        self.f()
            .queue_seconds
            .get_or_create(&self.platform_label(platform))
            .observe(waited.as_secs_f64());
    }

    /// An execution finished.
    pub fn execution(&self, outcome: ExecutionOutcome) {
        self.f()
            .executions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// An execution spent `took` in `phase`.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.f()
            .phase_seconds
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// An executed action used `usage`: its CPU time and peak memory if measured, its I/O if
    /// counted.
    pub fn action_usage(&self, usage: &crate::usage::ActionUsage) {
        if !usage.measured() {
            return;
        }
        let f = self.f();
        for (mode, micros) in [
            ("user", usage.user_cpu_micros),
            ("system", usage.system_cpu_micros),
        ] {
            f.action_cpu_seconds
                .get_or_create(&ModeLabels { mode })
                .observe(micros as f64 / 1e6);
        }
        f.action_peak_memory.observe(usage.peak_memory_bytes as f64);
        for (direction, bytes) in [("read", usage.read_bytes), ("written", usage.written_bytes)] {
            if let Some(bytes) = bytes {
                f.action_io_bytes
                    .get_or_create(&DirectionLabels { direction })
                    .observe(bytes as f64);
            }
        }
    }

    /// Sets the number of workers serving the cluster's CAS.
    pub fn cluster_members(&self, members: usize) {
        self.f()
            .cluster_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    /// Sets the number of live schedulers sharing the Action Cache.
    pub fn cluster_schedulers(&self, schedulers: usize) {
        self.f()
            .cluster_schedulers
            .set(i64::try_from(schedulers).unwrap_or(i64::MAX));
    }

    /// Sets the copies this worker still has to make.
    pub fn copies_to_make(&self, copies: u64) {
        self.f()
            .copies_to_make
            .set(i64::try_from(copies).unwrap_or(i64::MAX));
    }

    /// Catches the count of copies this worker made up with `total`, as its repairer counts
    /// them.
    pub fn copies_made(&self, total: u64) {
        let counter = &self.f().copies_made;
        let counted = counter.get();
        if total > counted {
            counter.inc_by(total - counted);
        }
    }

    /// Sets the number of roster members this instance cannot reach.
    pub fn unreachable_members(&self, members: usize) {
        self.f()
            .unreachable_members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
    }

    /// `n` more build events applied.
    pub fn build_events(&self, n: u64) {
        self.f().build_events.inc_by(n);
    }

    /// One build event stream more (`true`) or less open.
    pub fn build_event_stream(&self, opened: bool) {
        match opened {
            true => self.f().build_event_streams.inc(),
            false => self.f().build_event_streams.dec(),
        };
    }

    /// Sets the invocations the build event store holds, and their bytes.
    pub fn invocations_kept(&self, count: usize, bytes: u64) {
        let f = self.f();
        f.invocations_kept
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        f.invocations_kept_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets the number of attached workers and of busy and idle executors.
    pub fn executors(&self, workers: usize, busy: usize, idle: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.f().workers.set(n(workers));
        let family = &self.f().executors;
        family
            .get_or_create(&StateLabels { state: "busy" })
            .set(n(busy));
        family
            .get_or_create(&StateLabels { state: "idle" })
            .set(n(idle));
    }
}

/// The canonical name of a gRPC code, as in `google.rpc.Code`: `OK`, `NOT_FOUND`, ...
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts one hit or miss in `family`.
fn count_result(family: &Family<ResultLabels, Counter>, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    family.get_or_create(&ResultLabels { result }).inc();
}

/// The hits and misses counted in `family`.
fn hits_and_misses(family: &Family<ResultLabels, Counter>) -> (u64, u64) {
    let count = |result| family.get_or_create(&ResultLabels { result }).get();
    (count("hit"), count("miss"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_under_their_names_and_scrape_closures_run() {
        let m = Metrics::new();
        m.rpc("/a/B", tonic::Code::NotFound, Duration::from_millis(2));
        m.rpc("/a/B", tonic::Code::NotFound, Duration::from_millis(2));
        m.action_cache_lookup(true);
        m.action_cache_lookup(false);
        m.action_cache_lookup(false);
        m.cas_received(10);
        m.phase(Phase::Run, Duration::from_millis(1500));
        m.action_usage(&crate::usage::ActionUsage {
            source: crate::usage::Source::Rusage as i32,
            user_cpu_micros: 2_000_000,
            peak_memory_bytes: 3 << 20,
            read_bytes: Some(100),
            ..Default::default()
        });
        // Not measured: not counted.
        m.action_usage(&crate::usage::ActionUsage::default());
        m.on_scrape(|m| m.queue_depths([("OSFamily=linux".to_string(), 3)]));
        let text = m.encode();
        assert!(
            text.contains(r#"remexec_rpc_requests_total{method="/a/B",code="NOT_FOUND"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"remexec_action_cache_lookups_total{result="hit"} 1"#));
        assert!(text.contains(r#"remexec_action_cache_lookups_total{result="miss"} 2"#));
        assert!(text.contains("remexec_cas_received_bytes_total 10"));
        assert!(text.contains(r#"remexec_queue_depth{platform="OSFamily=linux"} 3"#));
        assert!(text.contains(r#"remexec_execution_phase_duration_seconds_count{phase="run"} 1"#));
        assert!(
            text.contains(r#"remexec_action_cpu_seconds_sum{mode="user"} 2.0"#),
            "{text}"
        );
        assert!(text.contains(r#"remexec_action_cpu_seconds_count{mode="system"} 1"#));
        assert!(
            text.contains("remexec_action_peak_memory_bytes_count 1"),
            "{text}"
        );
        assert!(text.contains(r#"remexec_action_peak_memory_bytes_bucket{le="4194304.0"} 1"#));
        assert!(text.contains(r#"remexec_action_io_bytes_count{direction="read"} 1"#));
        assert!(!text.contains(r#"direction="written""#));
        // Depths are replaced, not accumulated: a platform no longer queued disappears.
        m.on_scrape(|m| m.queue_depths(Vec::new()));
        assert!(!m.encode().contains("OSFamily=linux\"} 3"));
    }

    #[test]
    fn clients_cannot_mint_unbounded_platform_labels() {
        let m = Metrics::new();
        for i in 0..MAX_PLATFORM_LABELS + 50 {
            m.queue_wait(&format!("k=v{i}"), Duration::from_millis(1));
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("remexec_queue_duration_seconds_count"))
            .count();
        assert_eq!(series, MAX_PLATFORM_LABELS + 1, "{text}");
        assert!(text.contains(r#"remexec_queue_duration_seconds_count{platform="other"} 50"#));
        // Depths of the overflow add up under `other`.
        m.queue_depths([("k=new1".into(), 2), ("k=new2".into(), 3)]);
        assert!(
            m.encode()
                .contains(r#"remexec_queue_depth{platform="other"} 5"#)
        );
    }
}
