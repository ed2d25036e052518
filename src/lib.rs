//! dragonlock: a Redlock client for Dragonfly and Redis, built for latency.
#![deny(missing_docs)]

pub mod conn;
mod error;
pub mod resp;

pub use error::{Error, ErrorKind};
