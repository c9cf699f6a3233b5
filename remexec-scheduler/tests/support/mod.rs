//! In-memory stores and a scriptable executor pool for scheduler tests.

#![allow(missing_docs)]
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use remexec_core::apis::google::longrunning::{Operation, operation};
use remexec_core::reapi::{Action, ActionResult, Command, Directory, FileNode, Platform, platform};
use remexec_core::reapi::{ExecuteRequest, ExecuteResponse};
use remexec_core::{
    ActionCache, BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result,
    merkle::encode_message,
};
use remexec_proto::worker::v1::worker_message::Message as M;
use remexec_proto::worker::v1::worker_service_client::WorkerServiceClient;
use remexec_proto::worker::v1::{Executor, Register, SchedulerMessage, WorkerMessage};
use remexec_scheduler::{
    Cancel, ChangeNotifier, Changes, ExecutorInfo, ExecutorPool, Job, JobOutcome, Scheduler,
    SchedulerConfig, WorkerPool,
};
use tokio::sync::{Semaphore, watch};

pub use remexec_core::testing::MapStore;

#[derive(Debug, Default)]
pub struct MapCache(pub Mutex<HashMap<(String, Digest), ActionResult>>);

#[async_trait]
impl ActionCache for MapCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(instance.to_string(), action))
            .cloned())
    }
    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        self.0
            .lock()
            .unwrap()
            .insert((instance.to_string(), action), result);
        Ok(())
    }
}

/// What the fake pool does with each job.
pub type Script = Arc<dyn Fn(&Job, usize) -> Result<JobOutcome> + Send + Sync>;

/// A pool whose executors "run" jobs by calling a script after an optional delay; `gate`
/// holds every run until permits are added. A job whose first argument is `sleep` runs until
/// it is cancelled or its executor is [lost](FakePool::lose), as the conformance suite expects.
#[derive(Clone)]
pub struct FakePool {
    pub executors: Arc<Mutex<Vec<ExecutorInfo>>>,
    pub changes: ChangeNotifier,
    pub runs: Arc<AtomicUsize>,
    pub order: Arc<Mutex<Vec<String>>>,
    pub delay: Duration,
    pub gate: Arc<Semaphore>,
    pub script: Script,
    /// Executors running a job right now.
    pub running: Arc<Mutex<Vec<String>>>,
    /// Times a job was started on an executor already running one.
    pub double_booked: Arc<AtomicUsize>,
    /// Executors lost with [`FakePool::lose`].
    pub lost: Arc<watch::Sender<Vec<String>>>,
    /// Each job's executor and arguments, in start order.
    pub placed: Arc<Mutex<Vec<(String, String)>>>,
}

impl std::fmt::Debug for FakePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakePool")
    }
}

impl FakePool {
    pub fn new(executors: usize, properties: &[(&str, &str)], script: Script) -> Self {
        Self {
            executors: Arc::new(Mutex::new(ExecutorInfo::numbered(
                "w", executors, properties,
            ))),
            changes: ChangeNotifier::new(),
            runs: Arc::default(),
            order: Arc::default(),
            delay: Duration::ZERO,
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            script,
            running: Arc::default(),
            double_booked: Arc::default(),
            lost: Arc::new(watch::channel(Vec::new()).0),
            placed: Arc::default(),
        }
    }

    pub fn ok() -> Script {
        Arc::new(|job, _| {
            Ok(JobOutcome::Completed(ActionResult {
                exit_code: 0,
                stdout_raw: job.command.arguments.join(" ").into_bytes(),
                ..Default::default()
            }))
        })
    }

    /// Adds an executor and tells the scheduler.
    pub fn add(&self, info: ExecutorInfo) {
        self.executors.lock().unwrap().push(info);
        self.changes.notify();
    }

    /// Takes executor `id` away: it leaves the list, and its job fails as `Unavailable`.
    pub fn lose(&self, id: &str) {
        self.executors.lock().unwrap().retain(|e| e.id != id);
        self.lost.send_modify(|lost| lost.push(id.to_string()));
        self.changes.notify();
    }
}

#[async_trait]
impl ExecutorPool for FakePool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        self.executors.lock().unwrap().clone()
    }
    fn changes(&self) -> Changes {
        self.changes.subscribe()
    }
    async fn run(&self, executor: &str, job: Job, cancel: Cancel) -> Result<JobOutcome> {
        let gone = || Error::Unavailable(format!("executor {executor} is gone").into());
        if !self.executors().iter().any(|e| e.id == executor) {
            return Err(gone());
        }
        {
            let mut running = self.running.lock().unwrap();
            if running.iter().any(|e| e == executor) {
                self.double_booked.fetch_add(1, Ordering::SeqCst);
            }
            running.push(executor.to_string());
        }
        let _running = Running(Arc::clone(&self.running), executor.to_string());
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        self.order
            .lock()
            .unwrap()
            .push(job.command.arguments.join(" "));
        self.placed
            .lock()
            .unwrap()
            .push((executor.to_string(), job.command.arguments.join(" ")));
        let gate = Arc::clone(&self.gate);
        let mut lost = self.lost.subscribe();
        let sleeps = job.command.arguments.first().is_some_and(|a| a == "sleep");
        tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(JobOutcome::Cancelled),
            _ = lost.wait_for(|lost| lost.iter().any(|e| e == executor)) => Err(gone()),
            outcome = async {
                if sleeps {
                    std::future::pending::<()>().await;
                }
                let _permit = gate.acquire().await;
                tokio::time::sleep(self.delay).await;
                (self.script)(&job, n)
            } => outcome,
        }
    }
}

/// Removes an executor from [`FakePool::running`] when its run ends.
struct Running(Arc<Mutex<Vec<String>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.0.lock().unwrap();
        if let Some(i) = running.iter().position(|e| *e == self.1) {
            running.remove(i);
        }
    }
}

