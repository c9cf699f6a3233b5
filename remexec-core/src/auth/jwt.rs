//! JWT bearer tokens: HS256, RS256 or ES256, verified with a configured key or a JWKS.

use std::fmt;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Grant, Method, Principal};
use crate::{Error, Result};

/// Shortest HS256 secret accepted, in bytes (RFC 7518 asks for at least the hash size).
const MIN_SECRET: usize = 32;

/// What a verified JWT must also satisfy.
#[derive(Clone, Debug, Default)]
pub struct JwtSettings {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), if set.
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf` (default 0).
    pub leeway_secs: u64,
}

/// Verifies JWTs and maps their claims to grants.
///
/// Every token must carry `exp`, and is refused once it has passed. Its claims map to a grant:
/// `permissions` (an array of permission names, or else `scope`, space-separated) on the
/// instance patterns of `instances` (an array; default every instance). The principal's name
/// is `sub`.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    settings: JwtSettings,
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    instances: Option<Vec<String>>,
}

/// Whether `token` has the shape of a compact JWS (three dot-separated parts).
pub(super) fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl JwtVerifier {
    /// A verifier for one key: a PEM public key (RSA: RS256; EC P-256: ES256) or, for anything
    /// not PEM, an HS256 shared secret (surrounding whitespace trimmed).
    pub fn from_key(key: &[u8], settings: JwtSettings) -> Result<Self> {
        let text = std::str::from_utf8(key).unwrap_or("");
        let key = if text.contains("-----BEGIN") {
            if let Ok(rsa) = DecodingKey::from_rsa_pem(key) {
                Key {
                    kid: None,
                    algorithm: Algorithm::RS256,
                    key: rsa,
                }
            } else if let Ok(ec) = DecodingKey::from_ec_pem(key) {
                Key {
                    kid: None,
                    algorithm: Algorithm::ES256,
                    key: ec,
                }
            } else {
                return Err(Error::invalid(
                    "JWT key: a PEM key must be an RSA or an EC P-256 public key",
                ));
            }
        } else {
            let secret = key.trim_ascii();
            // A public key passed by mistake must never become a shared secret that anyone
            // could sign with: refuse what looks like a JWKS, an SSH key or DER.
            let text = std::str::from_utf8(secret).unwrap_or("");
            if text.is_empty()
                || text.chars().any(char::is_control)
                || text.starts_with('{')
                || text.starts_with("ssh-")
            {
                return Err(Error::invalid(
                    "JWT key: not a PEM public key, and not a usable HS256 secret (it must be printable text; a JWKS goes to --jwks)",
                ));
            }
            if secret.len() < MIN_SECRET {
                return Err(Error::invalid(
                    "JWT key: an HS256 secret must be at least 32 bytes",
                ));
            }
            Key {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret)
                    .map_err(|e| Error::InvalidArgument(crate::Message::caused_by("JWT key", e)))?,
            }
        };
        Ok(Self {
            keys: vec![key],
            settings,
        })
    }

    /// A verifier for the keys of a JWKS document (RSA keys verify RS256, EC P-256 keys ES256,
    /// `oct` keys HS256). A token names its key by `kid`; without one, every key of its
    /// algorithm is tried.
    pub fn from_jwks(json: &str, settings: JwtSettings) -> Result<Self> {
        let set: JwkSet = serde_json::from_str(json)
            .map_err(|e| Error::InvalidArgument(crate::Message::caused_by("JWKS", e)))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKey(oct) => {
                    // base64url: 4 characters per 3 bytes.
                    if oct.value.trim_end_matches('=').len() * 3 / 4 < MIN_SECRET {
                        return Err(Error::invalid(
                            "JWKS: an oct (HS256) key must be at least 32 bytes",
                        ));
                    }
                    Algorithm::HS256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| Error::InvalidArgument(crate::Message::caused_by("JWKS key", e)))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(Error::invalid("JWKS: no RSA, EC or oct key"));
        }
        Ok(Self { keys, settings })
    }

    /// The principal a valid token stands for; `UNAUTHENTICATED` for a token that is malformed,
    /// signed by no configured key, expired, not yet valid, or for another issuer or audience,
    /// and for claims that name no known permission.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let refused = |why: &str| Error::Unauthenticated(format!("JWT refused: {why}").into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed"))?;
        let mut last = refused("no configured key has its algorithm and key id");
        for key in &self.keys {
            if key.algorithm != header.alg
                || (header.kid.is_some() && key.kid.is_some() && header.kid != key.kid)
            {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => return principal(data.claims).map_err(|e| refused(&e.to_string())),
                Err(e) => last = refused(&reason(&e)),
            }
        }
        Err(last)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp"];
        required.extend(self.settings.issuer.as_ref().map(|_| "iss"));
        required.extend(self.settings.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.settings.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }
}

fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("no {c} claim"),
        _ => "malformed".into(),
    }
}

fn principal(claims: Claims) -> Result<Principal> {
    let permissions: Vec<String> = match (claims.permissions, claims.scope) {
        (Some(p), _) => p,
        (None, Some(scope)) => scope.split_whitespace().map(str::to_string).collect(),
        (None, None) => Vec::new(),
    };
    let permissions: Vec<String> = permissions
        .into_iter()
        .filter(|p| super::Permission::parse(p).is_ok())
        .collect();
    if permissions.is_empty() {
        return Err(Error::invalid("no known permission in its claims"));
    }
    let instances = claims.instances.unwrap_or_else(|| vec!["*".into()]);
    Ok(Principal {
        name: claims.sub.unwrap_or_else(|| "jwt".into()),
        method: Method::Jwt,
        grants: vec![Grant::parse(&permissions, &instances)?],
        cluster: false,
    })
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{:?}{}",
                    k.algorithm,
                    k.kid
                        .as_deref()
                        .map(|k| format!(" {k}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("settings", &self.settings)
            .finish()
    }
}
