//! The action queue, indexed by platform: each distinct set of requirements (a class) has its
//! own priority queue. A dispatch [`pass`](Queue::pass) matches each class against the executors
//! once, then hands out idle executors across classes in global priority order.
//!
//! At equal priority the queue takes turns between invocations (start-time fair queueing):
//! each action gets a tag, one past the larger of the last tag its invocation was given and the
//! tag of the last action dispatched; actions go in tag order. So a build that queues 2,000
//! actions gets tags 1 to 2,000, and one that starts later, after 100 of them went, gets 101,
//! 102... for its own: the two alternate, instead of the second waiting behind the first's
//! 1,900. An invocation alone in the queue goes in arrival order, as before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::platform::{INSTANCE_PROPERTY, MatchRules, Property};
use crate::pool::ExecutorInfo;

/// Queue order: priority (lower first), then the fair-queueing tag, then arrival.
pub(crate) type Position = (i32, u64, u64);

/// The queued actions of one platform.
#[derive(Debug)]
struct Class<T> {
    items: BTreeMap<Position, T>,
    /// Since when no registered executor (idle or busy) matches this class.
    unmatched_since: Option<Instant>,
}

/// What one dispatch pass decided; the queue no longer holds these items.
#[derive(Debug)]
pub(crate) struct Pass<T> {
    /// Items to start, with the index of their executor in the list given to the pass. No
    /// executor appears twice.
    pub(crate) starts: Vec<(T, usize)>,
    /// Items no executor matched for the grace period, with the reason.
    pub(crate) expired: Vec<(T, String)>,
}

/// Queued items by platform class.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    classes: HashMap<Vec<Property>, Class<T>>,
    seq: u64,
    len: usize,
    /// The tag of the last action dispatched: the fair queue's virtual time.
    now: u64,
    /// Each invocation's last tag, while it is ahead of `now` (later ones are forgotten: `now`
    /// stands for them).
    tags: HashMap<String, u64>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            classes: HashMap::new(),
            seq: 0,
            len: 0,
            now: 0,
            tags: HashMap::new(),
        }
    }
}

/// Which invocation an action takes turns as: the client's `tool_invocation_id`, else its
/// `correlated_invocations_id`, else the authenticated `caller`'s name.
pub(crate) fn invocation(metadata: &remexec_core::reapi::RequestMetadata, caller: &str) -> String {
    let id = [
        &metadata.tool_invocation_id,
        &metadata.correlated_invocations_id,
    ]
    .into_iter()
    .find(|id| !id.is_empty());
    match id {
        // Long ids are cut: they are keys, not labels.
        Some(id) => format!("id:{}", id.chars().take(128).collect::<String>()),
        None => format!("caller:{caller}"),
    }
}

/// The canonical form of a platform: sorted, without repeats.
pub(crate) fn canonical(mut requirements: Vec<Property>) -> Vec<Property> {
    requirements.sort();
    requirements.dedup();
    requirements
}

impl<T> Queue<T> {
    /// Items queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Actions queued, by class.
    pub(crate) fn depths(&self) -> Vec<(&[Property], usize)> {
        let mut depths: Vec<_> = self
            .classes
            .iter()
            .map(|(platform, class)| (platform.as_slice(), class.items.len()))
            .collect();
        depths.sort_unstable();
        depths
    }

    /// Queues `item` (with canonical `requirements`) of `invocation` behind its priority peers,
    /// taking turns with other invocations.
    pub(crate) fn push(
        &mut self,
        requirements: &[Property],
        priority: i32,
        invocation: &str,
        item: T,
    ) -> Position {
        self.seq += 1;
        let tag = match self.tags.get_mut(invocation) {
            Some(last) => {
                *last = (*last).max(self.now) + 1;
                *last
            }
            None => {
                self.tags.insert(invocation.to_string(), self.now + 1);
                self.now + 1
            }
        };
        let position = (priority, tag, self.seq);
        let class = self
            .classes
            .entry(requirements.to_vec())
            .or_insert_with(|| Class {
                items: BTreeMap::new(),
                unmatched_since: None,
            });
        class.items.insert(position, item);
        self.len += 1;
        position
    }

