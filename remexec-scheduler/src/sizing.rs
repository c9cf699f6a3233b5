//! Learned sizing: the memory each *shape* of action needed before, and the executors it should
//! ask for now.
//!
//! An action's shape is its instance name, its Command's digest and its platform: the same
//! command line, environment, outputs and platform, whatever its inputs. So a test or a
//! compile step rebuilt after an edit to its sources is the same shape, while a change of
//! flags makes a new one (as Buildbarn's initial size class analysis keys on the action without
//! its input root). The history is bounded (least recently used shapes go first) and kept in
//! memory, per scheduler.
//!
//! For each shape it keeps the memory the action needs, in MiB: its last measured peak plus a
//! tenth, or one more than the `memory-mb` of an executor that killed it for want of memory,
//! whichever is later. An action whose shape needs more than the `memory-mb` it asks for (none
//! counts as 0) is queued asking for what it needs instead, with every other property as it
//! was, if some executor (registered or that a flexible worker could offer) has that much;
//! else as it asked. An action killed for want of memory is run once more, on an executor with
//! more memory than the one that killed it, if there is one.

use std::num::NonZeroUsize;

use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use remexec_core::reapi::ActionResult;
use remexec_core::usage::ActionUsage;

use crate::operations::Execution;
use crate::platform::{MatchRules, Property};
use crate::pool::ExecutorInfo;

/// The property that says how much memory an executor gives each action, in MiB.
pub(crate) const MEMORY_MB: &str = "memory-mb";

const MIB: u64 = 1 << 20;

/// The executors registered, and those flexible workers could offer.
pub(crate) type There = (std::sync::Arc<[ExecutorInfo]>, Vec<ExecutorInfo>);

/// What the scheduler remembers of each shape's memory.
#[derive(Debug)]
pub(crate) struct Sizing {
    /// Shape to the MiB it needs; `None` when sizing is off.
    history: Option<Mutex<lru::LruCache<String, u64>>>,
}

/// The shape of an action: see the [module documentation](self).
pub(crate) fn shape(instance: &str, command: &remexec_core::Digest, class: &[Property]) -> String {
    let mut key = format!("{instance}\0{command}");
    for (name, value) in class {
        key.push('\0');
        key += name;
        key.push('=');
        key += value;
    }
    key
}

/// The `memory-mb` an executor offers, if it says.
pub(crate) fn memory_mb(properties: &[Property]) -> Option<u64> {
    properties
        .iter()
        .find(|(n, _)| n == MEMORY_MB)
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u64)
}

/// `requirements` asking for `mb` MiB of memory (other properties unchanged), canonical.
fn asking(requirements: &[Property], mb: u64) -> Vec<Property> {
    let mut sized: Vec<Property> = requirements
        .iter()
        .filter(|(n, _)| n != MEMORY_MB)
        .cloned()
        .collect();
    sized.push((MEMORY_MB.to_string(), mb.to_string()));
    crate::queue::canonical(sized)
}

impl Sizing {
    /// A history of at most `shapes` shapes; 0 turns learned sizing off.
    pub(crate) fn new(shapes: usize) -> Self {
        Self {
            history: NonZeroUsize::new(shapes).map(|n| Mutex::new(lru::LruCache::new(n))),
        }
    }

    /// Records what a run of `shape` on an executor offering `executor` used.
    pub(crate) fn record(&self, shape: &str, usage: &ActionUsage, executor: &[Property]) {
        let Some(history) = &self.history else {
            return;
        };
        let need = match (usage.memory_killed, memory_mb(executor)) {
            (true, Some(mb)) => {
                let mut history = history.lock();
                let before = history.get(shape).copied().unwrap_or(0);
                history.put(shape.to_string(), before.max(mb + 1));
                return;
            }
            // Killed where the executor says nothing of its memory: nothing to learn.
            (true, None) => return,
            (false, _) if usage.measured() => {
                (usage.peak_memory_bytes + usage.peak_memory_bytes / 10).div_ceil(MIB)
            }
            (false, _) => return,
        };
        history.lock().put(shape.to_string(), need);
    }

