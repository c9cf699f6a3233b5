//! The daemon's config file: `Config::from_toml` on any text.
//!
//! Properties: parsing never panics and is deterministic; a parsed config's derived settings
//! (`check_limits`, `scheduler_config`, `cache_limits`, `tree_limits`) never panic, and when
//! `check_limits` accepts, every count and size is positive and the cache and scheduler see the
//! configured values; the `Debug` form of `[external]` never shows an option's value (they may
//! be credentials), and `redact_url` never shows a URL's password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remexec_bin::config::{Config, redact_url};

fn check(config: &Config) {
    let limits = config.cache_limits();
    let tree = config.tree_limits();
    if config.check_limits().is_ok() {
        let l = &config.limits;
        assert!(l.max_find_missing_digests > 0 && l.max_batch_blobs > 0);
        assert!(tree.max_depth > 0 && tree.max_entries > 0);
        assert!(l.max_concurrent_streams > 0);
        assert_eq!(limits.max_batch_blobs, l.max_batch_blobs);
        assert_eq!(limits.max_blob_size, l.max_blob_size.as_u64());
        assert!(limits.max_message_size > 0);
        if let Ok(scheduler) = config.scheduler_config() {
            assert_eq!(scheduler.tree_limits, tree);
            assert_eq!(scheduler.max_command_size as u64, l.max_command_size.as_u64());
        }
    }
    let external = &config.external;
    let shown = format!("{external:?}");
    let visible = format!(
        "{} {:?} {:?} {:?} {:?}",
        redact_url(&external.url),
        external.upstream_instance,
        external.ca_file,
        external.tls_domain,
        external.options.keys().collect::<Vec<_>>()
    );
    for value in external.options.values() {
        if value.len() >= 8 && !visible.contains(value.as_str()) {
            assert!(!shown.contains(value.as_str()), "{shown}");
        }
    }
    if let Some((_, rest)) = external.url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, host)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
            && password.len() >= 8
            && !host.contains(password)
            && !rest[authority.len()..].contains(password)
        {
            assert!(!redact_url(&external.url).contains(password));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::from_toml(text);
    let second = Config::from_toml(text);
    assert_eq!(first, second);
    if let Ok(config) = first {
        check(&config);
    }
});