    /// Takes a queued item out.
    pub(crate) fn remove(&mut self, requirements: &[Property], position: Position) -> Option<T> {
        let class = self.classes.get_mut(requirements)?;
        let item = class.items.remove(&position)?;
        self.len -= 1;
        if class.items.is_empty() {
            self.classes.remove(requirements);
        }
        Some(item)
    }

    /// How many queued items each of `executors` matches.
    pub(crate) fn matching(&self, executors: &[ExecutorInfo], rules: &MatchRules) -> Vec<usize> {
        executors
            .iter()
            .map(|e| {
                self.classes
                    .iter()
                    .filter(|(requirements, _)| rules.matches(requirements, &e.properties))
                    .map(|(_, class)| class.items.len())
                    .sum()
            })
            .collect()
    }

    /// One dispatch pass: matches every class against `executors` once, expires classes that
    /// neither an executor nor a `potential` one has matched for `grace`, then gives each idle
    /// executor (one not in `busy`) at most one item, taking items in global priority order.
    pub(crate) fn pass(
        &mut self,
        executors: &[ExecutorInfo],
        potential: &[ExecutorInfo],
        busy: &HashSet<String>,
        rules: &MatchRules,
        grace: Duration,
    ) -> Pass<T> {
        let now = Instant::now();
        let idle: Vec<bool> = executors.iter().map(|e| !busy.contains(&e.id)).collect();
        let mut pass = Pass {
            starts: Vec::new(),
            expired: Vec::new(),
        };
        // Per class with an idle match: its items, its idle executors, and a cursor into them.
        let mut candidates = Vec::new();
        let mut heap = BinaryHeap::new();
        for (requirements, class) in &mut self.classes {
            let mut any = false;
            let mut matching = Vec::new();
            for (i, e) in executors.iter().enumerate() {
                if rules.matches(requirements, &e.properties) {
                    any = true;
                    if idle[i] {
                        matching.push(i);
                    }
                }
            }
            any = any
                || potential
                    .iter()
                    .any(|e| rules.matches(requirements, &e.properties));
            if any {
                class.unmatched_since = None;
            } else if now.duration_since(*class.unmatched_since.get_or_insert(now)) >= grace {
                let why = unmatched_message(rules, requirements, executors);
                let items = std::mem::take(&mut class.items);
                pass.expired
                    .extend(items.into_values().map(|item| (item, why.clone())));
                continue;
            }
            if let (false, Some((&first, _))) = (matching.is_empty(), class.items.first_key_value())
            {
                heap.push(Reverse((first, candidates.len())));
                candidates.push((&mut class.items, matching, 0usize));
            }
        }
        let mut taken = vec![false; executors.len()];
        while let Some(Reverse((_, c))) = heap.pop() {
            let (items, matching, cursor) = &mut candidates[c];
            while *cursor < matching.len() && taken[matching[*cursor]] {
                *cursor += 1;
            }
            let Some(&executor) = matching.get(*cursor) else {
                continue; // every executor this class could use is taken
            };
            let Some(((_, tag, _), item)) = items.pop_first() else {
                continue;
            };
            self.now = self.now.max(tag);
            taken[executor] = true;
            pass.starts.push((item, executor));
            if let Some((&next, _)) = items.first_key_value() {
                heap.push(Reverse((next, c)));
            }
        }
        self.len -= pass.starts.len() + pass.expired.len();
        self.classes.retain(|_, class| !class.items.is_empty());
        let now = self.now;
        self.tags.retain(|_, last| *last > now);
        pass
    }
}

/// Why no executor can run an action with `requested` properties.
pub(crate) fn unmatched_message(
    rules: &MatchRules,
    requested: &[Property],
    executors: &[ExecutorInfo],
) -> String {
    if executors.is_empty() {
        return "no executor can run this action: no executors are registered".into();
    }
    // Executors that serve named instances only are no near miss for another instance's action.
    let open: Vec<&ExecutorInfo> = executors
        .iter()
        .filter(|e| {
            !e.properties.iter().any(|(n, _)| n == INSTANCE_PROPERTY)
                || requested.iter().any(|(n, _)| n == INSTANCE_PROPERTY)
        })
        .collect();
    if open.is_empty() {
        return format!(
            "no executor can run this action: the {} executors serve other instance names only",
            executors.len()
        );
    }
    let closest = open
        .iter()
        .map(|e| rules.unmatched(requested, &e.properties))
        .min_by_key(Vec::len)
        .unwrap_or_default();
    let list: Vec<String> = closest.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!(
        "no executor can run this action: unmatched platform properties {} (among {} executors)",
        list.join(", "),
        executors.len()
    )
}

