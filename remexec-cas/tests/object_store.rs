//! The object-store backends (`ObjectBlobStore`, `ObjectActionCache`, `open_object_store`):
//! the shared conformance suites on memory, a local directory and (feature `s3`) a real
//! S3-compatible server, moto, that the tests start on loopback; request counts of the
//! existence cache, streamed multipart uploads, timeouts, and an S3 outage.
//!
//! The S3 tests need moto's `moto_server`: `$REMEXEC_MOTO`, or
//! `$HOME/.cache/remexec-test/moto-venv/bin/moto_server` as `.ci/test` installs it.
//! `REMEXEC_SKIP_E2E=1` skips them.

#![allow(clippy::unwrap_used)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use remexec_cas::object_store::memory::InMemory;
use remexec_cas::object_store::path::Path;
use remexec_cas::object_store::{
    self, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use remexec_cas::{ExternalSettings, ObjectActionCache, ObjectBlobStore, open_object_store};
use remexec_core::testing::{action_cache_conformance, blob_store_conformance, content};
use remexec_core::{
    ActionCache, BlobStore, BlobStoreExt, ChunkStream, Digest, DigestFunction, Error, ReadRange,
};

const SHA: DigestFunction = DigestFunction::Sha256;

/// Settings that make the suites' larger blobs (3 MiB, 5 MiB) go up in many parts.
fn small_parts() -> ExternalSettings {
    ExternalSettings::default()
        .multipart_threshold(256 << 10)
        .part_size(256 << 10)
        .read_window(1 << 20)
}

/// What an [`Instrumented`] store saw.
#[derive(Debug, Default)]
struct Counts {
    heads: AtomicUsize,
    heads_in_flight: AtomicUsize,
    peak_heads_in_flight: AtomicUsize,
    gets: AtomicUsize,
    puts: AtomicUsize,
    uploads: AtomicUsize,
    parts: AtomicUsize,
    largest_part: AtomicUsize,
    completes: AtomicUsize,
    aborts: AtomicUsize,
    /// What `source_consumed` said when the first part went up.
    consumed_at_first_part: AtomicU64,
    /// Bytes a test's put stream has handed out so far.
    source_consumed: Arc<AtomicU64>,
}

/// An object store that counts requests, can slow HEADs down and can hang every call.
#[derive(Debug)]
struct Instrumented {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<Counts>,
    head_delay: Duration,
    hang: AtomicBool,
}

impl Instrumented {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            counts: Arc::default(),
            head_delay: Duration::ZERO,
            hang: AtomicBool::new(false),
        })
    }

    fn slow_heads(inner: Arc<dyn ObjectStore>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            counts: Arc::default(),
            head_delay: delay,
            hang: AtomicBool::new(false),
        })
    }

    async fn maybe_hang(&self) {
        if self.hang.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
    }
}

impl fmt::Display for Instrumented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

fn count(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::SeqCst);
}

#[async_trait]
impl ObjectStore for Instrumented {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.maybe_hang().await;
        count(&self.counts.puts);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.maybe_hang().await;
        count(&self.counts.uploads);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload {
            inner,
            counts: self.counts.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.maybe_hang().await;
        count(if options.head {
            &self.counts.heads
        } else {
            &self.counts.gets
        });
        self.inner.get_opts(location, options).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.maybe_hang().await;
        let c = &self.counts;
        count(&c.heads);
        let now = c.heads_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_heads_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.head_delay).await;
        let result = self.inner.head(location).await;
        c.heads_in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// A multipart upload whose parts, completion and abort are counted.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    counts: Arc<Counts>,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let c = &self.counts;
        if c.parts.fetch_add(1, Ordering::SeqCst) == 0 {
            let consumed = c.source_consumed.load(Ordering::SeqCst);
            c.consumed_at_first_part.store(consumed, Ordering::SeqCst);
        }
        c.largest_part
            .fetch_max(data.content_length(), Ordering::SeqCst);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        count(&self.counts.completes);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        count(&self.counts.aborts);
        self.inner.abort().await
    }
}

