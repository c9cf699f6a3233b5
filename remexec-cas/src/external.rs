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

use object_store::ObjectStore;
use object_store::path::Path;
use remexec_core::{ActionCache, BlobStore, Error, Result};
use url::Url;

use crate::ac::object::ObjectActionCache;
pub use crate::store::object::ExternalSettings;
use crate::store::object::ObjectBlobStore;

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
    let parsed = Url::parse(url).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("external store URL {}", redact(url)),
            e,
        ))
    })?;
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
    let (_, prefix) = object_store::ObjectStoreScheme::parse(url).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("external store {label}"),
            e,
        ))
    })?;
    Ok(prefix)
}

/// A directory of the local file system, created if absent; keys have no prefix.
fn local(url: &Url, label: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let dir = url
        .to_file_path()
        .map_err(|()| Error::invalid(format!("{label} is not an absolute local path")))?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {label}"), e))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("external store {label}"),
            e,
        ))
    })?;
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
            .map_err(|e| Error::InvalidArgument(remexec_core::Message::caused_by(format!("external store {}", $label), e)))?;
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
