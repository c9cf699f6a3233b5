//! REAPI client workloads that measure a server over the network: the core of the loopback
//! benchmark (and of a future `remexec bench`). Each function returns per-operation latencies.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use remexec_core::{Digest, Error, Result};
use remexec_proto::google::bytestream::byte_stream_client::ByteStreamClient;
use remexec_proto::google::bytestream::{ReadRequest, WriteRequest};
use remexec_proto::reapi::action_cache_client::ActionCacheClient;
use remexec_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use remexec_proto::reapi::{
    ActionResult, FindMissingBlobsRequest, GetActionResultRequest, UpdateActionResultRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Size of each ByteStream write message.
pub const WRITE_CHUNK: usize = 1024 * 1024;

/// Connects with large HTTP/2 windows, as a throughput-minded client would.
pub async fn connect(url: &str) -> Result<Channel> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::invalid(format!("bad URL {url}: {e}")))?
        .initial_stream_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {e}")))
}

/// Latency summary of one workload.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Operations measured.
    pub ops: usize,
    /// Wall time of the whole workload.
    pub wall: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
}

impl Summary {
    /// Summarises latencies measured over `wall`.
    pub fn new(mut latencies: Vec<Duration>, wall: Duration) -> Self {
        latencies.sort_unstable();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            ops: latencies.len(),
            wall,
            p50: pick(0.5),
            p99: pick(0.99),
        }
    }

    /// Operations per second over the wall time.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
}

/// Writes each blob over ByteStream, one after another.
pub async fn bytestream_write(channel: &Channel, blobs: &[(Digest, Bytes)]) -> Result<Summary> {
    let mut client = ByteStreamClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(blobs.len());
    for (digest, data) in blobs {
        let t = Instant::now();
        let name = format!("uploads/{}/blobs/{digest}", uuid::Uuid::new_v4());
        let n = data.len().div_ceil(WRITE_CHUNK).max(1);
        let data = data.clone();
        let requests = futures::stream::iter(0..n).map(move |i| {
            let end = ((i + 1) * WRITE_CHUNK).min(data.len());
            WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i * WRITE_CHUNK) as i64,
                finish_write: i + 1 == n,
                data: data[i * WRITE_CHUNK..end].to_vec(),
            }
        });
        client.write(requests).await?;
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, start.elapsed()))
}

/// Reads each blob over ByteStream, one after another, checking the length.
pub async fn bytestream_read(channel: &Channel, digests: &[Digest]) -> Result<Summary> {
    let mut client = ByteStreamClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(digests.len());
    for digest in digests {
        let t = Instant::now();
        let req = ReadRequest {
            resource_name: format!("blobs/{digest}"),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = client.read(req).await?.into_inner();
        let mut got = 0u64;
        while let Some(msg) = stream.next().await {
            got += msg?.data.len() as u64;
        }
        if got != digest.size() {
            return Err(Error::Internal(format!("read {got} bytes of {digest}")));
        }
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, start.elapsed()))
}

/// Calls FindMissingBlobs `rounds` times with the same digests.
pub async fn find_missing(channel: &Channel, digests: &[Digest], rounds: usize) -> Result<Summary> {
    let mut client = ContentAddressableStorageClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let req = FindMissingBlobsRequest {
        blob_digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    };
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        client.find_missing_blobs(req.clone()).await?;
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, start.elapsed()))
}

/// Stores `result` for `action`, then reads it back `rounds` times from each of `clients`
/// concurrent clients (each on its own connection).
pub async fn action_cache_hits(
    url: &str,
    action: Digest,
    result: ActionResult,
    clients: usize,
    rounds: usize,
) -> Result<Summary> {
    let channel = connect(url).await?;
    ActionCacheClient::new(channel)
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            ..Default::default()
        })
        .await?;
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(connect(url).await?);
    }
    let start = Instant::now();
    let tasks = channels.into_iter().map(|channel| {
        tokio::spawn(async move {
            let mut client = ActionCacheClient::new(channel);
            let req = GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            };
            let mut latencies = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                client.get_action_result(req.clone()).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Error>(latencies)
        })
    });
    let mut all = Vec::with_capacity(clients * rounds);
    for task in futures::future::join_all(tasks).await {
        all.extend(task.map_err(|e| Error::Internal(e.to_string()))??);
    }
    Ok(Summary::new(all, start.elapsed()))
}

