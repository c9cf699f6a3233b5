//! Command-line interface of the `remexec` binary.

use std::path::PathBuf;

pub use crate::args::{ClientTlsArgs, parse_property};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use remexec_core::Message;
use remexec_worker::groups::IsolationKind;

use crate::config::{AcBackend, Config};

/// remexec: a Remote Execution API v2 service (cache and remote execution) for Bazel and other
/// build tools.
#[derive(Debug, Parser)]
#[command(
    name = "remexec",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("REMEXEC_GIT_COMMIT"), ")")
)]
pub struct Cli {
    /// Log lines on stderr as `human` text or `json` (one object per line); the filter comes
    /// from REMEXEC_LOG (e.g. `info`, `remexec_scheduler=debug`) [default: human].
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "REMEXEC_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: CAS, Action Cache, scheduler and a local worker.
    ///
    /// With no flags and no config file it listens on 127.0.0.1:8980, keeps data in
    /// $XDG_CACHE_HOME/remexec (or ~/.cache/remexec) with a 10 GiB disk budget, and runs one
    /// executor per CPU. Point Bazel at it with --remote_executor=grpc://127.0.0.1:8980.
    Serve(ServerArgs),
    /// Run the CAS, Action Cache and scheduler, for workers started with `remexec worker`.
    Scheduler(ServerArgs),
    /// Run a worker that takes actions from a scheduler.
    Worker(WorkerArgs),
    /// Run one command remotely: upload an input directory, execute, download the outputs.
    Exec(crate::exec::ExecArgs),
    /// Load-test any REAPI server: throughput and latency percentiles of one workload.
    Bench(crate::bench::BenchArgs),
    /// TLS helpers.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// The CAS of any REAPI server: upload a file or tree, download a tree.
    #[command(subcommand)]
    Cas(crate::tools::CasCommand),
    /// A cluster's CAS on its workers: members and copies still to make.
    #[command(subcommand)]
    Cluster(crate::cluster_tools::ClusterCommand),
    /// The Action Cache of any REAPI server.
    #[command(subcommand)]
    Ac(crate::tools::AcCommand),
    /// Show an action or an operation: Command, inputs, result, stdout and stderr, timings.
    #[command(subcommand)]
    Show(crate::tools::ShowCommand),
    /// Print a summary of a running server from its admin port: executors, queue, running and
    /// recent actions, cache hit rate and store usage.
    Status(crate::status::StatusArgs),
    /// Print a shell completion script: `source <(remexec completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `remexec man > remexec.1`.
    Man,
}

impl Cli {
    /// Writes the completion script for `shell` to `out`.
    pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Self::command(), "remexec", out);
    }

    /// Writes the man page to `out`.
    pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use clap::CommandFactory;
        clap_mangen::Man::new(Self::command()).render(out)
    }
}

/// `remexec tls …`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a demo CA and certificates into DIR: ca.pem, server.pem/.key (localhost),
    /// client.pem/.key and cluster.pem/.key. Demo certificates are public knowledge: never let
    /// them guard a reachable scheduler.
    DevCerts {
        /// Directory to write into (created if missing; existing files are replaced).
        dir: PathBuf,
    },
}

/// `--action-cache`'s values, with what each means.
fn ac_backends() -> impl clap::builder::TypedValueParser<Value = AcBackend> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = [
        PossibleValue::new("disk").help("Files under `data_dir/ac`"),
        PossibleValue::new("memory").help("RAM only"),
    ];
    PossibleValuesParser::new(values).map(|name| match name.as_str() {
        "memory" => AcBackend::Memory,
        _ => AcBackend::Disk,
    })
}

/// `--isolation`'s values, with what each means.
fn isolation_kinds() -> impl clap::builder::TypedValueParser<Value = IsolationKind> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let help = |kind: IsolationKind| match kind {
        IsolationKind::Process => {
            "Processes on the host, supervised in a PID namespace (docs/isolation.md)"
        }
        IsolationKind::Namespaces => {
            "User, mount, PID, network, UTS and IPC namespaces through bubblewrap"
        }
        IsolationKind::Docker => {
            "A container of the local Docker engine per action (the binary's `docker` feature)"
        }
    };
    let values = IsolationKind::ALL.map(|k| PossibleValue::new(k.name()).help(help(k)));
    PossibleValuesParser::new(values).map(|name| {
        (IsolationKind::ALL.into_iter())
            .find(|k| k.name() == name)
            .unwrap_or_default()
    })
}

