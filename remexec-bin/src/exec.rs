//! `remexec exec`: run one command remotely, as a handy client for users and tests.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use remexec_cas::GrpcStore;
use remexec_core::apis::google::longrunning::operation;
use remexec_core::reapi::{
    Action, Command, Directory, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse,
    ExecutionPolicy, Platform, Tree, command::EnvironmentVariable,
    execution_client::ExecutionClient, execution_stage, platform,
};
use remexec_core::{
    BlobStore, BlobStoreExt, Digest, DigestFunction, Error, ReadRange, Result,
    merkle::encode_message,
};
use tokio::io::AsyncWriteExt;

use crate::cli::parse_property;

/// Flags of `remexec exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Server URL.
    #[arg(long, default_value = "grpc://127.0.0.1:8980")]
    pub server: String,
    /// Instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Local directory uploaded as the input root [default: an empty input root].
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output path to collect, relative to the working directory (repeatable).
    #[arg(long = "output")]
    pub outputs: Vec<String>,
    /// Where downloaded outputs go.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Working directory inside the input root.
    #[arg(long, default_value = "")]
    pub workdir: String,
    /// Platform property NAME=VALUE the executor must offer (repeatable).
    #[arg(long = "platform", value_parser = parse_property)]
    pub platform: Vec<(String, String)>,
    /// Environment variable NAME=VALUE (repeatable) [default: PATH=/usr/local/bin:/usr/bin:/bin].
    #[arg(long = "env", value_parser = parse_property)]
    pub env: Vec<(String, String)>,
    /// Timeout in seconds (0: the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Priority; lower runs sooner.
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    /// Neither look up nor store the result in the Action Cache.
    #[arg(long)]
    pub no_cache: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns the exit code to exit with.
pub async fn run(args: ExecArgs) -> std::result::Result<u8, String> {
    execute(args).await.map_err(|e| e.to_string())
}

async fn execute(args: ExecArgs) -> Result<u8> {
    let f = DigestFunction::Sha256;
    let url = args.server.replacen("grpc://", "http://", 1);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| Error::invalid(format!("server URL {url:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {e}")))?;
    let store: Arc<dyn BlobStore> = Arc::new(GrpcStore::new(channel.clone()));
    let instance = args.instance.as_str();
    let root = match &args.input {
        Some(dir) => {
            remexec_worker::upload_directory(store.as_ref(), instance, f, dir)
                .await?
                .0
        }
        None => encode_message(f, &Directory::default()).0,
    };
    let mut env = if args.env.is_empty() {
        vec![(
            "PATH".to_string(),
            "/usr/local/bin:/usr/bin:/bin".to_string(),
        )]
    } else {
        args.env.clone()
    };
    env.sort();
    let mut outputs = args.outputs.clone();
    outputs.sort();
    outputs.dedup();
    let mut properties: Vec<platform::Property> = args
        .platform
        .iter()
        .map(|(n, v)| platform::Property {
            name: n.clone(),
            value: v.clone(),
        })
        .collect();
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    let platform = (!properties.is_empty()).then_some(Platform { properties });
    #[allow(deprecated)] // Command.platform: for servers older than REAPI v2.2
    let command = Command {
        arguments: args.command.clone(),
        environment_variables: env
            .into_iter()
            .map(|(name, value)| EnvironmentVariable { name, value })
            .collect(),
        output_paths: outputs,
        working_directory: args.workdir.clone(),
        platform: platform.clone(),
        ..Default::default()
    };
    let (command_digest, command_bytes) = encode_message(f, &command);
    store
        .put_bytes(instance, command_digest, command_bytes)
        .await?;
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.to_proto()),
        timeout: (args.timeout > 0).then_some(remexec_core::apis::google::protobuf::Duration {
            seconds: args.timeout as i64,
            nanos: 0,
        }),
        do_not_cache: args.no_cache,
        platform,
        ..Default::default()
    };
    let (action_digest, action_bytes) = encode_message(f, &action);
    store
        .put_bytes(instance, action_digest, action_bytes)
        .await?;
    let request = ExecuteRequest {
        instance_name: args.instance.clone(),
        skip_cache_lookup: args.no_cache,
        action_digest: Some(action_digest.to_proto()),
        execution_policy: Some(ExecutionPolicy {
            priority: args.priority,
        }),
        digest_function: f.to_proto(),
        ..Default::default()
    };
    let mut stream = ExecutionClient::new(channel)
        .execute(request)
        .await?
        .into_inner();
    let mut response = None;
    while let Some(op) = stream.next().await {
        let op = op?;
        if let Some(meta) = op
            .metadata
            .as_ref()
            .and_then(|m| ExecuteOperationMetadata::decode(&m.value[..]).ok())
        {
            let stage =
                execution_stage::Value::try_from(meta.stage).map_or("?", |s| s.as_str_name());
            eprintln!("remexec exec: {} {stage}", op.name);
        }
        if let Some(operation::Result::Response(any)) = op.result {
            response = Some(
                ExecuteResponse::decode(&any.value[..])
                    .map_err(|e| Error::Internal(format!("bad ExecuteResponse: {e}")))?,
            );
        }
    }
    let response = response
        .ok_or_else(|| Error::Unavailable("the operation ended without a response".into()))?;
    let status = response.status.unwrap_or_default();
    if status.code != 0 {
        eprintln!(
            "remexec exec: {}: {}",
            tonic::Code::from_i32(status.code),
            status.message
        );
    }
    let Some(result) = response.result else {
        return Ok(1);
    };
    if response.cached_result {
        eprintln!("remexec exec: result from the Action Cache");
    } else if let Some(meta) = &result.execution_metadata {
        eprintln!("remexec exec: ran on worker {}", meta.worker);
    }
    download(store.as_ref(), instance, f, &result, &args.output_dir).await?;
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

