//! `remexec cas upload|download` and `remexec ac get` against a real `remexec serve`.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::ServerProcess;

/// `remexec SUBCOMMAND… --server URL ARGS…` in `cwd`.
fn remexec(server: &ServerProcess, sub: &[&str], args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(sub)
        .args(["--server", &server.url()])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_tree_uploaded_downloads_identically_and_a_file_gets_its_own_digest() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/x.txt"), "hello\n").unwrap();
    std::fs::write(src.join("a/b/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("a/b/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("a/x.txt", src.join("link")).unwrap();

    let root = stdout(&remexec(&server, &["cas", "upload"], &["src"], work.path()));
    let root = root.trim();
    assert!(
        root.ends_with(char::is_numeric) && root.len() > 65,
        "{root}"
    );
    let got = work.path().join("got");
    stdout(&remexec(
        &server,
        &["cas", "download"],
        &[root, "got"],
        work.path(),
    ));
    assert_eq!(
        std::fs::read_to_string(got.join("a/x.txt")).unwrap(),
        "hello\n"
    );
    let mode = std::fs::metadata(got.join("a/b/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "the executable bit is lost");
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("a/x.txt")
    );
    // The same tree uploads to the same digest.
    assert_eq!(
        stdout(&remexec(&server, &["cas", "upload"], &["got"], work.path())).trim(),
        root
    );

    let file = stdout(&remexec(
        &server,
        &["cas", "upload"],
        &["src/a/x.txt"],
        work.path(),
    ));
    assert_eq!(
        file.trim(),
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03/6"
    );
    // A digest that is not there: an error, and nothing written.
    let missing = format!("{}/12", "0".repeat(64));
    let out = remexec(
        &server,
        &["cas", "download"],
        &[&missing, "none"],
        work.path(),
    );
    assert!(!out.status.success());
    assert!(!work.path().join("none").exists());
    let bad = remexec(
        &server,
        &["cas", "download"],
        &["not-a-digest", "none"],
        work.path(),
    );
    assert!(!bad.status.success());
}

#[test]
fn ac_get_prints_a_cached_result_and_exits_1_for_a_miss() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let ran = remexec(
        &server,
        &["exec"],
        &[
            "--output",
            "out.txt",
            "--",
            "sh",
            "-c",
            "echo cached > out.txt",
        ],
        work.path(),
    );
    assert!(ran.status.success());
    let stderr = String::from_utf8(ran.stderr).unwrap();
    let action = stderr
        .lines()
        .find_map(|l| l.strip_prefix("remexec exec: action "))
        .unwrap();
    let shown = stdout(&remexec(&server, &["ac", "get"], &[action], work.path()));
    assert!(shown.starts_with("exit_code: 0\n"), "{shown}");
    assert!(shown.contains("file out.txt "), "{shown}");
    assert!(shown.contains("worker "), "{shown}");
    let miss = remexec(
        &server,
        &["ac", "get"],
        &[&format!("{}/1", "0".repeat(64))],
        work.path(),
    );
    assert_eq!(miss.status.code(), Some(1));
}

#[test]
fn show_prints_an_action_and_its_operation() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    std::fs::create_dir(work.path().join("in")).unwrap();
    std::fs::write(work.path().join("in/a.txt"), "input\n").unwrap();
    let ran = remexec(
        &server,
        &["exec"],
        &[
            "--input",
            "in",
            "--no-cache",
            "--",
            "sh",
            "-c",
            "cat a.txt; echo oops >&2; exit 3",
        ],
        work.path(),
    );
    assert_eq!(ran.status.code(), Some(3));
    let stderr = String::from_utf8(ran.stderr).unwrap();
    let field = |prefix: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let action = field("remexec exec: action ");
    let operation = format!("operations/{}", field("remexec exec: operations/"));
    let shown = stdout(&remexec(
        &server,
        &["show", "action"],
        &[&action],
        work.path(),
    ));
    assert!(
        shown.contains(r#"command ["sh", "-c", "cat a.txt; echo oops >&2; exit 3"]"#),
        "{shown}"
    );
    assert!(shown.contains("1 directories, 1 files, 6 bytes"), "{shown}");
    // A failed action is not cached, so its action shows no result...
    assert!(shown.contains("result: not cached"), "{shown}");
    // ...but its operation does, with its output.
    let op = stdout(&remexec(
        &server,
        &["show", "operation"],
        &[&operation],
        work.path(),
    ));
    assert!(op.contains("stage COMPLETED"), "{op}");
    assert!(op.contains("exit_code: 3"), "{op}");
    assert!(
        op.contains("--- stdout\ninput") && op.contains("--- stderr\noops"),
        "{op}"
    );
    let missing = remexec(
        &server,
        &["show", "operation"],
        &["operations/s0/nothing"],
        work.path(),
    );
    assert!(!missing.status.success());
}

#[test]
fn transfers_show_a_progress_bar_on_a_terminal_only() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let big = work.path().join("tree");
    std::fs::create_dir(&big).unwrap();
    // Incompressible, so that the transfer takes a moment.
    let bytes: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(big.join("big.bin"), bytes).unwrap();
    let upload = |extra: &str| {
        format!(
            "{} cas upload {} --server {} {extra}",
            env!("CARGO_BIN_EXE_remexec"),
            big.display(),
            server.url()
        )
    };
    // On a terminal (`script` gives the command a pseudo-terminal), once the transfer has
    // taken longer than --progress-after, a bar shows bytes and rate.
    let out = Command::new("script")
        .args(["-qec", &upload("--progress-after 0s"), "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains(" uploaded ("),
        "no progress bar on a terminal:\n{tty}"
    );
    // Not on a pipe, however long it takes: stderr stays clean for scripts.
    let piped = remexec(
        &server,
        &["cas", "upload"],
        &[big.to_str().unwrap(), "--progress-after", "0s"],
        work.path(),
    );
    let digest = stdout(&piped);
    assert!(
        tty.contains(digest.trim()),
        "same digest on a terminal:\n{tty}"
    );
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    // Nor on a terminal when the transfer is quicker than the moment.
    let out = Command::new("script")
        .args(["-qec", &upload("--progress-after 1h"), "/dev/null"])
        .output()
        .unwrap();
    let quick = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{quick}");
    assert!(
        !quick.contains(" uploaded ("),
        "a bar for a quick transfer:\n{quick}"
    );
    // Downloading shows one too.
    let dir = work.path().join("down");
    let out = Command::new("script")
        .args([
            "-qec",
            &format!(
                "{} cas download {} {} --server {} --progress-after 0s",
                env!("CARGO_BIN_EXE_remexec"),
                digest.trim(),
                dir.display(),
                server.url()
            ),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains(" downloaded ("),
        "no progress bar downloading:\n{tty}"
    );
    assert_eq!(
        std::fs::read(dir.join("big.bin")).unwrap(),
        std::fs::read(big.join("big.bin")).unwrap()
    );
}
