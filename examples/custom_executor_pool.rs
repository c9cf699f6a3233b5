//! Embedding remexec's scheduler, with your own `ExecutorPool`, in a whole remexec server.
//!
//! Run with `cargo run -p remexec-examples --example custom_executor_pool`. The pool here runs
//! every action "in-process" by echoing its arguments (think: your own batch system); its
//! executors are fixed, so it implements only `executors` and `run`. `ServerBuilder` gives it
//! the cache services, Capabilities, queueing, platform matching, merging of identical actions,
//! caching and the REAPI Execution and Operations services. The example submits an action as
//! Bazel would and prints the result.
//!
//! Its tests (`cargo test -p remexec-examples --example custom_executor_pool`) run remexec's
//! `ExecutorPool` conformance suite on the pool, as every custom pool should.

use std::sync::Arc;

use async_trait::async_trait;
use remexec_bin::{config::Config, server::ServerBuilder};
use remexec_cas::{MemoryActionCache, MemoryStore};
use remexec_core::client::{self, ActionBuilder, FollowOptions};
use remexec_core::reapi::{ActionResult, Directory, ExecuteRequest};
use remexec_core::{BlobStore, BlobStoreExt, DigestFunction, Result, merkle::encode_message};
use remexec_scheduler::{Cancel, ExecutorInfo, ExecutorPool, Job, JobOutcome};

/// A pool of fixed executors that "run" a command by echoing its arguments to stdout.
#[derive(Debug)]
struct EchoPool(Vec<ExecutorInfo>);

#[async_trait]
impl ExecutorPool for EchoPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        self.0.clone()
    }

    async fn run(&self, executor: &str, job: Job, cancel: Cancel) -> Result<JobOutcome> {
        if cancel.is_cancelled() {
            return Ok(JobOutcome::Cancelled);
        }
        println!("{executor} runs {:?}", job.command.arguments);
        let stdout = job.command.arguments.join(" ") + "\n";
        Ok(JobOutcome::Completed(ActionResult {
            stdout_raw: stdout.into_bytes(),
            ..Default::default()
        }))
    }
}

/// Two executors, `echo/0` and `echo/1`, for actions whose platform asks for `OSFamily=echo`.
fn echo_pool() -> EchoPool {
    EchoPool(ExecutorInfo::numbered("echo", 2, &[("OSFamily", "echo")]))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // Your server: remexec's whole stack over your stores and your pool, on a free port.
    let cas: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(64 << 20));
    let server = ServerBuilder::new(Config::default())
        .listen("127.0.0.1:0".parse()?)
        .blob_store(Arc::clone(&cas))
        .action_cache(Arc::new(MemoryActionCache::new(16 << 20)))
        .executor_pool(Arc::new(echo_pool()))
        .bind()
        .await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(std::future::pending()));

    // A client uploads an action that wants an "echo" executor, and executes it.
    let f = DigestFunction::Sha256;
    let (root, root_bytes) = encode_message(f, &Directory::default());
    cas.put_bytes("", root, root_bytes).await?;
    let action = ActionBuilder::new(["hello", "from", "EchoPool"])
        .property("OSFamily", "echo")
        .build(f, root);
    action.upload(cas.as_ref(), "").await?;
    let request = ExecuteRequest {
        action_digest: Some(action.action_digest.to_proto()),
        ..Default::default()
    };
    let channel = client::connect(&format!("grpc://{addr}")).await?;
    let response = client::execute(channel, request, &FollowOptions::default(), |_, _| {}).await?;
    let result = response.result.unwrap_or_default();
    let stdout = String::from_utf8_lossy(&result.stdout_raw);
    print!("exit code {}, stdout: {stdout}", result.exit_code);
    Ok(())
}

#[cfg(test)]
mod tests {
    use remexec_scheduler::testing::{
        ExecutorPoolCapabilities, NoHooks, executor_pool_conformance,
    };

    #[tokio::test]
    async fn the_echo_pool_passes_the_conformance_suite() {
        let caps = ExecutorPoolCapabilities::new(); // fixed executors, jobs that end at once
        executor_pool_conformance(&super::echo_pool(), caps, &NoHooks).await;
    }
}