/// Settings shared by every daemon; each flag overrides the config file.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML config file (see docs/CONFIG.md); flags override it.
    #[arg(long, short = 'c', env = "REMEXEC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the CAS, action cache and worker files [default: $XDG_CACHE_HOME/remexec or ~/.cache/remexec].
    #[arg(long, env = "REMEXEC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How the worker (serve's local one, or `worker`) isolates actions [default: process].
    #[arg(long, value_parser = isolation_kinds(), env = "REMEXEC_ISOLATION")]
    pub isolation: Option<crate::config::IsolationKind>,
}

/// Flags of `remexec serve` and `remexec scheduler`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on, HOST:PORT (port 0 picks a free one) [default: 127.0.0.1:8980].
    #[arg(long, env = "REMEXEC_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Most bytes of blobs kept on disk, e.g. 10GiB [default: 10 GiB].
    #[arg(long, env = "REMEXEC_DISK_BUDGET")]
    pub disk_budget: Option<ByteSize>,
    /// Where action results live [default: disk].
    #[arg(long, value_parser = ac_backends(), env = "REMEXEC_ACTION_CACHE")]
    pub action_cache: Option<AcBackend>,
    /// Skip fsync before acknowledging writes (faster; safe against crashes of remexec, not of the machine).
    #[arg(long, env = "REMEXEC_NO_FSYNC")]
    pub no_fsync: bool,
    /// Executors of the local worker (`serve` only) [default: one per CPU].
    #[arg(long, env = "REMEXEC_EXECUTORS")]
    pub executors: Option<usize>,
    /// Extra property NAME=VALUE of the local worker's executors (`serve` only; repeatable).
    #[arg(long = "property", value_parser = parse_property, env = "REMEXEC_PROPERTY")]
    pub properties: Vec<(String, String)>,
    /// External storage behind the local disk, written through: an object store
    /// (s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, file:///path, memory://)
    /// or an upstream REAPI server (grpc://host:port, grpcs://host:port). Object store
    /// credentials come from the AWS_*, GOOGLE_* or AZURE_* environment variables or the
    /// config file's [external.options] [default: none].
    #[arg(long, value_name = "URL", env = "REMEXEC_EXTERNAL_STORE")]
    pub external_store: Option<String>,
    /// Address of the admin HTTP port with /healthz and /readyz [default: none].
    #[arg(long, value_name = "ADDR", env = "REMEXEC_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Seconds to stay up, reporting not-ready, between SIGTERM and closing [default: 0].
    #[arg(long, value_name = "SECS", env = "REMEXEC_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Public base URL of the admin port, for links to failed actions [default: http://ADMIN_LISTEN].
    #[arg(long, value_name = "URL", env = "REMEXEC_STATUS_URL")]
    pub status_url: Option<String>,
    /// Log one line per gRPC call (target remexec::access).
    #[arg(long, env = "REMEXEC_ACCESS_LOG")]
    pub access_log: bool,
    /// Keep no blobs here: the CAS is on the workers' CAS ports (--storage), each blob on R of
    /// them (1 to 3) [default: the scheduler keeps blobs itself].
    #[arg(long, value_name = "R", env = "REMEXEC_REPLICAS")]
    pub replicas: Option<u32>,
    /// The storage plane's members.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Another scheduler of the cluster, grpc://HOST:PORT, or one DNS name resolving to all of
    /// them (repeatable): the schedulers share the Action Cache [default: none].
    #[arg(
        long = "peer",
        value_name = "URL",
        value_delimiter = ',',
        env = "REMEXEC_PEERS"
    )]
    pub peers: Vec<String>,
    /// The URL this scheduler's peers list it under [default: grpc://LISTEN].
    #[arg(long, value_name = "URL", env = "REMEXEC_ADVERTISE")]
    pub advertise: Option<String>,
    /// Trace export.
    #[command(flatten)]
    pub tracing: TracingArgs,
    /// TLS and authentication of the ports.
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// The storage plane's members (`scheduler`, `worker`).
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// The workers' CAS ports, grpc://HOST:PORT (or grpcs://), one DNS name resolving to all of
    /// them (repeatable), or etcd://HOST:PORT/PREFIX where workers register: the storage plane's
    /// members, the same on every scheduler and worker of the cluster [default: none].
    #[arg(
        long = "storage",
        value_name = "URL",
        value_delimiter = ',',
        env = "REMEXEC_STORAGE"
    )]
    pub storage: Vec<String>,
}

impl StorageArgs {
    /// Sets `[cluster] storage` if the flag is given.
    fn apply(&self, config: &mut Config) {
        if !self.storage.is_empty() {
            config.cluster.storage.clone_from(&self.storage);
        }
    }
}

