//! [`AuthLayer`]: the one place requests are authenticated and authorized, in front of every
//! service, before any handler runs.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::methods::InstanceFrom;
use super::{AuthPolicy, Need, method_need};
use crate::{Error, ReadResource, Result, WriteResource};

/// A tower layer that authenticates every request with an [`AuthPolicy`] and refuses, with
/// `UNAUTHENTICATED` or `PERMISSION_DENIED`, every request whose caller lacks the permission
/// the method needs ([`method_need`]) on the instance the request names.
///
/// The instance name is read from the first request message (field 1: the REAPI
/// `instance_name`, or a ByteStream resource name), which is buffered and passed on
/// unchanged; an open policy reads it too, so that every server refuses an oversized or
/// missing first message the same way. The authenticated [`Principal`](super::Principal) is added to the
/// request's extensions.
///
/// ```no_run
/// # async fn run(routes: tonic::service::Routes) -> Result<(), tonic::transport::Error> {
/// use remexec_core::auth::{AuthLayer, AuthPolicy};
///
/// tonic::transport::Server::builder()
///     .layer(AuthLayer::new(AuthPolicy::open(), 64 << 20))
///     .add_routes(routes)
///     .serve("127.0.0.1:8980".parse().unwrap())
///     .await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthLayer {
    policy: Arc<AuthPolicy>,
    max_message_size: usize,
    first_message_timeout: Duration,
}

/// How long a call may take to send its first message, by default.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

impl AuthLayer {
    /// Enforces `policy`; a first request message above `max_message_size` bytes is refused
    /// with `RESOURCE_EXHAUSTED` (the services would refuse it too).
    pub fn new(policy: AuthPolicy, max_message_size: usize) -> Self {
        Self {
            policy: Arc::new(policy),
            max_message_size,
            first_message_timeout: FIRST_MESSAGE_TIMEOUT,
        }
    }

    /// Refuses, with `DEADLINE_EXCEEDED`, a call whose first message (which names its
    /// instance) takes longer than `timeout` to arrive (default [`FIRST_MESSAGE_TIMEOUT`]).
    pub fn first_message_timeout(mut self, timeout: Duration) -> Self {
        self.first_message_timeout = timeout;
        self
    }

    /// The policy enforced.
    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> tower::Service<Request> for AuthService<S>
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

    fn call(&mut self, request: Request) -> Self::Future {
        // The clone is ready only if polled; keep the polled one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match admit(&layer, request).await {
                Ok(request) => inner.call(request).await,
                Err(error) => {
                    tracing::debug!(%error, "request refused");
                    Ok(tonic::Status::from(error).into_http())
                }
            }
        })
    }
}

/// Authenticates and authorizes `request`, returning it (with its first message re-attached
/// and the principal in its extensions) or the error to answer with.
async fn admit(layer: &AuthLayer, request: Request) -> Result<Request> {
    let path = request.uri().path().to_string();
    let (need, from) = method_need(&path);
    if need == Need::Nothing {
        return Ok(request);
    }
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs);
    let principal = layer
        .policy
        .authenticate(request.headers(), certs.as_ref().map(|c| c.as_slice()))?;
    if let Some(caller) = request.extensions().get::<Caller>() {
        caller.set(&principal.name);
    }
    let mut request = match from {
        InstanceFrom::InstanceField | InstanceFrom::ResourceField => {
            let (parts, body) = request.into_parts();
            let (first, body) = tokio::time::timeout(
                layer.first_message_timeout,
                first_message(body, layer.max_message_size),
            )
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(
                    format!(
                        "no request message within {:?}",
                        layer.first_message_timeout
                    )
                    .into(),
                )
            })??;
            let instance = instance_of(&first, from)?;
            principal.authorize(need, &instance, &path)?;
            http::Request::from_parts(parts, body)
        }
        InstanceFrom::AnyInstance | InstanceFrom::None => {
            principal.authorize_somewhere(need, &path)?;
            request
        }
    };
    request.extensions_mut().insert(principal);
    Ok(request)
}

/// Reads the body until its first gRPC message is complete. Returns that message and a body
/// that replays everything read, then the rest.
async fn first_message(mut body: Body, max: usize) -> Result<(Bytes, Body)> {
    let mut read: Vec<Frame<Bytes>> = Vec::new();
    let mut buffered = BytesMut::new();
    let message = loop {
        if buffered.len() >= 5 {
            if buffered[0] != 0 {
                return Err(Error::Unimplemented(
                    "compressed request messages are not accepted".into(),
                ));
            }
            let len = u32::from_be_bytes([buffered[1], buffered[2], buffered[3], buffered[4]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > max {
                return Err(Error::ResourceExhausted(
                    format!("the request message of {len} bytes exceeds the limit of {max}").into(),
                ));
            }
            if buffered.len() >= 5 + len {
                let mut whole = buffered.freeze();
                whole.advance(5);
                break whole.slice(..len);
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    buffered.extend_from_slice(data);
                }
                read.push(frame);
            }
            Some(Err(status)) => return Err(Error::from(status)),
            None => {
                return Err(Error::invalid(
                    "the request ended before its first message was complete",
                ));
            }
        }
    };
    let replay = futures::stream::iter(read.into_iter().map(Ok::<_, tonic::Status>));
    let rest = http_body_util::BodyStream::new(body);
    let body = Body::new(http_body_util::StreamBody::new(replay.chain(rest)));
    Ok((message, body))
}

/// Field 1 of a request message, as the instance name it is or names.
fn instance_of(message: &[u8], from: InstanceFrom) -> Result<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct First {
        #[prost(string, tag = "1")]
        field: String,
    }
    let first = <First as prost::Message>::decode(message).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by("malformed request message", e))
    })?;
    match from {
        InstanceFrom::ResourceField => {
            let name = &first.field;
            // A write resource has `uploads/` before `blobs/`; try it first.
            match WriteResource::parse(name) {
                Ok(write) => Ok(write.instance),
                Err(_) => Ok(ReadResource::parse(name)?.instance),
            }
        }
        _ => Ok(first.field),
    }
}

/// Who made a call, filled in by the [`AuthLayer`] once it has
/// authenticated the caller, for the access log.
#[derive(Clone, Debug, Default)]
pub struct Caller(Arc<OnceLock<String>>);

impl Caller {
    /// Records the caller's name (the first name given wins).
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_string());
    }

    /// The caller's name, once recorded.
    pub fn name(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}
