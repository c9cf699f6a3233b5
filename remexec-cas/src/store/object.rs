//! [`ObjectBlobStore`]: blobs in an object store (S3, GCS, Azure Blob Storage, a local
//! directory, memory) through the `object_store` crate.
//!
//! # Key layout
//!
//! ```text
//! {prefix}/cas/{instance segment}/{sha256|blake3}/{hash}-{size}    blobs (this module)
//! {prefix}/ac/{instance segment}/{sha256|blake3}/{hash}-{size}     action results (ac/object.rs)
//! ```
//!
//! `hash` is lowercase hex and `size` decimal. The instance segment is `i` followed by the
//! instance name with every byte outside `[A-Za-z0-9.-]` written as `_` and two lowercase hex
//! digits: `""` is `i`, `main` is `imain`, `team/a_b` is `iteam_2fa_5fb`. The encoding is
//! one-to-one, never yields `/`, `.` or `..`, and uses only characters that every object store
//! and file system keeps as they are.
//!
//! An object whose length differs from its digest's size (written by something else) counts as
//! missing, so that a client uploads the blob again.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, PutPayload, WriteMultipart};
use parking_lot::Mutex;
use remexec_core::lru::ByteLru;
use remexec_core::{BlobStore, ChunkStream, Digest, Error, Message, ReadRange, Result};

use super::{read_exact_len, size_mismatch};
use crate::key::{Key, namespace};

/// What one key of the existence cache is taken to cost, map overhead included.
const EXISTENCE_ENTRY_COST: u64 = 128;

/// The instance name as one path segment; see the module documentation.
pub(crate) fn instance_segment(instance: &str) -> String {
    let mut segment = String::with_capacity(1 + instance.len());
    segment.push('i');
    for byte in instance.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("_{byte:02x}"));
        }
    }
    segment
}

/// An object store, a key prefix and the settings to call it with: what [`ObjectBlobStore`]
/// and the object action cache share.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub(crate) settings: ExternalSettings,
    pub(crate) label: String,
}

impl Backend {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        settings: ExternalSettings,
    ) -> Self {
        let label = if prefix.as_ref().is_empty() {
            store.to_string()
        } else {
            format!("{store}/{prefix}")
        };
        Self {
            store,
            prefix,
            settings,
            label,
        }
    }

    /// The key of `digest` in `area` (`cas` or `ac`) of `instance`.
    pub(crate) fn path(&self, area: &str, instance: &str, digest: Digest) -> Path {
        self.prefix
            .child(area)
            .child(instance_segment(instance))
            .child(digest.function().name())
            .child(format!("{}-{}", digest.hash_hex(), digest.size()))
    }

    /// Runs one call to the store under the request timeout and maps its error.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        path: &Path,
        call: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.settings.request_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(what, path, e)),
            Err(_) => Err(self.timed_out(what, path)),
        }
    }

    /// Like [`call`](Self::call), with `NotFound` as `Ok(None)`.
    pub(crate) async fn lookup<T>(
        &self,
        what: &str,
        path: &Path,
        call: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>> {
        match self.call(what, path, call).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn timed_out(&self, what: &str, path: &Path) -> Error {
        Error::Unavailable(
            format!(
                "object store {}: {what} {path}: no answer within {:?}",
                self.label, self.settings.request_timeout
            )
            .into(),
        )
    }

    /// The remexec error for an object_store error: a missing object is `NotFound`, refused
    /// credentials `FailedPrecondition`, a local file-system failure `Io`, and a network
    /// failure, timeout or server error that outlasted the retries `Unavailable`.
    pub(crate) fn error(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let context = format!("object store {}: {what} {path}", self.label);
        if let E::Generic {
            store: "LocalFileSystem",
            source,
        } = &e
            && let Some(kind) = io_kind(source.as_ref())
        {
            return Error::io(format!("{context}: {e}"), std::io::Error::from(kind));
        }
        let kind: fn(Message) -> Error = match &e {
            E::NotFound { .. } => Error::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::FailedPrecondition,
            E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => Error::InvalidArgument,
            E::NotSupported { .. } | E::NotImplemented => Error::Unimplemented,
            E::Generic {
                store: "LocalFileSystem",
                ..
            }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::JoinError { .. } => Error::Internal,
            _ => Error::Unavailable,
        };
        // The object_store error stays the source, for callers that look at it.
        kind(Message::caused_by(context, e))
    }

    /// Opens a ranged read; `Ok(None)` if the object does not exist.
    async fn open(&self, path: &Path, range: Range<u64>) -> Result<Option<GetResult>> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        self.lookup("read", path, self.store.get_opts(path, options))
            .await
    }
}

