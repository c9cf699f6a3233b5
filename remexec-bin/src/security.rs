//! `[tls]`, `[auth]` and `[cluster]`: reads the files they name and maps them onto remexec-core's
//! [`ServerTls`] and [`AuthPolicy`], for the client port, the worker port and the worker's own
//! link to its scheduler. This is the only place these files are read; SIGHUP calls
//! [`Security::reload`].

use std::net::SocketAddr;
use std::path::Path;

use remexec_core::auth::{
    AuthPolicy, CertRule, Grant, JwtSettings, JwtVerifier, Pattern, Permission, TokenSet,
};
use remexec_core::client::{ClientIdentity, ClientTls};
use remexec_core::tls::{ClientCerts, ServerTls, TlsMaterial};
use remexec_core::{Error, Result};

use crate::config::Config;

pub use remexec_core::auth::DEFAULT_CLUSTER_NAME;

/// TLS and authentication of a server's ports.
#[derive(Clone, Debug)]
pub struct Security {
    /// TLS on the client port, if configured.
    pub tls: Option<ServerTls>,
    /// Who may do what on the client port.
    pub auth: AuthPolicy,
    /// The separate worker port, if configured.
    pub worker_port: Option<WorkerPort>,
}

/// A port that serves only the cluster: the worker API and the CAS for workers.
#[derive(Clone, Debug)]
pub struct WorkerPort {
    /// Where it listens.
    pub listen: SocketAddr,
    /// TLS with required cluster client certificates, when the server has TLS.
    pub tls: Option<ServerTls>,
    /// Only cluster members, or everyone on a plaintext cluster.
    pub auth: AuthPolicy,
}

impl Default for Security {
    /// Plaintext, no authentication, no worker port: today's trusted-network server.
    fn default() -> Self {
        Self {
            tls: None,
            auth: AuthPolicy::open(),
            worker_port: None,
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    String::from_utf8(read(path, what)?)
        .map_err(|_| Error::invalid(format!("the {what} {} is not UTF-8", path.display())))
}

fn or_default(values: &[String], default: &[&str]) -> Vec<String> {
    if values.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        values.to_vec()
    }
}

fn cluster_names(config: &Config) -> Vec<Pattern> {
    or_default(&config.cluster.names, &[DEFAULT_CLUSTER_NAME])
        .into_iter()
        .map(Pattern::new)
        .collect()
}

impl Security {
    /// Reads and checks everything `config` configures.
    pub fn load(config: &Config) -> Result<Self> {
        let auth = client_policy(config)?;
        let tls = match client_material(config, &auth)? {
            Some(material) => Some(ServerTls::new(&material)?),
            None => None,
        };
        let worker_port = match config.cluster.worker_listen {
            None => None,
            Some(listen) => Some(worker_port(config, listen, &auth)?),
        };
        if tls.is_none()
            && (config.auth.token_file.is_some()
                || config.auth.jwt_key.is_some()
                || config.auth.jwks.is_some())
        {
            tracing::warn!(
                "bearer tokens are accepted over plaintext: anyone on the path can read and replay them; configure [tls]"
            );
        }
        Ok(Self {
            tls,
            auth,
            worker_port,
        })
    }

