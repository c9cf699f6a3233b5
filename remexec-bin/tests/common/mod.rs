//! Starting and stopping a real `remexec serve` process.

#![allow(clippy::unwrap_used)]
#![allow(dead_code, unreachable_pub)]

pub mod cut;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The separate worker port, if the server has one.
    pub worker_addr: Option<SocketAddr>,
    /// The admin HTTP port, if the server has one.
    pub admin_addr: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `remexec serve` on a free loopback port with `data_dir`, waiting until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_role("serve", data_dir, extra)
    }

    /// Starts `remexec ROLE` (`serve` or `scheduler`) on a free loopback port.
    pub fn start_role(role: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_command(
            Command::new(env!("CARGO_BIN_EXE_remexec")),
            role,
            data_dir,
            extra,
        )
    }

    /// Starts `remexec serve` as the unprivileged user `nobody` (through `setpriv`), so that
    /// file permissions apply to it even when the tests run as root.
    pub fn start_as_nobody(data_dir: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_remexec"));
        Self::start_command(command, "serve", data_dir, extra)
    }

    /// Starts `remexec serve` listening on `listen` (a fixed address, so that a restarted
    /// server keeps its URL), with extra environment variables.
    pub fn start_at(listen: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_remexec"));
        command.envs(env.iter().copied());
        Self::start_listening(command, "serve", listen, Some(data_dir), extra)
    }

    /// Starts `remexec serve` on a free loopback port with `HOME` at `home` and no
    /// `--data-dir` (nor `XDG_CACHE_HOME`): its data goes to the default, `home/.cache/remexec`.
    /// It runs in `home/src`, as a server started from a checkout in one's home does.
    pub fn start_in_home(home: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_remexec"));
        std::fs::create_dir_all(home.join("src")).expect("home/src");
        command
            .env("HOME", home)
            .env_remove("XDG_CACHE_HOME")
            .current_dir(home.join("src"));
        Self::start_listening(command, "serve", "127.0.0.1:0", None, extra)
    }

    /// Starts `remexec ROLE` listening on `listen` (a fixed address, as a peer list needs).
    pub fn start_role_at(role: &str, listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let command = Command::new(env!("CARGO_BIN_EXE_remexec"));
        Self::start_listening(command, role, listen, Some(data_dir), extra)
    }

    fn start_command(command: Command, role: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_listening(command, role, "127.0.0.1:0", Some(data_dir), extra)
    }

    fn start_listening(
        mut command: Command,
        role: &str,
        listen: &str,
        data_dir: Option<&Path>,
        extra: &[&str],
    ) -> Self {
        command.args([role, "--listen", listen]);
        if let Some(dir) = data_dir {
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command
            .args(extra)
            .env("REMEXEC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start remexec");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut worker_addr = None;
        let mut admin_addr = None;
        let addr = loop {
            assert!(Instant::now() < deadline, "server did not start");
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("remexec: admin port on ") {
                admin_addr = Some(addr.parse().expect("admin address"));
            }
            if let Some(addr) = line.strip_prefix("remexec: worker port on ") {
                worker_addr = Some(addr.parse().expect("worker address"));
            }
            if let Some(addr) = line.strip_prefix("remexec: listening on ") {
                break addr.parse().expect("address");
            }
        };
        Self {
            child,
            addr,
            worker_addr,
            admin_addr,
        }
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM and wait (at most 30 s) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a required external tool, or panics with how to get it. Set REMEXEC_SKIP_E2E=1 to
/// skip end-to-end tests explicitly (CI never does).
pub fn require_tool(env_var: &str, default: &str) -> Option<PathBuf> {
    if std::env::var_os("REMEXEC_SKIP_E2E").is_some_and(|v| v == "1") {
        eprintln!("REMEXEC_SKIP_E2E=1: skipping");
        return None;
    }
    let tool = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let found = Command::new(&tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{} not found; run .ci/run (or set {env_var}) to install it, or REMEXEC_SKIP_E2E=1 to skip",
        tool.display()
    );
    Some(tool)
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// Starts `remexec worker` attached to `scheduler`.
pub fn start_worker(
    scheduler: &ServerProcess,
    name: &str,
    data_dir: &Path,
    executors: usize,
) -> Child {
    start_worker_at(
        &scheduler.url(),
        name,
        data_dir,
        executors,
        &[],
        Stdio::inherit(),
    )
}

/// Starts `remexec worker` attached to the scheduler at `url`, with extra flags, its stderr
/// going to `stderr`.
pub fn start_worker_at(
    url: &str,
    name: &str,
    data_dir: &Path,
    executors: usize,
    extra: &[&str],
    stderr: Stdio,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "worker",
            "--scheduler",
            url,
            "--name",
            name,
            "--executors",
            &executors.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("REMEXEC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start worker")
}

/// `remexec tls dev-certs DIR`, exactly as the docs show it.
pub fn dev_certs(dir: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["tls", "dev-certs"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("run remexec tls dev-certs");
    assert!(status.success());
}

/// `dir/name` as a flag value.
pub fn path_arg(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Runs `remexec exec` against `server`; returns (exit code, stdout, stderr).
pub fn exec(server: &ServerProcess, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url()])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run remexec exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `remexec exec` like [`exec`], but kills it after `secs`: `None` if it had to.
pub fn exec_within(
    server: &ServerProcess,
    cwd: &Path,
    args: &[&str],
    secs: u64,
) -> Option<(i32, String, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["exec", "--server", &server.url()])
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run remexec exec");
    if !wait_until(secs, || child.try_wait().expect("wait").is_some()) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let out = child.wait_with_output().expect("output");
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
}

/// Waits up to `secs` for `cond`.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A free port on 127.0.0.1 (bound, then released), for a child process to listen on.
///
/// It is drawn at random below the kernel's ephemeral range (`ip_local_port_range`, 32768 and
/// up by default). A port from that range, free when checked, can be taken by any other test's
/// outgoing connection before the child binds it; one below it can only be taken by another
/// test that drew the same port, one chance in some twenty thousand.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low <= 12000 {
        // An unusual range: let the kernel choose.
        let any = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        return any.local_addr().unwrap().port();
    }
    let (from, to) = (10000, low);
    for attempt in 0u32..1000 {
        let seed = RandomState::new().hash_one((std::process::id(), attempt, Instant::now()));
        let port = from + (seed % u64::from(to - from)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// An S3-compatible server for tests: `moto_server` from PyPI (`moto[server]`, installed by
/// `.ci/test` into `$HOME/.cache/remexec-test/moto-venv`, or `REMEXEC_MOTO`), on 127.0.0.1.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// The moto_server binary; `None` (after saying so) if end-to-end tests are skipped.
    pub fn binary() -> Option<PathBuf> {
        let default = std::env::var("HOME").unwrap_or_default()
            + "/.cache/remexec-test/moto-venv/bin/moto_server";
        require_tool("REMEXEC_MOTO", &default)
    }

    /// Starts moto on `port` and creates `bucket`.
    pub fn start(binary: &Path, port: u16, bucket: &str) -> Self {
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self { child, port };
        let created = wait_until(30, || moto.create_bucket(bucket));
        assert!(created, "moto did not come up on port {port}");
        moto
    }

    /// `PUT /bucket` over plain HTTP (moto accepts any credentials); whether it answered 200.
    fn create_bucket(&self, bucket: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// The `AWS_*` environment that points remexec at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "remexec-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "remexec-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// SIGKILL: the server and everything it held are gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped, so that a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on `addr` with extra `headers`: the status code and body, or `None` if nothing
/// answers.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: remexec\r\nConnection: close\r\n{extra}\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // axum answers with a length; nothing here uses chunked encoding.
    Some((code, body.to_string()))
}

/// The digests of every input and output file in Bazel's JSON execution log.
pub fn logged_digests(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut digests = std::collections::BTreeSet::new();
    for spawn in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let spawn = spawn.unwrap();
        for key in ["inputs", "actualOutputs"] {
            for file in spawn[key].as_array().into_iter().flatten() {
                let d = &file["digest"];
                let size: u64 = d["sizeBytes"].as_str().map_or_else(
                    || d["sizeBytes"].as_u64().unwrap_or(0),
                    |s| s.parse().unwrap(),
                );
                if let Some(hash) = d["hash"].as_str().filter(|_| size > 0) {
                    digests.insert(format!("{hash}/{size}"));
                }
            }
        }
    }
    digests.into_iter().collect()
}

/// Runs `fixtures/bazel/lost_inputs_e2e.sh`: Bazel builds without the bytes through `url`,
/// `upload_mib` of unrelated blobs go through `upload_url` (or `url`), then a rebuild reads
/// remote-only outputs of the first build; with `expect_lost`, it must fail for them.
#[allow(dead_code)]
pub fn lost_inputs_e2e(
    bazel: &Path,
    url: &str,
    upload_mib: u64,
    upload_url: Option<&str>,
    expect_lost: bool,
) {
    let status = Command::new("bash")
        .arg(fixtures().join("bazel/lost_inputs_e2e.sh"))
        .arg(url)
        .arg(upload_mib.to_string())
        .env("BAZEL", bazel)
        .env("REMEXEC", env!("CARGO_BIN_EXE_remexec"))
        .env("UPLOAD_URL", upload_url.unwrap_or(url))
        .env("EXPECT_LOST", if expect_lost { "1" } else { "0" })
        .status()
        .unwrap();
    assert!(status.success(), "lost_inputs_e2e.sh failed: {status}");
}

/// The bytes of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // A file evicted meanwhile counts nothing.
        let Ok(meta) = entry.metadata() else { continue };
        total += match meta.is_dir() {
            true => dir_bytes(&entry.path()),
            false => meta.len(),
        };
    }
    total
}

/// Writes `n` files of distinct content into `dir`; their digests (`hash/size`).
pub fn files(dir: &Path, n: usize) -> Vec<String> {
    use sha2::Digest as _;
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let content = format!("blob {i} ").repeat(100 + i * 37);
            std::fs::write(dir.join(format!("f{i}")), &content).unwrap();
            let hash = hex::encode(sha2::Sha256::digest(content.as_bytes()));
            format!("{hash}/{}", content.len())
        })
        .collect()
}

/// bubblewrap, as a path, if the host has it (`BWRAP` names another).
pub fn bwrap() -> Option<PathBuf> {
    let bwrap = require_tool("BWRAP", "bwrap")?;
    // `require_tool` found it on PATH; the backend wants a path.
    Some(if bwrap.is_absolute() {
        bwrap
    } else {
        PathBuf::from("/usr/bin").join(bwrap)
    })
}

/// Builds the test image if it is missing (as `.ci/test` does first).
pub fn docker_image() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/test-image");
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (containers are removed in the background) until the engine has no container of
/// the backend called `name`, and panics if it keeps one.
pub async fn assert_no_container_left(name: &str) {
    let left = || {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=remexec.worker={name}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for _ in 0..200 {
        if left().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("containers left behind: {}", left());
}

/// Loads `url` in headless Chromium with `extra` flags; returns its stdout.
pub fn headless(chromium: &std::path::Path, url: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
