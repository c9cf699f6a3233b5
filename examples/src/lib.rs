//! What the examples share: a client that runs one command through a REAPI server, as Bazel
//! would (upload the Action and Command, Execute, read stdout).
//!
//! ```no_run
//! # async fn run() -> remexec_core::Result<()> {
//! let (exit, stdout) = remexec_examples::execute("grpc://127.0.0.1:8980", &["echo", "hi"], &[]).await?;
//! # Ok(())
//! # }
//! ```

use remexec_cas::GrpcStore;
use remexec_core::client::{self, ActionBuilder, FollowOptions};
use remexec_core::reapi::{Directory, ExecuteRequest};
use remexec_core::{BlobStoreExt, Digest, DigestFunction, Result, merkle::encode_message};

/// Runs `args` (with `PATH=/usr/bin:/bin` and the platform `properties`) on the server at `url`
/// with an empty input root; returns the exit code and stdout.
pub async fn execute(
    url: &str,
    args: &[&str],
    properties: &[(&str, &str)],
) -> Result<(i32, String)> {
    let channel = client::connect(url).await?;
    let store = GrpcStore::new(channel.clone());
    let f = DigestFunction::Sha256;
    let (root, root_bytes) = encode_message(f, &Directory::default());
    store.put_bytes("", root, root_bytes).await?;
    let mut action = ActionBuilder::new(args.iter().copied()).env("PATH", "/usr/bin:/bin");
    for &(name, value) in properties {
        action = action.property(name, value);
    }
    let action = action.build(f, root);
    action.upload(&store, "").await?;
    let request = ExecuteRequest {
        action_digest: Some(action.action_digest.to_proto()),
        ..Default::default()
    };
    let response = client::execute(channel, request, &FollowOptions::default(), |_, _| {}).await?;
    client::status_result(response.status.as_ref())?;
    let result = response.result.unwrap_or_default();
    let mut stdout = result.stdout_raw.to_vec();
    if let Some(d) = &result.stdout_digest {
        let digest = Digest::from_proto(f, d)?;
        stdout = store
            .get_bytes("", digest, 1 << 20)
            .await?
            .unwrap_or_default()
            .to_vec();
    }
    Ok((
        result.exit_code,
        String::from_utf8_lossy(&stdout).into_owned(),
    ))
}
