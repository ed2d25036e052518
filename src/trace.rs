//! Events through the `tracing` facade, behind the `tracing` feature (off by default).
//!
//! `event!(LEVEL, fields…, "message")` takes `tracing::event!`'s arguments after the level.
//! Without the feature it expands to nothing: its arguments are not even evaluated, so a
//! call site costs nothing and needs no `cfg` of its own. Events are emitted only where
//! something changes or fails (a node goes up or down, a reconnect, a restart, a lock lost, an
//! acquire that failed): never on the success path of a lock cycle.

#[cfg(feature = "tracing")]
macro_rules! event {
    ($level:ident, $($rest:tt)+) => {
        ::tracing::event!(::tracing::Level::$level, $($rest)+)
    };
}

#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($level:ident, $($rest:tt)+) => {};
}

pub(crate) use event;
