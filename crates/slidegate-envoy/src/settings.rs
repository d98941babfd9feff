//! The `[envoy_rls]` section: where the gRPC listener binds, which rule files it decides with, and what it answers.
//!
//! Unset `bind`: no gRPC listener. The server composes this section into its
//! `Settings` (env `SLIDEGATE__ENVOY_RLS__BIND`, `SLIDEGATE__ENVOY_RLS__RULES`, …)
//! and calls [`EnvoyRlsSettings::validate`] once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use slidegate_core::FailureMode;
use slidegate_core::settings::{self, InvalidSetting, check_duration};

/// How often the rule files are re-read by default: fast enough that an
/// edited ConfigMap is in force within seconds, cheap enough (a few small
/// reads) to never show in a profile.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EnvoyRlsSettings {
    /// Address of the gRPC listener (Envoy's convention is port 8081). `None`: no listener.
    pub bind: Option<SocketAddr>,
    /// A rule file, or a directory of `*.yaml`/`*.yml` rule files. Required with `bind`.
    pub rules: Option<PathBuf>,
    /// Add the `RateLimit-*`, `X-RateLimit-*` and `Retry-After` headers the
    /// HTTP API sends to `response_headers_to_add` (Envoy adds them to the
    /// client's response).
    pub response_headers: bool,
    /// How often the rule files are checked for changes.
    #[serde(deserialize_with = "settings::duration")]
    pub reload_interval: Duration,
    /// The failure mode of the rules' policies when the shared store cannot
    /// decide; `None`: `limiter.failure_mode`. The server gives it to the
    /// failover of the Envoy limiter as its default mode: rule files have
    /// no per-rule failure mode (envoyproxy/ratelimit has none).
    #[serde(default, deserialize_with = "optional_failure_mode")]
    pub failure_mode: Option<FailureMode>,
}

impl Default for EnvoyRlsSettings {
    fn default() -> Self {
        Self {
            bind: None,
            rules: None,
            response_headers: false,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            failure_mode: None,
        }
    }
}

fn optional_failure_mode<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<FailureMode>, D::Error> {
    settings::failure_mode(deserializer).map(Some)
}

impl EnvoyRlsSettings {
    /// # Errors
    /// A listener without rules (every request would be answered OK
    /// unlimited, silently), or a reload interval of zero or above 24 h.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.bind.is_some() && self.rules.is_none() {
            return Err(InvalidSetting::new(
                "envoy_rls.rules",
                "is required when envoy_rls.bind is set: the gRPC listener decides with these rule files",
            ));
        }
        check_duration("envoy_rls.reload_interval", self.reload_interval)
    }

    /// Whether the gRPC listener is on.
    pub fn enabled(&self) -> bool {
        self.bind.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_no_listener_and_a_listener_needs_rules() {
        let settings = EnvoyRlsSettings::default();
        assert!(!settings.enabled());
        assert!(settings.validate().is_ok());

        let without_rules = EnvoyRlsSettings {
            bind: Some("127.0.0.1:8081".parse().unwrap()),
            ..EnvoyRlsSettings::default()
        };
        let error = without_rules.validate().unwrap_err();
        assert_eq!(error.field, "envoy_rls.rules");
    }

    #[test]
    fn reads_the_section_as_written() {
        let settings: EnvoyRlsSettings = serde_yaml_ng::from_str(
            "bind: 127.0.0.1:8081\nrules: /etc/slidegate/rules\nresponse_headers: true\nreload_interval: 250ms\nfailure_mode: open\n",
        )
        .unwrap();
        assert_eq!(settings.reload_interval, Duration::from_millis(250));
        assert_eq!(settings.failure_mode, Some(FailureMode::Open));
        assert!(settings.validate().is_ok());
        assert!(serde_yaml_ng::from_str::<EnvoyRlsSettings>("bnd: x\n").is_err());
        let zero: EnvoyRlsSettings = serde_yaml_ng::from_str("reload_interval: 0s\n").unwrap();
        assert!(zero.validate().is_err());
    }
}