/// `data` in `chunk`-sized pieces, recording in `consumed` how much was handed out.
fn counted_stream(data: Bytes, chunk: usize, consumed: Arc<AtomicU64>) -> ChunkStream {
    let pieces: Vec<Bytes> = data.chunks(chunk).map(|c| data.slice_ref(c)).collect();
    futures::stream::iter(pieces)
        .map(move |piece| {
            consumed.fetch_add(piece.len() as u64, Ordering::SeqCst);
            Ok(piece)
        })
        .boxed()
}

/// Every key the store holds, sorted.
async fn keys(store: &dyn ObjectStore) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(None)
        .map(|meta| meta.unwrap().location.to_string())
        .collect()
        .await;
    keys.sort();
    keys
}

#[tokio::test]
async fn conformance_in_memory() {
    let backend = Instrumented::new(Arc::new(InMemory::new()));
    let store = ObjectBlobStore::new(backend.clone(), Path::from("pre"), small_parts());
    blob_store_conformance(Arc::new(store)).await;
    let c = &backend.counts;
    assert!(
        c.completes.load(Ordering::SeqCst) > 0,
        "large blobs went up in parts"
    );
    assert!(
        c.aborts.load(Ordering::SeqCst) > 0,
        "failed uploads were aborted"
    );
    let cache = ObjectActionCache::new(backend.clone(), Path::from("pre"), small_parts());
    action_cache_conformance(Arc::new(cache)).await;
    for key in keys(backend.as_ref()).await {
        assert!(
            key.starts_with("pre/cas/i") || key.starts_with("pre/ac/i"),
            "{key}"
        );
    }
}

/// Files under `dir`, relative, sorted.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn conformance_on_the_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let url = format!("file://{}", root.display());
    let (store, cache) = open_object_store(&url, [], small_parts()).unwrap();
    assert_eq!(store.to_string(), format!("Object({url})"));
    blob_store_conformance(store).await;
    action_cache_conformance(cache).await;
    // Aborted uploads leave no staging file behind once their background abort ran.
    let named_by_digest = |f: &String| {
        let name = f.rsplit('/').next().unwrap();
        let (hash, size) = name.split_once('-').unwrap_or(("", "x"));
        hash.len() == 64 && size.parse::<u64>().is_ok()
    };
    let mut leftovers = Vec::new();
    for _ in 0..50 {
        leftovers = files_under(&root)
            .into_iter()
            .filter(|f| !named_by_digest(f))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    assert!(
        files_under(&root)
            .iter()
            .all(|f| f.starts_with("cas/i") || f.starts_with("ac/i"))
    );
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let memory = Arc::new(InMemory::new());
    let store = ObjectBlobStore::new(memory.clone(), Path::from("p/q"), small_parts());
    let cache = ObjectActionCache::new(memory.clone(), Path::from("p/q"), small_parts());
    let blob = Bytes::from_static(b"hello");
    let sha = SHA.digest_of(&blob);
    let b3 = DigestFunction::Blake3.digest_of(&blob);
    store.put_bytes("", sha, blob.clone()).await.unwrap();
    store.put_bytes("team/a_b", b3, blob.clone()).await.unwrap();
    cache.put("x", sha, Default::default()).await.unwrap();
    assert_eq!(
        keys(memory.as_ref()).await,
        vec![
            format!("p/q/ac/ix/sha256/{}-5", sha.hash_hex()),
            format!("p/q/cas/i/sha256/{}-5", sha.hash_hex()),
            format!("p/q/cas/iteam_2fa_5fb/blake3/{}-5", b3.hash_hex()),
        ]
    );
}

/// Stores `n` small blobs straight into `store` under the layout's keys, returning their
/// digests.
async fn seed(store: &ObjectBlobStore, n: u64) -> Vec<Digest> {
    let mut digests = Vec::new();
    for i in 0..n {
        let data = content(10_000 + i, 16);
        let d = SHA.digest_of(&data);
        store.put_bytes("inst", d, data).await.unwrap();
        digests.push(d);
    }
    digests
}

