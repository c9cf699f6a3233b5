//! The cluster of `docs/docker/compose.yaml` under the real Docker engine: images built here
//! with `docs/docker/build-image.sh` (no registry), 2 schedulers and 3 workers on a private
//! network. A Bazel build runs through one scheduler while one worker is cut off the network
//! (`docker network disconnect`) and then reconnected: the build succeeds with the right
//! outputs, and every blob it referenced ends on 2 live workers.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, free_port, require_tool, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `program args…`, panicking with its output unless it succeeds; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `remexec ARGS…`'s stdout, if it succeeds.
fn remexec(args: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(args)
        .env("REMEXEC_LOG", "warn")
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(server: &str) -> Option<serde_json::Value> {
    let out = remexec(&["cluster", "status", "--json", "--server", server])?;
    serde_json::from_str(&out).ok()
}

fn live(status: &serde_json::Value) -> BTreeSet<String> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "live")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// A compose project, taken down (with its volumes) when dropped.
struct Project {
    compose: PathBuf,
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose);
        command
            .args(["-p", &self.name, "-f"])
            .arg(repo().join("docs/docker/compose.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn container(&self, service: &str) -> String {
        let out = self.command(&["ps", "-q", service]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_CONTAINERS").is_none() {
            let _ = self.command(&["down", "-v", "-t", "2"]).output();
        }
    }
}

/// Whether every digest is held by at least 2 of `live` at `server`.
fn on_two_live(server: &str, digests: &[String], live: &BTreeSet<String>) -> bool {
    let mut args = vec!["cas", "locate", "--json", "--server", server];
    args.extend(digests.iter().map(String::as_str));
    let Some(out) = remexec(&args) else {
        return false;
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array().unwrap().iter().all(|l| {
        l["holders"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| live.contains(h.as_str().unwrap()))
            .count()
            >= 2
    })
}

/// Builds the images and starts the compose project; waits until both schedulers see the 3
/// workers and each other. Returns the project and the schedulers' URLs.
fn start_project(compose: PathBuf) -> (Project, String, String) {
    let binary = env!("CARGO_BIN_EXE_remexec");
    let build_image = repo().join("docs/docker/build-image.sh");
    let build_image = build_image.to_str().unwrap();
    run(build_image, &[binary, "remexec-compose-test:latest"]);
    run(
        build_image,
        &[
            binary,
            "remexec-compose-worker:latest",
            "remexec-toolchain:latest",
        ],
    );
    let (p1, p2) = (free_port(), free_port());
    let project = Project {
        compose,
        name: format!("remexec-test-{}", std::process::id()),
        env: vec![
            ("REMEXEC_IMAGE".into(), "remexec-compose-test:latest".into()),
            (
                "REMEXEC_WORKER_IMAGE".into(),
                "remexec-compose-worker:latest".into(),
            ),
            ("S1_PORT".into(), p1.to_string()),
            ("S2_PORT".into(), p2.to_string()),
        ],
    };
    let up = project.command(&["up", "-d"]).output().unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let (s1, s2) = (
        format!("grpc://127.0.0.1:{p1}"),
        format!("grpc://127.0.0.1:{p2}"),
    );
    for server in [&s1, &s2] {
        // Each scheduler names itself as its peers name it (they resolve s1 and s2).
        let ready = |s: &serde_json::Value| {
            let schedulers = s["schedulers"].as_array().cloned().unwrap_or_default();
            live(s).len() == 3 && schedulers.len() == 2 && schedulers.contains(&s["scheduler"])
        };
        assert!(
            wait_until(120, || status(server).is_some_and(|s| ready(&s))),
            "the cluster never formed at {server}: {:?}",
            status(server)
        );
    }
    (project, s1, s2)
}

/// Cuts `worker` off the project's network until `server` notices it gone, then reconnects it.
fn cut_off_and_reconnect(project: &Project, server: &str, worker: &str) {
    let network = format!("{}_remexec", project.name.replace('-', ""));
    let network = if run(
        "docker",
        &["network", "ls", "-q", "-f", &format!("name={network}")],
    )
    .trim()
    .is_empty()
    {
        format!("{}_remexec", project.name)
    } else {
        network
    };
    let container = project.container(worker);
    run("docker", &["network", "disconnect", &network, &container]);
    assert!(
        wait_until(60, || status(server)
            .is_some_and(|s| !live(&s).contains(worker))),
        "{worker} was never noticed gone"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    run(
        "docker",
        &[
            "network", "connect", "--alias", worker, &network, &container,
        ],
    );
}

#[test]
fn a_compose_cluster_builds_while_a_worker_is_cut_off_the_network_and_loses_no_blob() {
    let (Some(bazel), Some(compose)) = (
        require_tool("BAZEL", "bazel"),
        require_tool("DOCKER_COMPOSE", "docker-compose"),
    ) else {
        return;
    };
    let (project, s1, _s2) = start_project(compose);
    let dir = tempfile::tempdir().unwrap();
    let exec_log = dir.path().join("exec.json");
    let mut build = Command::new("bash")
        .arg(fixtures().join("bazel/cluster_build.sh"))
        .arg(&s1)
        .arg(&exec_log)
        .env("BAZEL", &bazel)
        .spawn()
        .unwrap();
    // Once the build has stored something on the workers, cut w1 off, then bring it back.
    let stored = |s: &serde_json::Value| {
        s["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["blobs"].as_u64() > Some(0))
    };
    assert!(
        wait_until(300, || status(&s1).is_some_and(|s| stored(&s))),
        "the build stored nothing"
    );
    cut_off_and_reconnect(&project, &s1, "w1");
    let built = build.wait().unwrap();
    assert!(
        built.success(),
        "the build failed around the network cut: {built}"
    );
    let digests = common::logged_digests(&exec_log);
    assert!(digests.len() >= 10, "{digests:?}");
    let members = status(&s1).map(|s| live(&s)).unwrap_or_default();
    assert!(members.len() >= 2, "{members:?}");
    assert!(
        wait_until(120, || {
            let members = status(&s1).map(|s| live(&s)).unwrap_or_default();
            on_two_live(&s1, &digests, &members)
        }),
        "blobs of the build are not on 2 live workers"
    );
    // w1 comes back as a member.
    assert!(
        wait_until(120, || status(&s1).is_some_and(|s| live(&s).contains("w1"))),
        "w1 never came back: {:?}",
        status(&s1)
    );
}
