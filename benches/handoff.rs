//! Hand-off on a contended key, against 5 local redis-servers, every variant in one run:
//! polling (`wake_on_release(false)`, the retry delay of 50 ms plus up to 50 ms) against
//! wake-on-release, with the wake jitter at its default (1 ms) and at zero.
//!
//! 1. *Hand-off latency*: one holder, one waiter of another manager already asleep in its
//!    retry delay; from the holder's `release` returning to the waiter's `acquire` returning.
//!    The variants take turns round by round, in a new random order each round.
//! 2. *Contended*: 16 tasks take one lock in a loop (acquire, release) for a fixed time;
//!    acquisitions/s, the hand-off between a release returning and the next grant, failed
//!    acquires (retries spent), and the spread of grants over the 16 tasks (min/max). Once
//!    with the 16 tasks on one manager (one process), once spread over 4 managers of 4 tasks
//!    (4 processes: waiters woken by one release race each other).
//! 3. *The release's cost*: uncontended `try_acquire` + `release` with the notification on and
//!    off, interleaved; on Redis 7.0 the release script with and without its `PUBLISH` (to a
//!    channel nobody listens to).
//!
//! Not criterion: the figures are distributions over rounds that take up to 100 ms each. Run
//! with `flock /tmp/dragonlock-bench.lock cargo bench --bench handoff`; `HANDOFF_ROUNDS`,
//! `HANDOFF_SECS` and `HANDOFF_CYCLES` shorten it (the `cargo bench --no-run` smoke builds it),
//! and `HANDOFF_RETRY_DELAY_MS` replaces the default retry delay (and its jitter) with
//! `retry_count(1000)`, to look at the wake-ups without the polls.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonlock::{Redlock, RedlockOptions};
use rand::seq::SliceRandom;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    wake: bool,
    jitter: Duration,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "polling",
        wake: false,
        jitter: Duration::ZERO,
    },
    Variant {
        name: "wake, jitter 1 ms",
        wake: true,
        jitter: Duration::from_millis(1),
    },
    Variant {
        name: "wake, jitter 0",
        wake: true,
        jitter: Duration::ZERO,
    },
];

fn options(v: Variant) -> RedlockOptions {
    let o = RedlockOptions::default()
        .wake_on_release(v.wake)
        .wake_jitter(v.jitter);
    match std::env::var("HANDOFF_RETRY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(ms) => o
            .retry_delay(Duration::from_millis(ms), Duration::from_millis(ms))
            .retry_count(1_000),
        None => o,
    }
}

