//! `remexec cas upload|download` and `remexec ac get`: the CAS and the Action Cache of any REAPI
//! server from the command line, over the client library.

use std::fmt::Write as _;
use std::path::PathBuf;

use std::sync::Arc;

use remexec_cas::{GrpcActionCache, GrpcStore, MeteredStore};
use remexec_core::client;
use remexec_core::reapi::{ActionResult, ExecuteResponse, GetActionResultRequest};
use remexec_core::{ActionCache, BlobStore, Digest, DigestFunction, Error, Result};

/// Where a client command connects.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// Server URL (grpc:// or grpcs://).
    #[arg(long, default_value = "grpc://127.0.0.1:8980", env = "REMEXEC_SERVER")]
    pub server: String,
    /// Instance name.
    #[arg(long, default_value = "", env = "REMEXEC_INSTANCE")]
    pub instance: String,
    /// TLS to a grpcs:// server.
    #[command(flatten)]
    pub tls: crate::cli::ClientTlsArgs,
    /// How long a transfer runs before a progress bar shows on a terminal.
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        env = "REMEXEC_PROGRESS_AFTER",
        hide = true
    )]
    pub progress_after: std::time::Duration,
}

impl ClientArgs {
    async fn channel(&self) -> Result<tonic::transport::Channel> {
        client::connect_with(&self.server, &self.tls.load()?).await
    }
}

