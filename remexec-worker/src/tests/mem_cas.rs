//! An in-memory `BlobStore` for tests, which can be told to hang, plus lease and tree helpers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use remexec_core::merkle::encode_message;
use remexec_core::reapi::{Action, Command, Directory, DirectoryNode, FileNode, SymlinkNode};
use remexec_core::testing::MapStore;
use remexec_core::{
    BlobStore, BlobStoreExt, ChunkStream, Digest, DigestFunction, Error, ReadRange, Result,
};
use remexec_proto::worker::v1::Lease;

use crate::{ProcessIsolation, Worker, WorkerConfig};

pub(crate) const F: DigestFunction = DigestFunction::Sha256;

/// Blobs in core's test [`MapStore`], hash-checked on the way in; `get` or `put` never return
/// once `hang_gets` or `hang_puts` is set. The helpers add blobs under the instance name `""`.
#[derive(Debug, Default)]
pub(crate) struct MemCas {
    blobs: MapStore,
    pub(crate) hang_gets: AtomicBool,
    pub(crate) hang_puts: AtomicBool,
}

impl MemCas {
    pub(crate) fn add(&self, data: impl Into<Bytes>) -> Digest {
        self.blobs.insert("", data)
    }

    pub(crate) fn add_dir(&self, dir: &Directory) -> Digest {
        self.blobs.insert("", encode_message(F, dir).1)
    }

    pub(crate) fn blob(&self, digest: Option<&remexec_core::reapi::Digest>) -> Option<Bytes> {
        let digest = Digest::from_proto(F, digest?).ok()?;
        if digest.is_empty_blob() {
            return Some(Bytes::new());
        }
        self.blobs.blob("", digest)
    }
}

#[async_trait::async_trait]
impl BlobStore for MemCas {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.blobs.find_missing(instance, digests).await
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        if self.hang_puts.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
        let bytes = remexec_core::collect_chunks(data, digest.size()).await?;
        if digest.function().digest_of(&bytes) != digest {
            return Err(Error::invalid(format!("content does not match {digest}")));
        }
        self.blobs.put_bytes(instance, digest, bytes).await
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        if self.hang_gets.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
        self.blobs.get(instance, digest, range).await
    }
}

#[tokio::test]
async fn mem_cas_conformance() {
    let caps = remexec_core::testing::BlobStoreCapabilities::new().verifies_content(true);
    remexec_core::testing::blob_store_conformance_with(Arc::new(MemCas::default()), caps).await;
}

pub(crate) fn file(name: &str, digest: Digest) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        ..Default::default()
    }
}

pub(crate) fn subdir(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
    }
}

pub(crate) fn symlink(name: &str, target: &str) -> SymlinkNode {
    SymlinkNode {
        name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

/// A shell command with a `PATH`, declaring `outputs` (REAPI v2.1 `output_paths`).
pub(crate) fn sh(script: &str, outputs: &[&str]) -> Command {
    Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![remexec_core::reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: outputs.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    }
}

/// A lease for executor `executor` running `command` on the input root `root`.
pub(crate) fn lease(id: &str, executor: &str, root: Digest, command: Command) -> Lease {
    Lease {
        lease_id: id.into(),
        executor_id: executor.into(),
        action_digest: Some(F.digest_of(id.as_bytes()).to_proto()),
        digest_function: F.to_proto(),
        action: Some(Action {
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        }),
        command: Some(command),
        timeout_ms: 60_000,
        ..Default::default()
    }
}

/// The digest of the empty input root.
pub(crate) fn empty_root() -> Digest {
    encode_message(F, &Directory::default()).0
}

/// A worker with `executors` executors in `dir`, its config adjusted by `tweak`.
pub(crate) fn worker(
    dir: &Path,
    executors: usize,
    cas: &Arc<MemCas>,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> Worker {
    let mut config = WorkerConfig::new("w", dir.to_path_buf(), executors, vec![]);
    tweak(&mut config);
    Worker::new(
        config,
        Arc::clone(cas) as _,
        Arc::new(ProcessIsolation::default()),
    )
    .unwrap()
}

/// The status code of a lease result (0 for OK or no status).
pub(crate) fn code(r: &remexec_proto::worker::v1::LeaseResult) -> i32 {
    r.status.as_ref().map_or(0, |s| s.code)
}
