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
use remexec_core::fs::{create_dirs_beneath, create_file_beneath};
use remexec_core::merkle::{
    InputTree, TreeLimits, encode_message, validate_action_result, validate_directory,
    validate_symlink_target,
};
use remexec_core::{BlobStore, BlobStoreExt, Digest, DigestFunction, Error, ReadRange, Result};
use tokio::io::AsyncWriteExt;

/// Largest output `Tree` blob downloaded.
const MAX_TREE_SIZE: u64 = 256 << 20;

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

/// One thing to create under the output directory, relative to it.
enum Entry {
    Dir(String),
    File(String, Digest, bool),
    Symlink(String, String),
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Fetches, decodes and validates an output directory's `Tree`, and lists what it holds at
/// `base`: every entry name valid, every symlink within the policy, the tree as laid out within
/// the input-tree limits.
async fn tree_entries(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    digest: Digest,
    base: &str,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let bytes = store
        .get_bytes(instance, digest, MAX_TREE_SIZE)
        .await?
        .ok_or_else(|| Error::NotFound(format!("tree {digest} is not in the CAS")))?;
    let tree = Tree::decode(bytes).map_err(|e| Error::invalid(format!("tree {digest}: {e}")))?;
    let root = tree.root.unwrap_or_default();
    let (root_digest, _) = encode_message(f, &root);
    let mut directories: HashMap<Digest, Directory> = HashMap::new();
    for dir in tree.children.into_iter().chain([root]) {
        validate_directory(f, &dir).map_err(|e| Error::invalid(format!("tree {digest}: {e}")))?;
        directories.insert(encode_message(f, &dir).0, dir);
    }
    let tree = InputTree {
        root: root_digest,
        directories,
    };
    for dir in tree.directories.values() {
        for sub in &dir.directories {
            tree.directory(&Digest::from_field(f, sub.digest.as_ref(), "directory")?)
                .map_err(|_| Error::invalid(format!("tree {digest} lacks a directory it names")))?;
        }
    }
    tree.check_limits(TreeLimits::default())?;
    let mut stack = vec![(base.to_string(), root_digest)];
    while let Some((path, dir_digest)) = stack.pop() {
        let dir = tree.directory(&dir_digest)?;
        out.push(Entry::Dir(path.clone()));
        for file in &dir.files {
            let d = Digest::from_field(f, file.digest.as_ref(), "file")?;
            out.push(Entry::File(join(&path, &file.name), d, file.is_executable));
        }
        for link in &dir.symlinks {
            let at = join(&path, &link.name);
            validate_symlink_target(&at, &link.target)?;
            out.push(Entry::Symlink(at, link.target.clone()));
        }
        for sub in &dir.directories {
            let d = Digest::from_field(f, sub.digest.as_ref(), "directory")?;
            stack.push((join(&path, &sub.name), d));
        }
    }
    Ok(())
}

/// Streams a blob into a new file at `rel` under `out`, checking its digest; a file with the
/// wrong content is deleted.
async fn write_blob(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    executable: bool,
    out: &Path,
    rel: &str,
) -> Result<()> {
    use std::io::Write;
    let mut file = create_file_beneath(out, rel)?;
    let path = out.join(rel);
    let mut hasher = digest.function().hasher();
    if !digest.is_empty_blob() {
        let mut stream = store
            .get(instance, digest, ReadRange::ALL)
            .await?
            .ok_or_else(|| Error::NotFound(format!("output {digest} is not in the CAS")))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
    }
    let got = hasher.finish();
    if got != digest {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(Error::invalid(format!(
            "output {rel:?}: the CAS returned {got}, not {digest}"
        )));
    }
    let mode = if executable { 0o755 } else { 0o644 };
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting permissions", e))
}

/// Writes an action's outputs under `out`, never outside it: every path, entry name and
/// symlink is validated before anything is written, directories and files are created without
/// passing through a symlink, and symlinks are made last, so nothing is written through one.
#[allow(deprecated)] // the v2.0 *_symlinks fields
async fn download(
    store: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    result: &remexec_core::reapi::ActionResult,
    out: &Path,
) -> Result<()> {
    validate_action_result(f, result)?;
    let mut entries = Vec::new();
    for file in &result.output_files {
        let d = Digest::from_field(f, file.digest.as_ref(), "output file")?;
        entries.push(Entry::File(file.path.clone(), d, file.is_executable));
    }
    for dir in &result.output_directories {
        let d = Digest::from_field(f, dir.tree_digest.as_ref(), "tree")?;
        tree_entries(store, instance, f, d, &dir.path, &mut entries).await?;
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
    {
        entries.push(Entry::Symlink(link.path.clone(), link.target.clone()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    for entry in &entries {
        match entry {
            Entry::Dir(rel) => {
                create_dirs_beneath(out, rel)?;
            }
            Entry::File(rel, digest, executable) => {
                write_blob(store, instance, *digest, *executable, out, rel).await?;
            }
            Entry::Symlink(..) => {}
        }
    }
    let mut made = std::collections::HashSet::new();
    for entry in &entries {
        let Entry::Symlink(rel, target) = entry else {
            continue;
        };
        if !made.insert(rel) {
            continue;
        }
        // Replaces a file or symlink left there before; a directory there is a conflict.
        drop(create_file_beneath(out, rel)?);
        let path = out.join(rel);
        std::fs::remove_file(&path).map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| Error::io(format!("symlinking {}", path.display()), e))?;
    }
    Ok(())
}
