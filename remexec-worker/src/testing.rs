//! The conformance suite that every [`Isolation`] backend runs (feature `testing`).
//!
//! Each contract point is a named function that takes the isolation, runs `/bin/sh` commands
//! in a scratch directory of its own and panics with a description of what broke.
//! [`isolation_conformance`] runs them all. The commands need `/bin/sh`, `/bin/cat`, `sleep`,
//! `env` and `pwd` in `/usr/bin:/bin`, and the host's `/proc` to tell whether a process lives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are how it reports

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{Exit, Isolation, Spawn};
use remexec_core::usage::ActionUsage;

/// The `PATH` the suite's commands get.
const PATH: &str = "/usr/bin:/bin";

/// How long a command that should be killed may take to go.
const PROMPT: Duration = Duration::from_secs(30);

/// A command run by [`run`]: what it printed and how it ended.
#[derive(Debug)]
struct Outcome {
    exit: Exit,
    usage: ActionUsage,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn path_env() -> Vec<(String, String)> {
    vec![("PATH".into(), PATH.into())]
}

/// An input root for one check: in a sandbox made ahead of need where the isolation has one
/// ready ([`Isolation::ready`], asked each time, so that later checks find those the earlier
/// ones had made), else in a scratch directory. Removed when dropped.
struct Scratch {
    root: std::path::PathBuf,
    remove: std::path::PathBuf,
}

impl Scratch {
    fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.remove);
    }
}

/// See [`Scratch`]. Sandboxes are made in one directory per process (below the system's
/// temporary directory), so that those made for one check serve the next.
async fn scratch(isolation: &dyn Isolation) -> Scratch {
    static DIRS: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        let dirs = std::env::temp_dir().join(format!("remexec-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dirs).unwrap();
        dirs
    });
    let ahead = crate::Ahead {
        executor: "0",
        dirs: &DIRS,
        platform: &[],
    };
    let dir = match isolation.ready(ahead).await {
        Some(dir) => dir,
        None => tempfile::tempdir().unwrap().keep(),
    };
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    Scratch { root, remove: dir }
}

/// A spawn of `args` in `cwd` with output to fresh unlinked files, which are returned too.
fn spawn(args: Vec<String>, cwd: &Path, timeout: Option<Duration>) -> (Spawn, File, File) {
    let stdout = tempfile::tempfile().unwrap();
    let stderr = tempfile::tempfile().unwrap();
    let spawn = Spawn {
        args,
        env: path_env(),
        cwd: cwd.to_path_buf(),
        input_root: cwd.to_path_buf(),
        platform: Vec::new(),
        executor: "0".into(),
        stdout: stdout.try_clone().unwrap(),
        stderr: stderr.try_clone().unwrap(),
        timeout,
    };
    (spawn, stdout, stderr)
}

fn read_back(mut file: File) -> String {
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    text
}

/// Runs `spawn` (whose output files are `out` and `err`) and cancels it after `cancel_after`.
async fn run_with(
    isolation: &dyn Isolation,
    (spawn, out, err): (Spawn, File, File),
    cancel_after: Option<Duration>,
) -> Outcome {
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let run = isolation.run(spawn, cancel.clone());
    let canceller = async {
        if let Some(after) = cancel_after {
            tokio::time::sleep(after).await;
            cancel.cancel();
        }
    };
    let (ended, ()) = tokio::join!(run, canceller);
    let ended = ended.expect("the command must run");
    Outcome {
        exit: ended.exit,
        usage: ended.usage,
        stdout: read_back(out),
        stderr: read_back(err),
        took: start.elapsed(),
    }
}

/// Runs a shell script in `cwd`.
async fn run(isolation: &dyn Isolation, cwd: &Path, script: &str) -> Outcome {
    run_with(isolation, spawn(sh(script), cwd, Some(PROMPT)), None).await
}

/// The processes on this host (as the host's `/proc` lists them) running `sleep MARKER`,
/// neither zombies nor dead and being torn down (a process killed with its PID namespace is
/// state `X` for a moment).
fn sleeping(marker: &str) -> Vec<String> {
    let wanted = format!("sleep\0{marker}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid = e.ok()?.file_name().into_string().ok()?;
        pid.parse::<u32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let gone = stat.contains(") Z ") || stat.contains(") X ");
        (cmdline.ends_with(wanted.as_bytes()) && !gone).then_some(pid)
    })
    .collect()
}

