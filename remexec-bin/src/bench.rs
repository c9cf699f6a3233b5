//! `remexec bench`: the command line of [`remexec_core::client::bench`], a REAPI load generator
//! for any server, with a progress bar.

use std::sync::Arc;

use bytesize::ByteSize;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use remexec_core::Result;
use remexec_core::client::bench::Bench;
pub use remexec_core::client::bench::{Report, WorkloadKind};

/// What each workload measures, for `--help`.
fn workloads() -> impl TypedValueParser<Value = WorkloadKind> {
    let help = |kind: WorkloadKind| match kind {
        WorkloadKind::CasWrite => {
            "Upload distinct blobs (ByteStream, or BatchUpdateBlobs with --batch)"
        }
        WorkloadKind::CasRead => "Download blobs (ByteStream, or BatchReadBlobs with --batch)",
        WorkloadKind::FindMissing => {
            "FindMissingBlobs with --batch-size digests, --hit-ratio of them present"
        }
        WorkloadKind::AcGet => "GetActionResult, hits (or misses with --miss)",
        WorkloadKind::Execute => "Execute no-op actions, skipping the cache",
        WorkloadKind::Spawn => "No server: start /bin/true here, the yardstick of execute",
        WorkloadKind::Mixed => {
            "A Bazel-like mix: FindMissingBlobs, small uploads, GetActionResult and (unless --no-execute) Execute"
        }
    };
    let values = WorkloadKind::ALL.map(|k| PossibleValue::new(k.name()).help(help(k)));
    PossibleValuesParser::new(values).map(|name| {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(WorkloadKind::Mixed)
    })
}

/// Flags of `remexec bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_parser = workloads())]
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
    /// execute: depth of each action's input root (a directory with one file per level).
    #[arg(long, default_value_t = 0, env = "REMEXEC_INPUT_DIRS")]
    pub input_dirs: usize,
    /// execute: leave one input out, so that only the scheduler's input check runs.
    #[arg(long, env = "REMEXEC_MISSING_INPUT")]
    pub missing_input: bool,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "REMEXEC_JSON")]
    pub json: bool,
}

impl BenchArgs {
    /// Defaults for `workload` against `target`, as the CLI would set them.
    pub fn new(workload: WorkloadKind, target: impl Into<String>) -> Self {
        let bench = Bench::new(workload, target);
        Self {
            workload,
            target: bench.target,
            tls: Default::default(),
            instance: bench.instance,
            size: ByteSize::b(bench.size),
            concurrency: bench.concurrency,
            count: bench.count,
            batch: bench.batch,
            batch_size: bench.batch_size,
            hit_ratio: bench.hit_ratio,
            blobs: bench.blobs,
            miss: bench.miss,
            no_execute: bench.no_execute,
            input_dirs: bench.input_dirs,
            missing_input: bench.missing_input,
            json: false,
        }
    }

    /// The run these flags describe (reading the TLS files).
    fn bench(&self) -> Result<Bench> {
        let mut bench = Bench::new(self.workload, self.target.clone());
        bench.tls = self.tls.load()?;
        bench.instance.clone_from(&self.instance);
        bench.size = self.size.as_u64();
        (bench.concurrency, bench.count) = (self.concurrency, self.count);
        (bench.batch, bench.batch_size) = (self.batch, self.batch_size);
        (bench.hit_ratio, bench.blobs) = (self.hit_ratio, self.blobs);
        (bench.miss, bench.no_execute) = (self.miss, self.no_execute);
        (bench.input_dirs, bench.missing_input) = (self.input_dirs, self.missing_input);
        Ok(bench)
    }
}

/// Runs the benchmark `args` describe; `progress` shows a live line on stderr.
pub async fn run(args: &BenchArgs, progress: bool) -> Result<Report> {
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(args.count);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} ops, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(args.workload.name());
        bar
    });
    let tick = bar
        .clone()
        .map(|bar| -> remexec_core::client::bench::Progress { Arc::new(move || bar.inc(1)) });
    let report = remexec_core::client::bench::run(&args.bench()?, tick).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report
}