/// `remexec cas …`.
#[derive(Debug, clap::Subcommand)]
pub enum CasCommand {
    /// Upload a file or a directory tree; print its digest (a directory's is its root
    /// Directory's, as an action's input root).
    Upload {
        /// The file or directory.
        path: PathBuf,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the workers holding each blob, in a cluster whose CAS is on its workers.
    Locate(crate::cluster_tools::LocateArgs),
    /// Download the directory tree DIGEST (HASH/SIZE of a Directory) into DIR.
    Download {
        /// The root Directory's digest.
        digest: String,
        /// Where to write it (created if missing; nothing is written outside it).
        dir: PathBuf,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `remexec ac …`.
#[derive(Debug, clap::Subcommand)]
pub enum AcCommand {
    /// Print the cached result of the action DIGEST (HASH/SIZE); exit 1 if it is not cached.
    Get {
        /// The Action's digest.
        digest: String,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `remexec show …`.
#[derive(Debug, clap::Subcommand)]
pub enum ShowCommand {
    /// Print an action: its Command, a summary of its inputs, and its cached result with
    /// stdout and stderr.
    Action {
        /// The Action's digest (HASH/SIZE).
        digest: String,
        /// Show this ExecuteResponse kept in the CAS (HASH/SIZE, as a failed action's
        /// message names it) instead of the cached result.
        #[arg(long, value_name = "DIGEST", env = "REMEXEC_RESPONSE")]
        response: Option<String>,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print an operation: its stage and action, and its result once done.
    Operation {
        /// The operation's name, as Execute returned it.
        name: String,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Most bytes of stdout and stderr shown.
const SHOWN_LOG: u64 = 64 * 1024;
/// Largest stdout or stderr read to show its start.
const MAX_LOG_READ: u64 = 16 << 20;

/// Runs a `show` command; returns what to print.
pub async fn show(command: ShowCommand) -> Result<String> {
    let f = DigestFunction::Sha256;
    match command {
        ShowCommand::Action {
            digest,
            response,
            client,
        } => {
            let channel = client.channel().await?;
            let store = GrpcStore::new(channel.clone());
            let ac = GrpcActionCache::new(channel);
            let response = match response {
                Some(d) => {
                    Some(kept_response(&store, &client.instance, Digest::parse(f, &d)?).await?)
                }
                None => None,
            };
            let mut out = String::new();
            let known = response.map(|r| {
                out += &describe_response(&r);
                r.result.unwrap_or_default()
            });
            let action = Digest::parse(f, &digest)?;
            out += &show_action(&store, &ac, &client.instance, action, known).await?;
            Ok(out)
        }
        ShowCommand::Operation { name, client } => {
            use remexec_proto::google::longrunning::GetOperationRequest;
            use remexec_proto::google::longrunning::operations_client::OperationsClient;
            let channel = client.channel().await?;
            let op = OperationsClient::new(channel.clone())
                .get_operation(GetOperationRequest { name: name.clone() })
                .await?
                .into_inner();
            let mut out = format!("operation {name}\n");
            let meta = op.metadata.as_ref().and_then(|m| {
                <remexec_core::reapi::ExecuteOperationMetadata as prost::Message>::decode(
                    &m.value[..],
                )
                .ok()
            });
            let action = meta.as_ref().and_then(|m| m.action_digest.clone());
            if let Some(meta) = &meta {
                let stage = remexec_core::reapi::execution_stage::Value::try_from(meta.stage)
                    .map_or("?", |s| s.as_str_name());
                let _ = writeln!(out, "stage {stage}");
            }
            let mut result = None;
            match client::operation_response(&op) {
                Ok(Some(response)) => {
                    out += &describe_response(&response);
                    result = response.result;
                }
                Ok(None) => out += "running\n",
                Err(e) => {
                    let _ = writeln!(out, "failed {e}");
                }
            }
            if let Some(action) = action {
                let action = Digest::from_proto(f, &action)?;
                let store = GrpcStore::new(channel.clone());
                let ac = GrpcActionCache::new(channel);
                out += &show_action(&store, &ac, &client.instance, action, result).await?;
            }
            Ok(out)
        }
    }
}

/// An `ExecuteResponse`'s status, message and whether it came from the cache.
pub(crate) fn describe_response(response: &ExecuteResponse) -> String {
    let mut out = String::new();
    let status = response.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "status {:?} {}",
        tonic::Code::from_i32(status.code),
        status.message
    );
    if !response.message.is_empty() {
        let _ = writeln!(out, "message {}", response.message);
    }
    let _ = writeln!(out, "cached_result {}", response.cached_result);
    out
}

/// An `ExecuteResponse` the scheduler kept in the CAS for a failed action.
pub(crate) async fn kept_response(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
) -> Result<ExecuteResponse> {
    use remexec_core::BlobStoreExt;
    let bytes = store
        .get_bytes(instance, digest, 16 << 20)
        .await?
        .ok_or_else(|| Error::NotFound(format!("response {digest} is not in the CAS")))?;
    prost::Message::decode(bytes).map_err(|e| Error::invalid(format!("response {digest}: {e}")))
}

/// An action: its Command, a summary of its inputs, and `known` or else its cached result,
/// with the start of stdout and stderr.
#[allow(deprecated)] // Command.platform: REAPI v2.0 clients still send it
pub(crate) async fn show_action(
    store: &dyn BlobStore,
    ac: &dyn ActionCache,
    instance: &str,
    digest: Digest,
    known: Option<ActionResult>,
) -> Result<String> {
    use remexec_core::BlobStoreExt;
    use remexec_core::reapi::{Action, Command};
    let message = |d: Digest, what: &'static str| async move {
        store
            .get_bytes(instance, d, 16 << 20)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{what} {d} is not in the CAS")))
    };
    let decode = |what: &str, e: prost::DecodeError| Error::invalid(format!("{what}: {e}"));
    let action: Action = prost::Message::decode(message(digest, "action").await?)
        .map_err(|e| decode("action", e))?;
    let f = digest.function();
    let command_digest = Digest::from_field(f, action.command_digest.as_ref(), "command")?;
    let command: Command = prost::Message::decode(message(command_digest, "command").await?)
        .map_err(|e| decode("command", e))?;
    let mut out = format!("action {digest}\n");
    let _ = writeln!(out, "command {:?}", command.arguments);
    for var in &command.environment_variables {
        let _ = writeln!(out, "env {}={}", var.name, var.value);
    }
    if !command.working_directory.is_empty() {
        let _ = writeln!(out, "working_directory {}", command.working_directory);
    }
    for path in &command.output_paths {
        let _ = writeln!(out, "output {path}");
    }
    for p in action
        .platform
        .iter()
        .chain(&command.platform)
        .flat_map(|p| &p.properties)
    {
        let _ = writeln!(out, "platform {}={}", p.name, p.value);
    }
    let root = Digest::from_field(f, action.input_root_digest.as_ref(), "input root")?;
    match remexec_core::merkle::fetch_tree(store, instance, root).await {
        Ok(tree) => {
            let files: usize = tree.directories.values().map(|d| d.files.len()).sum();
            let bytes: i64 = tree
                .directories
                .values()
                .flat_map(|d| &d.files)
                .filter_map(|f| f.digest.as_ref().map(|d| d.size_bytes))
                .sum();
            let _ = writeln!(
                out,
                "inputs {root}: {} directories, {files} files, {bytes} bytes (distinct)",
                tree.directories.len()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "inputs {root}: {e}");
        }
    }
    let result = match known {
        Some(result) => Some(result),
        None => ac.get(instance, digest).await?,
    };
    match result {
        Some(result) => {
            out += &describe(&result);
            out += &logs(store, instance, f, &result).await?;
        }
        None => out += "result: not cached\n",
    }
    Ok(out)
}

/// The first [`SHOWN_LOG`] bytes of a result's stdout and stderr, inlined or from the CAS.
async fn logs(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    result: &ActionResult,
) -> Result<String> {
    use remexec_core::BlobStoreExt;
    let mut out = String::new();
    for (name, raw, d) in [
        ("stdout", &result.stdout_raw, result.stdout_digest.as_ref()),
        ("stderr", &result.stderr_raw, result.stderr_digest.as_ref()),
    ] {
        let text = match d {
            _ if !raw.is_empty() => raw.to_vec(),
            Some(d) if d.size_bytes > 0 => {
                let d = Digest::from_proto(f, d)?;
                if d.size() > MAX_LOG_READ {
                    format!("({} bytes, not shown)", d.size()).into_bytes()
                } else {
                    let shown = usize::try_from(d.size().min(SHOWN_LOG)).unwrap_or(0);
                    let bytes = store.get_bytes(instance, d, d.size()).await?;
                    bytes.map_or_else(Vec::new, |b| b.get(..shown).unwrap_or(&b).to_vec())
                }
            }
            _ => Vec::new(),
        };
        if !text.is_empty() {
            let text = String::from_utf8_lossy(&text);
            let _ = writeln!(out, "--- {name}\n{}", text.trim_end());
        }
    }
    Ok(out)
}

/// The progress of a transfer on stderr: bytes and rate, shown once it has taken a moment
/// (`--progress-after`, 1 s) and only on a terminal. Cleared when dropped.
struct Progress(indicatif::ProgressBar);

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A store over `channel` whose transfers move a progress bar (`what`: "uploaded").
fn with_progress(
    channel: tonic::transport::Channel,
    what: &str,
    after: std::time::Duration,
) -> (MeteredStore, Progress) {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {{bytes}} {what} ({{bytes_per_sec}}), {{elapsed}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let shown = bar.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if !shown.is_finished() {
            shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown.enable_steady_tick(std::time::Duration::from_millis(100));
            shown.tick();
        }
    });
    let moved = bar.clone();
    let store =
        MeteredStore::with_meter(Arc::new(GrpcStore::new(channel)), move |_, n| moved.inc(n));
    (store, Progress(bar))
}

/// Runs a `cas` command; returns what to print.
pub async fn cas(command: CasCommand) -> Result<String> {
    let f = DigestFunction::Sha256;
    match command {
        CasCommand::Upload { path, client } => {
            let (store, _bar) =
                with_progress(client.channel().await?, "uploaded", client.progress_after);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let digest = if meta.is_dir() {
                client::upload_directory(&store, &client.instance, f, &path)
                    .await?
                    .0
            } else {
                client::upload_file(&store, &client.instance, f, &path).await?
            };
            Ok(format!("{digest}\n"))
        }
        CasCommand::Download {
            digest,
            dir,
            client,
        } => {
            let root = Digest::parse(f, &digest)?;
            let (store, _bar) =
                with_progress(client.channel().await?, "downloaded", client.progress_after);
            client::download_directory(&store, &client.instance, root, &dir).await?;
            Ok(String::new())
        }
        CasCommand::Locate(args) => crate::cluster_tools::locate(args).await,
    }
}

/// Runs an `ac` command; returns what to print, or `None` for a miss.
pub async fn ac(command: AcCommand) -> Result<Option<String>> {
    let AcCommand::Get { digest, client } = command;
    let action = Digest::parse(DigestFunction::Sha256, &digest)?;
    let request = GetActionResultRequest {
        instance_name: client.instance.clone(),
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    match client::action_cache_client(client.channel().await?)
        .get_action_result(request)
        .await
    {
        Ok(result) => Ok(Some(describe(&result.into_inner()))),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

fn digest_text(d: Option<&remexec_core::reapi::Digest>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{}/{}", d.hash, d.size_bytes))
}

/// A readable summary of a result: exit code, outputs with their digests, logs, where and how
/// long it ran.
#[allow(deprecated)] // the v2.0 *_symlinks fields
pub fn describe(result: &ActionResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "exit_code: {}", result.exit_code);
    for file in &result.output_files {
        let x = if file.is_executable {
            " (executable)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "file {} {}{x}",
            file.path,
            digest_text(file.digest.as_ref())
        );
    }
    for dir in &result.output_directories {
        let _ = writeln!(
            out,
            "directory {} tree {}",
            dir.path,
            digest_text(dir.tree_digest.as_ref())
        );
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        let _ = writeln!(out, "symlink {} -> {}", link.path, link.target);
    }
    let _ = writeln!(out, "stdout {}", digest_text(result.stdout_digest.as_ref()));
    let _ = writeln!(out, "stderr {}", digest_text(result.stderr_digest.as_ref()));
    if let Some(meta) = &result.execution_metadata {
        let _ = writeln!(out, "worker {}", meta.worker);
        let span =
            |a: &Option<remexec_core::apis::google::protobuf::Timestamp>,
             b: &Option<remexec_core::apis::google::protobuf::Timestamp>| {
                let secs = |t: &remexec_core::apis::google::protobuf::Timestamp| {
                    t.seconds as f64 + f64::from(t.nanos) / 1e9
                };
                match (a, b) {
                    (Some(a), Some(b)) => format!("{:.3}s", secs(b) - secs(a)),
                    _ => "-".into(),
                }
            };
        let _ = writeln!(
            out,
            "timings queued {} fetch {} run {} upload {}",
            span(&meta.queued_timestamp, &meta.worker_start_timestamp),
            span(
                &meta.input_fetch_start_timestamp,
                &meta.input_fetch_completed_timestamp
            ),
            span(
                &meta.execution_start_timestamp,
                &meta.execution_completed_timestamp
            ),
            span(
                &meta.output_upload_start_timestamp,
                &meta.output_upload_completed_timestamp
            ),
        );
    }
    out
}
