//! The workloads: what to prepare before the clock starts, and one operation.

use super::wire::{self, ReadRequest, WriteRequest};
use crate::client::{
    self, ActionBuilder, FollowOptions, action_cache_client, batch_update_blobs, cas_client,
    status_result,
};
use crate::merkle::encode_message;
use crate::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, ExecuteRequest,
    FindMissingBlobsRequest, GetActionResultRequest, UpdateActionResultRequest,
    batch_update_blobs_request,
};
use crate::{
    BlobRef, Compressor, Digest, DigestFunction, Error, ReadResource, Result, WriteResource,
};
use bytes::Bytes;
use futures::StreamExt;
use tonic::transport::Channel;

use super::phases::{Phase, Phases};
use super::{Bench, WorkloadKind};

const F: DigestFunction = DigestFunction::Sha256;
/// ByteStream message size.
const CHUNK: usize = 1024 * 1024;
/// Distinct prebuilt FindMissingBlobs requests cycled through.
const REQUEST_POOL: usize = 8;
/// Size of the small blobs the mixed workload uploads.
const SMALL_BLOB: usize = 4096;

/// A prepared workload.
#[derive(Debug)]
pub struct Workload {
    kind: WorkloadKind,
    instance: String,
    batch: bool,
    size: usize,
    /// cas-write: blob `i` is `nonce ‖ i ‖ template[16..]`; its digest is `digests[i]`.
    template: Bytes,
    nonce: u64,
    digests: Vec<Digest>,
    find: Vec<FindMissingBlobsRequest>,
    hit: Option<Digest>,
    misses: Vec<Digest>,
    hit_ratio: f64,
    actions: Vec<Digest>,
    /// execute: each action lacks one input, so that only the input check runs.
    missing_input: bool,
    /// execute: where each action's time went.
    phases: parking_lot::Mutex<Phases>,
}

/// The result of a compile, as a hit returns it: an object file, a dependency file and
/// stderr, stored in the CAS first, so that a server checking completeness finds them.
async fn compile_like_result(
    channel: &Channel,
    instance: &str,
    nonce: u64,
) -> Result<ActionResult> {
    let blob = |what: &str, len: usize| {
        let mut data = format!("remexec bench {what} {nonce} ").into_bytes();
        data.resize(len, b'x');
        let data = Bytes::from(data);
        (F.digest_of(&data), data)
    };
    let (object, deps, stderr) = (
        blob("object", 12_000),
        blob("deps", 600),
        blob("stderr", 80),
    );
    let blobs = vec![object.clone(), deps.clone(), stderr.clone()];
    batch_update_blobs(channel.clone(), instance, F, blobs).await?;
    let file = |path: &str, digest: Digest| crate::reapi::OutputFile {
        path: path.into(),
        digest: Some(digest.to_proto()),
        ..Default::default()
    };
    Ok(ActionResult {
        output_files: vec![
            file("bazel-out/k8-fastbuild/bin/lib/_objs/lib/lib.o", object.0),
            file("bazel-out/k8-fastbuild/bin/lib/_objs/lib/lib.d", deps.0),
        ],
        stderr_digest: Some(stderr.0.to_proto()),
        ..Default::default()
    })
}

fn random_digest() -> Digest {
    let mut hash = [0u8; 32];
    fastrand::fill(&mut hash);
    Digest::new(F, hash, 1 + fastrand::u64(..1 << 20))
}

fn blob_prefix(nonce: u64, i: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&nonce.to_le_bytes());
    p[8..].copy_from_slice(&i.to_le_bytes());
    p
}

/// Uploads `count` distinct no-op actions (`/bin/true N`, not cacheable) and returns their digests.
/// With `missing_input`, the deepest directory's file is left out of the CAS: the scheduler
/// walks the whole input root, then answers `FAILED_PRECONDITION`, and nothing runs.
pub async fn noop_actions(
    channel: &Channel,
    instance: &str,
    count: usize,
    (input_dirs, missing_input): (usize, bool),
) -> Result<Vec<Digest>> {
    let nonce = fastrand::u64(..).to_string();
    let (root, mut blobs) = nested_dirs(input_dirs, &nonce);
    if missing_input && input_dirs > 0 {
        // The first blob is the deepest directory's file.
        blobs.remove(0);
    }
    let mut actions = Vec::with_capacity(count);
    for i in 0..count {
        let built = ActionBuilder::new(["/bin/true".into(), nonce.clone(), i.to_string()])
            .do_not_cache(true)
            .build(F, root);
        actions.push(built.action_digest);
        blobs.extend(built.blobs);
    }
    batch_update_blobs(channel.clone(), instance, F, blobs).await?;
    Ok(actions)
}