/// Waits up to five seconds for every `sleep MARKER` to be gone, and panics if one is not.
async fn assert_dies(marker: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sleeping(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = sleeping(marker);
    assert!(
        left.is_empty(),
        "{what}: processes {left:?} outlived their command"
    );
}

/// A `sleep` duration no other process uses: the mark of one test's background process, found
/// by its command line, whatever PID namespace and `/proc` the command sees.
fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("300.{}{nanos:09}", std::process::id())
}

/// A script that starts a background `sleep MARKER` (which says so by creating `bg.pid`),
/// waits until it runs, then runs `rest`.
fn with_background(marker: &str, rest: &str) -> String {
    format!(
        "sh -c 'echo > bg.tmp; mv bg.tmp bg.pid; exec sleep {marker}' & \
         while [ ! -e bg.pid ]; do sleep 0.02; done; {rest}"
    )
}

/// Runs every [`Isolation`] contract check against `isolation`.
pub async fn isolation_conformance(isolation: &dyn Isolation) {
    exit_codes(isolation).await;
    output_goes_to_the_given_files(isolation).await;
    stdin_is_empty(isolation).await;
    environment_is_exactly_as_given(isolation).await;
    program_is_looked_up_in_the_given_path(isolation).await;
    working_directory_is_as_given(isolation).await;
    timeout_kills_the_command(isolation).await;
    cancel_kills_the_command(isolation).await;
    background_processes_die_on_exit(isolation).await;
    background_processes_die_on_timeout(isolation).await;
    background_processes_die_on_cancel(isolation).await;
    missing_program_is_err(isolation).await;
    usage_covers_every_process(isolation).await;
}

/// What a command used, where the backend measures it, covers every process it started: a
/// child that fills a 64 MiB buffer (`dd`, reading `/dev/zero` into it and writing it to
/// `/dev/null`) shows in the peak memory, the CPU time and the bytes read and written. A
/// backend that measures nothing says so ([`ActionUsage::measured`] is false).
pub async fn usage_covers_every_process(isolation: &dyn Isolation) {
    measured_usage(isolation).await;
}

/// [`usage_covers_every_process`], for a backend that must measure: the supervised process
/// backend, and any with cgroups of its own for each action.
pub async fn usage_is_measured(isolation: &dyn Isolation) {
    let usage = measured_usage(isolation).await;
    assert!(usage.measured(), "{usage:?}");
    assert!(usage.read_bytes.is_some(), "{usage:?}");
}

async fn measured_usage(isolation: &dyn Isolation) -> ActionUsage {
    const BUFFER: u64 = 64 << 20;
    let dir = scratch(isolation).await;
    let script = format!("dd if=/dev/zero of=/dev/null bs={BUFFER} count=2 2>/dev/null; exit 0");
    let outcome = run(isolation, dir.path(), &script).await;
    assert_eq!(outcome.exit, Exit::Exited(0), "{outcome:?}");
    let usage = outcome.usage;
    if !usage.measured() {
        assert_eq!(usage, ActionUsage::default(), "{outcome:?}");
        return usage;
    }
    assert!(usage.peak_memory_bytes >= BUFFER, "{usage:?}");
    assert!(usage.peak_memory_bytes < 16 * BUFFER, "{usage:?}");
    assert!(
        usage.user_cpu_micros + usage.system_cpu_micros > 0,
        "{usage:?}"
    );
    assert!(!usage.memory_killed, "{usage:?}");
    if let (Some(read), Some(written)) = (usage.read_bytes, usage.written_bytes) {
        assert!(read >= 2 * BUFFER && written >= 2 * BUFFER, "{usage:?}");
    }
    usage
}

/// A command's own exit code is `Exited(code)`, and death by a signal is `Exited(128 + n)`.
pub async fn exit_codes(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    for (script, want) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("false", 1),
        ("kill -9 $$", 128 + 9),
        ("kill -15 $$", 128 + 15),
    ] {
        let outcome = run(isolation, dir.path(), script).await;
        assert_eq!(outcome.exit, Exit::Exited(want), "`{script}`");
    }
}

