//! The action page (`/action/HASH/SIZE`), the input tree browser (`/tree/HASH/SIZE`) and
//! downloads from the CAS (`/blob/HASH/SIZE`), served by the status pages
//! ([`crate::pages::pages`]). Everything shown comes from the CAS and the client and is
//! escaped; logs are cut to [`SHOWN_LOG`](crate::html::SHOWN_LOG) bytes, each with a
//! link to the whole.

use std::fmt::Write as _;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as esc};
use remexec_core::reapi::{Action, ActionResult, Command, ExecuteResponse};
use remexec_core::{BlobStore, BlobStoreExt, Digest, Error, Result};

use crate::html::{blob_link, log_pane_bytes, when};

/// Largest Action or Command read.
const MAX_MESSAGE: u64 = 16 << 20;

/// What an action page shows besides the action itself.
#[derive(Debug, Default)]
pub struct PageContext {
    /// The response the scheduler kept for a failure.
    pub response: Option<ExecuteResponse>,
    /// The result, from the response or the Action Cache.
    pub result: Option<ActionResult>,
    /// The invocation it belongs to, if one is known and kept.
    pub invocation: Option<String>,
    /// What that invocation says of it: its mnemonic and target.
    pub label: Option<(String, String)>,
}

async fn message<M: prost::Message + Default>(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    what: &str,
) -> Result<M> {
    let bytes = store
        .get_bytes(instance, digest, MAX_MESSAGE)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{what} {digest} is not in the CAS").into()))?;
    M::decode(bytes).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("{what} {digest}"),
            e,
        ))
    })
}

/// A link to browse a directory.
fn tree_link(instance: &str, digest: &Digest, path: &str, text: &str) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let href = format!(
        "/tree/{digest}?instance={}&path={}",
        enc(instance),
        enc(path)
    );
    format!("<a href=\"{}\">{}</a>", attr(&href), esc(text))
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(name),
        esc(value)
    );
}

/// The action page.
#[allow(deprecated)] // Command.platform: REAPI v2.0 clients still send it
pub async fn action_page(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    context: PageContext,
) -> Result<String> {
    let action: Action = message(store, instance, digest, "action").await?;
    let f = digest.function();
    let command_digest = Digest::from_field(f, action.command_digest.as_ref(), "command")?;
    let command: Command = message(store, instance, command_digest, "command").await?;
    let full = digest.to_string();
    let short = full.get(..12).unwrap_or(&full);
    let mut out = crate::html::head(&format!("remexec action {short}"), None);
    let _ = writeln!(
        out,
        "<h1>Action <code>{}</code></h1>\n<p><a href=\"/\">status</a>",
        esc(short)
    );
    if let Some(id) = &context.invocation {
        let _ = write!(
            out,
            " &middot; invocation <a id=\"invocation\" href=\"{}\"><code>{}</code></a>",
            attr(&crate::html::invocation_path(id)),
            esc(id)
        );
    }
    out += "</p>\n<table id=\"metadata\" class=\"meta\">\n";
    if let Some((mnemonic, target)) = &context.label {
        row(&mut out, "mnemonic", mnemonic);
        row(&mut out, "target", target);
    }
    row(&mut out, "digest", &digest.to_string());
    row(&mut out, "instance", instance);
    if let Some(r) = &context.response {
        let status = r.status.clone().unwrap_or_default();
        let code = format!("{:?}", tonic::Code::from_i32(status.code));
        row(&mut out, "status", &format!("{code} {}", status.message));
        row(&mut out, "cached result", &r.cached_result.to_string());
    }
    if let Some(timeout) = &action.timeout {
        row(&mut out, "timeout", &format!("{}s", timeout.seconds));
    }
    row(&mut out, "do not cache", &action.do_not_cache.to_string());
    let platform: Vec<String> = action
        .platform
        .iter()
        .chain(&command.platform)
        .flat_map(|p| &p.properties)
        .map(|p| format!("{}={}", p.name, p.value))
        .collect();
    row(&mut out, "platform", &platform.join(" "));
    if let Some(result) = &context.result {
        result_rows(&mut out, result);
    } else {
        row(&mut out, "result", "not cached");
    }
    out += "</table>\n";
    command_section(&mut out, &command);
    let root = Digest::from_field(f, action.input_root_digest.as_ref(), "input root")?;
    let _ = writeln!(
        out,
        "<h2>Inputs</h2>\n<p>{} ({})</p>",
        tree_link(instance, &root, "", "browse the input tree"),
        esc(&root.to_string())
    );
    if let Some(result) = &context.result {
        outputs(&mut out, store, instance, f, result).await?;
    }
    out += "</body></html>\n";
    Ok(out)
}

fn result_rows(out: &mut String, result: &ActionResult) {
    row(out, "exit code", &result.exit_code.to_string());
    let Some(meta) = &result.execution_metadata else {
        return;
    };
    row(out, "worker", &meta.worker);
    let queued = meta.queued_timestamp.as_ref();
    if let Some(t) = queued {
        let ms = crate::events::invocation::ms_of(t.seconds, t.nanos);
        row(out, "queued at", &when(ms));
    }
    for (phase, start, end) in remexec_core::observe::phases(meta) {
        let took = end.duration_since(start).unwrap_or_default();
        row(
            out,
            &phase.as_str().replace('_', " "),
            &format!("{:.3}s", took.as_secs_f64()),
        );
    }
    if let Some(usage) = remexec_core::usage::ActionUsage::of(meta) {
        for line in usage.describe().lines() {
            if let Some((name, value)) = line.split_once(' ') {
                row(out, name, value);
            }
        }
    }
}

