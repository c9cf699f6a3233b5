//! The scheduler's hot paths: platform matching, one dispatch pass over a large queue indexed
//! by platform, and queueing plus dispatch of many actions through an executor pool that
//! completes instantly.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use remexec_core::reapi::ExecuteRequest;
use remexec_scheduler::platform::MatchRules;
use remexec_scheduler::{DispatchBench, Scheduler, SchedulerConfig};
use support::{FakePool, MapCache, MapStore, store_action};

fn matching(c: &mut Criterion) {
    let rules = MatchRules::default();
    let executor: Vec<(String, String)> = (0..20)
        .map(|i| (format!("prop{i}"), format!("value{i}")))
        .chain([("cpu-count".into(), "16".into())])
        .collect();
    let requested: Vec<(String, String)> = vec![
        ("prop3".into(), "value3".into()),
        ("prop17".into(), "value17".into()),
        ("cpu-count".into(), "8".into()),
    ];
    c.bench_function("platform/matches 3 of 21 properties", |b| {
        b.iter(|| rules.matches(&requested, &executor))
    });
}

fn dispatch_pass(c: &mut Criterion) {
    // 36 platform classes; every other executor is busy, so 250 idle ones get jobs.
    let mut bench = DispatchBench::new(10_000, 36, 500);
    c.bench_function(
        "scheduler/dispatch pass: 10,000 queued in 36 classes, 500 executors",
        |b| b.iter(|| bench.pass()),
    );
}

fn queue(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cas = Arc::new(MapStore::default());
    let pool = FakePool::new(16, &[], FakePool::ok());
    let scheduler = rt.block_on(async {
        Scheduler::new(
            SchedulerConfig::default(),
            cas.clone(),
            Arc::new(MapCache::default()),
            Arc::new(pool),
        )
        .expect("scheduler")
    });
    let actions: Vec<_> = rt.block_on(async {
        let mut actions = Vec::new();
        for i in 0..200 {
            actions.push(store_action(cas.as_ref(), &["a", &i.to_string()], &[], true).await);
        }
        actions
    });
    c.bench_function(
        "scheduler/execute+dispatch+complete 200 uncached actions",
        |b| {
            b.to_async(&rt).iter(|| async {
                let waits = actions.iter().map(|d| {
                    let scheduler = scheduler.clone();
                    let req = ExecuteRequest {
                        action_digest: Some(d.to_proto()),
                        skip_cache_lookup: true,
                        ..Default::default()
                    };
                    async move {
                        let mut rx = scheduler.execute(req).await.expect("execute");
                        while !rx.borrow_and_update().done {
                            rx.changed().await.expect("operation");
                        }
                    }
                });
                futures::future::join_all(waits).await;
            })
        },
    );
}

criterion_group!(benches, matching, dispatch_pass, queue);
criterion_main!(benches);
