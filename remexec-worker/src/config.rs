//! [`WorkerConfig`] and [`ExecutorSpec`]: what a worker offers and the limits it enforces.

use std::path::PathBuf;
use std::time::Duration;

use remexec_core::merkle::TreeLimits;
use remexec_core::{Error, Result};

use crate::flexible::Flexible;

/// The default largest worker-protocol message, both ways: 64 MiB, enough for a `Lease`
/// carrying a 16 MiB `Action` and a 16 MiB `Command`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// This machine's instruction set as the REAPI platform lexicon spells its `ISA` values
/// (`x86-64`, `x86-32`, `arm-a64`, `arm-a32`), the property BuildStream and other clients ask
/// for; other architectures by Rust's name for them.
pub fn host_isa() -> &'static str {
    isa_of(std::env::consts::ARCH)
}

fn isa_of(arch: &'static str) -> &'static str {
    match arch {
        "x86_64" => "x86-64",
        "x86" => "x86-32",
        "aarch64" => "arm-a64",
        "arm" => "arm-a32",
        other => other,
    }
}

/// One executor's id and advertised properties.
#[derive(Clone, Debug)]
pub struct ExecutorSpec {
    /// Unique within the worker.
    pub id: String,
    /// Advertised `name=value` properties.
    pub properties: Vec<(String, String)>,
}

/// Worker settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Unique worker name, reported in `ExecutedActionMetadata.worker`.
    pub name: String,
    /// The executors; each runs one action at a time.
    pub executors: Vec<ExecutorSpec>,
    /// Directory for the file cache and action directories.
    pub work_dir: PathBuf,
    /// Byte budget of the input file cache.
    pub cache_budget: u64,
    /// How often to send heartbeats.
    pub heartbeat: Duration,
    /// Longest input fetch (staging) of one action; past it the lease ends `UNAVAILABLE`.
    pub input_fetch_timeout: Duration,
    /// Longest output upload of one action; past it the lease ends `UNAVAILABLE`.
    pub output_upload_timeout: Duration,
    /// Longest run of one command, and the timeout of leases that set none (`timeout_ms` 0).
    pub max_action_timeout: Duration,
    /// Largest worker-protocol message received or sent; a `LeaseResult` larger than this is
    /// replaced by a `RESOURCE_EXHAUSTED` status.
    pub max_message_size: usize,
    /// Limits on an input tree as laid out on disk.
    pub tree_limits: TreeLimits,
    /// Shapes among `executors` offered one at a time ([`crate::flexible`]); `None` offers
    /// every executor always.
    pub flexible: Option<Flexible>,
}

impl WorkerConfig {
    /// `executors` identical executors offering `properties`, with default limits.
    pub fn new(
        name: impl Into<String>,
        work_dir: PathBuf,
        executors: usize,
        properties: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: name.into(),
            executors: (0..executors)
                .map(|i| ExecutorSpec {
                    id: i.to_string(),
                    properties: properties.clone(),
                })
                .collect(),
            work_dir,
            cache_budget: 10 << 30,
            heartbeat: Duration::from_secs(2),
            input_fetch_timeout: Duration::from_secs(600),
            output_upload_timeout: Duration::from_secs(600),
            max_action_timeout: Duration::from_secs(3600),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            tree_limits: TreeLimits::default(),
            flexible: None,
        }
    }

    /// `InvalidArgument` unless every duration and limit is positive.
    pub fn validate(&self) -> Result<()> {
        for (name, d) in [
            ("heartbeat", self.heartbeat),
            ("input_fetch_timeout", self.input_fetch_timeout),
            ("output_upload_timeout", self.output_upload_timeout),
            ("max_action_timeout", self.max_action_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(format!("worker {name} must be positive")));
            }
        }
        if self.max_message_size == 0 {
            return Err(Error::invalid("worker max_message_size must be positive"));
        }
        if let Some(flexible) = &self.flexible {
            let ids: Vec<String> = self.executors.iter().map(|e| e.id.clone()).collect();
            flexible.validate(&ids)?;
        }
        Ok(())
    }

    /// How long a lease asking for `timeout_ms` may run: at most `max_action_timeout`, which is
    /// also the timeout of a lease that asks for none (0). Timeouts cannot be switched off.
    pub fn action_timeout(&self, timeout_ms: u64) -> Duration {
        if timeout_ms == 0 {
            return self.max_action_timeout;
        }
        Duration::from_millis(timeout_ms).min(self.max_action_timeout)
    }
}

#[cfg(test)]
mod isa_tests {
    #[test]
    fn isa_is_spelled_as_the_platform_lexicon_spells_it() {
        assert_eq!(super::isa_of("x86_64"), "x86-64");
        assert_eq!(super::isa_of("aarch64"), "arm-a64");
        assert_eq!(super::isa_of("riscv64"), "riscv64");
    }
}
