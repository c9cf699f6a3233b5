//! `remexec exec`: run one command remotely, as a handy client for users and tests. Argument
//! parsing and printing only: the work is done by [`remexec_core::client`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remexec_cas::GrpcStore;
use remexec_core::client::{self, ActionBuilder, FollowOptions};
use remexec_core::merkle::encode_message;
use remexec_core::reapi::{Directory, ExecuteRequest, ExecutionPolicy, execution_stage};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};
use tokio::io::AsyncWriteExt;

use crate::args::parse_property;

/// Flags of `remexec exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Server URL.
    #[arg(long, default_value = "grpc://127.0.0.1:8980", env = "REMEXEC_SERVER")]
    pub server: String,
    /// TLS to a grpcs:// server.
    #[command(flatten)]
    pub tls: crate::args::ClientTlsArgs,
    /// Instance name.
    #[arg(long, default_value = "", env = "REMEXEC_INSTANCE")]
    pub instance: String,
    /// Local directory uploaded as the input root [default: an empty input root].
    #[arg(long, env = "REMEXEC_INPUT")]
    pub input: Option<PathBuf>,
    /// Output path to collect, relative to the working directory (repeatable).
    #[arg(long = "output", env = "REMEXEC_OUTPUT")]
    pub outputs: Vec<String>,
    /// Where downloaded outputs go.
    #[arg(long, default_value = ".", env = "REMEXEC_OUTPUT_DIR")]
    pub output_dir: PathBuf,
    /// Working directory inside the input root.
    #[arg(long, default_value = "", env = "REMEXEC_WORKDIR")]
    pub workdir: String,
    /// Platform property NAME=VALUE the executor must offer (repeatable).
    #[arg(long = "platform", value_parser = parse_property, env = "REMEXEC_PLATFORM")]
    pub platform: Vec<(String, String)>,
    /// Environment variable NAME=VALUE (repeatable) [default: PATH=/usr/local/bin:/usr/bin:/bin].
    #[arg(long = "env", value_parser = parse_property, env = "REMEXEC_ENV")]
    pub env: Vec<(String, String)>,
    /// Timeout in seconds (0: the server's maximum).
    #[arg(long, default_value_t = 0, env = "REMEXEC_TIMEOUT")]
    pub timeout: u64,
    /// Priority; lower runs sooner.
    #[arg(long, default_value_t = 0, env = "REMEXEC_PRIORITY")]
    pub priority: i32,
    /// The invocation id sent in the request's RequestMetadata (it appears in the server's
    /// traces and status page) [default: a new UUID].
    #[arg(long, value_name = "ID", env = "REMEXEC_INVOCATION_ID")]
    pub invocation_id: Option<String>,
    /// Neither look up nor store the result in the Action Cache.
    #[arg(long, env = "REMEXEC_NO_CACHE")]
    pub no_cache: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The action `args` describe.
fn action(args: &ExecArgs) -> ActionBuilder {
    let mut action = ActionBuilder::new(args.command.clone())
        .working_directory(args.workdir.clone())
        .do_not_cache(args.no_cache);
    action.env = if args.env.is_empty() {
        vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())]
    } else {
        args.env.clone()
    };
    action.output_paths = args.outputs.clone();
    action.platform = args.platform.clone();
    action.timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    action
}

/// Runs the command; returns the exit code to exit with.
pub async fn run(args: ExecArgs) -> Result<u8> {
    let f = DigestFunction::Sha256;
    let channel = client::connect_with(&args.server, &args.tls.load()?).await?;
    let store: Arc<dyn BlobStore> = Arc::new(GrpcStore::new(channel.clone()));
    let instance = args.instance.as_str();
    let root = match &args.input {
        Some(dir) => {
            client::upload_directory(store.as_ref(), instance, f, dir)
                .await?
                .0
        }
        None => encode_message(f, &Directory::default()).0,
    };
    let built = action(&args).build(f, root);
    built.upload(store.as_ref(), instance).await?;
    // The digest `remexec ac get` takes.
    eprintln!("remexec exec: action {}", built.action_digest);
    let request = ExecuteRequest {
        instance_name: args.instance.clone(),
        skip_cache_lookup: args.no_cache,
        action_digest: Some(built.action_digest.to_proto()),
        execution_policy: Some(ExecutionPolicy {
            priority: args.priority,
        }),
        digest_function: f.to_proto(),
        ..Default::default()
    };
    let mut follow = FollowOptions::default();
    follow.metadata = Some(remexec_core::reapi::RequestMetadata {
        tool_details: Some(remexec_core::reapi::ToolDetails {
            tool_name: "remexec".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
        }),
        tool_invocation_id: args
            .invocation_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        action_id: built.action_digest.to_string(),
        action_mnemonic: "RemexecExec".into(),
        ..Default::default()
    });
    let response = client::execute(channel, request, &follow, |name, meta| {
        let stage = execution_stage::Value::try_from(meta.stage).map_or("?", |s| s.as_str_name());
        eprintln!("remexec exec: {name} {stage}");
    })
    .await?;
    let status = response.status.unwrap_or_default();
    if status.code != 0 {
        eprintln!(
            "remexec exec: {}: {}",
            tonic::Code::from_i32(status.code),
            status.message
        );
    }
    // The server's note for people: for a failure, where its details are kept.
    for line in response.message.lines() {
        eprintln!("remexec exec: {line}");
    }
    let Some(result) = response.result else {
        return Ok(1);
    };
    if response.cached_result {
        eprintln!("remexec exec: result from the Action Cache");
    } else if let Some(meta) = &result.execution_metadata {
        eprintln!("remexec exec: ran on worker {}", meta.worker);
    }
    client::download_outputs(store.as_ref(), instance, f, &result, &args.output_dir).await?;
    for (digest, raw, mut out) in [
        (
            &result.stdout_digest,
            &result.stdout_raw,
            Box::new(tokio::io::stdout()) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        ),
        (
            &result.stderr_digest,
            &result.stderr_raw,
            Box::new(tokio::io::stderr()),
        ),
    ] {
        let bytes = match digest {
            Some(d) if raw.is_empty() => store
                .get_bytes(instance, Digest::from_proto(f, d)?, 64 << 20)
                .await?
                .unwrap_or_default()
                .to_vec(),
            _ => raw.clone(),
        };
        out.write_all(&bytes)
            .await
            .map_err(|e| Error::io("writing output", e))?;
        out.flush()
            .await
            .map_err(|e| Error::io("writing output", e))?;
    }
    Ok(if status.code != 0 {
        1
    } else {
        u8::try_from(result.exit_code).unwrap_or(1)
    })
}
