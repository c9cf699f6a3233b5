//! The daemon's configuration: embedded defaults, overridden by a TOML file, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
pub use remexec_cas::asset_options::AssetSettings as AssetSection;
pub use remexec_cas::external_options::{
    ExternalKind, ExternalOptions as ExternalSection, redact_url,
};
pub use remexec_cas::options::{
    AcBackend, ActionCacheOptions as ActionCacheConfig, CasOptions as CasConfig,
    LimitsOptions as LimitsConfig,
};
use remexec_core::Message;
pub use remexec_scheduler::config::SchedulerOptions as SchedulerSection;
pub use remexec_scheduler::events::BuildEventsOptions as BuildEventsSection;
pub use remexec_worker::groups::{
    DEFAULT_IMAGE, FlexibleOptions as FlexibleSection, GroupOptions as GroupSection, IsolationKind,
};
use serde::Deserialize;

/// The default listen address: loopback only, port 8980.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8980";

/// Everything `remexec serve` needs. Every field has a default, so no file is required.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for gRPC.
    pub listen: SocketAddr,
    /// Address of the admin HTTP port (`/healthz`, `/readyz`); unset means none.
    pub admin_listen: Option<SocketAddr>,
    /// Seconds between SIGTERM and the listeners closing, during which the server reports
    /// itself not ready (so load balancers stop sending it work) but still serves.
    #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
    pub drain_secs: u64,
    /// Directory for the CAS, the action cache and other state.
    pub data_dir: PathBuf,
    /// Content-addressable storage settings.
    pub cas: CasConfig,
    /// Action cache settings.
    pub action_cache: ActionCacheConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Scheduler settings (`serve` and `scheduler`).
    pub scheduler: SchedulerSection,
    /// Worker settings (`serve`'s local worker and `worker`).
    pub worker: WorkerSection,
    /// External storage behind the local stores (`serve` and `scheduler`).
    pub external: ExternalSection,
    /// TLS on the client port (`serve` and `scheduler`).
    pub tls: TlsSection,
    /// Traces, the access log and the status page's address.
    pub telemetry: TelemetrySection,
    /// Client authentication and permissions (`serve` and `scheduler`).
    pub auth: AuthSection,
    /// The worker port and cluster certificates.
    pub cluster: ClusterSection,
    /// The Remote Asset API (`serve` and `scheduler`).
    pub asset: AssetSection,
    /// The Build Event Service and invocation pages (`serve` and `scheduler`).
    pub build_events: BuildEventsSection,
}

/// `[tls]`: TLS on the client port. Files are PEM; SIGHUP reloads them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The server's certificate chain (setting it turns TLS on).
    pub cert: Option<PathBuf>,
    /// The server's private key.
    pub key: Option<PathBuf>,
    /// CA certificates that sign client certificates: setting it turns mutual TLS on.
    pub client_ca: Option<PathBuf>,
    /// Client certificates admitted: patterns over the subject CN and SANs (default `["*"]`:
    /// every certificate the client CA signed).
    pub client_names: Vec<String>,
    /// What an admitted client certificate may do (default cache-read, cache-write, execute).
    pub client_permissions: Vec<String>,
    /// On which instances (default `["*"]`).
    pub client_instances: Vec<String>,
}

/// `[auth]`: bearer tokens, JWTs and anonymous access.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// A token file of hashed tokens (see docs/security.md).
    pub token_file: Option<PathBuf>,
    /// A JWT key: a PEM RSA or EC P-256 public key (RS256, ES256) or an HS256 secret.
    pub jwt_key: Option<PathBuf>,
    /// A JWKS file of JWT keys.
    pub jwks: Option<PathBuf>,
    /// Required JWT issuer (`iss`).
    pub jwt_issuer: Option<String>,
    /// Required JWT audience (`aud`).
    pub jwt_audience: Option<String>,
    /// Permissions of callers without credentials, e.g. `["cache-read"]`; empty refuses them.
    /// With no authentication configured at all, everyone may do everything.
    pub anonymous: Vec<String>,
    /// Instances the anonymous permissions apply to (default `["*"]`).
    pub anonymous_instances: Vec<String>,
}

