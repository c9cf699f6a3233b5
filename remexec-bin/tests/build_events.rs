//! The Build Event Service and the invocation pages, against real `remexec serve` processes:
//! real Bazel 4.2.3 streaming a build with a failing test (`--bes_backend`), its invocation page
//! in headless Chromium, and a client of our own for the protocol's edges: ordered
//! acknowledgements, resuming, gaps, malformed and huge events, hostile names, a crash, the
//! stream limit, permissions, and a flood of 100,000 events.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::{ServerProcess, fixtures, headless, http_get, require_tool};
use prost::Message as _;
use remexec_core::client;
use remexec_core::reapi::{
    BatchUpdateBlobsRequest, Digest as PbDigest, batch_update_blobs_request,
};
use remexec_proto::build_event_stream as bep;
use remexec_proto::build_events::v1 as bes;
use remexec_proto::prost_types;
use tonic::Code;
use tonic::transport::Channel;

const INVOCATION: &str = "0b3e2a1c-94d4-4a55-9b0e-5b2a56c9d7e1";
const HOSTILE_LABEL: &str = "//x:<script>alert(1)</script>";
const LOG_TEXT: &str = "assertion failed: <img src=x onerror=alert(1)> & more";

fn bazel_event(id: bep::build_event_id::Id, payload: bep::build_event::Payload) -> bes::BuildEvent {
    let event = bep::BuildEvent {
        id: Some(bep::BuildEventId { id: Some(id) }),
        payload: Some(payload),
        ..Default::default()
    };
    any_event(
        "type.googleapis.com/build_event_stream.BuildEvent",
        event.encode_to_vec(),
    )
}

fn any_event(type_url: &str, value: Vec<u8>) -> bes::BuildEvent {
    bes::BuildEvent {
        event_time: None,
        event: Some(bes::build_event::Event::BazelEvent(prost_types::Any {
            type_url: type_url.into(),
            value,
        })),
    }
}

fn request(
    invocation: &str,
    seq: i64,
    event: bes::BuildEvent,
) -> bes::PublishBuildToolEventStreamRequest {
    bes::PublishBuildToolEventStreamRequest {
        ordered_build_event: Some(bes::OrderedBuildEvent {
            stream_id: Some(bes::StreamId {
                build_id: "build-1".into(),
                invocation_id: invocation.into(),
                component: 1,
            }),
            sequence_number: seq,
            event: Some(event),
        }),
        ..Default::default()
    }
}

fn progress(text: &str) -> bes::BuildEvent {
    use bep::build_event_id::{Id, ProgressId};
    let payload = bep::build_event::Payload::Progress(bep::Progress {
        stderr: text.into(),
        ..Default::default()
    });
    bazel_event(Id::Progress(ProgressId { opaque_count: 1 }), payload)
}

#[allow(deprecated)] // the *_millis fields: what Bazel 4 sends
/// A small build: started, a pattern, a test target with a hostile name whose one attempt
/// failed with its log at `log_uri`, and the end.
fn build(log_uri: &str) -> Vec<bes::BuildEvent> {
    use bep::build_event::Payload as P;
    use bep::build_event_id::{self as id, Id};
    let label = HOSTILE_LABEL.to_string();
    let started = bep::BuildStarted {
        uuid: INVOCATION.into(),
        start_time_millis: 1_700_000_000_000,
        command: "test".into(),
        build_tool_version: "4.2.3".into(),
        ..Default::default()
    };
    let test_result = bep::TestResult {
        status: bep::TestStatus::Failed as i32,
        test_attempt_duration_millis: 1500,
        test_action_output: vec![bep::File {
            name: "test.log".into(),
            file: Some(bep::file::File::Uri(log_uri.into())),
            ..Default::default()
        }],
        ..Default::default()
    };
    let finished = bep::BuildFinished {
        exit_code: Some(bep::build_finished::ExitCode {
            name: "TESTS_FAILED".into(),
            code: 3,
        }),
        finish_time_millis: 1_700_000_004_000,
        ..Default::default()
    };
    vec![
        bazel_event(Id::Started(id::BuildStartedId {}), P::Started(started)),
        bazel_event(
            Id::Pattern(id::PatternExpandedId {
                pattern: vec!["//x/...".into()],
            }),
            P::Expanded(Default::default()),
        ),
        bazel_event(
            Id::TargetConfigured(id::TargetConfiguredId {
                label: label.clone(),
                aspect: String::new(),
            }),
            P::Configured(bep::TargetConfigured {
                target_kind: "sh_test rule".into(),
                ..Default::default()
            }),
        ),
        bazel_event(
            Id::TestResult(id::TestResultId {
                label: label.clone(),
                run: 1,
                shard: 1,
                attempt: 1,
                ..Default::default()
            }),
            P::TestResult(test_result),
        ),
        bazel_event(
            Id::TargetCompleted(id::TargetCompletedId {
                label: label.clone(),
                ..Default::default()
            }),
            P::Completed(bep::TargetComplete {
                success: true,
                ..Default::default()
            }),
        ),
        bazel_event(
            Id::TestSummary(id::TestSummaryId {
                label,
                ..Default::default()
            }),
            P::TestSummary(bep::TestSummary {
                overall_status: bep::TestStatus::Failed as i32,
                ..Default::default()
            }),
        ),
        bazel_event(
            Id::BuildFinished(id::BuildFinishedId {}),
            P::Finished(finished),
        ),
    ]
}