pub struct Setup {
    pub scheduler: Scheduler,
    pub pool: FakePool,
    pub cas: Arc<MapStore>,
    pub ac: Arc<MapCache>,
}

pub fn setup(pool: FakePool, configure: impl FnOnce(&mut SchedulerConfig)) -> Setup {
    let cas = Arc::new(MapStore::default());
    let ac = Arc::new(MapCache::default());
    let mut config = SchedulerConfig::default();
    config.unmatched_grace = Duration::from_millis(300);
    configure(&mut config);
    let scheduler =
        Scheduler::new(config, cas.clone(), ac.clone(), Arc::new(pool.clone())).unwrap();
    Setup {
        scheduler,
        pool,
        cas,
        ac,
    }
}

pub fn request(digest: Digest) -> ExecuteRequest {
    ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        ..Default::default()
    }
}

/// The response an operation ends with (at most 20 s without a change).
pub async fn finish(mut rx: watch::Receiver<Operation>) -> ExecuteResponse {
    loop {
        let op = rx.borrow_and_update().clone();
        if op.done {
            return response(&op);
        }
        tokio::time::timeout(Duration::from_secs(20), rx.changed())
            .await
            .expect("operation stalled")
            .unwrap();
    }
}

/// The response in a done operation.
pub fn response(op: &Operation) -> ExecuteResponse {
    let Some(operation::Result::Response(any)) = &op.result else {
        panic!("done without response")
    };
    ExecuteResponse::decode(&any.value[..]).unwrap()
}

/// Serves `pool`'s WorkerService on 127.0.0.1; returns its URL.
pub async fn serve_pool_url(pool: &WorkerPool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pool.service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Serves `pool`'s WorkerService on 127.0.0.1; returns a channel to it.
pub async fn serve_pool(pool: &WorkerPool) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(serve_pool_url(pool).await)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A fake worker's two ends: what it sends, and what the scheduler sends it.
pub type FakeWorker = (
    tokio::sync::mpsc::Sender<WorkerMessage>,
    tonic::Streaming<SchedulerMessage>,
);

/// Attaches a fake worker named `name` with executors `0` and `1` (heartbeat 10 s).
pub async fn attach(
    channel: &tonic::transport::Channel,
    name: &str,
) -> std::result::Result<FakeWorker, tonic::Status> {
    let register = Register {
        worker_name: name.into(),
        executors: ["0", "1"]
            .map(|id| Executor {
                id: id.into(),
                properties: vec![],
            })
            .to_vec(),
        heartbeat_interval_ms: 10_000,
        ..Default::default()
    };
    attach_with(channel, register).await
}

/// Attaches a fake worker that registers with `register`.
pub async fn attach_with(
    channel: &tonic::transport::Channel,
    register: Register,
) -> std::result::Result<FakeWorker, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(WorkerMessage {
        message: Some(M::Register(register)),
    })
    .await
    .unwrap();
    let inbound = WorkerServiceClient::new(channel.clone())
        .max_decoding_message_size(remexec_scheduler::MAX_WORKER_MESSAGE)
        .max_encoding_message_size(remexec_scheduler::MAX_WORKER_MESSAGE)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, inbound))
}

/// A job with an empty action, for driving a pool directly.
pub fn bare_job(lease_id: &str) -> Job {
    Job {
        lease_id: lease_id.into(),
        instance: String::new(),
        action_digest: DigestFunction::Sha256.digest_of(b"action"),
        action: Action::default(),
        command: Command {
            arguments: vec!["true".into()],
            ..Default::default()
        },
        timeout: Some(Duration::from_secs(60)),
        queued_at: std::time::SystemTime::now(),
    }
}

/// Stores an action running `args` (with `platform`) and an input file; returns its digest.
pub async fn store_action(
    cas: &dyn BlobStore,
    args: &[&str],
    platform: &[(&str, &str)],
    do_not_cache: bool,
) -> Digest {
    store_timed_action(cas, args, platform, do_not_cache, None).await
}

/// [`store_action`] with an `Action.timeout`.
pub async fn store_timed_action(
    cas: &dyn BlobStore,
    args: &[&str],
    platform: &[(&str, &str)],
    do_not_cache: bool,
    timeout: Option<remexec_core::apis::google::protobuf::Duration>,
) -> Digest {
    store_action_in(cas, "", args, platform, do_not_cache, timeout).await
}

/// [`store_timed_action`] in the CAS of `instance`.
pub async fn store_action_in(
    cas: &dyn BlobStore,
    instance: &str,
    args: &[&str],
    platform: &[(&str, &str)],
    do_not_cache: bool,
    timeout: Option<remexec_core::apis::google::protobuf::Duration>,
) -> Digest {
    let f = DigestFunction::Sha256;
    let input = Bytes::from_static(b"input file");
    let input_digest = f.digest_of(&input);
    cas.put_bytes(instance, input_digest, input).await.unwrap();
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(input_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (root_digest, root_bytes) = encode_message(f, &root);
    cas.put_bytes(instance, root_digest, root_bytes)
        .await
        .unwrap();
    let command = Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let (command_digest, command_bytes) = encode_message(f, &command);
    cas.put_bytes(instance, command_digest, command_bytes)
        .await
        .unwrap();
    let platform = Platform {
        properties: platform
            .iter()
            .map(|(n, v)| platform::Property {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
    };
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root_digest.to_proto()),
        platform: Some(platform),
        do_not_cache,
        timeout,
        ..Default::default()
    };
    let bytes = Bytes::from(action.encode_to_vec());
    let digest = f.digest_of(&bytes);
    cas.put_bytes(instance, digest, bytes).await.unwrap();
    digest
}
