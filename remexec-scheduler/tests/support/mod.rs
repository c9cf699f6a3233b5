#![allow(missing_docs)]
//! In-memory stores and a scriptable executor pool for scheduler tests.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use remexec_core::reapi::{Action, ActionResult, Command, Directory, FileNode, Platform, platform};
use remexec_core::{
    ActionCache, BlobStore, BlobStoreExt, ChunkStream, Digest, DigestFunction, ReadRange, Result,
    collect_chunks, merkle::encode_message,
};
use remexec_scheduler::{ExecutorInfo, ExecutorPool, Job, JobOutcome};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct MapStore(pub Mutex<HashMap<(String, Digest), Bytes>>);

#[async_trait]
impl BlobStore for MapStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let map = self.0.lock().unwrap();
        Ok(digests
            .iter()
            .filter(|d| !map.contains_key(&(instance.to_string(), **d)))
            .copied()
            .collect())
    }
    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let bytes = collect_chunks(data, digest.size()).await?;
        self.0
            .lock()
            .unwrap()
            .insert((instance.to_string(), digest), bytes);
        Ok(())
    }
    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let Some(bytes) = self
            .0
            .lock()
            .unwrap()
            .get(&(instance.to_string(), digest))
            .cloned()
        else {
            return Ok(None);
        };
        Ok(Some(range.stream_of(&bytes)?))
    }
}

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
/// holds every run until permits are added.
#[derive(Clone)]
pub struct FakePool {
    pub executors: Arc<Mutex<Vec<ExecutorInfo>>>,
    pub changes: Arc<watch::Sender<u64>>,
    pub runs: Arc<AtomicUsize>,
    pub order: Arc<Mutex<Vec<String>>>,
    pub delay: Duration,
    pub gate: Arc<Semaphore>,
    pub script: Script,
}

impl std::fmt::Debug for FakePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakePool")
    }
}

impl FakePool {
    pub fn new(executors: usize, properties: &[(&str, &str)], script: Script) -> Self {
        let props: Vec<(String, String)> = properties
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Self {
            executors: Arc::new(Mutex::new(
                (0..executors)
                    .map(|i| ExecutorInfo {
                        id: format!("w/{i}"),
                        worker: "w".into(),
                        properties: props.clone(),
                    })
                    .collect(),
            )),
            changes: Arc::new(watch::channel(0).0),
            runs: Arc::default(),
            order: Arc::default(),
            delay: Duration::ZERO,
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            script,
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
}

#[async_trait]
impl ExecutorPool for FakePool {
    fn executors(&self) -> Vec<ExecutorInfo> {
        self.executors.lock().unwrap().clone()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
    async fn run(
        &self,
        _executor: &str,
        job: Job,
        cancel: CancellationToken,
    ) -> Result<JobOutcome> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        self.order
            .lock()
            .unwrap()
            .push(job.command.arguments.join(" "));
        let gate = Arc::clone(&self.gate);
        tokio::select! {
            _ = async { let _permit = gate.acquire().await; tokio::time::sleep(self.delay).await } => (self.script)(&job, n),
            () = cancel.cancelled() => Ok(JobOutcome::Cancelled),
        }
    }
}

/// Stores an action running `args` (with `platform`) and an input file; returns its digest.
pub async fn store_action(
    cas: &dyn BlobStore,
    args: &[&str],
    platform: &[(&str, &str)],
    do_not_cache: bool,
) -> Digest {
    let f = DigestFunction::Sha256;
    let input = Bytes::from_static(b"input file");
    let input_digest = f.digest_of(&input);
    cas.put_bytes("", input_digest, input).await.unwrap();
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(input_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (root_digest, root_bytes) = encode_message(f, &root);
    cas.put_bytes("", root_digest, root_bytes).await.unwrap();
    let command = Command {
        arguments: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let (command_digest, command_bytes) = encode_message(f, &command);
    cas.put_bytes("", command_digest, command_bytes)
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
        ..Default::default()
    };
    let bytes = Bytes::from(action.encode_to_vec());
    let digest = f.digest_of(&bytes);
    cas.put_bytes("", digest, bytes).await.unwrap();
    digest
}
