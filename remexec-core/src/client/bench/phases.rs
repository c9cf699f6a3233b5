//! Where an executed action's time goes: the execute workload's breakdown of each operation
//! by the timestamps of its `ExecutedActionMetadata`, as seen from the client's clock.

use std::time::SystemTime;

use hdrhistogram::Histogram;

use crate::reapi::ExecutedActionMetadata;
use crate::timestamps::system_time;

/// The phases, in order: from the client's send to the client's receipt, each the span between
/// two timestamps of the action's metadata (the worker's and the client's clocks are the same
/// machine's on loopback; elsewhere the first and last phases include the clocks' skew).
pub const NAMES: [&str; 8] = [
    "sent → queued",
    "queued → worker start",
    "worker start → staging",
    "input staging",
    "staged → command start",
    "command",
    "output upload",
    "upload → client",
];

/// One phase's figures over a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// What the phase spans ([`NAMES`]).
    pub name: &'static str,
    /// Mean in seconds.
    pub mean_s: f64,
    /// Median in seconds.
    pub p50_s: f64,
    /// 99th percentile in seconds.
    pub p99_s: f64,
}

/// Histograms of each phase.
#[derive(Debug)]
pub(crate) struct Phases {
    hists: Vec<Histogram<u64>>,
}

impl Phases {
    pub(crate) fn new() -> Self {
        let hists = NAMES
            .iter()
            .map(|_| Histogram::new(3).expect("3 significant figures are valid"))
            .collect();
        Self { hists }
    }

    /// Records one action sent at `sent` and answered at `received`; an action whose metadata
    /// lacks a timestamp or runs backwards is left out.
    pub(crate) fn record(
        &mut self,
        sent: SystemTime,
        received: SystemTime,
        m: &ExecutedActionMetadata,
    ) {
        let stamps = [
            &m.queued_timestamp,
            &m.worker_start_timestamp,
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
            &m.execution_start_timestamp,
            &m.execution_completed_timestamp,
            &m.output_upload_completed_timestamp,
        ];
        let mut times = vec![sent];
        for stamp in stamps {
            let Some(t) = stamp.as_ref().and_then(system_time) else {
                return;
            };
            times.push(t);
        }
        times.push(received);
        let spans: Option<Vec<u64>> = times
            .windows(2)
            .map(|w| {
                w[1].duration_since(w[0])
                    .ok()
                    .map(|d| d.as_nanos().max(1) as u64)
            })
            .collect();
        // Clocks of other machines can run behind: such an action is left out.
        let Some(spans) = spans else {
            return;
        };
        for (hist, span) in self.hists.iter_mut().zip(spans) {
            let _ = hist.record(span);
        }
    }

    /// The figures; empty if nothing was recorded.
    pub(crate) fn report(&self) -> Vec<Phase> {
        let s = |nanos: f64| nanos / 1e9;
        self.hists
            .iter()
            .zip(NAMES)
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, name)| Phase {
                name,
                mean_s: s(h.mean()),
                p50_s: s(h.value_at_quantile(0.5) as f64),
                p99_s: s(h.value_at_quantile(0.99) as f64),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamps::timestamp;
    use std::time::Duration;

    #[test]
    fn each_phase_is_the_span_between_its_timestamps() {
        let t0 = SystemTime::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let m = ExecutedActionMetadata {
            queued_timestamp: Some(timestamp(at(1))),
            worker_start_timestamp: Some(timestamp(at(3))),
            input_fetch_start_timestamp: Some(timestamp(at(6))),
            input_fetch_completed_timestamp: Some(timestamp(at(10))),
            execution_start_timestamp: Some(timestamp(at(15))),
            execution_completed_timestamp: Some(timestamp(at(21))),
            output_upload_completed_timestamp: Some(timestamp(at(28))),
            ..Default::default()
        };
        let mut phases = Phases::new();
        phases.record(t0, at(36), &m);
        // Backwards: left out.
        phases.record(at(100), at(36), &m);
        let report = phases.report();
        let ms: Vec<u64> = report
            .iter()
            .map(|p| (p.p50_s * 1000.0).round() as u64)
            .collect();
        assert_eq!(ms, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut missing = m.clone();
        missing.execution_start_timestamp = None;
        let mut phases = Phases::new();
        phases.record(t0, at(36), &missing);
        assert!(phases.report().is_empty());
    }
}
