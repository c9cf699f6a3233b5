//! [`Invocation`]: what the pages show of one build, folded event by event from Bazel's Build
//! Event Protocol. Everything in it comes from the client and is bounded here: each string is
//! cut to [`MAX_TEXT`] bytes, each list to its own limit, and an invocation whose record grows
//! past [`MAX_INVOCATION_BYTES`] takes no new entries (it counts what it dropped). Records
//! are JSON with every field defaulted, so that a newer server reads an older one's.

use std::collections::BTreeMap;

use remexec_proto::build_event_stream as bep;
use serde::{Deserialize, Serialize};

/// Longest string kept from an event (a label, an argument, a URI), in bytes.
pub const MAX_TEXT: usize = 2048;
/// Most targets, tests and remote actions kept per invocation (each).
pub const MAX_ENTRIES: usize = 20_000;
/// Most bytes of the build's console output kept (its end).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Most bytes of the critical-path report kept.
pub const MAX_CRITICAL_PATH: usize = 32 * 1024;
/// Past this size of its stored record, an invocation takes no new targets, tests or actions.
pub const MAX_INVOCATION_BYTES: usize = 8 << 20;
/// Most command-line words kept.
const MAX_ARGS: usize = 1000;
/// Most log files kept per test.
const MAX_LOGS: usize = 16;

/// How a build, target or test ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not ended yet (or its end was never reported).
    #[default]
    Running,
    /// Built, or passed.
    Succeeded,
    /// Failed to build, or failed.
    Failed,
    /// Not built or not run: a dependency failed, or the build was cut short.
    Skipped,
    /// Flaky: passed after failing.
    Flaky,
    /// Timed out.
    TimedOut,
    /// Its outcome came from a cache without running.
    Cached,
}

impl Status {
    /// The word the pages show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Flaky => "flaky",
            Self::TimedOut => "timed out",
            Self::Cached => "cached",
        }
    }

    /// Whether the pages mark it as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }

    fn of_test(status: i32) -> Self {
        use bep::TestStatus as T;
        match T::try_from(status).unwrap_or(T::NoStatus) {
            T::Passed => Self::Succeeded,
            T::Flaky => Self::Flaky,
            T::Timeout => Self::TimedOut,
            T::Failed | T::Incomplete | T::RemoteFailure | T::FailedToBuild => Self::Failed,
            T::ToolHaltedBeforeTesting => Self::Skipped,
            T::NoStatus => Self::Running,
        }
    }
}

/// One target of the build.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Target {
    /// Its rule kind, `cc_binary rule` say.
    pub kind: String,
    /// Whether it built.
    pub status: Status,
    /// Whether it is a test.
    pub test: bool,
}

/// One test target's runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Test {
    /// The overall outcome (the summary's, else the last attempt's).
    pub status: Status,
    /// Attempts reported (with retries of flaky tests, and runs and shards).
    pub attempts: u32,
    /// Milliseconds of its runs, summed.
    pub duration_ms: u64,
    /// Attempts whose result came from a cache.
    pub cached: u32,
    /// Each attempt's `test.log`, as the client named it (at most 16).
    pub logs: Vec<TestLog>,
}

/// Where one attempt's `test.log` is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TestLog {
    /// Run, shard and attempt, from 1.
    pub run: i32,
    /// The shard.
    pub shard: i32,
    /// The attempt.
    pub attempt: i32,
    /// How the attempt ended.
    pub status: Status,
    /// The URI: `bytestream://HOST/[INSTANCE/]blobs/HASH/SIZE` when uploaded.
    pub uri: String,
}

/// A remote action run for the invocation, as the scheduler saw it end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoteAction {
    /// The instance name.
    pub instance: String,
    /// `hash/size`.
    pub action: String,
    /// Bazel's mnemonic.
    pub mnemonic: String,
    /// The target it was built for.
    pub target: String,
    /// How it ended (`success`, `cached`, `failed`…).
    pub outcome: String,
    /// Whether that is a failure.
    pub failed: bool,
    /// The exit code, if it ran.
    pub exit_code: Option<i32>,
    /// Seconds in its run phase (0 for a cache hit).
    pub run_secs: f64,
    /// The kept `ExecuteResponse` of a failure, `hash/size`.
    pub response: Option<String>,
}

/// An action Bazel reports as failed (`ActionExecuted`), local or remote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedAction {
    /// The target.
    pub label: String,
    /// Its mnemonic.
    pub mnemonic: String,
    /// Its exit code.
    pub exit_code: i32,
    /// URI of its stderr, if any.
    pub stderr: String,
}