/// An input root of `depth` directories, each inside the one before, each with a small file
/// of its own (so that no two are alike): the root's digest and every blob. The walk of such a
/// tree takes one read per level.
fn nested_dirs(depth: usize, nonce: &str) -> (Digest, Vec<(Digest, Bytes)>) {
    use crate::reapi::{DirectoryNode, FileNode};
    let mut blobs = Vec::new();
    let mut below: Option<Digest> = None;
    for level in (0..depth).rev() {
        let content = Bytes::from(format!("{nonce} level {level}"));
        let file = F.digest_of(&content);
        blobs.push((file, content));
        let directory = Directory {
            files: vec![FileNode {
                name: "f".into(),
                digest: Some(file.to_proto()),
                ..Default::default()
            }],
            directories: below
                .map(|d| DirectoryNode {
                    name: "d".into(),
                    digest: Some(d.to_proto()),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let (digest, bytes) = encode_message(F, &directory);
        blobs.push((digest, bytes));
        below = Some(digest);
    }
    let root = match below {
        Some(root) => root,
        None => {
            let (digest, bytes) = encode_message(F, &Directory::default());
            blobs.push((digest, bytes));
            digest
        }
    };
    (root, blobs)
}

impl Workload {
    /// Uploads and precomputes whatever the measured operations need.
    pub async fn prepare(args: &Bench, channel: &Channel) -> Result<Self> {
        let size = usize::try_from(args.size)
            .map_err(|_| Error::invalid("--size too large"))?
            .max(16);
        let mut w = Self {
            kind: args.workload,
            instance: args.instance.clone(),
            batch: args.batch,
            size,
            template: Bytes::new(),
            nonce: fastrand::u64(..),
            digests: Vec::new(),
            find: Vec::new(),
            hit: None,
            misses: (0..1024).map(|_| random_digest()).collect(),
            hit_ratio: args.hit_ratio.clamp(0.0, 1.0),
            actions: Vec::new(),
            missing_input: args.missing_input,
            phases: parking_lot::Mutex::new(Phases::new()),
        };
        match args.workload {
            WorkloadKind::CasWrite | WorkloadKind::CasRead => {
                let mut template = vec![0u8; size];
                fastrand::fill(&mut template);
                w.template = Bytes::from(template);
                let n = if args.workload == WorkloadKind::CasWrite {
                    args.count
                } else {
                    args.blobs.max(1) as u64
                };
                w.digests = (0..n)
                    .map(|i| {
                        let mut h = F.hasher();
                        h.update(&blob_prefix(w.nonce, i));
                        h.update(&w.template[16..]);
                        h.finish()
                    })
                    .collect();
                if args.workload == WorkloadKind::CasRead {
                    for i in 0..n {
                        w.write(channel, i).await?;
                    }
                }
            }
            WorkloadKind::FindMissing => w.find = w.find_requests(args, channel).await?,
            WorkloadKind::AcGet | WorkloadKind::Mixed => {
                let action = F.digest_of(format!("remexec bench action {}", w.nonce).as_bytes());
                let result = compile_like_result(channel, &w.instance, w.nonce).await?;
                let mut ac = action_cache_client(channel.clone());
                let req = UpdateActionResultRequest {
                    instance_name: w.instance.clone(),
                    action_digest: Some(action.to_proto()),
                    action_result: Some(result),
                    digest_function: F.to_proto(),
                    ..Default::default()
                };
                ac.update_action_result(req).await?;
                w.hit = Some(action);
                if args.workload == WorkloadKind::Mixed && !args.no_execute {
                    w.actions = noop_actions(
                        channel,
                        &w.instance,
                        (args.count as usize).div_ceil(10),
                        (0, false),
                    )
                    .await?;
                }
                if args.workload == WorkloadKind::AcGet && args.miss {
                    w.hit_ratio = 0.0;
                } else if args.workload == WorkloadKind::AcGet {
                    w.hit_ratio = 1.0;
                }
            }
            WorkloadKind::Spawn => {}
            WorkloadKind::Execute => {
                let (count, inputs) = (args.count as usize, (args.input_dirs, args.missing_input));
                w.actions = noop_actions(channel, &w.instance, count, inputs).await?;
            }
        }
        Ok(w)
    }

    /// Where the executed actions' time went, phase by phase (empty for other workloads).
    pub fn phases(&self) -> Vec<Phase> {
        self.phases.lock().report()
    }

    /// Uploads `batch_size` (at most 10,000) blobs and builds the FindMissingBlobs requests
    /// cycled through, `hit_ratio` of their digests present.
    async fn find_requests(
        &self,
        args: &Bench,
        channel: &Channel,
    ) -> Result<Vec<FindMissingBlobsRequest>> {
        let present: Vec<(Digest, Bytes)> = (0..args.batch_size.clamp(1, 10_000))
            .map(|i| {
                let data = Bytes::from(
                    [
                        blob_prefix(self.nonce, i as u64).as_slice(),
                        b"find-missing",
                    ]
                    .concat(),
                );
                (F.digest_of(&data), data)
            })
            .collect();
        let present_digests: Vec<Digest> = present.iter().map(|(d, _)| *d).collect();
        batch_update_blobs(channel.clone(), &self.instance, F, present).await?;
        let hits = (args.batch_size as f64 * self.hit_ratio).round() as usize;
        Ok((0..REQUEST_POOL)
            .map(|r| {
                let digests = (0..args.batch_size).map(|j| {
                    if j < hits {
                        present_digests[(r * 7 + j) % present_digests.len()]
                    } else {
                        random_digest()
                    }
                });
                FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: digests.map(|d| d.to_proto()).collect(),
                    digest_function: F.to_proto(),
                }
            })
            .collect())
    }

    /// Runs operation `i`; returns the payload bytes it moved.
    pub async fn op(&self, channel: &Channel, i: u64) -> Result<u64> {
        match self.kind {
            WorkloadKind::CasWrite => self.write(channel, i).await,
            WorkloadKind::CasRead => {
                self.read(
                    channel,
                    self.digests[(i % self.digests.len() as u64) as usize],
                )
                .await
            }
            WorkloadKind::FindMissing => {
                let req = self.find[(i % REQUEST_POOL as u64) as usize].clone();
                cas_client(channel.clone()).find_missing_blobs(req).await?;
                Ok(0)
            }
            WorkloadKind::AcGet => self.ac_get(channel, i).await,
            WorkloadKind::Spawn => {
                let status = tokio::process::Command::new("/bin/true")
                    .status()
                    .await
                    .map_err(|e| Error::io("starting /bin/true", e))?;
                match status.success() {
                    true => Ok(0),
                    false => Err(Error::Internal(format!("/bin/true: {status}").into())),
                }
            }
            WorkloadKind::Execute => {
                self.execute(channel, self.actions[i as usize % self.actions.len()])
                    .await
            }
            WorkloadKind::Mixed => match i % 10 {
                0..=3 => {
                    let present: Vec<Digest> = self.hit.into_iter().collect();
                    let digests = (0..100).map(|j| {
                        if j % 2 == 0 && !present.is_empty() {
                            present[0]
                        } else {
                            self.misses[(i as usize + j) % self.misses.len()]
                        }
                    });
                    let req = FindMissingBlobsRequest {
                        instance_name: self.instance.clone(),
                        blob_digests: digests.map(|d| d.to_proto()).collect(),
                        digest_function: F.to_proto(),
                    };
                    cas_client(channel.clone()).find_missing_blobs(req).await?;
                    Ok(0)
                }
                4 | 5 => {
                    let mut data = vec![0u8; SMALL_BLOB];
                    data[..16].copy_from_slice(&blob_prefix(self.nonce, i));
                    let data = Bytes::from(data);
                    let blob = vec![(F.digest_of(&data), data)];
                    batch_update_blobs(channel.clone(), &self.instance, F, blob).await?;
                    Ok(SMALL_BLOB as u64)
                }
                9 if !self.actions.is_empty() => {
                    self.execute(
                        channel,
                        self.actions[(i / 10) as usize % self.actions.len()],
                    )
                    .await
                }
                _ => self.ac_get(channel, i).await,
            },
        }
    }

    async fn write(&self, channel: &Channel, i: u64) -> Result<u64> {
        let digest = self.digests[i as usize];
        let prefix = blob_prefix(self.nonce, i);
        // Only the chunk holding the 16-byte prefix is copied; the rest are slices of the template.
        let chunk = |start: usize, end: usize| -> Bytes {
            if start >= 16 {
                return self.template.slice(start..end);
            }
            let mut v = self.template[start..end].to_vec();
            v[..16 - start].copy_from_slice(&prefix[start..]);
            Bytes::from(v)
        };
        if self.batch {
            let req = BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(digest.to_proto()),
                    data: chunk(0, self.size).to_vec(),
                    compressor: 0,
                }],
                digest_function: F.to_proto(),
            };
            let resp = cas_client(channel.clone()).batch_update_blobs(req).await?;
            for r in resp.into_inner().responses {
                status_result(r.status.as_ref())?;
            }
            return Ok(self.size as u64);
        }
        let name = WriteResource {
            instance: self.instance.clone(),
            uuid: format!("{:x}-{i}", self.nonce),
            blob: BlobRef {
                compressor: Compressor::Identity,
                digest,
            },
            metadata: None,
        }
        .to_string();
        let n = self.size.div_ceil(CHUNK);
        let requests: Vec<WriteRequest> = (0..n)
            .map(|c| {
                let end = ((c + 1) * CHUNK).min(self.size);
                WriteRequest {
                    resource_name: if c == 0 { name.clone() } else { String::new() },
                    write_offset: (c * CHUNK) as i64,
                    finish_write: c + 1 == n,
                    data: chunk(c * CHUNK, end),
                }
            })
            .collect();
        let resp = wire::write(channel, futures::stream::iter(requests)).await?;
        if resp.committed_size != self.size as i64 {
            return Err(Error::Internal("server committed a different size".into()));
        }
        Ok(self.size as u64)
    }

    async fn read(&self, channel: &Channel, digest: Digest) -> Result<u64> {
        if self.batch {
            let req = BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: vec![digest.to_proto()],
                digest_function: F.to_proto(),
                ..Default::default()
            };
            let resp = cas_client(channel.clone()).batch_read_blobs(req).await?;
            let mut moved = 0;
            for r in resp.into_inner().responses {
                status_result(r.status.as_ref())?;
                moved += r.data.len() as u64;
            }
            return Ok(moved);
        }
        let name = ReadResource {
            instance: self.instance.clone(),
            blob: BlobRef {
                compressor: Compressor::Identity,
                digest,
            },
        }
        .to_string();
        let request = ReadRequest {
            resource_name: name,
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = wire::read(channel, request).await?;
        let mut moved = 0u64;
        while let Some(msg) = stream.next().await {
            moved += msg?.data.len() as u64;
        }
        if moved != digest.size() {
            return Err(Error::Internal(
                format!("read {moved} of {digest}'s bytes").into(),
            ));
        }
        Ok(moved)
    }

    async fn ac_get(&self, channel: &Channel, i: u64) -> Result<u64> {
        let hit = (fastrand::f64() < self.hit_ratio)
            .then_some(self.hit)
            .flatten();
        let digest = hit.unwrap_or(self.misses[i as usize % self.misses.len()]);
        let req = GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(digest.to_proto()),
            digest_function: F.to_proto(),
            ..Default::default()
        };
        match action_cache_client(channel.clone())
            .get_action_result(req)
            .await
        {
            Ok(_) if hit.is_some() => Ok(0),
            Err(s) if s.code() == tonic::Code::NotFound && hit.is_none() => Ok(0),
            Ok(_) => Err(Error::Internal("unexpected hit".into())),
            Err(s) => Err(s.into()),
        }
    }

    async fn execute(&self, channel: &Channel, action: Digest) -> Result<u64> {
        let req = ExecuteRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            digest_function: F.to_proto(),
            ..Default::default()
        };
        let sent = std::time::SystemTime::now();
        let response = client::execute(channel.clone(), req, &FollowOptions::default(), |_, _| {})
            .await
            .and_then(|r| status_result(r.status.as_ref()).map(|()| r));
        let received = std::time::SystemTime::now();
        let response = match (response, self.missing_input) {
            (Err(e), true) if e.code() == tonic::Code::FailedPrecondition => return Ok(0),
            (Ok(_), true) => return Err(Error::Internal("an action missing an input ran".into())),
            (response, _) => response?,
        };
        if let Some(m) = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
        {
            self.phases.lock().record(sent, received, m);
        }
        let code = response.result.map_or(-1, |r| r.exit_code);
        if code == 0 {
            Ok(0)
        } else {
            Err(Error::Internal(format!("action exited {code}").into()))
        }
    }
}
