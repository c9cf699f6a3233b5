//! The Remote Asset API v1 (`build.bazel.remote.asset.v1`): `Fetch` and `Push` over a
//! [`BlobStore`] and an [`ActionCache`].
//!
//! - **Fetch** answers from the asset index when it can: an association fetched or pushed
//!   before, not expired, not older than the request's `oldest_content_accepted`, whose content
//!   the CAS still holds (a directory's whole tree). Otherwise it downloads from the URIs in
//!   turn, `http` and `https` only, under the [`AssetOptions`] origin policy and limits; checks
//!   `checksum.sri`; stores the content (for `FetchDirectory`, a tar, tar.gz or zip archive
//!   unpacked into a Directory tree); and remembers the association for every URI of the
//!   request. Failures at the origin come back in the response's `status`, as the API says;
//!   bad requests are gRPC errors.
//! - **Push** checks that the content is in the CAS and records the association.
//! - **The index** is kept in the Action Cache: one empty `ActionResult` per kind, URI and
//!   qualifiers, holding a `remexec.asset.v1.AssetEntry` (`remexec_proto::asset`).
//!
//! Qualifiers: any may be pushed and looked up. A download understands `checksum.sri`,
//! `bazel.canonical_id` (part of the key only), `resource_type` (an archive's MIME type) and
//! `http_header:NAME` (sent to the origin); a download asked with any other qualifier is
//! `InvalidArgument`, as the server could not make the content match it.
//!
//! ```
//! use std::sync::Arc;
//! use remexec_cas::asset::{AssetOptions, AssetService};
//! use remexec_cas::{MemoryActionCache, MemoryStore};
//!
//! # fn main() -> remexec_core::Result<()> {
//! let assets = AssetService::new(
//!     Arc::new(MemoryStore::new(64 << 20)),
//!     Arc::new(MemoryActionCache::new(16 << 20)),
//!     AssetOptions::default(),
//! )?;
//! let routes = assets.add_to(tonic::service::Routes::default());
//! # let _ = routes;
//! # Ok(())
//! # }
//! ```

mod archive;
mod index;
mod origin;
mod sri;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use remexec_core::merkle::walk_tree;
use remexec_core::metrics::AssetFetch;
use remexec_core::{ActionCache, BlobStore, Digest, DigestFunction, Error, Result};
use remexec_proto::asset::v1::AssetEntry;
use remexec_proto::build::bazel::remote::asset::v1 as api;
use remexec_proto::google::protobuf::{Duration as ProtoDuration, Timestamp};

use api::Qualifier;
use api::fetch_server::{Fetch, FetchServer};
use api::push_server::{Push, PushServer};

use crate::service::respond;
use archive::{ArchiveLimits, Format};
use index::Kind;
use origin::{DownloadLimits, OriginPolicy, Origins};
use sri::Sri;

/// What the asset service may fetch, and how much.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AssetOptions {
    /// Whether `Fetch` downloads from origins at all; off, it answers from the index only.
    pub fetch: bool,
    /// When set, the only origin hosts fetched from: names (`example.com`) or subdomains
    /// (`*.example.com`). `None` (the default) allows any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Whether loopback, private, link-local and other non-public addresses may be fetched
    /// from (default: no, which guards against server-side request forgery).
    pub private_addresses: bool,
    /// Largest download, and largest total an archive may unpack to (default 4 GiB).
    pub max_size: u64,
    /// Most entries an archive may unpack to (default 100,000).
    pub max_archive_entries: usize,
    /// Longest a download may take; a request's own `timeout` may shorten it (default 10
    /// minutes).
    pub timeout: Duration,
    /// Most redirects followed (default 10).
    pub max_redirects: usize,
    /// More CA certificates (PEM) trusted for `https` origins, besides the web's roots.
    pub extra_roots: Vec<Vec<u8>>,
    /// Where downloads and unpacked archives are kept while they are stored (default: the
    /// system's temporary directory).
    pub scratch: Option<std::path::PathBuf>,
    /// Most downloads at once (default 16); more wait for a turn, within their timeout. Each
    /// may take `max_size` of scratch space, twice for an archive.
    pub max_concurrent_fetches: usize,
}