/// One invocation: what the list and the invocation page show.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Invocation {
    /// The invocation id (Bazel's command UUID).
    pub id: String,
    /// The build id the events carried.
    pub build_id: String,
    /// The user, from the workspace status (`BUILD_USER`) or metadata.
    pub user: String,
    /// The host, from the workspace status (`BUILD_HOST`).
    pub host: String,
    /// `build`, `test`…
    pub command: String,
    /// The target patterns.
    pub patterns: Vec<String>,
    /// The command line as typed.
    pub args: Vec<String>,
    /// The options given explicitly.
    pub options: Vec<String>,
    /// The client and its version.
    pub tool: String,
    /// The workspace directory.
    pub workspace: String,
    /// Milliseconds since the epoch at the start, and at the end if it ended.
    pub started_ms: u64,
    /// When it ended.
    pub finished_ms: Option<u64>,
    /// How the build ended.
    pub status: Status,
    /// The client's exit code name and number (`BUILD_FAILURE`, 1), once ended.
    pub exit: Option<(String, i32)>,
    /// Targets, by label.
    pub targets: BTreeMap<String, Target>,
    /// Tests, by label.
    pub tests: BTreeMap<String, Test>,
    /// The remote actions the scheduler ran for it (or answered from the cache).
    pub actions: Vec<RemoteAction>,
    /// Actions the client reports as failed.
    pub failed_actions: Vec<FailedAction>,
    /// The client's critical-path report.
    pub critical_path: String,
    /// The end of the console output.
    pub output: String,
    /// The last sequence number applied from each event stream (by component).
    pub streams: BTreeMap<String, i64>,
    /// Events applied.
    pub events: u64,
    /// Entries not kept for want of room (targets, tests, actions).
    pub dropped: u64,
    /// The record has reached [`MAX_INVOCATION_BYTES`].
    pub full: bool,
    /// Changed since it was last stored.
    #[serde(skip)]
    pub dirty: bool,
    /// Bytes of the record as last stored.
    #[serde(skip)]
    pub record_bytes: usize,
}

/// A copy of `s` cut to [`MAX_TEXT`] bytes (on a character boundary), control characters
/// replaced by `?` (so that its JSON is at most twice as long).
pub fn text(s: &str) -> String {
    cut(s, MAX_TEXT)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Milliseconds of `seconds` and `nanos` (a Timestamp's or a Duration's), 0 if negative;
/// saturating, since a client sends them.
pub fn ms_of(seconds: i64, nanos: i32) -> u64 {
    let ms = seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(nanos / 1_000_000));
    u64::try_from(ms).unwrap_or(0)
}

fn millis(t: Option<&prost_types::Timestamp>, fallback: i64) -> u64 {
    t.map_or(u64::try_from(fallback).unwrap_or(0), |t| {
        ms_of(t.seconds, t.nanos)
    })
}

fn duration_ms(d: Option<&prost_types::Duration>, fallback: i64) -> u64 {
    d.map_or(u64::try_from(fallback).unwrap_or(0), |d| {
        ms_of(d.seconds, d.nanos)
    })
}

impl Invocation {
    /// A new, empty invocation.
    pub fn new(id: &str, build_id: &str) -> Self {
        Self {
            id: text(id),
            build_id: text(build_id),
            ..Self::default()
        }
    }

    /// Whether another entry fits.
    fn room(&mut self, len: usize) -> bool {
        if self.full || len >= MAX_ENTRIES {
            self.dropped += 1;
            return false;
        }
        true
    }

    /// Appends a remote action the scheduler finished.
    pub fn add_action(&mut self, action: RemoteAction) {
        if self.room(self.actions.len()) {
            self.actions.push(action);
        }
    }

    /// Appends console output, keeping its end.
    pub fn add_output(&mut self, out: &str) {
        if out.is_empty() {
            return;
        }
        self.output.push_str(tail(out, MAX_OUTPUT));
        if self.output.len() > MAX_OUTPUT {
            self.output = tail(&self.output, MAX_OUTPUT).to_string();
        }
    }

    fn target(&mut self, label: &str) -> Option<&mut Target> {
        let key = text(label);
        if !self.targets.contains_key(&key) && !self.room(self.targets.len()) {
            return None;
        }
        Some(self.targets.entry(key).or_default())
    }

    fn test(&mut self, label: &str) -> Option<&mut Test> {
        let key = text(label);
        if !self.tests.contains_key(&key) && !self.room(self.tests.len()) {
            return None;
        }
        Some(self.tests.entry(key).or_default())
    }

