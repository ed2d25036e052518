//! dragonlock: a Redlock client for Dragonfly and Redis, built for latency.
//!
//! Three layers, each usable on its own (see `DESIGN.md`):
//! - [`resp`]: a sans-IO RESP2/RESP3 codec (no sockets, no runtime).
//! - [`conn`]: one persistent, pipelined, cancel-safe connection per node.
//! - [`redlock`]: the algorithm: [`Redlock`], [`Lock`], [`LockError`].
//!
//! Features (none by default): `cli` builds the `dragonlock` command, `testing` adds `local`
//! (throwaway servers for tests and benches), `fuzzing` adds `resp::fuzzing`.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let redlock = dragonlock::Redlock::connect(&["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"]).await?;
//! let lock = redlock.acquire("invoice:17", Duration::from_secs(5)).await?;
//! assert!(lock.is_valid());
//! lock.release().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod conn;
mod error;
#[cfg(feature = "testing")]
pub mod local;
pub mod redlock;
pub mod resp;

pub use error::{Error, ErrorKind};
pub use redlock::{
    Holders, Lock, LockError, LockErrorKind, LockSignal, NodeHolder, NodeResult, Redlock,
    RedlockOptions, ReleaseWait, MAX_TOKEN_PREFIX, TOKEN_RANDOM_LEN,
};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
