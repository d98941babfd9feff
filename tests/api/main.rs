//! Integration tests, compiled as one binary: the real server, real Redis, no mocks.

mod admin;
mod bad_input;
mod boundaries;
mod catalog_sync;
mod check;
mod configuration;
mod exactness;
mod health;
mod helpers;
mod metrics;
mod recovery;
mod scripts;
mod store_contract;
mod traces;
