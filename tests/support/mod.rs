//! Shared test support: real servers, fixtures, fake servers, a fault proxy.
#![allow(dead_code)]

pub mod fake;
pub mod fixtures;
pub mod server;
