//! Client certificates: the names a verified certificate carries, and the rules that map them
//! to grants.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Grant, Pattern};
use crate::{Error, Result};

/// Certificates with a name matching one of `names` get `grant`.
#[derive(Clone, Debug)]
pub struct CertRule {
    /// Subject common name or SAN (DNS, URI, email) patterns; `*` admits every certificate
    /// the client CA signed.
    pub names: Vec<Pattern>,
    /// What such a certificate may do.
    pub grant: Grant,
}

impl CertRule {
    /// Whether any of `cert_names` matches any of the rule's patterns.
    pub fn matches(&self, cert_names: &[String]) -> bool {
        self.names.iter().any(|p| {
            // `*` admits a certificate that carries no name at all, too.
            p.as_str() == "*" || cert_names.iter().any(|n| p.matches(n))
        })
    }
}

/// The names of a certificate: its subject's common names, then its subject alternative
/// names (DNS names, URIs, email addresses, IP addresses). `InvalidArgument` if it is not DER
/// X.509.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Result<Vec<String>> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| Error::invalid("the client certificate is not X.509 DER"))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    names.push((*s).to_string());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(names)
}
