//! What the catalog stores and returns: validated policies with their match rules, and the records the admin API shows.
//!
//! The documents the admin API accepts (and their validation) are the
//! server's; they reach the catalog only as a [`ValidPolicy`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use slidegate_core::Policy;
use slidegate_core::rules::RequestMatch;

/// Longest `match.path_prefix`, in bytes: the core's, for file and admin API alike.
pub use slidegate_core::rules::MAX_PATH_PREFIX_LEN;

/// Which requests a policy applies to at the forward-auth endpoint. Stored and
/// validated here; each replica compiles them into forward-auth's rules when
/// it loads the catalog. A policy with no condition at all is not a
/// forward-auth rule (use `path_prefix: "/"` to cover every request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRules {
    /// Upper-case HTTP methods; empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Starts with `/`; unset: any path.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A host name (`*.` for any subdomain), optionally with `:port` (ignored); unset: any host.
    #[serde(default)]
    pub host: Option<String>,
}

/// A refused field and why, in the words the config file uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl ToString) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// A policy that passed validation, with what the limiter does not need.
#[derive(Debug, Clone)]
pub struct ValidPolicy {
    pub policy: Policy,
    pub matching: MatchRules,
    /// Key parts as given, validated as the config file's `key`.
    pub key: Vec<String>,
    pub enabled: bool,
    pub description: String,
}

impl MatchRules {
    /// Validated by the core's one validator of match rules
    /// ([`RequestMatch::new`], the config file's too), then kept as the
    /// admin API will show it: methods upper-case without repeats, the host
    /// lower-case (a port stays as written).
    ///
    /// # Errors
    /// The first invalid field, named `match.<field>`.
    pub fn validate(self) -> Result<Self, Invalid> {
        RequestMatch::new(
            &self.methods,
            self.path_prefix.as_deref(),
            self.host.as_deref(),
        )
        .map_err(|(field, problem)| Invalid::new(format!("match.{field}"), problem))?;
        let mut methods: Vec<String> = Vec::with_capacity(self.methods.len());
        for method in self.methods {
            let method = method.to_ascii_uppercase();
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        let host = self.host.map(|host| host.to_ascii_lowercase());
        Ok(Self {
            methods,
            host,
            ..self
        })
    }
}

/// A policy as the admin API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub algorithm: String,
    pub limit: u64,
    pub window: String,
    pub cost: u64,
    #[serde(rename = "match")]
    pub matching: MatchRules,
    pub key: Vec<String>,
    pub shadow: bool,
    pub enabled: bool,
    pub description: String,
    /// The catalog version of this policy's last change; increases with every change.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// An API key as the admin API lists it: never the key, never its hash.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyRecord {
    pub id: i64,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub tenant: String,
    pub overrides: BTreeMap<String, u64>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(methods: &[&str], host: Option<&str>) -> MatchRules {
        MatchRules {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path_prefix: Some("/api".into()),
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn match_rules_are_validated_as_the_file_validates_them_and_kept_normalised() {
        let kept = matching(&["get", "GET", "Post"], Some("*.Example.com:8443"))
            .validate()
            .unwrap();
        assert_eq!(kept.methods, ["GET", "POST"]);
        assert_eq!(kept.host.as_deref(), Some("*.example.com:8443"));
        for (rules, field) in [
            (matching(&["G3T"], None), "match.methods"),
            (matching(&[], Some("a b")), "match.host"),
            (matching(&[], Some("a.b:0")), "match.host"),
        ] {
            assert_eq!(rules.validate().unwrap_err().field, field);
        }
    }
}
