//! `remexec cas upload|download` and `remexec ac get`: the CAS and the Action Cache of any REAPI
//! server from the command line, over the client library.

use std::fmt::Write as _;
use std::path::PathBuf;

use remexec_cas::GrpcStore;
use remexec_core::client;
use remexec_core::reapi::{ActionResult, GetActionResultRequest};
use remexec_core::{Digest, DigestFunction, Error, Result};

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

/// Runs a `cas` command; returns what to print.
pub async fn cas(command: CasCommand) -> Result<String> {
    let f = DigestFunction::Sha256;
    match command {
        CasCommand::Upload { path, client } => {
            let store = GrpcStore::new(client.channel().await?);
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
            let store = GrpcStore::new(client.channel().await?);
            client::download_directory(&store, &client.instance, root, &dir).await?;
            Ok(String::new())
        }
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
