//! Integration tests, compiled as one binary: the real server, real Redis, no mocks.

mod admin;
mod bad_input;
mod boundaries;
mod catalog_sync;
mod check;
mod configuration;
mod deploy;
mod exactness;
mod fleet;
mod health;
mod helpers;
mod metrics;
mod recovery;
mod scripts;
mod shutdown;
mod store_contract;
mod traces;