async fn write_blob(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    executable: bool,
    path: &Path,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    if !digest.is_empty_blob() {
        let mut stream = store
            .get(instance, digest, ReadRange::ALL)
            .await?
            .ok_or_else(|| Error::NotFound(format!("output {digest} is not in the CAS")))?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?)
                .await
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
    }
    file.flush()
        .await
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting permissions", e))
}

fn materialize<'a>(
    store: &'a dyn BlobStore,
    instance: &'a str,
    f: DigestFunction,
    dir: &'a Directory,
    children: &'a HashMap<Digest, Directory>,
    path: PathBuf,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        for file in &dir.files {
            write_blob(
                store,
                instance,
                Digest::from_field(f, file.digest.as_ref(), "file")?,
                file.is_executable,
                &path.join(&file.name),
            )
            .await?;
        }
        for link in &dir.symlinks {
            std::os::unix::fs::symlink(&link.target, path.join(&link.name))
                .map_err(|e| Error::io("symlink", e))?;
        }
        for sub in &dir.directories {
            let digest = Digest::from_field(f, sub.digest.as_ref(), "directory")?;
            let child = children
                .get(&digest)
                .ok_or_else(|| Error::invalid(format!("tree lacks directory {digest}")))?;
            materialize(store, instance, f, child, children, path.join(&sub.name)).await?;
        }
        Ok(())
    })
}

#[allow(deprecated)] // the v2.0 *_symlinks fields
async fn download(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    result: &remexec_core::reapi::ActionResult,
    out: &Path,
) -> Result<()> {
    for file in &result.output_files {
        write_blob(
            store,
            instance,
            Digest::from_field(f, file.digest.as_ref(), "output file")?,
            file.is_executable,
            &out.join(&file.path),
        )
        .await?;
    }
    for dir in &result.output_directories {
        let digest = Digest::from_field(f, dir.tree_digest.as_ref(), "tree")?;
        let bytes = store
            .get_bytes(instance, digest, 256 << 20)
            .await?
            .ok_or_else(|| Error::NotFound(format!("tree {digest} is not in the CAS")))?;
        let tree =
            Tree::decode(bytes).map_err(|e| Error::invalid(format!("tree {digest}: {e}")))?;
        let root = tree.root.unwrap_or_default();
        let children: HashMap<Digest, Directory> = tree
            .children
            .into_iter()
            .map(|c| (encode_message(f, &c).0, c))
            .collect();
        materialize(store, instance, f, &root, &children, out.join(&dir.path)).await?;
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        let path = out.join(&link.path);
        if path.symlink_metadata().is_err() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("creating a directory", e))?;
            }
            std::os::unix::fs::symlink(&link.target, &path).map_err(|e| Error::io("symlink", e))?;
        }
    }
    Ok(())
}
