//! Loopback benchmark of a real `remexec serve` (in-process, real disk store, real gRPC).
//!
//! `cargo bench -p remexec-bin --bench loopback` prints a Markdown table of:
//! single-core SHA-256 speed; ByteStream write and read throughput for 1 MiB and 64 MiB blobs;
//! FindMissingBlobs latency for 1,000 and 10,000 digests; GetActionResult hit latency.
//! Set `LOOPBACK_QUICK=1` for a short smoke run.

#![allow(clippy::field_reassign_with_default)] // configs are built up from the defaults

use std::time::{Duration, Instant};

use bytes::Bytes;
use remexec_bin::config::Config;
use remexec_bin::loadgen::{self, Summary};
use remexec_bin::serve::{BoundServer, Role};
use remexec_core::reapi::{ActionResult, OutputFile};
use remexec_core::testing::content;
use remexec_core::{Digest, DigestFunction};

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Single-core SHA-256 throughput, MiB/s.
fn sha256_speed(data: &[u8]) -> f64 {
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(2) {
        std::hint::black_box(DigestFunction::Sha256.digest_of(data));
        rounds += 1;
    }
    mib_per_s(data.len() as u64 * rounds, start.elapsed())
}

fn blobs(seed: u64, count: usize, size: usize) -> Vec<(Digest, Bytes)> {
    (0..count)
        .map(|i| {
            let data = content(seed + i as u64, size);
            (DigestFunction::Sha256.digest_of(&data), data)
        })
        .collect()
}

fn row(name: &str, s: &Summary, throughput: Option<f64>) {
    let tp = throughput.map_or_else(
        || format!("{:.0} ops/s", s.ops_per_s()),
        |t| format!("{t:.0} MiB/s"),
    );
    println!(
        "| {name} | {} | {tp} | {} | {} |",
        s.ops,
        ms(s.p50),
        ms(s.p99)
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::var_os("LOOPBACK_QUICK").is_some();
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse()?;
    config.data_dir = dir.path().to_path_buf();
    let server = BoundServer::bind(&config, Role::Scheduler).await?;
    let url = format!("http://{}", server.local_addr()?);
    tokio::spawn(server.serve(futures::future::pending()));
    let channel = loadgen::connect(&url).await?;
    // A second server with fsync off, to show what durability costs on this disk.
    let nosync_dir = tempfile::tempdir()?;
    config.data_dir = nosync_dir.path().to_path_buf();
    config.cas.fsync = false;
    let nosync = BoundServer::bind(&config, Role::Scheduler).await?;
    let nosync_url = format!("http://{}", nosync.local_addr()?);
    tokio::spawn(nosync.serve(futures::future::pending()));
    let nosync_channel = loadgen::connect(&nosync_url).await?;

    let sha = sha256_speed(&content(0, 64 << 20));
    println!("\nSingle-core SHA-256 (same binary, same run): {sha:.0} MiB/s\n");
    println!("| workload | ops | throughput | p50 | p99 |");
    println!("|---|---|---|---|---|");

    for (label, count, size) in [
        ("1 MiB", if quick { 16 } else { 256 }, 1 << 20),
        ("64 MiB", if quick { 2 } else { 16 }, 64 << 20),
    ] {
        let set = blobs(size as u64 * 1000, count, size);
        let total = (count * size) as u64;
        let w = loadgen::bytestream_write(&channel, &set).await?;
        row(
            &format!("ByteStream write {label} (fsync on)"),
            &w,
            Some(mib_per_s(total, w.wall)),
        );
        let w = loadgen::bytestream_write(&nosync_channel, &set).await?;
        row(
            &format!("ByteStream write {label} (fsync off)"),
            &w,
            Some(mib_per_s(total, w.wall)),
        );
        let digests: Vec<Digest> = set.iter().map(|(d, _)| *d).collect();
        let r = loadgen::bytestream_read(&channel, &digests).await?;
        row(
            &format!("ByteStream read {label}"),
            &r,
            Some(mib_per_s(total, r.wall)),
        );
    }

    // FindMissingBlobs: half of the digests present.
    let present = blobs(7_000_000, 5_000, 64);
    for (d, data) in &present {
        let requests = vec![remexec_proto::reapi::batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data: data.to_vec(),
            compressor: 0,
        }];
        remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(channel.clone())
            .batch_update_blobs(remexec_proto::reapi::BatchUpdateBlobsRequest { requests, ..Default::default() })
            .await?;
    }
    for n in [1_000usize, 10_000] {
        let digests: Vec<Digest> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    present[i / 2].0
                } else {
                    DigestFunction::Sha256.digest_of(format!("absent {i}").as_bytes())
                }
            })
            .collect();
        let s = loadgen::find_missing(&channel, &digests, if quick { 10 } else { 200 }).await?;
        row(
            &format!("FindMissingBlobs {n} digests (half present)"),
            &s,
            None,
        );
    }

    let action = DigestFunction::Sha256.digest_of(b"bench action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out/a".into(),
            digest: Some(present[0].0.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let rounds = if quick { 100 } else { 5_000 };
    let s = loadgen::action_cache_hits(&url, action, result.clone(), 1, rounds).await?;
    row("GetActionResult hit, 1 client", &s, None);
    let s = loadgen::action_cache_hits(&url, action, result, 64, rounds / 10).await?;
    row("GetActionResult hit, 64 clients", &s, None);

    // Remote execution of uncached no-op actions through the all-in-one server.
    let mut config = Config::default();
    let exec_dir = tempfile::tempdir()?;
    config.listen = "127.0.0.1:0".parse()?;
    config.data_dir = exec_dir.path().to_path_buf();
    config.worker.executors = 32;
    let exec_server = BoundServer::bind(&config, Role::AllInOne).await?;
    let exec_channel = loadgen::connect(&format!("http://{}", exec_server.local_addr()?)).await?;
    tokio::spawn(exec_server.serve(futures::future::pending()));
    tokio::time::sleep(Duration::from_millis(500)).await; // let the local worker attach
    let n = if quick { 50 } else { 500 };
    let s = loadgen::execute(
        &exec_channel,
        loadgen::noop_actions(&exec_channel, n).await?,
        1,
    )
    .await?;
    row(
        "Execute no-op `true`, 1 client (Execute to COMPLETED)",
        &s,
        None,
    );
    let s = loadgen::execute(
        &exec_channel,
        loadgen::noop_actions(&exec_channel, n * 4).await?,
        64,
    )
    .await?;
    row("Execute no-op `true`, 64 clients, 32 executors", &s, None);
    Ok(())
}
