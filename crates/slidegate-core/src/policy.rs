//! Policies: what is limited, by which algorithm, how much per window — as types that cannot hold invalid values.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest policy name, in bytes. Names appear in Redis keys, metrics labels
/// and headers, so they stay short and plain.
pub const MAX_POLICY_NAME_LEN: usize = 64;
/// Largest limit of any policy. Scripts compute in Lua doubles, which are
/// exact for integers up to 2^53; a billion keeps every product well inside.
pub const MAX_LIMIT: u64 = 1_000_000_000;
/// Largest limit of a `sliding_log` policy: it stores one entry per admitted
/// unit, so memory per key grows with the limit.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 100_000;
pub const MIN_WINDOW: Duration = Duration::from_millis(1);
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a policy definition was refused. The message names the problem and
/// the value; the caller adds which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("name must be 1 to {MAX_POLICY_NAME_LEN} characters of A-Z a-z 0-9 _ - . (got {0:?})")]
    InvalidName(String),
    #[error("unknown algorithm {0:?}; expected one of sliding_log, sliding_window, gcra")]
    UnknownAlgorithm(String),
    #[error("unknown failure mode {0:?}; expected one of closed, open, local")]
    UnknownFailureMode(String),
    #[error("limit must be between 1 and {max} (got {got})")]
    LimitOutOfRange { got: u64, max: u64 },
    #[error(
        "invalid window {0:?}; write it as a number and a unit, e.g. \"250ms\", \"10s\", \"1m\", \"1h\""
    )]
    UnparsableWindow(String),
    #[error("window must be between 1ms and 24h (got {0:?})")]
    WindowOutOfRange(String),
    #[error("window must be a whole number of milliseconds (got {0:?})")]
    WindowNotWholeMillis(String),
    #[error("default cost must be between 0 and the limit {limit} (got {got})")]
    CostOutOfRange { got: u64, limit: u64 },
}

/// 1–64 bytes of `[A-Za-z0-9_.-]`: the shape of policy and tenant names, which
/// appear in Redis keys, metric labels and headers and so must stay plain.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POLICY_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A validated policy name: 1–64 bytes of `[A-Za-z0-9_.-]`. No `:`, `{`, `}`
/// or NUL, so a policy name can never run into the key that follows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName(Arc<str>);

impl PolicyName {
    /// # Errors
    /// [`PolicyError::InvalidName`] when empty, too long or with a character outside the set.
    pub fn parse(name: &str) -> Result<Self, PolicyError> {
        if is_plain_name(name) {
            Ok(Self(name.into()))
        } else {
            Err(PolicyError::InvalidName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rate-limiting algorithms; each has a Lua script and an in-memory twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Exact: never more than `limit` units in any trailing window. Memory grows with the checks admitted in it.
    SlidingLog,
    /// Two fixed-window counters weighted by overlap. O(1) memory, approximate.
    SlidingWindow,
    /// Generic cell rate algorithm: `limit` per window as a steady rate with bursts up to `limit`.
    Gcra,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::Gcra => "gcra",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownAlgorithm(s.to_owned()))
    }
}

/// What a policy's checks get when the shared store cannot decide them
/// (Redis down, slow past its timeout, or its circuit breaker open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse with 503 `limiter_unavailable`: no check is admitted uncounted.
    Closed,
    /// Admit, marked as decided without the shared store: availability over the limit.
    Open,
    /// Decide in process against `limit / live replicas` (rounded down, at least 1).
    Local,
}

impl FailureMode {
    pub const ALL: [FailureMode; 3] = [FailureMode::Closed, FailureMode::Open, FailureMode::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
            FailureMode::Local => "local",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureMode {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownFailureMode(s.to_owned()))
    }
}

/// A window length between 1 ms and 24 h, in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window(Duration);

impl Window {
    /// Parses "250ms", "10s", "1m", "1h", "1h 30m".
    ///
    /// # Errors
    /// When the text is not a duration, is outside 1ms..=24h, or has sub-millisecond parts.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let duration = humantime::parse_duration(text.trim())
            .map_err(|_| PolicyError::UnparsableWindow(text.to_owned()))?;
        Self::try_from(duration).map_err(|error| match error {
            PolicyError::WindowOutOfRange(_) => PolicyError::WindowOutOfRange(text.to_owned()),
            _ => PolicyError::WindowNotWholeMillis(text.to_owned()),
        })
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }

    pub fn as_micros(self) -> u64 {
        self.0.as_micros() as u64
    }
}

impl TryFrom<Duration> for Window {
    type Error = PolicyError;

    fn try_from(duration: Duration) -> Result<Self, Self::Error> {
        let shown = || humantime::format_duration(duration).to_string();
        if duration < MIN_WINDOW || duration > MAX_WINDOW {
            return Err(PolicyError::WindowOutOfRange(shown()));
        }
        if !duration.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(PolicyError::WindowNotWholeMillis(shown()));
        }
        Ok(Self(duration))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// One rate-limiting rule: `limit` units per `window` for each key, by `algorithm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: PolicyName,
    algorithm: Algorithm,
    limit: NonZeroU64,
    window: Window,
    default_cost: u64,
    /// Evaluated and counted, but never denies: operators try a limit on real traffic first.
    shadow: bool,
    failure_mode: FailureMode,
}

