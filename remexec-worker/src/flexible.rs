//! Flexible workers: executor shapes offered one at a time, switched as the queue asks.
//!
//! A machine with 4 cores can be 4 single-core executors or 1 four-core executor, never both at
//! once. A flexible worker declares such partitions as [`Shape`]s (each a set of its executors,
//! sized so that one shape fills the machine) and offers one of them. The scheduler tells it
//! how many queued actions match each shape (`Demand`); [`Offer`] decides when to switch:
//!
//! - when the active shape has nothing queued and another has, or when another shape has had
//!   actions waiting for [`Flexible::max_wait`] and the active one has been offered at least
//!   that long, the worker withdraws the active shape's executors and drains them;
//! - once none of them runs a lease, it offers the next shape.
//!
//! A lease for an executor that is not offered is refused (`UNAVAILABLE`, re-queued by the
//! scheduler), so executors of two shapes never run at once: the worker never promises more
//! than one shape's resources. No shape with waiting actions waits longer than `max_wait` plus
//! the time the running leases of the other take to end.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use remexec_core::{Error, Result};

/// One partition of a flexible worker: executors offered together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Its name, unique within the worker.
    pub name: String,
    /// Ids of the worker's executors that make it up; they should share their properties,
    /// which the first one's stand for in the shape's matching.
    pub executors: Vec<String>,
}

/// How a flexible worker partitions its executors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flexible {
    /// At least two shapes, disjoint; the first is offered at start. Executors in no shape are
    /// always offered.
    pub shapes: Vec<Shape>,
    /// Longest a shape with waiting actions is kept from its turn, once the active shape has
    /// had at least as long (the drain comes on top).
    pub max_wait: Duration,
}

