//! Demo certificates (feature `dev-certs`): a CA, a server certificate, a client certificate
//! and a cluster certificate, for trying TLS, mutual TLS and cluster certificates on one
//! machine. What `remexec tls dev-certs` writes.
//!
//! Demo certificates are for tests and laptops only. Anyone can make the same kind of files,
//! and the private keys are handed back unencrypted: never let them guard a reachable server.
//!
//! ```
//! let files = remexec_core::dev_certs::generate().unwrap();
//! let names: Vec<&str> = files.iter().map(|f| f.name).collect();
//! assert_eq!(names, remexec_core::dev_certs::FILES);
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::auth::DEFAULT_CLUSTER_NAME;
use crate::{Error, Result};

/// The files made, in order.
pub const FILES: [&str; 7] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
    "cluster.pem",
    "cluster.key",
];

/// One file: its name, its PEM contents, and its Unix mode (keys are the owner's only).
#[derive(Clone, Debug)]
pub struct File {
    /// One of [`FILES`].
    pub name: &'static str,
    /// PEM.
    pub contents: String,
    /// `0o644` for certificates, `0o600` for keys.
    pub mode: u32,
}

fn failed(e: rcgen::Error) -> Error {
    Error::internal("making demo certificates", e)
}

/// `ca.pem`, `server.pem`/`server.key` (for `localhost`, `127.0.0.1` and `::1`),
/// `client.pem`/`client.key` (`remexec-client`, client authentication only) and
/// `cluster.pem`/`cluster.key` (`remexec-cluster`, a cluster member: server and client
/// authentication, also valid for `localhost` and `127.0.0.1`), all signed by a new CA whose
/// key is not kept. Keys are PKCS#8.
pub fn generate() -> Result<Vec<File>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "remexec demo CA (never for production)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(failed)?)
        .map_err(failed)?;
    let mut files = vec![File {
        name: FILES[0],
        contents: ca.pem(),
        mode: 0o644,
    }];
    let localhost = ["localhost", "127.0.0.1", "::1"];
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let cluster = [DEFAULT_CLUSTER_NAME, "localhost", "127.0.0.1"];
    let kinds = [
        ("localhost", &localhost[..], vec![ServerAuth]),
        ("remexec-client", &["remexec-client"][..], vec![ClientAuth]),
        (
            DEFAULT_CLUSTER_NAME,
            &cluster[..],
            vec![ServerAuth, ClientAuth],
        ),
    ];
    for (i, (cn, sans, usages)) in kinds.into_iter().enumerate() {
        let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(sans).map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca).map_err(failed)?;
        let (pem, private) = (FILES[1 + 2 * i], FILES[2 + 2 * i]);
        files.push(File {
            name: pem,
            contents: cert.pem(),
            mode: 0o644,
        });
        files.push(File {
            name: private,
            contents: key.serialize_pem(),
            mode: 0o600,
        });
    }
    Ok(files)
}
