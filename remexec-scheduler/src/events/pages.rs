//! The invocation list (`/invocations`) and an invocation's page (`/invocation/ID`): HTML that
//! needs no JavaScript. Everything from the events is client-controlled and escaped here; logs
//! are read from the CAS through the `bytestream://` URIs the events name, at most
//! [`SHOWN_LOG`](crate::html::SHOWN_LOG) bytes of each.

use std::fmt::Write as _;

use html_escape::{encode_double_quoted_attribute as attr, encode_text as esc};
use remexec_core::{BlobStore, Result};

use super::invocation::{Invocation, Row, Status};
use crate::html::{
    bytestream_uri, invocation_path, log_pane_uri, now_ms, strip_ansi, text_link, when,
};

/// Most logs shown in one page (each at most 64 KiB); the others are links.
const MAX_PANES: usize = 20;
/// Slowest actions listed in the timing summary.
const SLOWEST: usize = 10;

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn status_cell(status: Status) -> String {
    let class = match status {
        s if s.is_failure() => "failure",
        Status::Succeeded | Status::Cached => "success",
        _ => "other",
    };
    format!("<td class=\"{class}\">{}</td>", status.as_str())
}

/// The list of invocations.
pub fn list_page(rows: &[Row], (kept, bytes): (usize, u64)) -> String {
    let now = now_ms();
    let mut out = crate::html::head("remexec invocations", None);
    let _ = writeln!(
        out,
        "<h1>Invocations</h1>\n<p>{kept} kept ({}) &middot; <a href=\"/\">status</a></p>",
        crate::html::bytes(bytes)
    );
    out += "<table id=\"invocations\"><tr><th>invocation</th><th>user</th><th>command</th><th>patterns</th>\
            <th>status</th><th>started</th><th>duration</th><th>targets</th><th>tests</th><th>failed tests</th><th>remote actions</th></tr>\n";
    for r in rows {
        let duration = r.finished_ms.unwrap_or(now).saturating_sub(r.started_ms);
        let _ = writeln!(
            out,
            "<tr class=\"invocation\"><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td><code>{}</code></td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            attr(&invocation_path(&r.id)),
            esc(&r.id),
            esc(&r.user),
            esc(&r.command),
            esc(&r.patterns),
            status_cell(r.status),
            when(r.started_ms),
            seconds(duration),
            r.targets,
            r.tests,
            r.failed_tests,
            r.actions
        );
    }
    out += "</table>\n</body></html>\n";
    out
}

/// An invocation's page.
pub async fn invocation_page(inv: &Invocation, store: &dyn BlobStore) -> Result<String> {
    let mut out = crate::html::head(&format!("remexec invocation {}", inv.id), None);
    let _ = writeln!(
        out,
        "<h1>Invocation <code class=\"id\">{}</code></h1>\n<p><a href=\"/invocations\">all invocations</a> &middot; <a href=\"/\">status</a></p>",
        esc(&inv.id)
    );
    summary(&mut out, inv);
    tests(&mut out, inv, store).await;
    targets(&mut out, inv);
    timing(&mut out, inv);
    actions(&mut out, inv);
    if !inv.output.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Console output (its end)</h2>\n<pre class=\"log\" id=\"output\">{}</pre>",
            esc(&strip_ansi(&inv.output))
        );
    }
    out += "</body></html>\n";
    Ok(out)
}

fn summary(out: &mut String, inv: &Invocation) {
    let exit = inv
        .exit
        .as_ref()
        .map_or(String::new(), |(name, code)| format!("{name} ({code})"));
    let rows = [
        ("status", inv.status.as_str().to_string()),
        ("user", inv.user.clone()),
        ("host", inv.host.clone()),
        ("command", inv.command.clone()),
        ("patterns", inv.patterns.join(" ")),
        ("tool", inv.tool.clone()),
        ("workspace", inv.workspace.clone()),
        ("started", when(inv.started_ms)),
        ("duration", seconds(inv.duration_ms(now_ms()))),
        ("exit", exit),
        ("events", inv.events.to_string()),
    ];
    *out += "<table id=\"summary\" class=\"meta\">\n";
    for (name, value) in rows {
        let class = match (name, inv.status.is_failure()) {
            ("status", true) => " class=\"failure\"",
            _ => "",
        };
        let _ = writeln!(
            out,
            "<tr><th>{name}</th><td{class}>{}</td></tr>",
            esc(&value)
        );
    }
    *out += "</table>\n";
    if inv.dropped > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} entries were not kept: this invocation reached its limits.</p>",
            inv.dropped
        );
    }
    // What was typed: the command, its explicit options and the patterns; then everything.
    let typed: Vec<&str> = std::iter::once(inv.command.as_str())
        .chain(inv.options.iter().map(String::as_str))
        .chain(inv.patterns.iter().map(String::as_str))
        .collect();
    let _ = writeln!(
        out,
        "<h2>Command line</h2>\n<pre id=\"command-line\">bazel {}</pre>\n\
         <details><summary>the whole command line ({} words)</summary><pre>{}</pre></details>",
        esc(&typed.join(" ")),
        inv.args.len(),
        esc(&inv.args.join(" "))
    );
}

