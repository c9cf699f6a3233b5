//! Plugging your own `Isolation` into an embedded remexec server's worker.
//!
//! Run with `cargo run -p remexec-examples --example custom_isolation`. The isolation here,
//! `Niced`, wraps the process backend and runs every command under `nice -n 10`, so that
//! actions yield the CPU to the rest of the machine: any wrapper (a container runtime, a
//! sandbox tool, a VM) plugs in the same way. `ServerBuilder::isolation` hands it to the local
//! worker; the example runs an action that prints its own niceness and prints the result.
//!
//! Its tests (`cargo test -p remexec-examples --example custom_isolation`) run remexec's
//! `Isolation` conformance suite on it, as every custom isolation should.

use std::sync::Arc;

use async_trait::async_trait;
use remexec_bin::{config::Config, server::ServerBuilder};
use remexec_cas::{MemoryActionCache, MemoryStore};
use remexec_core::client::{self, ActionBuilder, FollowOptions};
use remexec_core::reapi::{Directory, ExecuteRequest};
use remexec_core::{BlobStoreExt, DigestFunction, Result, merkle::encode_message};
use remexec_worker::{Exit, Isolation, ProcessIsolation, Spawn};
use tokio_util::sync::CancellationToken;

/// Runs every command under `nice -n 10`, through another isolation.
#[derive(Debug)]
struct Niced(ProcessIsolation);

#[async_trait]
impl Isolation for Niced {
    async fn run(&self, mut spawn: Spawn, cancel: CancellationToken) -> Result<Exit> {
        if spawn.args.is_empty() {
            return Err(remexec_core::Error::invalid("empty command"));
        }
        // `nice` looks the program up in the action's PATH, as the contract asks; a missing
        // program must stay an error, not nice's exit code 127.
        let path = spawn
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let dirs = path.unwrap_or_else(|| "/usr/bin:/bin".into());
        let program = &spawn.args[0];
        let found = if program.contains('/') {
            spawn.cwd.join(program).is_file()
        } else {
            dirs.split(':')
                .any(|d| spawn.cwd.join(d).join(program).is_file())
        };
        if !found {
            return Err(remexec_core::Error::FailedPrecondition(format!(
                "cannot start {program:?}: no such executable file"
            )));
        }
        let mut args = vec!["/usr/bin/nice".to_string(), "-n".into(), "10".into()];
        args.append(&mut spawn.args);
        spawn.args = args;
        self.0.run(spawn, cancel).await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let config = Config {
        data_dir: std::env::temp_dir().join(format!("remexec-example-{}", std::process::id())),
        ..Default::default()
    };
    let server = ServerBuilder::new(config)
        .listen("127.0.0.1:0".parse().expect("an address"))
        .blob_store(Arc::new(MemoryStore::new(1 << 30)))
        .action_cache(Arc::new(MemoryActionCache::new(64 << 20)))
        .isolation(Arc::new(Niced(ProcessIsolation::default())))
        .bind()
        .await?;
    let url = format!("grpc://{}", server.local_addr()?);
    tokio::spawn(server.serve(futures::future::pending()));
    let channel = client::connect(&url).await?;
    let store = remexec_cas::GrpcStore::new(channel.clone());
    let f = DigestFunction::Sha256;
    let root = encode_message(f, &Directory::default()).0;
    let action = ActionBuilder::new(["sh", "-c", "echo niceness $(nice)"])
        .env("PATH", "/usr/bin:/bin")
        .build(f, root);
    action.upload(&store, "").await?;
    let request = ExecuteRequest {
        action_digest: Some(action.action_digest.to_proto()),
        ..Default::default()
    };
    let response = client::execute(channel, request, &FollowOptions::default(), |_, _| {}).await?;
    let result = response.result.unwrap_or_default();
    let stdout = match result.stdout_digest {
        Some(d) => store
            .get_bytes("", remexec_core::Digest::from_proto(f, &d)?, 1 << 20)
            .await?
            .unwrap_or_default(),
        None => Default::default(),
    };
    print!("{}", String::from_utf8_lossy(&stdout));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_isolation_conformance_suite() {
        remexec_worker::testing::isolation_conformance(&Niced(ProcessIsolation::default())).await;
    }
}
