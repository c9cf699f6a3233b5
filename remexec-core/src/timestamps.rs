//! Protobuf timestamps (as `ExecutedActionMetadata` carries them) to and from `SystemTime`.
//!
//! ```
//! use remexec_core::timestamps::{system_time, timestamp};
//! let now = std::time::SystemTime::now();
//! assert_eq!(system_time(&timestamp(now)), Some(now));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::apis::google::protobuf::Timestamp;

/// A protobuf timestamp as a `SystemTime`, if it is at or after the epoch and well-formed.
pub fn system_time(t: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// `t` as a protobuf timestamp (the epoch for a time before it).
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