/// The kind of the first I/O error in `error`'s chain of sources.
fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// A [`BlobStore`] in an object store: S3 (feature `s3`), Google Cloud Storage (`gcs`), Azure
/// Blob Storage (`azure`), a local directory or memory. The module documentation gives the key
/// layout; [`open_object_store`](crate::open_object_store) builds one from a URL.
///
/// - `put` sends blobs up to `multipart_threshold` in one PUT and larger ones by multipart
///   upload, streamed part by part, never holding the whole blob; the length is checked before
///   the object is written or the upload completed. A failed or dropped multipart upload is
///   aborted in the background.
/// - `get` makes ranged reads, at most `read_window` bytes a request.
/// - `find_missing` sends at most one HEAD per distinct blob, `head_concurrency` at once, and
///   none for keys in the existence cache: a bounded LRU of keys known present, filled by
///   puts, HEADs and reads. The cache assumes that blobs are not deleted behind its back.
/// - Every call has the timeout and retries of [`ExternalSettings`]; an unreachable or hung
///   store is `Unavailable`, never a miss and never an acknowledged write.
#[derive(Debug)]
pub struct ObjectBlobStore {
    backend: Arc<Backend>,
    present: Mutex<ByteLru<Key, ()>>,
}

impl ObjectBlobStore {
    /// A store of blobs under `{prefix}/cas/` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, settings: ExternalSettings) -> Self {
        let budget = settings.existence_cache;
        Self {
            backend: Arc::new(Backend::new(store, prefix, settings)),
            present: Mutex::new(ByteLru::new(budget)),
        }
    }

    /// Sets what [`describe`](BlobStore::describe) shows inside `Object(...)`, for example the
    /// URL without credentials. The default is the object store's own description and the
    /// prefix.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.backend).label = label.into();
        self
    }

    /// Keys in the existence cache.
    pub fn cached_keys(&self) -> usize {
        self.present.lock().len()
    }

    fn note_present(&self, key: Key) {
        self.present.lock().insert(key, EXISTENCE_ENTRY_COST, ());
    }

    /// Whether the store holds `digest` with the right length, by one HEAD.
    async fn head(&self, key: Key, instance: &str) -> Result<bool> {
        let path = self.backend.path("cas", instance, key.digest);
        let meta = self
            .backend
            .lookup("check", &path, self.backend.store.head(&path))
            .await?;
        let present = match meta {
            Some(meta) if meta.size == key.digest.size() => true,
            Some(meta) => {
                tracing::warn!(%path, size = meta.size, "object has the wrong length; a miss");
                false
            }
            None => false,
        };
        if present {
            self.note_present(key);
        }
        Ok(present)
    }

    /// Whether the store holds the blob, from the cache or by one HEAD.
    async fn is_present(&self, instance: &str, digest: Digest) -> Result<bool> {
        let key = Key::new(instance, digest);
        if self.present.lock().touch(&key) {
            return Ok(true);
        }
        self.head(key, instance).await
    }

    /// Uploads a large blob part by part, checking its length before completing the upload.
    async fn put_multipart(
        &self,
        path: &Path,
        digest: Digest,
        mut data: ChunkStream,
    ) -> Result<()> {
        let backend = &self.backend;
        let settings = &backend.settings;
        let upload = backend
            .call(
                "start an upload of",
                path,
                backend.store.put_multipart(path),
            )
            .await?;
        let mut upload = AbortOnDrop {
            writer: Some(WriteMultipart::new_with_chunk_size(
                upload,
                settings.part_size,
            )),
            timeout: settings.request_timeout,
        };
        let mut received = 0u64;
        while let Some(chunk) = data.next().await {
            let mut chunk = chunk?;
            received += chunk.len() as u64;
            if received > digest.size() {
                return Err(size_mismatch(digest, received, false));
            }
            let Some(writer) = upload.writer.as_mut() else {
                return Err(Error::Internal("multipart upload already finished".into()));
            };
            // At most one part starts per piece, once fewer than `upload_concurrency` are in
            // flight.
            while !chunk.is_empty() {
                let piece = chunk.split_to(chunk.len().min(settings.part_size));
                let capacity = writer.wait_for_capacity(settings.upload_concurrency);
                backend.call("upload a part of", path, capacity).await?;
                writer.put(piece);
            }
        }
        if received != digest.size() {
            return Err(size_mismatch(digest, received, true));
        }
        // Wait for the full parts while a failure can still abort the upload; `finish` sends
        // the last part and completes.
        if let Some(writer) = upload.writer.as_mut() {
            backend
                .call("upload a part of", path, writer.wait_for_capacity(0))
                .await?;
        }
        let Some(writer) = upload.writer.take() else {
            return Err(Error::Internal("multipart upload already finished".into()));
        };
        backend
            .call("complete the upload of", path, writer.finish())
            .await
            .map(drop)
    }

    /// Streams `len` bytes from `offset` of the blob, one ranged GET per `read_window`;
    /// `Ok(None)` if the object is missing or has the wrong length.
    async fn read(
        &self,
        key: Key,
        path: Path,
        (offset, len): (u64, u64),
    ) -> Result<Option<ChunkStream>> {
        let window = self.backend.settings.read_window;
        let end = offset + len;
        let first_end = end.min(offset.saturating_add(window));
        let Some(first) = self.backend.open(&path, offset..first_end).await? else {
            return Ok(None);
        };
        if first.meta.size != key.digest.size() {
            tracing::warn!(%path, size = first.meta.size, "object has the wrong length; a miss");
            return Ok(None);
        }
        self.note_present(key);
        let first = body(self.backend.clone(), path.clone(), first);
        let windows = (first_end..end)
            .step_by(usize::try_from(window).unwrap_or(usize::MAX))
            .map(move |start| start..end.min(start.saturating_add(window)));
        let backend = self.backend.clone();
        let rest = futures::stream::iter(windows)
            .then(move |range| {
                let (backend, path) = (backend.clone(), path.clone());
                async move {
                    match backend.open(&path, range).await? {
                        Some(part) => Ok(body(backend, path, part)),
                        None => Err(Error::NotFound(
                            format!(
                                "object store {}: {path} vanished during a read",
                                backend.label
                            )
                            .into(),
                        )),
                    }
                }
            })
            .try_flatten();
        Ok(Some(first.chain(rest).boxed()))
    }
}