/// Streams `requests`, then closes; the sequence numbers acknowledged, or the error (with
/// what was acknowledged before it).
async fn publish(
    channel: &Channel,
    requests: Vec<bes::PublishBuildToolEventStreamRequest>,
) -> (Vec<i64>, Option<tonic::Status>) {
    let mut client = bes::publish_build_event_client::PublishBuildEventClient::new(channel.clone())
        .max_encoding_message_size(64 << 20);
    let mut acks = Vec::new();
    let mut stream = match client
        .publish_build_tool_event_stream(tokio_stream::iter(requests))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return (acks, Some(status)),
    };
    loop {
        match stream.message().await {
            Ok(Some(ack)) => acks.push(ack.sequence_number),
            Ok(None) => return (acks, None),
            Err(status) => return (acks, Some(status)),
        }
    }
}

/// Stores `data` in the server's CAS; its `bytestream://` URI.
async fn upload(channel: &Channel, data: &[u8]) -> String {
    use remexec_core::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    let digest = remexec_core::DigestFunction::Sha256.digest_of(data);
    let pb: PbDigest = digest.to_proto();
    ContentAddressableStorageClient::new(channel.clone())
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(pb.clone()),
                data: data.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    format!("bytestream://localhost/blobs/{}/{}", pb.hash, pb.size_bytes)
}

