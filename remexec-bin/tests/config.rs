//! The config file and the settings mapped from it: defaults, overrides, refusals, and the
//! properties a group's executors advertise.

#![allow(clippy::unwrap_used)]

use bytesize::ByteSize;
use remexec_bin::config::*;

#[test]
fn file_overrides_defaults_and_rejects_unknown_keys() {
    let c =
        Config::from_toml("listen = \"127.0.0.1:9000\"\n[cas]\ndisk_budget = \"2 GiB\"\n").unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.cas.disk_budget, ByteSize::gib(2));
    assert!(c.cas.fsync);
    assert_eq!(c.action_cache, ActionCacheConfig::default());
    let err = Config::from_toml("[cas]\ndisk_budgett = 1\n").unwrap_err();
    assert!(err.contains("disk_budgett"), "{err}");
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn object_store_options_come_from_the_scheme_s_environment_then_the_file() {
    let c = Config::from_toml(
        "[external]\nurl = \"s3://b/p\"\n[external.options]\nregion = \"file-region\"\n",
    )
    .unwrap();
    let vars = env(&[
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
        ("AWS_SESSION_TOKEN", "tok"),
        ("AWS_REGION", "env-region"),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ("GOOGLE_SERVICE_ACCOUNT", "/key.json"),
        ("HOME", "/root"),
    ]);
    let options = c.external.object_store_options(vars.clone());
    let expected = [
        ("access_key_id", "id"),
        ("allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
        ("endpoint", "http://127.0.0.1:9000"),
        ("region", "file-region"),
        ("secret_access_key", "s3cr3t"),
        ("token", "tok"),
    ];
    let got: Vec<_> = options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);
    // Other schemes take their own prefix only; file:// takes none.
    let gcs = ExternalSection {
        url: "gs://b".into(),
        ..Default::default()
    };
    let got = gcs.object_store_options(vars.clone());
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [(
            "google_service_account".to_string(),
            "/key.json".to_string()
        )]
    );
    let file = ExternalSection {
        url: "file:///tmp/x".into(),
        ..Default::default()
    };
    assert!(file.object_store_options(vars).is_empty());
    // AWS_DEFAULT_REGION counts only without AWS_REGION.
    let s3 = ExternalSection {
        url: "s3://b".into(),
        ..Default::default()
    };
    let got = s3.object_store_options(env(&[("AWS_DEFAULT_REGION", "d")]));
    assert_eq!(got.get("region").map(String::as_str), Some("d"));
    let got = s3.object_store_options(env(&[("AWS_DEFAULT_REGION", "d"), ("AWS_REGION", "r")]));
    assert_eq!(got.get("region").map(String::as_str), Some("r"));
}

#[test]
fn external_urls_are_classified_and_secrets_stay_out_of_debug() {
    let kind = |url: &str| {
        ExternalSection {
            url: url.into(),
            ..Default::default()
        }
        .kind()
    };
    for url in ["s3://b/p", "gs://b", "az://c/p", "file:///x", "memory://"] {
        assert_eq!(kind(url), Ok(ExternalKind::ObjectStore), "{url}");
    }
    for url in ["grpc://h:1", "grpcs://h:443"] {
        assert_eq!(kind(url), Ok(ExternalKind::Grpc), "{url}");
    }
    for url in ["ftp://h/x", "bucket/prefix", "http://h"] {
        assert!(kind(url).is_err(), "{url}");
    }
    let c = Config::from_toml(
        "[external]\nurl = \"grpcs://user:hunter2@h:1/x\"\n[external.options]\nsecret_access_key = \"s3cr3t\"\n",
    )
    .unwrap();
    let debug = format!("{c:?}");
    assert!(debug.contains("secret_access_key"), "{debug}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("hunter2"),
        "{debug}"
    );
    assert_eq!(
        redact_url("grpcs://user:hunter2@h:1/x"),
        "grpcs://***@h:1/x"
    );
    assert_eq!(redact_url("s3://bucket/a@b"), "s3://bucket/a@b");
    let err = Config::from_toml("[external]\nurll = \"x\"\n").unwrap_err();
    assert!(err.contains("urll"), "{err}");
}

use remexec_bin::settings::executor_properties;

/// A chrooted group takes any `unixUID` and `unixGID` (BuildStream's) and names the
/// instances it serves; another group offers neither.
#[test]
fn chrooted_groups_take_any_uid_and_name_their_instances() {
    let config = Config::default();
    let chrooted = GroupSection {
        name: "bst".into(),
        isolation: IsolationKind::Namespaces,
        chroot_into_input_root: true,
        instance_names: vec!["buildstream".into()],
        ..GroupSection::default()
    };
    let props = executor_properties(&config, &chrooted);
    for (name, value) in [
        ("unixUID", "*"),
        ("unixGID", "*"),
        (remexec_scheduler::INSTANCE_PROPERTY, "buildstream"),
        ("ISA", remexec_worker::host_isa()),
    ] {
        assert!(
            props.iter().any(|(n, v)| n == name && v == value),
            "{name}={value} not in {props:?}"
        );
    }
    let plain = executor_properties(&config, &GroupSection::default());
    let named = |n: &str| plain.iter().any(|(p, _)| p == n);
    assert!(!named("unixUID") && !named(remexec_scheduler::INSTANCE_PROPERTY));
}
