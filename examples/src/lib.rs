//! Examples of embedding remexec; see the `examples` targets.
