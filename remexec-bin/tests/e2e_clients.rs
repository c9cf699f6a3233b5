//! Real clients against a real `remexec serve`: Bazel 4.2.3 as a remote cache, BuildGrid's
//! `bgd` command-line client, and BuildStream 2 with remote execution.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{ServerProcess, fixtures, require_tool};

#[test]
fn bazel_builds_with_remote_cache_and_rebuilds_from_it() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/cache_e2e.sh"))
        .arg(server.url())
        .env("BAZEL", bazel)
        .status()
        .unwrap();
    assert!(status.success(), "cache_e2e.sh failed: {status}");
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "clean shutdown on SIGTERM"
    );
}

/// Bazel's `--experimental_remote_downloader` against remexec's Remote Asset API: an
/// `http_file` and an `http_archive` from a loopback origin, again with the origin stopped (a
/// fresh output base, no repository cache), and a wrong `sha256` refused and never stored.
#[test]
fn bazel_fetches_http_files_and_archives_through_the_remote_downloader() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("remexec.toml");
    std::fs::write(&config, "[asset]\nprivate_addresses = true\n").unwrap();
    let config = config.to_str().unwrap();
    let server = ServerProcess::start(data.path(), &["--config", config]);
    let bad = data.path().join("bad-digest");
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/asset_e2e.sh"))
        .arg(server.url())
        .env("BAZEL", bazel)
        .env("BAD_DIGEST_OUT", &bad)
        .status()
        .unwrap();
    assert!(status.success(), "asset_e2e.sh failed: {status}");
    // The content whose checksum did not match is not in the CAS.
    let bad = std::fs::read_to_string(&bad).unwrap();
    let digest =
        remexec_core::Digest::parse(remexec_core::DigestFunction::Sha256, bad.trim()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let missing = runtime.block_on(async {
        use remexec_proto::reapi::FindMissingBlobsRequest;
        let channel = remexec_core::client::connect(&server.url()).await.unwrap();
        let request = FindMissingBlobsRequest {
            blob_digests: vec![digest.to_proto()],
            ..Default::default()
        };
        let reply = remexec_core::client::cas_client(channel)
            .find_missing_blobs(request)
            .await
            .unwrap();
        reply.into_inner().missing_blob_digests
    });
    assert_eq!(
        missing,
        vec![digest.to_proto()],
        "the refused content was stored"
    );
}

#[test]
fn buildgrid_bgd_client_uploads_downloads_and_uses_the_action_cache() {
    let Some(bgd) = require_tool("BGD", "bgd") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--action-cache", "memory"]);
    for instance in ["", "team/a"] {
        let status = Command::new("bash")
            .arg(fixtures().join("bgd/bgd_e2e.sh"))
            .arg(server.url())
            .arg(&bgd)
            .env("BGD_E2E_INSTANCE", instance)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "bgd_e2e.sh failed for instance {instance:?}: {status}"
        );
    }
}

#[test]
fn buildgrid_bgd_executes_a_command_and_gets_its_outputs() {
    let Some(bgd) = require_tool("BGD", "bgd") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--executors", "2"]);
    std::fs::create_dir_all(work.path().join("in/sub")).unwrap();
    std::fs::write(work.path().join("in/sub/f.txt"), "abc\n").unwrap();
    let out = Command::new(&bgd)
        .args([
            "execute",
            "--remote",
            &server.url(),
            "command",
            "--output-file",
            "out.txt",
            "in",
            "--",
        ])
        .args(["sh", "-c", "cat sub/f.txt sub/f.txt > out.txt; echo done"])
        .current_dir(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bgd failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("done: true"), "{stdout}");
    // bgd downloads outputs into ./testing by default.
    assert_eq!(
        std::fs::read_to_string(work.path().join("testing/out.txt")).unwrap(),
        "abc\nabc\n"
    );
}

/// BuildStream 2.8.1 builds a project remotely on `remexec serve` configured as
/// docs/examples/buildstream.toml says (its actions chrooted into their input root, on the
/// executors of the `buildstream` instance name), then again from an empty local cache, all
/// from the Action Cache. As root, so that the server runs actions as its action user.
#[test]
fn buildstream_builds_remotely_with_its_input_root_as_root_and_rebuilds_from_the_action_cache() {
    let Some(bst) = require_tool("BST", "bst") else {
        return;
    };
    if require_tool("BWRAP", "bwrap").is_none() {
        return;
    }
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/buildstream.toml");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = server.admin_addr.expect("admin port").to_string();
    // BuildStream spells plaintext gRPC as http://.
    let url = server.url().replace("grpc://", "http://");
    let status = Command::new("bash")
        .arg(fixtures().join("buildstream/bst_e2e.sh"))
        .args([url.as_str(), admin.as_str()])
        .arg(&bst)
        .status()
        .unwrap();
    assert!(status.success(), "bst_e2e.sh failed: {status}");
}