/// Where trace spans go (`serve`, `scheduler`, `worker`).
#[derive(Debug, Args)]
pub struct TracingArgs {
    /// Send trace spans to this OTLP/gRPC collector, e.g. http://127.0.0.1:4317 [default: none].
    #[arg(long, value_name = "URL", env = "REMEXEC_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Send trace spans to this Zipkin collector, e.g. http://127.0.0.1:9411/api/v2/spans [default: none].
    #[arg(long, value_name = "URL", env = "REMEXEC_ZIPKIN_ENDPOINT")]
    pub zipkin_endpoint: Option<String>,
}

impl TracingArgs {
    /// Sets the `[telemetry]` endpoints given.
    pub fn apply(&self, config: &mut Config) {
        if self.otlp_endpoint.is_some() {
            config.telemetry.otlp_endpoint = self.otlp_endpoint.clone();
        }
        if self.zipkin_endpoint.is_some() {
            config.telemetry.zipkin_endpoint = self.zipkin_endpoint.clone();
        }
    }
}

/// TLS, authentication and the worker port of `serve` and `scheduler`.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain of the server: turns TLS on (clients then use grpcs://).
    #[arg(long, value_name = "FILE", env = "REMEXEC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the server.
    #[arg(long, value_name = "FILE", env = "REMEXEC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signs client certificates: turns mutual TLS on.
    #[arg(long, value_name = "FILE", env = "REMEXEC_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Token file of hashed bearer tokens and their permissions (docs/security.md).
    #[arg(long, value_name = "FILE", env = "REMEXEC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// JWT key: a PEM RSA or EC P-256 public key (RS256, ES256), or an HS256 secret.
    #[arg(long, value_name = "FILE", env = "REMEXEC_JWT_KEY")]
    pub jwt_key: Option<PathBuf>,
    /// JWKS file of JWT keys.
    #[arg(long, value_name = "FILE", env = "REMEXEC_JWKS")]
    pub jwks: Option<PathBuf>,
    /// Permissions of callers without credentials, comma-separated (e.g. cache-read).
    #[arg(
        long,
        value_name = "PERMISSIONS",
        value_delimiter = ',',
        env = "REMEXEC_ALLOW_ANONYMOUS"
    )]
    pub allow_anonymous: Vec<String>,
    /// A separate port for workers; the client port then serves no worker API. With TLS it
    /// requires a cluster certificate.
    #[arg(long, value_name = "ADDR", env = "REMEXEC_WORKER_LISTEN")]
    pub worker_listen: Option<std::net::SocketAddr>,
    /// PEM CA of cluster certificates [default: --client-ca].
    #[arg(long, value_name = "FILE", env = "REMEXEC_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
}

impl SecurityArgs {
    fn apply(&self, config: &mut Config) {
        let set = |target: &mut Option<PathBuf>, value: &Option<PathBuf>| {
            if value.is_some() {
                target.clone_from(value);
            }
        };
        set(&mut config.tls.cert, &self.tls_cert);
        set(&mut config.tls.key, &self.tls_key);
        set(&mut config.tls.client_ca, &self.client_ca);
        set(&mut config.auth.token_file, &self.token_file);
        set(&mut config.auth.jwt_key, &self.jwt_key);
        set(&mut config.auth.jwks, &self.jwks);
        set(&mut config.cluster.ca, &self.cluster_ca);
        if !self.allow_anonymous.is_empty() {
            config.auth.anonymous.clone_from(&self.allow_anonymous);
        }
        if self.worker_listen.is_some() {
            config.cluster.worker_listen = self.worker_listen;
        }
    }
}

