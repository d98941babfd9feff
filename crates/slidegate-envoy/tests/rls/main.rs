//! The Envoy front end over a real TCP port, with a real tonic client, on the core's embedded store.

mod decide;
mod deploy;
mod helpers;
mod protocol;
mod reload;
