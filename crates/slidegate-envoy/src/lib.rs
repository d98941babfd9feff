//! slidegate's Envoy front end: the rate-limit service (RLS v3) over gRPC, deciding with envoyproxy/ratelimit's rule files on the core's limiter.
//!
//! A tour, in the order a `ShouldRateLimit` call travels:
//!
//! - [`server::serve`] runs the tonic server: the rate-limit service, the
//!   standard gRPC health service and server reflection.
//! - [`service::RlsService`] reads the request (domain, descriptors,
//!   `hits_addend`), refuses malformed ones with `INVALID_ARGUMENT`, and spells
//!   the answer in Envoy's messages, with optional `RateLimit` headers.
//! - [`engine::Engine`] holds the [`rules::RuleSet`] in force and the core
//!   [`Limiter`](slidegate_core::Limiter) counting its policies; it finds each
//!   descriptor's rule, applies `unlimited` and `replaces`, derives the
//!   counter key ([`key`]) and asks the limiter, in one function
//!   ([`engine::Engine::decide_descriptors`]).
//! - [`rules`] parses the rule files (envoyproxy/ratelimit's format plus
//!   slidegate's `algorithm`) into a tree and core policies; [`watch`]
//!   re-reads them when they change and swaps the rule set atomically.
//! - [`settings::EnvoyRlsSettings`] is the `[envoy_rls]` section.

pub mod engine;
pub mod key;
pub mod reflection;
pub mod rules;
pub mod server;
pub mod service;
pub mod settings;
pub mod watch;

pub use engine::{DescriptorAnswer, Engine, RlsError};
pub use rules::{RuleSet, RulesError};
pub use server::{ServeError, serve, serve_on};
pub use service::{CallTracing, RlsService};
pub use settings::EnvoyRlsSettings;
pub use watch::{ReloadCounters, ReloadOutcome, RulesWatcher};

/// Most descriptors one request may carry. Envoy sends one per matching
/// rate-limit action, a handful in practice; a bound keeps one request from
/// costing thousands of store round-trips.
pub const MAX_DESCRIPTORS: usize = 64;

/// Most entries one descriptor may carry (and the deepest the rule tree may
/// nest): Envoy sends one entry per action of a rate limit.
pub const MAX_ENTRIES: usize = 32;
