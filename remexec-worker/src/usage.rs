//! Measuring what an action used ([`ActionUsage`]): the report its supervisor writes once every
//! process of the action is gone, the figures of its cgroups, and how the two combine.
//!
//! The supervisor, as process 1 of the action's PID namespace, waits for every process of the
//! action (orphans are reparented to it), so `getrusage(RUSAGE_CHILDREN)` there sums their CPU
//! time and keeps the largest resident set, and its `/proc/self/io` has their I/O added in. It
//! writes them to the file the worker named with [`USAGE`](crate::supervisor::USAGE), as
//! `NAME VALUE` lines. Where the action had cgroups of its own, their CPU time and peak memory
//! replace the supervisor's: they count every process too, and memory as the limit does.

use std::io::Read as _;

use remexec_core::usage::{ActionUsage, Source};

/// The longest report the worker reads.
const MAX_REPORT: u64 = 4096;

/// Bytes read and written through system calls (`/proc/self/io`'s `rchar` and `wchar`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IoCounters {
    read: u64,
    written: u64,
}

/// The number on the first line of `text` that starts with `name` and then `separator`
/// (`rchar: 10` in `/proc/self/io`, `user_usec 10` in a cgroup's `cpu.stat`).
pub(crate) fn field(text: &str, name: &str, separator: char) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(separator))
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// This process's I/O counters, with those of the children it has reaped; `None` if `/proc`
/// does not tell.
pub(crate) fn io_counters() -> Option<IoCounters> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    Some(IoCounters {
        read: field(&text, "rchar", ':')?,
        written: field(&text, "wchar", ':')?,
    })
}

/// The supervisor's report on the children it has reaped: their CPU time and largest resident
/// set, and the I/O counted since `before` (taken before the command started, so that the
/// supervisor's own reading is left out).
pub(crate) fn report(before: Option<IoCounters>) -> String {
    use nix::sys::resource::{UsageWho, getrusage};
    let mut text = String::new();
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_CHILDREN) {
        let micros = |t: nix::sys::time::TimeVal| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0)
        };
        text += &format!(
            "user_us {}\nsystem_us {}\nmaxrss_kib {}\n",
            micros(usage.user_time()),
            micros(usage.system_time()),
            usage.max_rss().max(0)
        );
    }
    if let (Some(before), Some(after)) = (before, io_counters()) {
        text += &format!(
            "rchar {}\nwchar {}\n",
            after.read.saturating_sub(before.read),
            after.written.saturating_sub(before.written)
        );
    }
    text
}

/// The usage a supervisor reported in `text`; `None` if it reported no CPU and memory figures
/// (it could not start the command, say). Unknown lines are ignored.
pub(crate) fn parse_report(text: &str) -> Option<ActionUsage> {
    let field = |name: &str| field(text, name, ' ');
    Some(ActionUsage {
        source: Source::Rusage as i32,
        user_cpu_micros: field("user_us")?,
        system_cpu_micros: field("system_us")?,
        peak_memory_bytes: field("maxrss_kib")?.saturating_mul(1024),
        read_bytes: field("rchar"),
        written_bytes: field("wchar"),
        ..Default::default()
    })
}

/// The report in `file` (at most [`MAX_REPORT`] bytes of it), read through the worker's own
/// handle, never by path: an action of the worker's user could put a FIFO at the path. Blocks.
pub(crate) fn read_report(file: &tempfile::NamedTempFile) -> Option<ActionUsage> {
    let mut text = String::new();
    file.as_file()
        .try_clone()
        .ok()?
        .take(MAX_REPORT)
        .read_to_string(&mut text)
        .ok()?;
    parse_report(&text)
}

/// What an action's cgroups counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CgroupUsage {
    /// User and system CPU time, in microseconds, where a cgroup counts them.
    pub(crate) cpu: Option<(u64, u64)>,
    /// Peak memory in bytes, where a memory cgroup keeps it.
    pub(crate) peak_memory: Option<u64>,
    /// Whether the kernel killed a process for want of memory.
    pub(crate) memory_killed: bool,
}

