//! `remexec bench` against an in-process server: every workload runs briefly and counts right.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use bytesize::ByteSize;
use remexec_bin::bench::{BenchArgs, WorkloadKind, run};
use remexec_bin::config::Config;
use remexec_bin::serve::{BoundServer, Role};

async fn server(role: Role) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().to_path_buf();
    config.cas.fsync = false;
    config.worker.executors = 4;
    let server = BoundServer::bind(&config, role).await.unwrap();
    let url = format!("grpc://{}", server.local_addr().unwrap());
    tokio::spawn(server.serve(futures::future::pending()));
    (url, dir)
}

fn args(kind: WorkloadKind, url: &str, count: u64) -> BenchArgs {
    let mut a = BenchArgs::new(kind, url);
    a.count = count;
    a.concurrency = 4;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_and_counts_right() {
    let (url, _dir) = server(Role::AllInOne).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // local worker attaches
    let mut cases = Vec::new();
    for batch in [false, true] {
        let mut a = args(WorkloadKind::CasWrite, &url, 12);
        a.size = ByteSize::kib(300);
        a.batch = batch;
        cases.push((a.clone(), 12 * 300 * 1024));
        a.workload = WorkloadKind::CasRead;
        a.blobs = 3;
        cases.push((a, 12 * 300 * 1024));
    }
    let mut big = args(WorkloadKind::CasWrite, &url, 3);
    big.size = ByteSize::mib(5);
    cases.push((big, 3 * 5 * 1024 * 1024));
    let mut find = args(WorkloadKind::FindMissing, &url, 20);
    find.batch_size = 500;
    cases.push((find, 0));
    cases.push((args(WorkloadKind::AcGet, &url, 50), 0));
    let mut miss = args(WorkloadKind::AcGet, &url, 50);
    miss.miss = true;
    cases.push((miss, 0));
    cases.push((args(WorkloadKind::Execute, &url, 20), 0));
    cases.push((args(WorkloadKind::Mixed, &url, 40), 2 * 4 * 4096));
    cases.push((args(WorkloadKind::Spawn, "none", 20), 0));
    for (a, bytes) in cases {
        let report = run(&a, false).await.unwrap();
        assert_eq!(
            (report.ops, report.errors),
            (a.count, 0),
            "{:?} batch={}: {:?}",
            a.workload,
            a.batch,
            report.first_error
        );
        let moved = (report.throughput_bytes_per_s * report.seconds).round() as u64;
        assert_eq!(moved, bytes, "{:?} bytes", a.workload);
        assert!(
            report.p50_s > 0.0
                && report.p50_s <= report.p90_s
                && report.p90_s <= report.p99_s
                && report.p99_s <= report.max_s * 1.001
        );
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in [
            "ops",
            "errors",
            "seconds",
            "ops_per_s",
            "throughput_bytes_per_s",
            "p50_s",
            "p90_s",
            "p99_s",
            "max_s",
        ] {
            assert!(json.get(key).is_some(), "json lacks {key}");
        }
        // Executed actions report where their time went, phase by phase; nothing else does.
        let phases: Vec<&str> = report.phases.iter().map(|p| p.name).collect();
        match a.workload {
            WorkloadKind::Execute => {
                assert_eq!(phases, remexec_core::client::bench::PHASES);
                let spans: f64 = report.phases.iter().map(|p| p.mean_s).sum();
                let whole = report.seconds / report.ops as f64 * a.concurrency as f64;
                assert!(spans > 0.0 && spans <= whole * 1.01, "{spans} of {whole}");
            }
            WorkloadKind::Mixed => assert_eq!(phases, remexec_core::client::bench::PHASES),
            _ => assert!(phases.is_empty(), "{:?}: {phases:?}", a.workload),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_as_errors() {
    let bad = args(WorkloadKind::AcGet, "grpc://127.0.0.1:1", 5);
    assert!(
        run(&bad, false).await.is_err(),
        "connecting to a dead target fails"
    );
    // A cache-only server has no Execution service: the setup uploads work, every Execute fails.
    let store = std::sync::Arc::new(remexec_cas::MemoryStore::new(64 << 20));
    let ac = std::sync::Arc::new(remexec_cas::MemoryActionCache::new(1 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    let routes = remexec_cas::CacheServices::new(store, ac).into_routes();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let report = run(&args(WorkloadKind::Execute, &url, 7), false)
        .await
        .unwrap();
    assert_eq!((report.ops, report.errors), (0, 7));
    assert!(
        report
            .first_error
            .unwrap()
            .to_lowercase()
            .contains("unimplemented")
    );
    // While the cache workloads against the same server succeed.
    let report = run(&args(WorkloadKind::AcGet, &url, 7), false)
        .await
        .unwrap();
    assert_eq!((report.ops, report.errors), (7, 0));
}
