//! The remexec worker: runs actions leased by a scheduler.
//!
//! - [`Worker`] attaches to a scheduler over remexec's worker protocol, registers its executors,
//!   sends heartbeats, and runs each lease: it stages the input tree from the CAS through a
//!   hardlinking [`FileCache`], runs exactly the `Command`'s arguments, environment and working
//!   directory under an [`Isolation`] backend, uploads outputs, stdout and stderr, reports an
//!   `ActionResult` with `ExecutedActionMetadata`, and removes the action directory.
//! - [`Isolation`] is the pluggable sandbox; [`ProcessIsolation`] runs each action in its own
//!   process group and kills the whole group when the action ends, times out or is cancelled.
//!
//! It depends on `remexec-core` and `remexec-proto` only; the CAS arrives as
//! `Arc<dyn BlobStore>`, local or remote.
//!
//! ```
//! use remexec_worker::{Exit, Isolation, ProcessIsolation, Spawn};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> remexec_core::Result<()> {
//! let dir = std::env::temp_dir();
//! let spawn = Spawn {
//!     args: vec!["/bin/sh".into(), "-c".into(), "exit 7".into()],
//!     env: vec![],
//!     cwd: dir.clone(),
//!     stdout: dir.join("remexec-doc-stdout"),
//!     stderr: dir.join("remexec-doc-stderr"),
//!     timeout: None,
//! };
//! assert_eq!(ProcessIsolation.run(spawn, CancellationToken::new()).await?, Exit::Exited(7));
//! # Ok(())
//! # }
//! ```

mod file_cache;
mod isolation;
mod outputs;
mod stage;
mod worker;

pub use file_cache::FileCache;
pub use isolation::{Exit, Isolation, ProcessIsolation, Spawn};
pub use outputs::{collect_outputs, upload_directory, upload_file};
pub use stage::stage_inputs;
pub use worker::{ExecutorSpec, Worker, WorkerConfig};