/// The supervisor's `report` and the cgroups' figures together: the cgroups' CPU time and
/// peak memory where they have them, the supervisor's otherwise, and its I/O.
pub(crate) fn combine(report: Option<ActionUsage>, cgroups: Option<CgroupUsage>) -> ActionUsage {
    let mut usage = report.unwrap_or_default();
    let Some(cgroups) = cgroups else {
        return usage;
    };
    usage.memory_killed = cgroups.memory_killed;
    if let Some((user, system)) = cgroups.cpu {
        usage.user_cpu_micros = user;
        usage.system_cpu_micros = system;
    }
    if let Some(peak) = cgroups.peak_memory {
        usage.peak_memory_bytes = peak;
    }
    // A measure the supervisor did not make is the cgroups' only when they made both.
    let complete = cgroups.cpu.is_some() && cgroups.peak_memory.is_some();
    if complete || (usage.measured() && (cgroups.cpu.is_some() || cgroups.peak_memory.is_some())) {
        usage.source = Source::Cgroup as i32;
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_a_bad_one_is_none() {
        let usage = parse_report(
            "user_us 1500000\nsystem_us 20\nmaxrss_kib 2048\nrchar 10\nwchar 5\nnew 1\n",
        )
        .unwrap();
        assert_eq!(usage.source(), Source::Rusage);
        assert_eq!(
            (usage.user_cpu_micros, usage.system_cpu_micros),
            (1_500_000, 20)
        );
        assert_eq!(usage.peak_memory_bytes, 2 << 20);
        assert_eq!((usage.read_bytes, usage.written_bytes), (Some(10), Some(5)));
        // I/O is optional; CPU and memory are not.
        let no_io = parse_report("user_us 1\nsystem_us 2\nmaxrss_kib 3\n").unwrap();
        assert_eq!(no_io.read_bytes, None);
        assert_eq!(parse_report("user_us 1\nsystem_us 2\n"), None);
        assert_eq!(
            parse_report("user_us -1\nsystem_us 2\nmaxrss_kib 3\n"),
            None
        );
        assert_eq!(parse_report(""), None);
        // The supervisor's own report of its own (reaped) children parses.
        let own = parse_report(&report(io_counters())).unwrap();
        assert!(own.read_bytes.is_some());
    }

    /// Core's mirror of `remexec.usage.v1.ActionUsage` and the message generated from the
    /// `.proto` read each other's bytes field for field.
    #[test]
    fn cores_message_is_the_protos() {
        use prost::Message as _;
        use remexec_proto::usage::v1 as proto;
        let core = ActionUsage {
            source: Source::Cgroup as i32,
            user_cpu_micros: 1,
            system_cpu_micros: 2,
            peak_memory_bytes: 3,
            read_bytes: Some(0),
            written_bytes: Some(5),
            memory_killed: true,
            staging: Some(remexec_core::usage::Staging {
                entries: 6,
                files: 7,
                bytes: 8,
                cache_hits: 9,
                fetched_bytes: 10,
            }),
            memory_retry_from_mb: 11,
            sized_memory_mb: 12,
        };
        let bytes = core.encode_to_vec();
        let generated = proto::ActionUsage::decode(bytes.as_slice()).unwrap();
        assert_eq!(generated.source(), proto::action_usage::Source::Cgroup);
        assert_eq!(
            (generated.user_cpu_micros, generated.system_cpu_micros),
            (1, 2)
        );
        assert_eq!(generated.peak_memory_bytes, 3);
        assert_eq!(
            (generated.read_bytes, generated.written_bytes),
            (Some(0), Some(5))
        );
        assert!(generated.memory_killed);
        let staging = generated.staging.unwrap();
        assert_eq!((staging.entries, staging.files, staging.bytes), (6, 7, 8));
        assert_eq!((staging.cache_hits, staging.fetched_bytes), (9, 10));
        assert_eq!(
            (generated.memory_retry_from_mb, generated.sized_memory_mb),
            (11, 12)
        );
        assert_eq!(generated.encode_to_vec(), bytes);
        assert_eq!(ActionUsage::decode(bytes.as_slice()).unwrap(), core);
    }

    /// The worker reads the report through its own handle: a FIFO an action puts at the path
    /// neither blocks it nor feeds it figures.
    #[test]
    fn a_report_is_read_through_the_workers_handle_whatever_is_at_the_path() {
        let file = crate::isolation::usage_file().unwrap();
        std::fs::write(file.path(), "user_us 1\nsystem_us 2\nmaxrss_kib 3\n").unwrap();
        std::fs::remove_file(file.path()).unwrap();
        nix::unistd::mkfifo(file.path(), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let usage = read_report(&file).unwrap();
        assert_eq!(
            (usage.user_cpu_micros, usage.peak_memory_bytes),
            (1, 3 << 10)
        );
        std::fs::remove_file(file.path()).unwrap();
    }

    #[test]
    fn cgroup_figures_replace_the_supervisors_where_there_are_any() {
        let report = parse_report("user_us 7\nsystem_us 8\nmaxrss_kib 1\nrchar 3\nwchar 4\n");
        let both = CgroupUsage {
            cpu: Some((100, 200)),
            peak_memory: Some(300 << 20),
            memory_killed: true,
        };
        let usage = combine(report, Some(both));
        assert_eq!(usage.source(), Source::Cgroup);
        assert_eq!((usage.user_cpu_micros, usage.system_cpu_micros), (100, 200));
        assert_eq!(usage.peak_memory_bytes, 300 << 20);
        assert_eq!((usage.read_bytes, usage.memory_killed), (Some(3), true));
        // Memory alone from the cgroup: CPU stays the supervisor's.
        let memory = CgroupUsage {
            peak_memory: Some(9),
            ..Default::default()
        };
        let usage = combine(report, Some(memory));
        assert_eq!((usage.user_cpu_micros, usage.peak_memory_bytes), (7, 9));
        // No supervisor, memory alone: not a full measure.
        assert!(!combine(None, Some(memory)).measured());
        assert!(combine(None, Some(both)).measured());
        assert_eq!(combine(report, None), report.unwrap());
        assert_eq!(combine(None, None), ActionUsage::default());
    }
}
