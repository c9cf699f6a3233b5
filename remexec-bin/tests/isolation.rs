//! The process backend as a hostile action meets it: supervised in a PID namespace, as the
//! unprivileged action user when the worker is root. Actions cannot change stored blobs or
//! cached inputs, and nothing they start outlives them or a SIGKILLed worker.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::{ServerProcess, bwrap, wait_until};
use remexec_worker::{ProcessIsolation, RunAs, SupervisorSetup};

fn setup(run_as: Option<RunAs>) -> SupervisorSetup {
    SupervisorSetup {
        supervisor: vec![env!("CARGO_BIN_EXE_remexec").into(), "supervise".into()],
        run_as,
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn the_supervised_backend_passes_the_isolation_conformance_suite() {
    let isolation = ProcessIsolation::supervised(setup(None)).unwrap();
    remexec_worker::testing::isolation_conformance(&isolation).await;
    remexec_worker::testing::usage_is_measured(&isolation).await;
    if is_root() {
        // As nobody, with the scratch directories handed over.
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };
        let isolation = ProcessIsolation::supervised(setup(Some(nobody))).unwrap();
        assert_eq!(isolation.run_as(), Some(Some(nobody)));
        remexec_worker::testing::isolation_conformance(&isolation).await;
        remexec_worker::testing::usage_is_measured(&isolation).await;
    }
}

#[cfg(feature = "docker")]
#[test]
fn no_container_of_an_action_outlives_a_sigkilled_worker() {
    common::docker_image();
    nothing_outlives_a_sigkilled_worker(&["--isolation", "docker"], "1414.2135");
    // The reaper removed the container itself, not only its processes.
    let left = || {
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=remexec.worker=victim"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(wait_until(10, || left().is_empty()), "left: {}", left());
}

#[test]
fn a_bad_supervisor_is_refused_at_start() {
    let mut bad = setup(None);
    bad.supervisor = vec!["/nonexistent/supervisor".into()];
    let err = ProcessIsolation::supervised(bad).unwrap_err();
    assert!(err.to_string().contains("PID namespace"), "{err}");
}

/// The processes on this host whose command line starts with `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (text.starts_with(marker) && !stat.contains(") Z ") && !stat.contains(") X "))
                .then(|| format!("{pid}: {text}"))
        })
        .collect()
}

/// Starts a scheduler and a worker (with `flags`), then [`nothing_outlives`] the worker.
fn nothing_outlives_a_sigkilled_worker(flags: &[&str], marker: &str) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let scheduler = ServerProcess::start_role("scheduler", dirs[0].path(), &[]);
    let mut worker = common::start_worker_at(
        &scheduler.url(),
        "victim",
        dirs[1].path(),
        1,
        flags,
        std::process::Stdio::inherit(),
    );
    nothing_outlives(&scheduler.url(), marker, move || {
        worker.kill().unwrap();
        worker.wait().unwrap();
    });
}

/// Runs, on the server at `url`, an action whose processes escape their process group
/// (`setsid`) and double-fork, SIGKILLs its worker with `kill`, and checks that no `sleep
/// MARKER` of the action survives it.
fn nothing_outlives(url: &str, marker: &str, kill: impl FnOnce()) {
    let marker = format!("sleep {marker}");
    let script = format!("setsid sh -c '({marker} &) ; {marker}' & sleep 3600");
    let mut exec = std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", url, "--", "sh", "-c", &script])
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(60, || processes_with(&marker).len() >= 2),
        "the action's processes never started"
    );
    kill();
    assert!(
        wait_until(10, || processes_with(&marker).is_empty()),
        "outlived the worker: {:?}",
        processes_with(&marker)
    );
    let _ = exec.kill();
    let _ = exec.wait();
}

#[test]
fn no_process_of_an_unprivileged_workers_action_outlives_it() {
    // As root, the worker starts each supervisor in a PID namespace itself; as nobody, the
    // supervisor makes one (and a user namespace) in its outer step. This runs that step.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let server = match is_root() {
        true => ServerProcess::start_as_nobody(dir.path(), &[]),
        false => ServerProcess::start(dir.path(), &[]),
    };
    let url = server.url();
    nothing_outlives(&url, "2718.2818", move || server.kill());
}

