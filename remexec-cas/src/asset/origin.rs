//! Downloads from `http(s)` origins, under the operator's origin policy.
//!
//! The policy guards against server-side request forgery: a client could otherwise have the
//! server fetch from the server's own network. Every address a download connects to, the
//! first request's and each redirect's, is checked, after name resolution (so a name that
//! resolves to a loopback address is refused too, and the address checked is the one
//! connected to):
//! - only `http` and `https` URLs, with a host;
//! - if the operator lists allowed hosts, only those;
//! - unless the operator allows them, no loopback, private, link-local, shared, multicast or
//!   otherwise non-public address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use remexec_core::{Error, Result};
use tokio::io::AsyncWriteExt;

use super::sri::Sri;

/// Which origins may be fetched from.
#[derive(Clone, Debug, Default)]
pub(crate) struct OriginPolicy {
    /// When set, the only hosts allowed: exact names (`example.com`) or any subdomain
    /// (`*.example.com`), compared without case.
    pub(crate) hosts: Option<Vec<String>>,
    /// Whether loopback, private and other non-public addresses may be fetched from.
    pub(crate) private_addresses: bool,
}

impl OriginPolicy {
    /// `PermissionDenied` unless `url` is `http(s)` and its host is allowed; an address given
    /// as the host is checked here, as no name resolution sees it.
    pub(crate) fn check_url(&self, url: &reqwest::Url) -> Result<()> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid(format!(
                "{url}: only http and https URLs are fetched"
            )));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.check_address(IpAddr::V4(ip), url)?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_address(IpAddr::V6(ip), url)?;
                ip.to_string()
            }
            None => return Err(Error::invalid(format!("{url} has no host"))),
        };
        if let Some(hosts) = &self.hosts {
            let allowed = hosts.iter().any(|h| match h.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{}", domain.to_ascii_lowercase())),
                None => h.eq_ignore_ascii_case(&host),
            });
            if !allowed {
                return Err(Error::PermissionDenied(
                    format!("{url}: host {host} is not among the allowed origins").into(),
                ));
            }
        }
        Ok(())
    }

    fn check_address(&self, ip: IpAddr, what: impl std::fmt::Display) -> Result<()> {
        if self.private_addresses || is_public(ip) {
            return Ok(());
        }
        Err(Error::PermissionDenied(
            format!("{what}: address {ip} is not public, and this server fetches only from public addresses").into(),
        ))
    }
}

/// Whether `ip` is a public unicast address (what `IpAddr::is_global` will say once stable).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
            if nat64 {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || s[0..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0))
}

/// Name resolution that drops the addresses the policy refuses: a name with none left is an
/// error, so no connection is ever made to a refused address.
struct CheckedResolver(Arc<OriginPolicy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.check_address(a.ip(), &host).is_ok())
                .collect();
            if kept.is_empty() {
                let err = Error::PermissionDenied(
                    format!("{host} resolves only to addresses that are not public ({found:?})")
                        .into(),
                );
                return Err(Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for origins, with the policy applied to every request and redirect.
#[derive(Clone, Debug)]
pub(crate) struct Origins {
    client: reqwest::Client,
    policy: Arc<OriginPolicy>,
}

/// What a download may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DownloadLimits {
    /// Most bytes.
    pub(crate) max_size: u64,
    /// Longest time, from the request to the last byte.
    pub(crate) timeout: Duration,
}

impl Origins {
    /// A client under `policy`, trusting the web's roots and `extra_roots` (PEM) for `https`,
    /// following at most `max_redirects` redirects.
    pub(crate) fn new(
        policy: OriginPolicy,
        extra_roots: &[Vec<u8>],
        max_redirects: usize,
    ) -> Result<Self> {
        let policy = Arc::new(policy);
        let redirects = Arc::clone(&policy);
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(format!("more than {max_redirects} redirects"));
            }
            match redirects.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let mut builder = reqwest::Client::builder()
            .redirect(redirect)
            .dns_resolver(Arc::new(CheckedResolver(Arc::clone(&policy))))
            .user_agent(concat!("remexec/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Proxies from the environment would connect on the client's behalf to addresses
            // this policy never sees.
            .no_proxy();
        for pem in extra_roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::InvalidArgument(remexec_core::Message::caused_by(
                    "reading the origins' extra CA certificates",
                    e,
                ))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| Error::internal("building the origins' HTTP client", e))?;
        Ok(Self { client, policy })
    }

    /// Downloads `url` into `file`, sending `headers`, within `limits`, checking `sri` if
    /// given. Errors by kind: `PermissionDenied` for a refused origin (or an origin's 401 or
    /// 403), `NotFound` for 404 and 410, `DeadlineExceeded`, `ResourceExhausted` for content
    /// over the limit, `Aborted` for a checksum mismatch, `Unavailable` for anything else the
    /// origin or the network did.
    pub(crate) async fn download(
        &self,
        url: &str,
        headers: &[(String, String)],
        limits: DownloadLimits,
        sri: Option<&Sri>,
        file: &Path,
    ) -> Result<u64> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::invalid(format!("{url:?} is not a URL: {e}")))?;
        self.policy.check_url(&parsed)?;
        let fetch = self.fetch(parsed, headers, limits.max_size, sri, file);
        match tokio::time::timeout(limits.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(Error::DeadlineExceeded(
                format!("fetching {url} took over {:?}", limits.timeout).into(),
            )),
        }
    }

    async fn fetch(
        &self,
        url: reqwest::Url,
        headers: &[(String, String)],
        max_size: u64,
        sri: Option<&Sri>,
        path: &Path,
    ) -> Result<u64> {
        let mut request = self.client.get(url.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| request_error(&url, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(&url, status));
        }
        if let Some(length) = response.content_length().filter(|l| *l > max_size) {
            return Err(too_large(&url, length, max_size));
        }
        let mut hasher = sri.map(Sri::hasher);
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let mut body = response.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| request_error(&url, e))?;
            size += chunk.len() as u64;
            if size > max_size {
                return Err(too_large(&url, size, max_size));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        if let (Some(sri), Some(h)) = (sri, hasher) {
            sri.check(h, &format!("the content of {url}"))?;
        }
        Ok(size)
    }
}

