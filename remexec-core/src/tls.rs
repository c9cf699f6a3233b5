//! Server-side TLS with rustls: a reloadable configuration and the stream of TLS connections
//! a tonic server serves.
//!
//! [`ServerTls`] holds the current `rustls::ServerConfig`; [`ServerTls::reload`] swaps in
//! new certificates (for SIGHUP) without touching connections already open, which keep the
//! configuration they were accepted with. [`ServerTls::incoming`] turns a listener into TLS
//! streams, with every handshake on its own task and bounded in time, so that a slow or silent
//! client never holds up the others. The PEM material is passed in as bytes: reading files is
//! the binary's business.
//!
//! ```no_run
//! # async fn run(routes: tonic::service::Routes, cert: Vec<u8>, key: Vec<u8>) -> remexec_core::Result<()> {
//! use remexec_core::tls::{ClientCerts, ServerTls, TlsMaterial};
//!
//! let tls = ServerTls::new(&TlsMaterial { cert_pem: cert, key_pem: key, client_ca_pem: None, client_certs: ClientCerts::None })?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8980").await.unwrap();
//! tonic::transport::Server::builder()
//!     .add_routes(routes)
//!     .serve_with_incoming(tls.incoming(listener))
//!     .await
//!     .unwrap();
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::{Error, Result};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait to be accepted.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Whether clients present certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Not asked for.
    None,
    /// Verified against the client CA if presented; a client may present none.
    Optional,
    /// Required, and verified against the client CA: the handshake fails without one.
    Required,
}

/// PEM material for a TLS listener.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The server's certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The server's private key.
    pub key_pem: Vec<u8>,
    /// CA certificates that sign client certificates (required unless `client_certs` is
    /// [`ClientCerts::None`]).
    pub client_ca_pem: Option<Vec<u8>>,
    /// Whether clients present certificates.
    pub client_certs: ClientCerts,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_certs", &self.client_certs)
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The PEM certificates of `pem`; `InvalidArgument`, naming `what`, if there are none.
pub fn parse_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(
                format!("{what}: not PEM certificates"),
                e,
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(format!("{what}: no PEM certificate")));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// The rustls configuration: TLS 1.2 and 1.3, ALPN `h2` (gRPC), and the client
    /// verification asked for. `InvalidArgument` for unusable material.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let certs = parse_certificates(&self.cert_pem, "the server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(
                "the server key: not a PEM private key",
                e,
            ))
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal("TLS versions", e))?;
        let builder = match self.client_certs {
            ClientCerts::None => builder.with_no_client_auth(),
            mode => {
                let pem = self.client_ca_pem.as_deref().ok_or_else(|| {
                    Error::invalid("client certificates are asked for, but no client CA is set")
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in parse_certificates(pem, "the client CA")? {
                    roots.add(cert).map_err(|e| {
                        Error::InvalidArgument(crate::Message::caused_by("the client CA", e))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match mode {
                    ClientCerts::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                let verifier = verifier.build().map_err(|e| {
                    Error::InvalidArgument(crate::Message::caused_by("the client CA", e))
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            Error::InvalidArgument(crate::Message::caused_by(
                "the server certificate and key",
                e,
            ))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A TLS listener's configuration, swappable while it serves. Clones share it.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A configuration from `material`.
    pub fn new(material: &TlsMaterial) -> Result<Self> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(material.server_config()?))),
        })
    }

    /// Replaces the configuration for connections accepted from now on. On error the old one
    /// stays.
    pub fn reload(&self, material: &TlsMaterial) -> Result<()> {
        let config = Arc::new(material.server_config()?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&config))
    }

    /// The TLS connections of `listener`, for `serve_with_incoming`. Each handshake runs on
    /// its own task, at most [`MAX_PENDING_HANDSHAKES`] at once, and is abandoned after
    /// [`HANDSHAKE_TIMEOUT`]; a failed handshake (plaintext, an untrusted or missing client
    /// certificate) closes that connection only. The stream ends when it is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                    return;
                };
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let _ = stream.set_nodelay(true);
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    // The slot is for the handshake only, not for waiting on the server.
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream_from(rx)
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