/// Uploads `count` distinct no-op actions (`/bin/true N`) and returns their digests.
pub async fn noop_actions(channel: &Channel, count: usize) -> Result<Vec<Digest>> {
    use remexec_core::merkle::encode_message;
    use remexec_core::reapi::{
        Action, BatchUpdateBlobsRequest, Command, Directory,
        batch_update_blobs_request::Request as Blob,
    };
    let f = remexec_core::DigestFunction::Sha256;
    let (root, _) = encode_message(f, &Directory::default());
    let mut digests = Vec::with_capacity(count);
    let mut blobs = Vec::new();
    for i in 0..count {
        let command = Command {
            arguments: vec!["/bin/true".into(), i.to_string()],
            ..Default::default()
        };
        let (cd, cb) = encode_message(f, &command);
        let action = Action {
            command_digest: Some(cd.to_proto()),
            input_root_digest: Some(root.to_proto()),
            do_not_cache: true,
            ..Default::default()
        };
        let (ad, ab) = encode_message(f, &action);
        blobs.push(Blob {
            digest: Some(cd.to_proto()),
            data: cb.to_vec(),
            compressor: 0,
        });
        blobs.push(Blob {
            digest: Some(ad.to_proto()),
            data: ab.to_vec(),
            compressor: 0,
        });
        digests.push(ad);
    }
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    for chunk in blobs.chunks(2000) {
        cas.batch_update_blobs(BatchUpdateBlobsRequest {
            requests: chunk.to_vec(),
            ..Default::default()
        })
        .await?;
    }
    Ok(digests)
}

/// Executes each action (skipping the cache) with `concurrency` clients; latency is Execute to
/// COMPLETED. Fails on any non-OK status.
pub async fn execute(
    channel: &Channel,
    actions: Vec<Digest>,
    concurrency: usize,
) -> Result<Summary> {
    use remexec_core::reapi::{ExecuteRequest, execution_client::ExecutionClient};
    let queue = std::sync::Arc::new(std::sync::Mutex::new(actions));
    let start = Instant::now();
    let tasks = (0..concurrency).map(|_| {
        let (queue, channel) = (std::sync::Arc::clone(&queue), channel.clone());
        tokio::spawn(async move {
            let mut client = ExecutionClient::new(channel);
            let mut latencies = Vec::new();
            loop {
                let Some(digest) = queue
                    .lock()
                    .map_err(|_| Error::Internal("poisoned".into()))?
                    .pop()
                else {
                    return Ok::<_, Error>(latencies);
                };
                let t = Instant::now();
                let req = ExecuteRequest {
                    action_digest: Some(digest.to_proto()),
                    skip_cache_lookup: true,
                    ..Default::default()
                };
                let mut ops = client.execute(req).await?.into_inner();
                let mut done = false;
                while let Some(op) = ops.next().await {
                    let op = op?;
                    if op.done {
                        done = true;
                        use prost::Message;
                        if let Some(
                            remexec_core::apis::google::longrunning::operation::Result::Response(
                                any,
                            ),
                        ) = op.result
                        {
                            let r = remexec_core::reapi::ExecuteResponse::decode(&any.value[..])
                                .map_err(|e| Error::Internal(e.to_string()))?;
                            if r.status.as_ref().is_some_and(|s| s.code != 0)
                                || r.result.as_ref().is_none_or(|r| r.exit_code != 0)
                            {
                                return Err(Error::Internal(format!(
                                    "action failed: {:?}",
                                    r.status
                                )));
                            }
                        }
                    }
                }
                if !done {
                    return Err(Error::Internal("operation stream ended early".into()));
                }
                latencies.push(t.elapsed());
            }
        })
    });
    let mut all = Vec::new();
    for task in futures::future::join_all(tasks).await {
        all.extend(task.map_err(|e| Error::Internal(e.to_string()))??);
    }
    Ok(Summary::new(all, start.elapsed()))
}
