//! Durations in configuration files: a number of seconds, or a duration with units (`"15m"`,
//! `"1h 30m"`, `"500ms"`), for serde's `deserialize_with`.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Section {
//!     #[serde(deserialize_with = "remexec_core::durations::whole_seconds")]
//!     drain_secs: u64,
//! }
//! let section: Section = toml::from_str("drain_secs = \"2m\"").unwrap();
//! assert_eq!(section.drain_secs, 120);
//! ```

/// A number of seconds, or a duration with units (`"15m"`, `"1h 30m"`, `"500ms"`), as seconds.
pub fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(f64),
        Text(String),
    }
    match <Seconds as serde::Deserialize>::deserialize(d)? {
        Seconds::Number(n) => Ok(n),
        Seconds::Text(text) => humantime::parse_duration(&text)
            .map(|d| d.as_secs_f64())
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}"))),
    }
}

/// Like [`seconds`], for keys that take whole seconds (a fraction is an error).
pub fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = seconds(d)?;
    if secs < 0.0 || secs.fract() != 0.0 || !secs.is_finite() || secs > u64::MAX as f64 {
        return Err(serde::de::Error::custom(format!(
            "{secs} is not a whole, non-negative number of seconds"
        )));
    }
    Ok(secs as u64)
}