impl Default for AssetOptions {
    fn default() -> Self {
        Self {
            fetch: true,
            allowed_hosts: None,
            private_addresses: false,
            max_size: 4 << 30,
            max_archive_entries: 100_000,
            timeout: Duration::from_secs(600),
            max_redirects: 10,
            extra_roots: Vec::new(),
            scratch: None,
            max_concurrent_fetches: 16,
        }
    }
}

/// The `Fetch` and `Push` services, sharing a store, an Action Cache (the index) and options.
#[derive(Clone, Debug)]
pub struct AssetService {
    store: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCache>,
    origins: Origins,
    options: Arc<AssetOptions>,
    /// Turns to download.
    fetches: Arc<tokio::sync::Semaphore>,
    metrics: remexec_core::metrics::Metrics,
}

impl AssetService {
    /// The services over `store` and `ac`. `InvalidArgument` if `options.extra_roots` do not
    /// parse.
    pub fn new(
        store: Arc<dyn BlobStore>,
        ac: Arc<dyn ActionCache>,
        options: AssetOptions,
    ) -> Result<Self> {
        let policy = OriginPolicy {
            hosts: options.allowed_hosts.clone(),
            private_addresses: options.private_addresses,
        };
        let origins = Origins::new(policy, &options.extra_roots, options.max_redirects)?;
        let fetches = Arc::new(tokio::sync::Semaphore::new(
            options.max_concurrent_fetches.max(1),
        ));
        Ok(Self {
            store,
            ac,
            origins,
            options: Arc::new(options),
            fetches,
            metrics: remexec_core::metrics::Metrics::new(),
        })
    }

    /// Counts fetches into `metrics` (`remexec_asset_fetches_total`).
    pub fn with_metrics(mut self, metrics: remexec_core::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The `Fetch` service.
    pub fn fetch(&self) -> FetchServer<Self> {
        FetchServer::new(self.clone())
    }

    /// The `Push` service.
    pub fn push(&self) -> PushServer<Self> {
        PushServer::new(self.clone())
    }

    /// `routes` with both services added.
    pub fn add_to(self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes.add_service(self.fetch()).add_service(self.push())
    }

    /// The content of `kind` known for any of `uris` with `qualifiers`, usable now: its entry
    /// and the URI it was found under.
    async fn known(
        &self,
        scope: &Scope<'_>,
        kind: Kind,
        oldest: Option<&Timestamp>,
    ) -> Result<Option<(String, AssetEntry)>> {
        let now = index::now();
        for uri in scope.uris {
            let key = index::key(scope.function, kind, uri, scope.qualifiers);
            let Some(entry) = index::lookup(&*self.ac, scope.instance, key).await? else {
                continue;
            };
            let expired =
                entry.expires_at_unix_seconds != 0 && entry.expires_at_unix_seconds <= now;
            let too_old = oldest.is_some_and(|t| entry.stored_at_unix_seconds < t.seconds);
            let wrong_kind = entry.directory != (kind == Kind::Directory);
            if expired || too_old || wrong_kind {
                continue;
            }
            let Some(digest) = entry.digest.as_ref() else {
                continue;
            };
            let Ok(digest) = Digest::from_proto(scope.function, digest) else {
                continue;
            };
            if self.complete(scope.instance, digest, kind).await? {
                return Ok(Some((uri.clone(), entry)));
            }
        }
        Ok(None)
    }

    /// Whether the CAS holds `digest` (for a directory, its whole tree), referencing what it
    /// holds so that it stays.
    async fn complete(&self, instance: &str, digest: Digest, kind: Kind) -> Result<bool> {
        let blobs = match kind {
            Kind::Blob => vec![digest],
            Kind::Directory => {
                let limit = self.options.max_archive_entries as u64 * 2;
                let walk = match walk_tree(&*self.store, instance, digest, limit).await {
                    Ok(walk) => walk,
                    Err(e) if e.code() == tonic::Code::InvalidArgument => return Ok(false),
                    Err(e) => return Err(e),
                };
                if !walk.missing.is_empty() {
                    return Ok(false);
                }
                let mut blobs: Vec<Digest> = walk.tree.directories.keys().copied().collect();
                blobs.extend(walk.files);
                blobs
            }
        };
        let blobs: Vec<Digest> = blobs.into_iter().filter(|d| !d.is_empty_blob()).collect();
        Ok(self.store.reference(instance, &blobs).await?.is_empty())
    }

    /// Downloads the first of `scope.uris` that works and stores it as `kind`: the URI and the
    /// digest, or the last URI's error.
    async fn download(
        &self,
        scope: &Scope<'_>,
        kind: Kind,
        fetch: &Fetched,
        timeout: Option<&ProtoDuration>,
    ) -> (String, Result<Digest>) {
        let first = scope.uris.first().cloned().unwrap_or_default();
        // A turn to download, waited for within the fetch's own timeout.
        let wait = clamp(timeout, self.options.timeout);
        let _turn = match tokio::time::timeout(wait, self.fetches.acquire()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) => {
                return (
                    first,
                    Err(Error::Unavailable("the server is stopping".into())),
                );
            }
            Err(_) => {
                let busy = format!(
                    "no turn to download within {wait:?}: {} downloads are running",
                    self.options.max_concurrent_fetches
                );
                return (first, Err(Error::DeadlineExceeded(busy.into())));
            }
        };
        let mut last = (String::new(), Err(Error::invalid("no URI to fetch")));
        for uri in scope.uris {
            let result = self.download_one(scope, kind, fetch, uri, timeout).await;
            let failed = result.is_err();
            last = (uri.clone(), result);
            if !failed {
                break;
            }
        }
        last
    }