/// A dispatch pass over a synthetic queue, for the benchmark: `queued` actions spread over
/// `classes` platforms, and `executors` executors of which every other one is busy.
#[doc(hidden)]
#[derive(Debug)]
pub struct DispatchBench {
    queue: Queue<u64>,
    requirements: Vec<Vec<Property>>,
    /// The invocations the actions come from, taking turns.
    invocations: Vec<String>,
    executors: Vec<ExecutorInfo>,
    busy: HashSet<String>,
    rules: MatchRules,
}

impl DispatchBench {
    /// Builds the queue and the executors.
    pub fn new(queued: usize, classes: usize, executors: usize) -> Self {
        let requirements: Vec<Vec<Property>> = (0..classes.max(1))
            .map(|c| {
                canonical(vec![
                    ("pool".into(), format!("p{}", c % 12)),
                    ("cpu-count".into(), (1 + c / 12).to_string()),
                ])
            })
            .collect();
        let invocations: Vec<String> = (0..16).map(|i| format!("build-{i}")).collect();
        let mut queue = Queue::default();
        for i in 0..queued {
            let class = &requirements[i % requirements.len()];
            let invocation = &invocations[i % invocations.len()];
            queue.push(class, (i % 7) as i32, invocation, i as u64);
        }
        let executors: Vec<ExecutorInfo> = (0..executors)
            .map(|e| ExecutorInfo {
                id: format!("w{}/{e}", e / 8),
                worker: format!("w{}", e / 8),
                properties: vec![
                    ("OSFamily".into(), "linux".into()),
                    ("pool".into(), format!("p{}", e % 12)),
                    ("cpu-count".into(), (1 + e % 5).to_string()),
                ],
            })
            .collect();
        let busy = executors.iter().step_by(2).map(|e| e.id.clone()).collect();
        Self {
            queue,
            requirements,
            invocations,
            executors,
            busy,
            rules: MatchRules::default(),
        }
    }

