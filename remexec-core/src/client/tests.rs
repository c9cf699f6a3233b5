//! Tests of the client layer that need a store, a file system or a server.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;

use super::*;
use crate::merkle::{encode_message, fetch_tree};
use crate::reapi::{
    ActionResult, Directory, DirectoryNode, ExecuteResponse, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use crate::{BlobStore, ChunkStream, Digest, DigestFunction, ReadRange};

const F: DigestFunction = DigestFunction::Sha256;

/// Blobs in a map; counts `find_missing` calls and puts.
#[derive(Debug, Default)]
struct MapStore {
    blobs: Mutex<HashMap<Digest, Bytes>>,
    finds: AtomicUsize,
    puts: AtomicUsize,
}

impl MapStore {
    fn add(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let d = F.digest_of(&data);
        self.blobs.lock().unwrap().insert(d, data);
        d
    }

    fn add_message(&self, m: &impl Message) -> Digest {
        let (d, b) = encode_message(F, m);
        self.blobs.lock().unwrap().insert(d, b);
        d
    }
}

#[async_trait]
impl BlobStore for MapStore {
    async fn find_missing(&self, _: &str, digests: &[Digest]) -> crate::Result<Vec<Digest>> {
        self.finds.fetch_add(1, Ordering::Relaxed);
        let map = self.blobs.lock().unwrap();
        Ok(digests
            .iter()
            .filter(|d| !map.contains_key(d))
            .copied()
            .collect())
    }
    async fn put(&self, _: &str, digest: Digest, data: ChunkStream) -> crate::Result<()> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        let bytes = crate::collect_chunks(data, digest.size()).await?;
        assert_eq!(F.digest_of(&bytes), digest, "put with the wrong content");
        self.blobs.lock().unwrap().insert(digest, bytes);
        Ok(())
    }
    async fn get(
        &self,
        _: &str,
        d: Digest,
        range: ReadRange,
    ) -> crate::Result<Option<ChunkStream>> {
        let blob = self.blobs.lock().unwrap().get(&d).cloned();
        blob.map(|b| range.stream_of(&b)).transpose()
    }
}

fn file_node(name: &str, digest: Digest, is_executable: bool) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        is_executable,
        ..Default::default()
    }
}

fn dir_node(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
    }
}