    async fn download_one(
        &self,
        scope: &Scope<'_>,
        kind: Kind,
        fetch: &Fetched,
        uri: &str,
        timeout: Option<&ProtoDuration>,
    ) -> Result<Digest> {
        let limits = DownloadLimits {
            max_size: self.options.max_size,
            timeout: clamp(timeout, self.options.timeout),
        };
        let scratch = match &self.options.scratch {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .map_err(|e| Error::io("making a scratch directory for a download", e))?;
        let file = scratch.path().join("download");
        let sri = fetch.sri.as_ref();
        self.origins
            .download(uri, &fetch.headers, limits, sri, &file)
            .await?;
        let (instance, f) = (scope.instance, scope.function);
        match kind {
            Kind::Blob => remexec_core::client::upload_file(&*self.store, instance, f, &file).await,
            Kind::Directory => {
                let format = match fetch.format {
                    Some(format) => format,
                    None => Format::detect(uri, &file)?,
                };
                let dest = scratch.path().join("unpacked");
                let archive_limits = ArchiveLimits {
                    max_entries: self.options.max_archive_entries,
                    max_size: self.options.max_size,
                };
                let (from, to) = (file.clone(), dest.clone());
                remexec_core::fs::blocking(move || {
                    std::fs::create_dir(&to)
                        .map_err(|e| Error::io("making a scratch directory", e))?;
                    archive::unpack(format, &from, &to, archive_limits)
                })
                .await?;
                let (root, _) =
                    remexec_core::client::upload_directory(&*self.store, instance, f, &dest)
                        .await?;
                Ok(root)
            }
        }
    }

    /// Records `digest` as `kind` for each of `uris`.
    async fn remember(
        &self,
        scope: &Scope<'_>,
        (kind, digest): (Kind, Digest),
        uris: &[String],
        stored_at: i64,
        expires_at: i64,
    ) -> Result<()> {
        for uri in uris {
            let entry = AssetEntry {
                uri: uri.clone(),
                digest: Some(digest.to_proto()),
                directory: kind == Kind::Directory,
                stored_at_unix_seconds: stored_at,
                expires_at_unix_seconds: expires_at,
            };
            let key = index::key(scope.function, kind, uri, scope.qualifiers);
            index::record(&*self.ac, scope.instance, key, &entry).await?;
        }
        Ok(())
    }

    /// FetchBlob and FetchDirectory: the URI, the status and the digest.
    async fn fetch_asset(
        &self,
        scope: &Scope<'_>,
        kind: Kind,
        oldest: Option<&Timestamp>,
        timeout: Option<&ProtoDuration>,
    ) -> Result<(
        String,
        remexec_proto::google::rpc::Status,
        Option<Digest>,
        Option<Timestamp>,
    )> {
        if let Some((uri, entry)) = self.known(scope, kind, oldest).await? {
            let digest = entry
                .digest
                .as_ref()
                .map(|d| Digest::from_proto(scope.function, d))
                .transpose()?;
            let expires = (entry.expires_at_unix_seconds != 0).then_some(Timestamp {
                seconds: entry.expires_at_unix_seconds,
                nanos: 0,
            });
            self.metrics.asset_fetch(AssetFetch::Index);
            return Ok((uri, remexec_core::ok_rpc_status(), digest, expires));
        }
        if !self.options.fetch {
            self.metrics.asset_fetch(AssetFetch::Failed);
            let err = Error::NotFound(
                "this server answers Fetch from its asset index only, and knows none of the URIs"
                    .into(),
            );
            let uri = scope.uris.first().cloned().unwrap_or_default();
            return Ok((uri, err.to_rpc_status(), None, None));
        }
        // Qualifiers a download cannot honour are the request's error, not the origin's.
        let fetch = Fetched::of(scope.qualifiers, kind)?;
        let started = index::now();
        let (uri, result) = self.download(scope, kind, &fetch, timeout).await;
        match result {
            Ok(digest) => {
                // Only the URI that answered: another may have failed, or not been tried.
                let fetched = std::slice::from_ref(&uri);
                self.remember(scope, (kind, digest), fetched, started, 0)
                    .await?;
                self.metrics.asset_fetch(AssetFetch::Origin);
                Ok((uri, remexec_core::ok_rpc_status(), Some(digest), None))
            }
            Err(e) => {
                self.metrics.asset_fetch(AssetFetch::Failed);
                tracing::info!(%uri, error = %e, "an asset fetch failed");
                Ok((uri, e.to_rpc_status(), None, None))
            }
        }
    }
}

/// A request's instance, digest function, URIs and qualifiers, checked.
struct Scope<'a> {
    instance: &'a str,
    function: DigestFunction,
    uris: &'a [String],
    qualifiers: &'a [Qualifier],
}

