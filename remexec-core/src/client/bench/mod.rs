//! A REAPI load generator for any server, ours or anyone's (what `remexec bench` runs).
//!
//! Each run sends `count` operations from `concurrency` clients (each on its own HTTP/2
//! connection) and reports throughput and latency percentiles from an HDR histogram
//! ([`Report`], a table or JSON). Setup (uploading what reads need, hashing what writes send)
//! happens before the clock starts. ByteStream chunks travel as shared buffers, never copied.
//!
//! ```no_run
//! # async fn demo() -> remexec_core::Result<()> {
//! use remexec_core::client::bench::{Bench, WorkloadKind, run};
//! let mut bench = Bench::new(WorkloadKind::FindMissing, "grpc://127.0.0.1:8980");
//! bench.count = 100;
//! let report = run(&bench, None).await?;
//! print!("{}", report.table());
//! # Ok(())
//! # }
//! ```

mod phases;
mod wire;
mod workloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::ClientTls;
use crate::{Error, Result};

pub use phases::{NAMES as PHASES, Phase};
pub use workloads::{Workload, noop_actions};

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Upload distinct blobs (ByteStream, or BatchUpdateBlobs with `batch`).
    CasWrite,
    /// Download blobs (ByteStream, or BatchReadBlobs with `batch`).
    CasRead,
    /// FindMissingBlobs with `batch_size` digests, `hit_ratio` of them present.
    FindMissing,
    /// GetActionResult, hits (or misses with `miss`).
    AcGet,
    /// Execute no-op actions, skipping the cache.
    Execute,
    /// A Bazel-like mix: FindMissingBlobs, small uploads, GetActionResult and (unless
    /// `no_execute`) Execute.
    Mixed,
    /// No server: start `/bin/true` here and wait for it, the machine's own cost of one
    /// process, as the yardstick of `Execute`'s.
    Spawn,
}

impl WorkloadKind {
    /// Every workload, in order.
    pub const ALL: [Self; 7] = [
        Self::CasWrite,
        Self::CasRead,
        Self::FindMissing,
        Self::AcGet,
        Self::Execute,
        Self::Mixed,
        Self::Spawn,
    ];

    /// Its name (`cas-write`, …), as JSON and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::CasWrite => "cas-write",
            Self::CasRead => "cas-read",
            Self::FindMissing => "find-missing",
            Self::AcGet => "ac-get",
            Self::Execute => "execute",
            Self::Mixed => "mixed",
            Self::Spawn => "spawn",
        }
    }
}

impl std::str::FromStr for WorkloadKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::invalid(format!("no workload {s:?}")))
    }
}

/// A run: what to send, where, and how much.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Bench {
    /// The workload.
    pub workload: WorkloadKind,
    /// Server URL, e.g. `grpc://127.0.0.1:8980`.
    pub target: String,
    /// TLS to a `grpcs://` server.
    pub tls: ClientTls,
    /// Instance name.
    pub instance: String,
    /// Blob size for cas-write and cas-read.
    pub size: u64,
    /// Concurrent clients, each on its own connection.
    pub concurrency: usize,
    /// Operations to send.
    pub count: u64,
    /// Use the CAS batch calls instead of ByteStream.
    pub batch: bool,
    /// Digests per FindMissingBlobs request.
    pub batch_size: usize,
    /// Fraction of FindMissingBlobs digests (and mixed GetActionResult calls) that hit.
    pub hit_ratio: f64,
    /// Distinct blobs cas-read cycles through.
    pub blobs: usize,
    /// ac-get: ask for actions that are not cached.
    pub miss: bool,
    /// mixed: leave Execute out (for cache-only servers).
    pub no_execute: bool,
    /// execute: the depth of each action's input root, a directory (with one file) per level;
    /// 0 is an empty root.
    pub input_dirs: usize,
    /// execute: leave the deepest input file out, so that the scheduler checks the inputs,
    /// answers `FAILED_PRECONDITION`, and nothing runs: a measure of the input check alone.
    pub missing_input: bool,
}