    /// One pass; the started items are queued again so that every pass sees the same queue.
    /// Returns how many started.
    pub fn pass(&mut self) -> usize {
        let pass = self.queue.pass(
            &self.executors,
            &[],
            &self.busy,
            &self.rules,
            Duration::from_secs(3600),
        );
        let started = pass.starts.len();
        for (item, _) in pass.starts {
            let class = &self.requirements[item as usize % self.requirements.len()];
            let invocation = &self.invocations[item as usize % self.invocations.len()];
            self.queue.push(class, (item % 7) as i32, invocation, item);
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(id: &str, props: &[(&str, &str)]) -> ExecutorInfo {
        ExecutorInfo {
            id: id.into(),
            worker: "w".into(),
            properties: props
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn classes_share_executors_in_priority_order_and_never_double_book() {
        let linux = canonical(vec![("os".into(), "linux".into())]);
        let any: Vec<Property> = Vec::new();
        let mut queue = Queue::default();
        queue.push(&any, 5, "", "any5");
        queue.push(&linux, 1, "", "linux1");
        queue.push(&any, 0, "", "any0");
        queue.push(&linux, 3, "", "linux3");
        queue.push(&linux, 9, "", "linux9");
        let executors = vec![
            executor("a", &[("os", "linux")]),
            executor("b", &[("os", "mac")]),
            executor("c", &[("os", "linux")]),
            executor("d", &[("os", "linux")]),
        ];
        let busy = HashSet::from(["d".to_string()]);
        let pass = queue.pass(
            &executors,
            &[],
            &busy,
            &MatchRules::default(),
            Duration::ZERO,
        );
        assert!(pass.expired.is_empty());
        let started: Vec<_> = pass.starts.iter().map(|(i, e)| (*i, *e)).collect();
        // any0 takes the first idle executor (a), linux1 the next linux one (c), linux3 finds
        // no idle linux executor left, any5 takes b.
        assert_eq!(started, vec![("any0", 0), ("linux1", 2), ("any5", 1)]);
        assert_eq!(queue.len(), 2);
        let mut executors_used: Vec<usize> = started.iter().map(|(_, e)| *e).collect();
        executors_used.dedup();
        assert_eq!(executors_used.len(), 3);
    }

    #[test]
    fn a_class_nobody_matches_expires_after_the_grace() {
        let gpu = canonical(vec![("gpu".into(), "1".into())]);
        let mut queue = Queue::default();
        queue.push(&gpu, 0, "", 1);
        queue.push(&gpu, 0, "", 2);
        let executors = vec![executor("a", &[])];
        let rules = MatchRules::default();
        let none = HashSet::new();
        let first = queue.pass(&executors, &[], &none, &rules, Duration::from_secs(60));
        assert!(first.starts.is_empty() && first.expired.is_empty());
        // A flexible worker's shape that matches keeps them waiting, and counts them.
        let shape = [executor("w/shape:gpu", &[("gpu", "1")])];
        let waiting = queue.pass(&executors, &shape, &none, &rules, Duration::ZERO);
        assert!(waiting.starts.is_empty() && waiting.expired.is_empty());
        assert_eq!(queue.matching(&shape, &rules), [2]);
        assert_eq!(queue.matching(&executors, &rules), [0]);
        let second = queue.pass(&executors, &[], &none, &rules, Duration::ZERO);
        assert_eq!(second.expired.len(), 2);
        assert!(
            second.expired[0].1.contains("gpu=1"),
            "{}",
            second.expired[0].1
        );
        assert_eq!(queue.len(), 0);
    }

    /// Passes of one executor until every item of `late` has started; how many passes.
    fn passes_until_done(queue: &mut Queue<(char, u32)>, late: char) -> usize {
        let executors = [executor("a", &[])];
        let (rules, none) = (MatchRules::default(), HashSet::new());
        let mut passes = 0;
        loop {
            let pass = queue.pass(&executors, &[], &none, &rules, Duration::ZERO);
            passes += 1;
            let remaining = queue.classes.values().flat_map(|c| c.items.values());
            if !remaining.into_iter().any(|(who, _)| *who == late) {
                return passes;
            }
            assert_eq!(pass.starts.len(), 1);
        }
    }

    #[test]
    fn invocations_take_turns_at_equal_priority_and_priority_still_comes_first() {
        let any: Vec<Property> = Vec::new();
        let mut queue = Queue::default();
        for i in 0..2000 {
            queue.push(&any, 0, "big", ('b', i));
        }
        let executors = [executor("a", &[])];
        let (rules, none) = (MatchRules::default(), HashSet::new());
        for _ in 0..100 {
            queue.pass(&executors, &[], &none, &rules, Duration::ZERO);
        }
        for i in 0..10 {
            queue.push(&any, 0, "small", ('s', i));
        }
        // Alternating: the small build is done in 20 passes, not 1,910.
        assert_eq!(passes_until_done(&mut queue, 's'), 20);
        // In arrival order within an invocation.
        let mut queue = Queue::default();
        for i in 0..3 {
            queue.push(&any, 0, "one", ('o', i));
        }
        let order: Vec<u32> = (0..3)
            .map(|_| {
                queue
                    .pass(&executors, &[], &none, &rules, Duration::ZERO)
                    .starts[0]
                    .0
                    .1
            })
            .collect();
        assert_eq!(order, [0, 1, 2]);
        // A higher priority (a lower number) goes first whatever the turns.
        queue.push(&any, 5, "low", ('l', 0));
        queue.push(&any, -1, "high", ('h', 0));
        let first = queue.pass(&executors, &[], &none, &rules, Duration::ZERO);
        assert_eq!(first.starts[0].0, ('h', 0));
        // Finished invocations are forgotten.
        passes_until_done(&mut queue, 'l');
        assert!(queue.tags.is_empty(), "{:?}", queue.tags);
    }

    #[test]
    fn the_bench_pass_starts_one_job_per_idle_matching_executor() {
        let mut bench = DispatchBench::new(10_000, 36, 500);
        let started = bench.pass();
        assert!(started > 0 && started <= 250, "{started}");
        assert_eq!(bench.queue.len(), 10_000);
    }
}
