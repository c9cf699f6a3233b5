//! Who may do what: client authentication (mutual TLS, bearer tokens, JWT, anonymous) and
//! per-instance permissions, enforced by one [`AuthLayer`] in front of every service.
//!
//! An [`AuthPolicy`] turns a request's credentials into a [`Principal`]:
//! - a bearer token (`authorization: Bearer …`) that a [`TokenSet`] holds (hashed, compared in
//!   constant time) or that a [`JwtVerifier`] accepts (HS256, RS256 or ES256);
//! - else a client certificate that the TLS layer verified against the client CA, whose
//!   subject or SAN matches a [`CertRule`], or a cluster name (then it is a cluster member);
//! - else the anonymous grant, if one is configured.
//!
//! A principal holds [`Grant`]s: [`Permission`]s scoped to instance-name [`Pattern`]s. The
//! [`AuthLayer`] finds the permission a method needs and the instance it names (from the first
//! request message, before any handler runs) and refuses with `UNAUTHENTICATED` or
//! `PERMISSION_DENIED` otherwise. [`AuthPolicy::open`] grants everything to everyone: the
//! behaviour of a server with no auth configured, for trusted networks.
//!
//! Secrets never appear in `Debug` output or errors: tokens are kept as SHA-256 hashes.
//!
//! ```
//! use remexec_core::auth::{AuthPolicy, Grant, Need, Permission, TokenSet};
//!
//! let tokens = TokenSet::parse(r#"
//!     [[token]]
//!     name = "laptops"
//!     sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
//!     permissions = ["cache-read"]
//!     instances = ["main", "team-*"]
//! "#)?;
//! let policy = AuthPolicy::builder().tokens(tokens).build();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("authorization", "Bearer secret".parse().unwrap());
//! let who = policy.authenticate(&headers, None)?;
//! assert!(who.allows(Need::Permission(Permission::CacheRead), "team-a"));
//! assert!(!who.allows(Need::Permission(Permission::CacheWrite), "team-a"));
//! assert!(!who.allows(Need::Permission(Permission::CacheRead), "other"));
//! # let _ = Grant::all();
//! # Ok::<(), remexec_core::Error>(())
//! ```

mod certs;
mod jwt;
mod layer;
mod methods;
mod tokens;

use std::fmt;

pub use certs::{CertRule, certificate_names};

/// The name a cluster certificate carries unless the operator names others.
pub const DEFAULT_CLUSTER_NAME: &str = "remexec-cluster";
pub use jwt::{JwtSettings, JwtVerifier};
pub use layer::{AuthLayer, AuthService, Caller, FIRST_MESSAGE_TIMEOUT};
pub use methods::{InstanceFrom, Need, is_served, method_need};
pub use tokens::{TokenSet, hash_token};

use crate::{Error, Result};

/// What a caller may do on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read the CAS and the Action Cache (`cache-read`).
    CacheRead,
    /// Write the CAS and the Action Cache (`cache-write`).
    CacheWrite,
    /// Execute actions and follow their operations (`execute`).
    Execute,
    /// Administrative and status endpoints (`admin`).
    Admin,
    /// Have the server download from origins on the caller's behalf: the Remote Asset API's
    /// `Fetch` (`fetch`), which also needs `cache-read`.
    Fetch,
    /// Stream build events to the Build Event Service (`build-events`).
    BuildEvents,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 6] = [
        Permission::CacheRead,
        Permission::CacheWrite,
        Permission::Execute,
        Permission::Admin,
        Permission::Fetch,
        Permission::BuildEvents,
    ];

    /// The name used in token files, JWT claims and config: `cache-read`, `cache-write`,
    /// `execute`, `admin`, `fetch`, `build-events`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CacheRead => "cache-read",
            Self::CacheWrite => "cache-write",
            Self::Execute => "execute",
            Self::Admin => "admin",
            Self::Fetch => "fetch",
            Self::BuildEvents => "build-events",
        }
    }

    /// Parses a [`name`](Self::name); `InvalidArgument` for anything else.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                // A long "name" is likely something pasted into the wrong place (a hash, a
                // token): say how long it is rather than show it.
                let shown = if name.len() <= 20 {
                    format!("{name:?}")
                } else {
                    format!("of {} characters", name.len())
                };
                Error::invalid(format!(
                    "unknown permission {shown}: expected cache-read, cache-write, execute, admin or fetch"
                ))
            })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A glob over instance names or certificate names: `*` matches any run of characters
/// (including `/` and none), everything else matches itself. `*` alone matches every name,
/// the empty instance name included.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern; any string is one.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Iterative glob matching with backtracking to the last `*`: linear in practice, and never
/// exponential on hostile patterns.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Permissions on the instances whose names match any of `instances`.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    permissions: u8,
    instances: Vec<Pattern>,
}