/// `[cluster]`: the worker port, cluster membership and the CAS on the workers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// A separate port for workers (`scheduler` and `serve`); the client port then serves no
    /// worker API.
    pub worker_listen: Option<SocketAddr>,
    /// CA of cluster certificates (default: `[tls] client_ca`).
    pub ca: Option<PathBuf>,
    /// Certificate names that mark a cluster member (default `["remexec-cluster"]`).
    pub names: Vec<String>,
    /// The other schedulers (`grpc://host:port` URLs, or one DNS name resolving to all of
    /// them): they share the Action Cache, each entry on 2 of them.
    pub peers: Vec<String>,
    /// Replicas of each blob on the workers, 1 to 3. A scheduler with it set keeps no blobs:
    /// its CAS is the workers' (their CAS ports, `storage`); such a worker keeps 2 unless it is
    /// set.
    pub replicas: Option<u32>,
    /// The workers' CAS ports (`grpc://host:port` URLs, one DNS name resolving to all of them,
    /// or `etcd://host:port/prefix` where workers register): the same on every instance.
    pub storage: Vec<String>,
    /// The URL other instances reach this one at: a worker's CAS port (default: `grpc://` and
    /// the listen address, or the worker's name for an unspecified address such as 0.0.0.0),
    /// or a scheduler's client port, as its peers list it (default: `grpc://` and the listen
    /// address).
    pub advertise: Option<String>,
    /// Bytes per second a worker spends copying blobs to restore their replicas.
    pub repair_bandwidth: ByteSize,
    /// Seconds between a worker's re-replication passes besides those after membership
    /// changes.
    pub repair_interval_secs: u64,
    /// Bytes of memory a cluster scheduler keeps copies of small blobs in (Actions,
    /// Commands, Directories), so that its input checks read them without the network.
    pub small_blob_cache: ByteSize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            worker_listen: None,
            ca: None,
            names: Vec::new(),
            peers: Vec::new(),
            replicas: None,
            storage: Vec::new(),
            advertise: None,
            repair_bandwidth: ByteSize::mib(100),
            repair_interval_secs: 60,
            small_blob_cache: ByteSize::mib(64),
        }
    }
}

/// `[telemetry]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySection {
    /// OTLP/gRPC collector to send trace spans to, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: Option<String>,
    /// Zipkin collector to send trace spans to, e.g. `http://127.0.0.1:9411/api/v2/spans`.
    pub zipkin_endpoint: Option<String>,
    /// One log line per gRPC call (target `remexec::access`).
    pub access_log: bool,
    /// Public base URL of the admin port (`http://host:9090`), for the links in failed
    /// actions' `ExecuteResponse.message`; unset means `http://{admin_listen}` when that is
    /// set.
    pub status_url: Option<String>,
}

/// `[worker]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// Worker name; empty means the host name (with `-local` for `serve`'s own worker).
    pub name: String,
    /// Number of executors (actions run at once); 0 means one per CPU.
    pub executors: usize,
    /// Scheduler URL for `remexec worker`; several, comma-separated, for a cluster's
    /// schedulers (the worker serves each).
    pub scheduler: String,
    /// Byte budget of the worker's input file cache.
    pub cache_budget: ByteSize,
    /// Extra properties every executor advertises, besides the detected OSFamily, Arch,
    /// cpu-count and memory-mb.
    pub properties: std::collections::BTreeMap<String, String>,
    /// With a `grpcs://` scheduler: CA certificates to trust instead of the built-in roots.
    pub tls_ca: Option<PathBuf>,
    /// The worker's cluster certificate, presented to the scheduler.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// `remexec worker` reports itself not ready (`/readyz`) while the file system of its data
    /// directory has less free space than this.
    pub min_free_disk: ByteSize,
    /// The unprivileged user a worker started as root runs actions as (created if missing);
    /// empty keeps root.
    pub run_as: String,
    /// How actions are isolated: `process` or `namespaces` (bubblewrap).
    pub isolation: IsolationKind,
    /// With `namespaces`: actions whose platform has `network=on` may use the network.
    pub allow_network: bool,
    /// With `namespaces`: CPUs each action may use (a CFS quota; 0: unlimited).
    pub cpus_per_action: f64,
    /// With `namespaces`: memory each action may use before the kernel kills it (0:
    /// unlimited).
    pub memory_per_action: ByteSize,
    /// With `docker`: the image of actions that name none (`container-image`).
    pub image: String,
    /// Executor groups (`[[worker.groups]]`), each with its own isolation, limits, count and
    /// properties; none means one group made of the settings above.
    pub groups: Vec<GroupSection>,
    /// `[worker.flexible]`: groups offered one at a time, as the queue asks.
    pub flexible: Option<FlexibleSection>,
    /// `remexec worker`: serve this worker's CAS to the cluster on this address (its blobs
    /// in `{data_dir}/cas`, within `[cas] disk_budget`).
    pub listen: Option<SocketAddr>,
    /// `remexec worker`: `scheduler` names seeds, each resolved to every address it has (a
    /// DNS name for all the schedulers), health-checked, and followed as schedulers come and go.
    pub discover_schedulers: bool,
}

