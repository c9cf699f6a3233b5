//! The remexec scheduler (coming with remote execution).
//!
//! This crate will hold the REAPI Execution and Operations services, the action queue with
//! platform matching and priorities, merging of identical in-flight actions, and the
//! `ExecutorPool` trait through which the scheduler dispatches actions to workers. It depends on
//! `remexec-core` only, never on `remexec-cas` or `remexec-worker`.
//!
//! ```
//! // The scheduler shares its types with the rest of remexec through remexec-core.
//! let digest = remexec_core::DigestFunction::Sha256.digest_of(b"action");
//! assert_eq!(digest.size(), 6);
//! ```
