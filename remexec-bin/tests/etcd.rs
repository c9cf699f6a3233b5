//! The storage roster in a real etcd: two `remexec scheduler --storage etcd://…` processes
//! and three `remexec worker --listen` processes that register there. Both schedulers list the
//! same workers and place every blob alike; a SIGKILLed worker leaves both rosters when its
//! lease ends (it is `lost`, not `unreachable`), and its blobs are back on 2 live workers; one
//! stopped cleanly leaves at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{ServerProcess, require_tool, wait_until};

/// `remexec ARGS…`: its stdout, once it succeeded.
fn remexec(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(args)
        .env("REMEXEC_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "remexec {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The members of `cluster status` through `server`, by state.
fn members(server: &str) -> BTreeMap<String, BTreeSet<String>> {
    let status = remexec(&["cluster", "status", "--json", "--server", server]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let mut by_state: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in status["members"].as_array().unwrap() {
        let state = m["state"].as_str().unwrap().to_string();
        let name = m["name"].as_str().unwrap().to_string();
        by_state.entry(state).or_default().insert(name);
    }
    by_state
}

/// `cas locate --json` through `server`: each digest's (placement, holders).
fn locate(server: &str, digests: &[String]) -> BTreeMap<String, (Vec<String>, BTreeSet<String>)> {
    let mut args = vec!["cas", "locate", "--json", "--server", server];
    args.extend(digests.iter().map(String::as_str));
    let list: serde_json::Value = serde_json::from_str(&remexec(&args)).unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        let list = v.as_array().unwrap().iter();
        list.map(|h| h.as_str().unwrap().to_string()).collect()
    };
    let rows = list.as_array().unwrap().iter().map(|l| {
        let digest = l["digest"].as_str().unwrap().to_string();
        (
            digest,
            (
                names(&l["placement"]),
                names(&l["holders"]).into_iter().collect(),
            ),
        )
    });
    rows.collect()
}

/// `remexec worker NAME` for scheduler `scheduler`, its CAS port in the etcd roster `seed`.
fn worker(scheduler: &str, name: &str, seed: &str, dir: &Path) -> Child {
    let listen = format!("127.0.0.1:{}", common::free_port());
    Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["worker", "--scheduler", scheduler, "--name", name])
        .args(["--executors", "1", "--listen", &listen])
        .args(["--storage", seed, "--replicas", "2"])
        .arg("--data-dir")
        .arg(dir.join(name))
        .env("REMEXEC_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Stops `child` with SIGTERM; then every one of `servers` lists `lost` as lost, within
/// 8 s of the stop (its lease would last 10).
fn stop_and_leave(mut child: Child, servers: &[&str], lost: &BTreeSet<String>) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = std::time::Instant::now();
    assert!(child.wait().unwrap().success());
    for server in servers {
        let left = || members(server).get("lost") == Some(lost);
        assert!(wait_until(30, left), "{:?}", members(server));
    }
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
}

#[test]
fn workers_registered_in_etcd_are_every_schedulers_roster_and_a_killed_one_leaves_it() {
    let Some(binary) = require_tool("ETCD", "etcd") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let etcd = runtime.block_on(remexec_core::testing::etcd::EtcdServer::start(&binary));
    let seed = etcd.seed("remexec/storage");
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--replicas", "2", "--storage", seed.as_str()];
    let schedulers: Vec<ServerProcess> = (0..2)
        .map(|i| ServerProcess::start_role("scheduler", &dir.path().join(format!("s{i}")), &flags))
        .collect();
    let (a, b) = (schedulers[0].url(), schedulers[1].url());
    let mut workers = Workers(
        (1..=3)
            .map(|i| {
                let name = format!("w{i}");
                let child = worker(&a, &name, &seed, dir.path());
                (name, child)
            })
            .collect(),
    );
    let all: BTreeSet<String> = workers.0.keys().cloned().collect();
    for server in [&a, &b] {
        let live = || members(server).get("live") == Some(&all);
        assert!(wait_until(30, live), "{:?}", members(server));
    }
    let input = dir.path().join("input");
    let digests = common::files(&input, 40);
    remexec(&["cas", "upload", input.to_str().unwrap(), "--server", &a]);
    let (through_a, through_b) = (locate(&a, &digests), locate(&b, &digests));
    for (digest, (placement, holders)) in &through_a {
        assert_eq!(placement, &through_b[digest].0, "{digest}");
        assert!(holders.len() >= 2, "{digest} is on {holders:?}");
    }
    // SIGKILL the worker holding the most: it renews its lease no more.
    let victim = all
        .iter()
        .max_by_key(|n| through_a.values().filter(|(_, h)| h.contains(*n)).count())
        .unwrap()
        .clone();
    let mut child = workers.0.remove(&victim).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Within its lease (10 s) and a round it leaves both rosters: lost, not unreachable.
    let lost = BTreeSet::from([victim.clone()]);
    for server in [&a, &b] {
        let left = || {
            let m = members(server);
            m.get("lost") == Some(&lost) && !m.contains_key("unreachable")
        };
        assert!(wait_until(30, left), "{:?}", members(server));
    }
    // Both place every blob over the two left, and its blobs are back on both.
    let back = || {
        let (a, b) = (locate(&a, &digests), locate(&b, &digests));
        a.iter().all(|(d, (placement, holders))| {
            !placement.contains(&victim) && placement == &b[d].0 && holders.len() >= 2
        })
    };
    assert!(wait_until(60, back), "{:?}", locate(&a, &digests));
    // A worker stopped cleanly (SIGTERM) revokes its lease: it leaves both rosters at once,
    // well before its lease would end.
    let (name, child) = workers.0.pop_first().unwrap();
    let lost = BTreeSet::from([victim.clone(), name]);
    stop_and_leave(child, &[&a, &b], &lost);
}

/// Worker processes by name, killed on drop (a failed assertion included).
struct Workers(BTreeMap<String, Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