#[test]
fn a_supervisor_whose_worker_is_gone_runs_nothing() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let supervise = |leading: &[&str], stdin: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_remexec-supervisor"))
            .args(leading)
            .arg("--")
            .arg("touch")
            .arg(&ran)
            .stdin(stdin)
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    // The outer step, whose parent is not the worker it was told of.
    let status = supervise(&["--pid-namespace", "1"], Stdio::null());
    assert_eq!((status.code(), ran.exists()), (Some(127), false));
    // Process 1, whose lifeline hung up: the worker's end is closed.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(writer);
    let status = supervise(&["--process-1"], reader.into());
    assert_eq!((status.code(), ran.exists()), (Some(127), false));
    // The same, with the worker's end held: both run.
    let (reader, _writer) = std::io::pipe().unwrap();
    assert!(supervise(&["--process-1"], reader.into()).success());
    assert!(ran.exists());
    std::fs::remove_file(&ran).unwrap();
    let this = std::process::id().to_string();
    let status = supervise(&["--pid-namespace", &this], Stdio::null());
    assert!(status.success() && ran.exists(), "{status}");
}

#[test]
fn no_process_of_an_action_outlives_a_sigkilled_worker() {
    nothing_outlives_a_sigkilled_worker(&[], "3141.5926");
}

