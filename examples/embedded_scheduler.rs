//! A scheduler node over your own `ExecutorPool` (`cargo run -p remexec-examples --example
//! embedded_scheduler`). `EchoPool` "runs" an action by echoing its arguments; the node adds
//! the CAS and Action Cache, queueing, platform matching, merging, caching, Execution and
//! Operations. Tests: the pool conformance suite here, the node in `tests/embedded.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use remexec_cas::{CacheServices, MemoryActionCache, MemoryStore};
use remexec_core::reapi::ActionResult;
use remexec_core::{Result, auth::AuthPolicy};
use remexec_scheduler::node::SchedulerNode;
use remexec_scheduler::{Cancel, ExecutorInfo, ExecutorPool, Job, JobOutcome};

/// Executors `echo/0` and `echo/1`, for actions whose platform asks for `OSFamily=echo`.
#[derive(Debug)]
pub(crate) struct EchoPool(Vec<ExecutorInfo>);

#[async_trait]
impl ExecutorPool for EchoPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        self.0.clone()
    }

    async fn run(&self, _executor: &str, job: Job, cancel: Cancel) -> Result<JobOutcome> {
        if cancel.is_cancelled() {
            return Ok(JobOutcome::Cancelled);
        }
        let stdout_raw = (job.command.arguments.join(" ") + "\n").into();
        let result = ActionResult {
            stdout_raw,
            ..Default::default()
        };
        Ok(JobOutcome::Completed(result))
    }
}

pub(crate) fn echo_pool() -> EchoPool {
    EchoPool(ExecutorInfo::numbered("echo", 2, &[("OSFamily", "echo")]))
}

/// A node on a free port over memory stores, dispatching to `pool` or attached workers; its URL.
pub(crate) async fn start(pool: Option<Arc<dyn ExecutorPool>>) -> Result<String> {
    let store = Arc::new(MemoryStore::new(64 << 20));
    let ac = Arc::new(MemoryActionCache::new(16 << 20));
    let storage = CacheServices::new(store.clone(), ac.clone())
        .with_execution(remexec_scheduler::execution_capabilities());
    let mut node = SchedulerNode::builder(store, ac, storage.into_routes())
        .listen(([127, 0, 0, 1], 0).into())
        .auth(AuthPolicy::open()); // trusted loopback; see remexec_core::auth
    if let Some(pool) = pool {
        node = node.executor_pool(pool);
    }
    let node = node.bind().await?;
    let url = format!("grpc://{}", node.local_addr()?);
    tokio::spawn(node.serve(std::future::pending()));
    Ok(url)
}

#[allow(dead_code)] // also compiled into tests/embedded.rs, which does not call it
#[tokio::main]
async fn main() -> Result<()> {
    let url = start(Some(Arc::new(echo_pool()))).await?;
    let args = ["hello", "from", "EchoPool"];
    let (_, stdout) = remexec_examples::execute(&url, &args, &[("OSFamily", "echo")]).await?;
    print!("{stdout}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use remexec_scheduler::testing::*;

    #[tokio::test]
    async fn the_echo_pool_passes_the_conformance_suite() {
        let caps = ExecutorPoolCapabilities::new(); // fixed executors, jobs that end at once
        executor_pool_conformance(&super::echo_pool(), caps, &NoHooks).await;
    }
}
