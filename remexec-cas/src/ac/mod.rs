//! [`ActionCache`](remexec_core::ActionCache) backends and wrappers, one per module.

pub mod completeness;
pub mod disk;
pub mod memory;
pub mod tiered;
