//! What a front end answers for a check, as data: shadow policies, several policies on one request, and the rate-limit values clients read.
//!
//! Every front end (HTTP `/v1/check`, forward-auth, later Envoy's gRPC API)
//! must answer alike, so the rules live here once and each front end only
//! spells them in its protocol:
//!
//! - A **shadow** policy never denies: the check is admitted and the answer
//!   says what enforcing the policy would have decided ([`Checked::admitted`],
//!   [`Checked::shadow_decision`]).
//! - **Several policies on one request** ([`AllMustAdmit`]): all must admit
//!   (they are counted all or nothing by [`Limiter::check_all`]); the first
//!   enforced denial, in the request's order, answers. When all admit, the tightest enforced policy answers (fewest
//!   units remaining, then the later reset); a shadow policy answers only
//!   when no enforced one matched, so its would-be denial never tells a
//!   client to back off.
//! - **Rate-limit values** ([`RateLimitValues`]): limit, remaining, and
//!   durations rounded *up* to whole seconds or milliseconds, so a client
//!   that waits what it is told is never early.

use std::ops::ControlFlow;
use std::time::Duration;

#[cfg(doc)]
use crate::Limiter;
use crate::{Checked, FailureMode};

/// `shadow_decision` of a shadow policy that would have admitted the check.
pub const SHADOW_ALLOWED: &str = "allowed";
/// `shadow_decision` of a shadow policy that would have denied the check.
pub const SHADOW_DENIED: &str = "denied";

impl Checked {
    /// Whether the client is admitted: the policy allowed it, or it only observes (shadow).
    pub fn admitted(&self) -> bool {
        self.decision.allowed || self.policy.is_shadow()
    }

    /// For a shadow policy, what enforcing it would have answered
    /// ([`SHADOW_ALLOWED`] or [`SHADOW_DENIED`]); `None` for an enforced policy.
    pub fn shadow_decision(&self) -> Option<&'static str> {
        self.policy.is_shadow().then_some(if self.decision.allowed {
            SHADOW_ALLOWED
        } else {
            SHADOW_DENIED
        })
    }

    /// The values a front end puts in its rate-limit headers and body.
    pub fn rate_limit(&self) -> RateLimitValues<'_> {
        let decision = &self.decision;
        let admitted = self.admitted();
        RateLimitValues {
            policy: self.policy.name().as_str(),
            admitted,
            limit: decision.limit,
            window_secs: ceil_secs(self.policy.window().as_duration()),
            remaining: decision.remaining,
            reset_secs: ceil_secs(decision.reset_after),
            reset_after_ms: ceil_millis(decision.reset_after),
            retry_after_ms: ceil_millis(decision.retry_after),
            // Only an enforced denial tells the client when to come back;
            // "0 seconds" would invite an immediate retry.
            retry_after_secs: (!admitted).then(|| ceil_secs(decision.retry_after).max(1)),
            shadow_decision: self.shadow_decision(),
            fallback: decision.fallback,
        }
    }
}

/// One decision as a client sees it, protocol-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitValues<'a> {
    pub policy: &'a str,
    /// Answer 200 (admitted) or 429.
    pub admitted: bool,
    pub limit: u64,
    /// The policy's window in whole seconds, rounded up.
    pub window_secs: u64,
    pub remaining: u64,
    /// Until every admitted unit is replenished, whole seconds rounded up.
    pub reset_secs: u64,
    pub reset_after_ms: u64,
    /// Until a check of this cost would be admitted; zero when allowed.
    pub retry_after_ms: u64,
    /// `Retry-After`: only on an enforced denial, at least 1.
    pub retry_after_secs: Option<u64>,
    /// As [`Checked::shadow_decision`].
    pub shadow_decision: Option<&'static str>,
    /// The failure mode that decided, when the shared store could not.
    pub fallback: Option<FailureMode>,
}

/// Whole seconds, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Whole milliseconds, rounded up.
fn ceil_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// The answers of several policies to one request, combined as every front end combines them (see the module).
///
/// Feed each policy's answer to [`AllMustAdmit::add`] in order; stop when it
/// breaks with a denial, else take [`AllMustAdmit::answer`].
#[derive(Debug, Default)]
pub struct AllMustAdmit {
    tightest: Option<Checked>,
}

