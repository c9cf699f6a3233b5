//! Platform matching: does an executor satisfy an action's `Platform`?
//!
//! Each requested property `name=value` must be satisfied by the executor:
//! - **Exact** (the default): the executor advertises `name` with exactly `value` (an executor
//!   may advertise several values for one name, e.g. several container images).
//! - **AtLeast**: numeric; the executor advertises `name` with a number `>=` the requested one
//!   (cpu-count, memory). Non-numeric requests never match.
//! - **Ignore**: the property is a hint for the worker and never constrains matching.
//!
//! Which rule applies to which property is configurable ([`MatchRules`]).
//!
//! One property is the scheduler's own: [`INSTANCE_PROPERTY`]. An executor that offers it runs
//! only actions of the instance names it lists, and the scheduler, not the client, puts it in an
//! action's requirements.

use std::collections::HashMap;

/// A name/value property, of an executor or of an action's platform.
pub use remexec_core::platform::Property;

/// How one property is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchRule {
    /// Equal strings; an executor that offers `*` accepts any value (a Docker executor offers
    /// `container-image=*`).
    Exact,
    /// The executor's number is at least the requested number.
    AtLeast,
    /// Never constrains matching.
    Ignore,
}

/// The rule for each property name; unlisted names use `Exact`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchRules {
    rules: HashMap<String, MatchRule>,
}

pub use remexec_core::platform::INSTANCE_PROPERTY;

/// Property names matched as "at least" by default.
pub const DEFAULT_AT_LEAST: [&str; 3] = ["cpu-count", "memory-mb", "disk-mb"];

impl Default for MatchRules {
    fn default() -> Self {
        Self {
            rules: DEFAULT_AT_LEAST
                .iter()
                .map(|n| (n.to_string(), MatchRule::AtLeast))
                .collect(),
        }
    }
}

impl MatchRules {
    /// Rules with nothing but `Exact`.
    pub fn exact() -> Self {
        Self {
            rules: HashMap::new(),
        }
    }

    /// Sets the rule for one property name.
    pub fn with(mut self, name: impl Into<String>, rule: MatchRule) -> Self {
        self.rules.insert(name.into(), rule);
        self
    }

    /// The rule for `name`.
    pub fn rule(&self, name: &str) -> MatchRule {
        self.rules.get(name).copied().unwrap_or(MatchRule::Exact)
    }

    /// Requested properties the executor does not satisfy; empty means it matches.
    pub fn unmatched<'a>(
        &self,
        requested: &'a [Property],
        offered: &[Property],
    ) -> Vec<&'a Property> {
        requested
            .iter()
            .filter(|(name, want)| {
                let values = offered
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str());
                !match self.rule(name) {
                    MatchRule::Ignore => true,
                    MatchRule::Exact => values.into_iter().any(|v| v == want || v == "*"),
                    MatchRule::AtLeast => match want.trim().parse::<f64>() {
                        Ok(want) => values
                            .into_iter()
                            .filter_map(|v| v.trim().parse::<f64>().ok())
                            .any(|have| have >= want),
                        Err(_) => false,
                    },
                }
            })
            .collect()
    }

    /// Whether an executor offering `offered` can run an action requesting `requested`. An
    /// executor that serves named instances ([`INSTANCE_PROPERTY`]) runs only actions that
    /// require one of them.
    pub fn matches(&self, requested: &[Property], offered: &[Property]) -> bool {
        let reserved = |props: &[Property]| props.iter().any(|(n, _)| n == INSTANCE_PROPERTY);
        if reserved(offered) && !reserved(requested) {
            return false;
        }
        self.unmatched(requested, offered).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(list: &[(&str, &str)]) -> Vec<Property> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching_table() {
        let rules = MatchRules::default().with("pool", MatchRule::Ignore);
        let executor = props(&[
            ("OSFamily", "linux"),
            ("cpu-count", "8"),
            ("memory-mb", "16384"),
            ("container-image", "a"),
            ("container-image", "b"),
        ]);
        let wildcard = props(&[("container-image", "*")]);
        assert!(rules.matches(&props(&[("container-image", "docker://x:1")]), &wildcard));
        assert!(!rules.matches(&props(&[("OSFamily", "*")]), &wildcard));
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("OSFamily", "linux")], true),
            (&[("OSFamily", "Linux")], false),
            (&[("OSFamily", "windows")], false),
            (&[("cpu-count", "8")], true),
            (&[("cpu-count", "4")], true),
            (&[("cpu-count", "9")], false),
            (&[("cpu-count", "lots")], false),
            (&[("memory-mb", "16384"), ("cpu-count", "2")], true),
            (&[("memory-mb", "16385")], false),
            (&[("container-image", "b")], true),
            (&[("container-image", "c")], false),
            (&[("gpu", "1")], false),
            (&[("pool", "anything")], true),
            (&[("OSFamily", "linux"), ("gpu", "1")], false),
        ];
        for (requested, expected) in cases {
            let requested = props(requested);
            assert_eq!(
                rules.matches(&requested, &executor),
                *expected,
                "{requested:?}"
            );
        }
        let requested = props(&[("OSFamily", "linux"), ("gpu", "1"), ("cpu-count", "64")]);
        let unmatched: Vec<_> = rules
            .unmatched(&requested, &executor)
            .into_iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(unmatched, vec!["gpu", "cpu-count"]);
        assert!(!MatchRules::exact().matches(&props(&[("cpu-count", "4")]), &executor));
    }
}
