//! The remexec worker (coming with remote execution).
//!
//! This crate will hold the worker: input staging from the CAS through a hardlinking file cache,
//! running commands under an `Isolation` backend (process, Linux namespaces, Docker), collecting
//! outputs, and the client side of the scheduler/worker protocol. It depends on `remexec-core`
//! only, never on `remexec-cas` or `remexec-scheduler`.
//!
//! ```
//! // Workers address inputs by digest, like every other remexec crate.
//! let empty = remexec_core::DigestFunction::Sha256.empty_digest();
//! assert!(empty.is_empty_blob());
//! ```
