//! What each action used: [`ActionUsage`], the message workers put in
//! `ExecutedActionMetadata.auxiliary_metadata`, and its reading and rendering.
//!
//! The message is `remexec.usage.v1.ActionUsage`, defined and documented in remexec-proto's
//! `protos/remexec/usage/v1/usage.proto`; this is the same message (same fields and tags), for
//! the crates that show it (core's `show`, the scheduler's metrics) without depending on
//! remexec-proto. A test in remexec-worker checks that both encode alike.
//!
//! ```
//! use remexec_core::reapi::ExecutedActionMetadata;
//! use remexec_core::usage::{ActionUsage, Source};
//!
//! let usage = ActionUsage {
//!     source: Source::Rusage as i32,
//!     user_cpu_micros: 1_500_000,
//!     peak_memory_bytes: 64 << 20,
//!     ..Default::default()
//! };
//! let mut meta = ExecutedActionMetadata::default();
//! usage.attach(&mut meta);
//! assert_eq!(ActionUsage::of(&meta), Some(usage));
//! ```

use std::fmt::Write as _;

use prost::Message as _;

use crate::apis::google::protobuf::Any;
use crate::reapi::ExecutedActionMetadata;

/// The `Any` type URL of [`ActionUsage`].
pub const TYPE_URL: &str = "type.googleapis.com/remexec.usage.v1.ActionUsage";

/// `remexec.usage.v1.ActionUsage.Source`: where the CPU and memory figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Source {
    /// Not measured: the resource figures are unset.
    Unspecified = 0,
    /// The action's own cgroups.
    Cgroup = 1,
    /// `getrusage(RUSAGE_CHILDREN)` in the action's supervisor.
    Rusage = 2,
}

/// `remexec.usage.v1.ActionUsage`: one action's use of CPU, memory and I/O, and what staging
/// its inputs took. See the `.proto` for each field.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ActionUsage {
    /// Where the CPU and memory figures come from ([`Source`]).
    #[prost(enumeration = "Source", tag = "1")]
    pub source: i32,
    /// CPU time in user mode, microseconds.
    #[prost(uint64, tag = "2")]
    pub user_cpu_micros: u64,
    /// CPU time in the kernel, microseconds.
    #[prost(uint64, tag = "3")]
    pub system_cpu_micros: u64,
    /// Peak memory, bytes.
    #[prost(uint64, tag = "4")]
    pub peak_memory_bytes: u64,
    /// Bytes read through system calls, if measured.
    #[prost(uint64, optional, tag = "5")]
    pub read_bytes: Option<u64>,
    /// Bytes written through system calls, if measured.
    #[prost(uint64, optional, tag = "6")]
    pub written_bytes: Option<u64>,
    /// Whether the kernel killed a process of the action for want of memory.
    #[prost(bool, tag = "7")]
    pub memory_killed: bool,
    /// What staging the input root took.
    #[prost(message, optional, tag = "8")]
    pub staging: Option<Staging>,
    /// Set by the scheduler: the first attempt was killed for want of memory on an executor
    /// of this many MiB, and this is a second attempt's result; 0 if none.
    #[prost(uint64, tag = "9")]
    pub memory_retry_from_mb: u64,
    /// Set by the scheduler: the `memory-mb` it asked of executors, learned from earlier runs
    /// of the action's shape, where more than the action asked; 0 if no more.
    #[prost(uint64, tag = "10")]
    pub sized_memory_mb: u64,
}

/// `remexec.usage.v1.Staging`: staging an action's input root from the CAS.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Staging {
    /// Paths created: directories, files and symlinks.
    #[prost(uint64, tag = "1")]
    pub entries: u64,
    /// Distinct input files (by digest and executable bit).
    #[prost(uint64, tag = "2")]
    pub files: u64,
    /// Their bytes.
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    /// How many of those the worker's file cache already held.
    #[prost(uint64, tag = "4")]
    pub cache_hits: u64,
    /// Bytes fetched from the CAS into the file cache for this action.
    #[prost(uint64, tag = "5")]
    pub fetched_bytes: u64,
}

impl ActionUsage {
    /// Whether the CPU and memory figures were measured.
    pub fn measured(&self) -> bool {
        self.source() != Source::Unspecified
    }