#[tokio::test]
async fn find_missing_costs_at_most_one_head_per_blob_and_none_when_warm() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let backend = Instrumented::slow_heads(memory.clone(), Duration::from_millis(2));
    let writer = ObjectBlobStore::new(backend.clone(), Path::default(), small_parts());
    let present = seed(&writer, 1000).await;
    let c = &backend.counts;
    assert_eq!(c.heads.load(Ordering::SeqCst), 0, "puts send no HEAD");
    assert!(
        writer
            .find_missing("inst", &present)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.heads.swap(0, Ordering::SeqCst),
        0,
        "the writer knows what it put"
    );

    // A fresh store (a restarted server) asks once per distinct blob, 32 at a time.
    let store = ObjectBlobStore::new(backend.clone(), Path::default(), small_parts());
    let absent: Vec<Digest> = (0..10).map(|i| SHA.digest_of(&content(i, 17))).collect();
    let mut query = present.clone();
    query.extend(&absent);
    query.extend(&present[..100]);
    let started = Instant::now();
    assert_eq!(store.find_missing("inst", &query).await.unwrap(), absent);
    let cold = started.elapsed();
    assert_eq!(
        c.heads.swap(0, Ordering::SeqCst),
        1010,
        "one HEAD per distinct blob"
    );
    let peak = c.peak_heads_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=32).contains(&peak),
        "HEADs run concurrently, at most 32: {peak}"
    );
    assert!(
        cold < Duration::from_secs(2),
        "1,010 HEADs of 2 ms took {cold:?}"
    );

    let started = Instant::now();
    assert!(
        store
            .find_missing("inst", &present)
            .await
            .unwrap()
            .is_empty()
    );
    let warm = started.elapsed();
    assert_eq!(
        c.heads.swap(0, Ordering::SeqCst),
        0,
        "warm: no request at all"
    );
    assert_eq!(store.find_missing("inst", &query).await.unwrap(), absent);
    assert_eq!(
        c.heads.swap(0, Ordering::SeqCst),
        10,
        "misses are asked again"
    );
    assert_eq!(store.cached_keys(), 1000);
    eprintln!("find_missing of 1,010 digests: cold {cold:?}, warm {warm:?}");

    // The cache is bounded: with room for 100 keys, most of a warm query goes out again.
    let small = ObjectBlobStore::new(
        backend.clone(),
        Path::default(),
        small_parts().existence_cache(100 * 128),
    );
    small.find_missing("inst", &present).await.unwrap();
    small.find_missing("inst", &present).await.unwrap();
    assert!(small.cached_keys() <= 100);
    assert!(c.heads.swap(0, Ordering::SeqCst) >= 1900);
}

#[tokio::test]
async fn large_puts_stream_in_parts_and_small_ones_are_one_put() {
    let backend = Instrumented::new(Arc::new(InMemory::new()));
    let settings = ExternalSettings::default()
        .multipart_threshold(1 << 20)
        .part_size(1 << 20)
        .upload_concurrency(2);
    let store = ObjectBlobStore::new(backend.clone(), Path::default(), settings);
    let c = &backend.counts;

    let small = content(1, 1 << 20);
    store
        .put_bytes("", SHA.digest_of(&small), small)
        .await
        .unwrap();
    assert_eq!(c.puts.load(Ordering::SeqCst), 1);
    assert_eq!(c.uploads.load(Ordering::SeqCst), 0);

    let big = content(2, 20 << 20);
    let d = SHA.digest_of(&big);
    let source = counted_stream(big.clone(), 64 << 10, c.source_consumed.clone());
    store.put("", d, source).await.unwrap();
    assert_eq!(c.uploads.load(Ordering::SeqCst), 1);
    assert_eq!(c.completes.load(Ordering::SeqCst), 1);
    assert_eq!(c.parts.load(Ordering::SeqCst), 20);
    assert_eq!(c.largest_part.load(Ordering::SeqCst), 1 << 20);
    let at_first = c.consumed_at_first_part.load(Ordering::SeqCst);
    assert!(
        at_first <= 2 << 20,
        "the first part went up after {at_first} bytes were read: the blob was buffered"
    );
    assert_eq!(store.get_bytes("", d, u64::MAX).await.unwrap(), Some(big));
}

