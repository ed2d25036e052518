//! dragonlock: a Redlock client for Dragonfly and Redis, built for latency.
#![deny(missing_docs)]

pub mod resp;