impl Flexible {
    /// `InvalidArgument` unless there are two or more shapes with unique names, each made of
    /// executors in `executors` that belong to no other shape, and `max_wait` is positive.
    pub fn validate(&self, executors: &[String]) -> Result<()> {
        if self.shapes.len() < 2 || self.max_wait.is_zero() {
            return Err(Error::invalid(
                "a flexible worker needs two or more shapes and a positive max_wait",
            ));
        }
        let (mut names, mut used) = (HashSet::new(), HashSet::new());
        for shape in &self.shapes {
            if !names.insert(&shape.name) || shape.executors.is_empty() {
                return Err(Error::invalid(format!(
                    "shape {:?}: shape names must be unique and shapes need executors",
                    shape.name
                )));
            }
            for id in &shape.executors {
                if !executors.contains(id) || !used.insert(id) {
                    return Err(Error::invalid(format!(
                        "shape {:?}: executor {id:?} is not the worker's or is in two shapes",
                        shape.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What a flexible worker offers now, and the switching rule (see the [module](self)).
#[derive(Debug)]
pub struct Offer {
    flexible: Flexible,
    /// Executors in no shape.
    fixed: Vec<String>,
    active: usize,
    /// The shape the worker drains toward; the active shape's executors are withdrawn.
    draining_to: Option<usize>,
    /// Since when the active shape is offered.
    since: Instant,
    /// Whether the active shape has started a lease since it was offered.
    served: bool,
    /// Per shape: queued actions, as last reported.
    queued: Vec<u64>,
    /// Per shape: since when actions wait for it (reset when it stops being active).
    waiting_since: Vec<Option<Instant>>,
}

impl Offer {
    /// The offer of a worker with `executors` (all its ids), starting with the first shape.
    /// `flexible` must [validate](Flexible::validate).
    pub fn new(flexible: Flexible, executors: &[String], now: Instant) -> Self {
        let in_shapes: HashSet<&String> =
            flexible.shapes.iter().flat_map(|s| &s.executors).collect();
        let fixed = executors
            .iter()
            .filter(|e| !in_shapes.contains(e))
            .cloned()
            .collect();
        let n = flexible.shapes.len();
        Self {
            flexible,
            fixed,
            active: 0,
            draining_to: None,
            since: now,
            served: false,
            queued: vec![0; n],
            waiting_since: vec![None; n],
        }
    }

    /// The shapes.
    pub fn shapes(&self) -> &[Shape] {
        &self.flexible.shapes
    }

    /// The active shape's name (while draining, the one being drained).
    pub fn active(&self) -> &str {
        &self.flexible.shapes[self.active].name
    }

    /// The executors offered now.
    pub fn offered(&self) -> Vec<String> {
        let mut offered = self.fixed.clone();
        if self.draining_to.is_none() {
            offered.extend(self.flexible.shapes[self.active].executors.iter().cloned());
        }
        offered
    }

    /// Whether a lease for executor `id` may run now.
    pub fn is_offered(&self, id: &str) -> bool {
        self.fixed.iter().any(|e| e == id)
            || (self.draining_to.is_none()
                && self.flexible.shapes[self.active]
                    .executors
                    .iter()
                    .any(|e| e == id))
    }

    /// Records that a lease started on executor `id`: the active shape has served once it is
    /// one of its executors.
    pub fn started(&mut self, id: &str) {
        if self.flexible.shapes[self.active]
            .executors
            .iter()
            .any(|e| e == id)
        {
            self.served = true;
        }
    }

    /// Records the scheduler's demand: queued actions per shape name (unknown names ignored,
    /// missing ones zero).
    pub fn demand(&mut self, queued: &[(String, u64)], now: Instant) {
        for (i, shape) in self.flexible.shapes.iter().enumerate() {
            let n = queued
                .iter()
                .find(|(name, _)| *name == shape.name)
                .map_or(0, |(_, n)| *n);
            self.queued[i] = n;
            match (n, self.waiting_since[i]) {
                (0, _) => self.waiting_since[i] = None,
                (_, None) => self.waiting_since[i] = Some(now),
                _ => {}
            }
        }
    }

    /// Moves the offer on, given the executors running a lease now; returns the executors to
    /// offer when that changes.
    pub fn step(&mut self, busy: &HashSet<String>, now: Instant) -> Option<Vec<String>> {
        if let Some(next) = self.draining_to {
            if self.queued[next] == 0 && self.queued[self.active] > 0 {
                // Nothing waits for the next shape any more: offer the active one again.
                self.draining_to = None;
                return Some(self.offered());
            }
            let shape = &self.flexible.shapes[self.active];
            if shape.executors.iter().any(|e| busy.contains(e)) {
                return None;
            }
            tracing::info!(from = %shape.name, to = %self.flexible.shapes[next].name, "flexible worker switches shapes");
            self.active = next;
            self.draining_to = None;
            self.since = now;
            self.served = false;
            return Some(self.offered());
        }
        let waited = |i: usize| {
            self.waiting_since[i].map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
        };
        let max_wait = self.flexible.max_wait;
        let active_has_work = self.queued[self.active] > 0;
        let offered_for = now.saturating_duration_since(self.since);
        // A shape just offered keeps its turn until it starts a lease (the demand that brought
        // it may be a pass old) or has had max_wait.
        if !self.served && offered_for < max_wait {
            return None;
        }
        let next = (0..self.flexible.shapes.len())
            .filter(|&i| i != self.active && self.queued[i] > 0)
            .filter(|&i| !active_has_work || (offered_for >= max_wait && waited(i) >= max_wait))
            .max_by_key(|&i| waited(i))?;
        // The withdrawn shape's waiting actions start their wait for its next turn now.
        if self.queued[self.active] > 0 {
            self.waiting_since[self.active] = Some(now);
        }
        self.draining_to = Some(next);
        Some(self.offered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(max_wait: Duration, now: Instant) -> Offer {
        let executors: Vec<String> = ["s0", "s1", "s2", "s3", "big", "always"]
            .map(String::from)
            .to_vec();
        let flexible = Flexible {
            shapes: vec![
                Shape {
                    name: "small".into(),
                    executors: ["s0", "s1", "s2", "s3"].map(String::from).to_vec(),
                },
                Shape {
                    name: "large".into(),
                    executors: vec!["big".into()],
                },
            ],
            max_wait,
        };
        flexible.validate(&executors).unwrap();
        Offer::new(flexible, &executors, now)
    }

    fn demand(small: u64, large: u64) -> Vec<(String, u64)> {
        vec![("small".into(), small), ("large".into(), large)]
    }

    #[test]
    fn an_idle_shape_gives_way_at_once_and_a_busy_one_drains_first() {
        let t0 = Instant::now();
        let mut offer = offer(Duration::from_secs(60), t0);
        assert_eq!(offer.offered(), ["always", "s0", "s1", "s2", "s3"]);
        assert_eq!(offer.step(&HashSet::new(), t0), None, "nothing waits");
        offer.demand(&demand(0, 2), t0);
        assert_eq!(
            offer.step(&HashSet::new(), t0),
            None,
            "small has not had a lease yet"
        );
        offer.started("always");
        assert_eq!(
            offer.step(&HashSet::new(), t0),
            None,
            "a fixed executor serves no shape"
        );
        offer.started("s1");
        let busy = HashSet::from(["s2".to_string()]);
        // Withdrawn at once (nothing small waits), but s2 still runs: no large executor yet.
        assert_eq!(offer.step(&busy, t0), Some(vec!["always".to_string()]));
        assert!(!offer.is_offered("s0") && !offer.is_offered("big") && offer.is_offered("always"));
        assert_eq!(offer.step(&busy, t0), None);
        assert_eq!(
            offer.step(&HashSet::new(), t0),
            Some(vec!["always".to_string(), "big".to_string()])
        );
        assert_eq!(offer.active(), "large");
        assert!(offer.is_offered("big"));
        // Large keeps its turn until it starts a lease, or has had max_wait, even if the
        // demand that brought it turns out stale.
        offer.demand(&demand(3, 0), t0);
        assert_eq!(offer.step(&HashSet::new(), t0), None);
        offer.started("big");
        assert!(offer.step(&HashSet::new(), t0).is_some(), "large is done");
    }

    #[test]
    fn a_drain_whose_target_stops_waiting_is_called_off() {
        let t0 = Instant::now();
        let mut offer = offer(Duration::from_secs(1), t0);
        offer.started("s0");
        offer.demand(&demand(3, 1), t0);
        let busy = HashSet::from(["s0".to_string()]);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(offer.step(&busy, later), Some(vec!["always".to_string()]));
        // The large action went elsewhere while s0 still runs: small is offered again.
        offer.demand(&demand(3, 0), later);
        assert_eq!(
            offer.step(&busy, later),
            Some(
                ["always", "s0", "s1", "s2", "s3"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(offer.active(), "small");
    }

    #[test]
    fn both_shapes_waiting_take_turns_after_max_wait() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        let mut offer = offer(wait, t0);
        let idle = HashSet::new();
        offer.demand(&demand(5, 1), t0);
        assert_eq!(
            offer.step(&idle, t0 + wait / 2),
            None,
            "large waited too little"
        );
        assert!(offer.step(&idle, t0 + wait).is_some(), "large's turn");
        assert!(
            offer.step(&idle, t0 + wait).is_some(),
            "drained: large offered"
        );
        assert_eq!(offer.active(), "large");
        // Small waits again, from the switch: its turn comes after large had max_wait.
        assert_eq!(offer.step(&idle, t0 + wait + wait / 2), None);
        assert!(offer.step(&idle, t0 + wait * 2).is_some(), "small's turn");
        assert!(offer.step(&idle, t0 + wait * 2).is_some());
        assert_eq!(offer.active(), "small");
    }

    proptest::proptest! {
        /// Whatever the demand and however leases come and go, the executors offered or busy
        /// never belong to two shapes, and a lease only starts on an offered executor.
        #[test]
        fn never_two_shapes_at_once(
            events in proptest::collection::vec((0u8..4, 0u64..4, 0u64..3, 0usize..6), 1..200)
        ) {
            let t0 = Instant::now();
            let mut offer = offer(Duration::from_millis(30), t0);
            let all = ["s0", "s1", "s2", "s3", "big", "always"];
            let mut busy = HashSet::new();
            for (i, (kind, small, large, e)) in events.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(10 * i as u64);
                match kind {
                    0 => offer.demand(&demand(small, large), now),
                    1 if offer.is_offered(all[e]) => {
                        busy.insert(all[e].to_string());
                        offer.started(all[e]);
                    }
                    2 => { busy.remove(all[e]); }
                    _ => { offer.step(&busy, now); }
                }
                let live: HashSet<String> = offer.offered().into_iter().chain(busy.iter().cloned()).collect();
                let shapes_live = offer
                    .shapes()
                    .iter()
                    .filter(|s| s.executors.iter().any(|x| live.contains(x)))
                    .count();
                proptest::prop_assert!(shapes_live <= 1, "{live:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let executors: Vec<String> = vec!["a".into(), "b".into()];
        let shape = |name: &str, ids: &[&str]| Shape {
            name: name.into(),
            executors: ids.iter().map(|s| s.to_string()).collect(),
        };
        for shapes in [
            vec![shape("one", &["a"])],
            vec![shape("x", &["a"]), shape("x", &["b"])],
            vec![shape("x", &["a"]), shape("y", &["a"])],
            vec![shape("x", &["a"]), shape("y", &["c"])],
            vec![shape("x", &["a"]), shape("y", &[])],
        ] {
            let flexible = Flexible {
                shapes,
                max_wait: Duration::from_secs(1),
            };
            assert!(flexible.validate(&executors).is_err(), "{flexible:?}");
        }
    }
}
