//! A worker node with your own `Isolation`, attached to an embedded scheduler node (`cargo run
//! -p remexec-examples --example embedded_worker`). `Counted` runs each command as a process
//! group and counts them: your container runtime, sandbox tool or VM plugs in at the same
//! place. The tests run the `Isolation` conformance suite on it; `tests/embedded.rs` runs an
//! action through both nodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use remexec_core::{Result, client};
use remexec_worker::node::WorkerNode;
use remexec_worker::{Ended, Isolation, ProcessIsolation, Spawn, Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[path = "embedded_scheduler.rs"]
#[allow(dead_code)]
pub(crate) mod embedded_scheduler;

/// Runs commands as processes, and counts them.
#[derive(Debug, Default)]
pub(crate) struct Counted {
    inner: ProcessIsolation,
    /// Commands run so far.
    pub(crate) runs: AtomicUsize,
}

#[async_trait]
impl Isolation for Counted {
    async fn run(&self, spawn: Spawn, cancel: CancellationToken) -> Result<Ended> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.inner.run(spawn, cancel).await
    }
}

/// A worker node named `name` with two executors under `isolation`, working in `dir`,
/// attached to the scheduler at `url` (whose CAS it uses), until the process ends.
pub(crate) fn attach(url: &str, name: &str, dir: PathBuf, isolation: Arc<Counted>) -> Result<()> {
    let channel = client::connect_lazy(url)?;
    let cas = Arc::new(remexec_cas::GrpcStore::new(channel.clone()));
    let settings = WorkerConfig::new(name, dir, 2, Vec::new());
    let node = WorkerNode::new(Worker::new(settings, cas, isolation)?).scheduler(channel);
    tokio::spawn(node.run(std::future::pending()));
    Ok(())
}

#[allow(dead_code)] // also compiled into tests/embedded.rs, which does not call it
#[tokio::main]
async fn main() -> Result<()> {
    let url = embedded_scheduler::start(None).await?;
    let dir = tempfile::tempdir().map_err(|e| remexec_core::Error::io("a work directory", e))?;
    let counted = Arc::new(Counted::default());
    attach(&url, "embedded", dir.path().to_path_buf(), counted.clone())?;
    let (_, stdout) = remexec_examples::execute(&url, &["echo", "hello"], &[]).await?;
    let runs = counted.runs.load(Ordering::Relaxed);
    print!("{stdout}");
    println!("ran {runs} command(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_isolation_conformance_suite() {
        remexec_worker::testing::isolation_conformance(&super::Counted::default()).await;
    }
}