    /// The requirements an action of `shape` asking for `requirements` is queued with, and the
    /// `memory-mb` its history made it ask for (0 if it asks as it did): see the [module
    /// documentation](self). `there` gives the executors registered and those flexible workers
    /// could offer, asked for only when the history has something to say.
    pub(crate) fn sized(
        &self,
        shape: &str,
        requirements: &[Property],
        rules: &MatchRules,
        there: impl FnOnce() -> There,
    ) -> (Vec<Property>, u64) {
        let need = match &self.history {
            Some(history) => history.lock().get(shape).copied(),
            None => None,
        };
        let asked = memory_mb(requirements).unwrap_or(0);
        match need {
            Some(need) if need > asked => {
                let sized = asking(requirements, need);
                let (executors, potential) = there();
                let any = |list: &[ExecutorInfo]| {
                    list.iter().any(|e| rules.matches(&sized, &e.properties))
                };
                match any(&executors) || any(&potential) {
                    true => (sized, need),
                    false => (requirements.to_vec(), 0),
                }
            }
            _ => (requirements.to_vec(), 0),
        }
    }

    /// For an action of `requirements` killed for want of memory on an executor offering
    /// `killed_on`: the requirements of a second attempt, on an executor with more memory,
    /// and that executor's `memory-mb`; `None` if there is none, or sizing is off.
    pub(crate) fn larger(
        &self,
        requirements: &[Property],
        killed_on: &[Property],
        rules: &MatchRules,
        there: impl FnOnce() -> There,
    ) -> Option<(Vec<Property>, u64)> {
        self.history.as_ref()?;
        let more = memory_mb(killed_on)? + 1;
        let sized = asking(requirements, more.max(memory_mb(requirements).unwrap_or(0)));
        let (executors, potential) = there();
        let fits = |e: &&ExecutorInfo| rules.matches(&sized, &e.properties);
        executors.iter().chain(&potential).find(fits)?;
        Some((sized, more))
    }
}