/// A GET's whole response, headers and body.
fn raw_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: remexec\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn json(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(admin, path, &[("Accept", "application/json")]).unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn numbered(
    invocation: &str,
    events: Vec<bes::BuildEvent>,
    from: i64,
) -> Vec<bes::PublishBuildToolEventStreamRequest> {
    events
        .into_iter()
        .zip(from..)
        .map(|(e, seq)| request(invocation, seq, e))
        .collect()
}

/// Events are acknowledged in order, folded into an invocation that the pages show (escaped,
/// with the failing test's log from the CAS), and a resumed stream is applied once.
#[tokio::test]
async fn events_are_acknowledged_in_order_and_shown_escaped() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let channel = client::connect(&server.url()).await.unwrap();
    let uri = upload(&channel, LOG_TEXT.as_bytes()).await;
    let events = build(&uri);
    let n = events.len() as i64;
    // The first four, then (as a client that lost its connection does) from the third on.
    let (acks, error) = publish(&channel, numbered(INVOCATION, events[..4].to_vec(), 1)).await;
    assert_eq!((acks, error.map(|s| s.code())), ((1..=4).collect(), None));
    let (acks, error) = publish(&channel, numbered(INVOCATION, events[2..].to_vec(), 3)).await;
    assert_eq!((acks, error.map(|s| s.code())), ((3..=n).collect(), None));

    let (code, inv) = json(admin, &format!("/invocation/{INVOCATION}"));
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["events"], n, "each event applied once: {inv}");
    assert_eq!(inv["command"], "test");
    assert_eq!(inv["status"], "failed");
    assert_eq!(inv["tests"][HOSTILE_LABEL]["status"], "failed");
    assert_eq!(inv["tests"][HOSTILE_LABEL]["attempts"], 1, "{inv}");
    assert_eq!(inv["targets"][HOSTILE_LABEL]["status"], "succeeded");
    let (_, list) = json(admin, "/invocations");
    assert_eq!(list[0]["id"], INVOCATION, "{list}");
    assert_eq!(list[0]["failed_tests"], 1, "{list}");

    let (code, page) = http_get(admin, &format!("/invocation/{INVOCATION}"), &[]).unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(
        !page.contains("<script>alert") && !page.contains("<img src=x"),
        "{page}"
    );
    assert!(
        page.contains("//x:&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains("assertion failed: &lt;img src=x onerror=alert(1)&gt; &amp; more"),
        "the failing test's log is shown, escaped: {page}"
    );
    // The log itself, as text or as a download with a name made safe, never as a page.
    let blob = uri.split("/blobs/").nth(1).unwrap();
    let head = raw_get(
        admin,
        &format!("/blob/{blob}?instance=&name=a%22%0D%0Ab.log&view=text"),
    );
    assert!(head.ends_with(LOG_TEXT), "{head}");
    let head = head.to_ascii_lowercase();
    for header in [
        "content-type: text/plain; charset=utf-8",
        "x-content-type-options: nosniff",
        "content-security-policy: default-src 'none'",
        "content-disposition: inline; filename=\"a___b.log\"",
    ] {
        assert!(head.contains(header), "{header} not in {head}");
    }
    let download = raw_get(admin, &format!("/blob/{blob}?name=test.log")).to_ascii_lowercase();
    assert!(
        download.contains("content-type: application/octet-stream"),
        "{download}"
    );
    assert!(
        download.contains("content-disposition: attachment; filename=\"test.log\""),
        "{download}"
    );
    let (code, list) = http_get(admin, "/invocations", &[]).unwrap();
    assert_eq!(code, 200);
    assert!(
        list.contains(&format!("/invocation/{INVOCATION}")),
        "{list}"
    );
    // Unknown and hostile ids.
    for (path, want) in [
        ("/invocation/nope".to_string(), 404),
        ("/invocation/%3Cscript%3E".to_string(), 400),
        (format!("/invocation/{}", "a".repeat(200)), 400),
        // The CAS pages: a bad digest, a hostile instance, what the CAS does not hold.
        ("/tree/zz/1".to_string(), 400),
        (format!("/tree/{}/5?instance=%2E%2E", "0".repeat(64)), 400),
        (
            format!("/blob/{}/5?instance=a%2F..%2Fb", "0".repeat(64)),
            400,
        ),
        (format!("/tree/{}/5?path=%3Cscript%3E", "0".repeat(64)), 404),
        (format!("/blob/{}/5?name=%0D%0Ax", "0".repeat(64)), 404),
    ] {
        let (code, body) = http_get(admin, &path, &[]).unwrap();
        assert_eq!(code, want, "{path}: {body}");
        // A refusal is plain text (sent with nosniff), never a page.
        assert!(!body.contains("<html"), "{body}");
    }
}

/// A gap, a malformed event, an event of another type, a hostile id, a request without an
/// event and an event over the size limit each end the stream with a clear code, after the
/// events before them were acknowledged; the server serves on.
#[tokio::test]
async fn bad_streams_get_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let channel = client::connect(&server.url()).await.unwrap();
    let inv = "bad-streams";
    let ok = || progress("fine");
    let cases: Vec<(
        &str,
        Vec<bes::PublishBuildToolEventStreamRequest>,
        Vec<i64>,
        Code,
    )> = vec![
        (
            "a gap",
            vec![request(inv, 1, ok()), request(inv, 3, ok())],
            vec![1],
            Code::FailedPrecondition,
        ),
        (
            "garbage bytes",
            vec![request(
                "garbage",
                1,
                any_event(
                    "type.googleapis.com/build_event_stream.BuildEvent",
                    vec![0xff; 9],
                ),
            )],
            vec![],
            Code::InvalidArgument,
        ),
        (
            "another type",
            vec![request(
                "typed",
                1,
                any_event("type.googleapis.com/evil.Thing", vec![]),
            )],
            vec![],
            Code::InvalidArgument,
        ),
        (
            "a hostile invocation id",
            vec![request("../../etc", 1, ok())],
            vec![],
            Code::InvalidArgument,
        ),
        (
            "no ordered event",
            vec![bes::PublishBuildToolEventStreamRequest::default()],
            vec![],
            Code::InvalidArgument,
        ),
        (
            "two invocations on one stream",
            vec![request("one", 1, ok()), request("two", 2, ok())],
            vec![1],
            Code::InvalidArgument,
        ),
    ];
    for (what, requests, want_acks, want) in cases {
        let (acks, error) = publish(&channel, requests).await;
        assert_eq!(acks, want_acks, "{what}");
        let status = error.unwrap_or_else(|| panic!("{what}: no error"));
        assert_eq!(status.code(), want, "{what}: {status:?}");
    }
    // 5 MiB in one event: refused before it is buffered whole.
    let huge = progress(&"x".repeat(5 << 20));
    let (acks, error) = publish(&channel, vec![request("huge", 1, huge)]).await;
    let code = error.expect("the huge event is refused").code();
    assert!(
        acks.is_empty() && matches!(code, Code::ResourceExhausted | Code::OutOfRange),
        "{code:?}"
    );
    // And the server still takes a good stream.
    let (acks, error) = publish(&channel, vec![request("after", 1, ok())]).await;
    assert_eq!((acks, error.map(|s| s.code())), (vec![1], None));
}