    /// Re-reads the certificate files for connections accepted from now on (SIGHUP). The
    /// policy (tokens, keys) stays as loaded at start.
    pub fn reload(&self, config: &Config) -> Result<()> {
        if let (Some(tls), Some(material)) = (&self.tls, client_material(config, &self.auth)?) {
            tls.reload(&material)?;
        }
        if let Some(port) = &self.worker_port
            && let (Some(tls), Some(material)) = (&port.tls, worker_material(config)?)
        {
            tls.reload(&material)?;
        }
        Ok(())
    }
}

/// The client port's policy: open unless `[tls] client_ca`, a token file, a JWT key or
/// anonymous permissions are configured.
fn client_policy(config: &Config) -> Result<AuthPolicy> {
    let (tls, auth) = (&config.tls, &config.auth);
    let configured = tls.client_ca.is_some()
        || auth.token_file.is_some()
        || auth.jwt_key.is_some()
        || auth.jwks.is_some()
        || !auth.anonymous.is_empty();
    if !configured {
        return Ok(AuthPolicy::open());
    }
    let mut policy = AuthPolicy::builder();
    if let Some(path) = &auth.token_file {
        policy = policy.tokens(TokenSet::parse(&read_text(path, "token file")?)?);
    }
    let settings = JwtSettings {
        issuer: auth.jwt_issuer.clone(),
        audience: auth.jwt_audience.clone(),
        leeway_secs: 0,
    };
    policy = match (&auth.jwt_key, &auth.jwks) {
        (Some(_), Some(_)) => return Err(Error::invalid("set one of jwt_key and jwks, not both")),
        (Some(key), None) => policy.jwt(JwtVerifier::from_key(&read(key, "JWT key")?, settings)?),
        (None, Some(jwks)) => {
            policy.jwt(JwtVerifier::from_jwks(&read_text(jwks, "JWKS")?, settings)?)
        }
        (None, None) => policy,
    };
    if tls.client_ca.is_some() {
        let default_permissions = [
            Permission::CacheRead,
            Permission::CacheWrite,
            Permission::Execute,
        ];
        let permissions = if tls.client_permissions.is_empty() {
            default_permissions
                .iter()
                .map(|p| p.name().to_string())
                .collect()
        } else {
            tls.client_permissions.clone()
        };
        policy = policy.cert_rule(CertRule {
            names: or_default(&tls.client_names, &["*"])
                .into_iter()
                .map(Pattern::new)
                .collect(),
            grant: Grant::parse(&permissions, &or_default(&tls.client_instances, &["*"]))?,
        });
        // On the client port, a certificate is a cluster member only if the cluster's CA is
        // the client CA: with a separate cluster CA, no client certificate can be one.
        let same_ca = config
            .cluster
            .ca
            .as_ref()
            .is_none_or(|ca| Some(ca) == tls.client_ca.as_ref());
        if same_ca {
            policy = policy.cluster_names(cluster_names(config));
        }
    }
    if (auth.jwt_key.is_some() || auth.jwks.is_some()) && auth.jwt_audience.is_none() {
        tracing::warn!(
            "JWTs are accepted without an audience check: a token another service's issuer signed for itself is valid here; set [auth] jwt_audience"
        );
    }
    if !auth.anonymous.is_empty() {
        policy = policy.anonymous(Grant::parse(
            &auth.anonymous,
            &or_default(&auth.anonymous_instances, &["*"]),
        )?);
    }
    Ok(policy.build())
}

fn client_material(config: &Config, auth: &AuthPolicy) -> Result<Option<TlsMaterial>> {
    let tls = &config.tls;
    let (cert, key) = match (&tls.cert, &tls.key) {
        (None, None) => {
            if tls.client_ca.is_some() {
                return Err(Error::invalid("[tls] client_ca needs cert and key too"));
            }
            return Ok(None);
        }
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(Error::invalid("[tls] needs both cert and key")),
    };
    let client_certs = match (&tls.client_ca, auth.certificate_optional()) {
        (None, _) => ClientCerts::None,
        (Some(_), true) => ClientCerts::Optional,
        (Some(_), false) => ClientCerts::Required,
    };
    Ok(Some(TlsMaterial {
        cert_pem: read(cert, "TLS certificate")?,
        key_pem: read(key, "TLS key")?,
        client_ca_pem: match &tls.client_ca {
            Some(path) => Some(read(path, "client CA")?),
            None => None,
        },
        client_certs,
    }))
}

/// The worker port: TLS with cluster certificates when the server has TLS; plaintext and open
/// only on a server whose client port is open too (a trusted network), never as a way around
/// the client port's credentials.
fn worker_port(config: &Config, listen: SocketAddr, client: &AuthPolicy) -> Result<WorkerPort> {
    match worker_material(config)? {
        Some(material) => Ok(WorkerPort {
            listen,
            tls: Some(ServerTls::new(&material)?),
            auth: AuthPolicy::builder()
                .cluster_names(cluster_names(config))
                .build(),
        }),
        None if !client.is_open() => Err(Error::invalid(
            "the client port requires credentials, so the worker port needs TLS with cluster certificates: set [tls] cert and key, and [cluster] ca or [tls] client_ca",
        )),
        None => {
            tracing::warn!(%listen, "the worker port is plaintext and open: configure [tls] to require cluster certificates");
            Ok(WorkerPort {
                listen,
                tls: None,
                auth: AuthPolicy::open(),
            })
        }
    }
}

/// The worker port's TLS: the server's certificate, and required client certificates from the
/// cluster CA.
fn worker_material(config: &Config) -> Result<Option<TlsMaterial>> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let ca = config
        .cluster
        .ca
        .as_ref()
        .or(config.tls.client_ca.as_ref())
        .ok_or_else(|| {
            Error::invalid("with TLS, the worker port needs [cluster] ca (or [tls] client_ca)")
        })?;
    Ok(Some(TlsMaterial {
        cert_pem: read(cert, "TLS certificate")?,
        key_pem: read(key, "TLS key")?,
        client_ca_pem: Some(read(ca, "cluster CA")?),
        client_certs: ClientCerts::Required,
    }))
}

