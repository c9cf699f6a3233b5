//! [`ActionCache`](remexec_core::ActionCache) backends and wrappers, one per module.

pub mod completeness;
pub mod disk;
pub mod grpc;
pub mod memory;
pub mod object;
pub mod tiered;
