//! What operators see of a real `remexec` process: Prometheus metrics after a real Bazel build,
//! the status page in headless Chromium during one, trace spans received by an in-process OTLP
//! collector and a Zipkin receiver, failed actions kept and linked, the access log, `remexec
//! status`, and a worker's readiness.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{ServerProcess, fixtures, headless, http_get, require_tool, wait_until};

/// The value of the series `series` (name and labels, exactly as exposed) in `text`; 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn metrics(admin: SocketAddr) -> String {
    let (code, text) = http_get(admin, "/metrics", &[]).expect("the admin port answers");
    assert_eq!(code, 200, "{text}");
    text
}

const SUCCESS: &str = r#"remexec_executions_total{outcome="success"}"#;
const NON_ZERO: &str = r#"remexec_executions_total{outcome="non_zero_exit"}"#;
const HITS: &str = r#"remexec_action_cache_lookups_total{result="hit"}"#;
const MISSES: &str = r#"remexec_action_cache_lookups_total{result="miss"}"#;

#[test]
fn metrics_count_every_remote_action_and_every_cache_hit_of_a_bazel_build() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let pause = tempfile::tempdir().unwrap();
    // Killed if an assertion fails while it waits to be resumed.
    let mut script = common::KillOnDrop(
        Command::new("bash")
            .arg(fixtures().join("bazel/exec_e2e.sh"))
            .arg(server.url())
            .env("BAZEL", &bazel)
            .env("E2E_PAUSE_DIR", pause.path())
            .spawn()
            .unwrap(),
    );
    let done = pause.path().join("round1-done");
    assert!(
        wait_until(900, || done.exists()
            || script.0.try_wait().unwrap().is_some()),
        "round 1 did not finish"
    );
    let counts = std::fs::read_to_string(&done).expect("round 1 passed");
    let remote: f64 = counts
        .split_whitespace()
        .map(|n| n.parse::<f64>().unwrap())
        .sum();
    assert!(remote > 0.0);
    // Round 1: every action Bazel ran remotely was one successful execution, after one miss.
    let text = metrics(admin);
    assert_eq!(value(&text, SUCCESS), remote, "{text}");
    assert_eq!(value(&text, NON_ZERO), 0.0);
    assert_eq!(value(&text, HITS), 0.0);
    assert!(value(&text, MISSES) >= remote);
    let phases = r#"remexec_execution_phase_duration_seconds_count{phase="run"}"#;
    assert_eq!(value(&text, phases), remote);
    assert!(value(&text, "remexec_cas_received_bytes_total") > 4.0 * 1024.0 * 1024.0);
    assert!(value(&text, "remexec_store_size_bytes{store=\"cas\"}") > 0.0);
    assert_eq!(value(&text, "remexec_workers"), 1.0);
    let execute = r#"remexec_rpc_requests_total{method="/build.bazel.remote.execution.v2.Execution/Execute",code="OK"}"#;
    assert!(value(&text, execute) >= remote, "{text}");

    // Round 2, after `bazel clean`: every action is a cache hit, nothing executes; then
    // //gen:fail runs twice and fails twice.
    std::fs::write(pause.path().join("resume"), "").unwrap();
    assert!(script.0.wait().unwrap().success(), "exec_e2e.sh failed");
    let text = metrics(admin);
    assert_eq!(value(&text, HITS), remote, "{text}");
    assert_eq!(value(&text, SUCCESS), remote);
    assert_eq!(value(&text, NON_ZERO), 2.0);
}

