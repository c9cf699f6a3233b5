//! `Worker::execute` end to end with `ProcessIsolation` and an in-memory CAS.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use remexec_core::reapi::Directory;
use remexec_proto::worker::v1::LeaseResult;
use tokio_util::sync::CancellationToken;

use super::mem_cas::{MemCas, code, empty_root, file, lease, sh, subdir, symlink, worker};
use crate::WorkerConfig;

const UNAVAILABLE: i32 = tonic::Code::Unavailable as i32;
const FAILED_PRECONDITION: i32 = tonic::Code::FailedPrecondition as i32;

/// Runs `lease` on `w`, failing the test (instead of hanging) after `limit`.
async fn run(
    w: &crate::Worker,
    l: remexec_proto::worker::v1::Lease,
    limit: Duration,
) -> (LeaseResult, Duration) {
    let start = Instant::now();
    let result = tokio::time::timeout(limit, w.execute(l, CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("execute did not return within {limit:?}"));
    (result, start.elapsed())
}

fn message(r: &LeaseResult) -> String {
    r.status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn never_runs_two_leases_on_one_executor() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 2, &Arc::new(MemCas::default()), |_| {});
    let l = |id: &str, executor: &str| lease(id, executor, empty_root(), sh("sleep 0.5", &[]));
    let (a, b, c, d) = tokio::join!(
        worker.execute(l("a", "0"), CancellationToken::new()),
        worker.execute(l("b", "0"), CancellationToken::new()),
        worker.execute(l("c", "1"), CancellationToken::new()),
        worker.execute(l("d", "7"), CancellationToken::new()),
    );
    let codes = [code(&a), code(&b), code(&c), code(&d)];
    // Exactly one of the two leases for executor 0 ran; executor 1 ran; 7 does not exist. The
    // refused ones never started: ABORTED, which the scheduler re-queues freely.
    let aborted = tonic::Code::Aborted as i32;
    assert_eq!(
        codes.iter().filter(|c| **c == aborted).count(),
        2,
        "{codes:?}"
    );
    assert_eq!(codes[2], 0);
    assert_eq!(codes[3], aborted);
    assert!(a.result.is_some() || b.result.is_some());
    // Once finished, executor 0 takes a lease again.
    let e = worker.execute(l("e", "0"), CancellationToken::new()).await;
    assert_eq!(code(&e), 0);
}

#[tokio::test]
async fn swapped_stdout_fifos_and_devices_never_block_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(MemCas::default());
    let worker = worker(dir.path(), 1, &cas, |_| {});
    // The action replaces what used to be its stdout and stderr files (next to its input
    // root) with a FIFO and a symlink to /dev/zero, and declares FIFO and device outputs.
    let script = "echo hi; rm -f ../stdout ../stderr; mkfifo ../stdout; \
        ln -sf /dev/zero ../stderr; mkfifo out_fifo; ln -s /dev/zero out_zero; \
        mkdir d; mkfifo d/fifo; ln -s /dev/zero d/zero; echo data > d/file; \
        rm -r p/dev; ln -s /dev/zero p/dev";
    let outputs = ["out_fifo", "out_zero", "d", "p/dev/x"];
    let mut l = lease("swap", "0", empty_root(), sh(script, &outputs));
    l.timeout_ms = 20_000;
    let (r, took) = run(&worker, l, Duration::from_secs(60)).await;
    assert_eq!(code(&r), 0, "{}", message(&r));
    assert!(took < Duration::from_secs(30), "{took:?}");
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(cas.blob(result.stdout_digest.as_ref()).unwrap(), "hi\n");
    assert_eq!(cas.blob(result.stderr_digest.as_ref()).unwrap(), "");
    assert!(result.output_files.is_empty(), "{:?}", result.output_files);
    let links: Vec<_> = result.output_symlinks.iter().map(|s| &s.path).collect();
    assert_eq!(links, ["out_zero"]);
    assert_eq!(result.output_directories.len(), 1);
    // The same executor takes the next lease.
    let next = lease("next", "0", empty_root(), sh("exit 3", &[]));
    let (r, _) = run(&worker, next, Duration::from_secs(60)).await;
    assert_eq!(r.result.map(|r| r.exit_code), Some(3), "{:?}", r.status);
}

