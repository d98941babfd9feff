//! The rule set in force and the limiter counting its policies, swapped together, and the one function that decides a request's descriptors.
//!
//! **One version at a time.** A request must see the old rules or the new
//! ones, never a tree from one and policies from the other (a rule removed
//! in the new set would be an unknown policy; a changed limit would be
//! counted under one and reported under the other). The tree is behind an
//! [`ArcSwap`] and the limiter swaps its own snapshot, so two swaps happen on
//! a reload; a read/write gate makes them one: every request holds the read
//! side for its duration (an uncontended semaphore permit, no lock held
//! across threads), and [`Engine::install`] takes the write side for the
//! two swaps only. A reload therefore waits for the requests in flight (at
//! most the store's timeout) and holds new ones for the swap itself
//! (microseconds); reloads are rare, checks are not, which is the trade
//! this makes.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use slidegate_core::{
    Bundle, CheckError, Checked, Limiter, MAX_COST, PolicyCheck, Store, StoreError, UnknownPolicy,
};

use crate::key::counter_key;
use crate::rules::{Rule, RuleSet};
use crate::{MAX_DESCRIPTORS, MAX_ENTRIES};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RlsError {
    /// The request itself is wrong (gRPC `INVALID_ARGUMENT`); nothing was counted.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store could not decide and the rule's failure mode is `closed`
    /// (gRPC `UNAVAILABLE`, so Envoy's own `failure_mode_deny` applies).
    #[error("the rate limit store could not decide: {0}")]
    Unavailable(#[source] StoreError),
    /// A bug: the rules and the limiter disagree (gRPC `INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

/// What one request descriptor got, in request order.
#[derive(Debug, Clone)]
pub enum DescriptorAnswer {
    /// No rule at the descriptor's depth, or its rule was replaced by
    /// another rule matched in the same request: OK, nothing counted.
    NoLimit,
    /// The rule is `unlimited`: OK, nothing counted.
    Unlimited,
    /// The rule's policy decided. `over`: the descriptor is over its limit
    /// (for a shadow rule: would have been; the code is still OK).
    /// `checked.decision` is the store's answer; in a refused request, a
    /// descriptor that would have admitted reports what its counter holds
    /// without the request (nothing consumed, see [`Engine::decide_descriptors`]).
    Limited {
        rule: Arc<Rule>,
        checked: Checked,
        over: bool,
    },
}

impl DescriptorAnswer {
    /// Over the limit and not in shadow mode: the request is refused.
    pub fn is_enforced_over(&self) -> bool {
        matches!(self, DescriptorAnswer::Limited { rule, over: true, .. } if !rule.is_shadow())
    }
}

/// The rules in force and the limiter that counts them (see the module).
pub struct Engine<S> {
    limiter: Limiter<S>,
    rules: ArcSwap<RuleSet>,
    gate: tokio::sync::RwLock<()>,
}

/// One descriptor's plan, made before anything is counted, so that a bad
/// descriptor later in the request consumes nothing earlier in it.
enum Plan<'a> {
    NoLimit,
    Unlimited,
    Check {
        rule: &'a Arc<Rule>,
        key: String,
        cost: u64,
    },
}

impl<S: Store> Engine<S> {
    /// Puts `rules` in force in `limiter`, which this engine owns from now
    /// on: its policies are the rules' (build it with
    /// [`Limiter::awaiting_bundle`], and with the failover of the shared
    /// store if there is one; the failover's default mode is the rules'
    /// failure mode).
    pub fn new(limiter: Limiter<S>, rules: RuleSet) -> Self {
        limiter.replace(bundle(&rules));
        Self {
            limiter,
            rules: ArcSwap::from_pointee(rules),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// Puts `rules` in force: requests that start after this returns decide
    /// with them; requests in flight finish on the old ones.
    pub async fn install(&self, rules: RuleSet) {
        let _swapping = self.gate.write().await;
        self.limiter.replace(bundle(&rules));
        self.rules.store(Arc::new(rules));
    }

    /// The rule set in force now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    pub fn limiter(&self) -> &Limiter<S> {
        &self.limiter
    }

    /// Decides every descriptor of `request`, in order; one answer each.
    ///
    /// Each descriptor's rule is found as envoyproxy/ratelimit finds it
    /// ([`RuleSet::find`]); a rule whose `name` another matched rule
    /// `replaces` is not applied; `unlimited` counts nothing. The cost is
    /// the descriptor's `hits_addend` when set (0: look without counting,
    /// as envoyproxy/ratelimit), else the request's (0 means 1).
    ///
    /// **All or nothing:** the request is admitted only if every enforced
    /// descriptor's rule admits it, and then it is counted on every one; if
    /// any denies, none is consumed ([`Limiter::check_all`]: one script call
    /// on one Redis). Every status still says where its descriptor stands:
    /// a descriptor whose rule would have admitted is `OK`, with what its
    /// counter holds without this request.
    ///
    /// # Errors
    /// [`RlsError::InvalidArgument`] for a malformed request (nothing is
    /// counted); [`RlsError::Unavailable`] when the store cannot decide a
    /// rule that fails closed.
    pub async fn decide_descriptors(
        &self,
        request: &RateLimitRequest,
    ) -> Result<Vec<DescriptorAnswer>, RlsError> {
        validate(request)?;
        let _same_version = self.gate.read().await;
        let rules = self.rules.load();
        let found: Vec<Option<&Arc<Rule>>> = request
            .descriptors
            .iter()
            .map(|descriptor| {
                let entries = descriptor
                    .entries
                    .iter()
                    .map(|entry| (entry.key.as_str(), entry.value.as_str()));
                rules.find(&request.domain, entries)
            })
            .collect();
        let replaced: HashSet<&str> = found
            .iter()
            .flatten()
            .flat_map(|rule| rule.replaces())
            .map(String::as_str)
            .collect();

        let mut plans = Vec::with_capacity(found.len());
        for (index, (descriptor, rule)) in request.descriptors.iter().zip(found).enumerate() {
            let plan = match rule {
                None => Plan::NoLimit,
                Some(rule) if rule.is_unlimited() => Plan::Unlimited,
                Some(rule) if rule.name().is_some_and(|name| replaced.contains(name)) => {
                    Plan::NoLimit
                }
                Some(rule) => {
                    let values = descriptor.entries.iter().map(|entry| entry.value.as_str());
                    let key = counter_key(values).map_err(|error| {
                        RlsError::InvalidArgument(format!(
                            "descriptors[{index}]: the entries' values make an invalid counter key: {error}"
                        ))
                    })?;
                    let cost = match &descriptor.hits_addend {
                        Some(hits) => hits.value,
                        None => u64::from(request.hits_addend.max(1)),
                    };
                    Plan::Check { rule, key, cost }
                }
            };
            plans.push(plan);
        }

        self.count(plans).await
    }

    /// Counts the planned checks as one request, all or nothing
    /// ([`Limiter::check_all`]): one store call for all of them. A cost
    /// above its rule's whole limit can never be admitted: that descriptor
    /// is over without asking, and when its rule is enforced the request is
    /// refused before anything is counted, so every other descriptor is
    /// only looked at (cost 0) to say where it stands.
    async fn count(&self, plans: Vec<Plan<'_>>) -> Result<Vec<DescriptorAnswer>, RlsError> {
        let mut counted = Vec::with_capacity(plans.len());
        for plan in &plans {
            if let Plan::Check { rule, key, cost } = plan {
                let policy = rule.policy().ok_or_else(|| {
                    RlsError::Internal(format!("{}: a counted rule has no policy", rule.location()))
                })?;
                counted.push((rule, policy, key.as_str(), *cost > policy.limit(), *cost));
            }
        }
        let refused_by_size = counted
            .iter()
            .any(|(rule, _, _, too_large, _)| *too_large && !rule.is_shadow());
        let checks: Vec<PolicyCheck<'_>> = counted
            .iter()
            .map(|(_, policy, key, too_large, cost)| PolicyCheck {
                policy: policy.name().as_str(),
                key,
                cost: Some(if refused_by_size || *too_large {
                    0
                } else {
                    *cost
                }),
            })
            .collect();
        let decided = match self.limiter.check_all(&checks, UnknownPolicy::Refuse).await {
            Ok(decided) => decided,
            Err(CheckError::Store(error)) => return Err(RlsError::Unavailable(error)),
            Err(CheckError::InvalidKey(error)) => {
                return Err(RlsError::InvalidArgument(error.to_string()));
            }
            Err(error) => {
                return Err(RlsError::Internal(format!(
                    "the limiter refused the request's checks: {error}"
                )));
            }
        };
        let mut decided = counted.iter().zip(decided);
        let mut answers = Vec::with_capacity(plans.len());
        for plan in &plans {
            let answer = match plan {
                Plan::NoLimit => DescriptorAnswer::NoLimit,
                Plan::Unlimited => DescriptorAnswer::Unlimited,
                Plan::Check { rule, .. } => {
                    let Some(((_, _, _, too_large, _), Some(checked))) = decided.next() else {
                        return Err(RlsError::Internal(format!(
                            "{}: the limiter answered fewer checks than asked",
                            rule.location()
                        )));
                    };
                    DescriptorAnswer::Limited {
                        rule: Arc::clone(rule),
                        over: *too_large || !checked.decision.allowed,
                        checked,
                    }
                }
            };
            answers.push(answer);
        }
        Ok(answers)
    }
}

fn bundle(rules: &RuleSet) -> Bundle {
    Bundle {
        policies: rules.policies(),
        ..Bundle::default()
    }
}

/// Refuses what no rule could answer sensibly, before anything is counted.
fn validate(request: &RateLimitRequest) -> Result<(), RlsError> {
    let invalid = |reason: String| Err(RlsError::InvalidArgument(reason));
    if request.domain.is_empty() {
        return invalid("domain must not be empty".into());
    }
    if request.descriptors.is_empty() {
        return invalid("at least one descriptor is required".into());
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return invalid(format!(
            "{} descriptors; at most {MAX_DESCRIPTORS} are allowed per request",
            request.descriptors.len()
        ));
    }
    if u64::from(request.hits_addend) > MAX_COST {
        return invalid(format!(
            "hits_addend {} is above {MAX_COST}, the most one check may cost",
            request.hits_addend
        ));
    }
    for (index, descriptor) in request.descriptors.iter().enumerate() {
        if descriptor.entries.is_empty() {
            return invalid(format!("descriptors[{index}] has no entries"));
        }
        if descriptor.entries.len() > MAX_ENTRIES {
            return invalid(format!(
                "descriptors[{index}] has {} entries; at most {MAX_ENTRIES} are allowed",
                descriptor.entries.len()
            ));
        }
        if let Some(at) = descriptor
            .entries
            .iter()
            .position(|entry| entry.key.is_empty())
        {
            return invalid(format!(
                "descriptors[{index}].entries[{at}].key must not be empty"
            ));
        }
        if let Some(hits) = &descriptor.hits_addend
            && hits.value > MAX_COST
        {
            return invalid(format!(
                "descriptors[{index}].hits_addend {} is above {MAX_COST}, the most one check may cost",
                hits.value
            ));
        }
        if descriptor.is_negative_hits {
            // Counting a refund as hits would be the opposite of what was asked.
            return invalid(format!(
                "descriptors[{index}].is_negative_hits: refunding hits is not supported"
            ));
        }
        // `limit` (a per-request override of the rule's limit) is not
        // supported: the rules decide. See docs/envoy.md.
    }
    Ok(())
}
