//! `remexec cas upload|download` and `remexec ac get`: the CAS and the Action Cache of any REAPI
//! server from the command line, over the client library.

use std::fmt::Write as _;
use std::path::PathBuf;

use std::sync::Arc;

pub use crate::args::ClientArgs;
use remexec_cas::{GrpcActionCache, GrpcStore, MeteredStore};
use remexec_core::client;
use remexec_core::client::show;
use remexec_core::reapi::GetActionResultRequest;
use remexec_core::{Digest, DigestFunction, Error, Result};

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
                Some(d) => Some(
                    show::kept_response(&store, &client.instance, Digest::parse(f, &d)?).await?,
                ),
                None => None,
            };
            let mut out = String::new();
            let known = response.map(|r| {
                out += &show::describe_response(&r);
                r.result.unwrap_or_default()
            });
            let action = Digest::parse(f, &digest)?;
            out += &show::show_action(&store, &ac, &client.instance, action, known).await?;
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
                    out += &show::describe_response(&response);
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
                out += &show::show_action(&store, &ac, &client.instance, action, result).await?;
            }
            Ok(out)
        }
    }
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
        Ok(result) => Ok(Some(show::describe(&result.into_inner()))),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}