#[tokio::test]
async fn failed_and_dropped_multipart_uploads_are_aborted() {
    let backend = Instrumented::new(Arc::new(InMemory::new()));
    let store = ObjectBlobStore::new(backend.clone(), Path::default(), small_parts());
    let c = &backend.counts;
    let big = content(3, 1 << 20);
    let wrong = Digest::new(SHA, *SHA.digest_of(&big).hash(), (1 << 20) + 1);
    let err = store
        .put("", wrong, counted_stream(big.clone(), 4096, Arc::default()))
        .await;
    assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
    let stalled = counted_stream(big.slice(..600 << 10), 4096, Arc::default())
        .chain(futures::stream::pending())
        .boxed();
    let d = SHA.digest_of(&big);
    let put = tokio::time::timeout(Duration::from_millis(300), store.put("", d, stalled)).await;
    assert!(put.is_err(), "a put whose stream stalls does not finish");
    for _ in 0..100 {
        if c.aborts.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.aborts.load(Ordering::SeqCst), 2, "both uploads aborted");
    assert_eq!(c.completes.load(Ordering::SeqCst), 0);
    assert!(keys(backend.as_ref()).await.is_empty());
}

#[tokio::test]
async fn reads_are_ranged_and_windowed() {
    let backend = Instrumented::new(Arc::new(InMemory::new()));
    let settings = small_parts().read_window(100_000);
    let store = ObjectBlobStore::new(backend.clone(), Path::default(), settings);
    let data = content(4, 1_000_000);
    let d = SHA.digest_of(&data);
    store.put_bytes("", d, data.clone()).await.unwrap();
    let range = ReadRange {
        offset: 150_000,
        limit: Some(300_000),
    };
    let stream = store.get("", d, range).await.unwrap().unwrap();
    let got = remexec_core::collect_chunks(stream, 0).await.unwrap();
    assert!(got == data[150_000..450_000]);
    assert_eq!(
        backend.counts.gets.load(Ordering::SeqCst),
        3,
        "three windows"
    );
}

#[tokio::test]
async fn objects_of_the_wrong_length_are_misses() {
    let memory = Arc::new(InMemory::new());
    let store = ObjectBlobStore::new(memory.clone(), Path::default(), small_parts());
    let data = content(5, 100);
    let d = SHA.digest_of(&data);
    let key = Path::from(format!("cas/i/sha256/{}-100", d.hash_hex()));
    for wrong in [data.slice(..99), content(6, 101)] {
        memory.put(&key, wrong.into()).await.unwrap();
        assert_eq!(store.find_missing("", &[d]).await.unwrap(), vec![d]);
        assert!(store.get("", d, ReadRange::ALL).await.unwrap().is_none());
    }
    store.put_bytes("", d, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes("", d, 100).await.unwrap(), Some(data));
}