#[test]
fn a_root_workers_actions_cannot_change_stored_blobs_or_cached_inputs() {
    if !is_root() {
        eprintln!("not root: actions run as the worker's own user; nothing to check");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("lib.txt"), "original\n").unwrap();
    let cas = data.path().join("cas").display().to_string();
    let cache = data.path().join("worker/cache").display().to_string();
    // Everything a hostile action would try; each attempt must fail, and it reports which did
    // not.
    let attack = format!(
        r#"
        [ "$(id -u)" != 0 ] || echo "ran as root"
        echo evil > lib.txt 2>/dev/null && echo "wrote the input in place"
        chmod u+w lib.txt 2>/dev/null && echo "made the input writable"
        ls {cache} >/dev/null 2>&1 && echo "listed the file cache"
        ls {cas} >/dev/null 2>&1 && echo "listed the CAS"
        for f in {cas}/*/* {cache}/*; do [ -e "$f" ] && echo "reached $f"; done
        touch {cas}/planted 2>/dev/null && echo "planted a file in the CAS"
        # Replacing its own hard link is allowed, and harms nobody.
        rm -f lib.txt && echo replaced > lib.txt
        true
        "#
    );
    let run = |script: &str| run_on(&server, &["--input", input.to_str().unwrap()], script);
    assert_eq!(run(&attack), "", "the action got through");
    // The next action sees the input as stored, and the stores hold what they held.
    assert_eq!(run("cat lib.txt"), "original\n");
    assert!(!data.path().join("cas/planted").exists());
}

#[tokio::test]
async fn the_namespaces_backend_passes_the_isolation_conformance_suite() {
    let Some(bwrap) = bwrap() else { return };
    let isolation = remexec_worker::NamespaceIsolation::new(bwrap.clone(), None, None).unwrap();
    remexec_worker::testing::isolation_conformance(&isolation).await;
    // Started by the supervisor, which measures what each action used.
    let setpriv = PathBuf::from("/usr/bin/setpriv");
    let measured = remexec_worker::NamespaceIsolation::new(bwrap.clone(), Some(setpriv), None)
        .unwrap()
        .measure_with(setup(None).supervisor)
        .unwrap();
    remexec_worker::testing::isolation_conformance(&measured).await;
    remexec_worker::testing::usage_is_measured(&measured).await;
    if is_root() {
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };
        let setpriv = Some(PathBuf::from("/usr/bin/setpriv"));
        let isolation =
            remexec_worker::NamespaceIsolation::new(bwrap, setpriv, Some(nobody)).unwrap();
        remexec_worker::testing::isolation_conformance(&isolation).await;
    }
}

/// Runs `sh -c script` through `remexec exec` on `server` with extra flags; returns its stdout.
fn run_on(server: &ServerProcess, extra: &[&str], script: &str) -> String {
    let out = exec_on(server, extra, script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `remexec exec --no-cache EXTRA -- sh -c SCRIPT` on `server`, however it ends.
fn exec_on(server: &ServerProcess, extra: &[&str], script: &str) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url(), "--no-cache"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .current_dir(cwd.path())
        .output()
        .unwrap()
}

/// Runs `script` on `server`, which must get it killed for exceeding `limit` bytes of memory,
/// and told so on its stderr.
fn assert_killed_for_memory(server: &ServerProcess, extra: &[&str], script: &str, limit: u64) {
    let out = exec_on(server, extra, script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("exceeded its memory limit of {limit} bytes")),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_namespaced_action_reaches_its_input_root_only() {
    if bwrap().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--isolation", "namespaces", "--executors", "2"]);
    let secret = dir.path().join("host-secret.txt");
    std::fs::write(&secret, "secret\n").unwrap();
    // A long action elsewhere on the worker, whose directory the next one looks for.
    let neighbour = std::thread::spawn({
        let url = server.url();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_remexec"))
                .args([
                    "exec",
                    "--server",
                    &url,
                    "--no-cache",
                    "--",
                    "sh",
                    "-c",
                    "echo mine > neighbour.txt; sleep 3",
                ])
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mark = format!("remexec-escape-{}", std::process::id());
    let attack = format!(
        r#"
        cat {secret} 2>/dev/null && echo "read a host file"
        ls {data}/cas >/dev/null 2>&1 && echo "saw the CAS"
        ls {data}/worker/cache >/dev/null 2>&1 && echo "saw the file cache"
        [ "$(ls ../..)" = "$(basename "$(dirname "$PWD")")" ] || echo "saw other actions: $(ls ../..)"
        for f in /usr/{mark} /etc/{mark} /{mark}; do
          touch $f 2>/dev/null && echo "wrote $f"
        done
        touch /tmp/{mark} || echo "no private /tmp"
        [ "$(hostname)" = remexec ] || echo "the host's name"
        echo written > out.txt
        true
        "#,
        secret = secret.display(),
        data = data.display(),
    );
    assert_eq!(run_on(&server, &[], &attack), "", "the action got through");
    assert!(
        !std::path::Path::new("/tmp").join(&mark).exists(),
        "/tmp is the host's"
    );
    assert!(neighbour.join().unwrap().status.success());
}

#[test]
fn a_namespaced_action_has_no_network_unless_allowed_and_asked_for() {
    if bwrap().is_none() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let connect = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || echo refused"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("remexec.toml");
    std::fs::write(&config, "[worker]\nallow_network = true\n").unwrap();
    let closed = ServerProcess::start(&dir.path().join("a"), &["--isolation", "namespaces"]);
    assert_eq!(run_on(&closed, &[], &connect), "refused\n");
    let open = ServerProcess::start(
        &dir.path().join("b"),
        &[
            "--isolation",
            "namespaces",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    // Allowed, but not asked for: still none.
    assert_eq!(run_on(&open, &[], &connect), "refused\n");
    assert!(listener.accept().is_err(), "a connection got through");
    assert_eq!(
        run_on(&open, &["--platform", "network=on"], &connect),
        "connected\n"
    );
    assert!(listener.accept().is_ok());
}

#[test]
fn no_process_of_a_namespaced_action_outlives_a_sigkilled_worker() {
    if bwrap().is_none() {
        return;
    }
    nothing_outlives_a_sigkilled_worker(&["--isolation", "namespaces"], "2718.2818");
}

/// A server whose local worker runs actions in namespaces with 1 CPU and 64 MiB each.
fn limited_server(dir: &std::path::Path) -> ServerProcess {
    let config = dir.join("limits.toml");
    std::fs::write(
        &config,
        "[worker]\nisolation = \"namespaces\"\ncpus_per_action = 1.0\nmemory_per_action = \"64 MiB\"\n",
    )
    .unwrap();
    ServerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

#[test]
fn an_action_past_its_memory_limit_is_killed_and_told_so() {
    if bwrap().is_none() || !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = limited_server(dir.path());
    // `tail` keeps a line that never ends in memory: 256 MiB of zeros.
    let script = "head -c 268435456 /dev/zero | tail -n 1 >/dev/null; echo survived";
    assert_killed_for_memory(&server, &[], script, 64 << 20);
    // Within the limit, the same action works.
    assert_eq!(
        run_on(
            &server,
            &[],
            "head -c 1048576 /dev/zero | tail -c 1 | wc -c"
        ),
        "1\n"
    );
}

#[test]
fn four_busy_threads_limited_to_one_cpu_get_about_one_cpu() {
    if bwrap().is_none() || !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = limited_server(dir.path());
    assert_about_one_cpu(&server);
}

/// Runs four busy loops for 3 s of wall time on `server` and checks, from the CPU time their
/// shell's `times` reports for its children, that they got between 0.5 and 1.2 CPUs.
fn assert_about_one_cpu(server: &ServerProcess) {
    let script = "for i in 1 2 3 4; do timeout 3 sh -c 'while :; do :; done' & done; wait; times";
    let out = run_on(server, &[], script);
    let children = out.lines().nth(1).unwrap_or_else(|| panic!("{out}"));
    let seconds: f64 = children
        .split_whitespace()
        .map(|t| {
            let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
            m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
        })
        .sum();
    let per_wall_second = seconds / 3.0;
    assert!(
        per_wall_second <= 1.2,
        "{per_wall_second:.2} CPU-s per second: {out}"
    );
    assert!(per_wall_second >= 0.5, "the loops hardly ran: {out}");
}

#[cfg(feature = "docker")]
#[test]
fn the_example_groups_run_each_action_under_the_isolation_it_asks_for() {
    if bwrap().is_none() || !is_root() {
        return;
    }
    common::docker_image();
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/isolation.toml");
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", example.to_str().unwrap()],
    );
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    // The namespaced executor has a host name of its own; the process one the host's.
    let name = |isolation: &str| {
        run_on(
            &server,
            &["--platform", &format!("isolation={isolation}")],
            "hostname",
        )
    };
    assert_eq!(name("namespaces"), "remexec\n");
    assert_eq!(name("process"), format!("{host}\n"));
    // A container's host name is its id.
    let container = name("docker");
    assert!(
        container.trim().len() == 12 && container.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{container}"
    );
    // All are limited: 256 MiB under 512 MiB works, 1 GiB is killed, in each group.
    for isolation in ["process", "namespaces", "docker"] {
        let platform = format!("isolation={isolation}");
        assert_eq!(
            run_on(
                &server,
                &["--platform", &platform],
                "head -c 268435456 /dev/zero | tail -n 1 | wc -c"
            ),
            "268435456\n",
            "{isolation}"
        );
        let script = "head -c 1073741824 /dev/zero | tail -n 1 | wc -c";
        assert_killed_for_memory(&server, &["--platform", &platform], script, 512 << 20);
    }
}

/// The Docker backend against the real engine, with `.ci/test-image`'s busybox image.
#[cfg(feature = "docker")]
mod docker {
    use super::*;

    use remexec_worker::cgroups::Limits;
    use remexec_worker::{DockerIsolation, Isolation as _};

    const IMAGE: &str = "remexec-test:latest";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_docker_backend_passes_the_conformance_suite_but_for_the_environment() {
        common::docker_image();
        let no_limits = Limits {
            cpus: None,
            memory: None,
        };
        let docker = DockerIsolation::connect("conformance", IMAGE, no_limits)
            .await
            .unwrap();
        use remexec_worker::testing as suite;
        suite::exit_codes(&docker).await;
        suite::output_goes_to_the_given_files(&docker).await;
        suite::stdin_is_empty(&docker).await;
        // Not environment_is_exactly_as_given: Docker adds HOSTNAME (docs/isolation.md).
        // Not program_is_looked_up_in_the_given_path nor missing_program_is_err: the engine's
        // init looks the program up in the image and exits 127 when it is missing, like a shell.
        suite::working_directory_is_as_given(&docker).await;
        suite::timeout_kills_the_command(&docker).await;
        suite::cancel_kills_the_command(&docker).await;
        suite::background_processes_die_on_exit(&docker).await;
        suite::background_processes_die_on_timeout(&docker).await;
        suite::background_processes_die_on_cancel(&docker).await;
        let dir = tempfile::tempdir().unwrap();
        let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let spawn = remexec_worker::Spawn {
            args: vec!["/nonexistent/program".into()],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            input_root: dir.path().to_path_buf(),
            platform: vec![],
            executor: "0".into(),
            stdout,
            stderr,
            timeout: Some(std::time::Duration::from_secs(30)),
        };
        let missing = docker.run(spawn, Default::default()).await.unwrap();
        assert_eq!(missing.exit, remexec_worker::Exit::Exited(127));
        common::assert_no_container_left("conformance").await;
    }

    #[test]
    fn a_docker_action_reaches_its_input_root_only_and_its_limits() {
        common::docker_image();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("docker.toml");
        std::fs::write(
            &config,
            "[worker]\nisolation = \"docker\"\ncpus_per_action = 1.0\nmemory_per_action = \"64 MiB\"\n",
        )
        .unwrap();
        let data = dir.path().join("data");
        let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
        let secret = dir.path().join("host-secret.txt");
        std::fs::write(&secret, "secret\n").unwrap();
        let attack = format!(
            r#"
            cat {secret} 2>/dev/null && echo "read a host file"
            ls {data}/cas >/dev/null 2>&1 && echo "saw the CAS"
            ls {data}/worker/cache >/dev/null 2>&1 && echo "saw the file cache"
            [ "$(ls ../..)" = "$(basename "$(dirname "$PWD")")" ] || echo "saw other actions: $(ls ../..)"
            echo written > out.txt
            true
            "#,
            secret = secret.display(),
            data = data.display(),
        );
        assert_eq!(run_on(&server, &[], &attack), "", "the action got through");
        // Network: a server the test runs on the engine's bridge is out of reach, unless the
        // worker allows it and the action asks.
        let listener = std::net::TcpListener::bind("172.17.0.1:0").expect("the docker0 bridge");
        let port = listener.local_addr().unwrap().port();
        // Every connection is closed at once, so that `nc` ends.
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
            }
        });
        let connect =
            format!("nc -w 3 172.17.0.1 {port} </dev/null && echo connected || echo refused");
        assert_eq!(run_on(&server, &[], &connect), "refused\n");
        let open_config = dir.path().join("open.toml");
        std::fs::write(
            &open_config,
            "[worker]\nisolation = \"docker\"\nallow_network = true\n",
        )
        .unwrap();
        let open = ServerProcess::start(
            &dir.path().join("open"),
            &["--config", open_config.to_str().unwrap()],
        );
        assert_eq!(
            run_on(&open, &[], &connect),
            "refused\n",
            "allowed but not asked for"
        );
        assert_eq!(
            run_on(&open, &["--platform", "network=on"], &connect),
            "connected\n"
        );
        // Memory: 256 MiB under 64 MiB is killed, and told so.
        let script = "head -c 268435456 /dev/zero | tail -n 1 >/dev/null";
        assert_killed_for_memory(&server, &[], script, 64 << 20);
        // CPU: four busy loops for 3 s get about one CPU.
        assert_about_one_cpu(&server);
    }
    #[test]
    fn a_docker_client_names_its_image_within_reason() {
        common::docker_image();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("docker.toml");
        std::fs::write(&config, "[worker]\nisolation = \"docker\"\n").unwrap();
        let server = ServerProcess::start(
            &dir.path().join("data"),
            &["--config", config.to_str().unwrap()],
        );
        // The client names the image, as Bazel's toolchains write it; one on the engine runs.
        let named = ["--platform", "container-image=docker://remexec-test:latest"];
        assert_eq!(run_on(&server, &named, "echo named"), "named\n");
        // The client names the image: a missing one, or one that is no image reference, fails
        // the action, and nothing is pulled or run.
        for image in [
            "docker://no-such-image:1",
            "docker://--privileged",
            "docker://a b",
            "docker://../x",
        ] {
            let platform = format!("container-image={image}");
            let out = exec_on(&server, &["--platform", &platform], "true");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{image}: {stderr}");
            assert!(
                stderr.contains("not an image reference") || stderr.contains("never pulled"),
                "{image}: {stderr}"
            );
        }
    }
}

#[test]
fn executor_groups_with_unsafe_names_or_no_executors_are_refused() {
    let supervisor = vec![env!("CARGO_BIN_EXE_remexec").into(), "supervise".into()];
    for (name, executors) in [("../x", 1), ("a/b", 1), ("a b", 1), ("ok", 0)] {
        let toml = format!("[[worker.groups]]\nname = {name:?}\nexecutors = {executors}\n");
        let config = remexec_bin::config::Config::from_toml(&toml).unwrap();
        let refused = remexec_bin::sandbox::worker_isolation(&config, supervisor.clone());
        assert!(
            refused.is_err(),
            "{name:?} with {executors} executors was accepted"
        );
    }
}

/// `chroot_into_input_root`: the action sees its input root as `/` and nothing of the host
/// (no `/usr`, no host `/etc`), writes land in the input root, it is uid 0 of its namespace
/// unless its platform names `unixUID`, and a `unixUID` that is not a number is refused.
#[tokio::test]
async fn a_chrooted_action_sees_only_its_input_root() {
    use remexec_worker::Isolation as _;
    use std::io::{Read, Seek};
    let Some(bwrap) = bwrap() else { return };
    if !std::path::Path::new("/bin/busybox").is_file() {
        eprintln!("no /bin/busybox (busybox-static): skipping");
        return;
    }
    let isolation = remexec_worker::NamespaceIsolation::new(bwrap, None, None)
        .unwrap()
        .chroot_into_input_root(true);
    let run = |platform: Vec<(String, String)>| {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/marker"), "mine\n").unwrap();
        std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
        let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let script = "cd /; busybox ls /; busybox ls /etc; busybox id -u; \
            echo made > /made; busybox ls /usr 2>/dev/null || echo no-usr";
        let spawn = remexec_worker::Spawn {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: root.path().to_path_buf(),
            input_root: root.path().to_path_buf(),
            platform,
            executor: "0".into(),
            stdout: stdout.try_clone().unwrap(),
            stderr: stderr.try_clone().unwrap(),
            timeout: Some(std::time::Duration::from_secs(30)),
        };
        (root, spawn, stdout, stderr)
    };
    let read = |mut f: std::fs::File| {
        let mut text = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    let (root, spawn, stdout, stderr) = run(Vec::new());
    let exit = isolation
        .run(spawn, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
        .exit;
    let (out, err) = (read(stdout), read(stderr));
    assert_eq!(exit, remexec_worker::Exit::Exited(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    for name in ["bin", "dev", "etc", "proc", "tmp", "marker", "no-usr"] {
        assert!(lines.contains(&name), "{name} not in {lines:?}");
    }
    for host in ["usr", "home", "passwd", "hostname"] {
        assert!(
            !lines.contains(&host),
            "the host's {host} is visible: {lines:?}"
        );
    }
    assert!(lines.contains(&"0"), "not uid 0 inside: {lines:?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("made")).unwrap(),
        "made\n"
    );

    let uid = vec![("unixUID".to_string(), "1234".to_string())];
    let (_root, spawn, stdout, _) = run(uid);
    let cancel = tokio_util::sync::CancellationToken::new();
    assert_eq!(
        isolation.run(spawn, cancel).await.unwrap().exit,
        remexec_worker::Exit::Exited(0)
    );
    assert!(read(stdout).lines().any(|l| l == "1234"));

    let bad = vec![("unixUID".to_string(), "root; rm -rf /".to_string())];
    let (_root, spawn, _, _) = run(bad);
    let cancel = tokio_util::sync::CancellationToken::new();
    let err = isolation.run(spawn, cancel).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

/// Runs `true` under `isolation` with `LD_DEBUG` and `LD_DEBUG_OUTPUT` set, which make every
/// process whose loader sees them write a file; returns the owners of those files.
async fn owners_of_loader_files(isolation: &dyn remexec_worker::Isolation) -> Vec<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    let debug = root.join("ld");
    std::fs::create_dir_all(&debug).unwrap();
    std::fs::set_permissions(&debug, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let out = debug.join("out").to_string_lossy().into_owned();
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("LD_DEBUG", "libs"),
        ("LD_DEBUG_OUTPUT", out.as_str()),
    ];
    let spawn = remexec_worker::Spawn {
        args: vec!["true".into()],
        env: env.map(|(k, v)| (k.to_string(), v.to_string())).to_vec(),
        cwd: root.clone(),
        input_root: root.clone(),
        platform: vec![],
        executor: "0".into(),
        stdout,
        stderr,
        timeout: Some(std::time::Duration::from_secs(60)),
    };
    let exit = isolation
        .run(spawn, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
        .exit;
    assert_eq!(exit, remexec_worker::Exit::Exited(0));
    std::fs::read_dir(&debug)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().uid())
        .collect()
}

#[tokio::test]
async fn nothing_an_action_sets_reaches_a_process_that_runs_as_root() {
    // A root worker's supervisor (and setpriv before bubblewrap) run as root before they drop
    // to the action user: an LD_PRELOAD of the action's there would run its code as root.
    // LD_DEBUG_OUTPUT shows which processes' loaders saw the action's variables.
    if !is_root() {
        return;
    }
    let nobody = RunAs {
        uid: 65534,
        gid: 65534,
    };
    let process = ProcessIsolation::supervised(setup(Some(nobody))).unwrap();
    let owners = owners_of_loader_files(&process).await;
    assert!(!owners.is_empty(), "the command never got its environment");
    assert!(owners.iter().all(|&o| o == nobody.uid), "{owners:?}");
    let Some(bwrap) = bwrap() else { return };
    let setpriv = Some(PathBuf::from("/usr/bin/setpriv"));
    let sandbox = remexec_worker::NamespaceIsolation::new(bwrap, setpriv, Some(nobody)).unwrap();
    let owners = owners_of_loader_files(&sandbox).await;
    assert!(
        !owners.is_empty(),
        "the sandboxed command never got its environment"
    );
    assert!(owners.iter().all(|&o| o == nobody.uid), "{owners:?}");
}
