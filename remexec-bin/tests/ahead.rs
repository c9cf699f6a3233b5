//! Sandboxes made ahead of need (`remexec_worker::ahead`), against the real bubblewrap and
//! the real Docker engine: they pass the isolation conformance suite, run each action in its
//! own input root only, work below a directory closed to the action user and with cgroup
//! limits, and leave nothing behind.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::bwrap;
use remexec_worker::RunAs;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `isolation`'s sandbox made ahead for an action in `dirs`, once one is ready.
async fn ready_in(isolation: &dyn remexec_worker::Isolation, dirs: &std::path::Path) -> PathBuf {
    let ahead = remexec_worker::Ahead {
        executor: "0",
        dirs,
        platform: &[],
    };
    for _ in 0..600 {
        if let Some(dir) = isolation.ready(ahead).await {
            return dir;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no sandbox was made ahead of need in 30 s");
}

/// Sandboxes made ahead of need pass the conformance suite (the suite asks for one before each
/// check, so that most run in one), run the action in its own input root, and an action in one
/// cannot reach another's input root, made ahead beside its own.
#[tokio::test]
async fn sandboxes_made_ahead_of_need_run_each_action_in_its_own_root() {
    use remexec_worker::Exit;
    let Some(bwrap) = bwrap() else { return };
    let waiter = vec![env!("CARGO_BIN_EXE_remexec-supervisor").into()];
    let isolation = remexec_worker::NamespaceIsolation::new(bwrap.clone(), None, None)
        .unwrap()
        .ahead(waiter.clone())
        .unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let (mine, theirs) = (
        ready_in(&isolation, dirs.path()).await,
        ready_in(&isolation, dirs.path()).await,
    );
    let (root, other) = (mine.join("root"), theirs.join("root"));
    std::fs::write(root.join("in.txt"), "staged after the sandbox was made\n").unwrap();
    let script = format!(
        "cat in.txt; pwd; echo made > out.txt; ls {other} || echo unseen; \
         echo evil > {other}/evil.txt || echo unwritten; echo err >&2; exit 3",
        other = other.display()
    );
    let (ended, out, err) = run_in(&isolation, &root, &script, "/usr/bin:/bin").await;
    assert_eq!(ended.exit, Exit::Exited(3));
    assert!(out.starts_with(&format!(
        "staged after the sandbox was made\n{}\n",
        root.display()
    )));
    assert!(out.contains("unseen") && out.contains("unwritten"), "{out}");
    assert!(err.ends_with("err\n"));
    assert_eq!(
        std::fs::read_to_string(root.join("out.txt")).unwrap(),
        "made\n"
    );
    assert!(!other.join("evil.txt").exists());
    // A sandbox handed out for a lease that never ran it (staging failed): once the worker has
    // removed its directory, the next request kills it.
    let abandoned = theirs.join("root");
    let lives = || {
        let wanted = abandoned.to_string_lossy().into_owned();
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&wanted)
        })
    };
    assert!(lives(), "the sandbox made ahead is not running");
    std::fs::remove_dir_all(&theirs).unwrap();
    ready_in(&isolation, dirs.path()).await;
    assert!(
        common::wait_until(10, || !lives()),
        "an abandoned sandbox lives on"
    );
    remexec_worker::testing::isolation_conformance(&isolation).await;
    // Sandboxes made ahead and started by the supervisor measure what each action used.
    let setpriv = Some(PathBuf::from("/usr/bin/setpriv"));
    let measured = remexec_worker::NamespaceIsolation::new(bwrap.clone(), setpriv, None)
        .unwrap()
        .measure_with(waiter.clone())
        .unwrap()
        .ahead(waiter.clone())
        .unwrap();
    remexec_worker::testing::isolation_conformance(&measured).await;
    remexec_worker::testing::usage_is_measured(&measured).await;
    if is_root() {
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };
        let setpriv = Some(PathBuf::from("/usr/bin/setpriv"));
        match remexec_worker::NamespaceIsolation::new(bwrap, setpriv, Some(nobody))
            .unwrap()
            .ahead(waiter)
        {
            Ok(isolation) => remexec_worker::testing::isolation_conformance(&isolation).await,
            // The action user may not reach the build's supervisor (a checkout below /root).
            Err(e) => eprintln!("as nobody: {e}"),
        }
    }
}

/// As root, with the action user: sandboxes made ahead below a directory closed to that user
/// (reached through the supervisor's `--reveal`), and with cgroup limits (joined by the
/// supervisor), wait for their command, run it as the user in its cgroups, and see the 64 MiB
/// memory limit.
#[tokio::test]
async fn sandboxes_made_ahead_work_below_a_closed_directory_and_with_limits() {
    use remexec_worker::Exit;
    let Some(bwrap) = bwrap() else { return };
    if !is_root() {
        return;
    }
    let nobody = RunAs {
        uid: 65534,
        gid: 65534,
    };
    let supervisor: Vec<std::ffi::OsString> =
        vec![env!("CARGO_BIN_EXE_remexec").into(), "supervise".into()];
    let limits = remexec_worker::cgroups::Limits {
        cpus: Some(1.0),
        memory: Some(64 << 20),
    };
    let cgroups = remexec_worker::cgroups::CgroupLimits::detect("ahead-test", limits).unwrap();
    let setpriv = Some(PathBuf::from("/usr/bin/setpriv"));
    let isolation = remexec_worker::NamespaceIsolation::new(bwrap, setpriv, Some(nobody))
        .unwrap()
        .reveal_with(PathBuf::from("/usr/bin/unshare"), supervisor.clone())
        .ahead(supervisor.clone())
        .unwrap()
        .with_limits(cgroups, supervisor)
        .unwrap();
    let closed = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dirs = closed.path().join("ahead");
    std::fs::create_dir(&dirs).unwrap();
    let root = ready_in(&isolation, &dirs).await.join("root");
    let script = "id -u; echo made > out.txt; head -c 268435456 /dev/zero | tail -n 1 >/dev/null";
    let (ended, out, err) = run_in(&isolation, &root, script, "/usr/bin:/bin").await;
    assert_ne!(ended.exit, Exit::Exited(0), "{out}{err}");
    // The cgroup counted it, and saw the kill.
    let usage = ended.usage;
    assert!(usage.memory_killed, "{usage:?}");
    assert!(usage.peak_memory_bytes >= 60 << 20, "{usage:?}");
    assert!(usage.peak_memory_bytes <= 64 << 20, "{usage:?}");
    assert_eq!(out, "65534\n");
    let told = format!("exceeded its memory limit of {} bytes", 64 << 20);
    assert!(err.contains(&told), "{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("out.txt")).unwrap(),
        "made\n"
    );
}