/// Standard output and standard error go to the given files, each to its own, in full (1 MiB
/// of output included).
pub async fn output_goes_to_the_given_files(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let outcome = run(isolation, dir.path(), "echo out; echo err >&2; echo more").await;
    assert_eq!(outcome.exit, Exit::Exited(0));
    assert_eq!(outcome.stdout, "out\nmore\n");
    assert_eq!(outcome.stderr, "err\n");

    let script = "i=0; while [ $i -lt 16384 ]; do \
                  echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde; \
                  i=$((i+1)); done";
    let outcome = run(isolation, dir.path(), script).await;
    assert_eq!(outcome.exit, Exit::Exited(0));
    assert_eq!(outcome.stdout.len(), 1 << 20, "1 MiB of standard output");
    assert!(outcome.stderr.is_empty());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "output must not land in the working directory"
    );
}

/// Standard input is empty: a command reading it sees end of file at once.
pub async fn stdin_is_empty(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let spawn = spawn(vec!["/bin/cat".into()], dir.path(), Some(PROMPT));
    let outcome = run_with(isolation, spawn, None).await;
    assert_eq!(
        outcome.exit,
        Exit::Exited(0),
        "cat of standard input: {outcome:?}"
    );
    assert!(outcome.stdout.is_empty());
}

/// The command sees exactly the given environment, nothing inherited from the worker.
pub async fn environment_is_exactly_as_given(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let (mut empty, out, err) = spawn(vec!["/usr/bin/env".into()], dir.path(), Some(PROMPT));
    empty.env.clear();
    let outcome = run_with(isolation, (empty, out, err), None).await;
    assert_eq!(outcome.exit, Exit::Exited(0), "{outcome:?}");
    assert_eq!(outcome.stdout, "", "an empty environment inherits nothing");

    let (mut given, out, err) = spawn(vec!["/usr/bin/env".into()], dir.path(), Some(PROMPT));
    given.env = vec![
        ("GREETING".into(), "hello world".into()),
        ("EMPTY".into(), String::new()),
        ("ODD".into(), "a=b;$HOME 'x' \"y\"".into()),
        ("PATH".into(), "/nowhere".into()),
    ];
    let outcome = run_with(isolation, (given, out, err), None).await;
    assert_eq!(outcome.exit, Exit::Exited(0), "{outcome:?}");
    let mut got: Vec<&str> = outcome.stdout.lines().collect();
    got.sort_unstable();
    let mut want = vec![
        "GREETING=hello world",
        "EMPTY=",
        "ODD=a=b;$HOME 'x' \"y\"",
        "PATH=/nowhere",
    ];
    want.sort_unstable();
    assert_eq!(got, want, "the environment exactly as given");
}

/// A program without a `/` is looked up in the given `PATH`, not the worker's.
pub async fn program_is_looked_up_in_the_given_path(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let (found, out, err) = spawn(
        vec!["sh".into(), "-c".into(), "exit 4".into()],
        dir.path(),
        Some(PROMPT),
    );
    let outcome = run_with(isolation, (found, out, err), None).await;
    assert_eq!(outcome.exit, Exit::Exited(4), "`sh` on PATH={PATH}");

    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let (mut nowhere, _out, _err) = spawn(vec!["sh".into()], dir.path(), Some(PROMPT));
    nowhere.env = vec![("PATH".into(), dir.path().join("bin").display().to_string())];
    let result = isolation.run(nowhere, CancellationToken::new()).await;
    assert!(
        result.is_err(),
        "`sh` must not be found on a PATH without it: {result:?}"
    );
}

/// The command runs in the given working directory, and relative paths resolve there.
pub async fn working_directory_is_as_given(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let cwd = dir.path().join("deep").join("er");
    std::fs::create_dir_all(&cwd).unwrap();
    let (mut deeper, out, err) = spawn(sh("pwd -P; echo made > made.txt"), &cwd, Some(PROMPT));
    deeper.input_root = dir.path().to_path_buf();
    let outcome = run_with(isolation, (deeper, out, err), None).await;
    assert_eq!(outcome.exit, Exit::Exited(0), "{outcome:?}");
    let real = cwd.canonicalize().unwrap();
    assert_eq!(outcome.stdout, format!("{}\n", real.display()));
    assert_eq!(
        std::fs::read_to_string(cwd.join("made.txt")).unwrap(),
        "made\n"
    );
}