/// An invocation takes at most 16 streams, and a start time past what calendars print still
/// makes a page.
#[tokio::test]
async fn an_invocations_streams_and_times_are_bounded() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let channel = client::connect(&server.url()).await.unwrap();
    let ok = || progress("fine");
    // At most 16 streams (build ids, components) per invocation.
    for n in 0..17 {
        let mut r = request("many", 1, ok());
        let ordered = r.ordered_build_event.as_mut().unwrap();
        ordered.stream_id.as_mut().unwrap().build_id = format!("build-{n}");
        let (_, error) = publish(&channel, vec![r]).await;
        let want = if n < 16 {
            None
        } else {
            Some(Code::FailedPrecondition)
        };
        assert_eq!(error.map(|s| s.code()), want, "stream {n}");
    }
    // A start in the year 292 billion: the pages print it as a number.
    use bep::build_event_id::{BuildStartedId, Id};
    let started = bep::BuildStarted {
        start_time: Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        }),
        ..Default::default()
    };
    let event = bazel_event(
        Id::Started(BuildStartedId {}),
        bep::build_event::Payload::Started(started),
    );
    let (_, error) = publish(&channel, vec![request("far-future", 1, event)]).await;
    assert!(error.is_none(), "{error:?}");
    let admin = server.admin_addr.unwrap();
    for path in ["/invocations", "/invocation/far-future"] {
        let (code, body) = http_get(admin, path, &[]).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.contains("ms after the epoch"), "{body}");
    }
}

/// What was acknowledged survives a SIGKILL of the server, and the client resumes after it.
#[tokio::test]
async fn acknowledged_events_survive_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let channel = client::connect(&server.url()).await.unwrap();
    let events: Vec<_> = (0..50).map(|i| progress(&format!("line {i}\n"))).collect();
    let (acks, error) = publish(&channel, numbered("crash", events, 1)).await;
    assert_eq!((acks.len(), error.map(|s| s.code())), (50, None));
    server.kill();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let (code, inv) = json(admin, "/invocation/crash");
    assert_eq!(code, 200, "{inv}");
    assert_eq!(inv["events"], 50);
    assert!(
        inv["output"].as_str().unwrap().ends_with("line 49\n"),
        "{inv}"
    );
    let channel = client::connect(&server.url()).await.unwrap();
    let (acks, error) = publish(&channel, numbered("crash", vec![progress("51\n")], 51)).await;
    assert_eq!((acks, error.map(|s| s.code())), (vec![51], None));
    let (_, inv) = json(admin, "/invocation/crash");
    assert_eq!(inv["events"], 51);
}