/// Flags of `remexec worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Shared settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The scheduler to take actions from, e.g. grpc://10.0.0.5:8980; repeatable (or
    /// comma-separated) for a cluster's schedulers, each of which the worker serves.
    #[arg(long, value_delimiter = ',', env = "REMEXEC_SCHEDULER")]
    pub scheduler: Vec<String>,
    /// Worker name [default: the host name].
    #[arg(long, env = "REMEXEC_NAME")]
    pub name: Option<String>,
    /// Number of executors [default: one per CPU].
    #[arg(long, env = "REMEXEC_EXECUTORS")]
    pub executors: Option<usize>,
    /// Extra executor property NAME=VALUE (repeatable).
    #[arg(long = "property", value_parser = parse_property, env = "REMEXEC_PROPERTY")]
    pub properties: Vec<(String, String)>,
    /// TLS to the scheduler (the certificate is the worker's cluster certificate).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Address of the worker's admin HTTP port: /healthz, /readyz (not ready while the
    /// scheduler is unreachable or the disk is full) and /metrics [default: none].
    #[arg(long, value_name = "ADDR", env = "REMEXEC_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Serve this worker's CAS to the cluster on ADDR (HOST:PORT): a member of the storage
    /// plane once --storage lists it [default: none].
    #[arg(long, value_name = "ADDR", env = "REMEXEC_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// The URL others reach this worker's CAS at [default: grpc://LISTEN, or grpc://NAME:PORT
    /// for an unspecified address].
    #[arg(long, value_name = "URL", env = "REMEXEC_ADVERTISE")]
    pub advertise: Option<String>,
    /// Resolve each --scheduler to every address it has (one DNS name for all the
    /// schedulers, as a Kubernetes headless service gives) and follow them as they come and go.
    #[arg(long, env = "REMEXEC_DISCOVER_SCHEDULERS")]
    pub discover_schedulers: bool,
    /// Replicas of each blob, 1 to 3, as the scheduler's --replicas [default: 2].
    #[arg(long, value_name = "R", env = "REMEXEC_REPLICAS")]
    pub replicas: Option<u32>,
    /// The storage plane's members.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Most bytes of blobs this worker keeps for the cluster, e.g. 50GiB [default: 10 GiB].
    #[arg(long, env = "REMEXEC_DISK_BUDGET")]
    pub disk_budget: Option<ByteSize>,
    /// Trace export.
    #[command(flatten)]
    pub tracing: TracingArgs,
}

impl CommonArgs {
    fn load(&self) -> Result<Config, Message> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(kind) = self.isolation {
            config.worker.isolation = kind;
        }
        Ok(config)
    }
}

impl ServerArgs {
    /// Defaults, then the config file, then flags.
    pub fn resolve(&self) -> Result<Config, Message> {
        let mut config = self.common.load()?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(budget) = self.disk_budget {
            config.cas.disk_budget = budget;
        }
        if let Some(backend) = self.action_cache {
            config.action_cache.backend = backend;
        }
        if self.no_fsync {
            config.cas.fsync = false;
        }
        if let Some(n) = self.executors {
            config.worker.executors = n;
        }
        for (name, value) in &self.properties {
            config.worker.properties.insert(name.clone(), value.clone());
        }
        if let Some(url) = &self.external_store {
            config.external.url = url.clone();
        }
        self.security.apply(&mut config);
        if self.admin_listen.is_some() {
            config.admin_listen = self.admin_listen;
        }
        if let Some(secs) = self.drain_secs {
            config.drain_secs = secs;
        }
        if self.status_url.is_some() {
            config.telemetry.status_url = self.status_url.clone();
        }
        if self.access_log {
            config.telemetry.access_log = true;
        }
        if self.replicas.is_some() {
            config.cluster.replicas = self.replicas;
        }
        if !self.peers.is_empty() {
            config.cluster.peers.clone_from(&self.peers);
        }
        self.storage.apply(&mut config);
        if self.advertise.is_some() {
            config.cluster.advertise.clone_from(&self.advertise);
        }
        self.tracing.apply(&mut config);
        if config.external.is_set() {
            config.external.kind()?;
        }
        Ok(config)
    }
}

impl WorkerArgs {
    /// Defaults, then the config file, then flags.
    pub fn resolve(&self) -> Result<Config, Message> {
        let mut config = self.common.load()?;
        if !self.scheduler.is_empty() {
            config.worker.scheduler = self.scheduler.join(",");
        }
        if let Some(name) = &self.name {
            config.worker.name = name.clone();
        }
        if let Some(n) = self.executors {
            config.worker.executors = n;
        }
        for (name, value) in &self.properties {
            config.worker.properties.insert(name.clone(), value.clone());
        }
        for (target, value) in [
            (&mut config.worker.tls_ca, &self.tls.tls_ca),
            (&mut config.worker.tls_cert, &self.tls.tls_cert),
            (&mut config.worker.tls_key, &self.tls.tls_key),
        ] {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        if self.admin_listen.is_some() {
            config.admin_listen = self.admin_listen;
        }
        if self.listen.is_some() {
            config.worker.listen = self.listen;
        }
        if self.discover_schedulers {
            config.worker.discover_schedulers = true;
        }
        if self.advertise.is_some() {
            config.cluster.advertise.clone_from(&self.advertise);
        }
        if self.replicas.is_some() {
            config.cluster.replicas = self.replicas;
        }
        self.storage.apply(&mut config);
        if let Some(budget) = self.disk_budget {
            config.cas.disk_budget = budget;
        }
        self.tracing.apply(&mut config);
        Ok(config)
    }
}