impl Policy {
    /// A policy that fails closed; see [`Policy::with_failure_mode`].
    ///
    /// # Errors
    /// When the limit is outside 1..=[`MAX_LIMIT`] (1..=[`MAX_SLIDING_LOG_LIMIT`]
    /// for `sliding_log`) or the default cost exceeds the limit.
    pub fn new(
        name: PolicyName,
        algorithm: Algorithm,
        limit: u64,
        window: Window,
        default_cost: u64,
    ) -> Result<Self, PolicyError> {
        let max = match algorithm {
            Algorithm::SlidingLog => MAX_SLIDING_LOG_LIMIT,
            Algorithm::SlidingWindow | Algorithm::Gcra => MAX_LIMIT,
        };
        let limit = NonZeroU64::new(limit)
            .filter(|limit| limit.get() <= max)
            .ok_or(PolicyError::LimitOutOfRange { got: limit, max })?;
        if default_cost > limit.get() {
            return Err(PolicyError::CostOutOfRange {
                got: default_cost,
                limit: limit.get(),
            });
        }
        Ok(Self {
            name,
            algorithm,
            limit,
            window,
            default_cost,
            shadow: false,
            failure_mode: FailureMode::Closed,
        })
    }

    /// The same policy in shadow mode (`true`): decisions are made and
    /// counted as usual, but a denial is answered as an admission that says
    /// what the decision would have been.
    pub fn with_shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The same policy with another limit (a tenant's override), validated as [`Policy::new`] does.
    ///
    /// # Errors
    /// As [`Policy::new`]: a limit out of range for the algorithm, or below the default cost.
    pub fn with_limit(&self, limit: u64) -> Result<Self, PolicyError> {
        Policy::new(
            self.name.clone(),
            self.algorithm,
            limit,
            self.window,
            self.default_cost,
        )
        .map(|policy| {
            policy
                .with_shadow(self.shadow)
                .with_failure_mode(self.failure_mode)
        })
    }

    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    pub fn with_failure_mode(self, failure_mode: FailureMode) -> Self {
        Self {
            failure_mode,
            ..self
        }
    }

    /// The same policy with a smaller limit (at least 1), for the `local`
    /// failure mode's per-replica share. It keeps the name, so in-process
    /// state carries over when the share changes.
    pub(crate) fn with_local_share(&self, limit: u64) -> Self {
        Self {
            limit: NonZeroU64::new(limit.clamp(1, self.limit.get())).unwrap_or(self.limit),
            ..self.clone()
        }
    }

    pub fn name(&self) -> &PolicyName {
        &self.name
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn limit(&self) -> u64 {
        self.limit.get()
    }
    pub fn window(&self) -> Window {
        self.window
    }
    pub fn default_cost(&self) -> u64 {
        self.default_cost
    }
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }
}

/// The policies in force, looked up by name on every check without allocating.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    by_name: HashMap<Box<str>, Arc<Policy>>,
}

impl PolicySet {
    /// # Errors
    /// Returns the duplicated name when two policies share one.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Result<Self, PolicyName> {
        let mut by_name = HashMap::new();
        for policy in policies {
            let name = policy.name().clone();
            if by_name
                .insert(name.as_str().into(), Arc::new(policy))
                .is_some()
            {
                return Err(name);
            }
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Policies sorted by name, for stable listings.
    pub fn iter_sorted(&self) -> Vec<&Arc<Policy>> {
        let mut policies: Vec<_> = self.by_name.values().collect();
        policies.sort_by(|a, b| a.name().cmp(b.name()));
        policies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_the_units_operators_write() {
        assert_eq!(Window::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(Window::parse("10s").unwrap().as_millis(), 10_000);
        assert_eq!(Window::parse("1m").unwrap().as_millis(), 60_000);
        assert_eq!(Window::parse("1h").unwrap().as_millis(), 3_600_000);
        assert_eq!(Window::parse("24h").unwrap().as_millis(), 86_400_000);
    }

    #[test]
    fn window_refuses_what_it_cannot_honour() {
        assert!(matches!(
            Window::parse("0s"),
            Err(PolicyError::WindowOutOfRange(_))
        ));
        assert!(matches!(
            Window::parse("25h"),
            Err(PolicyError::WindowOutOfRange(_))
        ));
        assert!(matches!(
            Window::parse("1500us"),
            Err(PolicyError::WindowNotWholeMillis(_))
        ));
        assert!(matches!(
            Window::parse("ten seconds"),
            Err(PolicyError::UnparsableWindow(_))
        ));
    }

    #[test]
    fn policy_names_cannot_carry_key_separators() {
        for bad in ["", "a:b", "{api}", "a b", "x\0y", &"n".repeat(65)] {
            assert!(PolicyName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(PolicyName::parse("api.v1_login-2").is_ok());
    }

    #[test]
    fn limits_are_bounded_per_algorithm() {
        let name = PolicyName::parse("p").unwrap();
        let window = Window::parse("1s").unwrap();
        let build = |algorithm, limit| Policy::new(name.clone(), algorithm, limit, window, 1);
        assert!(build(Algorithm::Gcra, 0).is_err());
        assert!(build(Algorithm::SlidingLog, MAX_SLIDING_LOG_LIMIT).is_ok());
        assert!(build(Algorithm::SlidingLog, MAX_SLIDING_LOG_LIMIT + 1).is_err());
        assert!(build(Algorithm::SlidingWindow, MAX_LIMIT).is_ok());
        assert!(build(Algorithm::SlidingWindow, MAX_LIMIT + 1).is_err());
        assert_eq!(
            Policy::new(name.clone(), Algorithm::Gcra, 5, window, 6),
            Err(PolicyError::CostOutOfRange { got: 6, limit: 5 })
        );
    }
}
