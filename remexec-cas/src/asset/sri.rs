//! Subresource Integrity checksums: the `checksum.sri` qualifier.
//!
//! A value is one or more `ALGORITHM-BASE64` tokens separated by white space, as in the W3C
//! Subresource Integrity recommendation; each may end in `?options`, which are ignored. Of the
//! tokens whose algorithm is known (`sha256`, `sha384`, `sha512`), only the strongest algorithm
//! counts, and content matches if its hash equals any token of that algorithm. A value with no
//! known algorithm is `InvalidArgument`: the server could not check it.

use base64::Engine;
use remexec_core::{Error, Result};
use sha2::Digest as _;

/// A hash algorithm of SRI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// A parsed `checksum.sri`: the strongest algorithm and the hashes accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sri {
    algorithm: Algorithm,
    expected: Vec<Vec<u8>>,
}

impl Sri {
    /// Parses a `checksum.sri` value.
    pub(crate) fn parse(value: &str) -> Result<Self> {
        let mut tokens = Vec::new();
        for token in value.split_ascii_whitespace() {
            let token = token.split_once('?').map_or(token, |(t, _)| t);
            let Some((name, hash)) = token.split_once('-') else {
                return Err(Error::invalid(format!(
                    "checksum.sri token {token:?} is not ALGORITHM-BASE64"
                )));
            };
            let Some(algorithm) = Algorithm::parse(name) else {
                continue;
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(hash)
                .ok()
                .filter(|b| b.len() == algorithm.len())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "checksum.sri token {token:?} is not a base64 {name} hash"
                    ))
                })?;
            tokens.push((algorithm, bytes));
        }
        let Some(algorithm) = tokens.iter().map(|(a, _)| *a).max() else {
            return Err(Error::invalid(format!(
                "checksum.sri {value:?} names no supported algorithm (sha256, sha384, sha512)"
            )));
        };
        let expected = tokens
            .into_iter()
            .filter(|(a, _)| *a == algorithm)
            .map(|(_, b)| b)
            .collect();
        Ok(Self {
            algorithm,
            expected,
        })
    }

    /// A hasher for this checksum's algorithm.
    pub(crate) fn hasher(&self) -> SriHasher {
        match self.algorithm {
            Algorithm::Sha256 => SriHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => SriHasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => SriHasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// `Aborted` unless `hasher` (fed the content) matches; `what` names the content.
    pub(crate) fn check(&self, hasher: SriHasher, what: &str) -> Result<()> {
        let got = hasher.finish();
        if self.expected.contains(&got) {
            return Ok(());
        }
        let got = base64::engine::general_purpose::STANDARD.encode(&got);
        Err(Error::Aborted(
            format!(
                "{what} does not match its checksum.sri: its {:?} hash is {got}",
                self.algorithm
            )
            .into(),
        ))
    }
}

/// A running hash of content being downloaded.
pub(crate) enum SriHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl SriHasher {
    /// Feeds `data`.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha384(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sri(algorithm: &str, data: &[u8]) -> String {
        let hash = match algorithm {
            "sha256" => sha2::Sha256::digest(data).to_vec(),
            "sha384" => sha2::Sha384::digest(data).to_vec(),
            _ => sha2::Sha512::digest(data).to_vec(),
        };
        format!(
            "{algorithm}-{}",
            base64::engine::general_purpose::STANDARD.encode(hash)
        )
    }

    fn matches(value: &str, data: &[u8]) -> Result<()> {
        let sri = Sri::parse(value)?;
        let mut hasher = sri.hasher();
        hasher.update(data);
        sri.check(hasher, "the content")
    }

    #[test]
    fn each_algorithm_matches_its_own_hash_only() {
        for algorithm in ["sha256", "sha384", "sha512"] {
            let value = sri(algorithm, b"hello");
            assert!(matches(&value, b"hello").is_ok(), "{value}");
            let err = matches(&value, b"hellO").unwrap_err();
            assert_eq!(err.code(), tonic::Code::Aborted, "{err}");
        }
    }

    #[test]
    fn the_strongest_algorithm_decides_and_options_and_unknown_ones_are_skipped() {
        // A right sha256 does not save a wrong sha512.
        let value = format!("{} {}", sri("sha256", b"a"), sri("sha512", b"b"));
        assert!(matches(&value, b"a").is_err());
        assert!(matches(&value, b"b").is_ok());
        let value = format!("md5-AAAA {}?opt", sri("sha384", b"a"));
        assert!(matches(&value, b"a").is_ok());
        // Any token of the strongest algorithm will do.
        let value = format!("{} {}", sri("sha256", b"a"), sri("sha256", b"b"));
        assert!(matches(&value, b"b").is_ok());
    }

    #[test]
    fn malformed_values_are_invalid_arguments() {
        for value in [
            "",
            "md5-AAAA",
            "sha256",
            "sha256-!!!",
            "sha256-AAAA",
            &sri("sha512", b"x").replace("sha512", "sha256"),
        ] {
            let err = Sri::parse(value).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{value:?}: {err}");
        }
    }
}
