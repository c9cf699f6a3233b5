//! A real etcd on loopback for tests of rosters held in etcd ([`crate::membership::etcd`]).

use std::path::Path;
use std::time::Duration;

/// An etcd process on two free loopback ports with a data directory of its own, killed on
/// drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts `binary` (an etcd 3.4 or later) and waits (up to 10 s) until it answers;
    /// panics if it cannot be started or never answers.
    pub async fn start(binary: &Path) -> Self {
        let free = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (port, peer) = (free(), free());
        let dir = tempfile::tempdir().unwrap();
        let client = format!("http://127.0.0.1:{port}");
        let child = std::process::Command::new(binary)
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let roster = crate::membership::etcd::EtcdRoster::from_seed(&server.seed("probe"));
        let roster = roster.unwrap().unwrap();
        for _ in 0..200 {
            if roster.members().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd never answered");
    }

    /// The seed of a roster under `prefix` in this etcd: `etcd://127.0.0.1:PORT/{prefix}`.
    pub fn seed(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}", self.port)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