    /// Adds this usage to `meta`'s `auxiliary_metadata`, replacing one already there.
    pub fn attach(&self, meta: &mut ExecutedActionMetadata) {
        meta.auxiliary_metadata.retain(|a| a.type_url != TYPE_URL);
        meta.auxiliary_metadata.push(Any {
            type_url: TYPE_URL.into(),
            value: self.encode_to_vec(),
        });
    }

    /// The usage `meta` carries; `None` if it carries none, or one that does not decode (the
    /// metadata of results other servers made is not trusted to be well formed).
    pub fn of(meta: &ExecutedActionMetadata) -> Option<Self> {
        let any = meta
            .auxiliary_metadata
            .iter()
            .find(|a| a.type_url == TYPE_URL)?;
        Self::decode(any.value.as_slice()).ok()
    }

    /// The usage as `remexec show action` prints it: a `resources` line (if measured) and a
    /// `staging` line (if known), each ending in a newline.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self.measured() {
            let source = match self.source() {
                Source::Cgroup => "cgroup",
                _ => "rusage",
            };
            let secs = |micros: u64| micros as f64 / 1e6;
            let _ = write!(
                out,
                "resources user_cpu {:.3}s system_cpu {:.3}s peak_memory {} ({source})",
                secs(self.user_cpu_micros),
                secs(self.system_cpu_micros),
                crate::human_size(self.peak_memory_bytes),
            );
            if let (Some(read), Some(written)) = (self.read_bytes, self.written_bytes) {
                let _ = write!(
                    out,
                    " read {} written {}",
                    crate::human_size(read),
                    crate::human_size(written)
                );
            }
            if self.memory_killed {
                out += " killed_for_memory";
            }
            out.push('\n');
        }
        if self.sized_memory_mb > 0 || self.memory_retry_from_mb > 0 {
            let _ = write!(out, "sizing memory-mb {}", self.sized_memory_mb);
            if self.memory_retry_from_mb > 0 {
                let _ = write!(
                    out,
                    " retried_after_memory_kill_on {} MiB",
                    self.memory_retry_from_mb
                );
            }
            out.push('\n');
        }
        if let Some(s) = &self.staging {
            let _ = writeln!(
                out,
                "staging entries {} files {} ({}) cache_hits {} fetched {}",
                s.entries,
                s.files,
                crate::human_size(s.bytes),
                s.cache_hits,
                crate::human_size(s.fetched_bytes)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trips_through_the_metadata_and_a_bad_one_reads_as_none() {
        let usage = ActionUsage {
            source: Source::Cgroup as i32,
            user_cpu_micros: 2_000_000,
            system_cpu_micros: 250_000,
            peak_memory_bytes: 600 << 20,
            read_bytes: Some(4096),
            written_bytes: Some(0),
            memory_killed: true,
            staging: Some(Staging {
                entries: 10,
                files: 7,
                bytes: 3 << 20,
                cache_hits: 5,
                fetched_bytes: 1 << 20,
            }),
            memory_retry_from_mb: 256,
            sized_memory_mb: 282,
        };
        let mut meta = ExecutedActionMetadata::default();
        usage.attach(&mut meta);
        usage.attach(&mut meta);
        assert_eq!(meta.auxiliary_metadata.len(), 1);
        assert_eq!(ActionUsage::of(&meta), Some(usage));
        let text = usage.describe();
        assert!(text.contains("user_cpu 2.000s system_cpu 0.250s peak_memory 600.0 MiB (cgroup)"));
        assert!(text.contains("read 4.0 KiB written 0 B killed_for_memory"));
        assert!(text.contains("staging entries 10 files 7 (3.0 MiB) cache_hits 5 fetched 1.0 MiB"));
        assert!(text.contains("sizing memory-mb 282 retried_after_memory_kill_on 256 MiB\n"));
        meta.auxiliary_metadata[0].value = vec![0xff, 0xff, 0xff];
        assert_eq!(ActionUsage::of(&meta), None);
        // Not measured: no resources line, the staging line alone.
        let unmeasured = ActionUsage {
            staging: usage.staging,
            ..Default::default()
        };
        assert!(!unmeasured.describe().contains("resources"));
        assert!(unmeasured.describe().starts_with("staging "));
    }
}