async fn manager(urls: &[String], options: RedlockOptions) -> Redlock {
    let r = Redlock::connect_with(urls, options).await.unwrap();
    for n in r.nodes() {
        n.wait_connected(Duration::from_secs(5)).await.unwrap();
    }
    r
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One hand-off: the holder holds, the waiter starts waiting, and once it sleeps in its retry
/// delay the holder releases. Returns release-returned to acquire-returned.
async fn one_handoff(holder: &Redlock, waiter: &Redlock, resource: &'static str) -> Duration {
    let ttl = Duration::from_secs(10);
    let held = holder.try_acquire(resource, ttl).await.unwrap();
    let w = waiter.clone();
    let waiting = tokio::spawn(async move {
        let lock = w.acquire(resource, ttl).await.unwrap();
        let at = Instant::now();
        lock.release().await.unwrap();
        at
    });
    // Long enough for its first attempt, its subscription and the attempt the subscription's
    // confirmation starts (a few round trips), short against the retry delay it then sleeps.
    tokio::time::sleep(Duration::from_millis(5)).await;
    held.release().await.unwrap();
    let released = Instant::now();
    let acquired = waiting.await.unwrap();
    acquired.saturating_duration_since(released)
}

struct Contended {
    per_task: Vec<u64>,
    failed: u64,
    handoffs: Vec<Duration>,
    elapsed: Duration,
}

/// `managers` managers of `16 / managers` tasks each take one lock in a loop for `secs`.
async fn contended(urls: &[String], v: Variant, managers: usize, secs: u64) -> Contended {
    const TASKS: usize = 16;
    let mut ms = Vec::new();
    for _ in 0..managers {
        ms.push(manager(urls, options(v)).await);
    }
    // When the last release returned; the next grant measures the hand-off from it.
    let last_release: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let handoffs = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let r = ms[t % managers].clone();
        let (last_release, handoffs) = (last_release.clone(), handoffs.clone());
        tasks.push(tokio::spawn(async move {
            let (mut grants, mut failed) = (0u64, 0u64);
            while Instant::now() < end {
                match r.acquire("bench:contended", Duration::from_secs(10)).await {
                    Ok(lock) => {
                        let now = Instant::now();
                        if let Some(at) = last_release.lock().unwrap().take() {
                            handoffs.lock().unwrap().push(now - at);
                        }
                        grants += 1;
                        lock.release().await.unwrap();
                        *last_release.lock().unwrap() = Some(Instant::now());
                    }
                    Err(e) if e.is_busy() || e.is_no_quorum() => failed += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (grants, failed)
        }));
    }
    let mut per_task = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (g, f) = t.await.unwrap();
        per_task.push(g);
        failed += f;
    }
    let elapsed = start.elapsed();
    let mut handoffs = std::mem::take(&mut *handoffs.lock().unwrap());
    handoffs.sort_unstable();
    Contended {
        per_task,
        failed,
        handoffs,
        elapsed,
    }
}

/// Uncontended cycles with the notification on and off, interleaved: the release's cost.
async fn release_cost(urls: &[String], cycles: u64) {
    let on = manager(urls, RedlockOptions::default()).await;
    let off = manager(urls, RedlockOptions::default().wake_on_release(false)).await;
    let paths: Vec<&str> = on
        .nodes()
        .iter()
        .map(|n| if n.has_delex() { "DELEX" } else { "EVALSHA" })
        .collect();
    let mut times: [Vec<Duration>; 2] = Default::default();
    let mut release: [Vec<Duration>; 2] = Default::default();
    let mut order = [0usize, 1];
    let mut rng = rand::rng();
    for i in 0..cycles + 500 {
        order.shuffle(&mut rng);
        for &k in &order {
            let r = if k == 0 { &off } else { &on };
            let t0 = Instant::now();
            let lock = r
                .try_acquire("bench:release-cost", Duration::from_secs(30))
                .await
                .unwrap();
            let t1 = Instant::now();
            lock.release().await.unwrap();
            if i >= 500 {
                times[k].push(t0.elapsed());
                release[k].push(t1.elapsed());
            }
        }
    }
    for v in times.iter_mut().chain(&mut release) {
        v.sort_unstable();
    }
    let p50 = |v: &[Duration]| quantile(v, 0.5);
    println!(
        "\n## Release cost ({cycles} uncontended cycles each, interleaved; release path {paths:?})"
    );
    println!(
        "cycle p50: notify off {}, on {} ({:.3}x); release phase p50: off {}, on {} ({:.3}x)",
        ms(p50(&times[0])),
        ms(p50(&times[1])),
        p50(&times[1]).as_secs_f64() / p50(&times[0]).as_secs_f64(),
        ms(p50(&release[0])),
        ms(p50(&release[1])),
        p50(&release[1]).as_secs_f64() / p50(&release[0]).as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful either.
    let servers = common::server::cluster(5);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rounds = env("HANDOFF_ROUNDS", 60);
    let secs = env("HANDOFF_SECS", 3);
    let cycles = env("HANDOFF_CYCLES", 3_000);
    rt.block_on(async {
        println!("# Hand-off, 5 local redis-servers, {} round(s)", rounds);
        let mut pairs = Vec::new();
        for v in VARIANTS {
            pairs.push((
                manager(&urls, options(v)).await,
                manager(&urls, options(v)).await,
            ));
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
        let mut order: Vec<usize> = (0..VARIANTS.len()).collect();
        let mut rng = rand::rng();
        for _ in 0..rounds {
            order.shuffle(&mut rng);
            for &k in &order {
                let (holder, waiter) = &pairs[k];
                samples[k].push(one_handoff(holder, waiter, "bench:handoff").await);
            }
        }
        println!("\n## Release to next holder (one waiter)");
        for (v, s) in VARIANTS.iter().zip(&mut samples) {
            s.sort_unstable();
            println!(
                "{:<18} p50 {}  p99 {}  min {}  max {}",
                v.name,
                ms(quantile(s, 0.5)),
                ms(quantile(s, 0.99)),
                ms(s[0]),
                ms(s[s.len() - 1])
            );
        }

        for managers in [1usize, 4] {
            println!("\n## 16 tasks contending for one lock, {managers} manager(s), {secs} s each");
            for v in VARIANTS {
                let c = contended(&urls, v, managers, secs).await;
                let total: u64 = c.per_task.iter().sum();
                println!(
                    "{:<18} {:>7.0} acquisitions/s  hand-off p50 {}  p99 {}  grants per task \
                     min {} max {}  failed acquires {}",
                    v.name,
                    total as f64 / c.elapsed.as_secs_f64(),
                    ms(quantile(&c.handoffs, 0.5)),
                    ms(quantile(&c.handoffs, 0.99)),
                    c.per_task.iter().min().unwrap(),
                    c.per_task.iter().max().unwrap(),
                    c.failed,
                );
            }
        }

        release_cost(&urls, cycles).await;
    });
    drop(servers);
}