impl Sizing {
    /// Learns what `result`, from `executor`, says of `exec`'s shape. If the action was killed
    /// for want of memory and has not been run again for it yet, moves it to the requirements
    /// of an executor with more memory, if there is one, and returns true: it is to be
    /// re-queued.
    pub(crate) fn learn(
        &self,
        exec: &Execution,
        executor: &ExecutorInfo,
        result: &ActionResult,
        rules: &MatchRules,
        there: impl FnOnce() -> There,
    ) -> bool {
        let meta = result.execution_metadata.as_ref();
        let Some(usage) = meta.and_then(ActionUsage::of) else {
            return false;
        };
        self.record(&exec.shape, &usage, &executor.properties);
        if !usage.memory_killed || result.exit_code == 0 {
            return false;
        }
        let class = exec.shared.lock().class.clone();
        let Some((larger, _)) = self.larger(&class, &executor.properties, rules, there) else {
            return false;
        };
        let killed_on = memory_mb(&executor.properties).unwrap_or(0).max(1);
        // Once only.
        let once = exec.memory_retry_from_mb.compare_exchange(
            0,
            killed_on,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if once.is_err() {
            return false;
        }
        tracing::info!(action = %exec.key.1, executor = %executor.id, killed_on, "killed for want of memory; running it again on a larger executor");
        exec.shared.lock().class = larger;
        true
    }
}

/// Says in `result`'s usage what learned sizing did for `exec`: the memory it asked for, and
/// the executor whose memory kill made the action run again.
pub(crate) fn say(exec: &Execution, result: &mut ActionResult) {
    let mut sized = exec.sized_mb;
    let retried = exec.memory_retry_from_mb.load(Ordering::SeqCst);
    let Some(meta) = result.execution_metadata.as_mut() else {
        return;
    };
    if sized == 0 && retried == 0 {
        return;
    }
    if retried > 0 {
        // The second attempt asked for more than the history did.
        sized = memory_mb(&exec.shared.lock().class).unwrap_or(sized);
    }
    let mut usage = ActionUsage::of(meta).unwrap_or_default();
    usage.sized_memory_mb = sized;
    usage.memory_retry_from_mb = retried;
    usage.attach(meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(id: &str, mb: &str) -> ExecutorInfo {
        ExecutorInfo {
            id: id.into(),
            worker: "w".into(),
            properties: vec![
                ("memory-mb".into(), mb.into()),
                ("os".into(), "linux".into()),
            ],
        }
    }

    fn measured(peak: u64, killed: bool) -> ActionUsage {
        ActionUsage {
            source: remexec_core::usage::Source::Cgroup as i32,
            peak_memory_bytes: peak,
            memory_killed: killed,
            ..Default::default()
        }
    }

    #[test]
    fn a_shape_that_needed_more_asks_for_a_larger_executor_with_the_same_other_properties() {
        let sizing = Sizing::new(10);
        let rules = MatchRules::default();
        let small = executor("small", "256");
        let (large, other) = (executor("large", "1024"), executor("mac", "4096"));
        let other = ExecutorInfo {
            properties: vec![
                ("memory-mb".into(), "4096".into()),
                ("os".into(), "mac".into()),
            ],
            ..other
        };
        let executors = [small.clone(), large.clone(), other];
        let wants = vec![("os".to_string(), "linux".to_string())];
        let shape = shape(
            "",
            &remexec_core::DigestFunction::Sha256.digest_of(b"c"),
            &wants,
        );
        // Nothing known: as asked.
        let (class, mb) = sizing.sized(&shape, &wants, &rules, || {
            (executors.clone().into(), Vec::new())
        });
        assert_eq!((class.clone(), mb), (wants.clone(), 0));
        // Killed on 256 MiB: a second attempt asks for 257, which only `large` has.
        let (retry, more) = sizing
            .larger(&class, &small.properties, &rules, || {
                (executors.clone().into(), Vec::new())
            })
            .unwrap();
        assert_eq!(more, 257);
        assert!(rules.matches(&retry, &large.properties));
        assert!(!rules.matches(&retry, &small.properties));
        assert!(retry.contains(&("os".into(), "linux".into())));
        sizing.record(&shape, &measured(256 << 20, true), &small.properties);
        assert_eq!(
            sizing.sized(&shape, &wants, &rules, || (
                executors.clone().into(),
                Vec::new()
            )),
            (retry.clone(), 257)
        );
        // It then used 600 MiB on `large`: it asks for 660 from now on.
        sizing.record(&shape, &measured(600 << 20, false), &large.properties);
        let (class, mb) = sizing.sized(&shape, &wants, &rules, || {
            (executors.clone().into(), Vec::new())
        });
        assert_eq!(mb, 660);
        assert!(rules.matches(&class, &large.properties));
        // Killed on the largest linux executor: no larger one, no retry.
        assert!(
            sizing
                .larger(&class, &large.properties, &rules, || (
                    executors.clone().into(),
                    Vec::new()
                ))
                .is_none()
        );
        // A need no executor meets: as asked.
        sizing.record(&shape, &measured(2000 << 20, false), &large.properties);
        assert_eq!(
            sizing.sized(&shape, &wants, &rules, || (
                executors.clone().into(),
                Vec::new()
            )),
            (wants.clone(), 0)
        );
        // What the action asks itself is never lowered.
        let asks_more = crate::queue::canonical(vec![
            ("memory-mb".into(), "4000".into()),
            ("os".into(), "linux".into()),
        ]);
        sizing.record(&shape, &measured(1 << 20, false), &large.properties);
        assert_eq!(
            sizing.sized(&shape, &asks_more, &rules, || (
                executors.clone().into(),
                Vec::new()
            )),
            (asks_more.clone(), 0)
        );
    }

    #[test]
    fn the_history_is_bounded_and_off_at_zero() {
        let sizing = Sizing::new(2);
        let rules = MatchRules::default();
        let executors = [executor("large", "1024")];
        let killed = measured(100 << 20, true);
        let small = executor("small", "100");
        for s in ["a", "b", "c"] {
            sizing.record(s, &killed, &small.properties);
        }
        let mb = |s: &str| {
            sizing
                .sized(s, &[], &rules, || (executors.clone().into(), Vec::new()))
                .1
        };
        assert_eq!((mb("a"), mb("b"), mb("c")), (0, 101, 101));
        let off = Sizing::new(0);
        off.record("a", &killed, &small.properties);
        assert_eq!(
            off.sized("a", &[], &rules, || (executors.clone().into(), Vec::new()))
                .1,
            0
        );
        assert!(
            off.larger(&[], &small.properties, &rules, || (
                executors.clone().into(),
                Vec::new()
            ))
            .is_none()
        );
        // Unmeasured runs teach nothing.
        sizing.record("d", &ActionUsage::default(), &small.properties);
        assert_eq!(mb("d"), 0);
    }
}
