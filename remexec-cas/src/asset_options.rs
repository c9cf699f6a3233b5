//! `[asset]`: the Remote Asset API's settings as a daemon's config file holds them, and the
//! services they describe. Deserializable; nothing here reads a file or the environment (the
//! `ca` file is read by the caller and passed in).
//!
//! ```
//! let settings: remexec_cas::asset_options::AssetSettings =
//!     toml::from_str("private_addresses = true\nallowed_hosts = [\"mirror.lan\"]").unwrap();
//! assert!(settings.enabled && settings.fetch);
//! assert_eq!(settings.max_concurrent_fetches, 16);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytesize::ByteSize;
use remexec_core::metrics::Metrics;
use remexec_core::{ActionCache, BlobStore, Result};
use serde::Deserialize;

/// `[asset]`: the Fetch and Push services, the downloader that Bazel's
/// `--experimental_remote_downloader` uses. `docs/CONFIG.md` describes each key and
/// `docs/security.md` the fetch policy.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AssetSettings {
    /// Serve Fetch and Push on the client port (default true; needs the `asset` feature).
    pub enabled: bool,
    /// Download from origins when the asset index cannot answer a Fetch (default true); off,
    /// Fetch answers only what was fetched or pushed before.
    pub fetch: bool,
    /// Hosts that may be fetched from: names (`example.com`) or subdomains
    /// (`*.example.com`). Empty (the default) allows any host.
    pub allowed_hosts: Vec<String>,
    /// Allow origins at loopback, private, link-local and other non-public addresses (default
    /// false, which guards against server-side request forgery).
    pub private_addresses: bool,
    /// Largest download, and largest total an archive may unpack to.
    pub max_size: ByteSize,
    /// Most entries an archive may unpack to.
    pub max_archive_entries: usize,
    /// Longest a download may take, in seconds (a request's `timeout` may shorten it).
    #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
    pub timeout_secs: u64,
    /// More CA certificates (PEM) to trust for `https` origins, besides the web's roots.
    pub ca: Option<PathBuf>,
    /// Most downloads at once; more wait for a turn, within their timeout.
    pub max_concurrent_fetches: usize,
}

impl Default for AssetSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            fetch: true,
            allowed_hosts: Vec::new(),
            private_addresses: false,
            max_size: ByteSize::gib(4),
            max_archive_entries: 100_000,
            timeout_secs: 600,
            ca: None,
            max_concurrent_fetches: 16,
        }
    }
}

/// Adds services to a port's routes.
pub type Mount =
    Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send + Sync + 'static>;

impl AssetSettings {
    /// The Fetch and Push services these settings describe, over `store` and `ac` and counted
    /// in `metrics`, as a mount for a node's client port; `None` when they are off (or the
    /// `asset` feature is). `ca` is what the `ca` file holds. Downloads are kept under
    /// `data_dir/asset`, emptied here.
    pub fn mount(
        &self,
        (store, ac): (&Arc<dyn BlobStore>, &Arc<dyn ActionCache>),
        ca: Option<Vec<u8>>,
        data_dir: &Path,
        metrics: &Metrics,
    ) -> Result<Option<Mount>> {
        if !self.enabled {
            return Ok(None);
        }
        #[cfg(feature = "asset")]
        {
            use crate::asset::{AssetOptions, AssetService};
            let scratch = data_dir.join("asset");
            remexec_core::fs::reset_dir(&scratch)?;
            let options = AssetOptions {
                fetch: self.fetch,
                allowed_hosts: (!self.allowed_hosts.is_empty()).then(|| self.allowed_hosts.clone()),
                private_addresses: self.private_addresses,
                max_size: self.max_size.as_u64(),
                max_archive_entries: self.max_archive_entries,
                timeout: std::time::Duration::from_secs(self.timeout_secs),
                max_concurrent_fetches: self.max_concurrent_fetches,
                extra_roots: ca.into_iter().collect(),
                scratch: Some(scratch),
                ..AssetOptions::default()
            };
            let service = AssetService::new(Arc::clone(store), Arc::clone(ac), options)?
                .with_metrics(metrics.clone());
            tracing::info!(fetch = self.fetch, "serving the Remote Asset API");
            Ok(Some(Box::new(move |routes| service.add_to(routes))))
        }
        #[cfg(not(feature = "asset"))]
        {
            let _ = (store, ac, ca, data_dir, metrics);
            tracing::warn!(
                "[asset] is enabled, but this build has no `asset` feature: no Remote Asset API"
            );
            Ok(None)
        }
    }
}