    /// Folds one of Bazel's events in.
    #[allow(deprecated)] // the *_millis fields: Bazel 4 sends only those
    pub fn apply(&mut self, event: bep::BuildEvent) {
        use bep::build_event::Payload as P;
        use bep::build_event_id::Id;
        self.events += 1;
        let id = event.id.and_then(|id| id.id);
        let Some(payload) = event.payload else {
            return;
        };
        match (payload, id) {
            (P::Progress(p), _) => {
                self.add_output(&p.stderr);
                self.add_output(&p.stdout);
            }
            (P::Started(s), _) => self.started(s),
            (P::UnstructuredCommandLine(c), _) => {
                self.args = c.args.iter().take(MAX_ARGS).map(|a| text(a)).collect();
            }
            (P::OptionsParsed(o), _) => {
                self.options = o
                    .explicit_cmd_line
                    .iter()
                    .take(MAX_ARGS)
                    .map(|a| text(a))
                    .collect();
            }
            (P::WorkspaceStatus(w), _) => self.workspace_status(w),
            (P::BuildMetadata(m), _) => {
                if let Some(user) = m.metadata.get("USER").or(m.metadata.get("user")) {
                    self.user = text(user);
                }
            }
            (P::Expanded(_), Some(Id::Pattern(p))) => {
                for pattern in p.pattern.iter().take(MAX_ARGS) {
                    if self.patterns.len() < MAX_ARGS {
                        self.patterns.push(text(pattern));
                    }
                }
            }
            (P::Configured(c), Some(Id::TargetConfigured(id))) => {
                let test = c.target_kind.ends_with("_test rule") || c.test_size != 0;
                let full = self.full;
                if let Some(t) = self.target(&id.label)
                    && (t.kind.is_empty() || !full)
                {
                    t.kind = text(&c.target_kind);
                    t.test = test;
                }
            }
            (P::Completed(c), Some(Id::TargetCompleted(id))) if id.aspect.is_empty() => {
                if let Some(t) = self.target(&id.label) {
                    t.status = if c.success {
                        Status::Succeeded
                    } else {
                        Status::Failed
                    };
                }
            }
            (P::Aborted(_), Some(Id::TargetCompleted(id))) => {
                if let Some(t) = self.target(&id.label) {
                    t.status = Status::Skipped;
                }
            }
            (P::Aborted(a), Some(Id::Started(_))) | (P::Aborted(a), None) => {
                self.add_output(&a.description);
            }
            (P::Action(a), _) if !a.success => self.failed_action(a),
            (P::TestResult(r), Some(Id::TestResult(id))) => self.test_result(r, id),
            (P::TestSummary(s), Some(Id::TestSummary(id))) => {
                if let Some(t) = self.test(&id.label) {
                    t.status = Status::of_test(s.overall_status);
                    t.duration_ms = t.duration_ms.max(duration_ms(
                        s.total_run_duration.as_ref(),
                        s.total_run_duration_millis,
                    ));
                }
            }
            (P::Finished(f), _) => self.finished(f),
            (P::BuildToolLogs(logs), _) => {
                let report = logs.log.into_iter().find(|l| l.name == "critical path");
                if let Some(bep::file::File::Contents(c)) = report.and_then(|l| l.file) {
                    let c = String::from_utf8_lossy(&c);
                    self.critical_path = cut(&c, MAX_CRITICAL_PATH).to_string();
                }
            }
            _ => {}
        }
    }

    fn workspace_status(&mut self, w: bep::WorkspaceStatus) {
        for item in w.item {
            match item.key.as_str() {
                "BUILD_USER" => self.user = text(&item.value),
                "BUILD_HOST" => self.host = text(&item.value),
                _ => {}
            }
        }
    }

    #[allow(deprecated)] // finish_time_millis: Bazel 4 sends only that
    fn finished(&mut self, f: bep::BuildFinished) {
        self.finished_ms = Some(millis(f.finish_time.as_ref(), f.finish_time_millis));
        let exit = f.exit_code.unwrap_or_default();
        self.status = match exit.code {
            0 => Status::Succeeded,
            _ => Status::Failed,
        };
        self.exit = Some((text(&exit.name), exit.code));
    }

    #[allow(deprecated)] // start_time_millis: Bazel 4 sends only that
    fn started(&mut self, s: bep::BuildStarted) {
        self.started_ms = millis(s.start_time.as_ref(), s.start_time_millis);
        self.command = text(&s.command);
        self.tool = text(&s.build_tool_version);
        self.workspace = text(&s.workspace_directory);
        if !s.build_tool_version.is_empty() {
            self.tool = format!("Bazel {}", text(&s.build_tool_version));
        }
    }

