//! [`SchedulerConfig`]: the scheduler's settings, with their defaults and validation.

use std::time::Duration;

use remexec_core::{Error, Message, Result};

use crate::platform::MatchRules;

/// Scheduler settings. Check them with [`validate`](SchedulerConfig::validate);
/// [`Scheduler::new`](crate::Scheduler::new) refuses an invalid configuration.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// This scheduler's name; it appears in operation names (`operations/{name}/{uuid}`).
    pub name: String,
    /// How action platforms are matched against executor properties.
    pub match_rules: MatchRules,
    /// Upper bound on any action's timeout, also used when an action sets none, a negative
    /// one, or one that rounds to zero milliseconds. At least 1 ms.
    pub max_action_timeout: Duration,
    /// How often an action whose executor was lost is re-queued before the client gets
    /// UNAVAILABLE.
    pub max_retries: u32,
    /// How long an action that no executor can match waits for one to appear before it fails
    /// with FAILED_PRECONDITION.
    pub unmatched_grace: Duration,
    /// How long finished operations stay available to WaitExecution and GetOperation (at
    /// most; the count and byte budgets may evict them sooner).
    pub retention: Duration,
    /// Most finished operations remembered; the oldest are forgotten first.
    pub retained_operations: usize,
    /// Most bytes of finished operations remembered (their encoded size); the oldest are
    /// forgotten first. Cache hits cost only their name and action key.
    pub retained_bytes: usize,
    /// Most actions waiting in the queue; beyond it Execute fails with RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// Time a dispatched job may take beyond its action timeout (input fetch, output upload)
    /// before its lease is revoked and the operation fails with DEADLINE_EXCEEDED.
    pub lease_allowance: Duration,
    /// How long the scheduler waits for the pool to return a cancelled or revoked job before it
    /// gives up on it and frees the executor.
    pub cancel_grace: Duration,
    /// Most bytes of a Command's arguments and environment (names, values and one separator
    /// each); a larger Command gets INVALID_ARGUMENT at Execute.
    pub max_command_size: usize,
    /// Largest input tree accepted at Execute: depth and entries once laid out.
    pub tree_limits: remexec_core::merkle::TreeLimits,
    /// The public base URL of the status page (`http://host:port`). A failed action's
    /// `ExecuteResponse.message` links to its page there; without it, the message names the
    /// kept response's digest.
    pub status_url: Option<String>,
    /// Instance names served by name from the start ([`INSTANCE_PROPERTY`]): their actions wait
    /// for executors that serve them even before any has registered, rather than run on
    /// others. The scheduler adds every instance name an executor registers with.
    ///
    /// [`INSTANCE_PROPERTY`]: crate::INSTANCE_PROPERTY
    pub served_instances: Vec<String>,
    /// Most action shapes whose memory learned sizing remembers (the least recently used go
    /// first); 0 turns learned sizing off. See `docs/CONFIG.md`, "Learned sizing".
    pub sizing_history: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            name: "s0".into(),
            match_rules: MatchRules::default(),
            max_action_timeout: Duration::from_secs(3600),
            max_retries: 3,
            unmatched_grace: Duration::from_secs(30),
            retention: Duration::from_secs(600),
            retained_operations: 10_000,
            retained_bytes: 64 * 1024 * 1024,
            max_queued: 100_000,
            lease_allowance: Duration::from_secs(600),
            cancel_grace: Duration::from_secs(60),
            max_command_size: remexec_core::merkle::DEFAULT_MAX_COMMAND_SIZE,
            tree_limits: remexec_core::merkle::TreeLimits::default(),
            status_url: None,
            served_instances: Vec::new(),
            sizing_history: 10_000,
        }
    }
}