/// The TLS and policy of a worker's CAS port (`--listen`): with the worker's cluster
/// certificate (`[worker] tls_cert` and `tls_key`) and a cluster CA (`[cluster] ca`, else
/// `[worker] tls_ca`), TLS with that certificate, requiring client certificates of that CA
/// that carry a cluster name; plaintext is then refused. Without them, `None`: plaintext and
/// open, as on a trusted network, with a warning.
pub fn worker_cas_port(config: &Config) -> Result<Option<(ServerTls, AuthPolicy)>> {
    let worker = &config.worker;
    let (Some(cert), Some(key)) = (&worker.tls_cert, &worker.tls_key) else {
        tracing::warn!(
            "the CAS port is plaintext and open: give the worker its cluster certificate (--tls-cert, --tls-key) and the cluster CA"
        );
        return Ok(None);
    };
    let ca = config
        .cluster
        .ca
        .as_ref()
        .or(worker.tls_ca.as_ref())
        .ok_or_else(|| {
            Error::invalid("the CAS port's TLS needs the cluster CA: [cluster] ca or --tls-ca")
        })?;
    let material = TlsMaterial {
        cert_pem: read(cert, "cluster certificate")?,
        key_pem: read(key, "cluster key")?,
        client_ca_pem: Some(read(ca, "cluster CA")?),
        client_certs: ClientCerts::Required,
    };
    let policy = AuthPolicy::builder()
        .cluster_names(cluster_names(config))
        .build();
    Ok(Some((ServerTls::new(&material)?, policy)))
}

/// How `remexec worker` reaches its scheduler: `[worker] tls_ca` to trust and its cluster
/// certificate `tls_cert`/`tls_key`.
pub fn worker_client_tls(config: &Config) -> Result<ClientTls> {
    let worker = &config.worker;
    client_tls(
        worker.tls_ca.as_deref(),
        worker.tls_cert.as_deref(),
        worker.tls_key.as_deref(),
    )
}

/// A client's TLS settings from PEM files: the CA to trust (else the built-in roots) and a
/// client certificate and key (both or neither).
pub fn client_tls(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTls> {
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert_pem: read(cert, "client certificate")?,
            key_pem: read(key, "client key")?,
        }),
        _ => return Err(Error::invalid("--tls-cert and --tls-key go together")),
    };
    Ok(ClientTls {
        ca_pem: match ca {
            Some(path) => Some(read(path, "CA")?),
            None => None,
        },
        domain: None,
        identity,
    })
}
