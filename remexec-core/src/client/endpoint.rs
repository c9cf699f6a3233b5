//! Endpoints from `grpc://` URLs, with the flow-control windows and message limits remexec's
//! clients and servers use.
//!
//! `grpc://host:port` (or `http://`) is plain HTTP/2. `grpcs://` (or `https://`) needs TLS, which
//! this build does not carry yet: it is refused with `Unimplemented`, never silently downgraded.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::reapi::{
    action_cache_client::ActionCacheClient, capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
    execution_client::ExecutionClient,
};
use crate::{Error, Result};

/// The initial HTTP/2 stream window: large enough for 1 MiB ByteStream chunks in flight.
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;

/// The initial HTTP/2 connection window, shared by every stream of a connection.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// The largest gRPC message a client built by [`cas_client`] and its siblings sends or takes.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How often an idle connection is pinged, so that a dead peer is noticed.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// The endpoint for `url`: `grpc://` and `http://` are plain HTTP/2; `grpcs://` and `https://`
/// are `Unimplemented` (this build has no TLS); anything else is `InvalidArgument`.
///
/// The endpoint has [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`], `TCP_NODELAY` and HTTP/2
/// keepalive pings every [`KEEPALIVE`].
pub fn endpoint(url: &str) -> Result<Endpoint> {
    let http = if let Some(rest) = url.strip_prefix("grpc://") {
        format!("http://{rest}")
    } else if url.starts_with("http://") {
        url.to_string()
    } else if url.starts_with("grpcs://") || url.starts_with("https://") {
        return Err(Error::Unimplemented(format!(
            "{url}: TLS (grpcs://) is not supported by this build; use grpc://"
        )));
    } else {
        return Err(Error::invalid(format!(
            "server URL {url:?}: expected grpc://host:port"
        )));
    };
    Ok(Endpoint::from_shared(http)
        .map_err(|e| Error::invalid(format!("server URL {url:?}: {e}")))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_while_idle(true))
}

/// Connects to `url` (see [`endpoint`]); `Unavailable` if the server cannot be reached.
pub async fn connect(url: &str) -> Result<Channel> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {e}")))
}

/// A channel to `url` that connects on first use (see [`endpoint`]).
pub fn connect_lazy(url: &str) -> Result<Channel> {
    Ok(endpoint(url)?.connect_lazy())
}

/// A CAS client on `channel` sending and taking messages up to [`MAX_MESSAGE_SIZE`].
pub fn cas_client(channel: Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// An Action Cache client on `channel` with [`MAX_MESSAGE_SIZE`] both ways.
pub fn action_cache_client(channel: Channel) -> ActionCacheClient<Channel> {
    ActionCacheClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// An Execution client on `channel` with [`MAX_MESSAGE_SIZE`] both ways.
pub fn execution_client(channel: Channel) -> ExecutionClient<Channel> {
    ExecutionClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// A Capabilities client on `channel` with [`MAX_MESSAGE_SIZE`] both ways.
pub fn capabilities_client(channel: Channel) -> CapabilitiesClient<Channel> {
    CapabilitiesClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_urls_become_http_endpoints() {
        let e = endpoint("grpc://127.0.0.1:8980").unwrap();
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:8980/");
        let e = endpoint("http://[::1]:1").unwrap();
        assert_eq!(e.uri().scheme_str(), Some("http"));
    }

    #[test]
    fn tls_and_unknown_schemes_are_refused() {
        for url in ["grpcs://example.com:443", "https://example.com"] {
            let err = endpoint(url).unwrap_err();
            assert!(matches!(err, Error::Unimplemented(_)), "{url}: {err:?}");
        }
        for url in ["127.0.0.1:8980", "unix:///tmp/s", "grpc://bad host"] {
            let err = endpoint(url).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{url}: {err:?}");
        }
    }

    #[tokio::test]
    async fn connecting_to_nobody_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect(&format!("grpc://{addr}")).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        // A lazy channel does not connect until used.
        connect_lazy(&format!("grpc://{addr}")).unwrap();
    }
}