#[tokio::test]
async fn upload_directory_uploads_only_what_is_missing_and_skips_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("a/b")).unwrap();
    std::fs::write(p.join("a/b/f"), "same").unwrap();
    std::fs::write(p.join("g"), "same").unwrap();
    std::fs::write(p.join("tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(p.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p.join("l")).unwrap();
    nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let store = MapStore::default();
    let present = store.add("#!/bin/sh\n");
    let (root, tree) = upload_directory(&store, "", F, p).await.unwrap();
    let top = tree.root.as_ref().unwrap();
    let names: Vec<_> = top.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["g", "tool"], "the FIFO is skipped");
    assert!(top.files[1].is_executable);
    assert_eq!(
        top.symlinks[0].target, "/etc/passwd",
        "recorded, never followed"
    );
    assert_eq!(store.finds.load(Ordering::Relaxed), 1);
    // "same" once, directories a, a/b and the root; the tool was present.
    assert_eq!(store.puts.load(Ordering::Relaxed), 4);
    assert!(store.blobs.lock().unwrap().contains_key(&present));
    // The uploaded tree is complete and walkable.
    let walked = fetch_tree(&store, "", root).await.unwrap();
    assert_eq!(walked.directories.len(), 3);
    // Uploading again finds everything present.
    upload_directory(&store, "", F, p).await.unwrap();
    assert_eq!(store.puts.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn upload_file_refuses_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("f"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("f", p.join("l")).unwrap();
    nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let store = MapStore::default();
    let d = upload_file(&store, "", F, &p.join("f")).await.unwrap();
    assert_eq!(d, F.digest_of(&vec![7u8; 3 << 20]));
    assert_eq!(store.blobs.lock().unwrap()[&d].len(), 3 << 20);
    for name in ["l", "fifo", "missing"] {
        let err = upload_file(&store, "", F, &p.join(name)).await.unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(_)),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn a_scan_checks_symlinks_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("../../etc", dir.path().join("up")).unwrap();
    let mut plan = UploadPlan::default();
    plan.scan_tree(F, dir.path(), "out", ScanOptions::default(), &|| Ok(()))
        .unwrap();
    let err = plan
        .scan_tree(
            F,
            dir.path(),
            "out",
            ScanOptions::checking_symlinks(),
            &|| Ok(()),
        )
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let err = plan
        .scan_tree(F, dir.path(), "out", ScanOptions::default(), &|| {
            Err(Error::Cancelled("stop".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
}

/// A result with a file, a directory at two paths of its tree, an empty file and a symlink.
fn sample_result(store: &MapStore) -> ActionResult {
    let x = store.add("x content");
    let empty = F.digest_of(b"");
    let pkg = Directory {
        files: vec![file_node("e", empty, false), file_node("x", x, true)],
        ..Default::default()
    };
    let pkg_digest = encode_message(F, &pkg).0;
    let tree = Tree {
        root: Some(Directory {
            directories: vec![dir_node("p", pkg_digest), dir_node("q", pkg_digest)],
            symlinks: vec![SymlinkNode {
                name: "lx".into(),
                target: "p/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![pkg],
    };
    let tree_digest = store.add_message(&tree);
    ActionResult {
        output_files: vec![OutputFile {
            path: "top/f".into(),
            digest: Some(x.to_proto()),
            ..Default::default()
        }],
        output_directories: vec![OutputDirectory {
            path: "d".into(),
            tree_digest: Some(tree_digest.to_proto()),
            ..Default::default()
        }],
        output_symlinks: vec![OutputSymlink {
            path: "s".into(),
            target: "top/f".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn download_outputs_lays_out_every_path() {
    let store = MapStore::default();
    let result = sample_result(&store);
    let out = tempfile::tempdir().unwrap();
    let got = out.path().join("got");
    download_outputs(&store, "", F, &result, &got)
        .await
        .unwrap();
    for p in ["top/f", "d/p/x", "d/q/x", "d/lx", "s"] {
        assert_eq!(
            std::fs::read_to_string(got.join(p)).unwrap(),
            "x content",
            "{p}"
        );
    }
    let mode = |p: &str| std::fs::metadata(got.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode("d/p/x"), mode("top/f"), mode("d/q/e")),
        (0o755, 0o644, 0o644)
    );
    assert!(
        std::fs::symlink_metadata(got.join("s"))
            .unwrap()
            .is_symlink()
    );
    // Again over the first download: files and symlinks are replaced.
    download_outputs(&store, "", F, &result, &got)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_link(got.join("s")).unwrap(),
        Path::new("top/f")
    );
}

#[tokio::test]
async fn download_outputs_never_writes_through_a_symlink() {
    let store = MapStore::default();
    let result = sample_result(&store);
    let out = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // An earlier run left `top` as a symlink to somewhere else.
    std::os::unix::fs::symlink(outside.path(), out.path().join("top")).unwrap();
    let err = download_outputs(&store, "", F, &result, out.path())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn download_outputs_validates_before_writing() {
    let store = MapStore::default();
    let mut result = sample_result(&store);
    // A tree symlink that climbs out of the working directory, and a missing tree.
    let bad_tree = Tree {
        root: Some(Directory {
            symlinks: vec![SymlinkNode {
                name: "esc".into(),
                target: "../../..".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let bad = store.add_message(&bad_tree);
    let missing = F.digest_of(b"no such tree");
    for tree in [bad, missing] {
        result.output_directories.push(OutputDirectory {
            path: "z".into(),
            tree_digest: Some(tree.to_proto()),
            ..Default::default()
        });
        let out = tempfile::tempdir().unwrap();
        let got = out.path().join("got");
        assert!(
            download_outputs(&store, "", F, &result, &got)
                .await
                .is_err()
        );
        assert!(!got.exists(), "something was written before the checks");
        result.output_directories.pop();
    }
}

#[tokio::test]
async fn a_blob_with_the_wrong_content_is_refused_and_removed() {
    let store = MapStore::default();
    let x = F.digest_of(b"x content");
    store
        .blobs
        .lock()
        .unwrap()
        .insert(x, Bytes::from_static(b"y content"));
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "top/f".into(),
            digest: Some(x.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let err = download_outputs(&store, "", F, &result, out.path())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(!out.path().join("top/f").exists());
}

/// Files from a local directory; one of them vanishes once, as if evicted.
struct LocalFiles {
    dir: tempfile::TempDir,
    store: MapStore,
    vanish_once: Mutex<Option<Digest>>,
    prepared: Mutex<Vec<(Digest, bool)>>,
}

#[async_trait]
impl FileSource for LocalFiles {
    async fn prepare(&self, files: &[(Digest, bool)], _refetch: bool) -> crate::Result<()> {
        for (d, x) in files {
            self.prepared.lock().unwrap().push((*d, *x));
            let data = self.store.blobs.lock().unwrap()[d].clone();
            std::fs::write(self.path(d), data).unwrap();
        }
        if let Some(d) = self.vanish_once.lock().unwrap().take() {
            std::fs::remove_file(self.path(&d)).unwrap();
        }
        Ok(())
    }
    fn local_copy(&self, d: &Digest, _: bool) -> Option<std::path::PathBuf> {
        Some(self.path(d))
    }
    async fn write(&self, _: std::fs::File, _: &Path, _: Digest, _: bool) -> crate::Result<()> {
        unreachable!("every file has a local copy")
    }
    fn mode(&self, executable: bool) -> u32 {
        if executable { 0o555 } else { 0o444 }
    }
}

impl LocalFiles {
    fn path(&self, d: &Digest) -> std::path::PathBuf {
        self.dir.path().join(d.hash_hex())
    }
}

#[tokio::test]
async fn a_fresh_layout_links_local_copies_and_fetches_vanished_ones_again() {
    let store = MapStore::default();
    let a = store.add("a");
    let pkg = store.add_message(&Directory {
        files: vec![
            file_node("a", a, false),
            file_node("e", F.digest_of(b""), true),
        ],
        ..Default::default()
    });
    let root = store.add_message(&Directory {
        directories: vec![dir_node("one", pkg), dir_node("two", pkg)],
        symlinks: vec![SymlinkNode {
            name: "l".into(),
            target: "one/a".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let tree = fetch_tree(&store, "", root).await.unwrap();
    let source = LocalFiles {
        dir: tempfile::tempdir().unwrap(),
        store,
        vanish_once: Mutex::new(Some(a)),
        prepared: Mutex::default(),
    };
    let dest = tempfile::tempdir().unwrap();
    let mut m = Materializer::new(dest.path(), &source, Safety::Fresh);
    m.tree(&tree, root, "").await.unwrap();
    m.finish().await.unwrap();
    for p in ["one/a", "two/a", "l"] {
        assert_eq!(
            std::fs::read_to_string(dest.path().join(p)).unwrap(),
            "a",
            "{p}"
        );
    }
    let mode = std::fs::metadata(dest.path().join("two/e"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555);
    // Prepared once for the batch, once more after the local copy vanished.
    assert_eq!(source.prepared.lock().unwrap().len(), 2);
}

/// An Execution server whose Execute stream breaks after its first message; WaitExecution then
/// finishes the operation, unless `wait_fails`.
struct Flaky {
    waits: AtomicUsize,
    wait_fails: bool,
}

fn op(
    name: &str,
    stage: i32,
    response: Option<ExecuteResponse>,
) -> crate::apis::google::longrunning::Operation {
    use crate::apis::google::longrunning::{Operation, operation};
    use crate::apis::google::protobuf::Any;
    let meta = crate::reapi::ExecuteOperationMetadata {
        stage,
        ..Default::default()
    };
    Operation {
        name: name.into(),
        metadata: Some(Any {
            type_url: String::new(),
            value: meta.encode_to_vec(),
        }),
        done: response.is_some(),
        result: response.map(|r| {
            operation::Result::Response(Any {
                type_url: String::new(),
                value: r.encode_to_vec(),
            })
        }),
    }
}

type OpStream = futures::stream::BoxStream<
    'static,
    std::result::Result<crate::apis::google::longrunning::Operation, tonic::Status>,
>;

#[async_trait]
impl crate::reapi::execution_server::Execution for Flaky {
    type ExecuteStream = OpStream;
    type WaitExecutionStream = OpStream;

    async fn execute(
        &self,
        _: tonic::Request<crate::reapi::ExecuteRequest>,
    ) -> std::result::Result<tonic::Response<OpStream>, tonic::Status> {
        use futures::StreamExt;
        let first = futures::stream::iter([
            Ok(op("operations/x", 2, None)),
            Err(tonic::Status::unavailable("connection reset")),
        ]);
        Ok(tonic::Response::new(first.boxed()))
    }

    async fn wait_execution(
        &self,
        request: tonic::Request<crate::reapi::WaitExecutionRequest>,
    ) -> std::result::Result<tonic::Response<OpStream>, tonic::Status> {
        use futures::StreamExt;
        assert_eq!(request.get_ref().name, "operations/x");
        self.waits.fetch_add(1, Ordering::Relaxed);
        if self.wait_fails {
            return Err(tonic::Status::unavailable("still down"));
        }
        let response = ExecuteResponse {
            result: Some(ActionResult {
                exit_code: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let done = futures::stream::iter([Ok(op("operations/x", 4, Some(response)))]);
        Ok(tonic::Response::new(done.boxed()))
    }
}

async fn serve(server: Flaky) -> (String, std::sync::Arc<Flaky>) {
    let server = std::sync::Arc::new(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    let svc =
        crate::reapi::execution_server::ExecutionServer::from_arc(std::sync::Arc::clone(&server));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    (format!("grpc://{addr}"), server)
}

#[tokio::test]
async fn execute_follows_a_broken_stream_with_wait_execution() {
    let (url, server) = serve(Flaky {
        waits: AtomicUsize::new(0),
        wait_fails: false,
    })
    .await;
    let channel = connect(&url).await.unwrap();
    let mut stages = Vec::new();
    let options = FollowOptions {
        backoff: std::time::Duration::from_millis(1),
        ..FollowOptions::default()
    };
    let response = execute(channel, Default::default(), &options, |name, meta| {
        stages.push((name.to_string(), meta.stage));
    })
    .await
    .unwrap();
    assert_eq!(response.result.unwrap().exit_code, 3);
    assert_eq!(
        stages,
        [("operations/x".into(), 2), ("operations/x".into(), 4)]
    );
    assert_eq!(server.waits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn execute_gives_up_after_bounded_reconnects() {
    let (url, server) = serve(Flaky {
        waits: AtomicUsize::new(0),
        wait_fails: true,
    })
    .await;
    let channel = connect(&url).await.unwrap();
    let options = FollowOptions {
        max_reconnects: 3,
        backoff: std::time::Duration::from_millis(1),
        metadata: None,
    };
    let err = execute(channel, Default::default(), &options, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert_eq!(server.waits.load(Ordering::Relaxed), 3);
}

#[test]
fn status_result_maps_codes_like_status_conversion() {
    assert!(status_result(None).is_ok());
    assert!(status_result(Some(&Default::default())).is_ok());
    let s = RpcStatus {
        code: tonic::Code::NotFound as i32,
        message: "gone".into(),
        details: vec![],
    };
    let err = status_result(Some(&s)).unwrap_err();
    assert!(matches!(&err, Error::NotFound(m) if m == "gone"), "{err:?}");
}
