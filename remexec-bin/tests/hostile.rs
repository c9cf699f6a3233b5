//! Hostile actions and clients against real `remexec` processes: nothing they do can wedge an
//! executor, switch off a timeout, stop a server from starting, or make `remexec exec` write
//! outside its output directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ServerProcess, exec, exec_within, wait_until};
use remexec_cas::GrpcStore;
use remexec_core::client;
use remexec_core::merkle::encode_message;
use remexec_core::reapi::action_cache_client::ActionCacheClient;
use remexec_core::reapi::{
    Action, ActionResult, Command, Directory, ExecuteRequest, ExecuteResponse, OutputDirectory,
    OutputFile, OutputSymlink, SymlinkNode, Tree, UpdateActionResultRequest,
    command::EnvironmentVariable,
};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction};

const SHA256: DigestFunction = DigestFunction::Sha256;

#[test]
fn actions_cannot_wedge_an_executor_through_stdout_stderr_or_outputs() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // One executor: if any of these wedged it, the next action could never run.
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let scripts = [
        "rm -f ../stdout; ln -s /dev/zero ../stdout; echo replaced",
        "rm -f ../stderr; mkfifo ../stderr; echo replaced",
        "mkfifo fifo; ln -s /dev/zero zero; ln -s fifo to_fifo; echo replaced",
    ];
    for script in scripts {
        let started = Instant::now();
        let outcome = exec_within(
            &server,
            work.path(),
            &[
                "--no-cache",
                "--timeout",
                "10",
                "--output",
                "fifo",
                "--output",
                "zero",
                "--output",
                "to_fifo",
                "--output-dir",
                "got",
                "--",
                "sh",
                "-c",
                script,
            ],
            60,
        );
        let (code, stdout, stderr) =
            outcome.unwrap_or_else(|| panic!("{script:?} wedged the executor"));
        assert_eq!(
            (code, stdout.as_str()),
            (0, "replaced\n"),
            "{script:?}: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{script:?}");
        let (code, stdout, stderr) = exec_within(
            &server,
            work.path(),
            &["--no-cache", "--", "echo", "next"],
            60,
        )
        .unwrap_or_else(|| panic!("the executor did not take an action after {script:?}"));
        assert_eq!((code, stdout.as_str()), (0, "next\n"), "{stderr}");
    }
    // The FIFO output was never opened: it is reported as missing, the symlinks as symlinks.
    let got = work.path().join("got");
    assert!(!got.join("fifo").exists());
    assert_eq!(
        std::fs::read_link(got.join("zero")).unwrap(),
        Path::new("/dev/zero")
    );
}

/// Uploads a Command and an Action for `sh -c script` and returns the Action's digest.
async fn upload_action(
    store: &dyn BlobStore,
    script: &str,
    timeout: Option<remexec_core::apis::google::protobuf::Duration>,
) -> Digest {
    let command = Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    };
    let (root, root_bytes) = encode_message(SHA256, &Directory::default());
    let (command_digest, command_bytes) = encode_message(SHA256, &command);
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.to_proto()),
        timeout,
        do_not_cache: true,
        ..Default::default()
    };
    let (action_digest, action_bytes) = encode_message(SHA256, &action);
    for (d, b) in [
        (root, root_bytes),
        (command_digest, command_bytes),
        (action_digest, action_bytes),
    ] {
        store.put_bytes("", d, b).await.unwrap();
    }
    action_digest
}