/// The body of a read as a chunk stream whose every chunk must arrive within the request
/// timeout; the stream ends after its first error.
fn body(backend: Arc<Backend>, path: Path, result: GetResult) -> ChunkStream {
    type State = (
        BoxStream<'static, object_store::Result<Bytes>>,
        Arc<Backend>,
        Path,
    );
    let state: Option<State> = Some((result.into_stream(), backend, path));
    futures::stream::unfold(state, |state| async move {
        let (mut inner, backend, path) = state?;
        let idle = backend.settings.request_timeout;
        match tokio::time::timeout(idle, inner.next()).await {
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some((inner, backend, path)))),
            Ok(Some(Err(e))) => Some((Err(backend.error("read", &path, e)), None)),
            Err(_) => Some((Err(backend.timed_out("read", &path)), None)),
        }
    })
    .boxed()
}

/// A multipart upload that is aborted, in the background, unless it was taken to be finished.
struct AbortOnDrop {
    writer: Option<WriteMultipart>,
    timeout: std::time::Duration,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let timeout = self.timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, writer.abort()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not abort a multipart upload"),
                Err(_) => tracing::warn!("aborting a multipart upload timed out"),
            }
        });
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        let ns = namespace(instance);
        let unknown: Vec<Key> = {
            let mut present = self.present.lock();
            let mut seen = std::collections::HashSet::new();
            digests
                .iter()
                .map(|&digest| Key { ns, digest })
                .filter(|key| !present.touch(key) && seen.insert(*key))
                .collect()
        };
        let missing: std::collections::HashSet<Digest> = futures::stream::iter(unknown)
            .map(|key| async move { Ok::<_, Error>((key.digest, self.head(key, instance).await?)) })
            .buffer_unordered(self.backend.settings.head_concurrency)
            .try_filter_map(|(digest, present)| async move { Ok((!present).then_some(digest)) })
            .try_collect()
            .await?;
        Ok(digests
            .iter()
            .filter(|d| missing.contains(d))
            .copied()
            .collect())
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let path = self.backend.path("cas", instance, digest);
        if digest.size() <= self.backend.settings.multipart_threshold {
            let bytes = read_exact_len(data, digest).await?;
            let put = self.backend.store.put(&path, PutPayload::from(bytes));
            self.backend.call("write", &path, put).await?;
        } else {
            self.put_multipart(&path, digest, data).await?;
        }
        self.note_present(Key::new(instance, digest));
        Ok(())
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let resolved = range.resolve(digest.size());
        match resolved {
            Ok((offset, len)) if len > 0 => {
                let path = self.backend.path("cas", instance, digest);
                self.read(Key::new(instance, digest), path, (offset, len))
                    .await
            }
            // Nothing to read, or past the end: whether that is a miss takes a HEAD.
            _ => match self.is_present(instance, digest).await? {
                false => Ok(None),
                true => resolved.map(|_| Some(futures::stream::empty().boxed())),
            },
        }
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object({})", self.backend.label)
    }
}