impl Grant {
    /// `permissions` on instances matching any of `instances`.
    pub fn new(permissions: impl IntoIterator<Item = Permission>, instances: Vec<Pattern>) -> Self {
        Self {
            permissions: permissions.into_iter().fold(0, |acc, p| acc | p.bit()),
            instances,
        }
    }

    /// Parses permission names and instance patterns (from a token file, claims or config).
    pub fn parse<S: AsRef<str>>(permissions: &[S], instances: &[S]) -> Result<Self> {
        let permissions = permissions
            .iter()
            .map(|p| Permission::parse(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(
            permissions,
            instances.iter().map(|i| Pattern::new(i.as_ref())).collect(),
        ))
    }

    /// Every permission on every instance.
    pub fn all() -> Self {
        Self::new(Permission::ALL, vec![Pattern::new("*")])
    }

    /// Whether this grant allows `need` on `instance`.
    pub fn allows(&self, need: Need, instance: &str) -> bool {
        let permitted = match need {
            Need::Permission(p) => self.permissions & p.bit() != 0,
            Need::Both(a, b) => self.permissions & a.bit() != 0 && self.permissions & b.bit() != 0,
            Need::Any => self.permissions != 0,
            Need::Nothing => return true,
            Need::Cluster => return false,
        };
        permitted && self.instances.iter().any(|i| i.matches(instance))
    }

    /// Whether this grant allows `need` on at least one instance.
    pub fn allows_somewhere(&self, need: Need) -> bool {
        match need {
            Need::Permission(p) => self.permissions & p.bit() != 0 && !self.instances.is_empty(),
            Need::Both(a, b) => {
                self.allows_somewhere(Need::Permission(a))
                    && self.allows_somewhere(Need::Permission(b))
            }
            Need::Any => self.permissions != 0 && !self.instances.is_empty(),
            Need::Nothing => true,
            Need::Cluster => false,
        }
    }

    /// The permissions granted.
    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.permissions & p.bit() != 0)
            .collect()
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.permissions().iter().map(|p| p.name()).collect();
        write!(f, "{names:?} on {:?}", self.instances)
    }
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// No credentials.
    Anonymous,
    /// A bearer token from the token file.
    Token,
    /// A JWT.
    Jwt,
    /// A client certificate.
    Certificate,
}

/// An authenticated caller: a name for logs (never a secret) and what it may do.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's name, the JWT's subject, the certificate's first name, or `anonymous`.
    pub name: String,
    /// How it authenticated.
    pub method: Method,
    /// What it may do.
    pub grants: Vec<Grant>,
    /// Whether it is a member of the cluster (a worker or a peer): it may use the worker API,
    /// and everything else.
    pub cluster: bool,
}

impl Principal {
    /// Whether this principal may do `need` on `instance`.
    pub fn allows(&self, need: Need, instance: &str) -> bool {
        if let Need::Both(a, b) = need {
            // The two may come from different grants.
            return self.allows(Need::Permission(a), instance)
                && self.allows(Need::Permission(b), instance);
        }
        self.cluster || self.grants.iter().any(|g| g.allows(need, instance))
    }

    /// `PERMISSION_DENIED`, naming the caller and what it lacked, unless [`allows`](Self::allows).
    pub fn authorize(&self, need: Need, instance: &str, method: &str) -> Result<()> {
        if self.allows(need, instance) {
            return Ok(());
        }
        Err(Error::PermissionDenied(
            format!(
                "{} ({:?}) may not call {method} on instance {instance:?}: it needs {need}",
                self.name, self.method
            )
            .into(),
        ))
    }

    /// `PERMISSION_DENIED` unless this principal may do `need` on some instance (for calls that
    /// name none, such as the Operations methods or the status page).
    pub fn authorize_somewhere(&self, need: Need, method: &str) -> Result<()> {
        let somewhere = |need| self.grants.iter().any(|g: &Grant| g.allows_somewhere(need));
        let allowed = match need {
            Need::Both(a, b) => somewhere(Need::Permission(a)) && somewhere(Need::Permission(b)),
            need => somewhere(need),
        };
        if self.cluster || allowed {
            return Ok(());
        }
        Err(Error::PermissionDenied(
            format!(
                "{} ({:?}) may not call {method}: it needs {need}",
                self.name, self.method
            )
            .into(),
        ))
    }
}

/// The authentication policy of one listener. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct AuthPolicy {
    open: bool,
    tokens: Option<TokenSet>,
    jwt: Option<JwtVerifier>,
    cert_rules: Vec<CertRule>,
    cluster_names: Vec<Pattern>,
    anonymous: Option<Grant>,
}

/// Builds an [`AuthPolicy`]; see [`AuthPolicy::builder`].
#[derive(Clone, Debug, Default)]
pub struct AuthPolicyBuilder {
    tokens: Option<TokenSet>,
    jwt: Option<JwtVerifier>,
    cert_rules: Vec<CertRule>,
    cluster_names: Vec<Pattern>,
    anonymous: Option<Grant>,
}

