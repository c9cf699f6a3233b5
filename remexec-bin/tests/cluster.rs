//! A cluster whose CAS is on its workers: a real `remexec scheduler --replicas 2` and
//! `remexec worker --listen` processes on loopback. Blobs are on 2 workers; after a worker is
//! SIGKILLed every blob is back on 2 live ones; a joining worker takes its share; a worker
//! with another replica count is refused; a Bazel build survives a worker's loss.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{ServerProcess, fixtures, require_tool, wait_until};

/// `remexec ARGS…`: exit code, stdout, stderr.
fn remexec(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(args)
        .env("REMEXEC_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The storage plane of a test cluster: a CAS port set aside on loopback for each worker to
/// come (by number, from 1), all of them the seeds every scheduler and worker follows.
struct Storage(Vec<String>);

impl Storage {
    fn new(workers: usize) -> Self {
        Self(
            (0..workers)
                .map(|_| format!("127.0.0.1:{}", common::free_port()))
                .collect(),
        )
    }

    /// `--storage`'s value.
    fn seeds(&self) -> String {
        let urls: Vec<String> = self.0.iter().map(|a| format!("grpc://{a}")).collect();
        urls.join(",")
    }

    /// The CAS port of worker `i` (from 1).
    fn listen(&self, i: usize) -> &str {
        &self.0[i - 1]
    }
}

/// Worker `i` of `storage` serving its CAS, keeping `replicas` copies.
fn cluster_worker(
    scheduler: &str,
    (storage, i): (&Storage, usize),
    name: &str,
    dir: &Path,
    replicas: &str,
    log: &Path,
) -> Child {
    cluster_worker_with(scheduler, (storage, i), name, dir, replicas, log, &[])
}

/// [`cluster_worker`] with extra flags (a `--storage` among them replaces `storage`'s seeds).
fn cluster_worker_with(
    scheduler: &str,
    (storage, i): (&Storage, usize),
    name: &str,
    dir: &Path,
    replicas: &str,
    log: &Path,
    extra: &[&str],
) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let seeds = match extra.contains(&"--storage") {
        true => Vec::new(),
        false => vec!["--storage".to_string(), storage.seeds()],
    };
    Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["worker", "--scheduler", scheduler, "--name", name])
        .args(["--executors", "1", "--listen", storage.listen(i)])
        .args(seeds)
        .args(["--replicas", replicas])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("REMEXEC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap()
}

/// `cluster status --json`.
fn status(server: &str) -> serde_json::Value {
    let (code, out, err) = remexec(&["cluster", "status", "--json", "--server", server]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The members in `state`.
fn members(status: &serde_json::Value, state: &str) -> BTreeSet<String> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == state)
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// Each digest's holders, as `cas locate --json` reports them, asking 500 at a time.
fn locate(server: &str, digests: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    for chunk in digests.chunks(500) {
        let mut args = vec!["cas", "locate", "--json", "--server", server];
        args.extend(chunk.iter().map(String::as_str));
        let (code, out, err) = remexec(&args);
        assert_eq!(code, 0, "{err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        for l in list.as_array().unwrap() {
            let holders = l["holders"].as_array().unwrap();
            found.insert(
                l["digest"].as_str().unwrap().to_string(),
                holders
                    .iter()
                    .map(|h| h.as_str().unwrap().to_string())
                    .collect(),
            );
        }
    }
    found
}

/// Whether every digest is on at least `r` of `live`'s members.
fn all_on_live(
    found: &BTreeMap<String, BTreeSet<String>>,
    live: &BTreeSet<String>,
    r: usize,
) -> bool {
    found
        .values()
        .all(|holders| holders.iter().filter(|h| live.contains(*h)).count() >= r)
}

struct Cluster {
    scheduler: ServerProcess,
    storage: Storage,
    /// Workers started so far: the next takes the next CAS port.
    started: usize,
    workers: BTreeMap<String, Child>,
    /// Each worker's admin port.
    admin: BTreeMap<String, std::net::SocketAddr>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A scheduler with `--replicas 2` and workers w1…wN, waiting until all are members;
    /// CAS ports are set aside for 2 more workers (`add`).
    fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(n + 2);
        let seeds = storage.seeds();
        let scheduler = ServerProcess::start_role(
            "scheduler",
            &dir.path().join("scheduler"),
            &[
                "--replicas",
                "2",
                "--storage",
                &seeds,
                "--admin-listen",
                "127.0.0.1:0",
            ],
        );
        let mut cluster = Self {
            scheduler,
            storage,
            started: 0,
            workers: BTreeMap::new(),
            admin: BTreeMap::new(),
            dir,
        };
        for i in 1..=n {
            cluster.add(&format!("w{i}"));
        }
        cluster
    }

    /// Starts worker `name` and waits until it is a live member.
    fn add(&mut self, name: &str) {
        let dir = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let admin_flag = admin.to_string();
        let extra = ["--admin-listen", admin_flag.as_str()];
        self.started += 1;
        let cas = (&self.storage, self.started);
        let child = cluster_worker_with(&self.scheduler.url(), cas, name, &dir, "2", &log, &extra);
        self.workers.insert(name.to_string(), child);
        self.admin.insert(name.to_string(), admin);
        let server = self.scheduler.url();
        assert!(
            wait_until(30, || members(&status(&server), "live").contains(name)),
            "{name} never became a member; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn kill(&mut self, name: &str) {
        let mut child = self.workers.remove(name).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn live(&self) -> BTreeSet<String> {
        members(&status(&self.scheduler.url()), "live")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.workers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The scheduler's `/metrics` count the survivors as members, and each survivor's show no
/// copies left to make and its CAS's usage.
fn assert_cluster_metrics(cluster: &Cluster, survivors: &BTreeSet<String>) {
    // The same figures on /metrics: the scheduler's members, each survivor's copies to make
    // and its CAS's usage.
    let scrape = |addr| {
        common::http_get(addr, "/metrics", &[])
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let admin = cluster.scheduler.admin_addr.unwrap();
    assert!(
        scrape(admin).contains("remexec_cluster_members 2"),
        "{}",
        scrape(admin)
    );
    for name in survivors {
        let body = scrape(cluster.admin[name]);
        assert!(body.contains("remexec_cluster_members 2"), "{body}");
        assert!(body.contains("remexec_cluster_copies_to_make 0"), "{body}");
        assert!(
            body.contains("remexec_store_size_bytes{store=\"worker_cas\"}"),
            "{body}"
        );
    }
}

#[test]
fn blobs_are_on_two_workers_and_back_on_two_live_ones_after_a_worker_is_killed() {
    let mut cluster = Cluster::start(3);
    let server = cluster.scheduler.url();
    let input = cluster.dir.path().join("input");
    let digests = common::files(&input, 60);
    let (code, root, err) = remexec(&[
        "cas",
        "upload",
        input.to_str().unwrap(),
        "--server",
        &server,
    ]);
    assert_eq!(code, 0, "{err}");
    let found = locate(&server, &digests);
    assert_eq!(found.len(), digests.len());
    let live = cluster.live();
    for (digest, holders) in &found {
        assert_eq!(holders.len(), 2, "{digest} is on {holders:?}");
    }
    // Every worker holds some: placement spreads the blobs.
    for name in &live {
        assert!(
            found.values().any(|h| h.contains(name)),
            "{name} holds nothing"
        );
    }
    // Kill the worker holding the most; each blob it held is down to one copy.
    let victim = live
        .iter()
        .max_by_key(|n| found.values().filter(|h| h.contains(*n)).count())
        .unwrap()
        .clone();
    cluster.kill(&victim);
    let survivors: BTreeSet<String> = live.iter().filter(|n| **n != victim).cloned().collect();
    // Reads work at once, from the surviving replica.
    let out = cluster.dir.path().join("out");
    let (code, _, err) = remexec(&[
        "cas",
        "download",
        root.trim(),
        out.to_str().unwrap(),
        "--server",
        &server,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out.join("f7")).unwrap(),
        std::fs::read(input.join("f7")).unwrap()
    );
    assert!(
        wait_until(60, || all_on_live(
            &locate(&server, &digests),
            &survivors,
            2
        )),
        "blobs are not back on 2 live workers: {:?}",
        locate(&server, &digests)
    );
    let s = status(&server);
    // The seeds still name it: it stays on the roster, unreachable.
    assert_eq!(members(&s, "unreachable"), BTreeSet::from([victim.clone()]));
    assert!(
        wait_until(10, || status(&server)["below_replicas"] == 0),
        "{s}"
    );
    assert_cluster_metrics(&cluster, &survivors);
    // A worker that joins takes its share: blobs move to their new placement.
    cluster.add("w4");
    let placed = |found: &BTreeMap<String, BTreeSet<String>>| {
        found.values().filter(|h| h.contains("w4")).count()
    };
    assert!(
        wait_until(60, || placed(&locate(&server, &digests)) > 0),
        "no blob moved to the new worker"
    );
    let (code, _, err) = remexec(&[
        "cas",
        "download",
        root.trim(),
        cluster.dir.path().join("out2").to_str().unwrap(),
        "--server",
        &server,
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_worker_keeping_another_replica_count_is_refused() {
    let cluster = Cluster::start(2);
    let log = cluster.dir.path().join("odd.log");
    let mut odd = cluster_worker(
        &cluster.scheduler.url(),
        (&cluster.storage, cluster.started + 1),
        "odd",
        &cluster.dir.path().join("odd"),
        "3",
        &log,
    );
    let refused = || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("keeps 3 replicas of each blob, and this cluster 2"))
    };
    assert!(
        wait_until(30, refused),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!cluster.live().contains("odd"));
    odd.kill().unwrap();
    odd.wait().unwrap();
    // Locate checks its input like any other request.
    let (code, _, err) = remexec(&[
        "cas",
        "locate",
        "nothex/3",
        "--server",
        &cluster.scheduler.url(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("hex") || err.contains("digest"), "{err}");
}

#[test]
fn bazel_build_through_one_of_two_schedulers_survives_a_worker_kill_and_its_blobs_end_on_two_live_workers()
 {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let mut cluster = TwoSchedulers::start();
    let server = cluster.url(0);
    let exec_log = cluster.dir.path().join("exec.json");
    let mut build = Command::new("bash")
        .arg(fixtures().join("bazel/cluster_build.sh"))
        .arg(&server)
        .arg(&exec_log)
        .env("BAZEL", &bazel)
        .spawn()
        .unwrap();
    // Kill the worker running the slow action, mid-build.
    let busy = |name: &str| {
        let dir = cluster.dir.path().join(name).join("worker/actions");
        std::fs::read_dir(dir).is_ok_and(|r| r.count() > 0)
    };
    let names: Vec<String> = (1..=3).map(|i| format!("w{i}")).collect();
    assert!(
        wait_until(300, || names.iter().any(|n| busy(n))),
        "no worker started an action"
    );
    let index = names.iter().position(|n| busy(n)).unwrap();
    let victim = names[index].clone();
    cluster.workers[index].kill().unwrap();
    cluster.workers[index].wait().unwrap();
    let built = build.wait().unwrap();
    assert!(
        built.success(),
        "the build failed after {victim} was killed: {built}"
    );
    let digests = common::logged_digests(&exec_log);
    assert!(digests.len() >= 10, "{digests:?}");
    let survivors = members(&status(&server), "live");
    assert_eq!(survivors.len(), 2, "{survivors:?}");
    assert!(!survivors.contains(&victim));
    assert!(
        wait_until(60, || all_on_live(
            &locate(&server, &digests),
            &survivors,
            2
        )),
        "blobs of the build are not on 2 live workers: {:?}",
        locate(&server, &digests)
    );
}

/// Two schedulers sharing the Action Cache and the workers' CAS, and three workers serving
/// both.
struct TwoSchedulers {
    schedulers: Vec<Option<ServerProcess>>,
    workers: Vec<Child>,
    /// Each worker's admin port, by number from 0.
    admin: Vec<std::net::SocketAddr>,
    dir: tempfile::TempDir,
}

impl TwoSchedulers {
    fn start() -> Self {
        Self::start_with(3, "2")
    }

    /// With `n` workers of one executor each, keeping `replicas`.
    fn start_with(n: usize, replicas: &str) -> Self {
        Self::start_workers_with(n, replicas, &[])
    }

    /// [`start_with`](Self::start_with), the workers started with `worker_flags` too.
    fn start_workers_with(n: usize, replicas: &str, worker_flags: &[&str]) -> Self {
        Self::start_flagged(n, replicas, &[], worker_flags)
    }

    /// [`start_with`](Self::start_with), the schedulers and the workers started with flags of
    /// their own too.
    fn start_flagged(
        n: usize,
        replicas: &str,
        scheduler_flags: &[&str],
        worker_flags: &[&str],
    ) -> Self {
        let flags = (scheduler_flags, worker_flags);
        Self::start_seeded(n, replicas, flags, Storage::new(n), &|_, s| s.seeds())
    }

    /// [`start_flagged`](Self::start_flagged) on `storage`, each instance following the
    /// storage seeds `seeds(name, &storage)` gives it (schedulers `s0` and `s1`, workers `w1`…).
    fn start_seeded(
        n: usize,
        replicas: &str,
        (scheduler_flags, worker_flags): (&[&str], &[&str]),
        storage: Storage,
        seeds: &dyn Fn(&str, &Storage) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..2)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        let peers: Vec<String> = addrs.iter().map(|a| format!("grpc://{a}")).collect();
        let schedulers: Vec<Option<ServerProcess>> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let data = dir.path().join(format!("s{i}"));
                let seeds = seeds(&format!("s{i}"), &storage);
                let mut flags = vec!["--replicas", replicas, "--storage", &seeds];
                flags.extend(scheduler_flags);
                for p in &peers {
                    flags.extend(["--peer", p.as_str()]);
                }
                Some(ServerProcess::start_role_at(
                    "scheduler",
                    addr,
                    &data,
                    &flags,
                ))
            })
            .collect();
        let all = peers.join(",");
        let admin: Vec<std::net::SocketAddr> = (0..n)
            .map(|_| {
                format!("127.0.0.1:{}", common::free_port())
                    .parse()
                    .unwrap()
            })
            .collect();
        let workers = (1..=n)
            .map(|i| {
                let name = format!("w{i}");
                let log = dir.path().join(format!("{name}.log"));
                let cas = (&storage, i);
                let data = dir.path().join(&name);
                let listen = admin[i - 1].to_string();
                let seeds = seeds(&name, &storage);
                let own = ["--admin-listen", &listen, "--storage", &seeds];
                let flags = [worker_flags, &own].concat();
                cluster_worker_with(&all, cas, &name, &data, replicas, &log, &flags)
            })
            .collect();
        let both = Self {
            schedulers,
            workers,
            admin,
            dir,
        };
        for s in both.schedulers.iter().flatten() {
            let url = s.url();
            assert!(
                wait_until(30, || members(&status(&url), "live").len() == n),
                "the workers never all became members at {url}"
            );
            let peers = |s: &serde_json::Value| {
                let list = s["schedulers"].as_array().cloned().unwrap_or_default();
                if list.contains(&s["scheduler"]) {
                    list.len()
                } else {
                    0
                }
            };
            assert!(
                wait_until(30, || peers(&status(&url)) == 2),
                "the schedulers never saw each other: {}",
                status(&url)
            );
        }
        both
    }

    fn url(&self, i: usize) -> String {
        self.schedulers[i].as_ref().unwrap().url()
    }

    /// A directory every action may write to (actions of a root worker run as another user).
    fn shared_dir(&self) -> std::path::PathBuf {
        let shared = self.dir.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
        std::fs::set_permissions(&shared, mode).unwrap();
        shared
    }

    /// `remexec exec -- sh -c SCRIPT` through scheduler `i`, its output captured.
    fn spawn_exec(&self, i: usize, script: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_remexec"))
            .args(["exec", "--server", &self.url(i), "--", "sh", "-c", script])
            .current_dir(self.dir.path())
            .env("REMEXEC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for TwoSchedulers {
    fn drop(&mut self) {
        for child in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn after_a_scheduler_is_killed_the_other_answers_every_action_from_the_shared_cache() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let mut cluster = TwoSchedulers::start();
    let log = cluster.dir.path().join("exec.json");
    let build = |url: &str, mode: &str| {
        Command::new("bash")
            .arg(fixtures().join("bazel/cluster_build.sh"))
            .args([url, log.to_str().unwrap(), mode])
            .env("BAZEL", &bazel)
            .status()
            .unwrap()
    };
    assert!(
        build(&cluster.url(0), "run").success(),
        "the first build failed"
    );
    cluster.schedulers[0].take().unwrap().kill();
    // A fresh Bazel (new output base) at the other scheduler: every action a remote hit.
    assert!(
        build(&cluster.url(1), "hits").success(),
        "the second scheduler did not answer every action from the cache"
    );
}

#[test]
fn identical_executes_spread_over_both_schedulers_run_once_and_any_scheduler_shows_the_operation() {
    let cluster = TwoSchedulers::start();
    let shared = cluster.shared_dir();
    let runs = shared.join("runs");
    let script = format!("echo run >> {}; sleep 3; echo done", runs.display());
    let children: Vec<_> = (0..10)
        .map(|i| cluster.spawn_exec(i % 2, &script))
        .collect();
    let mut names = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
        names.extend(
            stderr
                .split_whitespace()
                .filter(|w| w.starts_with("operations/"))
                .map(String::from),
        );
    }
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "the action ran more than once"
    );
    // The operations it ran under are known to both schedulers.
    let executed = names
        .iter()
        .next()
        .expect("no operation name printed")
        .clone();
    for i in 0..2 {
        let (code, out, err) =
            remexec(&["show", "operation", &executed, "--server", &cluster.url(i)]);
        assert_eq!(code, 0, "scheduler {i}: {err}");
        assert!(out.contains("COMPLETED"), "{out}");
    }
    // An operation no scheduler owns is NOT_FOUND at either.
    let (code, _, err) = remexec(&[
        "show",
        "operation",
        "operations/000000000000/nope",
        "--server",
        &cluster.url(0),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is unknown"), "{err}");
}

#[test]
fn a_worker_serving_two_schedulers_never_runs_more_actions_than_it_has_executors() {
    // One worker with one executor; distinct actions sent to both schedulers at once.
    let cluster = TwoSchedulers::start_with(1, "1");
    let shared = cluster.shared_dir();
    let lock = shared.join("lock");
    let children: Vec<_> = (0..6)
        .map(|i| {
            // mkdir fails if another action holds the lock: two at once would show.
            let script = format!(
                "mkdir {lock} || {{ echo overlap; exit 3; }}; sleep 0.5; rmdir {lock}; echo {i}",
                lock = lock.display()
            );
            cluster.spawn_exec(i % 2, &script)
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "action {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
}

/// The name `.ci/test` puts in /etc/hosts for 127.0.0.2 and 127.0.0.3.
const PEERS_NAME: &str = "remexec-peers.test";

#[test]
fn schedulers_and_workers_find_each_other_through_one_dns_name() {
    use std::net::ToSocketAddrs;
    let resolved: BTreeSet<_> = (PEERS_NAME, 1)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default();
    if resolved.len() < 2 {
        eprintln!(
            "skipping: {PEERS_NAME} does not resolve to 2 addresses (.ci/test adds them to /etc/hosts)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let seed = format!("grpc://{PEERS_NAME}:{port}");
    let storage = Storage::new(1);
    let storage_seeds = storage.seeds();
    let schedulers: Vec<ServerProcess> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| {
            let data = dir.path().join(ip);
            let flags = [
                "--replicas",
                "1",
                "--storage",
                storage_seeds.as_str(),
                "--peer",
                seed.as_str(),
                "--admin-listen",
                "127.0.0.1:0",
            ];
            ServerProcess::start_role_at("scheduler", &format!("{ip}:{port}"), &data, &flags)
        })
        .collect();
    let log = dir.path().join("w1.log");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "worker",
            "--scheduler",
            &seed,
            "--discover-schedulers",
            "--name",
            "w1",
        ])
        .args([
            "--executors",
            "1",
            "--listen",
            storage.listen(1),
            "--storage",
            storage_seeds.as_str(),
            "--replicas",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("w1"))
        .env("REMEXEC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    // Each scheduler sees the worker and both schedulers, itself among them.
    for s in &schedulers {
        let url = s.url();
        let formed = |s: &serde_json::Value| {
            let list = s["schedulers"].as_array().cloned().unwrap_or_default();
            members(s, "live").contains("w1") && list.len() == 2 && list.contains(&s["scheduler"])
        };
        assert!(
            wait_until(30, || formed(&status(&url))),
            "{}\n{}",
            status(&url),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // And on /metrics.
    for s in &schedulers {
        let (_, body) = common::http_get(s.admin_addr.unwrap(), "/metrics", &[]).unwrap();
        assert!(body.contains("remexec_cluster_schedulers 2"), "{body}");
        assert!(body.contains("remexec_cluster_members 1"), "{body}");
    }
    // Both dispatch to the worker they found through the name.
    for (i, s) in schedulers.iter().enumerate() {
        let script = format!("echo through {i}");
        let (code, out, err) = remexec(&["exec", "--server", &s.url(), "--", "sh", "-c", &script]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("through {i}\n"));
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// No lost inputs on a cluster: Bazel builds without the bytes through one of two schedulers
/// (three workers, R = 2, 32 MiB each), 240 MiB of unrelated uploads through the other (each
/// worker stores about five times its budget of them), then a rebuild reads remote-only
/// outputs of the first build: the references reached every replica, so it succeeds. The
/// control first: workers that keep nothing lose those outputs, and the rebuild fails.
#[test]
fn bazel_builds_without_the_bytes_survive_unrelated_uploads_through_the_other_scheduler() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let run = |cluster: &TwoSchedulers, expect_lost: bool| {
        let (url, other) = (cluster.url(0), cluster.url(1));
        common::lost_inputs_e2e(&bazel, &url, 240, Some(&other), expect_lost);
    };
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[cas]\nkeep_referenced_secs = 0\n").unwrap();
    // Schedulers and workers share the keep time (the schedulers trust the workers' keeps).
    let keep_nothing = ["--config", config.path().to_str().unwrap()];
    let budget_and_keep = [&["--disk-budget", "32MiB"][..], &keep_nothing[..]].concat();
    let control = TwoSchedulers::start_flagged(3, "2", &keep_nothing, &budget_and_keep);
    run(&control, true);
    drop(control);

    let cluster = TwoSchedulers::start_workers_with(3, "2", &["--disk-budget", "32MiB"]);
    run(&cluster, false);
    // Each worker keeps within its budget, its CAS, file cache and action directories
    // together (the CAS makes room for the others within 10 s of their growth), so of the
    // 480 MiB of copies most were evicted (and none of what the build was told of).
    for i in 1..=3 {
        let held = || {
            let dir = cluster.dir.path().join(format!("w{i}"));
            common::dir_bytes(&dir.join("cas")) + common::dir_bytes(&dir.join("worker"))
        };
        assert!(
            wait_until(30, || held() <= 32 << 20),
            "w{i} holds {} bytes",
            held()
        );
    }
}

/// The value of metric `name` (no labels) on the `/metrics` of `admin`, if it is there.
fn metric(admin: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = common::http_get(admin, "/metrics", &[])?;
    let line = body.lines().find(|l| l.starts_with(&format!("{name} ")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Each digest's placement, as `cas locate --json` reports it through `server`, and the
/// placement members it cannot reach.
fn placements(server: &str, digests: &[String]) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut args = vec!["cas", "locate", "--json", "--server", server];
    args.extend(digests.iter().map(String::as_str));
    let (code, out, err) = remexec(&args);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        let list = v.as_array().unwrap().iter();
        list.map(|h| h.as_str().unwrap().to_string()).collect()
    };
    let rows = list.as_array().unwrap().iter().map(|l| {
        let digest = l["digest"].as_str().unwrap().to_string();
        (digest, (names(&l["placement"]), names(&l["unreachable"])))
    });
    rows.collect()
}

/// One membership for the storage plane while views differ: worker w3 is cut off from
/// scheduler 0 and from worker w1 only (both reach w3's CAS port through a proxy, which is
/// cut). Both schedulers name the same placement for every blob; scheduler 0 lists w3 as
/// unreachable and writes around it; every blob ends on at least 2 workers; the copies to make
/// settle at 0 on every worker and, over several periodic passes, no more copies are made (no
/// copying loop between w1, which sees w3 gone, and the others, which see it). Healed, both
/// schedulers see the same holders.
#[test]
fn a_worker_cut_off_from_one_scheduler_and_one_worker_changes_no_placement_and_repairs_settle() {
    let storage = Storage::new(3);
    let proxy = common::cut::CutProxy::to(storage.listen(3).parse().unwrap());
    let via_proxy = format!("grpc://{}", proxy.addr);
    let seeds = |who: &str, s: &Storage| match who {
        "s0" | "w1" => format!("grpc://{},grpc://{},{via_proxy}", s.listen(1), s.listen(2)),
        _ => s.seeds(),
    };
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[cluster]\nrepair_interval_secs = 2\n").unwrap();
    let worker_flags = ["--config", config.path().to_str().unwrap()];
    let flags = (&["--admin-listen", "127.0.0.1:0"][..], &worker_flags[..]);
    let cluster = TwoSchedulers::start_seeded(3, "2", flags, storage, &seeds);
    let (a, b) = (cluster.url(0), cluster.url(1));
    proxy.cut();
    let w3 = BTreeSet::from(["w3".to_string()]);
    assert!(
        wait_until(30, || members(&status(&a), "unreachable") == w3),
        "{}",
        status(&a)
    );
    assert_eq!(members(&status(&b), "live").len(), 3);
    // Blobs through each scheduler, each uploaded twice: the second upload finds them and
    // references them, so that the periodic passes go over them.
    let input = cluster.dir.path().join("input");
    let digests = common::files(&input, 80);
    for server in [&a, &b, &a, &b] {
        let (code, _, err) =
            remexec(&["cas", "upload", input.to_str().unwrap(), "--server", server]);
        assert_eq!(code, 0, "{err}");
    }
    let (through_a, through_b) = (placements(&a, &digests), placements(&b, &digests));
    assert_eq!(through_a.len(), 80);
    let mut on_w3 = 0;
    for (digest, (placement, unreachable)) in &through_a {
        assert_eq!(placement, &through_b[digest].0, "{digest}");
        assert!(through_b[digest].1.is_empty());
        let expected: Vec<String> = placement.iter().filter(|m| *m == "w3").cloned().collect();
        assert_eq!(unreachable, &expected, "{digest}");
        on_w3 += expected.len();
    }
    assert!(on_w3 > 0, "no blob of 80 belongs on w3");
    let copies = |name: &str| {
        let figures = cluster.admin.iter().map(|admin| metric(*admin, name));
        figures.collect::<Option<Vec<u64>>>()
    };
    let zero = Some(vec![0, 0, 0]);
    // Settled: every blob on 2 workers or more, nothing left to copy, and no copy made over
    // three periodic passes.
    let quiet = || {
        let before = copies("remexec_cluster_copies_made_total");
        std::thread::sleep(std::time::Duration::from_secs(7));
        let on_two = locate(&b, &digests).values().all(|h| h.len() >= 2);
        let to_make = copies("remexec_cluster_copies_to_make");
        on_two && to_make == zero && copies("remexec_cluster_copies_made_total") == before
    };
    assert!(wait_until(90, quiet), "{:?}", locate(&b, &digests));
    let made = copies("remexec_cluster_copies_made_total").unwrap();
    assert!(made.iter().sum::<u64>() > 0, "the views never differed");
    // And three periodic passes later still none: no loop.
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(copies("remexec_cluster_copies_made_total"), Some(made));
    assert_eq!(copies("remexec_cluster_copies_to_make"), zero);
    let admin = cluster.schedulers[0].as_ref().unwrap().admin_addr.unwrap();
    assert_eq!(
        metric(admin, "remexec_cluster_unreachable_members"),
        Some(1)
    );
    // Healed, scheduler 0 reaches w3 again and both name the same holders.
    proxy.heal();
    assert!(
        wait_until(30, || members(&status(&a), "live").len() == 3),
        "{}",
        status(&a)
    );
    assert_eq!(locate(&a, &digests), locate(&b, &digests));
}