/// Runs `sh -c script` in `root` (with `PATH=path` and `ODD=a=b c`) under `isolation`: how
/// it ended, its standard output and its standard error.
async fn run_in(
    isolation: &dyn remexec_worker::Isolation,
    root: &std::path::Path,
    script: &str,
    path: &str,
) -> (remexec_worker::Ended, String, String) {
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let spawn = remexec_worker::Spawn {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), path.into()), ("ODD".into(), "a=b c".into())],
        cwd: root.to_path_buf(),
        input_root: root.to_path_buf(),
        platform: vec![],
        executor: "0".into(),
        stdout: stdout.try_clone().unwrap(),
        stderr: stderr.try_clone().unwrap(),
        timeout: Some(std::time::Duration::from_secs(60)),
    };
    let exit = isolation.run(spawn, Default::default()).await.unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    (exit, read(stdout), read(stderr))
}

/// Containers made ahead of need pass the suite (most checks run in one), in an image with
/// nothing of remexec's or of glibc (busybox): the waiter comes with the host's loader. The
/// action gets the environment a container made for it gets. Dropped, the backend leaves
/// nothing on the engine.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_made_ahead_of_need_pass_the_conformance_suite() {
    common::docker_image();
    use remexec_worker::DockerIsolation;
    use remexec_worker::cgroups::Limits;
    let no_limits = Limits {
        cpus: None,
        memory: None,
    };
    let waiter = vec![env!("CARGO_BIN_EXE_remexec-supervisor").into()];
    let docker = DockerIsolation::connect("ahead", "remexec-test:latest", no_limits)
        .await
        .unwrap()
        .ahead(waiter)
        .await
        .unwrap();
    let dirs = tempfile::tempdir().unwrap();
    // The same command in a container made ahead and in one made for it: the same
    // environment (the image's, the engine's HOSTNAME, the action's over them) and output.
    let ahead = ready_in(&docker, dirs.path()).await.join("root");
    let cold = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for root in [ahead.as_path(), cold.path()] {
        std::fs::write(root.join("in.txt"), "staged\n").unwrap();
        let (ended, out, _) = run_in(&docker, root, "cat in.txt; env; exit 5", "/bin").await;
        assert_eq!(ended.exit, remexec_worker::Exit::Exited(5));
        let mut names: Vec<String> = out
            .lines()
            .map(|l| l.split('=').next().unwrap().to_string())
            .collect();
        names.sort_unstable();
        assert!(
            out.contains("\nODD=a=b c\n") && out.starts_with("staged\n"),
            "{out}"
        );
        assert!(out.contains("\nPATH=/bin\n"), "{out}");
        seen.push(names);
    }
    assert_eq!(
        seen[0], seen[1],
        "the environment of a container made ahead"
    );
    use remexec_worker::testing as suite;
    suite::exit_codes(&docker).await;
    suite::output_goes_to_the_given_files(&docker).await;
    suite::stdin_is_empty(&docker).await;
    suite::working_directory_is_as_given(&docker).await;
    suite::timeout_kills_the_command(&docker).await;
    suite::cancel_kills_the_command(&docker).await;
    suite::background_processes_die_on_exit(&docker).await;
    suite::background_processes_die_on_timeout(&docker).await;
    suite::background_processes_die_on_cancel(&docker).await;
    drop(docker);
    common::assert_no_container_left("ahead").await;
}

/// Through a real server (`remexec serve --isolation namespaces`) and its worker: the first
/// action runs in a sandbox made when it starts, and once the backend has made some ahead, the
/// next ones run in those, each in an input root of its own.
#[test]
fn a_servers_actions_run_in_sandboxes_made_ahead() {
    if bwrap().is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(data.path(), &["--isolation", "namespaces"]);
    let pwd = |n: usize| {
        let script = format!("pwd; echo {n}");
        let (code, out, err) = common::exec(&server, data.path(), &["--", "sh", "-c", &script]);
        assert_eq!(code, 0, "{err}");
        out.lines().next().unwrap().to_string()
    };
    assert!(
        pwd(0).contains("/worker/actions/"),
        "the first is made for it"
    );
    let ahead = data.path().join("worker/ahead");
    assert!(common::wait_until(30, || std::fs::read_dir(&ahead)
        .is_ok_and(|d| d.count() >= 4)));
    let (first, second) = (pwd(1), pwd(2));
    for root in [&first, &second] {
        assert!(root.contains("/worker/ahead/ahead-"), "{root}");
    }
    assert_ne!(first, second, "never reused");
}
