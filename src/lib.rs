//! slidegate: a distributed rate limiter whose limits hold across every replica.
//!
//! A tour, in the order a check travels:
//!
//! - [`http`] receives `POST /v1/check` (or a gateway's `/v1/forward-auth`,
//!   whose request is matched against policy rules in [`limiter::rules`] and
//!   keyed by a client address from [`http::client_ip`]), validates the body
//!   and turns the decision into a 200 or 429 with rate-limit headers. Errors
//!   map to statuses in one place, [`http::error`].
//! - [`limiter`] finds the policy, validates key and cost and asks its
//!   [`limiter::Store`] for a decision; with Redis, through the failover
//!   (deny cache, circuit breaker, failure modes) in [`limiter::failover`]. The algorithms live in
//!   [`limiter::algorithms`] (in memory) and `lua/` (in Redis), with one
//!   semantics; time comes from an injectable [`limiter::Clock`].
//! - [`store`] holds the state: [`store::RedisStore`] runs the Lua scripts
//!   (one round-trip per decision, Redis's clock, atomic for the whole fleet);
//!   [`store::MemoryStore`] keeps it in-process for single-replica use.
//! - [`configuration`] reads defaults, a TOML file and `SLIDEGATE__*`
//!   variables; [`telemetry`] sets up logs and traces; [`metrics`] counts
//!   decisions for `GET /metrics`; [`startup`] wires it all together.
//! - [`catalog`] keeps policies and API keys in Postgres when one is
//!   configured (the admin API in [`http::admin`] writes them), and every
//!   replica's in-memory copy current through LISTEN/NOTIFY.
//! - [`probe`] checks Redis and Postgres in the background, so
//!   `GET /health/ready` ([`http::health`]) reads their last answers and
//!   never waits on a dependency.

pub mod catalog;
pub mod configuration;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod probe;
pub mod startup;
pub mod store;
pub mod telemetry;
