//! Bearer tokens: a token file of SHA-256 hashes, each with a name and grants.

use std::fmt;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::{Grant, Method, Principal};
use crate::{Error, Result};

/// The tokens of a token file. Only hashes are held; a presented token is hashed and compared
/// with every entry in constant time.
///
/// The file is TOML, one `[[token]]` table per token:
///
/// ```toml
/// [[token]]
/// name = "ci"                      # shown in logs and errors
/// sha256 = "…64 hex digits…"       # printf %s "$TOKEN" | sha256sum
/// permissions = ["cache-read", "cache-write", "execute"]
/// instances = ["*"]                # instance-name patterns; default ["*"]
/// ```
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    grant: Grant,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    sha256: String,
    permissions: Vec<String>,
    #[serde(default = "all_instances")]
    instances: Vec<String>,
}

fn all_instances() -> Vec<String> {
    vec!["*".into()]
}

/// The SHA-256 of `token`, as a token file holds it (64 lowercase hex digits).
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    faster_hex::hex_string(bytes)
}

/// `message` with every quoted string longer than a few characters replaced by `"…"`: a
/// parser's message may quote a value (a hash put in the wrong field), never show it.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        let Some(len) = rest[start + 1..].find('"') else {
            break;
        };
        let quoted = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        out.push_str(if quoted.len() > 8 {
            "\"…\""
        } else {
            &rest[start..start + len + 2]
        });
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

impl TokenSet {
    /// Parses a token file. `InvalidArgument`, naming the entry, for a malformed hash, an
    /// unknown permission, an entry with no permission, or two entries with the same hash.
    /// Errors never contain a hash.
    pub fn parse(text: &str) -> Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("token file: {}", redact_quoted(e.message()))))?;
        let mut entries: Vec<Entry> = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let what = format!("token file entry {} ({:?})", i + 1, entry.name);
            let mut hash = [0u8; 32];
            let digits = entry.sha256.trim();
            if digits.len() != 64
                || faster_hex::hex_decode(digits.to_ascii_lowercase().as_bytes(), &mut hash)
                    .is_err()
            {
                return Err(Error::invalid(format!(
                    "{what}: sha256 must be 64 hex digits"
                )));
            }
            if entry.permissions.is_empty() {
                return Err(Error::invalid(format!("{what}: no permissions")));
            }
            let grant = Grant::parse(&entry.permissions, &entry.instances)
                .map_err(|e| Error::InvalidArgument(crate::Message::caused_by(&what, e)))?;
            if entries.iter().any(|e| e.hash == hash) {
                return Err(Error::invalid(format!(
                    "{what}: the same hash appears twice"
                )));
            }
            entries.push(Entry {
                name: entry.name,
                hash,
                grant,
            });
        }
        Ok(Self { entries })
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal `token` stands for, if any. Every entry is compared, in constant time,
    /// whatever matches, so the time taken does not tell which entry nearly matched.
    pub fn lookup(&self, token: &str) -> Option<Principal> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found.map(|entry| Principal {
            name: entry.name.clone(),
            method: Method::Token,
            grants: vec![entry.grant.clone()],
            cluster: false,
        })
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| &e.name).collect();
        f.debug_struct("TokenSet").field("names", &names).finish()
    }
}
