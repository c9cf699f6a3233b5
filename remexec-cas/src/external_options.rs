//! [`ExternalOptions`]: external storage as an operator describes it (a config file's
//! `[external]`), and the store trees it makes ([`ExternalOptions::specs`]). The caller reads
//! the CA file and passes the environment; this module reads neither.
//!
//! ```
//! use remexec_cas::external_options::{ExternalKind, ExternalOptions};
//! let options = ExternalOptions { url: "s3://bucket/cas".into(), ..Default::default() };
//! assert_eq!(options.kind().unwrap(), ExternalKind::ObjectStore);
//! let env = [("AWS_REGION".to_string(), "eu-west-1".to_string())];
//! assert_eq!(options.object_store_options(env)["region"], "eu-west-1");
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use remexec_core::client::ClientTls;
use remexec_core::{Error, Result};
use serde::Deserialize;

use crate::spec::{CacheSpec, ObjectSpec, StoreSpec, Upstream};

/// `[external]`: an object store or an upstream REAPI server behind the local stores.
///
/// Its `Debug` shows option names, never their values, which may be credentials.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalOptions {
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`, `memory://`, or an upstream
    /// `grpc://host:port` / `grpcs://host:port`; empty means no external storage.
    pub url: String,
    /// With `grpc://`/`grpcs://`: the upstream instance name every local one maps onto
    /// (unset: the same name upstream).
    pub upstream_instance: Option<String>,
    /// With `grpcs://`: a PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// With `grpcs://`: the name the server's certificate must carry, if not the URL's host.
    pub tls_domain: Option<String>,
    /// Object store options (object_store's names, e.g. `endpoint`, `region`, `allow_http`);
    /// they win over the same names taken from the environment.
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for ExternalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalSection")
            .field("url", &redact_url(&self.url))
            .field("upstream_instance", &self.upstream_instance)
            .field("ca_file", &self.ca_file)
            .field("tls_domain", &self.tls_domain)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The kinds of external storage, by URL scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalKind {
    /// An object store: `s3://`, `gs://`, `az://` (and the other Azure schemes), `file://`,
    /// `memory://`.
    ObjectStore,
    /// An upstream REAPI server: `grpc://`, `grpcs://`.
    Grpc,
}

/// Environment variables taken as object store options, by URL scheme: each variable with one
/// of these prefixes becomes the option of its lowercased name, except the few renamed in
/// [`ENV_RENAMES`].
const ENV_PREFIXES: &[(&str, &str)] = &[
    ("s3", "AWS_"),
    ("s3a", "AWS_"),
    ("gs", "GOOGLE_"),
    ("az", "AZURE_"),
    ("adl", "AZURE_"),
    ("azure", "AZURE_"),
    ("abfs", "AZURE_"),
    ("abfss", "AZURE_"),
];

