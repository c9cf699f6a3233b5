//! A thousand workers on one scheduler: `WORKERS` simulated workers (default 1,000) of
//! `EXECUTORS` executors each (default 8) attach to one scheduler's WorkerService over real gRPC
//! on loopback, each on its own HTTP/2 connection. The simulated workers run in a second process
//! (this bench started again with `WORKERS_OF=URL`), so that this process holds the scheduler
//! alone: the scheduler, its in-memory CAS and the Execute operations. `ACTIONS` no-op actions
//! (default 100,000) are queued at once; each worker answers every lease at once with a
//! successful result. Prints dispatches per second (from the first lease to the last of the
//! queued actions, by the workers' clock); the dispatch latency, from a worker's result to the
//! next lease of the executor it freed, while actions are queued (p50, p99, max); the time from
//! queueing to the lease (with more actions than executors, mostly the wait for one); then, with
//! every executor idle, the time from Execute to the completed operation of `SINGLE` actions
//! (default 1,000) sent one at a time; and the scheduler process's RSS (idle, with the workers
//! attached, and peak) beside the workers' process's peak.
//!
//! `cargo bench -p remexec-scheduler --bench workers` (`WORKERS=100 ACTIONS=10000` for a quick
//! run).

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use remexec_core::ok_rpc_status;
use remexec_core::reapi::{ActionResult, ExecuteRequest};
use remexec_proto::worker::v1::scheduler_message::Message as S;
use remexec_proto::worker::v1::worker_message::Message as M;
use remexec_proto::worker::v1::{Executor, LeaseResult, Property, Register, WorkerMessage};
use remexec_scheduler::{Scheduler, SchedulerConfig, WorkerPool};
use support::{MapCache, MapStore, attach_with, response, serve_pool_url, store_action};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kilobytes on `field`'s line of /proc/self/status (`VmRSS`, `VmHWM`), in MiB.
fn memory(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The response `operation` ends with, however long it waits in the queue.
async fn finish(
    mut operation: tokio::sync::watch::Receiver<remexec_core::apis::google::longrunning::Operation>,
) -> remexec_core::reapi::ExecuteResponse {
    loop {
        let op = operation.borrow_and_update().clone();
        if op.done {
            return response(&op);
        }
        operation.changed().await.unwrap();
    }
}

/// What the simulated workers saw of the first `flood` leases (the queued actions).
struct Seen {
    flood: u64,
    /// From a result to the freed executor's next lease.
    dispatch: parking_lot::Mutex<Histogram<u64>>,
    /// From queueing to the lease.
    latency: parking_lot::Mutex<Histogram<u64>>,
    leases: AtomicU64,
    first: parking_lot::Mutex<Option<Instant>>,
    last: parking_lot::Mutex<Option<Instant>>,
}

/// Attaches worker `n` with `executors` executors; it answers every lease at once.
async fn worker(url: &str, n: usize, executors: usize, seen: Arc<Seen>) {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let register = Register {
        worker_name: format!("sim{n}"),
        executors: (0..executors)
            .map(|e| Executor {
                id: e.to_string(),
                properties: vec![Property {
                    name: "OSFamily".into(),
                    value: "linux".into(),
                }],
            })
            .collect(),
        heartbeat_interval_ms: 10_000,
        ..Default::default()
    };
    let (tx, mut inbound) = attach_with(&channel, register).await.unwrap();
    tokio::spawn(async move {
        let mut freed = std::collections::HashMap::new();
        while let Ok(Some(message)) = inbound.message().await {
            let Some(S::Lease(lease)) = message.message else {
                continue;
            };
            let n = seen.leases.fetch_add(1, Ordering::Relaxed);
            if n < seen.flood {
                if let Some(at) = freed.remove(&lease.executor_id) {
                    let gap = Instant::now().duration_since(at);
                    let _ = seen.dispatch.lock().record(gap.as_nanos().max(1) as u64);
                }
                let queued = UNIX_EPOCH + Duration::from_nanos(lease.queued_at_unix_nanos as u64);
                let waited = SystemTime::now().duration_since(queued).unwrap_or_default();
                let _ = seen.latency.lock().record(waited.as_nanos().max(1) as u64);
                seen.first.lock().get_or_insert_with(Instant::now);
                *seen.last.lock() = Some(Instant::now());
            }
            let result = LeaseResult {
                lease_id: lease.lease_id,
                result: Some(ActionResult::default()),
                status: Some(ok_rpc_status()),
            };
            let message = WorkerMessage {
                message: Some(M::Result(result)),
            };
            if tx.send(message).await.is_err() {
                return;
            }
            freed.insert(lease.executor_id, Instant::now());
        }
    });
}

/// Sends `SINGLE` actions one at a time, each once the last is done, and prints the latency
/// from Execute to the completed operation.
async fn one_at_a_time(scheduler: &Scheduler, cas: &MapStore) {
    let mut single = Histogram::<u64>::new(3).unwrap();
    for i in 0..env("SINGLE", 1000) {
        let args = ["true", "single", &i.to_string()];
        let d = store_action(cas, &args, &[("OSFamily", "linux")], true).await;
        let request = ExecuteRequest {
            action_digest: Some(d.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        };
        let sent = Instant::now();
        let operation = scheduler.execute(request).await.unwrap();
        finish(operation).await;
        let _ = single.record(sent.elapsed().as_nanos().max(1) as u64);
    }
    println!(
        "\nOne action at a time, every executor idle: Execute to completed operation p50 {:.2} \
         ms, p99 {:.2} ms, max {:.2} ms ({} actions).",
        single.value_at_quantile(0.5) as f64 / 1e6,
        single.value_at_quantile(0.99) as f64 / 1e6,
        single.max() as f64 / 1e6,
        single.len()
    );
}

/// The simulated workers' process: attaches `WORKERS` workers to `url`, answers every lease,
/// and when its standard input ends prints what it saw of the first `ACTIONS` leases on one
/// line: leases, seconds from the first to the last, dispatch p50, p99 and max, queued to
/// lease p50 and p99 (ms), and its own peak RSS (MiB).
async fn simulate(url: &str, workers: usize, executors: usize, actions: usize) {
    let seen = Arc::new(Seen {
        flood: actions as u64,
        dispatch: parking_lot::Mutex::new(Histogram::new(3).unwrap()),
        latency: parking_lot::Mutex::new(Histogram::new(3).unwrap()),
        leases: AtomicU64::new(0),
        first: parking_lot::Mutex::new(None),
        last: parking_lot::Mutex::new(None),
    });
    for chunk in (0..workers).collect::<Vec<_>>().chunks(100) {
        let attaching = chunk
            .iter()
            .map(|&n| worker(url, n, executors, Arc::clone(&seen)));
        futures::future::join_all(attaching).await;
    }
    let _ = tokio::task::spawn_blocking(|| {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
    })
    .await;
    let (first, last) = (*seen.first.lock(), *seen.last.lock());
    let seconds = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let (dispatch, latency) = (seen.dispatch.lock().clone(), seen.latency.lock().clone());
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!(
        "{} {seconds} {} {} {} {} {} {}",
        seen.leases.load(Ordering::Relaxed).min(seen.flood),
        ms(&dispatch, 0.5),
        ms(&dispatch, 0.99),
        dispatch.max() as f64 / 1e6,
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        memory("VmHWM"),
    );
}

async fn run(workers: usize, executors: usize, actions: usize) {
    let cas = Arc::new(MapStore::default());
    let pool = WorkerPool::new();
    let url = serve_pool_url(&pool).await;
    let scheduler = Scheduler::new(
        SchedulerConfig::default(),
        cas.clone(),
        Arc::new(MapCache::default()),
        Arc::new(pool.clone()),
    )
    .unwrap();
    let mut digests = Vec::with_capacity(actions);
    for i in 0..actions {
        let args = ["true", &i.to_string()];
        digests.push(store_action(cas.as_ref(), &args, &[("OSFamily", "linux")], true).await);
    }
    let idle = memory("VmRSS");
    let started = Instant::now();
    let mut simulated = std::process::Command::new(std::env::current_exe().unwrap())
        .env("WORKERS_OF", &url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while pool.workers().len() < workers {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attach_s = started.elapsed().as_secs_f64();
    let attached = memory("VmRSS");
    let start = Instant::now();
    let mut operations = Vec::with_capacity(actions);
    for d in &digests {
        let request = ExecuteRequest {
            action_digest: Some(d.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        };
        operations.push(scheduler.execute(request).await.unwrap());
    }
    let queued_s = start.elapsed().as_secs_f64();
    let done = futures::future::join_all(operations.into_iter().map(finish)).await;
    let failed = done.iter().filter(|r| r.result.is_none()).count();
    let done_s = start.elapsed().as_secs_f64();
    drop(done);
    let peak = memory("VmHWM");
    one_at_a_time(&scheduler, cas.as_ref()).await;
    drop(simulated.stdin.take());
    let out = tokio::task::spawn_blocking(move || simulated.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let seen: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let [leases, seconds, d50, d99, dmax, l50, l99, workers_peak] = seen[..] else {
        panic!("the simulated workers said {:?}", out.stdout);
    };
    println!(
        "| workers × executors | actions | failed | dispatches/s | dispatch p50 / p99 / max ms \
         | queued to lease p50 / p99 ms | scheduler RSS MiB: idle, attached, peak \
         | workers' process peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {workers} × {executors} | {leases} | {failed} | {:.0} | {d50:.2} / {d99:.2} / \
         {dmax:.2} | {l50:.0} / {l99:.0} | {idle:.0}, {attached:.0}, {peak:.0} \
         | {workers_peak:.0} |",
        leases / seconds,
    );
    println!(
        "\nAttaching took {attach_s:.2} s; queueing the actions {queued_s:.2} s; all were done \
         {done_s:.2} s after the first Execute."
    );
}

fn main() {
    let (workers, executors, actions) = (
        env("WORKERS", 1000),
        env("EXECUTORS", 8),
        env("ACTIONS", 100_000),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match std::env::var("WORKERS_OF") {
        Ok(url) => runtime.block_on(simulate(&url, workers, executors, actions)),
        Err(_) => runtime.block_on(run(workers, executors, actions)),
    }
}