/// How the object-store backends talk to their store.
///
/// Every call to the store (a HEAD, a PUT, one part of a multipart upload, opening a read, the
/// wait for each chunk of a read) ends within [`request_timeout`](Self::request_timeout),
/// retries included; one that does not is `Error::Unavailable`, as are network failures and
/// server errors that outlast the retries.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSettings {
    /// Deadline of each call to the store, retries included (30 s). It also bounds each HTTP
    /// request, so one read window or one upload part must move within it.
    pub request_timeout: Duration,
    /// Deadline for opening a connection (5 s).
    pub connect_timeout: Duration,
    /// Retries of a request that failed transiently (3), with exponential backoff.
    pub retries: usize,
    /// Backoff before the first retry (100 ms); it doubles up to
    /// [`max_backoff`](Self::max_backoff).
    pub initial_backoff: Duration,
    /// Longest backoff between two retries (5 s).
    pub max_backoff: Duration,
    /// Bytes of the cache of keys known to be present (16 MiB, about 128 bytes a key), which
    /// spares FindMissingBlobs a HEAD per blob already seen.
    pub existence_cache: u64,
    /// Blobs up to this size go up in one PUT (8 MiB); larger ones by multipart upload.
    pub multipart_threshold: u64,
    /// Size of each part of a multipart upload (8 MiB; S3 needs at least 5 MiB).
    pub part_size: usize,
    /// Parts of one upload in flight at once (4): a large put holds at most about
    /// `(upload_concurrency + 1) * part_size` bytes.
    pub upload_concurrency: usize,
    /// HEAD requests in flight at once for one FindMissingBlobs (32).
    pub head_concurrency: usize,
    /// Largest ranged GET (64 MiB): longer reads are several GETs in sequence.
    pub read_window: u64,
}

impl Default for ExternalSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            existence_cache: 16 << 20,
            multipart_threshold: 8 << 20,
            part_size: 8 << 20,
            upload_concurrency: 4,
            head_concurrency: 32,
            read_window: 64 << 20,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        impl ExternalSettings {
            $(
                $(#[$doc])*
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`request_timeout`](Self::request_timeout).
    request_timeout: Duration,
    /// Sets [`connect_timeout`](Self::connect_timeout).
    connect_timeout: Duration,
    /// Sets [`retries`](Self::retries).
    retries: usize,
    /// Sets [`initial_backoff`](Self::initial_backoff).
    initial_backoff: Duration,
    /// Sets [`max_backoff`](Self::max_backoff).
    max_backoff: Duration,
    /// Sets [`existence_cache`](Self::existence_cache).
    existence_cache: u64,
    /// Sets [`multipart_threshold`](Self::multipart_threshold).
    multipart_threshold: u64,
    /// Sets [`part_size`](Self::part_size).
    part_size: usize,
    /// Sets [`upload_concurrency`](Self::upload_concurrency).
    upload_concurrency: usize,
    /// Sets [`head_concurrency`](Self::head_concurrency).
    head_concurrency: usize,
    /// Sets [`read_window`](Self::read_window).
    read_window: u64,
}

impl ExternalSettings {
    /// Refuses settings that cannot work (zero sizes, timeouts or concurrency).
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("request_timeout", self.request_timeout.is_zero()),
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("part_size", self.part_size == 0),
            ("upload_concurrency", self.upload_concurrency == 0),
            ("head_concurrency", self.head_concurrency == 0),
            ("read_window", self.read_window == 0),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(Error::invalid(format!(
                "external store setting {name} must not be zero"
            ))),
            None => Ok(()),
        }
    }

    /// object_store's retry policy for these settings: each call retries within
    /// `request_timeout`.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    pub(crate) fn retry_config(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.retries,
            retry_timeout: self.request_timeout,
        }
    }

    /// object_store's HTTP client options for these settings.
    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    pub(crate) fn client_options(&self) -> object_store::ClientOptions {
        object_store::ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::DigestFunction;

    #[test]
    fn instance_segments_are_one_to_one_and_safe() {
        let cases = [
            ("", "i"),
            ("main", "imain"),
            ("team/a_b", "iteam_2fa_5fb"),
            ("a%2Fb", "ia_252Fb"),
            (".", "i."),
            ("ü", "i_c3_bc"),
        ];
        for (instance, segment) in cases {
            assert_eq!(instance_segment(instance), segment, "{instance:?}");
        }
        let names = ["a/b", "a_2fb", "a_b", "a/_b", "", "_", "/"];
        let segments: std::collections::HashSet<_> =
            names.iter().map(|n| instance_segment(n)).collect();
        assert_eq!(segments.len(), names.len());
    }

    #[test]
    fn keys_follow_the_layout() {
        let backend = Backend::new(
            Arc::new(object_store::memory::InMemory::new()),
            Path::from("pre/fix"),
            ExternalSettings::default(),
        );
        let d = DigestFunction::Blake3.digest_of(b"x");
        assert_eq!(
            backend.path("cas", "a/b", d).as_ref(),
            format!("pre/fix/cas/ia_2fb/blake3/{}-1", d.hash_hex())
        );
        assert_eq!(backend.label, "InMemory/pre/fix");
    }
}