/// Most URIs in one request.
const MAX_URIS: usize = 100;
/// Most qualifiers in one request.
const MAX_QUALIFIERS: usize = 100;
/// Longest URI, qualifier name or value.
const MAX_TEXT: usize = 64 * 1024;

/// Checks what every request has: at least one URI, unique qualifier names, and no NUL (the
/// index key's separator) or oversized text anywhere.
fn check_request<'a>(
    instance: &'a str,
    digest_function: i32,
    uris: &'a [String],
    qualifiers: &'a [Qualifier],
) -> Result<Scope<'a>> {
    let function = crate::service::request_scope(instance, digest_function)?;
    if uris.is_empty() {
        return Err(Error::invalid(
            "uris is empty: a request names at least one",
        ));
    }
    if uris.len() > MAX_URIS || qualifiers.len() > MAX_QUALIFIERS {
        return Err(Error::invalid(format!(
            "a request names at most {MAX_URIS} URIs and {MAX_QUALIFIERS} qualifiers"
        )));
    }
    let texts = uris
        .iter()
        .chain(qualifiers.iter().flat_map(|q| [&q.name, &q.value]));
    for text in texts {
        if text.len() > MAX_TEXT || text.contains('\0') {
            return Err(Error::invalid(format!(
                "URIs and qualifiers hold no NUL and at most {MAX_TEXT} bytes each"
            )));
        }
    }
    let mut names: Vec<&str> = qualifiers.iter().map(|q| q.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!(
            "qualifier {:?} is given twice",
            w[0]
        )));
    }
    Ok(Scope {
        instance,
        function,
        uris,
        qualifiers,
    })
}

