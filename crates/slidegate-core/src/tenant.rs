//! Tenants: who an API key belongs to, and the limits that tenant gets instead of a policy's own.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::policy::{MAX_POLICY_NAME_LEN, Policy, PolicyError, PolicySet};

/// The SHA-256 digest of an API key: how keys are looked up and stored, never the key itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyDigest(pub [u8; 32]);

impl ApiKeyDigest {
    /// The digest a presented key is looked up by (SHA-256: see the catalog's
    /// `keys` for why a fast hash is the right one for 256-bit random keys).
    pub fn of(key: &str) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(key.as_bytes()).into())
    }
}

/// Longest API key a request may present; anything longer is not a key.
pub const MAX_PRESENTED_API_KEY_LEN: usize = 256;

/// An API key as a request presents it, read by the one rule every front
/// end follows ([`PresentedApiKey::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentedApiKey<'a> {
    /// Neither header: the request names no tenant.
    Absent,
    Key(&'a str),
    /// A credential header that holds no usable key. `POST /v1/check`
    /// refuses it (401); forward-auth, whose headers are the protected
    /// request's (whose `Authorization` may be meant for the upstream),
    /// treats it as no key.
    Malformed,
}

impl<'a> PresentedApiKey<'a> {
    /// The rule, from the raw header values: `X-Api-Key` when the request
    /// has one; otherwise `Authorization: Bearer <key>` (the scheme in any
    /// case). A value that is not text, is empty after trimming, is longer
    /// than [`MAX_PRESENTED_API_KEY_LEN`], or an `Authorization` of another
    /// scheme, is [`PresentedApiKey::Malformed`].
    pub fn read(x_api_key: Option<&'a [u8]>, authorization: Option<&'a [u8]>) -> Self {
        let usable = |key: &'a str| {
            let key = key.trim();
            if key.is_empty() || key.len() > MAX_PRESENTED_API_KEY_LEN {
                PresentedApiKey::Malformed
            } else {
                PresentedApiKey::Key(key)
            }
        };
        if let Some(value) = x_api_key {
            return std::str::from_utf8(value).map_or(PresentedApiKey::Malformed, usable);
        }
        let Some(value) = authorization else {
            return PresentedApiKey::Absent;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return PresentedApiKey::Malformed;
        };
        match value.trim().split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => usable(key),
            _ => PresentedApiKey::Malformed,
        }
    }

    /// The key, if one was presented and usable.
    pub fn key(self) -> Option<&'a str> {
        match self {
            PresentedApiKey::Key(key) => Some(key),
            PresentedApiKey::Absent | PresentedApiKey::Malformed => None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(x_api_key: Option<&[u8]>, authorization: Option<&[u8]>) -> PresentedApiKey<'static> {
        // Leaked: the test's values live for the whole test binary anyway.
        let leak = |value: Option<&[u8]>| value.map(|v| &*Box::leak(v.to_vec().into_boxed_slice()));
        PresentedApiKey::read(leak(x_api_key), leak(authorization))
    }

    #[test]
    fn one_rule_reads_the_key_x_api_key_first_then_a_bearer_token() {
        use PresentedApiKey::{Absent, Key, Malformed};
        assert_eq!(read(None, None), Absent);
        assert_eq!(read(Some(b" sg_a "), None), Key("sg_a"));
        assert_eq!(read(None, Some(b"Bearer sg_b")), Key("sg_b"));
        assert_eq!(read(None, Some(b"bearer  sg_b ")), Key("sg_b"));
        // X-Api-Key wins, whatever Authorization holds.
        assert_eq!(read(Some(b"sg_a"), Some(b"Bearer sg_b")), Key("sg_a"));
        assert_eq!(read(Some(b"sg_a"), Some(b"Basic dXNlcg==")), Key("sg_a"));
        for (x_api_key, authorization) in [
            (Some(&b""[..]), None),
            (Some(b"\t"), None),
            (Some(b"caf\xe9"), None),
            (Some(b""), Some(&b"Bearer sg_b"[..])),
            (None, Some(b"Basic dXNlcg==")),
            (None, Some(b"Bearer")),
            (None, Some(b"Bearer   ")),
            (None, Some(b"sg_b")),
            (None, Some(b"Bearer \xff")),
        ] {
            assert_eq!(
                read(x_api_key, authorization),
                Malformed,
                "{x_api_key:?} {authorization:?}"
            );
        }
        let longest = "k".repeat(MAX_PRESENTED_API_KEY_LEN);
        assert_eq!(
            read(Some(longest.as_bytes()), None).key(),
            Some(longest.as_str())
        );
        let too_long = format!("{longest}k");
        assert_eq!(read(Some(too_long.as_bytes()), None), Malformed);
    }

    #[test]
    fn a_digest_is_the_sha256_of_the_key_and_never_prints() {
        let digest = ApiKeyDigest::of("abc");
        assert_eq!(
            digest.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_eq!(format!("{digest:?}"), "ApiKeyDigest(..)");
    }
}
