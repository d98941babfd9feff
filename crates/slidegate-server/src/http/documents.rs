//! The documents the admin API accepts for policies and API keys, and their validation: the config file's rules and messages.

use std::collections::BTreeMap;

use serde::Deserialize;

use slidegate_catalog::model::{Invalid, MatchRules, ValidPolicy};
use slidegate_core::rules::KeySpec;
use slidegate_core::{FailureMode, PolicySpec, TenantName};

/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// A policy as the admin API accepts it. `name` may be left out of a `PUT`
/// (the path names the policy); when given it must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub name: Option<String>,
    pub algorithm: String,
    pub limit: u64,
    /// "250ms", "10s", "1m", "1h" … between 1ms and 24h.
    pub window: String,
    #[serde(default = "one")]
    pub cost: u64,
    #[serde(default, rename = "match")]
    pub matching: MatchRules,
    /// What forward-auth counts a matched request as, as the config file's
    /// `key`: `"client_ip"`, `"api_key"`, `"header:<name>"`.
    #[serde(default = "client_ip")]
    pub key: Vec<String>,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn one() -> u64 {
    1
}

fn client_ip() -> Vec<String> {
    vec!["client_ip".to_owned()]
}

fn yes() -> bool {
    true
}

impl PolicyDocument {
    /// Validates as `[[policies]]` in the config file is validated (same
    /// messages), plus the fields only the database has. `path_name` is the
    /// name from the URL of a `PUT`.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(self, path_name: Option<&str>) -> Result<ValidPolicy, Invalid> {
        let name = match (self.name, path_name) {
            (Some(name), Some(path)) if name != path => {
                return Err(Invalid::new(
                    "name",
                    format!("must match the policy in the path ({path:?}), got {name:?}"),
                ));
            }
            (Some(name), _) => name,
            (None, Some(path)) => path.to_owned(),
            (None, None) => return Err(Invalid::new("name", "is required")),
        };
        let settings = PolicySpec {
            name,
            algorithm: self.algorithm,
            limit: self.limit,
            window: self.window,
            cost: self.cost,
            // Match rules and key parts are validated below: the catalog
            // stores them in its own columns.
            matches: None,
            key: None,
            // Not stored in the catalog yet: the limiter gives catalog policies
            // the replica's `limiter.failure_mode` when it loads them.
            failure_mode: None,
        };
        let policy = settings
            .to_policy(FailureMode::Closed)
            .map_err(|(field, problem)| Invalid::new(field, problem))?
            .with_shadow(self.shadow);
        let matching = self.matching.validate()?;
        KeySpec::parse(&self.key).map_err(|problem| Invalid::new("key", problem))?;
        if self.description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(Invalid::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
        Ok(ValidPolicy {
            policy,
            matching,
            key: self.key,
            enabled: self.enabled,
            description: self.description,
        })
    }
}

/// `POST /v1/admin/keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyDocument {
    pub tenant: String,
    #[serde(default)]
    pub overrides: BTreeMap<String, u64>,
}

/// `PUT /v1/admin/keys/{id}/overrides`: the complete set, replacing the previous one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverridesDocument {
    pub overrides: BTreeMap<String, u64>,
}

impl NewKeyDocument {
    /// # Errors
    /// When the tenant name is invalid.
    pub fn tenant(&self) -> Result<TenantName, Invalid> {
        TenantName::parse(&self.tenant).map_err(|error| Invalid::new("tenant", error))
    }
}
