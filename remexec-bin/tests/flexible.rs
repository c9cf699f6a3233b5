//! A flexible worker re-partitions its CPUs as the queue changes: 4 one-CPU executors while
//! one-CPU actions wait, 1 four-CPU executor when four-CPU actions have waited long enough, and
//! back; every action runs once, and never more CPUs are promised than the worker has.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ServerProcess;

const CONFIG: &str = r#"
[worker.flexible]
groups = ["small", "large"]
max_wait_secs = 1
cpus = 4

[[worker.groups]]
name = "small"
executors = 4
cpus_per_action = 1.0
properties = { shape = "small" }

[[worker.groups]]
name = "large"
executors = 1
cpus_per_action = 4.0
properties = { shape = "large" }
"#;

/// One action's run as it reported it.
#[derive(Debug)]
struct Run {
    id: String,
    cpus: u64,
    start: u128,
    end: u128,
}

/// Runs action `id` asking for `shape`: it appends its id to `log`, sleeps and prints
/// `id start end` (nanoseconds).
fn action(server: &ServerProcess, log: &std::path::Path, id: &str, shape: &str) -> Run {
    let cwd = tempfile::tempdir().unwrap();
    let script = format!(
        "s=$(date +%s%N); echo {id} >> {log}; sleep 0.7; echo {id} $s $(date +%s%N)",
        log = log.display()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url(), "--no-cache"])
        .args(["--platform", &format!("shape={shape}")])
        .args(["--", "sh", "-c", &script])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{id}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{stdout}");
    Run {
        id: fields[0].to_string(),
        cpus: if shape == "large" { 4 } else { 1 },
        start: fields[1].parse().unwrap(),
        end: fields[2].parse().unwrap(),
    }
}

#[test]
fn a_flexible_worker_switches_shapes_with_the_queue_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flexible.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // Actions may run as another user: the shared log is open to them.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = shared.join("runs.log");
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    // 8 small actions, then 2 large ones, then 4 small ones more.
    let plan: Vec<(String, &str, u64)> = (0..8)
        .map(|i| (format!("small{i}"), "small", 0))
        .chain((0..2).map(|i| (format!("large{i}"), "large", 300)))
        .chain((8..12).map(|i| (format!("small{i}"), "small", 600)))
        .collect();
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .map(|(id, shape, delay)| {
                let (server, log) = (&server, &log);
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(*delay));
                    action(server, log, id, shape)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every action ran once.
    let logged = std::fs::read_to_string(&log).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in logged.lines() {
        *counts.entry(id).or_default() += 1;
    }
    for (id, _, _) in &plan {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} in {logged}");
    }
    assert_eq!(counts.len(), plan.len(), "{logged}");
    // Never more than 4 CPUs promised: at every start, the running actions fit.
    for run in &runs {
        let at = run.start;
        let used: u64 = runs
            .iter()
            .filter(|r| r.start <= at && at < r.end)
            .map(|r| r.cpus)
            .sum();
        assert!(
            used <= 4,
            "{used} CPUs at the start of {}: {runs:#?}",
            run.id
        );
    }
    // Small, then large, then small again: the worker switched and switched back.
    let first = runs
        .iter()
        .filter(|r| r.cpus == 4)
        .min_by_key(|r| r.start)
        .unwrap();
    let (first_large, first_large_end) = (first.start, first.end);
    let small = || runs.iter().filter(|r| r.cpus == 1);
    assert!(
        small().any(|r| r.end <= first_large),
        "no small action before the large ones: {runs:#?}"
    );
    assert!(
        small().any(|r| r.start >= first_large_end),
        "no small action after a large one: {runs:#?}"
    );
    assert_eq!(
        small().filter(|r| r.start < first_large).count(),
        small().filter(|r| r.end <= first_large).count(),
        "small actions overlapped large ones: {runs:#?}"
    );
}

#[test]
fn flexible_shapes_that_promise_too_much_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, why) in [
        (
            CONFIG.replace("cpus = 4\n", "cpus = 2\n"),
            "must fit in the 2 CPUs",
        ),
        (CONFIG.replace("\"large\"]", "\"huge\"]"), "no such"),
        (
            CONFIG.replace("groups = [\"small\", \"large\"]", "groups = [\"small\"]"),
            "two or more shapes",
        ),
        // A group in no shape takes 1 CPU of the 4: the 4-CPU shape no longer fits.
        (
            format!(
                "{CONFIG}\n[[worker.groups]]\nname = \"always\"\nexecutors = 1\ncpus_per_action = 1.0\n"
            ),
            "must fit in the 3 CPUs",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, bad).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    }
}
