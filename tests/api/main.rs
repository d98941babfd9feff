//! Integration tests, compiled as one binary: the real server, real Redis, no mocks.

mod bad_input;
mod boundaries;
mod chaos;
mod check;
mod configuration;
mod deny_cache;
mod exactness;
mod failure_modes;
mod health;
mod helpers;
mod local_mode;
mod private_redis;
mod recovery;
mod scripts;
mod store_contract;