fn exec_e2e(url: &str, bazel: &std::path::Path, env: &[(&str, &str)]) {
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/exec_e2e.sh"))
        .arg(url)
        .env("BAZEL", bazel)
        .envs(env.iter().copied())
        .status()
        .unwrap();
    assert!(status.success(), "exec_e2e.sh {env:?} failed: {status}");
}

#[test]
fn bazel_runs_every_action_remotely_on_the_all_in_one_server() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    exec_e2e(&server.url(), &bazel, &[]);
    assert_eq!(
        server.terminate().code(),
        Some(0),
        "clean shutdown on SIGTERM"
    );
}

/// A server run as root with its default data dir below a home of mode 0700 (root's own, or
/// one made by `mktemp -d`) runs actions as its unprivileged action user, which cannot search
/// that home: Bazel's test runner, which `cd`s to absolute paths, must still work.
#[test]
fn a_root_server_with_its_data_dir_below_a_private_home_runs_bazel_tests_remotely() {
    use std::os::unix::fs::PermissionsExt;
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the server runs actions as itself; skipping");
        return;
    }
    // The default backend, and bubblewrap's, which binds the input root into its sandbox.
    let mut backends = vec![vec![]];
    if require_tool("BWRAP", "bwrap").is_some() {
        backends.push(vec!["--isolation", "namespaces"]);
    }
    for extra in backends {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let server = ServerProcess::start_in_home(home.path(), &extra);
        exec_e2e(&server.url(), &bazel, &[]);
        assert!(
            home.path().join(".cache/remexec/cas").is_dir(),
            "the server kept its data in the default data dir"
        );
        assert_eq!(
            std::fs::metadata(home.path()).unwrap().permissions().mode() & 0o777,
            0o700,
            "the home is left as it was"
        );
    }
}

#[test]
fn bazel_runs_every_action_remotely_in_namespaces() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    if require_tool("BWRAP", "bwrap").is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--isolation", "namespaces"]);
    exec_e2e(&server.url(), &bazel, &[]);
}

/// On the Docker backend, in `.ci/test-image`'s image of the host's toolchain.
#[cfg(feature = "docker")]
#[test]
fn bazel_runs_every_action_remotely_in_docker() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/test-image");
    let built = Command::new("bash").arg(script).status().unwrap();
    assert!(built.success(), "the test images");
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("docker.toml");
    std::fs::write(
        &config,
        "[worker]\nisolation = \"docker\"\nimage = \"remexec-toolchain:latest\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(
        &data.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    exec_e2e(&server.url(), &bazel, &[]);
    // Those actions ran in the image: its /etc/passwd has the two lines .ci/test-image wrote.
    let cwd = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = common::exec(
        &server,
        cwd.path(),
        &["--no-cache", "--", "sh", "-c", "wc -l < /etc/passwd"],
    );
    assert_eq!((code, stdout.as_str()), (0, "2\n"), "{stderr}");
}

#[test]
fn bazel_runs_every_action_remotely_with_remote_download_minimal() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    exec_e2e(&server.url(), &bazel, &[("BAZEL_DOWNLOAD_MINIMAL", "1")]);
}

