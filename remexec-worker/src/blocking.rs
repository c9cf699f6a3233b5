//! Running blocking file-system work off the async runtime's threads, and stopping it early
//! when the async side gives up on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use remexec_core::{Error, Result};

pub(crate) use remexec_core::fs::blocking;

/// Tells blocking work that nobody waits for it any more (a deadline passed or the lease was
/// cancelled), so that it stops at its next check instead of running on in the background.
#[derive(Clone, Debug, Default)]
pub(crate) struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// `Cancelled` once the flag is set.
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            return Err(Error::Cancelled("abandoned by the worker".into()));
        }
        Ok(())
    }

    /// A guard that sets the flag when dropped: hold it in the future that waits for the work.
    pub(crate) fn set_on_drop(&self) -> SetOnDrop {
        SetOnDrop(self.clone())
    }
}

/// Sets its [`StopFlag`] when dropped.
#[derive(Debug)]
pub(crate) struct SetOnDrop(StopFlag);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}
