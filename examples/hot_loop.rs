//! A trading-style hot loop: one `Redlock` shared by many tasks, each taking one of a few hot
//! keys with a single `try_acquire` (no retries: a busy key is an answer, not something to wait
//! for), doing a moment of work and releasing. Prints throughput and latency percentiles of
//! each step.
//!
//! ```sh
//! cargo run --release --example hot_loop --features testing                 # 5 local servers
//! cargo run --release --example hot_loop --features testing -- redis://127.0.0.1:7001 …
//! ```
//!
//! Bounded: it stops after `RUN_FOR` or `MAX_ATTEMPTS_PER_TASK` attempts per task, whichever
//! comes first. The figures are indicative only: a debug build, or a machine busy with other
//! work, measures mostly itself. `dragonlock bench` is the tool for figures to compare.
//!
//! Errors are counted and the first few printed. On a saturated machine (a debug build, say)
//! one node can fall far enough behind that its connection refuses new acquires once 768 of
//! the default 1,024 slots are in flight (`Overloaded`: failing fast instead of queueing
//! without bound; the last quarter is kept for releases, see `Connection::send_acquire`); an
//! attempt that then can reach neither a quorum nor a busy verdict ends `NoQuorum`.

mod common;

use std::time::{Duration, Instant};

use dragonlock::{Redlock, RedlockOptions};

/// Concurrent tasks sharing the one `Redlock` (and its one connection per node).
const TASKS: usize = 32;
/// The hot keys they contend for.
const HOT_KEYS: usize = 4;
/// How long the loop runs.
const RUN_FOR: Duration = Duration::from_secs(2);
/// A bound on each task's attempts, so that a very fast setup still stops early.
const MAX_ATTEMPTS_PER_TASK: usize = 20_000;
/// The lock's ttl: long enough that a held lock never expires during its moment of work.
const TTL: Duration = Duration::from_secs(1);

/// What one task measured.
#[derive(Default)]
struct Samples {
    granted: Vec<Duration>,
    busy: Vec<Duration>,
    release: Vec<Duration>,
    errors: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = common::Nodes::from_args_or_local(5)?;
    let redlock = Redlock::connect_with(
        &nodes.urls,
        // A key prefix keeps the example's keys apart from anything else on the nodes.
        RedlockOptions::default().key_prefix("dragonlock-example:hot:"),
    )
    .await?;
    redlock.wait_for_quorum(Duration::from_secs(5)).await?;

    let started = Instant::now();
    let deadline = started + RUN_FOR;
    let mut handles = Vec::with_capacity(TASKS);
    for task in 0..TASKS {
        let redlock = redlock.clone(); // a handle on the same connections: no new sockets
        handles.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            for i in 0..MAX_ATTEMPTS_PER_TASK {
                if Instant::now() >= deadline {
                    break;
                }
                let key = format!("book:{}", (task * 7 + i) % HOT_KEYS);
                let t0 = Instant::now();
                match redlock.try_acquire(&key, TTL).await {
                    Ok(lock) => {
                        samples.granted.push(t0.elapsed());
                        // The critical section: check the lock is still valid before acting.
                        assert!(lock.is_valid());
                        let t1 = Instant::now();
                        match lock.release().await {
                            Ok(_) => samples.release.push(t1.elapsed()),
                            Err(e) => samples.errors.push(format!("release: {e}")),
                        }
                    }
                    Err(e) if e.is_busy() => samples.busy.push(t0.elapsed()),
                    Err(e) => samples.errors.push(format!("try_acquire: {e}")),
                }
            }
            samples
        }));
    }

    let mut all = Samples::default();
    for handle in handles {
        let s = handle.await?;
        all.granted.extend(s.granted);
        all.busy.extend(s.busy);
        all.release.extend(s.release);
        all.errors.extend(s.errors);
    }
    let elapsed = started.elapsed();

    let attempts = all.granted.len() + all.busy.len();
    println!(
        "{TASKS} tasks, {HOT_KEYS} hot keys, {:.2} s: {attempts} attempts ({:.0}/s), {} granted ({:.0}/s), {} busy, {} errors",
        elapsed.as_secs_f64(),
        attempts as f64 / elapsed.as_secs_f64(),
        all.granted.len(),
        all.granted.len() as f64 / elapsed.as_secs_f64(),
        all.busy.len(),
        all.errors.len(),
    );
    println!(
        "{:<22}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "µs", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, samples) in [
        ("try_acquire, granted", &mut all.granted),
        ("try_acquire, busy", &mut all.busy),
        ("release", &mut all.release),
    ] {
        samples.sort_unstable();
        print!("{name:<22}{:>8}", samples.len());
        for q in [0.50, 0.90, 0.99, 0.999, 1.0] {
            print!("{:>10.1}", percentile(samples, q).as_secs_f64() * 1e6);
        }
        println!();
    }
    for e in all.errors.iter().take(5) {
        println!("error: {e}");
    }
    if all.granted.is_empty() {
        return Err("no lock was granted".into());
    }
    Ok(())
}

/// The smallest sample at or above the fraction `q` of a sorted list (nearest rank); zero for
/// an empty one.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