/// Executes an action (never from the cache) and returns its final response.
async fn execute(channel: tonic::transport::Channel, action: Digest) -> ExecuteResponse {
    let request = ExecuteRequest {
        action_digest: Some(action.to_proto()),
        skip_cache_lookup: true,
        ..Default::default()
    };
    client::execute(
        channel,
        request,
        &client::FollowOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn timeouts_that_round_to_zero_or_are_negative_become_the_maximum() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("remexec.toml");
    std::fs::write(&config, "[scheduler]\nmax_action_timeout_secs = 5\n").unwrap();
    let server = ServerProcess::start(
        &data.path().join("data"),
        &["--executors", "2", "--config", config.to_str().unwrap()],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(GrpcStore::new(channel.clone()));
    use remexec_core::apis::google::protobuf::Duration as ProtoDuration;
    let timeouts = [
        ProtoDuration {
            seconds: 0,
            nanos: 1,
        },
        ProtoDuration {
            seconds: -3,
            nanos: 0,
        },
        ProtoDuration {
            seconds: 1_000_000,
            nanos: 0,
        },
    ];
    let runs = timeouts.into_iter().map(|t| {
        let (store, channel) = (Arc::clone(&store), channel.clone());
        async move {
            let script = format!("sleep 60; echo {}", t.seconds);
            let action = upload_action(store.as_ref(), &script, Some(t)).await;
            let started = Instant::now();
            let response = execute(channel, action).await;
            (t, started.elapsed(), response)
        }
    });
    for (t, elapsed, response) in futures::future::join_all(runs).await {
        let status = response.status.unwrap_or_default();
        assert_eq!(
            status.code,
            tonic::Code::DeadlineExceeded as i32,
            "{t:?}: {status:?}"
        );
        assert!(
            elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(40),
            "{t:?} ended after {elapsed:?}, not at the 5 s maximum"
        );
    }
}

#[tokio::test]
async fn a_poisoned_cache_entry_writes_nothing_outside_the_output_dir() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "1"]);
    let args = [
        "--output",
        "d",
        "--output",
        "s",
        "--output",
        "f",
        "--output-dir",
        "got",
        "--",
        "true",
    ];
    // A first, honest run caches the action; its digest is the one Action Cache entry.
    let (code, _, stderr) = exec(&server, work.path(), &args);
    assert_eq!(code, 0, "{stderr}");
    let action = cached_action(&data.path().join("ac"));
    let channel = client::connect(&server.url()).await.unwrap();
    let store = GrpcStore::new(channel.clone());
    let poisoned = poisoned_results(&store, home.path()).await;
    for result in poisoned {
        ActionCacheClient::new(channel.clone())
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(result.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        // A symlink already in the output dir from an earlier run must not be written through.
        let got = work.path().join("got");
        let _ = remexec_core::fs::remove_tree(&got);
        std::fs::create_dir_all(got.join("d")).unwrap();
        std::os::unix::fs::symlink(home.path(), got.join("f")).unwrap();
        let (_, _, stderr) = exec(&server, work.path(), &args);
        assert_eq!(
            std::fs::read_dir(home.path()).unwrap().count(),
            0,
            "{result:?} wrote into the home directory; exec said: {stderr}"
        );
    }
    // Upload-time checks refuse a symlink that climbs out of the working directory.
    let escaping = ActionResult {
        output_symlinks: vec![OutputSymlink {
            path: "s".into(),
            target: "../../../../etc".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = ActionCacheClient::new(channel)
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(escaping),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

/// Action results that would write into `home` if a download followed symlinks: a tree whose
/// symlink points there with a file "inside" it, an output symlink there with a file below it,
/// the same split over two output directories, and a file below a symlink an earlier run left.
async fn poisoned_results(store: &GrpcStore, home: &Path) -> Vec<ActionResult> {
    let home_str = home.to_str().unwrap().to_string();
    let payload = b"pwned\n";
    let payload_digest = SHA256.digest_of(payload);
    store
        .put_bytes("", payload_digest, payload.to_vec().into())
        .await
        .unwrap();
    // A tree whose symlink points at the user's home, and files that would be written through
    // it and through an output symlink to the same place.
    let tree = Tree {
        root: Some(Directory {
            symlinks: vec![SymlinkNode {
                name: "link".into(),
                target: home_str.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let (tree_digest, tree_bytes) = encode_message(SHA256, &tree);
    store.put_bytes("", tree_digest, tree_bytes).await.unwrap();
    let file_tree = Tree {
        root: Some(Directory {
            files: vec![remexec_core::reapi::FileNode {
                name: ".bashrc".into(),
                digest: Some(payload_digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let (file_tree_digest, file_tree_bytes) = encode_message(SHA256, &file_tree);
    store
        .put_bytes("", file_tree_digest, file_tree_bytes)
        .await
        .unwrap();
    let file = |path: &str| OutputFile {
        path: path.into(),
        digest: Some(payload_digest.to_proto()),
        ..Default::default()
    };
    vec![
        ActionResult {
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            }],
            output_files: vec![file("d/link/.bashrc")],
            ..Default::default()
        },
        ActionResult {
            output_symlinks: vec![OutputSymlink {
                path: "s".into(),
                target: home_str.clone(),
                ..Default::default()
            }],
            output_files: vec![file("s/.profile")],
            ..Default::default()
        },
        // The symlink comes from one output directory, the file from another below it.
        ActionResult {
            output_directories: vec![
                OutputDirectory {
                    path: "d".into(),
                    tree_digest: Some(tree_digest.to_proto()),
                    ..Default::default()
                },
                OutputDirectory {
                    path: "d/link".into(),
                    tree_digest: Some(file_tree_digest.to_proto()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
        // A file below `f`, which an earlier run left as a symlink to the home directory.
        ActionResult {
            output_files: vec![file("f/.bash_profile")],
            ..Default::default()
        },
    ]
}

/// The digest of the one entry of a disk Action Cache.
fn cached_action(ac: &Path) -> Digest {
    let mut found = Vec::new();
    let mut stack = vec![ac.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if let Some((hash, size)) =
                entry.file_name().to_str().and_then(|n| n.split_once('-'))
            {
                found.push(Digest::from_hex(SHA256, hash, size.parse().unwrap()).unwrap());
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]
}

/// Makes `path` and everything below it belong to `nobody`.
fn give_to_nobody(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(65534), Some(65534)).unwrap();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
}

/// A directory tree whose owner cannot simply delete it: files without write bits in a
/// directory without write bits, inside one with no permissions at all.
fn make_unremovable(dir: &Path) {
    std::fs::create_dir_all(dir.join("locked/sub")).unwrap();
    std::fs::write(dir.join("locked/sub/file"), "x").unwrap();
    give_to_nobody(dir);
    for (p, mode) in [
        ("locked/sub/file", 0o444),
        ("locked/sub", 0o500),
        ("locked", 0o000),
    ] {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn leftovers_never_stop_the_server_nor_an_executor() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = top.path().join("data");
    for leftover in ["worker/actions/old", "worker/cache/old", "cas/tmp/old"] {
        make_unremovable(&data.join(leftover));
    }
    give_to_nobody(&data);
    let work = tempfile::tempdir().unwrap();
    // Run as nobody, so that permissions bind the server as they would in production.
    let server = ServerProcess::start_as_nobody(&data, &["--executors", "1"]);
    let script = "mkdir -p d/e && touch d/e/f && chmod 444 d/e/f && chmod 500 d/e && chmod 000 d && echo made";
    let (code, stdout, stderr) = exec_within(
        &server,
        work.path(),
        &["--no-cache", "--", "sh", "-c", script],
        60,
    )
    .expect("the action ran");
    assert_eq!((code, stdout.as_str()), (0, "made\n"), "{stderr}");
    let (code, stdout, stderr) = exec_within(
        &server,
        work.path(),
        &["--no-cache", "--", "echo", "next"],
        60,
    )
    .expect("the executor took the next action");
    assert_eq!((code, stdout.as_str()), (0, "next\n"), "{stderr}");
    let actions = data.join("worker/actions");
    assert!(
        wait_until(10, || std::fs::read_dir(&actions).unwrap().count() == 0),
        "action directories were left behind: {:?}",
        std::fs::read_dir(&actions).unwrap().collect::<Vec<_>>()
    );
    drop(server);
    // Restarting over whatever is left works too.
    let _again = ServerProcess::start_as_nobody(&data, &["--executors", "1"]);
}