/// A command that overruns its timeout is killed promptly and reported as `TimedOut`.
pub async fn timeout_kills_the_command(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let spawn = spawn(
        sh("echo started; exec sleep 300"),
        dir.path(),
        Some(Duration::from_millis(300)),
    );
    let outcome = run_with(isolation, spawn, None).await;
    assert_eq!(outcome.exit, Exit::TimedOut, "{outcome:?}");
    assert!(outcome.took < PROMPT, "the timeout took {:?}", outcome.took);
    assert_eq!(
        outcome.stdout, "started\n",
        "output before the timeout is kept"
    );
}

/// A cancelled command is killed promptly and reported as `Cancelled`, also when the token
/// was cancelled before the run.
pub async fn cancel_kills_the_command(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let spawn1 = spawn(
        sh("exec sleep 300"),
        dir.path(),
        Some(Duration::from_secs(600)),
    );
    let outcome = run_with(isolation, spawn1, Some(Duration::from_millis(300))).await;
    assert_eq!(outcome.exit, Exit::Cancelled, "{outcome:?}");
    assert!(outcome.took < PROMPT, "the cancel took {:?}", outcome.took);

    let (early, _out, _err) = spawn(
        sh("exec sleep 300"),
        dir.path(),
        Some(Duration::from_secs(600)),
    );
    let cancel = CancellationToken::new();
    cancel.cancel();
    let start = Instant::now();
    let ended = isolation.run(early, cancel).await.expect("a cancelled run");
    assert_eq!(ended.exit, Exit::Cancelled);
    assert!(start.elapsed() < PROMPT);
}

/// A background process the command started dies when the command exits by itself.
pub async fn background_processes_die_on_exit(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let marker = marker();
    let outcome = run(isolation, dir.path(), &with_background(&marker, "exit 0")).await;
    assert_eq!(outcome.exit, Exit::Exited(0), "{outcome:?}");
    assert_dies(&marker, "after a normal exit").await;
}

/// A background process the command started dies when the command times out.
pub async fn background_processes_die_on_timeout(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let marker = marker();
    let script = with_background(&marker, "exec sleep 300");
    let spawn = spawn(sh(&script), dir.path(), Some(Duration::from_secs(2)));
    let outcome = run_with(isolation, spawn, None).await;
    assert_eq!(outcome.exit, Exit::TimedOut, "{outcome:?}");
    assert_dies(&marker, "after a timeout").await;
}

/// A background process the command started dies when the command is cancelled.
pub async fn background_processes_die_on_cancel(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    let marker = marker();
    let script = with_background(&marker, "exec sleep 300");
    let (spawn, out, err) = spawn(sh(&script), dir.path(), Some(Duration::from_secs(600)));
    let cancel = CancellationToken::new();
    let run = isolation.run(spawn, cancel.clone());
    let canceller = async {
        let deadline = Instant::now() + PROMPT;
        while !dir.path().join("bg.pid").exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
    };
    let (ended, ()) = tokio::join!(run, canceller);
    let ended = ended.expect("the command must run");
    assert_eq!(
        ended.exit,
        Exit::Cancelled,
        "{}{}",
        read_back(out),
        read_back(err)
    );
    assert_dies(&marker, "after a cancel").await;
}

/// A program that does not exist, or an empty command, is `Err`, not an exit code.
pub async fn missing_program_is_err(isolation: &dyn Isolation) {
    let dir = scratch(isolation).await;
    for args in [vec!["/nonexistent/program".to_string()], vec![]] {
        let (spawn, _out, _err) = spawn(args.clone(), dir.path(), Some(PROMPT));
        let result = isolation.run(spawn, CancellationToken::new()).await;
        assert!(result.is_err(), "{args:?} must be Err: {result:?}");
    }
}