#[tokio::test]
async fn leases_without_a_timeout_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 1, &Arc::new(MemCas::default()), |c| {
        c.max_action_timeout = Duration::from_millis(500);
    });
    for timeout_ms in [0, 3_600_000] {
        let mut l = lease("forever", "0", empty_root(), sh("sleep 30", &[]));
        l.timeout_ms = timeout_ms;
        let (r, took) = run(&worker, l, Duration::from_secs(60)).await;
        assert_eq!(
            code(&r),
            tonic::Code::DeadlineExceeded as i32,
            "{timeout_ms}"
        );
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
    let mut config = WorkerConfig::new("w", dir.path().join("other"), 1, vec![]);
    assert_eq!(config.action_timeout(0), Duration::from_secs(3600));
    assert_eq!(config.action_timeout(1500), Duration::from_millis(1500));
    assert_eq!(config.action_timeout(u64::MAX), Duration::from_secs(3600));
    config.max_action_timeout = Duration::ZERO;
    let cas: Arc<dyn remexec_core::BlobStore> = Arc::new(MemCas::default());
    assert!(crate::Worker::new(config, cas, Arc::new(crate::ProcessIsolation::default())).is_err());
}

#[tokio::test]
async fn staging_and_upload_have_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(MemCas::default());
    let worker = worker(dir.path(), 1, &cas, |c| {
        c.input_fetch_timeout = Duration::from_millis(300);
        c.output_upload_timeout = Duration::from_millis(300);
    });
    let x = cas.add("input");
    let root = cas.add_dir(&Directory {
        files: vec![file("x", x)],
        ..Default::default()
    });
    cas.hang_gets.store(true, Ordering::Relaxed);
    let (r, took) = run(
        &worker,
        lease("fetch", "0", root, sh("true", &[])),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code(&r), UNAVAILABLE);
    assert!(
        message(&r).contains("input fetch") && message(&r).contains("300ms"),
        "{}",
        message(&r)
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    cas.hang_gets.store(false, Ordering::Relaxed);
    cas.hang_puts.store(true, Ordering::Relaxed);
    let l = lease("upload", "0", empty_root(), sh("echo out > o", &["o"]));
    let (r, took) = run(&worker, l, Duration::from_secs(60)).await;
    assert_eq!(code(&r), UNAVAILABLE);
    assert!(message(&r).contains("output upload"), "{}", message(&r));
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(r.result.is_none());
}

#[tokio::test]
async fn too_large_results_fail_only_their_action() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(MemCas::default());
    let worker = worker(dir.path(), 1, &cas, |c| c.max_message_size = 4096);
    let names: Vec<String> = (0..200)
        .map(|i| format!("an_output_file_with_a_long_name_{i:03}"))
        .collect();
    let outputs: Vec<&str> = names.iter().map(String::as_str).collect();
    let script = format!("touch {}", names.join(" "));
    let l = lease("big", "0", empty_root(), sh(&script, &outputs));
    let (r, _) = run(&worker, l, Duration::from_secs(60)).await;
    assert_eq!(
        code(&r),
        tonic::Code::ResourceExhausted as i32,
        "{:?}",
        r.status
    );
    assert!(r.result.is_none());
    assert!(
        message(&r).contains("limit is 4096 bytes"),
        "{}",
        message(&r)
    );
    // A small result still goes through.
    let (r, _) = run(
        &worker,
        lease("small", "0", empty_root(), sh("touch a", &["a"])),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code(&r), 0, "{:?}", r.status);
    assert_eq!(r.result.unwrap().output_files.len(), 1);
}

#[tokio::test]
async fn output_symlinks_obey_the_symlink_policy() {
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 1, &Arc::new(MemCas::default()), |_| {});
    for (script, output, named) in [
        ("ln -s ../../etc/passwd escape", "escape", "escape"),
        ("mkdir d; ln -s ../../x d/bad", "d", "d/bad"),
    ] {
        let (r, _) = run(
            &worker,
            lease("ln", "0", empty_root(), sh(script, &[output])),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(code(&r), FAILED_PRECONDITION, "{:?}", r.status);
        assert!(message(&r).contains(named), "{}", message(&r));
    }
    let ok = "ln -s sub/../x fine; ln -s /usr/bin abs";
    let (r, _) = run(
        &worker,
        lease("ok", "0", empty_root(), sh(ok, &["fine", "abs"])),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code(&r), 0, "{:?}", r.status);
    assert_eq!(r.result.unwrap().output_symlinks.len(), 2);
}