#[tokio::test]
async fn a_hung_store_is_unavailable_within_the_timeout() {
    let backend = Instrumented::new(Arc::new(InMemory::new()));
    let timeout = Duration::from_millis(200);
    let settings = small_parts().request_timeout(timeout);
    let store = ObjectBlobStore::new(backend.clone(), Path::default(), settings.clone());
    let cache = ObjectActionCache::new(backend.clone(), Path::default(), settings);
    let data = content(7, 600 << 10);
    let d = SHA.digest_of(&data);
    store.put_bytes("", d, data.clone()).await.unwrap();
    backend.hang.store(true, Ordering::Relaxed);
    let other = content(8, 100);
    let started = Instant::now();
    let calls = async {
        vec![
            store.put_bytes("", SHA.digest_of(&other), other).await,
            store.put_bytes("", d, data).await,
            store.get("", d, ReadRange::ALL).await.map(drop),
            store
                .find_missing("", &[SHA.digest_of(b"x")])
                .await
                .map(drop),
            cache.get("", d).await.map(drop),
            cache.put("", d, Default::default()).await,
        ]
    };
    let results: Vec<remexec_core::Result<()>> =
        tokio::time::timeout(Duration::from_secs(10), calls)
            .await
            .expect("calls to a hung store must end");
    for (i, result) in results.into_iter().enumerate() {
        assert!(
            matches!(result, Err(Error::Unavailable(_))),
            "call {i}: {result:?}"
        );
    }
    assert!(started.elapsed() < timeout * 6 + Duration::from_secs(1));
}

/// Against moto, a real S3-compatible server started on loopback by each test.
#[cfg(feature = "s3")]
mod s3 {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const BUCKET: &str = "remexec-test";

    /// moto's server, or `None` if `REMEXEC_SKIP_E2E=1`; panics with instructions if absent.
    fn moto_server() -> Option<PathBuf> {
        if std::env::var_os("REMEXEC_SKIP_E2E").is_some_and(|v| v == "1") {
            eprintln!("REMEXEC_SKIP_E2E=1: skipping");
            return None;
        }
        let path = std::env::var_os("REMEXEC_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_default();
                PathBuf::from(home).join(".cache/remexec-test/moto-venv/bin/moto_server")
            });
        assert!(
            path.is_file(),
            "{} not found. Install moto with .ci/test (a venv in \
             $HOME/.cache/remexec-test/moto-venv with `pip install 'moto[server]'`), set \
             REMEXEC_MOTO to a moto_server, or set REMEXEC_SKIP_E2E=1 to skip",
            path.display()
        );
        Some(path)
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// A moto server on `127.0.0.1:{port}`, killed when dropped.
    struct Moto {
        child: Child,
        port: u16,
    }

