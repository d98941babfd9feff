//! The outcome of one check, as the algorithms compute it and as callers read it.

use std::time::Duration;

use super::policy::FailureMode;

/// What an algorithm answers, in the microseconds it computes in. The Lua
/// scripts reply with exactly these four numbers, so both stores meet here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub remaining: u64,
    /// Time until the key is fully replenished.
    pub reset_after_us: u64,
    /// Time until a check of the same cost would be admitted; 0 when allowed.
    pub retry_after_us: u64,
}

/// The answer to a check. A denial is a normal decision, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Time until every unit admitted for the key has been replenished.
    pub reset_after: Duration,
    /// Time until a check of this cost would be admitted; zero when allowed.
    pub retry_after: Duration,
    /// `Some` when the shared store could not decide and the policy's failure
    /// mode (`open` or `local`) did instead; clients see it marked.
    pub fallback: Option<FailureMode>,
}

impl Decision {
    pub fn from_outcome(outcome: Outcome, limit: u64) -> Self {
        Self {
            allowed: outcome.allowed,
            limit,
            remaining: outcome.remaining.min(limit),
            reset_after: Duration::from_micros(outcome.reset_after_us),
            retry_after: if outcome.allowed {
                Duration::ZERO
            } else {
                Duration::from_micros(outcome.retry_after_us)
            },
            fallback: None,
        }
    }
}