impl Bench {
    /// Defaults for `workload` against `target`: 1,000 operations of 1 MiB blobs from 8
    /// clients, plaintext.
    pub fn new(workload: WorkloadKind, target: impl Into<String>) -> Self {
        Self {
            workload,
            target: target.into(),
            tls: ClientTls::default(),
            instance: String::new(),
            size: 1 << 20,
            concurrency: 8,
            count: 1000,
            batch: false,
            batch_size: 1000,
            hit_ratio: 0.5,
            blobs: 16,
            miss: false,
            no_execute: false,
            input_dirs: 0,
            missing_input: false,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The workload measured.
    pub workload: WorkloadKind,
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the measured phase.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Payload bytes moved per second (blob content for CAS workloads, else 0).
    pub throughput_bytes_per_s: f64,
    /// Median latency in seconds.
    pub p50_s: f64,
    /// 90th percentile latency in seconds.
    pub p90_s: f64,
    /// 99th percentile latency in seconds.
    pub p99_s: f64,
    /// Largest latency in seconds.
    pub max_s: f64,
    /// First error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// execute: where the actions' time went, by the timestamps of their metadata.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// Called with each finished operation, for a progress display.
pub type Progress = Arc<dyn Fn() + Send + Sync>;

/// Runs a benchmark and returns its report; `progress` hears of each operation done.
pub async fn run(args: &Bench, progress: Option<Progress>) -> Result<Report> {
    if args.concurrency == 0 || args.count == 0 {
        return Err(Error::invalid(
            "--concurrency and --count must be at least 1",
        ));
    }
    let mut channels = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        channels.push(match args.workload {
            // Never used: spawn talks to no server.
            WorkloadKind::Spawn => {
                tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
            }
            _ => crate::client::connect_with(&args.target, &args.tls).await?,
        });
    }
    let workload = Arc::new(Workload::prepare(args, &channels[0]).await?);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks = channels.into_iter().map(|channel| {
        let (workload, next, done, progress, count) = (
            Arc::clone(&workload),
            Arc::clone(&next),
            Arc::clone(&done),
            progress.clone(),
            args.count,
        );
        tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new(3).map_err(|e| Error::Internal(e.to_string().into()))?;
            let (mut bytes, mut errors, mut first_error) = (0u64, 0u64, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, Error>((hist, bytes, errors, first_error));
                }
                let t = Instant::now();
                match workload.op(&channel, i).await {
                    Ok(moved) => {
                        let _ = hist.record(t.elapsed().as_nanos().max(1) as u64);
                        bytes += moved;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{:?}: {e}", e.code()));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(progress) = &progress {
                    progress();
                }
            }
        })
    });
    let results = futures::future::join_all(tasks).await;
    let seconds = start.elapsed().as_secs_f64();
    let mut hist = Histogram::<u64>::new(3).map_err(|e| Error::Internal(e.to_string().into()))?;
    let (mut bytes, mut errors, mut first_error) = (0u64, 0u64, None);
    for r in results {
        let (h, b, e, f) = r.map_err(|e| Error::Internal(e.to_string().into()))??;
        hist.add(h)
            .map_err(|e| Error::Internal(e.to_string().into()))?;
        bytes += b;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let q = |quantile: f64| Duration::from_nanos(hist.value_at_quantile(quantile)).as_secs_f64();
    Ok(Report {
        workload: args.workload,
        ops: hist.len(),
        errors,
        seconds,
        ops_per_s: hist.len() as f64 / seconds,
        throughput_bytes_per_s: bytes as f64 / seconds,
        p50_s: q(0.5),
        p90_s: q(0.9),
        p99_s: q(0.99),
        max_s: Duration::from_nanos(hist.max()).as_secs_f64(),
        first_error,
        phases: workload.phases(),
    })
}

fn ms(seconds: f64) -> String {
    format!("{:.3} ms", seconds * 1000.0)
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let throughput = if self.throughput_bytes_per_s > 0.0 {
            format!(
                "{}/s",
                crate::human_size(self.throughput_bytes_per_s as u64)
            )
        } else {
            "-".into()
        };
        let mut out = format!(
            "{:<12} {:>9} {:>7} {:>9} {:>11} {:>12} {:>11} {:>11} {:>11} {:>11}\n",
            "workload",
            "ops",
            "errors",
            "seconds",
            "ops/s",
            "throughput",
            "p50",
            "p90",
            "p99",
            "max"
        );
        out += &format!(
            "{:<12} {:>9} {:>7} {:>9.3} {:>11.1} {:>12} {:>11} {:>11} {:>11} {:>11}\n",
            self.workload.name(),
            self.ops,
            self.errors,
            self.seconds,
            self.ops_per_s,
            throughput,
            ms(self.p50_s),
            ms(self.p90_s),
            ms(self.p99_s),
            ms(self.max_s)
        );
        if let Some(e) = &self.first_error {
            out += &format!("first error: {e}\n");
        }
        if !self.phases.is_empty() {
            out += &format!(
                "\n{:<24} {:>11} {:>11} {:>11}\n",
                "phase", "mean", "p50", "p99"
            );
        }
        for p in &self.phases {
            out += &format!(
                "{:<24} {:>11} {:>11} {:>11}\n",
                p.name,
                ms(p.mean_s),
                ms(p.p50_s),
                ms(p.p99_s)
            );
        }
        out
    }
}
