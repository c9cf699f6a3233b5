//! An in-process gRPC link: a client [`Channel`] to a service served in this process, through
//! a pipe that no other process can connect to (`remexec serve`'s local worker reaches the
//! worker API this way, with no port, TLS or credentials).

use std::convert::Infallible;

use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Bytes buffered in each direction of a pipe.
const PIPE_BUFFER: usize = 1 << 20;

/// A channel to `service`, served in this process until `stop`.
pub fn channel<S>(service: S, stop: CancellationToken) -> Channel
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<DuplexStream>(4);
    let incoming = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|pipe| (Ok::<_, std::io::Error>(pipe), rx))
    });
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "an in-process link failed");
        }
    });
    Endpoint::from_static("http://in-process").connect_with_connector_lazy(tower::service_fn(
        move |_: http::Uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BUFFER);
                tx.send(server)
                    .await
                    .map_err(|_| std::io::Error::other("the server is stopping"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        },
    ))
}