impl SchedulerConfig {
    /// Checks the settings; `InvalidArgument` naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &str, why: &str| Err(Error::invalid(format!("SchedulerConfig.{field} {why}")));
        if self.name.is_empty() || self.name.contains('/') {
            return bad("name", "must be non-empty and hold no '/'");
        }
        if self.max_action_timeout < Duration::from_millis(1) {
            return bad(
                "max_action_timeout",
                "must be at least 1 ms: timeouts cannot be switched off",
            );
        }
        if self.max_queued == 0 {
            return bad("max_queued", "must be at least 1");
        }
        Ok(())
    }
}

/// `[scheduler]`: the scheduler as an operator describes it, in seconds and property names;
/// [`to_config`](SchedulerOptions::to_config) makes the [`SchedulerConfig`] it says.
#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerOptions {
    /// Name used in operation names.
    pub name: String,
    /// Upper bound on an action's timeout, in seconds (also the timeout of actions that set none).
    #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
    pub max_action_timeout_secs: u64,
    /// How often an action is re-queued after losing its worker before the client gets UNAVAILABLE.
    pub max_retries: u32,
    /// Seconds an action that no executor can match waits for one to register.
    #[serde(deserialize_with = "remexec_core::durations::seconds")]
    pub unmatched_grace_secs: f64,
    /// Platform properties matched as "at least" (numeric); others match exactly.
    pub at_least: Vec<String>,
    /// Platform properties that never constrain matching.
    pub ignore: Vec<String>,
    /// Most actions waiting in the queue; beyond it Execute gets RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// Seconds a lease may run beyond its action's timeout (input fetch, output upload) before
    /// it is revoked with DEADLINE_EXCEEDED.
    #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
    pub lease_allowance_secs: u64,
    /// Most finished operations kept for WaitExecution and GetOperation.
    pub retained_operations: usize,
    /// Most action shapes learned sizing remembers; 0 turns it off.
    pub sizing_history: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        let defaults = SchedulerConfig::default();
        Self {
            name: defaults.name,
            max_action_timeout_secs: defaults.max_action_timeout.as_secs(),
            max_retries: defaults.max_retries,
            unmatched_grace_secs: defaults.unmatched_grace.as_secs_f64(),
            at_least: crate::platform::DEFAULT_AT_LEAST
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ignore: Vec::new(),
            max_queued: defaults.max_queued,
            lease_allowance_secs: defaults.lease_allowance.as_secs(),
            retained_operations: defaults.retained_operations,
            sizing_history: defaults.sizing_history,
        }
    }
}

impl SchedulerOptions {
    /// The configuration these options say; `InvalidArgument` for a zero timeout, a negative
    /// or unrepresentable grace, or what [`SchedulerConfig::validate`] refuses.
    pub fn to_config(&self) -> Result<SchedulerConfig> {
        use crate::platform::{MatchRule, MatchRules};
        let mut rules = MatchRules::exact();
        for name in &self.at_least {
            rules = rules.with(name.clone(), MatchRule::AtLeast);
        }
        for name in &self.ignore {
            rules = rules.with(name.clone(), MatchRule::Ignore);
        }
        if self.max_action_timeout_secs == 0 {
            return Err(Error::invalid(
                "scheduler.max_action_timeout_secs must be at least 1: timeouts cannot be switched off",
            ));
        }
        if !self.unmatched_grace_secs.is_finite() || self.unmatched_grace_secs < 0.0 {
            return Err(Error::invalid(
                "scheduler.unmatched_grace_secs must be a non-negative number",
            ));
        }
        let unmatched_grace =
            Duration::try_from_secs_f64(self.unmatched_grace_secs).map_err(|e| {
                let why = Message::caused_by("scheduler.unmatched_grace_secs", e);
                Error::InvalidArgument(why)
            })?;
        let config = SchedulerConfig {
            name: self.name.clone(),
            match_rules: rules,
            max_action_timeout: Duration::from_secs(self.max_action_timeout_secs),
            max_retries: self.max_retries,
            unmatched_grace,
            max_queued: self.max_queued,
            lease_allowance: Duration::from_secs(self.lease_allowance_secs),
            retained_operations: self.retained_operations,
            sizing_history: self.sizing_history,
            ..SchedulerConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}