async fn tests(out: &mut String, inv: &Invocation, store: &dyn BlobStore) {
    if inv.tests.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<h2>Tests ({})</h2>\n<table id=\"tests\"><tr><th>test</th><th>status</th><th>attempts</th><th>duration</th><th>cached</th><th>log</th></tr>",
        inv.tests.len()
    );
    for (n, (label, t)) in inv.tests.iter().enumerate() {
        let last = t.logs.last().and_then(|l| bytestream_uri(&l.uri));
        let log = match (t.status.is_failure() || t.status == Status::Flaky, last) {
            (true, _) if !t.logs.is_empty() => format!("<a href=\"#log-{n}\">below</a>"),
            (_, Some((instance, digest))) => text_link(&instance, &digest, "test.log", "test.log"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "<tr class=\"test\"><td><code>{}</code></td>{}<td>{}</td><td>{}</td><td>{}</td><td>{log}</td></tr>",
            esc(label),
            status_cell(t.status),
            t.attempts,
            seconds(t.duration_ms),
            t.cached
        );
    }
    *out += "</table>\n";
    let mut panes = 0;
    for (n, (label, t)) in inv.tests.iter().enumerate() {
        if !(t.status.is_failure() || t.status == Status::Flaky) {
            continue;
        }
        for log in t.logs.iter().filter(|l| l.status != Status::Succeeded) {
            let _ = writeln!(
                out,
                "<h3 id=\"log-{n}\">{} &middot; run {} shard {} attempt {}: {}</h3>",
                esc(label),
                log.run,
                log.shard,
                log.attempt,
                log.status.as_str()
            );
            // A page reads a bounded number of logs; the rest are links.
            panes += 1;
            *out += &match (panes <= MAX_PANES, bytestream_uri(&log.uri)) {
                (true, _) => log_pane_uri(store, &log.uri, "test.log").await,
                (false, Some((instance, d))) => format!(
                    "<p>{}</p>\n",
                    text_link(&instance, &d, "test.log", "test.log")
                ),
                (false, None) => format!("<p><code>{}</code></p>\n", esc(&log.uri)),
            };
        }
    }
}

fn targets(out: &mut String, inv: &Invocation) {
    let failed = inv
        .targets
        .values()
        .filter(|t| t.status.is_failure())
        .count();
    let _ = writeln!(
        out,
        "<h2>Targets ({}, {failed} failed)</h2>\n<table id=\"targets\"><tr><th>target</th><th>kind</th><th>status</th></tr>",
        inv.targets.len()
    );
    let mut targets: Vec<_> = inv.targets.iter().collect();
    // Failures first.
    targets.sort_by_key(|(label, t)| (!t.status.is_failure(), *label));
    for (label, t) in targets {
        let _ = writeln!(
            out,
            "<tr class=\"target\"><td><code>{}</code></td><td>{}</td>{}</tr>",
            esc(label),
            esc(&t.kind),
            status_cell(t.status)
        );
    }
    *out += "</table>\n";
    if !inv.failed_actions.is_empty() {
        *out += "<h3>Actions the client reports as failed</h3>\n<table id=\"failed-actions\"><tr><th>target</th><th>mnemonic</th><th>exit</th><th>stderr</th></tr>\n";
        for a in &inv.failed_actions {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&a.label),
                esc(&a.mnemonic),
                a.exit_code,
                esc(&a.stderr)
            );
        }
        *out += "</table>\n";
    }
}

fn timing(out: &mut String, inv: &Invocation) {
    *out += "<h2>Timing</h2>\n";
    let ran: f64 = inv.actions.iter().map(|a| a.run_secs).sum();
    let _ = writeln!(
        out,
        "<p>{} in all; remote actions ran {ran:.1}s in all.</p>",
        seconds(inv.duration_ms(now_ms()))
    );
    if !inv.critical_path.is_empty() {
        let _ = writeln!(
            out,
            "<h3>Critical path</h3>\n<pre id=\"critical-path\">{}</pre>",
            esc(&inv.critical_path)
        );
    }
    let mut slowest: Vec<_> = inv.actions.iter().filter(|a| a.run_secs > 0.0).collect();
    slowest.sort_by(|a, b| b.run_secs.total_cmp(&a.run_secs));
    if slowest.is_empty() {
        return;
    }
    *out += "<h3>Slowest remote actions</h3>\n<table id=\"slowest\"><tr><th>run</th><th>mnemonic</th><th>target</th><th>action</th></tr>\n";
    for a in slowest.into_iter().take(SLOWEST) {
        let _ = writeln!(
            out,
            "<tr><td>{:.3}s</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            a.run_secs,
            esc(&a.mnemonic),
            esc(&a.target),
            action_link(inv, a)
        );
    }
    *out += "</table>\n";
}

fn action_link(inv: &Invocation, a: &super::invocation::RemoteAction) -> String {
    let href =
        crate::observe::action_path(&a.action, &a.instance, a.response.as_deref(), Some(&inv.id));
    format!(
        "<a href=\"{}\"><code>{}</code></a>",
        attr(&href),
        esc(a.action.get(..12).unwrap_or(&a.action))
    )
}

fn actions(out: &mut String, inv: &Invocation) {
    if inv.actions.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<h2>Remote actions ({})</h2>\n<table id=\"actions\"><tr><th>outcome</th><th>exit</th><th>mnemonic</th><th>target</th><th>run</th><th>action</th></tr>",
        inv.actions.len()
    );
    for a in &inv.actions {
        let _ = writeln!(
            out,
            "<tr class=\"remote-action{}\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{:.3}s</td><td>{}</td></tr>",
            if a.failed { " failure" } else { "" },
            esc(&a.outcome),
            a.exit_code.map_or(String::new(), |c| c.to_string()),
            esc(&a.mnemonic),
            esc(&a.target),
            a.run_secs,
            action_link(inv, a)
        );
    }
    *out += "</table>\n";
}
