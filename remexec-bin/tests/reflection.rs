//! gRPC server reflection: an in-process server with only the reflection services answers
//! `ListServices` with every service remexec serves and describes them, over both protocol
//! versions (v1 and v1alpha), as `grpcurl list` / `grpcurl describe` would ask.

#![allow(clippy::unwrap_used)]

use prost::Message as _;
use remexec_proto::google::protobuf::FileDescriptorProto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic_reflection::pb::{v1, v1alpha};

/// Every service remexec mounts, as reflection must list it.
const SERVED: &[&str] = &[
    "build.bazel.remote.execution.v2.Execution",
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.Capabilities",
    "google.bytestream.ByteStream",
    "google.longrunning.Operations",
    "remexec.worker.v1.WorkerService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A server with only the reflection services on 127.0.0.1:0; its URL, and a sender that stops
/// it.
async fn start() -> (String, oneshot::Sender<()>) {
    let (reflection_v1, reflection_v1alpha) =
        remexec_core::server::reflection::services(&[remexec_proto::FILE_DESCRIPTOR_SET]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    (url, stop)
}

async fn v1_client(
    url: &str,
) -> v1::server_reflection_client::ServerReflectionClient<tonic::transport::Channel> {
    v1::server_reflection_client::ServerReflectionClient::new(
        Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// One v1 request on a fresh reflection stream; its answer.
async fn ask_v1(
    url: &str,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client = v1_client(url).await;
    let mut answers = client
        .server_reflection_info(tokio_stream::once(v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

/// One v1alpha request on a fresh reflection stream; its answer.
async fn ask_v1alpha(
    url: &str,
    request: v1alpha::server_reflection_request::MessageRequest,
) -> v1alpha::server_reflection_response::MessageResponse {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client
        .server_reflection_info(tokio_stream::once(v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

fn decode_files(files: &[Vec<u8>]) -> Vec<FileDescriptorProto> {
    files
        .iter()
        .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap())
        .collect()
}

/// The methods of `service` (fully qualified) in `files`, if one of them declares it.
fn methods_of(files: &[FileDescriptorProto], service: &str) -> Option<Vec<String>> {
    files.iter().find_map(|file| {
        file.service.iter().find_map(|s| {
            let full = format!("{}.{}", file.package(), s.name());
            (full == service).then(|| s.method.iter().map(|m| m.name().to_owned()).collect())
        })
    })
}

#[tokio::test]
async fn v1_lists_every_served_service() {
    let (url, _stop) = start().await;
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::ListServicesResponse(list) = answer else {
        panic!("not a ListServicesResponse: {answer:?}");
    };
    let listed: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVED {
        assert!(
            listed.contains(service),
            "{service} missing from {listed:?}"
        );
    }
}

#[tokio::test]
async fn v1_describes_execution_and_its_dependencies() {
    let (url, _stop) = start().await;
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "build.bazel.remote.execution.v2.Execution".into(),
        ),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(found) = answer
    else {
        panic!("not a FileDescriptorResponse: {answer:?}");
    };
    let files = decode_files(&found.file_descriptor_proto);
    let methods = methods_of(&files, "build.bazel.remote.execution.v2.Execution").unwrap();
    assert!(methods.iter().any(|m| m == "Execute"), "{methods:?}");
    assert!(methods.iter().any(|m| m == "WaitExecution"), "{methods:?}");

    // grpcurl then fetches each import by name; every one must be there.
    let remote_execution = files
        .iter()
        .find(|f| f.name() == "build/bazel/remote/execution/v2/remote_execution.proto")
        .unwrap();
    for dependency in &remote_execution.dependency {
        let answer = ask_v1(
            &url,
            v1::server_reflection_request::MessageRequest::FileByFilename(dependency.clone()),
        )
        .await;
        assert!(
            matches!(
                answer,
                v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
            ),
            "{dependency}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn v1_describes_every_served_service() {
    let (url, _stop) = start().await;
    for service in SERVED {
        let answer = ask_v1(
            &url,
            v1::server_reflection_request::MessageRequest::FileContainingSymbol((*service).into()),
        )
        .await;
        let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(found) = answer
        else {
            panic!("{service}: not a FileDescriptorResponse: {answer:?}");
        };
        let methods = methods_of(&decode_files(&found.file_descriptor_proto), service)
            .unwrap_or_else(|| panic!("{service} is not declared in the answer"));
        assert!(!methods.is_empty(), "{service} has no methods");
    }
}

#[tokio::test]
async fn worker_protocol_refers_to_the_real_reapi_messages() {
    let (url, _stop) = start().await;
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "remexec.worker.v1.Lease".into(),
        ),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(found) = answer
    else {
        panic!("not a FileDescriptorResponse: {answer:?}");
    };
    let files = decode_files(&found.file_descriptor_proto);
    let worker = files
        .iter()
        .find(|f| f.name() == "remexec/worker/v1/worker.proto")
        .unwrap();
    let lease = worker
        .message_type
        .iter()
        .find(|m| m.name() == "Lease")
        .unwrap();
    let action = lease.field.iter().find(|f| f.name() == "action").unwrap();
    assert_eq!(
        action.type_name(),
        ".build.bazel.remote.execution.v2.Action"
    );

    // The stub's name forwards to the real file instead of declaring messages of its own.
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::FileByFilename(
            "build/bazel/remote/execution/v2/digest.proto".into(),
        ),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(found) = answer
    else {
        panic!("not a FileDescriptorResponse: {answer:?}");
    };
    let stub = &decode_files(&found.file_descriptor_proto)[0];
    assert!(stub.message_type.is_empty(), "{stub:?}");
    assert_eq!(
        stub.dependency,
        ["build/bazel/remote/execution/v2/remote_execution.proto"]
    );

    // The real Digest is what a client sees.
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "build.bazel.remote.execution.v2.Digest".into(),
        ),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::FileDescriptorResponse(found) = answer
    else {
        panic!("not a FileDescriptorResponse: {answer:?}");
    };
    assert_eq!(
        decode_files(&found.file_descriptor_proto)[0].name(),
        "build/bazel/remote/execution/v2/remote_execution.proto"
    );
}

#[tokio::test]
async fn v1alpha_lists_and_describes_too() {
    let (url, _stop) = start().await;
    let answer = ask_v1alpha(
        &url,
        v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await;
    let v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) = answer
    else {
        panic!("not a ListServicesResponse: {answer:?}");
    };
    let listed: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVED {
        assert!(
            listed.contains(service),
            "{service} missing from {listed:?}"
        );
    }

    let answer = ask_v1alpha(
        &url,
        v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "google.bytestream.ByteStream".into(),
        ),
    )
    .await;
    let v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(found) =
        answer
    else {
        panic!("not a FileDescriptorResponse: {answer:?}");
    };
    let methods = methods_of(
        &decode_files(&found.file_descriptor_proto),
        "google.bytestream.ByteStream",
    )
    .unwrap();
    assert_eq!(methods, ["Read", "Write", "QueryWriteStatus"]);
}

#[tokio::test]
async fn services_for_lists_only_the_named_services() {
    let (v1_service, _) = remexec_core::server::reflection::services_for(
        &[remexec_proto::FILE_DESCRIPTOR_SET],
        &[
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "google.bytestream.ByteStream",
        ],
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(v1_service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::ListServicesResponse(list) = answer else {
        panic!("not a ListServicesResponse: {answer:?}");
    };
    let mut listed: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "google.bytestream.ByteStream"
        ]
    );
    // Unlisted services can still be described.
    let answer = ask_v1(
        &url,
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "build.bazel.remote.execution.v2.Execution".into(),
        ),
    )
    .await;
    assert!(matches!(
        answer,
        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
    ));
}

#[path = "common/mod.rs"]
mod common;

/// The services a real server's port lists.
async fn listed_by(url: &str) -> Vec<String> {
    let answer = ask_v1(
        url,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await;
    let v1::server_reflection_response::MessageResponse::ListServicesResponse(list) = answer else {
        panic!("not a ListServicesResponse: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_lists_what_each_of_its_ports_serves() {
    let data = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(data.path(), &[]);
    let listed = listed_by(&server.http_url()).await;
    let mut want: Vec<String> = SERVED.iter().map(|s| s.to_string()).collect();
    // The Build Event Service, which the binary turns on by default.
    want.push("google.devtools.build.v1.PublishBuildEvent".into());
    want.sort();
    assert_eq!(listed, want, "serve's one port serves everything");
    let answer = ask_v1(
        &server.http_url(),
        v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "google.devtools.build.v1.PublishBuildEvent".into(),
        ),
    )
    .await;
    assert!(
        matches!(
            answer,
            v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_)
        ),
        "{answer:?}"
    );
    // With a worker port, the client port no longer offers the worker API.
    let port = common::free_port();
    let worker_listen = format!("127.0.0.1:{port}");
    let scheduler = common::ServerProcess::start_role(
        "scheduler",
        &data.path().join("s"),
        &["--worker-listen", &worker_listen],
    );
    let listed = listed_by(&scheduler.http_url()).await;
    assert!(
        !listed
            .iter()
            .any(|s| s == "remexec.worker.v1.WorkerService"),
        "{listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|s| s == "build.bazel.remote.execution.v2.Execution")
    );
}
