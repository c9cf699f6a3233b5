//! The pages a scheduler node adds to its admin port ([`crate::pages::pages`]): `/` (HTML that refreshes
//! itself, no JavaScript), `/status` (the same as JSON), `/action/HASH/SIZE` (one action, with
//! the response kept for a failure; [`crate::action_page`]), `/tree/HASH/SIZE` (a directory of
//! inputs), `/blob/HASH/SIZE` (a download from the CAS) and, with [build
//! events](crate::events), `/invocations` and `/invocation/ID` (HTML, or JSON for `Accept:
//! application/json`). Read-only; with authentication configured, a bearer token with the
//! `admin` permission is required. Every page is sent with a Content-Security-Policy that
//! allows no script.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::{ActionRecord, Scheduler, SchedulerStatus};
use html_escape::encode_text as esc;
use remexec_core::auth::{AuthPolicy, Need, Permission};
use remexec_core::metrics::{Metrics, StoreUsage};
use remexec_core::{ActionCache, BlobStore, Digest, Result};
use serde::Serialize;

/// Seconds between the page's refreshes.
const REFRESH_SECS: u32 = 5;

/// What the status page shows a snapshot of.
#[derive(Clone, Debug)]
pub struct StatusSource {
    /// The scheduler whose queue, executors and recent actions are shown.
    pub scheduler: Scheduler,
    /// The CAS: its usage, and the actions and kept responses an action page shows.
    pub store: Arc<dyn BlobStore>,
    /// The Action Cache an action page reads results from.
    pub ac: Arc<dyn ActionCache>,
    /// The figures of Action Cache lookups.
    pub metrics: Metrics,
    /// Who may read the pages (the `admin` permission).
    pub auth: AuthPolicy,
    /// When the node started.
    pub started: Instant,
    /// The version the page and `/status` report.
    pub version: String,
    /// The build events whose invocations the pages show, if kept.
    pub events: Option<crate::events::BuildEvents>,
}

/// Action Cache lookups by clients since the start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CacheFigures {
    /// GetActionResult calls answered with a result.
    pub hits: u64,
    /// GetActionResult calls answered NOT_FOUND.
    pub misses: u64,
    /// Executes answered from the Action Cache by their own check.
    pub execute_hits: u64,
    /// Executes whose own check missed (and which then ran, or joined a running action).
    pub execute_misses: u64,
}

