//! Tenants: who an API key belongs to, and the limits that tenant gets instead of a policy's own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::policy::{MAX_POLICY_NAME_LEN, Policy, PolicyError, PolicySet};

/// The SHA-256 digest of an API key: how keys are looked up and stored, never the key itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyDigest(pub [u8; 32]);

/// Digests are not secrets, but printing them would only invite matching against logs.
impl fmt::Debug for ApiKeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyDigest(..)")
    }
}

/// A validated tenant name: 1–64 bytes of `[A-Za-z0-9_.-]`, like a policy
/// name, so it can sit beside a policy name in a store key without an escape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant must be 1 to {MAX_POLICY_NAME_LEN} characters of A-Z a-z 0-9 _ - . (got {0:?})")]
pub struct InvalidTenant(pub String);

impl TenantName {
    /// # Errors
    /// When empty, too long or with a character outside the set.
    pub fn parse(name: &str) -> Result<Self, InvalidTenant> {
        if super::policy::is_plain_name(name) {
            Ok(Self(name.into()))
        } else {
            Err(InvalidTenant(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One active API key as the catalog hands it over.
#[derive(Debug, Clone)]
pub struct TenantKey {
    pub digest: ApiKeyDigest,
    pub tenant: TenantName,
    /// Policy name and the limit this tenant gets under it.
    pub overrides: Vec<(String, u64)>,
}

/// A tenant as the limiter uses it: its name and its policies with overridden limits.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) name: TenantName,
    pub(crate) overrides: HashMap<Box<str>, Arc<Policy>>,
}

impl Tenant {
    /// Resolves `key`'s overrides against `policies`. An override that no
    /// longer fits its policy (the policy became `sliding_log` with a lower
    /// cap, or its default cost rose above the override) is skipped with a
    /// warning: the tenant then gets the policy's own limit, never a crash.
    pub(crate) fn resolve(key: &TenantKey, policies: &PolicySet) -> Self {
        let mut overrides = HashMap::new();
        for (name, limit) in &key.overrides {
            let Some(policy) = policies.get(name) else {
                continue;
            };
            match policy.with_limit(*limit) {
                Ok(policy) => {
                    overrides.insert(Box::from(name.as_str()), Arc::new(policy));
                }
                Err(error) => warn_unusable(&key.tenant, name, &error),
            }
        }
        Self {
            name: key.tenant.clone(),
            overrides,
        }
    }
}

fn warn_unusable(tenant: &TenantName, policy: &str, error: &PolicyError) {
    tracing::warn!(
        tenant = tenant.as_str(),
        policy,
        %error,
        "ignoring a tenant's limit override that no longer fits its policy"
    );
}