impl WorkerSection {
    /// The executor groups: `groups`, or else one group (named `""`) of `executors` executors
    /// (0: one per CPU, `cpus`) with this section's isolation and limits.
    pub fn groups(&self, cpus: usize) -> Vec<GroupSection> {
        if !self.groups.is_empty() {
            return self.groups.clone();
        }
        vec![GroupSection {
            name: String::new(),
            executors: if self.executors == 0 {
                cpus
            } else {
                self.executors
            },
            isolation: self.isolation,
            cpus_per_action: self.cpus_per_action,
            memory_per_action: self.memory_per_action,
            allow_network: self.allow_network,
            image: self.image.clone(),
            ..GroupSection::default()
        }]
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            executors: 0,
            scheduler: format!("grpc://{DEFAULT_LISTEN}"),
            cache_budget: ByteSize::gib(10),
            properties: Default::default(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            min_free_disk: ByteSize::mib(256),
            run_as: "remexec-action".into(),
            isolation: IsolationKind::Process,
            allow_network: false,
            cpus_per_action: 0.0,
            memory_per_action: ByteSize::b(0),
            image: DEFAULT_IMAGE.into(),
            groups: Vec::new(),
            flexible: None,
            listen: None,
            discover_schedulers: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            admin_listen: None,
            drain_secs: 0,
            data_dir: default_data_dir(),
            cas: CasConfig::default(),
            action_cache: ActionCacheConfig::default(),
            limits: LimitsConfig::default(),
            scheduler: SchedulerSection::default(),
            worker: WorkerSection::default(),
            external: ExternalSection::default(),
            tls: TlsSection::default(),
            auth: AuthSection::default(),
            cluster: ClusterSection::default(),
            telemetry: TelemetrySection::default(),
            asset: AssetSection::default(),
            build_events: BuildEventsSection::default(),
        }
    }
}

/// `$XDG_CACHE_HOME/remexec`, else `$HOME/.cache/remexec`, else `./remexec-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("remexec");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("remexec");
    }
    PathBuf::from("remexec-data")
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, Message> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Message::caused_by(format!("reading {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| Message::caused_by(path.display(), e))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Message> {
        toml::from_str(text).map_err(Message::from_error)
    }

    /// The cache services' limits.
    pub fn cache_limits(&self) -> remexec_cas::Limits {
        self.limits.cache_limits()
    }

    /// `[limits]`'s tree depth and entries.
    pub fn tree_limits(&self) -> remexec_core::merkle::TreeLimits {
        self.limits.tree_limits()
    }

    /// The scheduler's configuration: `[scheduler]`, with `[limits]`'s command and tree
    /// limits.
    pub fn scheduler_config(&self) -> Result<remexec_scheduler::SchedulerConfig, Message> {
        let mut config = self.scheduler.to_config()?;
        config.max_command_size =
            usize::try_from(self.limits.max_command_size.as_u64()).unwrap_or(usize::MAX);
        config.tree_limits = self.tree_limits();
        // Else the scheduler node names its admin port once bound.
        config.status_url.clone_from(&self.telemetry.status_url);
        // The groups' instance names: served by name from the start, before the worker with
        // them has attached (the all-in-one server's, or one sharing this file).
        for group in &self.worker.groups {
            config
                .served_instances
                .extend(group.instance_names.iter().cloned());
        }
        Ok(config)
    }

    /// The worker's name: `[worker] name`, else this host's name and `default_suffix`.
    pub fn worker_name(&self, default_suffix: &str) -> String {
        if !self.worker.name.is_empty() {
            return self.worker.name.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".into());
        format!("{host}{default_suffix}")
    }

    /// HTTP/2 and message limits of every port, from `[limits]`.
    pub fn transport(&self) -> remexec_core::server::Transport {
        let window = |b: ByteSize| u32::try_from(b.as_u64()).unwrap_or(u32::MAX >> 1);
        remexec_core::server::Transport::new(
            self.cache_limits().max_message_size,
            self.limits.max_concurrent_streams,
            window(self.limits.connection_window),
            window(self.limits.stream_window),
        )
    }

    /// Checks `[limits]`: every count and size must be positive.
    pub fn check_limits(&self) -> Result<(), Message> {
        self.limits.check()?;
        if let Some(r) = self.cluster.replicas
            && !(1..=3).contains(&r)
        {
            return Err(format!("cluster.replicas must be 1 to 3, not {r}").into());
        }
        if !self.cluster.peers.is_empty() && self.cluster.replicas.is_none() {
            return Err(
                "cluster.peers (--peer) needs cluster.replicas (--replicas): schedulers that share the Action Cache must share the CAS, on the workers"
                    .into(),
            );
        }
        Ok(())
    }
}
