//! The `[postgres]` section of the file as people write it, its checks, and the [`CatalogOptions`] the catalog is built from.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use slidegate_core::settings::{self, InvalidSetting};

use crate::CatalogOptions;

/// The catalog database. Set: policies and API keys come from Postgres (the
/// file's `[[policies]]` are ignored) and the admin API can change them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://user[:password]@host[:port]/database`; `?sslmode=require`
    /// for TLS. Unset or empty: policies come from this file.
    pub url: Option<SecretString>,
    /// Pooled connections, for admin writes, reloads and health probes (never checks).
    pub pool_size: u32,
    /// Longest wait for a pooled connection, including opening one.
    #[serde(deserialize_with = "settings::duration")]
    pub connect_timeout: Duration,
    /// The server's `statement_timeout` on every connection.
    #[serde(deserialize_with = "settings::duration")]
    pub statement_timeout: Duration,
    /// How often the whole catalog is reloaded even without a change notification.
    #[serde(deserialize_with = "settings::duration")]
    pub resync_interval: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(2),
            resync_interval: Duration::from_secs(30),
        }
    }
}

impl PostgresSettings {
    /// The URL if one is configured (an empty string counts as none).
    pub fn url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(|url| url.expose_secret().trim())
            .filter(|url| !url.is_empty())
    }

    /// Checks every field, naming it as the file does (`postgres.pool_size`);
    /// never echoes the URL, which may hold a password.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.pool_size == 0 {
            return Err(InvalidSetting::new(
                "postgres.pool_size",
                "must be at least 1",
            ));
        }
        for (field, value) in [
            ("postgres.connect_timeout", self.connect_timeout),
            ("postgres.statement_timeout", self.statement_timeout),
            ("postgres.resync_interval", self.resync_interval),
        ] {
            if value.is_zero() {
                return Err(InvalidSetting::new(field, "must be longer than 0"));
            }
        }
        if let Some(url) = self.url()
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(InvalidSetting::new(
                "postgres.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        Ok(())
    }

    /// What [`Catalog::new`](crate::Catalog::new) takes, for settings that
    /// passed [`PostgresSettings::validate`]; `None` without a `postgres.url`.
    pub fn options(&self) -> Option<CatalogOptions> {
        self.url().map(|url| CatalogOptions {
            url: url.to_owned(),
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            resync_interval: self.resync_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_checked_here_naming_fields_and_never_the_url() {
        let with = |url: &str| PostgresSettings {
            url: Some(url.to_owned().into()),
            ..PostgresSettings::default()
        };
        let scheme = with("mysql://root:topsecret@db/x").validate().unwrap_err();
        assert_eq!(scheme.field, "postgres.url");
        assert!(!scheme.to_string().contains("topsecret"), "{scheme}");
        let zero = PostgresSettings {
            resync_interval: Duration::ZERO,
            ..PostgresSettings::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().field,
            "postgres.resync_interval"
        );
        assert!(PostgresSettings::default().options().is_none());
        let options = with("postgres://u@db/x").options().unwrap();
        assert_eq!(options.pool_size, PostgresSettings::default().pool_size);
    }
}
