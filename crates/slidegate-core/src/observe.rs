//! What the limiter reports as it decides, through a trait its host implements (the server's is Prometheus).
//!
//! The limiter knows nothing of metrics systems: it asks its [`Observer`]
//! for one [`PolicyRecorder`] per policy when the policy is loaded (never per
//! check) and for one [`StoreErrorRecorder`] per store, and calls them on the
//! hot path. An implementation should make those calls cheap — the server's
//! touch only atomics — because they run once per decision. Nothing here is
//! told the key: keys may identify people.

use std::sync::Arc;
use std::time::Duration;

use super::{Decision, FailureMode, Policy, StoreError};

/// Receives what the limiter does. Every method has a default that does nothing.
pub trait Observer: Send + Sync + 'static {
    /// The recorder for the policy `name`, asked when a policy set with that
    /// name is put in force. The same name may be asked for again (each
    /// catalog reload); it should get the same series.
    fn policy(&self, name: &str) -> Arc<dyn PolicyRecorder> {
        let _ = name;
        Arc::new(Unobserved)
    }

    /// The policy `name` is no longer loaded: its series can go, so the label
    /// set stays bounded by the policies that exist.
    fn policy_removed(&self, name: &str) {
        let _ = name;
    }

    /// `count` policies are in force now.
    fn policies_loaded(&self, count: usize) {
        let _ = count;
    }

    /// The recorder of failed decisions for the store of kind `store` (`"redis"`, `"memory"` …).
    fn store_errors(&self, store: &'static str) -> Arc<dyn StoreErrorRecorder> {
        let _ = store;
        Arc::new(Unobserved)
    }
}

/// Records the decisions of one policy.
pub trait PolicyRecorder: Send + Sync + std::fmt::Debug {
    /// One decision, and how long the store (or failover) took to make it.
    /// `shadow` says the policy only observes: a denial was answered as an admission.
    fn decided(&self, decision: &Decision, shadow: bool, elapsed: Duration);
}

/// Records checks the store could not decide (answered with the policy's failure mode or an error).
pub trait StoreErrorRecorder: Send + Sync + std::fmt::Debug {
    fn failed(&self, error: &StoreError);
}

/// An observer that records nothing: for embedding, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}

impl PolicyRecorder for Unobserved {
    fn decided(&self, _decision: &Decision, _shadow: bool, _elapsed: Duration) {}
}

impl StoreErrorRecorder for Unobserved {
    fn failed(&self, _error: &StoreError) {}
}

/// The observer that records nothing, shared.
pub fn unobserved() -> Arc<dyn Observer> {
    Arc::new(Unobserved)
}

tokio::task_local! {
    /// Whether the request this task serves is traced, as its front end decided.
    static TRACED: bool;
}

/// Runs `serving` as a request whose front end has decided whether it is
/// traced (from its caller's `traceparent`, else by the sample ratio). A
/// tracing layer reads the decision with [`traced_here`], so that a request
/// not traced builds no span at all: the limiter's spans are then disabled
/// and cost one check each, the same as with tracing off.
pub fn traced_as<F: std::future::Future>(
    traced: bool,
    serving: F,
) -> tokio::task::futures::TaskLocalFuture<bool, F> {
    TRACED.scope(traced, serving)
}

/// As [`traced_as`], for the synchronous part of starting a request: a
/// middleware's `call` that builds the root span before returning its future.
pub fn traced_while<R>(traced: bool, starting: impl FnOnce() -> R) -> R {
    TRACED.sync_scope(traced, starting)
}

/// The decision of the request this task serves; `None` outside one (a
/// background task).
pub fn traced_here() -> Option<bool> {
    TRACED.try_with(|traced| *traced).ok()
}

/// Records one check's decision on `span`, the span of the request it
/// serves, when that span declares the decision's fields (empty until now):
///
/// `slidegate.policy`, `slidegate.algorithm`, `slidegate.cost`,
/// `slidegate.outcome` (`allowed`, `denied` or `error`),
/// `slidegate.remaining`, `slidegate.fallback` (the failure mode that
/// answered, when the shared store could not) and `slidegate.store_error`
/// (the [`StoreError::kind`] of a check that could not be decided).
///
/// A single check has no span of its own: it would be a second span per
/// request, for the same duration as the store's client span below it,
/// and a span costs more to build and export than everything else a
/// traced check does (`tests/load/instructions.sh`). A front end with an
/// outcome of its own (Envoy's gRPC call: the overall code) leaves out
/// `slidegate.outcome` and gets the others; one that declares none of them
/// gets nothing. All fields are recorded in one call: each `record` is a
/// trip through every layer.
pub fn record_decision(
    span: &tracing::Span,
    policy: &Policy,
    cost: u64,
    decided: Result<&Decision, &StoreError>,
) {
    if span.is_disabled() {
        return;
    }
    let Some(fields) = span.metadata().map(tracing::Metadata::fields) else {
        return;
    };
    let (
        Some(policy_field),
        Some(algorithm),
        Some(cost_field),
        Some(remaining),
        Some(fallback),
        Some(store_error),
    ) = (
        fields.field("slidegate.policy"),
        fields.field("slidegate.algorithm"),
        fields.field("slidegate.cost"),
        fields.field("slidegate.remaining"),
        fields.field("slidegate.fallback"),
        fields.field("slidegate.store_error"),
    )
    else {
        return;
    };
    // A value set has a fixed number of entries: a span without the outcome
    // field gets the policy field there, with no value (entries without a
    // value are not recorded).
    let outcome = fields.field("slidegate.outcome");
    let outcome_field = outcome.as_ref().unwrap_or(&policy_field);
    let (verdict, left, answered_by, error) = match decided {
        Ok(decision) => (
            if decision.allowed {
                "allowed"
            } else {
                "denied"
            },
            Some(decision.remaining),
            decision.fallback.map(FailureMode::as_str),
            None,
        ),
        Err(error) => ("error", None, None, Some(error.kind())),
    };
    let name = policy.name().as_str();
    let algorithm_name = policy.algorithm().as_str();
    // As i64: `tracing-opentelemetry` exports an i64 as an integer, but a
    // u64 through its `Debug` as a string, formatted per span. Costs and
    // limits are at most `MAX_LIMIT`, far inside i64.
    let cost = i64::try_from(cost).unwrap_or(i64::MAX);
    let left = left.map(|left| i64::try_from(left).unwrap_or(i64::MAX));
    span.record_all(&fields.value_set(&[
        (&policy_field, Some(&name as &dyn tracing::Value)),
        (&algorithm, Some(&algorithm_name as &dyn tracing::Value)),
        (&cost_field, Some(&cost as &dyn tracing::Value)),
        (
            outcome_field,
            outcome.is_some().then_some(&verdict as &dyn tracing::Value),
        ),
        (
            &remaining,
            left.as_ref().map(|left| left as &dyn tracing::Value),
        ),
        (
            &fallback,
            answered_by.as_ref().map(|mode| mode as &dyn tracing::Value),
        ),
        (
            &store_error,
            error.as_ref().map(|kind| kind as &dyn tracing::Value),
        ),
    ]));
}
