//! Endpoints from `grpc://` URLs, with the flow-control windows and message limits remexec's
//! clients and servers use.
//!
//! `grpc://host:port` (or `http://`) is plain HTTP/2. `grpcs://host:port` (or `https://`) is
//! HTTP/2 over TLS (rustls), verified against the Mozilla roots built in, or against the CA
//! certificate given in [`ClientTls`] for a private CA. A `grpcs://` URL is never downgraded.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

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

/// The largest HTTP/2 frame a peer may send: one frame per 1 MiB ByteStream chunk, instead of
/// the 64 frames of HTTP/2's default (16 KiB).
pub const MAX_FRAME: u32 = 1024 * 1024 + 1024;

/// The largest gRPC message a client built by [`cas_client`] and its siblings sends or takes.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How often a connection is pinged, and how long a ping may go unanswered: a peer that is
/// gone without closing its connections (a host lost, a network cut) is noticed within twice
/// this.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Longest a new connection may take to establish.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a client checks the server of a `grpcs://` URL.
///
/// The default trusts the Mozilla root certificates built into remexec and checks the name in
/// the URL. Settings for TLS on a plaintext `grpc://` URL are refused, so that a server meant to
/// be verified is never reached unverified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates to trust instead of the built-in roots, for a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must carry, if not the host of the URL.
    pub domain: Option<String>,
    /// A client certificate to present, for servers that require mutual TLS.
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .finish()
    }
}

impl ClientTls {
    /// Whether anything differs from the default.
    fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.domain.is_some() || self.identity.is_some()
    }

    fn config(&self, url: &str) -> Result<ClientTlsConfig> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => {
                if !pem
                    .windows(CERT_MARKER.len())
                    .any(|w| w == CERT_MARKER.as_bytes())
                {
                    return Err(Error::invalid(format!(
                        "{url}: the CA certificate is not PEM (no {CERT_MARKER:?} line)"
                    )));
                }
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_webpki_roots(),
        };
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some(identity) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                &identity.cert_pem,
                &identity.key_pem,
            ));
        }
        Ok(config)
    }
}

/// What starts a PEM certificate.
const CERT_MARKER: &str = "-----BEGIN CERTIFICATE-----";

/// The endpoint for `url`, with default TLS settings for `grpcs://` (see [`endpoint_with`]).
pub fn endpoint(url: &str) -> Result<Endpoint> {
    endpoint_with(url, &ClientTls::default())
}

/// The endpoint for `url`: `grpc://` and `http://` are plain HTTP/2, `grpcs://` and `https://`
/// are HTTP/2 over TLS checked as `tls` says; anything else is `InvalidArgument`, and so are TLS
/// settings for a plaintext URL or a CA certificate that is not PEM.
///
/// The endpoint has [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`], `TCP_NODELAY`, HTTP/2
/// keepalive pings every [`KEEPALIVE`] (answered within as long) and [`CONNECT_TIMEOUT`].
pub fn endpoint_with(url: &str, tls: &ClientTls) -> Result<Endpoint> {
    let (uri, secure) = if let Some(rest) = url.strip_prefix("grpc://") {
        (format!("http://{rest}"), false)
    } else if url.starts_with("http://") {
        (url.to_string(), false)
    } else if let Some(rest) = url.strip_prefix("grpcs://") {
        (format!("https://{rest}"), true)
    } else if url.starts_with("https://") {
        (url.to_string(), true)
    } else {
        return Err(Error::invalid(format!(
            "server URL {url:?}: expected grpc://host:port or grpcs://host:port"
        )));
    };
    if !secure && tls.is_set() {
        return Err(Error::invalid(format!(
            "{url}: TLS settings (a CA certificate or domain) need a grpcs:// URL"
        )));
    }
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| {
        Error::InvalidArgument(crate::Message::caused_by(format!("server URL {url:?}"), e))
    })?;
    if secure {
        endpoint = endpoint.tls_config(tls.config(url)?).map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(format!("{url}: TLS settings"), e))
        })?;
    }
    Ok(endpoint
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .connect_timeout(CONNECT_TIMEOUT))
}

/// Connects to `url` (see [`endpoint`]); `Unavailable` if the server cannot be reached.
pub async fn connect(url: &str) -> Result<Channel> {
    connect_with(url, &ClientTls::default()).await
}

/// Connects to `url` with `tls` (see [`endpoint_with`]); `Unavailable` if the server cannot be
/// reached or the TLS handshake fails.
pub async fn connect_with(url: &str, tls: &ClientTls) -> Result<Channel> {
    endpoint_with(url, tls)?
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("connecting to {url}: {}", error_chain(&e)).into()))
}

/// A channel to `url` that connects on first use (see [`endpoint`]).
pub fn connect_lazy(url: &str) -> Result<Channel> {
    connect_lazy_with(url, &ClientTls::default())
}

/// A channel to `url` with `tls` that connects on first use (see [`endpoint_with`]).
pub fn connect_lazy_with(url: &str, tls: &ClientTls) -> Result<Channel> {
    Ok(endpoint_with(url, tls)?.connect_lazy())
}

/// An error and its sources, so that the cause of a failed connection (a refused
/// certificate) is not hidden behind "transport error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
    fn grpcs_urls_become_https_endpoints() {
        let e = endpoint("grpcs://example.com:443").unwrap();
        assert_eq!(e.uri().to_string(), "https://example.com:443/");
        let e = endpoint("https://example.com").unwrap();
        assert_eq!(e.uri().scheme_str(), Some("https"));
    }

    #[test]
    fn unknown_schemes_and_misplaced_tls_settings_are_refused() {
        for url in ["127.0.0.1:8980", "unix:///tmp/s", "grpc://bad host"] {
            let err = endpoint(url).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{url}: {err:?}");
        }
        let with_domain = ClientTls {
            domain: Some("localhost".into()),
            ..ClientTls::default()
        };
        let err = endpoint_with("grpc://127.0.0.1:1", &with_domain).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let not_pem = ClientTls {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..ClientTls::default()
        };
        let err = endpoint_with("grpcs://127.0.0.1:1", &not_pem).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
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

/// Lazy channels to a changing set of `grpc://` URLs (a cluster's members), one per URL, kept
/// for as long as its URL stays in the set.
#[derive(Debug, Default)]
pub struct Channels(std::collections::HashMap<String, Channel>);

impl Channels {
    /// Keeps the channels of `urls`, drops the others and opens (lazily, with `tls`) those
    /// missing; a URL that cannot become a channel is left out with a warning. Returns the
    /// channels by URL.
    pub fn update<'a>(
        &mut self,
        urls: impl IntoIterator<Item = &'a String>,
        tls: &ClientTls,
    ) -> &std::collections::HashMap<String, Channel> {
        let urls: std::collections::HashSet<&String> = urls.into_iter().collect();
        self.0.retain(|url, _| urls.contains(url));
        for url in urls {
            if self.0.contains_key(url) {
                continue;
            }
            match connect_lazy_with(url, tls) {
                Ok(channel) => {
                    self.0.insert(url.clone(), channel);
                }
                Err(e) => tracing::warn!(%url, error = %e, "cannot reach a member"),
            }
        }
        &self.0
    }
}