/// Past `max_streams` open streams a new one gets RESOURCE_EXHAUSTED; and with authentication,
/// only the `build-events` permission may publish.
#[tokio::test]
async fn streams_are_limited_and_need_the_build_events_permission() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("remexec.toml");
    std::fs::write(&config, "[build_events]\nmax_streams = 2\n").unwrap();
    let tokens = data.path().join("tokens.toml");
    let mut text = String::new();
    for (name, permissions) in [("ci", r#""build-events""#), ("reader", r#""cache-read""#)] {
        text += &format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\npermissions = [{permissions}]\ninstances = [\"*\"]\n",
            remexec_core::auth::hash_token(&format!("{name}-secret"))
        );
    }
    std::fs::write(&tokens, text).unwrap();
    let server = ServerProcess::start(
        &data.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    let channel = client::connect(&server.url()).await.unwrap();
    let open = |token: &'static str, inv: &'static str| {
        let channel = channel.clone();
        async move {
            let mut client =
                bes::publish_build_event_client::PublishBuildEventClient::with_interceptor(
                    channel,
                    move |mut r: tonic::Request<()>| {
                        r.metadata_mut()
                            .insert("authorization", format!("Bearer {token}").parse().unwrap());
                        Ok(r)
                    },
                );
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(request(inv, 1, progress("x"))).await.unwrap();
            let call = client
                .publish_build_tool_event_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            let result = match call {
                Ok(r) => {
                    let mut acks = r.into_inner();
                    acks.message().await.map(|a| a.map(|a| a.sequence_number))
                }
                Err(status) => Err(status),
            };
            (tx, result)
        }
    };
    let (_a, first) = open("ci-secret", "s1").await;
    let (_b, second) = open("ci-secret", "s2").await;
    assert_eq!((first.unwrap(), second.unwrap()), (Some(1), Some(1)));
    let (_c, third) = open("ci-secret", "s3").await;
    assert_eq!(third.unwrap_err().code(), Code::ResourceExhausted);
    drop((_a, _b));
    let (_, denied) = open("reader-secret", "s4").await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
}

/// Event `seq` of the flood: progress, or a target of a label of its own.
fn flood_event(seq: i64) -> bes::PublishBuildToolEventStreamRequest {
    use bep::build_event_id::{Id, TargetConfiguredId};
    let event = match seq % 2 {
        0 => progress(&format!("{seq:>90}\n")),
        _ => bazel_event(
            Id::TargetConfigured(TargetConfiguredId {
                label: format!("//flood/pkg{}:target_{seq}", seq % 100),
                aspect: String::new(),
            }),
            bep::build_event::Payload::Configured(bep::TargetConfigured {
                target_kind: "genrule rule".into(),
                ..Default::default()
            }),
        ),
    };
    request("flood", seq, event)
}

/// VmHWM (peak resident set) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// 100,000 events in one stream (targets past the per-invocation limit, and progress): all are
/// acknowledged, memory stays bounded, and the cache answers meanwhile. The figures go in
/// BENCHMARKS.md.
#[tokio::test]
async fn a_flood_of_events_keeps_memory_bounded() {
    const EVENTS: i64 = 100_000;
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let pid = server.child.id();
    let channel = client::connect(&server.url()).await.unwrap();
    let before = peak_rss(pid);
    // Cache writes' latencies before the flood, and during it (reported, not asserted).
    let mut quiet = Vec::new();
    for n in 0..40 {
        let t = Instant::now();
        upload(&channel, format!("quiet {n}").as_bytes()).await;
        quiet.push(t.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The flood comes from a thread and a connection of its own, so that making and encoding
    // it does not hold up this runtime's writes (only the machine's cores are shared).
    let url = server.url();
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = client::connect(&url).await.unwrap();
            let mut client = bes::publish_build_event_client::PublishBuildEventClient::new(channel);
            let requests = (1..=EVENTS).map(flood_event);
            let mut acks = client
                .publish_build_tool_event_stream(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();
            let mut n = 0i64;
            while let Some(ack) = acks.message().await.unwrap() {
                n += 1;
                assert_eq!(ack.sequence_number, n, "in order");
            }
            n
        })
    });
    // The cache answers while the flood goes on.
    let mut busy = Vec::new();
    while !flood.is_finished() {
        let t = Instant::now();
        upload(&channel, format!("blob {}", busy.len()).as_bytes()).await;
        busy.push(t.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let answered = busy.len();
    assert_eq!(flood.join().unwrap(), EVENTS);
    let took = started.elapsed();
    let after = peak_rss(pid);
    let (_, inv) = json(admin, "/invocation/flood");
    assert_eq!(inv["events"], EVENTS);
    assert_eq!(
        inv["targets"].as_object().unwrap().len(),
        20_000,
        "the per-invocation limit"
    );
    assert_eq!(inv["dropped"], EVENTS / 2 - 20_000);
    let store = dir_size(&data.path().join("build-events"));
    eprintln!(
        "build events flood: {EVENTS} events in {:.1}s ({:.0}/s); server peak RSS {:.1} MiB before, {:.1} MiB after; store {:.1} MiB; {answered} cache writes answered meanwhile",
        took.as_secs_f64(),
        EVENTS as f64 / took.as_secs_f64(),
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        store as f64 / (1 << 20) as f64,
    );
    let ms = |mut l: Vec<std::time::Duration>| {
        l.sort();
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            at(0.5),
            at(0.9),
            at(1.0)
        )
    };
    eprintln!(
        "cache write latency: before the flood {}; during it {}",
        ms(quiet),
        ms(busy)
    );
    assert!(answered > 0);
    let (_, metrics) = http_get(admin, "/metrics", &[]).unwrap();
    for series in [
        "remexec_build_events_total 100000",
        "remexec_build_event_streams 0",
        "remexec_invocations_kept 1",
    ] {
        assert!(metrics.contains(series), "{series} not in {metrics}");
    }
    assert!(
        after < before + (256 << 20),
        "peak RSS grew from {before} to {after} bytes"
    );
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Real Bazel 4.2.3 runs `bazel test //... //bes:fails` remotely with `--bes_backend` and
/// `--bes_results_url` against `remexec serve`. The invocation page Bazel links to, in headless
/// Chromium, lists every target and test, with the failing test's log; the list, the
/// invocation and one of its actions are saved as screenshots.
#[test]
fn bazel_streams_its_build_and_the_invocation_page_shows_it() {
    let Some(bazel) = require_tool("BAZEL", "bazel") else {
        return;
    };
    let Some(chromium) = require_tool("CHROMIUM", "chromium") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.unwrap();
    let out = tempfile::tempdir().unwrap();
    let results = format!("http://{admin}/invocation/");
    let status = std::process::Command::new("bash")
        .arg(fixtures().join("bazel/bes_e2e.sh"))
        .arg(server.url())
        .env("BAZEL", &bazel)
        .env("BES_RESULTS_URL", &results)
        .env("BES_OUT_DIR", out.path())
        .status()
        .unwrap();
    assert!(status.success(), "bes_e2e.sh failed: {status}");
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap();
    let id = read("invocation").trim().to_string();
    let url = format!("{results}{id}");
    let dom = headless(&chromium, &url, &["--dump-dom"]);
    for label in read("targets").lines().chain(read("tests").lines()) {
        assert!(
            dom.contains(&format!("<code>{label}</code>")),
            "{label} is not on the page:\n{dom}"
        );
    }
    let failing = dom
        .split("<tr")
        .find(|r| r.contains("<code>//bes:fails</code>") && r.contains("class=\"test\""))
        .unwrap_or_else(|| panic!("no row for //bes:fails:\n{dom}"));
    assert!(failing.contains("failed"), "{failing}");
    assert!(
        dom.contains("bes-e2e: &lt;b&gt;deliberate&lt;/b&gt; test failure &amp; more"),
        "the failing test's log, as text:\n{dom}"
    );
    assert!(
        dom.contains("class=\"remote-action"),
        "no remote actions:\n{dom}"
    );
    // The action page of one of them links back.
    let action = dom
        .split("href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        .find(|h| h.starts_with("/action/"))
        .unwrap_or_else(|| panic!("no action link:\n{dom}"));
    let action_url = format!("http://{admin}{action}");
    let page = headless(&chromium, &action_url, &["--dump-dom"]);
    assert!(page.contains("id=\"arguments\""), "{page}");
    assert!(page.contains(&format!("/invocation/{id}")), "{page}");
    // Screenshots, kept as the test's artefacts.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-events");
    std::fs::create_dir_all(&shots).unwrap();
    for (name, url) in [
        ("invocations.png", format!("http://{admin}/invocations")),
        ("invocation.png", url.clone()),
        ("action.png", action_url),
    ] {
        let shot = shots.join(name);
        let _ = std::fs::remove_file(&shot);
        headless(
            &chromium,
            &url,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,2000",
            ],
        );
        let png = std::fs::read(&shot).expect("chromium saved the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
        eprintln!("screenshot: {}", shot.display());
    }
    // And as JSON for scripts.
    let (code, inv) = json(admin, &format!("/invocation/{id}"));
    assert_eq!(code, 200);
    assert_eq!(inv["tests"]["//bes:fails"]["status"], "failed", "{inv}");
    assert!(inv["actions"].as_array().unwrap().len() > 5, "{inv}");
}
