//! Embedding remexec's scheduler with your own `ExecutorPool` in your own tonic server.
//!
//! Run with `cargo run -p remexec-examples --example custom_executor_pool`. The pool here runs
//! every action "in-process" by echoing its arguments (think: your own batch system); the
//! scheduler gives it queueing, platform matching, merging of identical actions, caching and
//! the REAPI Execution and Operations services. The example submits an action as Bazel would
//! and prints the result.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;
use remexec_cas::{CacheServices, MemoryActionCache, MemoryStore};
use remexec_core::apis::google::longrunning::operation;
use remexec_core::reapi::{
    Action, ActionResult, Command, Directory, ExecuteRequest, ExecuteResponse,
    execution_client::ExecutionClient,
};
use remexec_core::{BlobStore, BlobStoreExt, DigestFunction, Result, merkle::encode_message};
use remexec_scheduler::{
    ExecutionService, ExecutorInfo, ExecutorPool, Job, JobOutcome, OperationsService, Scheduler,
    SchedulerConfig,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A pool with two executors that "run" a command by echoing its arguments to stdout.
#[derive(Debug)]
struct EchoPool {
    changes: watch::Sender<u64>,
}

#[async_trait]
impl ExecutorPool for EchoPool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        (0..2)
            .map(|i| ExecutorInfo {
                id: format!("echo/{i}"),
                worker: "echo".into(),
                properties: vec![("OSFamily".into(), "echo".into())],
            })
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn run(&self, executor: &str, job: Job, cancel: CancellationToken) -> Result<JobOutcome> {
        if cancel.is_cancelled() {
            return Ok(JobOutcome::Cancelled);
        }
        println!("{executor} runs {:?}", job.command.arguments);
        let output = job.command.arguments.join(" ") + "\n";
        Ok(JobOutcome::Completed(ActionResult {
            exit_code: 0,
            stdout_raw: output.into_bytes(),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cas: Arc<dyn BlobStore> = Arc::new(MemoryStore::new(64 << 20));
    let ac = Arc::new(MemoryActionCache::new(16 << 20));
    let pool = Arc::new(EchoPool {
        changes: watch::channel(0).0,
    });
    let scheduler = Scheduler::new(
        SchedulerConfig::default(),
        Arc::clone(&cas),
        ac.clone(),
        pool,
    )?;

    // Your server: remexec's cache routes plus the Execution and Operations services.
    // Advertise execution in Capabilities, or Bazel refuses to use --remote_executor.
    let execution = remexec_core::reapi::ExecutionCapabilities {
        exec_enabled: true,
        digest_functions: vec![DigestFunction::Sha256.to_proto()],
        ..Default::default()
    };
    let routes = CacheServices::new(Arc::clone(&cas), ac)
        .with_execution(execution)
        .into_routes()
        .add_service(ExecutionService::new(scheduler.clone()).into_server())
        .add_service(OperationsService::new(scheduler).into_server());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // A client uploads an action that wants an "echo" executor, and executes it.
    let f = DigestFunction::Sha256;
    let (root, root_bytes) = encode_message(f, &Directory::default());
    cas.put_bytes("", root, root_bytes).await?;
    let command = Command {
        arguments: vec!["hello".into(), "from".into(), "EchoPool".into()],
        ..Default::default()
    };
    let (command_digest, command_bytes) = encode_message(f, &command);
    cas.put_bytes("", command_digest, command_bytes).await?;
    let platform = remexec_core::reapi::Platform {
        properties: vec![remexec_core::reapi::platform::Property {
            name: "OSFamily".into(),
            value: "echo".into(),
        }],
    };
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.to_proto()),
        platform: Some(platform),
        ..Default::default()
    };
    let (action_digest, action_bytes) = encode_message(f, &action);
    cas.put_bytes("", action_digest, action_bytes).await?;

    let mut client = ExecutionClient::connect(format!("http://{addr}")).await?;
    let mut ops = client
        .execute(ExecuteRequest {
            action_digest: Some(action_digest.to_proto()),
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(op) = ops.next().await {
        if let Some(operation::Result::Response(any)) = op?.result {
            let response = ExecuteResponse::decode(&any.value[..])?;
            let result = response.result.unwrap_or_default();
            print!(
                "exit code {}, stdout: {}",
                result.exit_code,
                String::from_utf8_lossy(&result.stdout_raw)
            );
        }
    }
    Ok(())
}
