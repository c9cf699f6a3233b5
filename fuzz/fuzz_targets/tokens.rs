//! Credentials parsing: token files, `authorization` headers, instance patterns and JWTs.
//!
//! The first byte picks the property checked on the rest of the input:
//! - **token file** (text, then `0xFF`, then a presented token): `TokenSet::parse` never panics,
//!   fails only with `InvalidArgument` and never echoes a value of 64 or more hex digits;
//!   when it accepts, `lookup(token)` finds an entry exactly when the SHA-256 of the token is
//!   one of the file's `sha256` values (read independently with `toml`);
//! - **header**: `bearer_token` accepts exactly `Bearer`, in any case, a space and a token
//!   that is not blank, returns it trimmed, and otherwise fails with `Unauthenticated` without
//!   echoing the header;
//! - **pattern** (pattern, `0xFF`, name): `Pattern::matches` agrees with a memoised recursive
//!   glob matcher;
//! - **JWT**: `JwtVerifier::verify` with a fixed HS256 key never panics, fails only with
//!   `Unauthenticated`, and accepts only a token whose signature is the HMAC-SHA256 of its
//!   first two parts (checked independently with `hmac`).
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use remexec_core::auth::{JwtSettings, JwtVerifier, Pattern, TokenSet, bearer_token, hash_token};
use remexec_fuzz::{glob_matches, parts};
use sha2::Sha256;

/// The HS256 key of the JWT property; the seeds hold tokens it signed.
const JWT_KEY: &[u8] = b"remexec-fuzz-hs256-key-0123456789abcdef";

fn token_file(text: &str, token: &str) {
    let parsed = TokenSet::parse(text);
    let hashes: Vec<String> = toml::from_str::<toml::Value>(text)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_array().cloned()))
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.get("sha256").and_then(|h| h.as_str()))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    match parsed {
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            let message = e.to_string();
            let values = text.lines().filter_map(|line| {
                let (key, value) = line.split_once('=')?;
                Some((key.trim(), value.trim().trim_matches('"')))
            });
            // A token's name is shown by design (logs name the caller), so a hash that is part
            // of a name may be shown with it.
            let names: Vec<&str> = values
                .clone()
                .filter(|(key, _)| *key == "name")
                .map(|(_, value)| value)
                .collect();
            // No other value of the file that could be a hash (64 or more hex digits) is shown.
            for (key, value) in values {
                let hash_like = value.len() >= 64 && value.chars().all(|c| c.is_ascii_hexdigit());
                if key == "name" || !hash_like || names.iter().any(|n| n.contains(value)) {
                    continue;
                }
                assert!(!message.contains(value), "{message}");
            }
        }
        Ok(set) => {
            assert_eq!(set.len(), hashes.len());
            let expected = hashes.contains(&hash_token(token));
            assert_eq!(set.lookup(token).is_some(), expected, "{token:?}");
        }
    }
}

fn header(value: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    let expected = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    match bearer_token(&headers) {
        Ok(token) => assert_eq!(token, expected),
        Err(e) => {
            assert!(expected.is_none());
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            // One fixed message, whatever the header: it cannot echo it.
            assert_eq!(
                e.to_string(),
                "the authorization header is not \"Bearer TOKEN\""
            );
        }
    }
}

fn pattern(pattern: &str, name: &str) {
    if pattern.len() > 200 || name.len() > 200 {
        return;
    }
    let expected = glob_matches(pattern, name);
    assert_eq!(
        Pattern::new(pattern).matches(name),
        expected,
        "{pattern:?} ~ {name:?}"
    );
}

fn jwt(token: &str) {
    let verifier = JwtVerifier::from_key(JWT_KEY, JwtSettings::default()).expect("the key");
    match verifier.verify(token) {
        Err(e) => assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}"),
        Ok(_) => {
            let (signed, signature) = token.rsplit_once('.').expect("three parts");
            let signature = base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                signature,
            )
            .expect("a base64url signature");
            let mut mac = Hmac::<Sha256>::new_from_slice(JWT_KEY).expect("any key length");
            mac.update(signed.as_bytes());
            assert!(
                mac.verify_slice(&signature).is_ok(),
                "accepted a forged token"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Some(p) = parts(rest, 2) {
                token_file(p[0], p[1]);
            }
        }
        1 => header(rest),
        2 => {
            if let Some(p) = parts(rest, 2) {
                pattern(p[0], p[1]);
            }
        }
        _ => {
            if let Ok(token) = std::str::from_utf8(rest) {
                jwt(token);
            }
        }
    }
});
