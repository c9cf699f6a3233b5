//! Property tests of credentials parsing, the proptest twins of the `tokens` fuzz target:
//! instance patterns against an independent glob matcher, `authorization` headers, and token
//! files against an independent reading of their hashes.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use remexec_core::auth::{Pattern, TokenSet, bearer_token, hash_token};

// The glob oracle is the `tokens` fuzz target's own (`fuzz/src/lib.rs`).
#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod oracles;

use oracles::glob_matches;

/// Strings over a small alphabet, so that matches and near misses are both common.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('b'), Just('/'), Just('-')],
        0..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn pattern_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("*"),
            Just("a"),
            Just("b"),
            Just("/"),
            Just("-"),
            Just("**")
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn patterns_match_exactly_as_a_glob(pattern in pattern_text(), name in text(12)) {
        let expected = glob_matches(&pattern, &name);
        prop_assert_eq!(Pattern::new(&pattern).matches(&name), expected);
    }

    #[test]
    fn bearer_headers_are_parsed_exactly(
        scheme in prop_oneof![Just("Bearer"), Just("bearer"), Just("BEARER"), Just("Basic"), Just("Bearer:"), Just("")],
        spaces in 0usize..3,
        token in "[ -~]{0,20}",
    ) {
        let value = format!("{scheme}{}{token}", " ".repeat(spaces));
        let Ok(header) = http::HeaderValue::from_str(&value) else { return Ok(()) };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, header);
        let expected = value.split_once(' ').and_then(|(s, t)| {
            let t = t.trim();
            (s.eq_ignore_ascii_case("bearer") && !t.is_empty()).then_some(t.to_string())
        });
        match bearer_token(&headers) {
            Ok(found) => prop_assert_eq!(found.map(str::to_string), expected),
            Err(e) => {
                prop_assert!(expected.is_none());
                prop_assert_eq!(e.code(), tonic::Code::Unauthenticated);
            }
        }
    }

    #[test]
    fn a_token_is_found_exactly_when_its_hash_is_listed(
        tokens in proptest::collection::vec("[a-z0-9]{1,12}", 0..5),
        presented in "[a-z0-9]{1,12}",
    ) {
        let mut unique = tokens.clone();
        unique.sort();
        unique.dedup();
        let mut file = String::new();
        for (i, token) in unique.iter().enumerate() {
            file += &format!(
                "[[token]]\nname = \"t{i}\"\nsha256 = \"{}\"\npermissions = [\"cache-read\"]\n",
                hash_token(token)
            );
        }
        let set = TokenSet::parse(&file).unwrap();
        prop_assert_eq!(set.len(), unique.len());
        let found = set.lookup(&presented);
        prop_assert_eq!(found.is_some(), unique.contains(&presented));
        if let Some(principal) = found {
            let index = unique.iter().position(|t| *t == presented).unwrap();
            prop_assert_eq!(principal.name, format!("t{index}"));
        }
    }

    #[test]
    fn malformed_token_files_are_invalid_argument_and_never_echo_a_hash(
        digits in "[0-9a-fA-Fg]{60,68}",
        permission in prop_oneof![Just("cache-read"), Just("root"), Just("")],
    ) {
        let file = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{digits}\"\npermissions = [\"{permission}\"]\n"
        );
        match TokenSet::parse(&file) {
            Ok(set) => {
                prop_assert_eq!(digits.len(), 64);
                prop_assert!(digits.chars().all(|c| c.is_ascii_hexdigit()));
                prop_assert_eq!(permission, "cache-read");
                prop_assert_eq!(set.len(), 1);
            }
            Err(e) => {
                prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
                prop_assert!(!e.to_string().contains(&digits));
            }
        }
    }
}