/// Runs `remexec status` against `admin` with extra flags.
fn status_command(admin: SocketAddr, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["status", "--admin", &admin.to_string()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_status_page_shows_running_actions_and_workers_in_headless_chromium() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let Some(chromium) = require_tool("CHROMIUM", "chromium") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &["--admin-listen", "127.0.0.1:0", "--executors", "2"],
    );
    let admin = server.admin_addr.unwrap();
    let mut build = Command::new("bash")
        .arg(fixtures().join("bazel/build_target.sh"))
        .args([
            &server.url(),
            "//gen:sleepy",
            "gen/sleepy.txt",
            "sleepy action finished",
        ])
        .env("BAZEL", &bazel)
        .spawn()
        .unwrap();
    let running = || {
        let (_, json) = http_get(admin, "/status", &[]).unwrap();
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        status["scheduler"]["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|a| a["target"] == "//gen:sleepy"))
    };
    assert!(wait_until(300, running), "the sleepy action never ran");
    let url = format!("http://{admin}/");
    let headless = |extra: &[&str]| headless(&chromium, &url, extra);
    let dom = headless(&["--dump-dom"]);
    // The running action, with the mnemonic and target Bazel sent, and the local worker.
    let row = dom
        .split("<tr")
        .find(|r| r.contains("class=\"running-action\""))
        .unwrap_or_else(|| panic!("no running action in the DOM:\n{dom}"));
    assert!(
        row.contains("Genrule") && row.contains("//gen:sleepy"),
        "{row}"
    );
    assert!(
        dom.contains("class=\"worker\">"),
        "no worker in the DOM:\n{dom}"
    );
    assert!(
        dom.contains("-local</td>"),
        "the local worker is not listed:\n{dom}"
    );
    assert!(dom.contains("1 of 2 executors busy"), "{dom}");
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "the page does not refresh itself"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("chromium saved the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("status page screenshot: {}", shot.display());

    // `remexec status` prints the same running action.
    let out = status_command(admin, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("running: 1") && text.contains("//gen:sleepy"),
        "{text}"
    );

    assert!(build.wait().unwrap().success(), "the build failed");
    // Afterwards the action is among the recent ones, with its phases.
    let (_, json) = http_get(admin, "/status", &[]).unwrap();
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let recent = &status["scheduler"]["recent"][0];
    assert_eq!(recent["target"], "//gen:sleepy");
    assert_eq!(recent["outcome"], "success");
    let run = recent["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "run")
        .unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(run >= 20.0, "{recent}");
}

#[test]
fn a_failed_action_is_kept_and_its_message_links_to_its_page() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::exec(
        &server,
        cwd.path(),
        &["--", "sh", "-c", "echo 'it <broke> & failed' >&2; exit 7"],
    );
    assert_eq!(code, 7, "{stderr}");
    let link = stderr
        .lines()
        .find_map(|l| l.strip_prefix("remexec exec: remexec: "))
        .unwrap_or_else(|| panic!("no link in the message:\n{stderr}"));
    let prefix = format!("http://{admin}");
    let path = link
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{link}"));
    assert!(path.starts_with("/action/"), "{path}");
    let (code, page) = http_get(admin, path, &[]).unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<th>exit code</th><td>7</td>"), "{page}");
    assert!(page.contains("it &lt;broke&gt; &amp; failed"), "{page}");
    // The response is in the CAS: `remexec show action --response` prints it.
    let query: HashMap<_, _> = path
        .split_once('?')
        .unwrap()
        .1
        .split('&')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let action = path
        .strip_prefix("/action/")
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let response = query["response"].replace("%2F", "/");
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "show",
            "action",
            action,
            "--response",
            &response,
            "--server",
            &server.url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("exit_code: 7") && text.contains("it <broke> & failed"),
        "{text}"
    );
    // A hostile link: a bad digest or instance is a 400, an unknown response a 404.
    for (path, want) in [
        ("/action/zz/1", 400),
        (&format!("/action/{action}?instance=%2E%2E%2Fx"), 400),
        (
            &format!("/action/{action}?response={}/5", "0".repeat(64)),
            404,
        ),
    ] {
        let (code, body) = http_get(admin, path, &[]).unwrap();
        assert_eq!(code, want, "{path}: {body}");
    }
}

/// Row `name` of an action page's metadata table, as `remexec show action` prints it: `NAME
/// VALUE`.
fn page_row(page: &str, name: &str) -> String {
    let start = format!("<tr><th>{name}</th><td>");
    let value = page
        .lines()
        .find_map(|l| l.strip_prefix(&start)?.strip_suffix("</td></tr>"))
        .unwrap_or_else(|| panic!("no {name} row: {page}"));
    format!("{name} {value}")
}

/// What an action used (`remexec.usage.v1.ActionUsage`, measured by the supervised process
/// backend of `remexec serve`) is in its result: `remexec show action` and the action page
/// print it, and the scheduler's histograms count it.
#[test]
fn what_an_action_used_is_shown_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let input = cwd.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("a.txt"), "a".repeat(1000)).unwrap();
    std::fs::write(input.join("b.txt"), "b".repeat(24)).unwrap();
    // A child fills a 64 MiB buffer twice; the action fails, so its response is kept.
    let script = "cat a.txt b.txt >/dev/null; dd if=/dev/zero of=/dev/null bs=67108864 count=2 2>/dev/null; exit 3";
    let input_arg = input.to_str().unwrap();
    let (code, _, stderr) = common::exec(
        &server,
        cwd.path(),
        &["--input", input_arg, "--", "sh", "-c", script],
    );
    assert_eq!(code, 3, "{stderr}");
    let link = stderr
        .lines()
        .find_map(|l| l.strip_prefix("remexec exec: remexec: "))
        .unwrap_or_else(|| panic!("no link in the message:\n{stderr}"));
    let path = link.strip_prefix(&format!("http://{admin}")).unwrap();
    let (status, page) = http_get(admin, path, &[]).unwrap();
    assert_eq!(status, 200, "{page}");
    let row = |name: &str| page_row(&page, name);
    let resources = &row("resources");
    // `resources user_cpu Xs system_cpu Ys peak_memory N MiB (rusage) read R MiB written W MiB`
    let words: Vec<&str> = resources.split_whitespace().collect();
    let after = |name: &str| words[words.iter().position(|w| *w == name).unwrap() + 1];
    let mib = |name: &str| {
        assert_eq!(
            words[words.iter().position(|w| *w == name).unwrap() + 2],
            "MiB"
        );
        after(name).parse::<f64>().unwrap()
    };
    let peak = mib("peak_memory");
    assert!((64.0..1024.0).contains(&peak), "{resources}");
    assert!(
        mib("read") >= 128.0 && mib("written") >= 128.0,
        "{resources}"
    );
    let cpu = |name: &str| after(name).trim_end_matches('s').parse::<f64>().unwrap();
    assert!(cpu("user_cpu") + cpu("system_cpu") > 0.0, "{resources}");
    assert!(resources.contains("(rusage)"), "{resources}");
    assert_eq!(
        row("staging"),
        "staging entries 2 files 2 (1.0 KiB) cache_hits 0 fetched 1.0 KiB"
    );
    // `remexec show action` prints the same lines.
    let action = path["/action/".len()..].split('?').next().unwrap();
    let query = path.split_once('?').unwrap().1;
    let response = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("response="))
        .unwrap()
        .replace("%2F", "/");
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args(["show", "action", action, "--response", &response])
        .args(["--server", &server.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(resources), "{text}");
    assert!(text.contains("staging entries 2 files 2"), "{text}");
    // The scheduler's histograms counted it.
    let (_, metrics) = http_get(admin, "/metrics", &[]).unwrap();
    for series in [
        "remexec_action_peak_memory_bytes_count 1",
        r#"remexec_action_cpu_seconds_count{mode="user"} 1"#,
        r#"remexec_action_io_bytes_count{direction="written"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in {metrics}");
    }
    assert!(
        metrics.contains(r#"remexec_action_peak_memory_bytes_bucket{le="67108864.0"} 0"#),
        "{metrics}"
    );
    // A success is counted when it runs, and not again when Execute answers it from the
    // Action Cache (whose results a client may write itself).
    for (run, counted) in [(1, 2), (2, 2)] {
        let (code, _, stderr) = common::exec(&server, cwd.path(), &["--", "true"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            stderr.contains("from the Action Cache"),
            run == 2,
            "{stderr}"
        );
        let (_, metrics) = http_get(admin, "/metrics", &[]).unwrap();
        let series = format!("remexec_action_peak_memory_bytes_count {counted}\n");
        assert!(metrics.contains(&series), "run {run}: {metrics}");
    }
}

#[test]
fn the_status_page_needs_the_admin_permission_when_tokens_are_configured() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let entry = |name: &str, token: &str, permission: &str| {
        format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\npermissions = [{permission:?}]\ninstances = [\"*\"]\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        )
    };
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        entry("ops", "ops-token-0123456789", "admin")
            + &entry("ci", "ci-token-0123456789", "cache-read"),
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    let admin = server.admin_addr.unwrap();
    for path in ["/", "/status"] {
        let get = |token: Option<&str>| {
            let header = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = header
                .iter()
                .map(|h| ("authorization", h.as_str()))
                .collect();
            http_get(admin, path, &headers).unwrap().0
        };
        assert_eq!(get(None), 401, "{path} without a token");
        assert_eq!(
            get(Some("wrong-token-0123456789")),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            get(Some("ci-token-0123456789")),
            403,
            "{path} with a cache-read token"
        );
        assert_eq!(
            get(Some("ops-token-0123456789")),
            200,
            "{path} with an admin token"
        );
    }
    // Probes and scrapers need no token.
    assert_eq!(http_get(admin, "/metrics", &[]).unwrap().0, 200);
    assert_eq!(http_get(admin, "/readyz", &[]).unwrap().0, 200);
    // `remexec status` passes its token, and says why it is refused without.
    let out = status_command(admin, &["--token", "ops-token-0123456789"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("executors: 0 of"));
    let out = status_command(admin, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = status_command(admin, &["--token", "ops-token-0123456789", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["version"].as_str().unwrap().starts_with("0."));
    // A gRPC call refused for want of a token is counted, under its method and code.
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "ac",
            "get",
            &format!("{}/3", "a".repeat(64)),
            "--server",
            &server.url(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let refused = r#"remexec_rpc_requests_total{method="/build.bazel.remote.execution.v2.ActionCache/GetActionResult",code="UNAUTHENTICATED"}"#;
    assert_eq!(value(&metrics(admin), refused), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_mint_metric_labels_or_break_calls_with_their_metadata() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let channel = remexec_core::client::connect(&server.url()).await.unwrap();
    // Made-up methods, of made-up and of served services: one `unknown` series.
    for i in 0..20 {
        for path in [
            format!("/evil{i}.Service/Method"),
            format!("/google.bytestream.ByteStream/X{i}"),
        ] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<
                remexec_core::reapi::Digest,
                remexec_core::reapi::Digest,
            >::default();
            let status = grpc
                .unary(
                    tonic::Request::new(remexec_core::reapi::Digest::default()),
                    path.parse().unwrap(),
                    codec,
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
        }
    }
    let text = metrics(admin);
    assert_eq!(
        value(
            &text,
            r#"remexec_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"}"#
        ),
        40.0,
        "{text}"
    );
    assert!(!text.contains("evil"), "{text}");
    // A RequestMetadata header that is not base64 or not a message is ignored, not fatal.
    let mut cas = remexec_core::client::cas_client(channel.clone());
    for garbage in [
        &b"\xff\x00not a message"[..],
        &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
    ] {
        let mut request =
            tonic::Request::new(remexec_core::reapi::FindMissingBlobsRequest::default());
        request.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            tonic::metadata::MetadataValue::from_bytes(garbage),
        );
        cas.find_missing_blobs(request).await.unwrap();
    }
    assert_eq!(
        http_get(admin, "/readyz", &[]).unwrap().0,
        200,
        "the server is still up"
    );
}

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    service: String,
}

/// An in-process OTLP/gRPC trace collector.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_exports_a_span_per_phase_with_the_callers_invocation_id() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let data = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{otlp}");
    let server = ServerProcess::start(data.path(), &["--otlp-endpoint", &endpoint]);
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::exec(
        &server,
        cwd.path(),
        &[
            "--invocation-id",
            "inv-7f3a",
            "--",
            "sh",
            "-c",
            "echo traced",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    // SIGTERM flushes the spans not yet sent.
    assert_eq!(server.terminate().code(), Some(0));
    let spans = collector.0.lock().unwrap().clone();
    eprintln!("received {} spans", spans.len());
    let execute = spans
        .iter()
        .find(|s| s.name == "/build.bazel.remote.execution.v2.Execution/Execute")
        .unwrap_or_else(|| panic!("no Execute span among {spans:#?}"));
    assert_eq!(execute.service, "remexec");
    assert_eq!(execute.attributes["tool_invocation_id"], "inv-7f3a");
    assert_eq!(execute.attributes["action_mnemonic"], "RemexecExec");
    for phase in ["queued", "input_fetch", "run", "upload"] {
        let span = spans
            .iter()
            .find(|s| s.name == format!("action {phase}"))
            .unwrap_or_else(|| panic!("no {phase} span among {spans:#?}"));
        assert_eq!(
            span.attributes["tool_invocation_id"], "inv-7f3a",
            "{span:?}"
        );
        assert_eq!(span.attributes["remexec.outcome"], "success");
        assert_eq!(
            span.trace_id, execute.trace_id,
            "{phase} is in the Execute trace"
        );
        assert_eq!(
            span.parent_span_id, execute.span_id,
            "{phase} is a child of Execute"
        );
    }
    // The CAS calls of the same client carry no invocation, but are spans too.
    assert!(
        spans
            .iter()
            .any(|s| s.name.contains("ContentAddressableStorage"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_zipkin_collector() {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/api/v2/spans",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let spans: serde_json::Value = serde_json::from_slice(&body).unwrap();
                sink.lock()
                    .unwrap()
                    .extend(spans.as_array().unwrap().iter().cloned());
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let zipkin = format!("http://{}/api/v2/spans", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--zipkin-endpoint", &zipkin]);
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::exec(
        &server,
        cwd.path(),
        &["--invocation-id", "inv-zipkin", "--", "true"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(server.terminate().code(), Some(0));
    let spans = received.lock().unwrap().clone();
    let run = spans
        .iter()
        .find(|s| s["name"] == "action run")
        .unwrap_or_else(|| panic!("no run span among {spans:#?}"));
    assert_eq!(run["tags"]["tool_invocation_id"], "inv-zipkin");
}

#[test]
fn the_access_log_has_one_line_per_call_with_its_code_and_caller() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "--data-dir",
        ])
        .arg(data.path().join("data"))
        .env("REMEXEC_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("remexec: listening on ") {
            break a.to_string();
        }
    };
    let out = Command::new(env!("CARGO_BIN_EXE_remexec"))
        .args([
            "ac",
            "get",
            &format!("{}/3", "a".repeat(64)),
            "--server",
            &format!("grpc://{addr}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a miss");
    let found = || {
        std::fs::read_to_string(&log).unwrap().lines().any(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            v["target"] == "remexec::access"
                && v["fields"]["method"]
                    == "/build.bazel.remote.execution.v2.ActionCache/GetActionResult"
                && v["fields"]["code"] == "NOT_FOUND"
                && v["fields"]["caller"] == "anonymous"
                && v["fields"]["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        })
    };
    assert!(
        wait_until(10, found),
        "no access line for the miss:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_worker_is_ready_only_while_attached_and_with_free_disk() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let port = common::free_port();
    let url = format!("grpc://127.0.0.1:{port}");
    let start = |dir: &std::path::Path, extra: &[&str]| {
        let admin: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let mut args = vec!["--admin-listen".to_string(), admin.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child =
            common::start_worker_at(&url, "w", dir, 1, &args, std::process::Stdio::inherit());
        (common::KillOnDrop(child), admin)
    };
    let ready = |admin| http_get(admin, "/readyz", &[]).map(|(code, _)| code);
    let (worker, admin) = start(dirs[0].path(), &[]);
    // No scheduler yet: alive, not ready.
    assert!(wait_until(10, || http_get(admin, "/healthz", &[])
        .is_some_and(|(c, _)| c == 200)));
    assert!(wait_until(10, || ready(admin) == Some(503)));
    let listen = format!("127.0.0.1:{port}");
    let scheduler = ServerProcess::start_at(&listen, dirs[1].path(), &[], &[]);
    assert!(
        wait_until(30, || ready(admin) == Some(200)),
        "attached but not ready"
    );
    drop(scheduler);
    assert!(
        wait_until(30, || ready(admin) == Some(503)),
        "ready without a scheduler"
    );
    drop(worker);
    // Attached, but with less free disk than required: not ready.
    let _scheduler = ServerProcess::start_at(&listen, dirs[1].path(), &[], &[]);
    let config = dirs[2].path().join("worker.toml");
    std::fs::write(&config, "[worker]\nmin_free_disk = \"1000 PiB\"\n").unwrap();
    let (_full, admin) = start(
        &dirs[2].path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(wait_until(10, || ready(admin) == Some(503)));
    // It did attach: the scheduler lists its executor.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(ready(admin), Some(503), "ready with a full disk");
}

/// `serve --property` (as in CONFIG.md) adds to the local worker's executor properties, beside
/// the detected ones, among them the platform lexicon's `OSFamily` and `ISA`.
#[test]
fn serve_takes_executor_properties_and_advertises_the_lexicons_isa() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--executors",
            "1",
            "--property",
            "pool=fast",
            "--property",
            "gpu=none",
        ],
    );
    let admin = server.admin_addr.unwrap();
    let mut properties = Vec::new();
    assert!(
        wait_until(10, || {
            let (_, json) = http_get(admin, "/status", &[]).unwrap();
            let status: serde_json::Value = serde_json::from_str(&json).unwrap();
            properties = status["scheduler"]["executors"][0]["properties"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            !properties.is_empty()
        }),
        "no executor attached"
    );
    let has = |name: &str, value: &str| properties.iter().any(|p| p[0] == name && p[1] == value);
    for (name, value) in [
        ("pool", "fast"),
        ("gpu", "none"),
        ("OSFamily", "linux"),
        ("ISA", remexec_worker::host_isa()),
    ] {
        assert!(has(name, value), "{name}={value} not in {properties:?}");
    }
    if std::env::consts::ARCH == "x86_64" {
        assert!(has("ISA", "x86-64"), "{properties:?}");
    }
}

/// Execute's own Action Cache checks show in the status page's hit rate, beside
/// GetActionResult's lookups (counted apart, so that Bazel's GetActionResult-then-Execute does
/// not count one miss twice): after an action runs once and is then answered from the cache
/// through Execute alone (`remexec exec` sends no GetActionResult), there is a miss and a hit.
#[test]
fn executes_answered_from_the_action_cache_count_in_the_hit_rate() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    for _ in 0..2 {
        let (code, stdout, stderr) =
            common::exec(&server, work.path(), &["--", "sh", "-c", "echo counted"]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("counted"), "{stdout}");
    }
    let (_, json) = http_get(admin, "/status", &[]).unwrap();
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["action_cache"]["execute_hits"], 1, "{json}");
    assert_eq!(status["action_cache"]["execute_misses"], 1, "{json}");
    assert_eq!(status["action_cache"]["misses"], 0, "{json}");
    let (_, page) = http_get(admin, "/", &[]).unwrap();
    assert!(!page.contains("no lookups yet"), "{page}");
    assert!(page.contains("50.0% of 2 Execute cache checks"), "{page}");
    let metrics = metrics(admin);
    assert_eq!(
        value(
            &metrics,
            r#"remexec_execute_cache_checks_total{result="hit"}"#
        ),
        1.0
    );
}
