//! The crate's tests that need a CAS, real actions or several modules at once.

mod execute;
mod leftovers;
mod mem_cas;
mod protocol;
mod staging;
