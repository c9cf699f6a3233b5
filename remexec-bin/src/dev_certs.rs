//! `remexec tls dev-certs DIR`: a demo CA and certificates for trying TLS, mutual TLS and
//! cluster certificates on one machine.
//!
//! Demo certificates are for tests and laptops only. Anyone can make the same kind of files,
//! and the private keys sit unencrypted in `DIR`: never let them guard a reachable scheduler.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use remexec_core::{Error, Result};

use crate::security::DEFAULT_CLUSTER_NAME;

/// The files written, relative to the directory.
pub const FILES: [&str; 7] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
    "cluster.pem",
    "cluster.key",
];

fn failed(e: rcgen::Error) -> Error {
    Error::internal("making demo certificates", e)
}

/// Writes `ca.pem`, `server.pem`/`server.key` (for `localhost`, `127.0.0.1` and `::1`),
/// `client.pem`/`client.key` (`remexec-client`, client authentication only) and
/// `cluster.pem`/`cluster.key` (`remexec-cluster`, a cluster member: server and client
/// authentication, also valid for `localhost` and `127.0.0.1`) into `dir`, all signed by a new
/// CA whose key is not kept. Keys are PKCS#8, readable by the owner only.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "remexec demo CA (never for production)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(failed)?)
        .map_err(failed)?;
    save(dir, "ca.pem", ca.pem().as_bytes(), 0o644)?;
    let localhost = ["localhost", "127.0.0.1", "::1"];
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    for (name, cn, sans, usages) in [
        ("server", "localhost", &localhost[..], vec![ServerAuth]),
        (
            "client",
            "remexec-client",
            &["remexec-client"][..],
            vec![ClientAuth],
        ),
        (
            "cluster",
            DEFAULT_CLUSTER_NAME,
            &[DEFAULT_CLUSTER_NAME, "localhost", "127.0.0.1"][..],
            vec![ServerAuth, ClientAuth],
        ),
    ] {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(failed)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca).map_err(failed)?;
        save(dir, &format!("{name}.pem"), cert.pem().as_bytes(), 0o644)?;
        save(
            dir,
            &format!("{name}.key"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

fn save(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
