//! Trace export (feature `export`): the spans of every gRPC call and every execution phase,
//! sent to an OTLP/gRPC collector and/or a Zipkin collector.
//!
//! Spans are batched on the SDK's own thread; [`Tracing::shutdown`] flushes them at exit.
//! The exporters' own HTTP/2 traffic is never traced (it would trace itself): filter spans
//! with [`TRACE_FILTER`].
//!
//! ```no_run
//! # async fn demo() -> remexec_core::Result<()> {
//! use remexec_core::export::{Exporters, Tracing};
//! let exporters = Exporters { otlp: Some("http://127.0.0.1:4317".into()), zipkin: None };
//! if let Some((tracing, _tracer)) = Tracing::start(&exporters)? {
//!     // ... serve, with a tracing-opentelemetry layer over `_tracer` ...
//!     tracing.shutdown();
//! }
//! # Ok(())
//! # }
//! ```

use crate::{Error, Message, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Where spans go: an OTLP/gRPC collector, a Zipkin collector, both or neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exporters {
    /// An OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    pub otlp: Option<String>,
    /// A Zipkin collector's span endpoint, e.g. `http://127.0.0.1:9411/api/v2/spans`.
    pub zipkin: Option<String>,
}

/// What the tracing layer filters out: the transport crates, including the exporters' own
/// requests.
pub const TRACE_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off";

/// The installed trace pipeline, if any exporter is configured.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporters `to` names, or `None` if it names none. Must run inside a tokio
    /// runtime (the exporters' clients live on it). Installs the provider globally, so that the
    /// scheduler's phase spans reach it.
    pub fn start(to: &Exporters) -> Result<Option<(Self, SdkTracer)>> {
        if to.otlp.is_none() && to.zipkin.is_none() {
            return Ok(None);
        }
        fn failed(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
            Error::InvalidArgument(Message::caused_by(format!("the {what} trace exporter"), e))
        }
        let mut builder = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("remexec").build());
        if let Some(endpoint) = &to.otlp {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| failed("OTLP", e))?;
            builder = builder.with_batch_exporter(exporter);
        }
        if let Some(endpoint) = &to.zipkin {
            // Deprecated upstream in favour of Zipkin's own OTLP intake, but still what a plain
            // Zipkin server speaks.
            #[allow(deprecated)]
            let exporter = opentelemetry_zipkin::ZipkinExporter::builder()
                .with_http_client(HyperClient::new())
                .with_collector_endpoint(endpoint)
                .build()
                .map_err(|e| failed("Zipkin", e))?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer("remexec");
        Ok(Some((Self { provider }, tracer)))
    }

    /// Flushes the spans not yet sent and stops the exporters (blocking; at most a few
    /// seconds).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("remexec: flushing trace spans: {e}");
        }
    }
}

/// The Zipkin exporter's HTTP client: hyper on the runtime it was made on (the exporter runs
/// on the SDK's thread, which has no reactor).
#[derive(Debug, Clone)]
struct HyperClient {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    runtime: tokio::runtime::Handle,
}

impl HyperClient {
    fn new() -> Self {
        Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> std::result::Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        use http_body_util::BodyExt;
        let client = self.client.clone();
        let request = request.map(http_body_util::Full::new);
        let send = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        self.runtime.spawn(send).await?
    }
}