fn too_large(url: &reqwest::Url, size: u64, max: u64) -> Error {
    Error::ResourceExhausted(
        format!("{url} is over the asset size limit of {max} bytes ({size} or more)").into(),
    )
}

fn status_error(url: &reqwest::Url, status: reqwest::StatusCode) -> Error {
    let text = format!("{url} answered {status}");
    match status.as_u16() {
        404 | 410 => Error::NotFound(text.into()),
        401 | 403 => Error::PermissionDenied(text.into()),
        _ => Error::Unavailable(text.into()),
    }
}

/// A request's error: the policy's refusal (from name resolution or a redirect) as it was,
/// anything else `Unavailable`.
fn request_error(url: &reqwest::Url, error: reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(Error::PermissionDenied(m)) = e.downcast_ref::<Error>() {
            return Error::PermissionDenied(format!("{url}: {}", &**m).into());
        }
        if let Some(Error::InvalidArgument(m)) = e.downcast_ref::<Error>() {
            return Error::invalid(format!("{url}: {}", &**m));
        }
        source = e.source();
    }
    if error.is_timeout() {
        return Error::DeadlineExceeded(format!("fetching {url} timed out").into());
    }
    Error::Unavailable(remexec_core::Message::caused_by(
        format!("fetching {url}"),
        error,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_host_and_address() {
        let open = OriginPolicy::default();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(open.check_url(&url("https://example.com/a")).is_ok());
        for (u, code) in [
            ("ftp://example.com/a", tonic::Code::InvalidArgument),
            ("file:///etc/passwd", tonic::Code::InvalidArgument),
            ("http://127.0.0.1:8080/", tonic::Code::PermissionDenied),
            ("http://[::1]/", tonic::Code::PermissionDenied),
            (
                "http://169.254.169.254/latest/",
                tonic::Code::PermissionDenied,
            ),
            ("http://2130706433/", tonic::Code::PermissionDenied),
        ] {
            let err = open.check_url(&url(u)).unwrap_err();
            assert_eq!(err.code(), code, "{u}: {err}");
        }
        let listed = OriginPolicy {
            hosts: Some(vec!["example.com".into(), "*.mirror.org".into()]),
            private_addresses: false,
        };
        assert!(listed.check_url(&url("https://EXAMPLE.com/")).is_ok());
        assert!(listed.check_url(&url("https://a.mirror.org/")).is_ok());
        for u in [
            "https://mirror.org/",
            "https://example.com.evil/",
            "https://evilmirror.org/",
        ] {
            let err = listed.check_url(&url(u)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{u}");
        }
        let private = OriginPolicy {
            hosts: None,
            private_addresses: true,
        };
        assert!(private.check_url(&url("http://127.0.0.1:8080/")).is_ok());
    }
}
