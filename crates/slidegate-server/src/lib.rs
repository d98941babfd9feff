//! slidegate's server: the `slidegate` binary — HTTP front ends, configuration, startup, telemetry and metrics — on the core.
//!
//! A tour, in the order a check travels:
//!
//! - [`http`] receives `POST /v1/check` (or a gateway's `/v1/forward-auth`,
//!   whose request is matched against the core's policy rules and keyed by a
//!   client address from [`client_ip`]), validates the body and turns
//!   the core's decision into a 200 or 429 with rate-limit headers. Errors map
//!   to statuses in one place, [`http::error`].
//! - The decision itself is made by `slidegate_core::Limiter` on a store from
//!   [`store`]: `slidegate_redis::RedisStore` (Lua scripts, one round-trip,
//!   Redis's clock, atomic for the whole fleet) or the core's embedded
//!   `MemoryStore` for a single replica.
//! - [`configuration`] reads defaults, a TOML file and `SLIDEGATE__*`
//!   variables; [`telemetry`] sets up logs and traces; [`metrics`] is the
//!   core's `Observer` in Prometheus form, for `GET /metrics`; [`startup`]
//!   wires it all together.
//! - The catalog (`slidegate_catalog`) keeps policies and API keys in
//!   Postgres when one is configured (the admin API in [`http::admin`]
//!   writes them), and every replica's in-memory copy current through LISTEN/NOTIFY.
//! - `GET /health/ready` ([`http::health`]) reads the background probes of
//!   Redis and Postgres (`slidegate_core::probe`) and never waits on a dependency.

pub mod client_ip;
pub mod configuration;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod startup;
pub mod store;
pub mod telemetry;
