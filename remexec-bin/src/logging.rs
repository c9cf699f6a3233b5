//! Logging: human or JSON lines on stderr, filtered by `REMEXEC_LOG`; an invalid filter is
//! reported, not silently replaced.

use tracing_subscriber::EnvFilter;

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
/// means `info`, with a warning naming the problem as the first line.
pub fn init(format: LogFormat) {
    let (filter, problem) = match std::env::var(FILTER_VAR) {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some((text, e.to_string()))),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some((text, error)) = problem {
        tracing::warn!(filter = %text, %error, "{FILTER_VAR} is not a valid filter; logging at info");
    }
}
