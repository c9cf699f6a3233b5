//! Remote execution through real `remexec` processes: the all-in-one server, and a scheduler
//! with two workers of which one is killed mid-action.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ServerProcess, alive, exec, start_worker, wait_until};

#[test]
fn exec_runs_a_command_remotely_and_downloads_outputs() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "2"]);
    let input = work.path().join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::write(input.join("sub/a.txt"), "hello\n").unwrap();
    std::fs::write(input.join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        input.join("tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/a.txt", input.join("link")).unwrap();
    let script = "mkdir -p out/dir && tr a-z A-Z < link > out/upper.txt && ./tool.sh > out/dir/tool.txt && ln -s upper.txt out/alias && echo $GREETING && echo oops >&2 && exit 7";
    let (code, stdout, stderr) = exec(
        &server,
        work.path(),
        &[
            "--input",
            "in",
            "--output",
            "out/upper.txt",
            "--output",
            "out/dir",
            "--output",
            "out/alias",
            "--output-dir",
            "got",
            "--env",
            "GREETING=hi",
            "--env",
            "PATH=/usr/bin:/bin",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(code, 7, "stderr: {stderr}");
    assert_eq!(stdout, "hi\n");
    assert!(stderr.contains("oops"), "{stderr}");
    let got = work.path().join("got/out");
    assert_eq!(
        std::fs::read_to_string(got.join("upper.txt")).unwrap(),
        "HELLO\n"
    );
    assert_eq!(
        std::fs::read_to_string(got.join("dir/tool.txt")).unwrap(),
        "tool ran\n"
    );
    assert_eq!(
        std::fs::read_link(got.join("alias")).unwrap().to_str(),
        Some("upper.txt")
    );
    // A failing action is not cached: it runs again.
    let (_, _, stderr) = exec(
        &server,
        work.path(),
        &[
            "--input",
            "in",
            "--output-dir",
            "got2",
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
    );
    assert!(!stderr.contains("from the Action Cache"), "{stderr}");
    // A successful one is.
    let args = ["--", "sh", "-c", "echo cached-run"];
    assert_eq!(exec(&server, work.path(), &args).0, 0);
    let (code, stdout, stderr) = exec(&server, work.path(), &args);
    assert_eq!((code, stdout.as_str()), (0, "cached-run\n"));
    assert!(stderr.contains("from the Action Cache"), "{stderr}");
    // The worker removed its action directories.
    assert!(wait_until(5, || std::fs::read_dir(
        data.path().join("worker/actions")
    )
    .unwrap()
    .count()
        == 0));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    // Actions of a root worker run as the action user: let it write the pid here.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let pidfile = work.path().join("grandchild.pid");
    let script = format!(
        "sh -c 'read pid rest < /proc/self/stat; echo $pid > {}; exec sleep 300' & echo partial; sleep 300",
        pidfile.display()
    );
    let (code, stdout, stderr) = exec(
        &server,
        work.path(),
        &["--timeout", "2", "--no-cache", "--", "sh", "-c", &script],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("DeadlineExceeded") || stderr.contains("Deadline"),
        "{stderr}"
    );
    assert_eq!(
        stdout, "partial\n",
        "output produced before the timeout is returned"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(5, || !alive(pid)),
        "grandchild {pid} outlived its action"
    );
}

#[test]
fn killing_a_worker_mid_action_reruns_it_on_the_other_worker() {
    let sched_dir = tempfile::tempdir().unwrap();
    let w1_dir = tempfile::tempdir().unwrap();
    let w2_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let scheduler = ServerProcess::start_role("scheduler", sched_dir.path(), &[]);
    let mut workers = vec![
        (
            "w1",
            start_worker(&scheduler, "w1", w1_dir.path(), 1),
            w1_dir.path().to_path_buf(),
        ),
        (
            "w2",
            start_worker(&scheduler, "w2", w2_dir.path(), 1),
            w2_dir.path().to_path_buf(),
        ),
    ];
    // Wait for both workers to create their directories (they are attached soon after).
    assert!(wait_until(20, || workers
        .iter()
        .all(|(_, _, d)| d.join("worker/actions").exists())));
    std::thread::sleep(Duration::from_millis(500));
    let url = scheduler.url();
    let exe = env!("CARGO_BIN_EXE_remexec");
    let cwd = work.path().to_path_buf();
    let client = std::thread::spawn(move || {
        Command::new(exe)
            .args([
                "exec",
                "--server",
                &url,
                "--output",
                "done.txt",
                "--output-dir",
                "got",
                "--",
                "sh",
                "-c",
                "sleep 3; echo finished > done.txt",
            ])
            .current_dir(cwd)
            .output()
            .unwrap()
    });
    // Find the worker that took the action, and SIGKILL it mid-action.
    let busy = |d: &std::path::Path| {
        std::fs::read_dir(d.join("worker/actions"))
            .map(|r| r.count() > 0)
            .unwrap_or(false)
    };
    assert!(
        wait_until(20, || workers.iter().any(|(_, _, d)| busy(d))),
        "no worker started the action"
    );
    let victim = workers.iter().position(|(_, _, d)| busy(d)).unwrap();
    let (victim_name, mut child, _) = workers.remove(victim);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = client.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(work.path().join("got/done.txt")).unwrap(),
        "finished\n"
    );
    let survivor = workers[0].0;
    assert_ne!(survivor, victim_name);
    assert!(
        stderr.contains(&format!("ran on worker {survivor}")),
        "{stderr}"
    );
    for (_, mut child, _) in workers {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn cancel_operation_kills_the_running_action_and_its_children() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    // Actions of a root worker run as the action user: let it write the pid here.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let pidfile = work.path().join("grandchild.pid");
    let script = format!(
        "sh -c 'read pid rest < /proc/self/stat; echo $pid > {}; exec sleep 300' & sleep 300",
        pidfile.display()
    );
    let mut client = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "exec",
            "--server",
            &server.url(),
            "--no-cache",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(work.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client prints "remexec exec: NAME STAGE" as the operation progresses (after the
    // line naming the action).
    let mut lines = BufReader::new(client.stderr.take().unwrap()).lines();
    let name = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| {
            let rest = l.strip_prefix("remexec exec: operations/")?;
            Some(format!("operations/{}", rest.split_whitespace().next()?))
        })
        .unwrap();
    assert!(wait_until(20, || std::fs::read_to_string(&pidfile)
        .is_ok_and(|s| s.ends_with('\n'))));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use remexec_proto::google::longrunning::CancelOperationRequest;
        use remexec_proto::google::longrunning::operations_client::OperationsClient;
        let mut ops = OperationsClient::connect(server.http_url()).await.unwrap();
        ops.cancel_operation(CancelOperationRequest { name })
            .await
            .unwrap();
    });
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(client.wait().unwrap().code(), Some(1));
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:?}");
    assert!(
        wait_until(5, || !alive(pid)),
        "grandchild {pid} outlived its cancelled action"
    );
}
