//! dragonlock: a Redlock distributed-lock client for Dragonfly and Redis, built for latency.
//!
//! Redlock takes a lock on N independent primaries at once (`SET key token NX PX ttl` to every
//! node) and holds it when a majority of the *configured* nodes said yes before the lock's
//! validity ran out. dragonlock pipelines those commands onto one persistent socket per node,
//! decides as soon as the quorum is reached or has become impossible, and allocates nothing on
//! the heap for an acquire plus release. It has its own RESP2/RESP3 codec and connection layer.
//!
//! # Example
//!
//! Connect to three nodes, try the lock once, release it. A [`Lock`] is also a guard: dropping
//! it releases in the background.
//!
//! ```no_run
//! use std::time::Duration;
//! use dragonlock::Redlock;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redlock = Redlock::connect(&[
//!     "redis://127.0.0.1:7001",
//!     "redis://127.0.0.1:7002",
//!     "dragonfly://127.0.0.1:7003",
//! ])
//! .await?;
//!
//! match redlock.try_acquire("invoice:17", Duration::from_secs(5)).await {
//!     Ok(lock) => {
//!         // Work while `lock.is_valid()`; check it before each side effect.
//!         let confirmed = lock.release().await?; // nodes that confirmed, at least a quorum
//!         println!("released on {confirmed} nodes");
//!     }
//!     Err(e) if e.is_busy() => println!("held by someone else"),
//!     Err(e) if e.is_unavailable() => println!("too many nodes down: {e}"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(()) }
//! ```
//!
//! Programs that run as they are, against throwaway local servers when given no URL (feature
//! `testing`), are in `examples/`: `quickstart`, `hot_loop` (many tasks on a few hot keys,
//! latency percentiles), `fenced_write` (a store that refuses a stale writer) and `codec` (the
//! sans-IO codec driven by hand), each with `cargo run --example NAME --features testing`.
//!
//! # Layers
//!
//! Three layers, each usable on its own; data flows down through them.
//!
//! | module | what it is | reach for it when |
//! |---|---|---|
//! | [`redlock`] | the algorithm: [`Redlock`] (the manager), [`Lock`] (a held lock and its guard), [`LockSignal`], [`RedlockOptions`], [`LockError`] | you want locks |
//! | [`conn`] | one node: [`conn::Connection`], a persistent, pipelined, cancel-safe connection that reconnects by itself, configured by [`conn::ConnectionConfig`] | you send your own commands to Redis or Dragonfly |
//! | [`resp`] | the sans-IO RESP2/RESP3 codec: [`resp::Frame`], the resumable, bounded [`resp::Decoder`], [`resp::encode_command`] and the prepared lock commands | you embed or fuzz the protocol, with no sockets and no runtime |
//!
//! Connection and configuration failures are an [`Error`] (with [`ErrorKind`] and `is_*`
//! accessors); a lock's outcome is a [`LockError`] with each node's answer
//! ([`LockError::nodes`]).
//!
//! # Features
//!
//! None is on by default: the library alone depends on tokio, bytes, memchr, smallvec, itoa,
//! sha1_smol, rand and libc (the monotonic clock of the round-trip stats; tokio brings it
//! anyway).
//!
//! | feature | what it adds | for |
//! |---|---|---|
//! | *(none)* | [`Redlock`], [`Lock`], [`conn`], [`resp`] | a service that takes locks |
//! | `testing` | `dragonlock::local`: starts throwaway redis-server or Dragonfly processes on 127.0.0.1 | your own tests and benches, and the examples |
//! | `fuzzing` | `dragonlock::resp::fuzzing`: the checks the fuzz targets run | fuzzing, corpus replay |
//! | `tracing` | events through the `tracing` facade: nodes up and down, reconnects, restarts, locks lost, failed acquires (never on a lock cycle's success path) | logs beside [`Redlock::stats`] |
//! | `cli` | the `dragonlock` command (`bench`, `run`, `ping`, `fuzz-server`); implies `testing` and `tls` | `cargo install --path . --features cli` (from a checkout: not published yet) |
//!
//! # What is guaranteed
//!
//! - **Mutual exclusion**, under Redlock's assumptions (independent primaries, clock drift
//!   within [`RedlockOptions::drift_factor`]): a [`Lock`] is returned only when a quorum
//!   granted it inside its validity, `ttl − elapsed − (ttl × drift_factor + 2 ms)`, timed with
//!   `Instant` from before the first byte is written. [`Lock::extend`] succeeds only with a
//!   quorum inside the current validity, and a release that fewer than a quorum confirm is an
//!   error. [`Redlock::with_lock`] renews the lock beside its body and drops the body when the
//!   lock is lost.
//! - **Fencing tokens**, where turned on ([`RedlockOptions::fencing`]): if one grant of a
//!   resource ends before another's acquire begins, the later [`Lock::fencing_token`] is
//!   larger. A resource that refuses lower tokens is then safe from a holder that paused.
//! - **No crossed replies**: a connection never hands one caller's reply to another, and
//!   dropping a request's future at any point is safe (its reply is read and thrown away).
//!
//! # What it does not protect against
//!
//! - A node that **restarts without persistence** forgets the locks it granted; turn on
//!   [`RedlockOptions::restart_delay`] (at least the longest ttl; twice that with fencing).
//! - A node restored from an **older snapshot**, or a **replica promoted** by a failover,
//!   brings back old state: Redlock needs independent primaries (`dragonlock ping` checks).
//! - A node's **wall clock stepping** forward expires keys early; no client can notice.
//! - A **holder that pauses** past its validity goes on working under a lock it no longer
//!   has, unless the resource checks a fencing token.
//!
//! The README's "Faults" section has the fault model, the figures of the safety checker and
//! what each of these looks like; `DESIGN.md` has the decisions and the numbers behind them.
#![deny(missing_docs)]

pub mod conn;
mod error;
#[cfg(feature = "testing")]
pub mod local;
pub mod redlock;
pub mod resp;
mod trace;

pub use error::{Error, ErrorKind, TlsFailure};
pub use redlock::{
    Holders, Lock, LockError, LockErrorKind, LockSignal, LockStats, NodeHolder, NodeResult,
    Redlock, RedlockOptions, RedlockStats, ReleaseWait, MAX_TOKEN_PREFIX, TOKEN_RANDOM_LEN,
};

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
