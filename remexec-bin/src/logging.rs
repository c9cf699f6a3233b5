//! Logging: human or JSON lines on stderr, filtered by `REMEXEC_LOG`; an invalid filter is
//! reported, not silently replaced.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text for people.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The variable that holds the filter.
pub const FILTER_VAR: &str = "REMEXEC_LOG";

/// Installs the global subscriber. An unset `REMEXEC_LOG` means `info`; an invalid one also
/// means `info`, with a warning naming the problem as the first line. With a `tracer`, spans
/// (filtered by [`TRACE_FILTER`](remexec_core::export::TRACE_FILTER), not by `REMEXEC_LOG`) are
/// exported through it too.
pub fn init(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let (filter, problem) = match std::env::var(FILTER_VAR) {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some((text, e.to_string()))),
        },
    };
    // Colour only for a person at a terminal: never in files, pipes or journald.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new(remexec_core::export::TRACE_FILTER))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .init();
    if let Some((text, error)) = problem {
        tracing::warn!(filter = %text, %error, "{FILTER_VAR} is not a valid filter; logging at info");
    }
}