impl CacheFigures {
    /// The hit rates, as the page and `remexec status` show them: GetActionResult's, then
    /// Execute's own checks', each only once there are some.
    pub fn rates(&self) -> String {
        let rate = |hits: u64, misses: u64, what: &str| match hits + misses {
            0 => None,
            n => Some(format!(
                "{:.1}% of {n} {what}",
                100.0 * hits as f64 / n as f64
            )),
        };
        let rates: Vec<String> = [
            rate(self.hits, self.misses, "lookups"),
            rate(
                self.execute_hits,
                self.execute_misses,
                "Execute cache checks",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        match rates.is_empty() {
            true => "no lookups yet".to_string(),
            false => rates.join(", "),
        }
    }
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    /// `remexec --version`.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// Whether it reports itself ready.
    pub ready: bool,
    /// The CAS's usage, if it has a budget.
    pub store: Option<StoreUsage>,
    /// Action Cache lookups.
    pub action_cache: CacheFigures,
    /// Executors, queue, running and recent actions.
    pub scheduler: SchedulerStatus,
}

impl StatusSource {
    /// `PERMISSION_DENIED`/`UNAUTHENTICATED` unless the request's bearer token (or an open
    /// policy) grants `admin`.
    pub(crate) fn authorize(&self, headers: &http::HeaderMap, path: &str) -> Result<()> {
        let principal = self.auth.authenticate(headers, None)?;
        principal.authorize_somewhere(Need::Permission(Permission::Admin), path)
    }

    /// A snapshot.
    pub fn snapshot(&self, ready: bool) -> ServerStatus {
        let (hits, misses) = self.metrics.action_cache_lookups();
        let (execute_hits, execute_misses) = self.metrics.execute_cache_checks();
        ServerStatus {
            version: self.version.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            ready,
            store: self.store.usage(),
            action_cache: CacheFigures {
                hits,
                misses,
                execute_hits,
                execute_misses,
            },
            scheduler: self.scheduler.status(),
        }
    }

    /// The page of one action, with the kept `response` if one is named, and a link to
    /// `invocation` if it is kept.
    pub async fn action_page(
        &self,
        action: Digest,
        instance: &str,
        response: Option<Digest>,
        invocation: Option<&str>,
    ) -> Result<String> {
        remexec_core::validate_instance_name(instance)?;
        let store = self.store.as_ref();
        let mut context = crate::action_page::PageContext::default();
        if let Some(d) = response {
            let response = remexec_core::client::show::kept_response(store, instance, d).await?;
            context.result = response.result.clone();
            context.response = Some(response);
        } else {
            context.result = self.ac.get(instance, action).await?;
        }
        if let (Some(id), Some(events)) = (invocation, &self.events)
            && let Some(inv) = events.invocation(id).await?
        {
            let digest = action.to_string();
            context.label = (inv.actions.iter())
                .find(|a| a.action == digest && a.instance == instance)
                .map(|a| (a.mnemonic.clone(), a.target.clone()));
            context.invocation = Some(inv.id);
        }
        crate::action_page::action_page(store, instance, action, context).await
    }
}

pub use crate::html::bytes;
use crate::html::head;

/// The status page.
pub fn page(status: &ServerStatus) -> String {
    let mut out = head("remexec status", Some(REFRESH_SECS));
    let s = &status.scheduler;
    let hit_rate = status.action_cache.rates();
    let store = status.store.map_or("no budget".to_string(), |u| {
        format!(
            "{} of {} used, {} evicted",
            bytes(u.used_bytes),
            bytes(u.limit_bytes),
            bytes(u.evicted_bytes)
        )
    });
    let busy = s.executors.iter().filter(|e| e.busy).count();
    let _ = write!(
        out,
        "<h1>remexec</h1>\n<p id=\"summary\">version {} &middot; up {}s &middot; {} &middot; \
         cache hit rate <span id=\"hit-rate\">{}</span> &middot; CAS {} &middot; \
         {busy} of {} executors busy &middot; {} queued</p>\n",
        esc(&status.version),
        status.uptime_secs,
        if status.ready {
            "ready"
        } else {
            "not ready (draining)"
        },
        esc(&hit_rate),
        esc(&store),
        s.executors.len(),
        s.queued.iter().map(|q| q.actions).sum::<usize>()
    );
    out += "<h2>Running actions</h2>\n<table id=\"running\"><tr><th>executor</th><th>mnemonic</th><th>target</th><th>action</th><th>running</th></tr>\n";
    for r in &s.running {
        let _ = writeln!(
            out,
            "<tr class=\"running-action\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td></tr>",
            esc(&r.executor),
            esc(&r.mnemonic),
            esc(&r.target),
            action_link(&r.instance, &r.action, None, None),
            r.running_secs
        );
    }
    out += "</table>\n<h2>Queue</h2>\n<table id=\"queue\"><tr><th>platform</th><th>actions</th></tr>\n";
    for q in &s.queued {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(&q.platform),
            q.actions
        );
    }
    out += "</table>\n<h2>Executors</h2>\n<table id=\"executors\"><tr><th>executor</th><th>worker</th><th>state</th><th>properties</th></tr>\n";
    for e in &s.executors {
        let props: Vec<String> = e
            .properties
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let _ = writeln!(
            out,
            "<tr class=\"executor\"><td>{}</td><td class=\"worker\">{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&e.id),
            esc(&e.worker),
            if e.busy { "busy" } else { "idle" },
            esc(&props.join(" "))
        );
    }
    out += "</table>\n";
    recent_table(&mut out, &s.recent);
    out += "<p><a href=\"/invocations\">invocations</a> &middot; <a href=\"/status\">JSON</a> &middot; <a href=\"/metrics\">metrics</a></p>\n</body></html>\n";
    out
}

/// The table of recent actions, with their phases.
fn recent_table(out: &mut String, recent: &[ActionRecord]) {
    *out += "<h2>Recent actions</h2>\n<table id=\"recent\"><tr><th>outcome</th><th>exit</th><th>mnemonic</th><th>target</th><th>executor</th>\
            <th>queued</th><th>input fetch</th><th>run</th><th>upload</th><th>cpu</th><th>peak memory</th><th>action</th></tr>\n";
    for a in recent {
        let phase = |p: remexec_core::metrics::Phase| {
            a.phases
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(String::new(), |(_, secs)| format!("{secs:.3}s"))
        };
        use remexec_core::metrics::Phase;
        let class = if a.outcome.is_failure() {
            " class=\"failure\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.outcome,
            a.exit_code.map_or(String::new(), |c| c.to_string()),
            esc(&a.mnemonic),
            esc(&a.target),
            esc(&a.executor),
            phase(Phase::Queued),
            phase(Phase::InputFetch),
            phase(Phase::Run),
            phase(Phase::Upload),
            a.usage
                .map_or(String::new(), |(cpu, _)| format!("{cpu:.3}s")),
            a.usage.map_or(String::new(), |(_, peak)| { bytes(peak) }),
            action_link(
                &a.instance,
                &a.action,
                a.response.as_deref(),
                Some(&a.tool_invocation_id)
            )
        );
    }
    *out += "</table>\n";
}

/// A link to an action's page.
fn action_link(
    instance: &str,
    action: &str,
    response: Option<&str>,
    invocation: Option<&str>,
) -> String {
    let href = crate::observe::action_path(action, instance, response, invocation);
    let short = action.get(..12).unwrap_or(action);
    format!(
        "<a href=\"{}\"><code>{}</code></a>",
        html_escape::encode_double_quoted_attribute(&href),
        esc(short)
    )
}

/// The terminal summary of a `/status` document (read loosely, so that an older or newer
/// server's document still prints).
pub fn summary(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_clients_control() {
        let mut status = ServerStatus {
            version: "test".into(),
            uptime_secs: 3,
            ready: true,
            store: None,
            action_cache: CacheFigures {
                hits: 1,
                misses: 3,
                execute_hits: 0,
                execute_misses: 0,
            },
            scheduler: SchedulerStatus {
                executors: Vec::new(),
                queued: Vec::new(),
                running: Vec::new(),
                recent: Vec::new(),
            },
        };
        status.scheduler.running.push(crate::RunningAction {
            executor: "w/0".into(),
            instance: "a&b".into(),
            action: "ab/1".into(),
            mnemonic: "<script>alert(1)</script>".into(),
            target: "//x:y".into(),
            running_secs: 1.0,
        });
        let html = page(&status);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("25.0% of 4 lookups"));
        assert!(html.contains("instance=a%26b"));
    }
}