    impl Moto {
        /// Starts moto on `port` and creates the test bucket in it.
        async fn start(exe: &std::path::Path, port: u16) -> Moto {
            let child = Command::new(exe)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
            let moto = Moto { child, port };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match put_bucket(port).await {
                    Ok(200) => return moto,
                    Ok(status) => panic!("creating the bucket: HTTP {status}"),
                    Err(e) if Instant::now() > deadline => panic!("moto did not start: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        fn options(&self) -> Vec<(String, String)> {
            [
                ("AWS_ACCESS_KEY_ID", "x".to_string()),
                ("AWS_SECRET_ACCESS_KEY", "x".to_string()),
                ("AWS_REGION", "us-east-1".to_string()),
                ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
                ("aws_allow_http", "true".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into()
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Creates the bucket with a plain HTTP PUT (moto does not check signatures).
    async fn put_bucket(port: u16) -> std::io::Result<u16> {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        status.ok_or_else(|| std::io::Error::other(format!("bad response: {text:.100}")))
    }

    /// S3 settings for the suites: parts of 5 MiB (S3's minimum), so that the 5 MiB blobs of
    /// the suite go up in two parts.
    fn s3_settings() -> ExternalSettings {
        ExternalSettings::default()
            .multipart_threshold(1 << 20)
            .part_size(5 << 20)
            .request_timeout(Duration::from_secs(10))
    }

    #[tokio::test]
    async fn conformance_against_moto() {
        let Some(exe) = moto_server() else { return };
        let moto = Moto::start(&exe, free_port()).await;
        let url = format!("s3://{BUCKET}/some/prefix");
        let (store, cache) = open_object_store(&url, moto.options(), s3_settings()).unwrap();
        assert_eq!(store.to_string(), format!("Object({url})"));
        blob_store_conformance(store).await;
        action_cache_conformance(cache).await;
    }

    /// Puts one small blob, returning its digest.
    async fn put_one(store: &dyn BlobStore, seed: u64) -> remexec_core::Result<Digest> {
        let data = content(seed, 1000);
        let d = SHA.digest_of(&data);
        store.put_bytes("", d, data).await.map(|()| d)
    }

    #[tokio::test]
    async fn outage_is_unavailable_and_the_store_recovers() {
        let Some(exe) = moto_server() else { return };
        let port = free_port();
        let mut moto = Moto::start(&exe, port).await;
        let timeout = Duration::from_secs(3);
        let settings = s3_settings()
            .request_timeout(timeout)
            .retries(2)
            .initial_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_millis(200));
        let url = format!("s3://{BUCKET}/p");
        let (store, cache) = open_object_store(&url, moto.options(), settings).unwrap();
        let stored = put_one(store.as_ref(), 1).await.unwrap();

        moto.kill();
        let big = content(2, 6 << 20);
        let started = Instant::now();
        let results = [
            put_one(store.as_ref(), 3).await.map(drop),
            store.put_bytes("", SHA.digest_of(&big), big).await,
            store.get("", stored, ReadRange::ALL).await.map(drop),
            store
                .find_missing("", &[SHA.digest_of(b"new")])
                .await
                .map(drop),
            cache.put("", stored, Default::default()).await,
            cache.get("", stored).await.map(drop),
        ];
        let elapsed = started.elapsed();
        for (i, result) in results.into_iter().enumerate() {
            assert!(
                matches!(result, Err(Error::Unavailable(_))),
                "call {i}: {result:?}"
            );
        }
        assert!(elapsed < timeout * 6, "six calls took {elapsed:?}");
        eprintln!("six calls to a dead S3 failed as UNAVAILABLE in {elapsed:?}");

        // A new server on the same port (empty: moto keeps nothing) serves new writes.
        let _moto = Moto::start(&exe, port).await;
        let d = put_one(store.as_ref(), 4).await.unwrap();
        assert_eq!(
            store.get_bytes("", d, 1000).await.unwrap(),
            Some(content(4, 1000))
        );
        cache.put("", d, Default::default()).await.unwrap();
        assert_eq!(cache.get("", d).await.unwrap(), Some(Default::default()));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_unavailable_within_the_timeout() {
        // Accepted by the kernel, never read: every request hangs.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = [
            ("aws_access_key_id", "x".to_string()),
            ("aws_secret_access_key", "x".to_string()),
            ("aws_region", "us-east-1".to_string()),
            ("aws_endpoint", format!("http://127.0.0.1:{port}")),
            ("aws_allow_http", "true".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let timeout = Duration::from_millis(500);
        let settings = s3_settings().request_timeout(timeout);
        let (store, _) = open_object_store("s3://b/p", options, settings).unwrap();
        let started = Instant::now();
        let result = put_one(store.as_ref(), 5).await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
        assert!(elapsed < timeout + Duration::from_secs(1), "{elapsed:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn find_missing_through_the_existence_cache_against_moto() {
        let Some(exe) = moto_server() else { return };
        let moto = Moto::start(&exe, free_port()).await;
        let url = format!("s3://{BUCKET}/fm");
        let (writer, _) = open_object_store(&url, moto.options(), s3_settings()).unwrap();
        let mut digests = Vec::new();
        for chunk in (0..1000u64).collect::<Vec<_>>().chunks(50) {
            let puts = chunk.iter().map(|&i| put_one(writer.as_ref(), 100 + i));
            for d in futures::future::join_all(puts).await {
                digests.push(d.unwrap());
            }
        }
        let (store, _) = open_object_store(&url, moto.options(), s3_settings()).unwrap();
        let started = Instant::now();
        assert!(store.find_missing("", &digests).await.unwrap().is_empty());
        let cold = started.elapsed();
        let started = Instant::now();
        assert!(store.find_missing("", &digests).await.unwrap().is_empty());
        let warm = started.elapsed();
        eprintln!("moto: FindMissing of 1,000 present digests: cold {cold:?}, warm {warm:?}");
        assert!(warm < cold);
    }
}
