//! Property tests of config parsing, the proptest twins of the `config` fuzz target: `[limits]`
//! checks, derived settings, and URLs with credentials.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use remexec_bin::config::{Config, redact_url};

proptest! {
    #[test]
    fn limits_are_accepted_exactly_when_positive_and_reach_the_services(
        values in proptest::collection::vec(0u64..3, 7),
    ) {
        let keys = [
            "max_blob_size", "max_find_missing_digests", "max_batch_blobs", "max_tree_depth",
            "max_tree_entries", "max_command_size", "max_concurrent_streams",
        ];
        let mut text = String::from("[limits]\n");
        for (key, value) in keys.iter().zip(&values) {
            text += &format!("{key} = {value}\n");
        }
        let config = Config::from_toml(&text).unwrap();
        prop_assert_eq!(config.check_limits().is_ok(), values.iter().all(|v| *v > 0));
        let cache = config.cache_limits();
        prop_assert_eq!(cache.max_blob_size, values[0]);
        prop_assert_eq!(cache.max_find_missing_digests as u64, values[1]);
        prop_assert_eq!(cache.max_batch_blobs as u64, values[2]);
        let scheduler = config.scheduler_config().unwrap();
        prop_assert_eq!(scheduler.tree_limits.max_depth, values[3]);
        prop_assert_eq!(scheduler.tree_limits.max_entries, values[4]);
        prop_assert_eq!(scheduler.max_command_size as u64, values[5]);
    }

    #[test]
    fn parsing_is_deterministic_and_unknown_keys_are_refused(
        key in "[a-z_]{1,12}",
        value in 0u32..10,
    ) {
        let text = format!("[limits]\n{key} = {value}\n");
        let first = Config::from_toml(&text);
        prop_assert_eq!(&first, &Config::from_toml(&text));
        let known = [
            "max_blob_size", "max_find_missing_digests", "max_batch_blobs", "max_tree_depth",
            "max_tree_entries", "max_command_size", "max_concurrent_streams", "connection_window",
            "stream_window", "max_message_size", "max_batch_total_size", "max_inline_size",
        ];
        prop_assert_eq!(first.is_ok(), known.contains(&key.as_str()));
    }

    #[test]
    fn redacted_urls_never_show_a_password(
        scheme in prop_oneof![Just("grpc"), Just("grpcs"), Just("s3")],
        user in "[a-z]{0,6}",
        password in "[A-Z0-9]{8,16}",
        host in "[a-z]{1,8}(:[0-9]{1,4})?",
        path in "(/[a-z]{0,6}){0,2}",
    ) {
        let url = format!("{scheme}://{user}:{password}@{host}{path}");
        let shown = redact_url(&url);
        prop_assert!(!shown.contains(&password), "{}", shown);
        prop_assert_eq!(shown, format!("{scheme}://***@{host}{path}"));
    }
}

#[test]
fn durations_take_seconds_or_units() {
    let config = Config::from_toml(
        "drain_secs = \"15s\"\n[scheduler]\nmax_action_timeout_secs = \"1h 30m\"\nunmatched_grace_secs = \"500ms\"\nlease_allowance_secs = 90\n",
    )
    .unwrap();
    assert_eq!(config.drain_secs, 15);
    assert_eq!(config.scheduler.max_action_timeout_secs, 5400);
    assert_eq!(config.scheduler.unmatched_grace_secs, 0.5);
    assert_eq!(config.scheduler.lease_allowance_secs, 90);
    for bad in [
        "drain_secs = \"soon\"",
        "drain_secs = \"1500ms\"",
        "drain_secs = -1",
        "[scheduler]\nmax_action_timeout_secs = \"15 fortnights\"",
    ] {
        let error = Config::from_toml(bad).unwrap_err();
        assert!(
            error.contains("duration") || error.contains("seconds"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn a_grace_too_long_for_a_duration_is_an_error_not_a_panic() {
    let config = Config::from_toml("[scheduler]\nunmatched_grace_secs = 1e20\n").unwrap();
    let error = config.scheduler_config().unwrap_err();
    assert!(error.contains("unmatched_grace_secs"), "{error}");
}