#[allow(deprecated)] // output_files and output_directories: REAPI before v2.1
fn command_section(out: &mut String, command: &Command) {
    *out += "<h2>Command</h2>\n<table id=\"arguments\"><tr><th>#</th><th>argument</th></tr>\n";
    for (i, arg) in command.arguments.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td>{i}</td><td><code>{}</code></td></tr>",
            esc(arg)
        );
    }
    *out += "</table>\n";
    if !command.environment_variables.is_empty() {
        *out += "<table id=\"environment\"><tr><th>variable</th><th>value</th></tr>\n";
        for v in &command.environment_variables {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                esc(&v.name),
                esc(&v.value)
            );
        }
        *out += "</table>\n";
    }
    if !command.working_directory.is_empty() {
        let _ = writeln!(
            out,
            "<p>working directory <code>{}</code></p>",
            esc(&command.working_directory)
        );
    }
    let outputs: Vec<&String> = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
        .collect();
    if !outputs.is_empty() {
        let list: Vec<String> = outputs.iter().map(|p| esc(p).to_string()).collect();
        let _ = writeln!(
            out,
            "<p>declared outputs: <code>{}</code></p>",
            list.join("</code>, <code>")
        );
    }
}

#[allow(deprecated)] // output_file_symlinks: older clients read them
async fn outputs(
    out: &mut String,
    store: &dyn BlobStore,
    instance: &str,
    f: remexec_core::DigestFunction,
    result: &ActionResult,
) -> Result<()> {
    *out += "<h2>Outputs</h2>\n<table id=\"outputs\"><tr><th>path</th><th>size</th><th>download</th></tr>\n";
    for file in &result.output_files {
        let d = Digest::from_field(f, file.digest.as_ref(), "output file")?;
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let _ = writeln!(
            out,
            "<tr class=\"output\"><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&file.path),
            if file.is_executable {
                " (executable)"
            } else {
                ""
            },
            crate::html::bytes(d.size()),
            blob_link(instance, &d, name, "download")
        );
    }
    for dir in &result.output_directories {
        let d = Digest::from_field(f, dir.tree_digest.as_ref(), "output directory")?;
        let _ = writeln!(
            out,
            "<tr class=\"output\"><td><code>{}/</code> (a Tree)</td><td>{}</td><td>{}</td></tr>",
            esc(&dir.path),
            crate::html::bytes(d.size()),
            blob_link(instance, &d, "tree.pb", "download the Tree")
        );
    }
    for link in result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
    {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code> &rarr; <code>{}</code></td><td></td><td></td></tr>",
            esc(&link.path),
            esc(&link.target)
        );
    }
    *out += "</table>\n";
    for (name, raw, d) in [
        ("stdout", &result.stdout_raw, result.stdout_digest.as_ref()),
        ("stderr", &result.stderr_raw, result.stderr_digest.as_ref()),
    ] {
        let pane = match d {
            _ if !raw.is_empty() => log_pane_bytes(raw),
            Some(d) if d.size_bytes > 0 => {
                let d = Digest::from_proto(f, d)?;
                crate::html::log_pane(store, instance, d, name).await
            }
            _ => "<p class=\"note\">empty</p>\n".to_string(),
        };
        let _ = write!(out, "<h3 id=\"{name}\">{name}</h3>\n{pane}");
    }
    Ok(())
}

/// The page of one directory of an input tree.
pub async fn tree_page(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    path: &str,
) -> Result<String> {
    let dir = remexec_core::merkle::fetch_directory(store, instance, digest)
        .await?
        .ok_or_else(|| Error::NotFound(format!("directory {digest} is not in the CAS").into()))?;
    let f = digest.function();
    let shown = if path.is_empty() { "/" } else { path };
    let mut out = crate::html::head(&format!("remexec inputs {shown}"), None);
    let _ = writeln!(
        out,
        "<h1>Inputs <code>{}</code></h1>\n<p><a href=\"/\">status</a></p>\n<table id=\"entries\"><tr><th>name</th><th>size</th><th></th></tr>",
        esc(shown)
    );
    let join = |name: &str| match path {
        "" => name.to_string(),
        p => format!("{p}/{name}"),
    };
    for d in &dir.directories {
        let child = Digest::from_field(f, d.digest.as_ref(), "directory")?;
        let _ = writeln!(
            out,
            "<tr class=\"directory\"><td>{}/</td><td></td><td></td></tr>",
            tree_link(instance, &child, &join(&d.name), &d.name)
        );
    }
    for file in &dir.files {
        let d = Digest::from_field(f, file.digest.as_ref(), "file")?;
        let _ = writeln!(
            out,
            "<tr class=\"file\"><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&file.name),
            if file.is_executable {
                " (executable)"
            } else {
                ""
            },
            crate::html::bytes(d.size()),
            blob_link(instance, &d, &file.name, "download")
        );
    }
    for link in &dir.symlinks {
        let _ = writeln!(
            out,
            "<tr class=\"symlink\"><td><code>{}</code> &rarr; <code>{}</code></td><td></td><td></td></tr>",
            esc(&link.name),
            esc(&link.target)
        );
    }
    out += "</table>\n</body></html>\n";
    Ok(out)
}

/// A file name safe in a `Content-Disposition` header: `name` with anything but letters,
/// digits and `._-` replaced by `_` (at most 100 characters), or `blob`.
pub fn download_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .take(100)
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                true => c,
                false => '_',
            },
        )
        .collect();
    match safe.trim_start_matches('.').is_empty() {
        true => "blob".to_string(),
        false => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_in_a_header() {
        assert_eq!(download_name("a b\"\r\n.txt"), "a_b___.txt");
        assert_eq!(download_name(".."), "blob");
        assert_eq!(download_name(""), "blob");
        assert_eq!(download_name("test.log"), "test.log");
    }
}
