//! The `tracing` feature's events, captured by a small test subscriber: what a node going down
//! and coming back, a busy key and a lost lock emit, and that a successful lock cycle emits
//! nothing at all. Needs `--features tracing` (`required-features` in Cargo.toml).

mod support;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonlock::RedlockOptions;
use support::server::{cluster, Server};
use support::{eventually, redlock_over};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// One event as captured: its level, message, and the other fields as `name=value`.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: String,
}

/// Keeps every event of this crate's targets; no spans (the crate makes none).
#[derive(Clone, Default)]
struct Capture {
    events: Arc<Mutex<Vec<Captured>>>,
}

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    fn any(&self, pred: impl Fn(&Captured) -> bool) -> bool {
        self.events.lock().unwrap().iter().any(pred)
    }
}

struct Fields<'a>(&'a mut Captured);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.message = format!("{value:?}");
        } else {
            let _ = write!(self.0.fields, "{}={:?} ", field.name(), value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.message = value.to_string();
        } else {
            let _ = write!(self.0.fields, "{}={} ", field.name(), value);
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("dragonlock")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut captured = Captured {
            level: *event.metadata().level(),
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut Fields(&mut captured));
        self.events.lock().unwrap().push(captured);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

const WAIT: Duration = Duration::from_secs(5);

/// Current-thread runtime: the connections' driver runs on the test's thread, so the
/// thread-local default subscriber sees its events too.
#[tokio::test]
async fn nodes_going_down_and_failures_emit_events_and_a_lock_cycle_emits_none() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());

    let mut servers = cluster(3);
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let redlock = redlock_over(&urls, RedlockOptions::default().retry_count(0)).await;
    let up = capture.take();
    for s in &servers {
        let node = format!("node={}", s.addr());
        assert!(
            up.iter()
                .any(|e| e.message == "node up" && e.fields.contains(&node)),
            "no `node up` for {node}: {up:?}"
        );
    }

    // The success path: nothing, at any level.
    let ttl = Duration::from_secs(10);
    for _ in 0..5 {
        let lock = redlock.try_acquire("tracing:k", ttl).await.unwrap();
        lock.release().await.unwrap();
    }
    let idle = || redlock.nodes().iter().all(|n| n.in_flight() == 0);
    assert!(eventually(WAIT, idle).await);
    let quiet = capture.take();
    assert!(quiet.is_empty(), "events on the success path: {quiet:?}");

    // A busy key: the failed acquire, with each node's answer.
    let mut held = redlock.try_acquire("tracing:k", ttl).await.unwrap();
    assert!(redlock
        .try_acquire("tracing:k", ttl)
        .await
        .unwrap_err()
        .is_busy());
    let failed = capture.take();
    let busy = failed
        .iter()
        .find(|e| e.message == "acquire failed")
        .unwrap_or_else(|| panic!("no `acquire failed`: {failed:?}"));
    assert_eq!(
        busy.level,
        Level::DEBUG,
        "a busy key is an answer: {busy:?}"
    );
    for s in &servers {
        assert!(busy.fields.contains(&s.addr()), "per-node detail: {busy:?}");
    }

    // A lost lock: its keys vanish, the extension fails.
    for s in &servers {
        s.cmd(&["DEL", "tracing:k"]);
    }
    assert!(held.extend(ttl).await.unwrap_err().is_lost());
    let lost = capture.take();
    assert!(
        lost.iter().any(|e| e.message == "lock lost"
            && e.level == Level::WARN
            && e.fields.contains("tracing:k")),
        "{lost:?}"
    );
    let _ = held.release().await;

    // A killed node: `node down` with the reason, then reconnect attempts.
    servers[0].kill9();
    let node0 = format!("node={}", servers[0].addr());
    let down = |e: &Captured| {
        e.message == "node down" && e.level == Level::WARN && e.fields.contains(&node0)
    };
    assert!(
        eventually(WAIT, || capture.any(down)).await,
        "no `node down` for {node0}: {:?}",
        capture.take()
    );
    assert!(capture.any(|e| e.message == "node down" && e.fields.contains("reason=")));
    assert!(
        eventually(WAIT, || capture.any(|e| e.message == "reconnecting")).await,
        "no reconnect attempt: {:?}",
        capture.take()
    );

    // Back: `node up`, and on Redis (a new run_id) the restart.
    servers[0].restart();
    let back = |e: &Captured| e.message == "node up" && e.fields.contains(&node0);
    assert!(
        eventually(WAIT, || capture.any(back)).await,
        "no `node up` after the restart: {:?}",
        capture.take()
    );
    let has_run_id = matches!(
        redlock.nodes()[0]
            .server_info()
            .and_then(|i| i.restart_marker.clone()),
        Some(dragonlock::conn::RestartMarker::RunId(_))
    );
    if has_run_id {
        assert!(capture.any(|e| e.message.starts_with("server restart detected")));
    }
}