#[tokio::test]
async fn input_symlinks_never_make_the_worker_create_outside() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let cas = Arc::new(MemCas::default());
    let worker = worker(dir.path(), 1, &cas, |_| {});
    let target = outside.path().to_str().unwrap();
    let root = cas.add_dir(&Directory {
        symlinks: vec![symlink("out", target)],
        ..Default::default()
    });
    let pkg = cas.add_dir(&Directory {
        symlinks: vec![symlink("wd", target)],
        ..Default::default()
    });
    let root2 = cas.add_dir(&Directory {
        directories: vec![subdir("pkg", pkg)],
        ..Default::default()
    });
    let mut in_wd = sh("true", &["o"]);
    in_wd.working_directory = "pkg/wd/sub".into();
    for l in [
        lease("out", "0", root, sh("true", &["out/sub/x"])),
        lease("wd", "0", root2, in_wd),
    ] {
        let (r, _) = run(&worker, l, Duration::from_secs(60)).await;
        assert_eq!(code(&r), FAILED_PRECONDITION, "{:?}", r.status);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

/// BuildStream's shape: a working directory below the input root, outputs `.` and a path
/// that climbs to a sibling of it, and `DIRECTORY_ONLY`. Both outputs come back under the
/// paths the command gave, each with its Tree and its root Directory (whose blobs are in the
/// CAS); `TREE_ONLY` gets no root Directory; an output that climbs above the input root fails
/// the lease `INVALID_ARGUMENT` rather than collect anything outside it.
#[tokio::test]
async fn dotted_outputs_come_back_as_given_with_their_directories() {
    use prost::Message;
    use remexec_core::reapi::command::OutputDirectoryFormat;
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(MemCas::default());
    let worker = worker(dir.path(), 1, &cas, |_| {});
    let script = "echo here > f; mkdir -p ../../install/sub; echo there > ../../install/sub/g";
    let outputs = [".", "../../install"];
    let command = |format: OutputDirectoryFormat| {
        let mut command = sh(script, &outputs);
        command.working_directory = "bst/elem".into();
        command.output_directory_format = format as i32;
        command
    };
    let l = lease(
        "dirs",
        "0",
        empty_root(),
        command(OutputDirectoryFormat::DirectoryOnly),
    );
    let (r, _) = run(&worker, l, Duration::from_secs(60)).await;
    assert_eq!(code(&r), 0, "{}", message(&r));
    let result = r.result.unwrap();
    let paths: Vec<&str> = result
        .output_directories
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    assert_eq!(paths, outputs);
    let root_of = |i: usize| {
        let d = &result.output_directories[i];
        assert!(d.tree_digest.is_some());
        let bytes = cas
            .blob(d.root_directory_digest.as_ref())
            .expect("root Directory in the CAS");
        Directory::decode(bytes).unwrap()
    };
    let names = |d: &Directory| -> Vec<String> {
        let files = d.files.iter().map(|f| f.name.clone());
        files
            .chain(d.directories.iter().map(|d| d.name.clone()))
            .collect()
    };
    assert_eq!(names(&root_of(0)), ["f"]);
    let install = root_of(1);
    assert_eq!(names(&install), ["sub"]);
    let sub = cas.blob(install.directories[0].digest.as_ref()).unwrap();
    assert_eq!(names(&Directory::decode(sub).unwrap()), ["g"]);

    let l = lease(
        "tree",
        "0",
        empty_root(),
        command(OutputDirectoryFormat::TreeOnly),
    );
    let (r, _) = run(&worker, l, Duration::from_secs(60)).await;
    let result = r.result.unwrap();
    assert_eq!(result.output_directories.len(), 2);
    assert!(
        result
            .output_directories
            .iter()
            .all(|d| d.root_directory_digest.is_none())
    );

    let mut escaping = command(OutputDirectoryFormat::TreeOnly);
    escaping.output_paths = vec!["../../../outside".into()];
    let (r, _) = run(
        &worker,
        lease("out", "0", empty_root(), escaping),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        code(&r),
        tonic::Code::InvalidArgument as i32,
        "{}",
        message(&r)
    );
    assert!(
        message(&r).contains("climbs above the input root"),
        "{}",
        message(&r)
    );
}