impl AllMustAdmit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one policy's answer: `Break(denial)` when it denies the request
    /// (answer that, check no further policy), else `Continue`.
    pub fn add(&mut self, checked: Checked) -> ControlFlow<Checked> {
        if !checked.admitted() {
            return ControlFlow::Break(checked);
        }
        if self
            .tightest
            .as_ref()
            .is_none_or(|current| is_tighter(&checked, current))
        {
            self.tightest = Some(checked);
        }
        ControlFlow::Continue(())
    }

    /// The answer when every policy admitted: the tightest, or `None` when no policy applied.
    pub fn answer(self) -> Option<Checked> {
        self.tightest
    }
}

/// Enforced before shadow; then fewer units remaining; on a tie, the later reset.
fn is_tighter(candidate: &Checked, current: &Checked) -> bool {
    let rank = |checked: &Checked| {
        (
            checked.policy.is_shadow(),
            checked.decision.remaining,
            std::cmp::Reverse(checked.decision.reset_after),
        )
    };
    rank(candidate) < rank(current)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Algorithm, Decision, Policy, PolicyName, Window};

    fn checked(name: &str, shadow: bool, allowed: bool, remaining: u64, reset_ms: u64) -> Checked {
        let policy = Policy::new(
            PolicyName::parse(name).unwrap(),
            Algorithm::SlidingLog,
            10,
            Window::parse("1m").unwrap(),
            1,
        )
        .unwrap()
        .with_shadow(shadow);
        Checked {
            policy: Arc::new(policy),
            decision: Decision {
                allowed,
                limit: 10,
                remaining,
                reset_after: Duration::from_millis(reset_ms),
                retry_after: if allowed {
                    Duration::ZERO
                } else {
                    Duration::from_micros(1_500_001)
                },
                fallback: None,
            },
        }
    }

    fn names(answer: Option<Checked>) -> Option<String> {
        answer.map(|checked| checked.policy.name().as_str().to_owned())
    }

    #[test]
    fn the_first_enforced_denial_answers_and_stops() {
        let mut all = AllMustAdmit::new();
        assert!(all.add(checked("a", false, true, 5, 100)).is_continue());
        let ControlFlow::Break(denial) = all.add(checked("b", false, false, 0, 100)) else {
            panic!("an enforced denial stops the request");
        };
        assert_eq!(denial.policy.name().as_str(), "b");
        assert!(!denial.admitted());
    }

    #[test]
    fn a_shadow_denial_neither_stops_nor_answers_while_an_enforced_policy_admits() {
        let mut all = AllMustAdmit::new();
        assert!(
            all.add(checked("shadow", true, false, 0, 100))
                .is_continue()
        );
        assert!(
            all.add(checked("enforced", false, true, 7, 100))
                .is_continue()
        );
        assert_eq!(names(all.answer()), Some("enforced".into()));

        let mut only_shadow = AllMustAdmit::new();
        assert!(
            only_shadow
                .add(checked("shadow", true, false, 0, 100))
                .is_continue()
        );
        let answer = only_shadow.answer().unwrap();
        assert!(answer.admitted());
        assert_eq!(answer.shadow_decision(), Some(SHADOW_DENIED));
    }

    #[test]
    fn the_tightest_admission_answers_fewest_remaining_then_latest_reset() {
        let mut all = AllMustAdmit::new();
        for (name, remaining, reset) in
            [("a", 5, 100), ("b", 2, 100), ("c", 2, 900), ("d", 3, 5000)]
        {
            assert!(
                all.add(checked(name, false, true, remaining, reset))
                    .is_continue()
            );
        }
        assert_eq!(names(all.answer()), Some("c".into()));
        assert_eq!(names(AllMustAdmit::new().answer()), None);
    }

    #[test]
    fn values_round_up_and_only_an_enforced_denial_says_when_to_retry() {
        let denied = checked("p", false, false, 0, 1_001);
        let values = denied.rate_limit();
        assert!(!values.admitted);
        assert_eq!(values.window_secs, 60);
        assert_eq!(values.reset_secs, 2);
        assert_eq!(values.reset_after_ms, 1_001);
        assert_eq!(values.retry_after_ms, 1_501);
        assert_eq!(values.retry_after_secs, Some(2));
        assert_eq!(values.shadow_decision, None);

        let shadow = checked("p", true, false, 0, 1_001);
        let shadow = shadow.rate_limit();
        assert!(shadow.admitted);
        assert_eq!(shadow.retry_after_secs, None);
        assert_eq!(shadow.shadow_decision, Some(SHADOW_DENIED));

        let allowed = checked("p", false, true, 3, 0);
        let allowed = allowed.rate_limit();
        assert_eq!(
            (allowed.retry_after_ms, allowed.retry_after_secs),
            (0, None)
        );
    }
}
