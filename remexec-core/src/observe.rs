//! [`ObserveLayer`]: one tower layer that sees every gRPC call whole, for the RPC metrics, a
//! tracing span per call carrying the client's `RequestMetadata`, and the access log.
//!
//! A call is over when its response body ends (its trailers carry the status) or is dropped
//! (the client went away: `CANCELLED`). A response that is only headers (an error before any
//! message) carries its status there.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::Instrument;
use tracing::field::Empty;

use crate::auth::Caller;
use crate::metrics::{Metrics, code_name};
use crate::reapi::RequestMetadata;

pub use crate::resource::REQUEST_METADATA_HEADER;

/// The client's `RequestMetadata` from `headers`, if it sent a well-formed one.
pub fn request_metadata(headers: &http::HeaderMap) -> Option<RequestMetadata> {
    let map = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let bytes = map.get_bin(REQUEST_METADATA_HEADER)?.to_bytes().ok()?;
    RequestMetadata::decode(bytes).ok()
}

/// A tower layer that records, for every call: `remexec_rpc_requests_total` and
/// `remexec_rpc_duration_seconds` by method and code, a `grpc` tracing span (its
/// `tool_invocation_id`, `action_id`, `target_id` and `action_mnemonic` from the client's
/// `RequestMetadata`, which handlers also find in the request's extensions), and, if enabled,
/// one access-log line (target `remexec::access`).
///
/// ```no_run
/// # async fn run(routes: tonic::service::Routes) -> Result<(), tonic::transport::Error> {
/// use remexec_core::metrics::Metrics;
/// use remexec_core::observe::ObserveLayer;
///
/// let metrics = Metrics::new();
/// tonic::transport::Server::builder()
///     .layer(ObserveLayer::new(metrics.clone()).access_log(true))
///     .add_routes(routes)
///     .serve("127.0.0.1:8980".parse().unwrap())
///     .await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Metrics,
    access_log: bool,
}

impl ObserveLayer {
    /// Records into `metrics`; no access log.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            access_log: false,
        }
    }

    /// Whether to write one `remexec::access` line per call.
    pub fn access_log(mut self, yes: bool) -> Self {
        self.access_log = yes;
        self
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> ObserveService<S> {
        ObserveService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct ObserveService<S> {
    inner: S,
    layer: ObserveLayer,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> tower::Service<Request> for ObserveService<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = Call::start(&self.layer, &mut request);
        let span = call.span.clone();
        Box::pin(
            async move {
                let response = inner.call(request).await?;
                let (parts, body) = response.into_parts();
                // An error before any message is a headers-only response with the status.
                let early = status_of(&parts.headers);
                let body = ObservedBody {
                    inner: Box::pin(body),
                    call: Some(call),
                    early,
                };
                Ok(http::Response::from_parts(parts, Body::new(body)))
            }
            .instrument(span),
        )
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

/// One call in progress.
struct Call {
    layer: ObserveLayer,
    method: String,
    started: Instant,
    span: tracing::Span,
    peer: Option<std::net::SocketAddr>,
    caller: Caller,
    invocation: String,
    sent: u64,
}

impl Call {
    fn start(layer: &ObserveLayer, request: &mut Request) -> Self {
        let method = request.uri().path().to_string();
        let metadata = request_metadata(request.headers()).unwrap_or_default();
        let field = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            tool_invocation_id = field(&metadata.tool_invocation_id),
            correlated_invocations_id = field(&metadata.correlated_invocations_id),
            action_id = field(&metadata.action_id),
            target_id = field(&metadata.target_id),
            action_mnemonic = field(&metadata.action_mnemonic),
        );
        let extensions = request.extensions();
        let peer = extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|tls| tls.get_ref().remote_addr())
            });
        let caller = Caller::default();
        let invocation = metadata.tool_invocation_id.clone();
        request.extensions_mut().insert(caller.clone());
        request.extensions_mut().insert(metadata);
        Self {
            layer: layer.clone(),
            method,
            started: Instant::now(),
            span,
            peer,
            caller,
            invocation,
            sent: 0,
        }
    }

    fn finish(self, code: tonic::Code) {
        let elapsed = self.started.elapsed();
        // The path is the client's: only served methods become label values (an unknown
        // method of a served service is UNIMPLEMENTED).
        let label = match crate::auth::is_served(&self.method) && code != tonic::Code::Unimplemented
        {
            true => self.method.as_str(),
            false => "unknown",
        };
        self.layer.metrics.rpc(label, code, elapsed);
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        if self.layer.access_log {
            let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(
                target: "remexec::access",
                method = %self.method,
                code = code_name(code),
                ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1e3),
                peer = %peer,
                caller = self.caller.name().unwrap_or("-"),
                sent_bytes = self.sent,
                tool_invocation_id = %self.invocation,
                "rpc"
            );
        }
    }
}

