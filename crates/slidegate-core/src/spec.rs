//! A policy as people write it (the config file's `[[policies]]`, the admin API's documents) and its validation into a [`Policy`].

use serde::Deserialize;

use crate::{Algorithm, FailureMode, Policy, PolicyError, PolicyName, Window};

/// Which forwarded requests a policy limits (`[policies.match]`); conditions given must all hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchSpec {
    /// e.g. `["GET", "HEAD"]`; empty or absent: any method.
    pub methods: Vec<String>,
    /// e.g. `"/api"`: covers `/api` and `/api/…`, after normalising the path.
    pub path_prefix: Option<String>,
    /// e.g. `"api.example.com"` or `"*.example.com"`; compared without port, case-insensitively.
    pub host: Option<String>,
}

/// A policy as written in the file (`[[policies]]` with name, algorithm, limit, window) or sent to the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    pub algorithm: String,
    pub limit: u64,
    /// "250ms", "10s", "1m", "1h" … between 1ms and 24h.
    pub window: String,
    /// Units a check consumes when it names no cost.
    #[serde(default = "one")]
    pub cost: u64,
    /// Makes the policy apply to forward-auth requests it matches. Absent:
    /// the policy is used only by name, through `POST /v1/check`.
    #[serde(default, rename = "match")]
    pub matches: Option<MatchSpec>,
    /// What forward-auth counts per: any of `"client_ip"`, `"api_key"`,
    /// `"header:<name>"`, combined. Default `["client_ip"]`; needs `match`.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// This policy's failure mode (`closed`, `open`, `local`); default: `limiter.failure_mode`.
    #[serde(default)]
    pub failure_mode: Option<String>,
}

fn one() -> u64 {
    1
}

impl PolicySpec {
    /// The policy, failing by `default_mode` unless it names its own.
    ///
    /// # Errors
    /// The first problem found, with the message a person needs to fix it.
    pub fn to_policy(
        &self,
        default_mode: FailureMode,
    ) -> Result<Policy, (&'static str, PolicyError)> {
        let name = PolicyName::parse(&self.name).map_err(|e| ("name", e))?;
        let algorithm: Algorithm = self.algorithm.parse().map_err(|e| ("algorithm", e))?;
        let window = Window::parse(&self.window).map_err(|e| ("window", e))?;
        let failure_mode = match &self.failure_mode {
            Some(mode) => mode.trim().parse().map_err(|e| ("failure_mode", e))?,
            None => default_mode,
        };
        let policy = Policy::new(name, algorithm, self.limit, window, self.cost).map_err(|e| {
            let field = match e {
                PolicyError::CostOutOfRange { .. } => "cost",
                _ => "limit",
            };
            (field, e)
        })?;
        Ok(policy.with_failure_mode(failure_mode))
    }
}
