//! `remexec bench`: a REAPI load generator for any server, ours or anyone's.
//!
//! Each run sends `--count` operations from `--concurrency` clients (each on its own HTTP/2
//! connection) and reports throughput and latency percentiles from an HDR histogram, as a table
//! or, with `--json`, as one JSON object. Setup (uploading what reads need, hashing what writes
//! send) happens before the clock starts.

mod workloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use hdrhistogram::Histogram;
use remexec_core::{Error, Result};

pub use workloads::{Workload, noop_actions};

/// What `remexec bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Upload distinct blobs (ByteStream, or BatchUpdateBlobs with --batch).
    CasWrite,
    /// Download blobs (ByteStream, or BatchReadBlobs with --batch).
    CasRead,
    /// FindMissingBlobs with --batch-size digests, --hit-ratio of them present.
    FindMissing,
    /// GetActionResult, hits (or misses with --miss).
    AcGet,
    /// Execute no-op actions, skipping the cache.
    Execute,
    /// A Bazel-like mix: FindMissingBlobs, small uploads, GetActionResult and (unless
    /// --no-execute) Execute.
    Mixed,
}

/// Flags of `remexec bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: WorkloadKind,
    /// Server URL, e.g. grpc://127.0.0.1:8980.
    #[arg(long, env = "REMEXEC_TARGET")]
    pub target: String,
    /// TLS to a grpcs:// server.
    #[command(flatten)]
    pub tls: crate::args::ClientTlsArgs,
    /// Instance name.
    #[arg(long, default_value = "", env = "REMEXEC_INSTANCE")]
    pub instance: String,
    /// Blob size for cas-write and cas-read, e.g. 64MiB.
    #[arg(long, default_value = "1MiB", env = "REMEXEC_SIZE")]
    pub size: ByteSize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, env = "REMEXEC_CONCURRENCY")]
    pub concurrency: usize,
    /// Operations to send.
    #[arg(long, default_value_t = 1000, env = "REMEXEC_COUNT")]
    pub count: u64,
    /// Use the CAS batch calls instead of ByteStream.
    #[arg(long, env = "REMEXEC_BATCH")]
    pub batch: bool,
    /// Digests per FindMissingBlobs request.
    #[arg(long, default_value_t = 1000, env = "REMEXEC_BATCH_SIZE")]
    pub batch_size: usize,
    /// Fraction of FindMissingBlobs digests (and mixed GetActionResult calls) that hit.
    #[arg(long, default_value_t = 0.5, env = "REMEXEC_HIT_RATIO")]
    pub hit_ratio: f64,
    /// Distinct blobs cas-read cycles through.
    #[arg(long, default_value_t = 16, env = "REMEXEC_BLOBS")]
    pub blobs: usize,
    /// ac-get: ask for actions that are not cached.
    #[arg(long, env = "REMEXEC_MISS")]
    pub miss: bool,
    /// mixed: leave Execute out (for cache-only servers).
    #[arg(long, env = "REMEXEC_NO_EXECUTE")]
    pub no_execute: bool,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "REMEXEC_JSON")]
    pub json: bool,
}

impl BenchArgs {
    /// Defaults for `workload` against `target`, as the CLI would set them.
    pub fn new(workload: WorkloadKind, target: impl Into<String>) -> Self {
        Self {
            workload,
            target: target.into(),
            tls: Default::default(),
            instance: String::new(),
            size: ByteSize::mib(1),
            concurrency: 8,
            count: 1000,
            batch: false,
            batch_size: 1000,
            hit_ratio: 0.5,
            blobs: 16,
            miss: false,
            no_execute: false,
            json: false,
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
}

/// Runs a benchmark and returns its report; `progress` shows a live line on stderr.
pub async fn run(args: &BenchArgs, progress: bool) -> Result<Report> {
    if args.concurrency == 0 || args.count == 0 {
        return Err(Error::invalid(
            "--concurrency and --count must be at least 1",
        ));
    }
    let mut channels = Vec::with_capacity(args.concurrency);
    let tls = args.tls.load()?;
    for _ in 0..args.concurrency {
        channels.push(remexec_core::client::connect_with(&args.target, &tls).await?);
    }
    let workload = Arc::new(Workload::prepare(args, &channels[0]).await?);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(args.count);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} ops, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{:?}", args.workload));
        bar
    });
    let start = Instant::now();
    let tasks = channels.into_iter().map(|channel| {
        let (workload, next, done, bar, count) = (
            Arc::clone(&workload),
            Arc::clone(&next),
            Arc::clone(&done),
            bar.clone(),
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
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
        })
    });
    let results = futures::future::join_all(tasks).await;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
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
                ByteSize::b(self.throughput_bytes_per_s as u64)
                    .display()
                    .iec()
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
            serde_json::to_value(self.workload)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
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
        out
    }
}