impl AuthPolicyBuilder {
    /// Accepts the bearer tokens of `tokens`.
    pub fn tokens(mut self, tokens: TokenSet) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Accepts JWTs that `jwt` verifies.
    pub fn jwt(mut self, jwt: JwtVerifier) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Accepts verified client certificates that `rule` matches, with its grant.
    pub fn cert_rule(mut self, rule: CertRule) -> Self {
        self.cert_rules.push(rule);
        self
    }

    /// Verified certificates with a name matching one of `names` are cluster members.
    pub fn cluster_names(mut self, names: Vec<Pattern>) -> Self {
        self.cluster_names = names;
        self
    }

    /// Callers without credentials get `grant` (without this they are refused).
    pub fn anonymous(mut self, grant: Grant) -> Self {
        self.anonymous = Some(grant);
        self
    }

    /// The policy.
    pub fn build(self) -> AuthPolicy {
        AuthPolicy {
            open: false,
            tokens: self.tokens,
            jwt: self.jwt,
            cert_rules: self.cert_rules,
            cluster_names: self.cluster_names,
            anonymous: self.anonymous,
        }
    }
}

impl AuthPolicy {
    /// No authentication: every caller may do everything, the worker API included. For
    /// trusted networks only.
    pub fn open() -> Self {
        Self {
            open: true,
            ..AuthPolicyBuilder::default().build()
        }
    }

    /// A policy that refuses everyone until methods are added.
    pub fn builder() -> AuthPolicyBuilder {
        AuthPolicyBuilder::default()
    }

    /// Whether this is [`open`](Self::open).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether callers without any credentials are let in (then a TLS listener must not
    /// require client certificates).
    pub fn admits_anonymous(&self) -> bool {
        self.open || self.anonymous.is_some()
    }

    /// Whether a caller may authenticate without a client certificate (anonymously, or with a
    /// token or JWT).
    pub fn certificate_optional(&self) -> bool {
        self.admits_anonymous() || self.tokens.is_some() || self.jwt.is_some()
    }

    /// Who the caller is, from its request headers and the certificate chain its TLS
    /// connection presented (already verified against the client CA by the TLS layer).
    ///
    /// A bearer token that no method accepts is `UNAUTHENTICATED` even where anonymous callers
    /// are admitted; so is a request with no credentials where they are not. A verified
    /// certificate that no rule names is `PERMISSION_DENIED`.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Principal> {
        if self.open {
            return Ok(Principal {
                name: "anonymous".into(),
                method: Method::Anonymous,
                grants: vec![Grant::all()],
                cluster: true,
            });
        }
        if let Some(token) = bearer_token(headers)? {
            return self.authenticate_bearer(token);
        }
        if let Some(leaf) = peer_certs.and_then(|c| c.first()) {
            return self.authenticate_certificate(leaf);
        }
        match &self.anonymous {
            Some(grant) => Ok(Principal {
                name: "anonymous".into(),
                method: Method::Anonymous,
                grants: vec![grant.clone()],
                cluster: false,
            }),
            None => Err(Error::Unauthenticated(
                "credentials required: a client certificate or an authorization: Bearer token"
                    .into(),
            )),
        }
    }

    fn authenticate_bearer(&self, token: &str) -> Result<Principal> {
        if let Some(principal) = self.tokens.as_ref().and_then(|t| t.lookup(token)) {
            return Ok(principal);
        }
        if let Some(jwt) = &self.jwt
            && jwt::looks_like_jwt(token)
        {
            return jwt.verify(token);
        }
        Err(Error::Unauthenticated(
            "the bearer token is not valid here".into(),
        ))
    }

    fn authenticate_certificate(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'static>,
    ) -> Result<Principal> {
        let names = certificate_names(leaf)?;
        let first = names.first().cloned().unwrap_or_default();
        if names
            .iter()
            .any(|n| self.cluster_names.iter().any(|p| p.matches(n)))
        {
            return Ok(Principal {
                name: first,
                method: Method::Certificate,
                grants: Vec::new(),
                cluster: true,
            });
        }
        let grants: Vec<Grant> = self
            .cert_rules
            .iter()
            .filter(|rule| rule.matches(&names))
            .map(|rule| rule.grant.clone())
            .collect();
        if grants.is_empty() {
            return Err(Error::PermissionDenied(
                format!("client certificate {names:?} is not allowed here").into(),
            ));
        }
        Ok(Principal {
            name: first,
            method: Method::Certificate,
            grants,
            cluster: false,
        })
    }
}

/// The token of an `authorization: Bearer TOKEN` header, if there is one. `UNAUTHENTICATED`
/// for an authorization header of another form (the header is never echoed).
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refused =
        || Error::Unauthenticated("the authorization header is not \"Bearer TOKEN\"".into());
    let value = value.to_str().map_err(|_| refused())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(refused)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(refused());
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests;
