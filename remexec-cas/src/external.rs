//! External storage: [`open_object_store`] builds an [`ObjectBlobStore`] and an
//! [`ObjectActionCache`] on one bucket (or directory) from a URL, with [`ExternalSettings`].
//!
//! | URL                      | backend                               | cargo feature |
//! | ------------------------ | ------------------------------------- | ------------- |
//! | `s3://bucket/prefix`     | Amazon S3 and S3-compatible servers   | `s3`          |
//! | `gs://bucket/prefix`     | Google Cloud Storage                  | `gcs`         |
//! | `az://container/prefix`  | Azure Blob Storage                    | `azure`       |
//! | `file:///absolute/path`  | a local directory (created if absent) | always        |
//! | `memory://`              | memory, gone when the process ends    | always        |
//!
//! Endpoints, regions and credentials come only from the `options` the caller passes
//! (`AWS_ACCESS_KEY_ID`-style names, any case, as object_store's builders know them): this
//! crate never reads the environment. Options a backend does not know are ignored (their names
//! are logged at debug level, never their values).

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use remexec_core::{ActionCache, BlobStore, Error, Result};
use url::Url;

use crate::ac::object::ObjectActionCache;
use crate::store::object::ObjectBlobStore;

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
    fn retry_config(&self) -> object_store::RetryConfig {
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
    fn client_options(&self) -> object_store::ClientOptions {
        object_store::ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }
}

/// Opens the object store at `url` and returns a [`BlobStore`] and an [`ActionCache`] on it:
/// blobs under `{prefix}/cas/`, action results under `{prefix}/ac/` (see
/// [`ObjectBlobStore`] for the key layout).
///
/// `options` configure the backend (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ALLOW_HTTP`,
/// `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_KEY`, `timeout`, ...); the caller reads them
/// from wherever it keeps its configuration. A scheme this build cannot open, because it is
/// unknown or its cargo feature is off, is `InvalidArgument`. Nothing is sent to the store
/// until the first call: a wrong endpoint or credential shows up then, as `Unavailable` or
/// `FailedPrecondition`.
///
/// ```
/// # fn main() -> remexec_core::Result<()> {
/// use remexec_cas::{ExternalSettings, open_object_store};
///
/// let settings = ExternalSettings::default().part_size(16 << 20);
/// let (store, ac) = open_object_store("memory://", [], settings)?;
/// assert_eq!(store.to_string(), "Object(memory://)");
/// assert_eq!(ac.to_string(), "Object(memory://)");
/// # Ok(())
/// # }
/// ```
pub fn open_object_store(
    url: &str,
    options: impl IntoIterator<Item = (String, String)>,
    settings: ExternalSettings,
) -> Result<(Arc<dyn BlobStore>, Arc<dyn ActionCache>)> {
    settings.validate()?;
    let parsed = Url::parse(url)
        .map_err(|e| Error::invalid(format!("external store URL {}: {e}", redact(url))))?;
    let options: Vec<(String, String)> = options
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect();
    let label = label(&parsed);
    let (store, prefix) = build(&parsed, &options, &settings, &label)?;
    let blobs = ObjectBlobStore::new(store.clone(), prefix.clone(), settings.clone())
        .with_label(label.clone());
    let actions = ObjectActionCache::new(store, prefix, settings).with_label(label);
    Ok((Arc::new(blobs), Arc::new(actions)))
}

/// The object store and key prefix a URL names.
fn build(
    url: &Url,
    options: &[(String, String)],
    settings: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let scheme = url.scheme();
    match scheme {
        "memory" => Ok((
            Arc::new(object_store::memory::InMemory::new()),
            prefix_of(url, label)?,
        )),
        "file" => local(url, label),
        "s3" | "s3a" => s3(url, options, settings, label),
        "gs" => gcs(url, options, settings, label),
        "az" | "azure" | "abfs" | "abfss" | "adl" => azure(url, options, settings, label),
        _ => Err(Error::invalid(format!(
            "external store {label}: unsupported scheme {scheme:?}; use s3://, gs://, az://, \
             file:// or memory://"
        ))),
    }
}

/// The key prefix of a bucket URL: its path.
fn prefix_of(url: &Url, label: &str) -> Result<Path> {
    let (_, prefix) = object_store::ObjectStoreScheme::parse(url)
        .map_err(|e| Error::invalid(format!("external store {label}: {e}")))?;
    Ok(prefix)
}

/// A directory of the local file system, created if absent; keys have no prefix.
fn local(url: &Url, label: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let dir = url
        .to_file_path()
        .map_err(|()| Error::invalid(format!("{label} is not an absolute local path")))?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {label}"), e))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| Error::invalid(format!("external store {label}: {e}")))?;
    Ok((Arc::new(store), Path::default()))
}

/// The error for a scheme whose cargo feature this build lacks.
#[cfg_attr(
    all(feature = "s3", feature = "gcs", feature = "azure"),
    allow(dead_code)
)]
fn feature_off(label: &str, feature: &str) -> Error {
    Error::invalid(format!(
        "external store {label} needs remexec built with the `{feature}` cargo feature \
         (remexec-cas/{feature})"
    ))
}

