//! Shared test support: real servers, fixtures, fake servers, a fault proxy.
#![allow(dead_code)]

pub mod checker;
pub mod cli;
pub mod fake;
pub mod fixtures;
pub mod pki;
pub mod proxy;
pub mod server;

use std::time::Duration;

use dragonlock::conn::ConnectionConfig;
use dragonlock::{Redlock, RedlockOptions};

/// A Redlock over `urls` with fast reconnects (5 ms doubling to 200 ms), once every node is
/// connected (bounded: 5 s each).
pub async fn redlock_over<S: AsRef<str>>(urls: &[S], options: RedlockOptions) -> Redlock {
    let configs = urls
        .iter()
        .map(|u| ConnectionConfig::from_url(u.as_ref()).unwrap())
        .collect();
    redlock_over_configs(configs, options).await
}

/// [`redlock_over`] with connection configs, for nodes that need their own settings.
pub async fn redlock_over_configs(
    configs: Vec<ConnectionConfig>,
    options: RedlockOptions,
) -> Redlock {
    let configs = configs
        .into_iter()
        .map(|c| c.backoff(Duration::from_millis(5), Duration::from_millis(200)))
        .collect();
    let r = Redlock::from_configs(configs, options.connect_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    for n in r.nodes() {
        n.wait_connected(Duration::from_secs(5)).await.unwrap();
    }
    r
}

/// Says, by the test's name, that part of a test does not run on this server and why. Written
/// to the process's stderr directly, past the test harness's capture, so the reason shows in
/// every run's log, passing or not: a skipped check is never a silent pass.
pub fn not_on_this_server(test: &str, reason: &str) {
    use std::io::Write;
    let flavor = server::binary().1;
    let line = format!("{test}: not run on {flavor:?}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// True once `check` holds, polling every 20 ms for at most `within`. For effects that are on
/// their way (requests sent whose answers were not awaited, a reconnect, a key running out).
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Yields (bounded: 10 s) while a node of `r` has more than `backlog` requests in flight, until
/// every node is down to half of it. A quorum does not wait for a node whose server a loaded
/// machine starves, so that node's requests in flight can grow until its acquires are refused
/// for want of slots (`Overloaded`, by design); tests about something else keep the backlog
/// small with this. Waits by yielding: no timer, nothing allocated.
pub async fn keep_up(r: &Redlock, backlog: usize) {
    if r.nodes().iter().all(|n| n.in_flight() <= backlog) {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.nodes().iter().any(|n| n.in_flight() > backlog / 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "a node did not catch up in 10 s"
        );
        tokio::task::yield_now().await;
    }
}
