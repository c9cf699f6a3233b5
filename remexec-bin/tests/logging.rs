//! Log output, version, completions and man page of the real binary: JSON lines with
//! `--log-format json`, a warning for an invalid `REMEXEC_LOG`, the git commit in `--version`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The first `n` stderr lines of `remexec scheduler` started with `args` and `filter`.
fn first_lines(args: &[&str], filter: &str, n: usize) -> Vec<String> {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(args)
        .args(["scheduler", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("REMEXEC_LOG", filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .take(n)
        .map(Result::unwrap)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn json_logs_are_one_object_per_line_and_a_bad_filter_is_reported() {
    let lines = first_lines(&["--log-format", "json"], "info,remexec_bin=notalevel", 2);
    let warning: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
    let message = warning["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains("REMEXEC_LOG is not a valid filter"),
        "{warning}"
    );
    assert_eq!(warning["fields"]["filter"], "info,remexec_bin=notalevel");
    // The server goes on logging at info, still as JSON.
    let next: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(next["level"], "INFO", "{next}");

    let human = first_lines(&[], "info", 1);
    assert!(
        serde_json::from_str::<serde_json::Value>(&human[0]).is_err(),
        "{human:?}"
    );
    assert!(human[0].contains("INFO"), "{human:?}");
}

#[test]
fn the_version_names_the_git_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    assert_eq!(
        version.trim(),
        format!(
            "remexec {} (git {})",
            env!("CARGO_PKG_VERSION"),
            head.trim()
        )
    );
}

#[test]
fn completions_load_in_bash_and_the_man_page_is_roff() {
    let script = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remexec.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p remexec", path.display()))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&script.stdout).contains("dev-certs"));
    let man = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .arg("man")
        .output()
        .unwrap();
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(
        man.contains(".TH remexec"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("completions"));
}

#[test]
fn every_flag_reads_a_remexec_environment_variable() {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_positional() || ["help", "version"].contains(&id) {
                continue;
            }
            let named = arg
                .get_env()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.starts_with("REMEXEC_"));
            if !named {
                missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&remexec_bin::cli::Cli::command(), "remexec", &mut missing);
    assert!(
        missing.is_empty(),
        "flags without a REMEXEC_* variable: {missing:?}"
    );
}

#[test]
fn a_server_can_be_configured_from_the_environment_alone() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .arg("scheduler")
        .env("REMEXEC_LISTEN", "127.0.0.1:0")
        .env("REMEXEC_ADMIN_LISTEN", "127.0.0.1:0")
        .env("REMEXEC_DATA_DIR", data.path())
        .env("REMEXEC_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(2)
        .map(Result::unwrap)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        lines[0].starts_with("remexec: admin port on 127.0.0.1:"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("remexec: listening on 127.0.0.1:"),
        "{lines:?}"
    );
    assert!(data.path().join("cas").is_dir());
}

/// Logs written to a pipe (a file, journald) carry no ANSI colour codes, and the startup line
/// describes the pool as the stores are described, not as a dump of its state.
#[test]
fn logs_to_a_pipe_have_no_colour_and_the_pool_describes_itself() {
    let lines = first_lines(&[], "info", 4);
    let all = lines.join("\n");
    assert!(
        !all.contains('\u{1b}'),
        "ANSI escapes in piped logs: {all:?}"
    );
    let startup = lines
        .iter()
        .find(|l| l.contains("assembling the server"))
        .unwrap_or_else(|| panic!("no startup line in {all:?}"));
    assert!(
        startup.contains("pool=WorkerPool(0 workers, 0 executors)"),
        "{startup}"
    );
    assert!(!startup.contains("PoolInner"), "{startup}");
}