    #[allow(deprecated)] // label: Bazel 4 sends it
    fn failed_action(&mut self, a: bep::ActionExecuted) {
        if !self.room(self.failed_actions.len()) {
            return;
        }
        let stderr = match a.stderr.and_then(|f| f.file) {
            Some(bep::file::File::Uri(uri)) => text(&uri),
            _ => String::new(),
        };
        self.failed_actions.push(FailedAction {
            label: text(&a.label),
            mnemonic: text(&a.r#type),
            exit_code: a.exit_code,
            stderr,
        });
    }

    #[allow(deprecated)] // test_attempt_duration_millis: Bazel 4 sends only that
    fn test_result(&mut self, r: bep::TestResult, id: bep::build_event_id::TestResultId) {
        let status = Status::of_test(r.status);
        let took = duration_ms(
            r.test_attempt_duration.as_ref(),
            r.test_attempt_duration_millis,
        );
        let cached = r.cached_locally || r.execution_info.is_some_and(|e| e.cached_remotely);
        let full = self.full;
        let Some(t) = self.test(&id.label) else {
            return;
        };
        t.attempts = t.attempts.saturating_add(1);
        t.duration_ms = t.duration_ms.saturating_add(took);
        t.cached = t.cached.saturating_add(u32::from(cached));
        if t.status == Status::Running || status.is_failure() || t.status.is_failure() {
            t.status = status;
        }
        let log = r.test_action_output.iter().find(|f| f.name == "test.log");
        if let Some(bep::file::File::Uri(uri)) = log.and_then(|f| f.file.as_ref())
            && t.logs.len() < MAX_LOGS
            && !full
        {
            t.logs.push(TestLog {
                run: id.run,
                shard: id.shard,
                attempt: id.attempt,
                status,
                uri: text(uri),
            });
        }
    }

    /// Milliseconds from start to end (or to `now_ms` while running).
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.finished_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_ms)
    }

    /// The short row the list shows.
    pub fn row(&self) -> Row {
        Row {
            id: self.id.clone(),
            user: self.user.clone(),
            command: self.command.clone(),
            patterns: cut(&self.patterns.join(" "), 200).to_string(),
            status: self.status,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            targets: self.targets.len(),
            tests: self.tests.len(),
            failed_tests: self
                .tests
                .values()
                .filter(|t| t.status.is_failure())
                .count(),
            actions: self.actions.len(),
        }
    }
}

/// One line of the invocation list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    /// The invocation id.
    pub id: String,
    /// Who ran it.
    pub user: String,
    /// `build`, `test`…
    pub command: String,
    /// The target patterns, joined.
    pub patterns: String,
    /// How it ended.
    pub status: Status,
    /// Milliseconds since the epoch at the start.
    pub started_ms: u64,
    /// At the end.
    pub finished_ms: Option<u64>,
    /// Targets.
    pub targets: usize,
    /// Tests.
    pub tests: usize,
    /// Tests that failed.
    pub failed_tests: usize,
    /// Remote actions.
    pub actions: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_land_on_character_boundaries() {
        let s = "é".repeat(3000);
        assert!(text(&s).len() <= MAX_TEXT);
        assert!(tail(&s, 101).len() <= 101);
        let mut inv = Invocation::new("i", "b");
        inv.add_output(&"x".repeat(MAX_OUTPUT * 3));
        assert_eq!(inv.output.len(), MAX_OUTPUT);
    }

    fn test_result(label: &str, uri: &str) -> bep::BuildEvent {
        use bep::build_event_id::{Id, TestResultId};
        bep::BuildEvent {
            id: Some(bep::BuildEventId {
                id: Some(Id::TestResult(TestResultId {
                    label: label.into(),
                    ..Default::default()
                })),
            }),
            payload: Some(bep::build_event::Payload::TestResult(bep::TestResult {
                status: bep::TestStatus::Failed as i32,
                test_action_output: vec![bep::File {
                    name: "test.log".into(),
                    file: Some(bep::file::File::Uri(uri.into())),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_invocation_takes_no_more_logs_and_control_characters_are_replaced() {
        let mut inv = Invocation::new("i", "b");
        inv.apply(test_result("//a:\u{1}t", "bytestream://h/blobs/x/1"));
        let test = &inv.tests["//a:?t"];
        assert_eq!((test.attempts, test.logs.len()), (1, 1));
        inv.full = true;
        inv.apply(test_result("//a:\u{1}t", "bytestream://h/blobs/y/1"));
        let test = &inv.tests["//a:?t"];
        assert_eq!(
            (test.attempts, test.logs.len()),
            (2, 1),
            "counted, not kept"
        );
        inv.apply(test_result("//b:new", "bytestream://h/blobs/z/1"));
        assert!(!inv.tests.contains_key("//b:new"));
        assert_eq!(inv.dropped, 1);
    }

    #[test]
    fn entries_are_bounded() {
        let mut inv = Invocation::new("i", "b");
        for i in 0..MAX_ENTRIES + 5 {
            inv.add_action(RemoteAction {
                action: i.to_string(),
                ..RemoteAction::default()
            });
        }
        assert_eq!(inv.actions.len(), MAX_ENTRIES);
        assert_eq!(inv.dropped, 5);
    }
}
