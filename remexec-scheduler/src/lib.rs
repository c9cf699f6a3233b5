//! The remexec scheduler: REAPI Execution and Operations services over an action queue.
//!
//! - [`Scheduler`] owns operations and the queue: it checks the Action Cache, merges identical
//!   cacheable in-flight actions (same instance and action digest; each caller keeps its own
//!   operation), validates that every input is in the CAS (reporting missing blobs as `MISSING`
//!   precondition violations), matches platforms ([`platform`]), dispatches by
//!   `ExecutionPolicy.priority` (lower runs sooner) from a queue indexed by platform, revokes
//!   leases past their deadline, re-queues actions whose executor was lost, caches successful
//!   results, and remembers finished operations within count, byte and age budgets.
//! - [`ExecutorPool`] is the scheduler's view of executors. [`WorkerPool`] implements it for
//!   workers attached over remexec's worker protocol; an embedder can implement it differently,
//!   with [`Cancel`], [`Changes`] and [`ChangeNotifier`] and no tokio channel types.
//!   `testing` (feature `testing`) is the conformance suite every pool should pass.
//! - [`ExecutionServices`] mounts the gRPC services, [`ExecutionService`] and
//!   [`OperationsService`]; [`execution_capabilities`] is what Capabilities should advertise.
//!
//! - [`node::SchedulerNode`] assembles all of it, with the storage services it is given, on
//!   the port stack of `remexec_core::server`; [`pages`] are its admin port's pages: the
//!   status page ([`status`]), actions ([`action_page`]) and, with [`events`], the Build Event
//!   Service's invocations.
//!
//! It depends on `remexec-core` and `remexec-proto` only, never on `remexec-cas` or
//! `remexec-worker`: stores arrive as `Arc<dyn BlobStore>` and `Arc<dyn ActionCache>`.
//!
//! ```
//! use remexec_scheduler::platform::MatchRules;
//!
//! let rules = MatchRules::default(); // cpu-count, memory-mb and disk-mb are "at least"
//! let executor = vec![("OSFamily".to_string(), "linux".to_string()), ("cpu-count".to_string(), "8".to_string())];
//! assert!(rules.matches(&[("cpu-count".into(), "4".into())], &executor));
//! assert!(!rules.matches(&[("OSFamily".into(), "windows".into())], &executor));
//! ```

pub mod action_page;
pub mod config;
pub mod events;
pub mod html;
mod inputs;
pub mod node;
pub mod observe;
mod operations;
pub mod pages;
pub mod platform;
mod pool;
mod queue;
pub mod routing;
mod scheduler;
mod service;
mod sizing;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
mod worker_pool;

pub use config::SchedulerConfig;
pub use observe::{ActionRecord, ExecutorStatus, QueuedPlatform, RunningAction, SchedulerStatus};
pub use platform::INSTANCE_PROPERTY;
pub use pool::{Cancel, ChangeNotifier, Changes, ExecutorInfo, ExecutorPool, Job, JobOutcome};
#[doc(hidden)]
pub use queue::DispatchBench;
pub use scheduler::Scheduler;
pub use service::{ExecutionService, ExecutionServices, OperationsService, execution_capabilities};
pub use worker_pool::{MAX_WORKER_MESSAGE, WorkerPool};
