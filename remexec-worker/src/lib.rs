//! The remexec worker: runs actions leased by a scheduler.
//!
//! - [`Worker`] attaches to a scheduler over remexec's worker protocol (messages up to
//!   [`WorkerConfig::max_message_size`] both ways), registers its executors, sends heartbeats,
//!   and runs each lease: it stages every path of the input tree from the CAS through a
//!   hardlinking [`FileCache`], runs exactly the `Command`'s arguments, environment and working
//!   directory under an [`Isolation`] backend, uploads outputs, stdout and stderr, reports an
//!   `ActionResult` with `ExecutedActionMetadata`, and removes the action directory.
//! - Every phase of a lease is bounded ([`WorkerConfig`]'s `input_fetch_timeout`,
//!   `max_action_timeout`, `output_upload_timeout`), and nothing an action leaves behind can
//!   block the worker: stdout and stderr are unlinked files the worker holds, outputs are never
//!   opened unless they are regular files, symlinks are never followed, and unwritable
//!   leftovers are removed anyway.
//! - File-system work runs on tokio's blocking pool, never on the runtime's threads.
//! - [`Isolation`] is the pluggable sandbox; [`ProcessIsolation`] runs each action in its own
//!   process group and kills the whole group when the action ends, times out or is cancelled.
//!
//! - [`node::WorkerNode`] runs a worker for its schedulers, given or discovered, with its ports
//!   and admin port.
//!
//! It depends on `remexec-core` and `remexec-proto` only; the CAS arrives as
//! `Arc<dyn BlobStore>`, local or remote.
//!
//! ```
//! use std::time::Duration;
//! use remexec_worker::{Exit, Isolation, ProcessIsolation, Spawn};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spawn = Spawn {
//!     args: vec!["/bin/sh".into(), "-c".into(), "exit 7".into()],
//!     env: vec![],
//!     cwd: std::env::temp_dir(),
//!     input_root: std::env::temp_dir(),
//!     platform: vec![],
//!     executor: "0".into(),
//!     stdout: tempfile::tempfile()?,
//!     stderr: tempfile::tempfile()?,
//!     timeout: Some(Duration::from_secs(60)),
//! };
//! let ended = ProcessIsolation::default().run(spawn, CancellationToken::new()).await?;
//! assert_eq!(ended.exit, Exit::Exited(7));
//! # Ok(())
//! # }
//! ```

pub mod ahead;
mod blocking;
pub mod cgroups;
mod config;
#[cfg(feature = "docker")]
pub mod docker;
mod execute;
mod file_cache;
pub mod flexible;
pub mod groups;
mod isolation;
pub mod namespaces;
pub mod node;
mod outputs;
mod spawner;
mod stage;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod usage;
mod worker;

pub use config::{DEFAULT_MAX_MESSAGE_SIZE, ExecutorSpec, WorkerConfig, host_isa};
#[cfg(feature = "docker")]
pub use docker::{DockerIsolation, IMAGE_PROPERTY};
pub use file_cache::FileCache;
pub use isolation::{
    Ahead, Ended, ExecutorGroups, Exit, Isolation, ProcessIsolation, Spawn, SupervisorSetup,
};
pub use namespaces::{NETWORK_PROPERTY, NamespaceIsolation};
pub use outputs::collect_outputs;
pub use stage::stage_inputs;
pub use supervisor::RunAs;
pub use worker::Worker;

/// The entry point of the binary's hidden `supervise` subcommand: with the feature `docker`,
/// `--reap-docker ID` makes it the reaper of a Docker backend ([`docker::reap`]); anything else
/// runs [`supervisor::main`].
pub fn supervise(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    #[cfg(feature = "docker")]
    if let [flag, id] = args
        && flag == docker::REAP
    {
        return docker::reap(&id.to_string_lossy());
    }
    supervisor::main(args)
}
