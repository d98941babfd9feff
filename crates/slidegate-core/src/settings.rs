//! What every crate's file section shares: the error that names a setting, the duration grammar, and the `[redis.breaker]` section.
//!
//! Each crate owns the section of the file it is configured by and checks
//! it (`RedisSettings` in slidegate-redis, `PostgresSettings` in
//! slidegate-catalog, the breaker here); the server's `Settings` composes
//! them and validates once. A `*Settings` type is a section as people write
//! it; an `*Options` type is what a constructor takes, already valid.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::breaker::MAX_PROBES;
use crate::{BreakerOptions, FailureMode};

/// A setting that cannot work, named as the file names it (`redis.pool_size`).
/// The problem never repeats a secret (URLs may hold passwords).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {field}: {problem}")]
pub struct InvalidSetting {
    pub field: String,
    pub problem: String,
}

impl InvalidSetting {
    pub fn new(field: impl Into<String>, problem: impl ToString) -> Self {
        Self {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// Longest interval or timeout any setting may be: nothing sensible is
/// longer, and it keeps deadline arithmetic (now + cool-down, 3 × heartbeat
/// interval) far from overflow.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Refuses a zero duration or one above [`MAX_SETTING_DURATION`].
///
/// # Errors
/// Naming `field`.
pub fn check_duration(field: &str, value: Duration) -> Result<(), InvalidSetting> {
    if value.is_zero() || value > MAX_SETTING_DURATION {
        return Err(InvalidSetting::new(
            field,
            "must be longer than 0 and at most 24h",
        ));
    }
    Ok(())
}

/// Reads "250ms", "10s", "1m" into a `Duration` (`#[serde(deserialize_with)]`).
///
/// # Errors
/// Text that is not a duration, with an example of one.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(text.trim()).map_err(|error| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({error}); write e.g. \"250ms\", \"10s\", \"1m\""
        ))
    })
}

/// Reads `closed`, `open` or `local` (`#[serde(deserialize_with)]`).
///
/// # Errors
/// Any other text.
pub fn failure_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<FailureMode, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(serde::de::Error::custom)
}

/// The circuit breaker in front of a shared store (`[redis.breaker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failed checks (errors or timeouts) that open the breaker;
    /// checks that fail together in one stall count once (see `breaker`).
    pub failures: u32,
    /// Share of failed checks, above 0 and at most 1, that also opens it...
    pub failure_ratio: f64,
    /// ...once at least this many checks went to the store...
    pub min_calls: u64,
    /// ...over the last this long (rolling; every failed check counts).
    #[serde(deserialize_with = "duration")]
    pub ratio_window: Duration,
    /// How long an open breaker answers every check by its failure mode without asking the store.
    #[serde(deserialize_with = "duration")]
    pub cool_down: Duration,
    /// Successful probe checks, after the cool-down, that close the breaker.
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let defaults = BreakerOptions::default();
        Self {
            failures: defaults.failures,
            failure_ratio: defaults.failure_ratio,
            min_calls: defaults.min_calls,
            ratio_window: defaults.ratio_window,
            cool_down: defaults.cool_down,
            probes: defaults.probes,
        }
    }
}

impl BreakerSettings {
    /// Checks every field, naming it under `section` (`redis.breaker`).
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(&self, section: &str) -> Result<(), InvalidSetting> {
        let field = |name: &str| format!("{section}.{name}");
        check_duration(&field("ratio_window"), self.ratio_window)?;
        check_duration(&field("cool_down"), self.cool_down)?;
        if self.failures == 0 {
            return Err(InvalidSetting::new(field("failures"), "must be at least 1"));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(InvalidSetting::new(
                field("failure_ratio"),
                format!("must be above 0 and at most 1 (got {})", self.failure_ratio),
            ));
        }
        if self.min_calls == 0 {
            return Err(InvalidSetting::new(
                field("min_calls"),
                "must be at least 1",
            ));
        }
        if !(1..=MAX_PROBES).contains(&self.probes) {
            return Err(InvalidSetting::new(
                field("probes"),
                format!("must be between 1 and {MAX_PROBES}"),
            ));
        }
        Ok(())
    }

    /// The breaker's options (of settings that passed [`BreakerSettings::validate`]),
    /// a probe counting as lost after `probe_timeout`.
    pub fn to_options(&self, probe_timeout: Duration) -> BreakerOptions {
        BreakerOptions {
            failures: self.failures,
            failure_ratio: self.failure_ratio,
            min_calls: self.min_calls,
            ratio_window: self.ratio_window,
            cool_down: self.cool_down,
            probes: self.probes,
            probe_timeout,
        }
    }
}