/// Environment variables whose option has another name than the lowercased variable.
const ENV_RENAMES: &[(&str, &str)] = &[
    ("AWS_ENDPOINT_URL", "endpoint"),
    ("AWS_ENDPOINT", "endpoint"),
    ("AWS_ALLOW_HTTP", "allow_http"),
    ("AWS_ACCESS_KEY_ID", "access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
    ("AWS_SESSION_TOKEN", "token"),
    ("AWS_REGION", "region"),
];

impl ExternalOptions {
    /// Whether external storage is configured.
    pub fn is_set(&self) -> bool {
        !self.url.is_empty()
    }

    /// What `url` names; `InvalidArgument` for a URL that names nothing remexec knows.
    pub fn kind(&self) -> Result<ExternalKind> {
        let scheme = (self.url.split_once("://").map(|(scheme, _)| scheme)).ok_or_else(|| {
            let url = redact_url(&self.url);
            Error::invalid(format!("external store URL {url:?} has no scheme"))
        })?;
        match scheme {
            "grpc" | "grpcs" => Ok(ExternalKind::Grpc),
            "file" | "memory" => Ok(ExternalKind::ObjectStore),
            s if ENV_PREFIXES.iter().any(|(p, _)| *p == s) => Ok(ExternalKind::ObjectStore),
            s => Err(Error::invalid(format!(
                "external store URL scheme {s:?}: expected s3, gs, az, file, memory, grpc or grpcs"
            ))),
        }
    }

    /// The object store options: those of the environment `env` for this URL's scheme
    /// (`AWS_*` for `s3://`, `GOOGLE_*` for `gs://`, `AZURE_*` for `az://`), overridden by
    /// [`options`](Self::options). `AWS_DEFAULT_REGION` counts only without `AWS_REGION`.
    pub fn object_store_options(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> BTreeMap<String, String> {
        let scheme = self.url.split_once("://").map_or("", |(s, _)| s);
        let prefix = ENV_PREFIXES
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, p)| *p);
        let mut options = BTreeMap::new();
        let mut default_region = None;
        for (name, value) in env {
            let Some(prefix) = prefix.filter(|p| name.starts_with(p)) else {
                continue;
            };
            if prefix == "AWS_" && name == "AWS_DEFAULT_REGION" {
                default_region = Some(value);
                continue;
            }
            let key = ENV_RENAMES
                .iter()
                .find(|(var, _)| *var == name)
                .map_or_else(|| name.to_ascii_lowercase(), |(_, key)| key.to_string());
            options.insert(key, value);
        }
        if let Some(region) = default_region {
            options.entry("region".to_string()).or_insert(region);
        }
        for (key, value) in &self.options {
            options.insert(key.clone(), value.clone());
        }
        options
    }

    /// The trees of the external tier, or `None` if none is set: its blob store and its
    /// action cache.
    ///
    /// `grpc://` and `grpcs://` are an upstream REAPI server, reached by a
    /// [`GrpcStore`](crate::GrpcStore) and a [`GrpcActionCache`](crate::GrpcActionCache) on
    /// lazily connected channels (so the server starts while the upstream is down), with the
    /// upstream instance name and `ca_pem` (the contents of `ca_file`, which the caller reads).
    /// Any other scheme is an object store, opened with the
    /// [`object_store_options`](Self::object_store_options) over `env`.
    pub fn specs(
        &self,
        ca_pem: Option<Vec<u8>>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Option<(StoreSpec, CacheSpec)>> {
        if !self.is_set() {
            return Ok(None);
        }
        let label = redact_url(&self.url);
        let (store, cache) = match self.kind()? {
            ExternalKind::Grpc => {
                if !self.options.is_empty() {
                    return Err(Error::invalid(format!(
                        "external store {label}: [external.options] apply to object stores, not to an upstream server"
                    )));
                }
                let instance = self.upstream_instance.clone();
                if let Some(name) = &instance {
                    remexec_core::validate_instance_name(name)?;
                }
                let domain = self.tls_domain.clone();
                let tls = ClientTls {
                    ca_pem,
                    domain,
                    identity: None,
                };
                let url = self.url.clone();
                let upstream = Upstream {
                    url,
                    tls,
                    instance,
                    label,
                };
                (StoreSpec::Grpc(upstream.clone()), CacheSpec::Grpc(upstream))
            }
            ExternalKind::ObjectStore => {
                if self.upstream_instance.is_some()
                    || self.ca_file.is_some()
                    || self.tls_domain.is_some()
                {
                    return Err(Error::invalid(format!(
                        "external store {label}: upstream_instance, ca_file and tls_domain apply to grpc:// and grpcs:// only"
                    )));
                }
                let object = ObjectSpec {
                    url: self.url.clone(),
                    options: self.object_store_options(env).into_iter().collect(),
                    settings: crate::external::ExternalSettings::default(),
                };
                (StoreSpec::Object(object.clone()), CacheSpec::Object(object))
            }
        };
        Ok(Some((store, cache)))
    }
}

/// `url` without any `user:password@` part, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_string(),
    }
}