#[test]
fn bazel_runs_every_action_remotely_on_a_scheduler_with_two_workers() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let scheduler = ServerProcess::start_role("scheduler", dirs[0].path(), &[]);
    let mut workers = vec![
        common::start_worker(&scheduler, "w1", dirs[1].path(), 2),
        common::start_worker(&scheduler, "w2", dirs[2].path(), 2),
    ];
    // --jobs=8 keeps both workers' executors busy.
    exec_e2e(
        &scheduler.url(),
        &bazel,
        &[("BAZEL_EXTRA_FLAGS", "--jobs=8")],
    );
    // Both workers took part.
    for d in &dirs[1..] {
        assert!(
            std::fs::read_dir(d.path().join("worker/cache"))
                .unwrap()
                .count()
                > 1,
            "a worker ran nothing"
        );
    }
    assert_eq!(
        scheduler.terminate().code(),
        Some(0),
        "clean shutdown with workers attached"
    );
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[test]
fn bazel_build_succeeds_when_the_worker_running_its_action_is_killed() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let scheduler = ServerProcess::start_role("scheduler", dirs[0].path(), &[]);
    let mut workers: Vec<_> = [("w1", 1), ("w2", 2)]
        .iter()
        .map(|(n, i)| {
            (
                common::start_worker(&scheduler, n, dirs[*i].path(), 1),
                dirs[*i].path().to_path_buf(),
            )
        })
        .collect();
    let mut build = Command::new("bash")
        .arg(fixtures().join("bazel/build_target.sh"))
        .args([
            &scheduler.url(),
            "//gen:slow",
            "gen/slow.txt",
            "slow action finished",
        ])
        .env("BAZEL", &bazel)
        .spawn()
        .unwrap();
    let busy = |d: &std::path::Path| {
        std::fs::read_dir(d.join("worker/actions"))
            .map(|r| r.count() > 0)
            .unwrap_or(false)
    };
    assert!(
        common::wait_until(120, || workers.iter().any(|(_, d)| busy(d))),
        "no worker started the slow action"
    );
    let victim = workers.iter().position(|(_, d)| busy(d)).unwrap();
    let (mut child, _) = workers.remove(victim);
    child.kill().unwrap();
    child.wait().unwrap();
    let status = build.wait().unwrap();
    assert!(
        status.success(),
        "the build failed after a worker was killed: {status}"
    );
    for (mut w, _) in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[test]
fn bazel_builds_remotely_over_mutual_tls_and_a_worker_without_the_cluster_certificate_is_shut_out()
{
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    common::dev_certs(certs.path());
    let c = |name: &str| common::path_arg(certs.path(), name);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let scheduler = ServerProcess::start_role(
        "scheduler",
        dirs[0].path(),
        &[
            "--tls-cert",
            &c("server.pem"),
            "--tls-key",
            &c("server.key"),
            "--client-ca",
            &c("ca.pem"),
            "--worker-listen",
            "127.0.0.1:0",
        ],
    );
    let worker_url = format!(
        "grpcs://localhost:{}",
        scheduler.worker_addr.unwrap().port()
    );
    let identity = |name: &str| {
        vec![
            "--tls-ca".to_string(),
            c("ca.pem"),
            "--tls-cert".into(),
            c(&format!("{name}.pem")),
            "--tls-key".into(),
            c(&format!("{name}.key")),
        ]
    };
    let cluster = identity("cluster");
    let cluster: Vec<&str> = cluster.iter().map(String::as_str).collect();
    let client = identity("client");
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let log = dirs[2].path().join("intruder.log");
    let _workers = [
        common::start_worker_at(
            &worker_url,
            "member",
            dirs[1].path(),
            2,
            &cluster,
            std::process::Stdio::inherit(),
        ),
        common::start_worker_at(
            &worker_url,
            "intruder",
            dirs[2].path(),
            2,
            &client,
            std::fs::File::create(&log).unwrap().into(),
        ),
    ]
    .map(common::KillOnDrop);
    let flags = format!(
        "--tls_certificate={} --tls_client_certificate={} --tls_client_key={}",
        c("ca.pem"),
        c("client.pem"),
        c("client.key")
    );
    let url = format!("grpcs://localhost:{}", scheduler.addr.port());
    exec_e2e(&url, &bazel, &[("BAZEL_EXTRA_FLAGS", &flags)]);
    let ran =
        |d: &std::path::Path| std::fs::read_dir(d.join("worker/cache")).map_or(0, |d| d.count());
    assert!(ran(dirs[1].path()) > 1, "the cluster member ran nothing");
    assert!(
        ran(dirs[2].path()) <= 1,
        "the worker with a client certificate ran actions"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("not allowed"), "the intruder's log: {log}");
}

#[test]
fn bazel_builds_remotely_over_tls_with_a_bearer_token() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    common::dev_certs(certs.path());
    let c = |name: &str| common::path_arg(certs.path(), name);
    let token = "e2e-token-0123456789";
    std::fs::write(
        certs.path().join("tokens.toml"),
        format!(
            "[[token]]\nname = \"bazel\"\nsha256 = \"{}\"\npermissions = [\"cache-read\", \"cache-write\", \"execute\"]\n",
            remexec_core::auth::hash_token(token)
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--tls-cert",
            &c("server.pem"),
            "--tls-key",
            &c("server.key"),
            "--token-file",
            &c("tokens.toml"),
        ],
    );
    let url = format!("grpcs://localhost:{}", server.addr.port());
    let tls = format!("--tls_certificate={}", c("ca.pem"));
    let header = format!("--remote_header=authorization=Bearer {token}");
    exec_e2e(
        &url,
        &bazel,
        &[("BAZEL_EXTRA_FLAGS", &tls), ("BAZEL_EXTRA_FLAG", &header)],
    );
}
