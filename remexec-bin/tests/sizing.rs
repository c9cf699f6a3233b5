//! Learned sizing against real cgroups: an action that needs more memory than the small
//! executors give is killed there once, run again on a large one, and from then on sent to the
//! large ones at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::ServerProcess;

/// What the action prints: its cgroup's memory limit (v1 or v2), after holding 600 MiB (`tail`
/// keeps a line that never ends in memory).
const SCRIPT: &str = r#"head -c 629145600 /dev/zero | tail -n 1 >/dev/null || exit 9
cg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
if [ -n "$cg" ]; then cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes"
else cat "/sys/fs/cgroup$(awk -F: '$1 == 0 {print $3}' /proc/self/cgroup)/memory.max"; fi"#;

/// Runs the action with an input root holding `run` (a new action each time, of the same
/// shape): its exit code, output and action digest.
fn run(server: &ServerProcess, dir: &Path, run: u32) -> (i32, String, String) {
    let input = dir.join(format!("in{run}"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("run.txt"), run.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url()])
        .args(["--input", input.to_str().unwrap(), "--timeout", "120"])
        .args(["--", "sh", "-c", SCRIPT])
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let action = stderr
        .lines()
        .find_map(|l| l.strip_prefix("remexec exec: action "))
        .unwrap_or_else(|| panic!("no action digest: {stderr}"))
        .to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout + &stderr, action)
}

/// `remexec show action DIGEST`: the cached result, with its usage lines.
fn show(server: &ServerProcess, action: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["show", "action", action, "--server", &server.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_action_too_large_for_the_small_group_fails_once_then_always_lands_on_the_large_one() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: cgroups need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("groups.toml");
    // The small group first: with nothing learned, the first idle executor that matches runs
    // the action, and the small one is listed first.
    std::fs::write(
        &config,
        "[[worker.groups]]\nname = \"small\"\nexecutors = 1\nisolation = \"process\"\nmemory_per_action = \"256 MiB\"\n\n\
         [[worker.groups]]\nname = \"large\"\nexecutors = 1\nisolation = \"process\"\nmemory_per_action = \"1 GiB\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let large = (1u64 << 30).to_string();
    let (code, out, action) = run(&server, dir.path(), 1);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!("{large}\n")), "{out}");
    // The result says the first attempt was killed on the 256 MiB executor.
    let shown = show(&server, &action);
    eprintln!("first run:\n{shown}");
    assert!(
        shown.contains("sizing memory-mb 257 retried_after_memory_kill_on 256 MiB"),
        "{shown}"
    );
    // Its peak, measured on the large executor, was above the small one's limit.
    let peak = shown
        .lines()
        .find(|l| l.starts_with("resources "))
        .and_then(|l| l.split(" peak_memory ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|mib| mib.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(peak > 256.0, "{shown}");
    // From then on, actions of the same shape go to the large executor at once: asking for
    // the peak plus a tenth, and never retried.
    for n in 2..=4 {
        let (code, out, action) = run(&server, dir.path(), n);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("{large}\n")), "run {n}: {out}");
        let shown = show(&server, &action);
        eprintln!("run {n}:\n{shown}");
        let sizing = shown
            .lines()
            .find(|l| l.starts_with("sizing memory-mb "))
            .unwrap_or_else(|| panic!("run {n}: {shown}"));
        assert!(!sizing.contains("retried"), "run {n}: {shown}");
        let mb: u64 = sizing["sizing memory-mb ".len()..].parse().unwrap();
        assert!((600..=1024).contains(&mb), "run {n}: {shown}");
    }
    // Another shape (another command) knows nothing: it goes to the small executor first.
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url(), "--"])
        .args([
            "sh",
            "-c",
            &SCRIPT.replace("head -c 629145600", "head -c 1048576"),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("{}\n", 256u64 << 20), "{out:?}");
}