/// What the qualifiers ask of a download.
#[derive(Debug, Default)]
struct Fetched {
    sri: Option<Sri>,
    /// The archive format `resource_type` names, for a directory.
    format: Option<Format>,
    headers: Vec<(String, String)>,
}

impl Fetched {
    /// The qualifiers' demands; `InvalidArgument` for one a download cannot honour.
    fn of(qualifiers: &[Qualifier], kind: Kind) -> Result<Self> {
        let mut fetched = Self::default();
        for q in qualifiers {
            match q.name.as_str() {
                "checksum.sri" => fetched.sri = Some(Sri::parse(&q.value)?),
                "bazel.canonical_id" => {}
                // A blob is stored as it comes, whatever its type.
                "resource_type" if kind == Kind::Blob => {}
                "resource_type" => fetched.format = Some(Format::of_mime(&q.value)?),
                name => match name.strip_prefix("http_header:") {
                    Some(header) => {
                        let valid = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                            .is_ok()
                            && reqwest::header::HeaderValue::from_str(&q.value).is_ok();
                        if !valid {
                            return Err(Error::invalid(format!(
                                "qualifier {name:?} is not a valid HTTP header"
                            )));
                        }
                        fetched.headers.push((header.to_string(), q.value.clone()));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "qualifier \"{name}\" not supported: a download honours checksum.sri, \
                             bazel.canonical_id, resource_type and http_header:NAME"
                        )));
                    }
                },
            }
        }
        Ok(fetched)
    }
}

/// The request's timeout, if positive and shorter than `max`; else `max`.
fn clamp(timeout: Option<&ProtoDuration>, max: Duration) -> Duration {
    timeout
        .filter(|t| t.seconds > 0 || (t.seconds == 0 && t.nanos > 0))
        .map(|t| Duration::new(t.seconds.unsigned_abs(), t.nanos.unsigned_abs()))
        .map_or(max, |t| t.min(max))
}

/// What both Fetch methods ask.
struct Ask<'a> {
    instance: &'a str,
    digest_function: i32,
    uris: &'a [String],
    qualifiers: &'a [Qualifier],
    oldest: Option<&'a Timestamp>,
    timeout: Option<&'a ProtoDuration>,
}

/// What both Fetch methods answer.
struct Answer {
    uri: String,
    status: remexec_proto::google::rpc::Status,
    digest: Option<remexec_proto::reapi::Digest>,
    expires_at: Option<Timestamp>,
    digest_function: i32,
}

impl AssetService {
    /// FetchBlob and FetchDirectory, checked and answered.
    async fn answer(&self, ask: Ask<'_>, kind: Kind) -> Result<Answer> {
        let scope = check_request(ask.instance, ask.digest_function, ask.uris, ask.qualifiers)?;
        let (uri, status, digest, expires_at) = self
            .fetch_asset(&scope, kind, ask.oldest, ask.timeout)
            .await?;
        Ok(Answer {
            uri,
            status,
            digest: digest.map(|d| d.to_proto()),
            expires_at,
            digest_function: scope.function.to_proto(),
        })
    }
}