/// A response body that finishes its [`Call`] when it ends or is dropped.
struct ObservedBody {
    inner: Pin<Box<Body>>,
    call: Option<Call>,
    early: Option<tonic::Code>,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(call) = &mut self.call {
                        call.sent += data.len() as u64;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers).unwrap_or(tonic::Code::Unknown);
                    if let Some(call) = self.call.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                if let Some(call) = self.call.take() {
                    call.finish(code);
                }
            }
            Poll::Ready(None) => {
                let code = self.early.unwrap_or(tonic::Code::Unknown);
                if let Some(call) = self.call.take() {
                    call.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // Dropped before its end: the client went away, unless the headers had the status.
            call.finish(self.early.unwrap_or(tonic::Code::Cancelled));
        }
    }
}

/// The phases an `ExecutedActionMetadata` times, each with its start and end; a phase whose
/// timestamps are missing, or end before they start, is left out.
pub fn phases(
    metadata: &crate::reapi::ExecutedActionMetadata,
) -> Vec<(
    crate::metrics::Phase,
    std::time::SystemTime,
    std::time::SystemTime,
)> {
    use crate::metrics::Phase;
    let m = metadata;
    let pairs = [
        (
            Phase::Queued,
            &m.queued_timestamp,
            &m.worker_start_timestamp,
        ),
        (
            Phase::InputFetch,
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
        ),
        (
            Phase::Run,
            &m.execution_start_timestamp,
            &m.execution_completed_timestamp,
        ),
        (
            Phase::Upload,
            &m.output_upload_start_timestamp,
            &m.output_upload_completed_timestamp,
        ),
    ];
    pairs
        .into_iter()
        .filter_map(|(phase, start, end)| {
            let (start, end) = (
                crate::timestamps::system_time(start.as_ref()?)?,
                crate::timestamps::system_time(end.as_ref()?)?,
            );
            (end >= start).then_some((phase, start, end))
        })
        .collect()
}

/// Exports one OpenTelemetry span per phase of a finished execution, with the worker's
/// timestamps, as children of `parent` (the Execute call's span), each carrying the action,
/// its outcome and the client's `RequestMetadata`. Does nothing without a tracer provider.
pub fn phase_spans(
    parent: &tracing::Span,
    metadata: &RequestMetadata,
    action: crate::Digest,
    outcome: &str,
    phases: &[(
        crate::metrics::Phase,
        std::time::SystemTime,
        std::time::SystemTime,
    )],
) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span as _, Tracer as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if phases.is_empty() {
        return;
    }
    let tracer = opentelemetry::global::tracer("remexec");
    let cx = parent.context();
    let mut attributes = vec![
        KeyValue::new("remexec.action", action.to_string()),
        KeyValue::new("remexec.outcome", outcome.to_string()),
    ];
    for (key, value) in [
        ("tool_invocation_id", &metadata.tool_invocation_id),
        (
            "correlated_invocations_id",
            &metadata.correlated_invocations_id,
        ),
        ("action_id", &metadata.action_id),
        ("target_id", &metadata.target_id),
        ("action_mnemonic", &metadata.action_mnemonic),
    ] {
        if !value.is_empty() {
            attributes.push(KeyValue::new(key, value.clone()));
        }
    }
    for (phase, start, end) in phases {
        let mut span = tracer
            .span_builder(format!("action {}", phase.as_str()))
            .with_start_time(*start)
            .with_attributes(attributes.clone())
            .start_with_context(&tracer, &cx);
        span.end_with_timestamp(*end);
    }
}
