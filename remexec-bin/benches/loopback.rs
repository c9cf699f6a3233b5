//! Loopback benchmark of a real `remexec serve` (in-process, real disk store, real gRPC), driven
//! by the `remexec bench` workloads, against the targets.
//!
//! `cargo bench -p remexec-bin --bench loopback` prints a Markdown table with single-core
//! SHA-256 speed measured by the same binary in the same run. `LOOPBACK_QUICK=1` shortens it.

#![allow(clippy::field_reassign_with_default)] // configs are built up from the defaults

use std::time::{Duration, Instant};

use bytesize::ByteSize;
use remexec_bin::bench::{BenchArgs, Report, WorkloadKind, run};
use remexec_bin::config::Config;
use remexec_bin::serve::{BoundServer, Role};
use remexec_core::DigestFunction;

/// Single-core SHA-256 throughput in bytes per second.
fn sha256_speed() -> f64 {
    let data = vec![7u8; 64 << 20];
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        std::hint::black_box(DigestFunction::Sha256.digest_of(&data));
        rounds += 1;
    }
    (data.len() as u64 * rounds) as f64 / start.elapsed().as_secs_f64()
}

async fn start(
    role: Role,
    fsync: bool,
    executors: usize,
) -> Result<(String, tempfile::TempDir), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse()?;
    config.data_dir = dir.path().to_path_buf();
    config.cas.fsync = fsync;
    config.worker.executors = executors;
    let server = BoundServer::bind(&config, role).await?;
    let url = format!("grpc://{}", server.local_addr()?);
    tokio::spawn(server.serve(futures::future::pending()));
    Ok((url, dir))
}

fn row(name: &str, r: &Report) {
    let mib = |b: f64| format!("{:.0} MiB/s", b / (1024.0 * 1024.0));
    let tp = if r.throughput_bytes_per_s > 0.0 {
        mib(r.throughput_bytes_per_s)
    } else {
        "-".into()
    };
    let ms = |s: f64| format!("{:.3}", s * 1000.0);
    println!(
        "| {name} | {} | {} | {:.0} | {tp} | {} | {} | {} |",
        r.ops,
        r.errors,
        r.ops_per_s,
        ms(r.p50_s),
        ms(r.p99_s),
        ms(r.max_s)
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::var_os("LOOPBACK_QUICK").is_some();
    let scale = |full: u64, short: u64| if quick { short } else { full };
    let sha = sha256_speed();
    println!(
        "\nSingle-core SHA-256 (same binary, same run): {:.0} MiB/s\n",
        sha / (1024.0 * 1024.0)
    );
    println!("| workload | ops | errors | ops/s | throughput | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");

    let (url, _d1) = start(Role::Scheduler, true, 0).await?;
    let (nosync, _d2) = start(Role::Scheduler, false, 0).await?;
    let bench = |kind, url: &str, count| {
        let mut a = BenchArgs::new(kind, url);
        a.count = count;
        a
    };
    for (size, count) in [
        (ByteSize::mib(1), scale(512, 32)),
        (ByteSize::mib(64), scale(24, 4)),
    ] {
        for (label, target) in [("fsync on", &url), ("fsync off", &nosync)] {
            let mut a = bench(WorkloadKind::CasWrite, target, count);
            (a.size, a.concurrency) = (size, 1);
            let r = run(&a, false).await?;
            row(&format!("cas-write {size}, 1 client, {label}"), &r);
            if size == ByteSize::mib(64) && label == "fsync off" {
                println!(
                    "| (64 MiB write, fsync off, as a share of one core's SHA-256) | | | | {:.0}% | | | |",
                    100.0 * r.throughput_bytes_per_s / sha
                );
            }
        }
        let mut a = bench(WorkloadKind::CasRead, &url, count);
        (a.size, a.concurrency, a.blobs) = (size, 1, 4);
        row(
            &format!("cas-read {size}, 1 client"),
            &run(&a, false).await?,
        );
    }
    for n in [1_000usize, 10_000] {
        let mut a = bench(WorkloadKind::FindMissing, &url, scale(400, 20));
        (a.batch_size, a.concurrency) = (n, 1);
        row(
            &format!("find-missing {n} digests, half present, 1 client"),
            &run(&a, false).await?,
        );
    }
    for clients in [1usize, 64] {
        let mut a = bench(WorkloadKind::AcGet, &url, scale(40_000, 2_000));
        a.concurrency = clients;
        row(
            &format!("ac-get hit, {clients} clients"),
            &run(&a, false).await?,
        );
    }
    let (exec_url, _d3) = start(Role::AllInOne, true, 32).await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the local worker attaches
    for clients in [1usize, 64] {
        let mut a = bench(WorkloadKind::Execute, &exec_url, scale(2_000, 100));
        a.concurrency = clients;
        row(
            &format!("execute no-op, {clients} clients, 32 executors"),
            &run(&a, false).await?,
        );
    }
    let mut a = bench(WorkloadKind::Mixed, &exec_url, scale(5_000, 200));
    a.concurrency = 16;
    row("mixed (Bazel-like), 16 clients", &run(&a, false).await?);
    Ok(())
}