#[tonic::async_trait]
impl Fetch for AssetService {
    async fn fetch_blob(
        &self,
        request: tonic::Request<api::FetchBlobRequest>,
    ) -> Result<tonic::Response<api::FetchBlobResponse>, tonic::Status> {
        let req = request.into_inner();
        let ask = Ask {
            instance: &req.instance_name,
            digest_function: req.digest_function,
            uris: &req.uris,
            qualifiers: &req.qualifiers,
            oldest: req.oldest_content_accepted.as_ref(),
            timeout: req.timeout.as_ref(),
        };
        let answer = self.answer(ask, Kind::Blob).await;
        respond(answer.map(|a| api::FetchBlobResponse {
            status: Some(a.status),
            uri: a.uri,
            qualifiers: req.qualifiers.clone(),
            expires_at: a.expires_at,
            blob_digest: a.digest,
            digest_function: a.digest_function,
        }))
    }

    async fn fetch_directory(
        &self,
        request: tonic::Request<api::FetchDirectoryRequest>,
    ) -> Result<tonic::Response<api::FetchDirectoryResponse>, tonic::Status> {
        let req = request.into_inner();
        let ask = Ask {
            instance: &req.instance_name,
            digest_function: req.digest_function,
            uris: &req.uris,
            qualifiers: &req.qualifiers,
            oldest: req.oldest_content_accepted.as_ref(),
            timeout: req.timeout.as_ref(),
        };
        let answer = self.answer(ask, Kind::Directory).await;
        respond(answer.map(|a| api::FetchDirectoryResponse {
            status: Some(a.status),
            uri: a.uri,
            qualifiers: req.qualifiers.clone(),
            expires_at: a.expires_at,
            root_directory_digest: a.digest,
            digest_function: a.digest_function,
        }))
    }
}

/// What both Push methods ask.
struct PushAsk<'a> {
    instance: &'a str,
    digest_function: i32,
    uris: &'a [String],
    qualifiers: &'a [Qualifier],
    digest: Option<&'a remexec_proto::reapi::Digest>,
    expire_at: Option<&'a Timestamp>,
}

impl AssetService {
    /// PushBlob and PushDirectory: checks the request and that the content is there, then
    /// records it for every URI.
    async fn push_asset(&self, ask: PushAsk<'_>, kind: Kind) -> Result<()> {
        let scope = check_request(ask.instance, ask.digest_function, ask.uris, ask.qualifiers)?;
        let field = match kind {
            Kind::Blob => "blob_digest",
            Kind::Directory => "root_directory_digest",
        };
        let digest = Digest::from_field(scope.function, ask.digest, field)?;
        if !self.complete(scope.instance, digest, kind).await? {
            return Err(Error::FailedPrecondition(
                format!("{field} {digest} is not in the CAS (or part of its tree is not): push the content first").into(),
            ));
        }
        let expires = ask.expire_at.map_or(0, |t| t.seconds.max(1));
        let uris = scope.uris;
        self.remember(&scope, (kind, digest), uris, index::now(), expires)
            .await
    }
}

#[tonic::async_trait]
impl Push for AssetService {
    async fn push_blob(
        &self,
        request: tonic::Request<api::PushBlobRequest>,
    ) -> Result<tonic::Response<api::PushBlobResponse>, tonic::Status> {
        let req = request.into_inner();
        let ask = PushAsk {
            instance: &req.instance_name,
            digest_function: req.digest_function,
            uris: &req.uris,
            qualifiers: &req.qualifiers,
            digest: req.blob_digest.as_ref(),
            expire_at: req.expire_at.as_ref(),
        };
        let pushed = self.push_asset(ask, Kind::Blob).await;
        respond(pushed.map(|()| api::PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: tonic::Request<api::PushDirectoryRequest>,
    ) -> Result<tonic::Response<api::PushDirectoryResponse>, tonic::Status> {
        let req = request.into_inner();
        let ask = PushAsk {
            instance: &req.instance_name,
            digest_function: req.digest_function,
            uris: &req.uris,
            qualifiers: &req.qualifiers,
            digest: req.root_directory_digest.as_ref(),
            expire_at: req.expire_at.as_ref(),
        };
        let pushed = self.push_asset(ask, Kind::Directory).await;
        respond(pushed.map(|()| api::PushDirectoryResponse {}))
    }
}
