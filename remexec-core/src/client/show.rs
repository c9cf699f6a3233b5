//! Readable summaries of what a server holds, for `remexec show`, `remexec ac get` and the
//! scheduler's status page: an action with its Command, inputs, result and logs, an
//! `ExecuteResponse`, an `ActionResult`.

use std::fmt::Write as _;

use crate::reapi::{ActionResult, ExecuteResponse};
use crate::{ActionCache, BlobStore, BlobStoreExt, Digest, DigestFunction, Error, Result};

/// Most bytes of stdout and stderr shown.
const SHOWN_LOG: u64 = 64 * 1024;
/// Largest stdout or stderr read to show its start.
const MAX_LOG_READ: u64 = 16 << 20;

/// An `ExecuteResponse`'s status, message and whether it came from the cache.
pub fn describe_response(response: &ExecuteResponse) -> String {
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
pub async fn kept_response(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
) -> Result<ExecuteResponse> {
    let bytes = store
        .get_bytes(instance, digest, 16 << 20)
        .await?
        .ok_or_else(|| Error::NotFound(format!("response {digest} is not in the CAS").into()))?;
    prost::Message::decode(bytes).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(format!("response {digest}"), e))
    })
}

/// An action: its Command, a summary of its inputs, and `known` or else its cached result,
/// with the start of stdout and stderr.
#[allow(deprecated)] // Command.platform: REAPI v2.0 clients still send it
pub async fn show_action(
    store: &dyn BlobStore,
    ac: &dyn ActionCache,
    instance: &str,
    digest: Digest,
    known: Option<ActionResult>,
) -> Result<String> {
    use crate::reapi::{Action, Command};
    let message = |d: Digest, what: &'static str| async move {
        store
            .get_bytes(instance, d, 16 << 20)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{what} {d} is not in the CAS").into()))
    };
    let decode = |what: &str, e: prost::DecodeError| {
        Error::InvalidArgument(crate::Message::caused_by(what, e))
    };
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
    match crate::merkle::fetch_tree(store, instance, root).await {
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

fn digest_text(d: Option<&crate::reapi::Digest>) -> String {
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
        let span = |a: &Option<crate::apis::google::protobuf::Timestamp>,
                    b: &Option<crate::apis::google::protobuf::Timestamp>| {
            let secs = |t: &crate::apis::google::protobuf::Timestamp| {
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
        if let Some(usage) = crate::usage::ActionUsage::of(meta) {
            out += &usage.describe();
        }
    }
    out
}
