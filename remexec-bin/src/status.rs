//! `remexec status`: a scheduler's status page, read from its admin port and summarised for a
//! terminal. The page itself is `remexec_scheduler::status`.

use std::fmt::Write as _;

use remexec_core::{Error, Result};
use remexec_scheduler::status::{CacheFigures, bytes};

/// The version line, as `--version` prints it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("REMEXEC_GIT_COMMIT"),
    ")"
);

/// Flags of `remexec status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The server's admin port (its --admin-listen), as host:port or an http:// URL.
    #[arg(long, default_value = "127.0.0.1:9090", env = "REMEXEC_ADMIN")]
    pub admin: String,
    /// Bearer token with the `admin` permission, if the server requires authentication.
    #[arg(long, env = "REMEXEC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the JSON document instead of the summary.
    #[arg(long, env = "REMEXEC_STATUS_JSON")]
    pub json: bool,
}

/// `remexec status`: reads `/status` from the admin port; returns what to print.
pub async fn fetch(args: &StatusArgs) -> Result<String> {
    use http_body_util::BodyExt;
    let base = if args.admin.contains("://") {
        args.admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", args.admin)
    };
    let url = format!("{base}/status");
    let mut request = http::Request::get(&url);
    if let Some(token) = &args.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| Error::InvalidArgument(remexec_core::Message::caused_by(&url, e)))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| Error::Unavailable(format!("{url}: no answer within 10 s").into()))?
            .map_err(|e| Error::Unavailable(remexec_core::Message::caused_by(&url, e)))?;
    let code = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Unavailable(remexec_core::Message::caused_by(&url, e)))?
        .to_bytes();
    if !code.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(Error::Unavailable(
            format!("{url}: {code}: {}", text.trim()).into(),
        ));
    }
    if args.json {
        return Ok(format!("{}\n", String::from_utf8_lossy(&body)));
    }
    let status: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("{url}: not a status document"),
            e,
        ))
    })?;
    Ok(summary(&status))
}

/// The terminal summary of a `/status` document (read loosely, so that an older or newer
/// server's document still prints).
pub fn summary(status: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "remexec {} · up {}s · {}",
        s(&status["version"]),
        n(&status["uptime_secs"]),
        if status["ready"].as_bool().unwrap_or(false) {
            "ready"
        } else {
            "NOT READY"
        }
    );
    let figure = |k: &str| n(&status["action_cache"][k]);
    let figures = CacheFigures {
        hits: figure("hits"),
        misses: figure("misses"),
        execute_hits: figure("execute_hits"),
        execute_misses: figure("execute_misses"),
    };
    let _ = writeln!(
        out,
        "action cache: {} hits, {} misses ({})",
        figures.hits,
        figures.misses,
        figures.rates()
    );
    match status["store"].as_object() {
        Some(store) => {
            let b = |k: &str| bytes(store.get(k).and_then(|v| v.as_u64()).unwrap_or_default());
            let _ = writeln!(
                out,
                "CAS: {} of {} used, {} evicted",
                b("used_bytes"),
                b("limit_bytes"),
                b("evicted_bytes")
            );
        }
        None => out += "CAS: no budget\n",
    }
    let sched = &status["scheduler"];
    let empty = Vec::new();
    let list = |k: &str| sched[k].as_array().unwrap_or(&empty);
    let executors = list("executors");
    let busy = executors
        .iter()
        .filter(|e| e["busy"].as_bool() == Some(true))
        .count();
    let mut workers: Vec<String> = executors.iter().map(|e| s(&e["worker"])).collect();
    workers.sort();
    workers.dedup();
    let queued: u64 = list("queued").iter().map(|q| n(&q["actions"])).sum();
    let _ = writeln!(
        out,
        "executors: {busy} of {} busy, on {} workers ({}); {queued} queued",
        executors.len(),
        workers.len(),
        workers.join(", ")
    );
    for q in list("queued") {
        let _ = writeln!(out, "  queued {} [{}]", n(&q["actions"]), s(&q["platform"]));
    }
    let running = list("running");
    let _ = writeln!(out, "running: {}", running.len());
    for r in running {
        let _ = writeln!(
            out,
            "  {:<20} {:<12} {:<30} {:>7.1}s  {}",
            s(&r["executor"]),
            s(&r["mnemonic"]),
            s(&r["target"]),
            r["running_secs"].as_f64().unwrap_or_default(),
            s(&r["action"])
        );
    }
    let recent = list("recent");
    let _ = writeln!(out, "recent: {}", recent.len());
    for a in recent.iter().take(10) {
        let phases: Vec<String> = a["phases"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| format!("{} {:.3}s", s(&p[0]), p[1].as_f64().unwrap_or_default()))
            .collect();
        let _ = writeln!(
            out,
            "  {:<14} {:<12} {:<30} {}  {}",
            s(&a["outcome"]),
            s(&a["mnemonic"]),
            s(&a["target"]),
            phases.join(", "),
            s(&a["action"])
        );
    }
    out
}
