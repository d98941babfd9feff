//! Integration tests, compiled as one binary: the real server, real Redis, no mocks.

mod admin;
mod admin_listener;
mod bad_input;
mod boundaries;
mod catalog_sync;
mod chaos;
mod check;
mod configuration;
mod deny_cache;
mod deploy;
mod exactness;
mod failure_modes;
mod fault_proxy;
mod fleet;
mod health;
mod helpers;
mod local_mode;
mod metrics;
mod private_redis;
mod recovery;
mod scripts;
mod shutdown;
mod store_contract;
mod traces;