/// Applies the options a builder knows (by `parse`ing their names into its config keys) and
/// builds it.
#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    allow(unused_macros)
)]
macro_rules! configure {
    ($builder:expr, $key:ty, $url:expr, $options:expr, $settings:expr, $label:expr) => {{
        let mut builder = $builder
            .with_url($url.as_str())
            .with_client_options($settings.client_options())
            .with_retry($settings.retry_config());
        for (name, value) in $options {
            match name.parse::<$key>() {
                Ok(key) => builder = builder.with_config(key, value.clone()),
                Err(_) => tracing::debug!(option = %name, "option unknown to the backend; ignored"),
            }
        }
        let store = builder
            .build()
            .map_err(|e| Error::invalid(format!("external store {}: {e}", $label)))?;
        Ok((Arc::new(store) as Arc<dyn ObjectStore>, prefix_of($url, $label)?))
    }};
}

#[cfg(feature = "s3")]
fn s3(
    url: &Url,
    options: &[(String, String)],
    settings: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    configure!(
        AmazonS3Builder::new(),
        AmazonS3ConfigKey,
        url,
        options,
        settings,
        label
    )
}

#[cfg(not(feature = "s3"))]
fn s3(
    _: &Url,
    _: &[(String, String)],
    _: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    Err(feature_off(label, "s3"))
}

#[cfg(feature = "gcs")]
fn gcs(
    url: &Url,
    options: &[(String, String)],
    settings: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    configure!(
        GoogleCloudStorageBuilder::new(),
        GoogleConfigKey,
        url,
        options,
        settings,
        label
    )
}

#[cfg(not(feature = "gcs"))]
fn gcs(
    _: &Url,
    _: &[(String, String)],
    _: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    Err(feature_off(label, "gcs"))
}

#[cfg(feature = "azure")]
fn azure(
    url: &Url,
    options: &[(String, String)],
    settings: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    configure!(
        MicrosoftAzureBuilder::new(),
        AzureConfigKey,
        url,
        options,
        settings,
        label
    )
}

#[cfg(not(feature = "azure"))]
fn azure(
    _: &Url,
    _: &[(String, String)],
    _: &ExternalSettings,
    label: &str,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    Err(feature_off(label, "azure"))
}

/// What the stores describe themselves as: the URL without user information, query or
/// fragment, so that no credential written into the URL reaches a log.
fn label(url: &Url) -> String {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.set_query(None);
    clean.set_fragment(None);
    clean.to_string()
}

/// `url` as stores describe themselves: without user information, query or fragment, whether
/// or not it parses.
pub(crate) fn label_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) => label(&parsed),
        Err(_) => redact(url),
    }
}

/// A URL that did not parse, without what may be a credential: user information
/// (`user:pass@`), the query and the fragment.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let rest: String = rest.chars().take(200).collect();
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(url: &str) -> Error {
        match open_object_store(url, [], ExternalSettings::default()) {
            Ok(_) => panic!("{url} must not open"),
            Err(e) => e,
        }
    }

    #[test]
    fn unsupported_schemes_are_invalid_arguments() {
        for url in [
            "ftp://host/x",
            "http://host/bucket",
            "not a url",
            "grpc://host:1",
        ] {
            let e = error_of(url);
            assert!(matches!(e, Error::InvalidArgument(_)), "{url}: {e:?}");
        }
    }

    #[test]
    fn schemes_of_features_that_are_off_name_the_feature() {
        let cases = [
            ("s3://bucket/p", cfg!(feature = "s3"), "`s3`"),
            ("gs://bucket/p", cfg!(feature = "gcs"), "`gcs`"),
            ("az://container/p", cfg!(feature = "azure"), "`azure`"),
        ];
        for (url, on, feature) in cases {
            if on {
                continue;
            }
            let e = error_of(url);
            assert!(
                matches!(&e, Error::InvalidArgument(m) if m.contains(feature)),
                "{url}: {e:?}"
            );
        }
    }

    #[test]
    fn labels_never_show_credentials() {
        let url = Url::parse("s3://key:secret@bucket/prefix?token=abc#x").unwrap();
        assert_eq!(label(&url), "s3://bucket/prefix");
        assert_eq!(redact("s3://key:secret@bucket/p?t=1"), "s3://bucket/p");
        let e = error_of("s3://key:secret@[bad/x");
        assert!(!e.to_string().contains("secret@"), "{e}");
    }

    #[test]
    fn zero_settings_are_refused() {
        let settings = ExternalSettings::default().part_size(0);
        let e = open_object_store("memory://", [], settings).err();
        assert!(matches!(e, Some(Error::InvalidArgument(m)) if m.contains("part_size")));
    }

    #[cfg(feature = "s3")]
    #[test]
    fn s3_options_configure_the_store_and_unknown_ones_are_ignored() {
        let options = [
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", "http://127.0.0.1:1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_PROFILE_OF_SOMETHING_UNKNOWN", "y"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (store, _) = open_object_store(
            "s3://bucket/some/prefix",
            options,
            ExternalSettings::default(),
        )
        .unwrap();
        assert_eq!(store.to_string(), "Object(s3://bucket/some/prefix)");
    }
}
