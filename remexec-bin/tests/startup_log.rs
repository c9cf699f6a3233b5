//! The startup log of `remexec scheduler` with external storage: it shows the store
//! composition, and never a credential of the external store's URL or options.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use remexec_bin::config::Config;
use remexec_bin::serve::{BoundServer, Role};
use remexec_bin::server::store_specs;

/// A log sink the tests read back.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_startup_log_shows_the_composition_and_never_a_secret() {
    const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let mut cases = vec![
        ("memory://".to_string(), "Object(memory://)"),
        (
            format!("grpc://user:{SECRET}@127.0.0.1:1"),
            "Grpc(grpc://***@127.0.0.1:1)",
        ),
    ];
    if cfg!(feature = "s3") {
        cases.push(("s3://bucket/prefix".into(), "Object(s3://bucket/prefix)"));
    }
    for (url, shown) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.external.url = url.clone();
        if !url.starts_with("grpc") {
            for (key, value) in [
                ("access_key_id", "AKIDEXAMPLE"),
                ("secret_access_key", SECRET),
                ("endpoint", "http://127.0.0.1:1"),
                ("allow_http", "true"),
                ("region", "us-east-1"),
            ] {
                config.external.options.insert(key.into(), value.into());
            }
        }
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        config.listen = "127.0.0.1:0".parse().unwrap();
        let described = format!("{:?}", store_specs(&config, Role::Scheduler).await.unwrap());
        let server = BoundServer::bind(&config, Role::Scheduler).await.unwrap();
        drop(guard);
        drop(server);
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains("assembling the server"))
            .unwrap_or_else(|| panic!("{url}: no startup line in {log:?}"));
        assert!(
            line.contains(&format!("Tiered(Disk({}", dir.path().join("cas").display()))
                && line.contains(&format!("{shown})")),
            "{url}: {line}"
        );
        for text in [&log, &described] {
            assert!(!text.contains(SECRET), "{url}: the secret is shown: {text}");
        }
    }
}
