//! `dragonlock bench`: lock throughput and latency, with an optional same-run baseline.
//!
//! `--baseline` runs the single-loop client (`cli/baseline.rs`) after dragonlock, with the
//! same workers, workload and servers. The JSON then has `baseline` (shaped as `dragonlock`),
//! `ratio_to_baseline` (`throughput`: dragonlock's rate over the baseline's; `cycle_p50`,
//! `cycle_p99`: dragonlock's latency over the baseline's), `setup.baseline` (`"single-loop"`)
//! and `setup.baseline_release` (`"evalsha"`, `"delex"` or `"mixed"`). The keys are the ones
//! the older baseline had (until 2026-11-30: a plain socket per worker per node, released
//! with `DEL`), plus the two `setup` keys; figures from before that date compare against
//! that weaker client.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::baseline::{self, Baseline};
use crate::{fail, node_configs, EXIT_UNAVAILABLE, EXIT_USAGE};
use dragonlock::{LockErrorKind, Redlock, RedlockOptions, ReleaseWait};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Acquire then release, each worker on its own resource.
    Uncontended,
    /// Acquire then release on --resources shared resources (busy answers are counted).
    Contended,
    /// Acquire only; keys expire at the ttl.
    AcquireOnly,
    /// One lock per worker, extended over and over.
    Extend,
    /// Acquire then release three resources at once.
    Multi,
}

/// How long `release` waits: the CLI's face of [`ReleaseWait`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseWaitArg {
    /// For every node's answer: an exact count of nodes released.
    All,
    /// Until a quorum released (the library's default); the other nodes still get the request.
    Quorum,
}

impl From<ReleaseWaitArg> for ReleaseWait {
    fn from(w: ReleaseWaitArg) -> ReleaseWait {
        match w {
            ReleaseWaitArg::All => ReleaseWait::All,
            ReleaseWaitArg::Quorum => ReleaseWait::Quorum,
        }
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Nodes: host:port or redis:// URLs, comma-separated. Default: 5 local servers started here.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// What each worker does.
    #[arg(long, value_enum, default_value = "uncontended")]
    workload: Workload,
    /// Concurrent workers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many cycles instead (whichever comes first).
    #[arg(long)]
    ops: Option<u64>,
    /// Warm-up before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Lock ttl.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ttl: Duration,
    /// Shared resources for the contended workload.
    #[arg(long, default_value_t = 4)]
    resources: usize,
    /// Start this many of the local servers stopped (SIGSTOP): a dead minority should cost nothing.
    #[arg(long, default_value_t = 0)]
    nodes_down: usize,
    /// Also run the single-loop baseline (one task owning every node socket, the same lock
    /// cycle and release command as dragonlock) with the same workers, and print the ratios.
    /// Workloads: uncontended, contended, acquire-only.
    #[arg(long)]
    baseline: bool,
    /// Release with the Lua script even where the server has DELEX.
    #[arg(long)]
    force_script: bool,
    /// How long each of dragonlock's releases waits for the nodes' answers (the baseline always
    /// stops at a quorum, as `quorum` does).
    #[arg(long, value_enum, default_value = "quorum")]
    release_wait: ReleaseWaitArg,
    /// Print the results as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Outcomes {
    granted: u64,
    busy: u64,
    no_quorum: u64,
    unavailable: u64,
    expired: u64,
    other: u64,
    /// Releases that returned a count, and the nodes they counted: with `--release-wait all`
    /// every node that deleted the key, with `quorum` the nodes that had when it returned.
    releases: u64,
    released_nodes: u64,
}

struct Results {
    cycles: u64,
    elapsed: Duration,
    acquire: Histogram<u64>,
    release: Histogram<u64>,
    cycle: Histogram<u64>,
    outcomes: Outcomes,
    cpu: Duration,
}

/// What one worker measured.
struct WorkerOut {
    acquire: Histogram<u64>,
    release: Histogram<u64>,
    cycle: Histogram<u64>,
    outcomes: Outcomes,
    cycles: u64,
}

/// Waits for the workers and merges what they measured. Client CPU is read over the measured
/// window only: from the end of the warm-up to the last worker's end.
async fn gather(
    workers: Vec<tokio::task::JoinHandle<WorkerOut>>,
    measure_from: Instant,
    end: Instant,
) -> Results {
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_time();
    let mut r = Results {
        cycles: 0,
        elapsed: Duration::ZERO,
        acquire: hist(),
        release: hist(),
        cycle: hist(),
        outcomes: Outcomes::default(),
        cpu: Duration::ZERO,
    };
    for w in workers {
        let w = w.await.expect("bench worker");
        r.acquire.add(&w.acquire).ok();
        r.release.add(&w.release).ok();
        r.cycle.add(&w.cycle).ok();
        r.cycles += w.cycles;
        let (t, o) = (&mut r.outcomes, w.outcomes);
        t.granted += o.granted;
        t.busy += o.busy;
        t.no_quorum += o.no_quorum;
        t.unavailable += o.unavailable;
        t.expired += o.expired;
        t.other += o.other;
        t.releases += o.releases;
        t.released_nodes += o.released_nodes;
    }
    r.cpu = cpu_time().saturating_sub(cpu0);
    r.elapsed = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from)
        .max(Duration::from_millis(1));
    r
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// The live progress line's histogram: 2 significant digits are plenty for a p99 shown once a
/// second, and merging one costs an eighth of a 3-digit one (27,648 counters walked per merge).
fn coarse_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("histogram bounds")
}

/// How often a worker merges its progress histogram into the shared one: as often as the line
/// is printed. It was every 200 ms, with 3-digit histograms: 64 workers then walked and cleared
/// 320 × 27,648 counters a second, about 2% of a core (~0.5 µs of "client CPU" per cycle at
/// 45k cycles/s, estimated), charged to both clients alike, which narrowed every CPU ratio.
/// Under callgrind, where a run is ~50x slower and time-driven work grows with it, the merges
/// were over 90% of the instructions at 64 workers.
const PROGRESS_FLUSH: Duration = Duration::from_secs(1);

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Progress {
    cycles: AtomicU64,
    errors: AtomicU64,
    recent: Mutex<Histogram<u64>>,
    done: AtomicBool,
}

pub async fn run(args: BenchArgs) -> ExitCode {
    if args.concurrency == 0 {
        return fail(EXIT_USAGE, "--concurrency must be at least 1");
    }
    let drift = args.ttl.mul_f64(dragonlock::redlock::DEFAULT_DRIFT_FACTOR)
        + dragonlock::redlock::DRIFT_FIXED;
    if args.ttl <= drift + Duration::from_millis(1) {
        return fail(
            EXIT_USAGE,
            format!(
                "--ttl {:?} is too small: it must exceed the drift allowance of {drift:?}",
                args.ttl
            ),
        );
    }
    if args.workload == Workload::Contended && args.resources == 0 {
        return fail(EXIT_USAGE, "--resources must be at least 1");
    }
    if args.baseline && matches!(args.workload, Workload::Extend | Workload::Multi) {
        return fail(
            EXIT_USAGE,
            "--baseline runs the uncontended, contended and acquire-only workloads",
        );
    }
    let mut local = Vec::new();
    let mut server_bin = String::new();
    let configs = if args.nodes.is_empty() {
        if args.nodes_down >= 3 {
            return fail(
                EXIT_USAGE,
                "--nodes-down must leave a majority of the 5 local servers up (at most 2)",
            );
        }
        match crate::cli::servers::start(5) {
            Ok((servers, bin)) => {
                local = servers;
                server_bin = bin;
            }
            Err(e) => return fail(EXIT_UNAVAILABLE, e),
        }
        for s in local.iter_mut().take(args.nodes_down) {
            s.stop();
        }
        node_configs(&local.iter().map(|s| s.addr()).collect::<Vec<_>>()).expect("local addresses")
    } else {
        if args.nodes_down > 0 {
            return fail(
                EXIT_USAGE,
                "--nodes-down works only with the local servers (no --nodes)",
            );
        }
        match node_configs(&args.nodes) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_USAGE, e),
        }
    };
    let addrs: Vec<String> = configs.iter().map(|c| c.addr()).collect();
    let options = RedlockOptions::default()
        .retry_count(0)
        .force_script_release(args.force_script)
        .release_wait(args.release_wait.into())
        .connect_timeout(Duration::from_secs(3));
    // Each worker holds a slot per node while it waits, and another for a reply that comes after
    // the quorum: four per worker leaves room, so the bench measures the nodes, not the bound.
    let slots = (4 * args.concurrency).max(dragonlock::conn::DEFAULT_MAX_IN_FLIGHT);
    let configs = configs
        .into_iter()
        .map(|c| {
            c.handshake_timeout(Duration::from_secs(2))
                .max_in_flight(slots)
        })
        .collect();
    let redlock = match Redlock::from_configs(configs, options).await {
        Ok(r) => r,
        // An empty or repeated node list.
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let up: Vec<bool> = redlock.nodes().iter().map(|n| n.is_connected()).collect();
    if args.nodes_down == 0 {
        if let Some(i) = up.iter().position(|u| !u) {
            let why = redlock.nodes()[i]
                .last_error()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no answer".into());
            return fail(EXIT_USAGE, format!("cannot reach node {}: {why}", addrs[i]));
        }
    }
    let info = redlock
        .nodes()
        .iter()
        .find_map(|n| n.server_info())
        .unwrap_or_default();
    let server = match &info.dragonfly_version {
        Some(v) => format!("dragonfly {v}"),
        None => format!("redis {}", info.version),
    };
    let release_paths: Vec<&str> = redlock
        .nodes()
        .iter()
        .map(|n| {
            if !n.is_connected() {
                "down"
            } else if n.has_delex() && !args.force_script {
                "DELEX"
            } else {
                "EVALSHA"
            }
        })
        .collect();

    let results = measure(&args, |_| Runner::Dragonlock(redlock.clone()), "bench").await;
    let mut baseline_release = None;
    let baseline = if args.baseline {
        let live: Vec<String> = addrs
            .iter()
            .zip(&up)
            .filter(|(_, u)| **u)
            .map(|(a, _)| a.clone())
            .collect();
        let connected = Baseline::connect(
            &live,
            addrs.len(),
            args.ttl,
            args.force_script,
            args.concurrency,
        )
        .await;
        let mut base = match connected {
            Ok(b) => b,
            Err(e) => return fail(EXIT_UNAVAILABLE, format!("baseline: {e}")),
        };
        baseline_release = Some(base.release_command());
        Some(measure(&args, |_| Runner::Baseline(base.client()), "bench:base").await)
    } else {
        None
    };

    let setup = serde_json::json!({
        "nodes": addrs,
        "nodes_down": args.nodes_down,
        "server": server,
        "server_binary": server_bin,
        "protocol": info.protocol,
        "release_path": release_paths,
        "release_wait": format!("{:?}", args.release_wait).to_lowercase(),
        "baseline": args.baseline.then_some("single-loop"),
        "baseline_release": baseline_release,
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "concurrency": args.concurrency,
        "ttl_ms": args.ttl.as_millis() as u64,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    report(&args, &results, baseline.as_ref(), setup);
    drop(redlock);
    drop(local);
    ExitCode::SUCCESS
}

fn classify(outcomes: &mut Outcomes, kind: LockErrorKind) {
    match kind {
        LockErrorKind::Busy => outcomes.busy += 1,
        LockErrorKind::NoQuorum => outcomes.no_quorum += 1,
        LockErrorKind::Unavailable => outcomes.unavailable += 1,
        LockErrorKind::Expired => outcomes.expired += 1,
        _ => outcomes.other += 1,
    }
}

/// Who a worker's cycles go through.
enum Runner {
    Dragonlock(Redlock),
    Baseline(baseline::Client),
}

/// Runs `args.concurrency` workers, each with the client `runner` makes for it, on keys under
/// `prefix`.
async fn measure(
    args: &BenchArgs,
    mut runner: impl FnMut(usize) -> Runner,
    prefix: &str,
) -> Results {
    let progress = Arc::new(Progress {
        cycles: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        recent: Mutex::new(coarse_hist()),
        done: AtomicBool::new(false),
    });
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let per_worker_ops = args.ops.map(|o| o.div_ceil(args.concurrency as u64));
    let reporter = tokio::spawn(show_progress(
        progress.clone(),
        measure_from,
        end,
        args.json,
    ));
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut runner = runner(w);
        let progress = progress.clone();
        let (workload, ttl, resources) = (args.workload, args.ttl, args.resources);
        let prefix = prefix.to_string();
        workers.push(tokio::spawn(async move {
            let (mut acq, mut rel, mut cyc) = (hist(), hist(), hist());
            let mut recent = coarse_hist();
            let mut outcomes = Outcomes::default();
            let mut cycles = 0u64;
            let own = format!("{prefix}:w{w}");
            let multi = [
                format!("{prefix}:w{w}:a"),
                format!("{prefix}:w{w}:b"),
                format!("{prefix}:w{w}:c"),
            ];
            let mut held = None;
            let mut i = 0u64;
            let mut last_flush = Instant::now();
            loop {
                let now = Instant::now();
                if now >= end || per_worker_ops.is_some_and(|o| cycles >= o) {
                    break;
                }
                let measuring = now >= measure_from;
                i += 1;
                let t0 = Instant::now();
                let (outcome, t1) = match (workload, &mut runner) {
                    (Workload::Uncontended | Workload::Contended | Workload::AcquireOnly, r) => {
                        let contended;
                        let resource: &str = match workload {
                            Workload::Contended => {
                                let n = i as usize % resources;
                                contended = format!("{prefix}:shared:{n}");
                                &contended
                            }
                            Workload::AcquireOnly => {
                                contended = format!("{own}:{i}");
                                &contended
                            }
                            _ => &own,
                        };
                        let release = workload != Workload::AcquireOnly;
                        single_key_cycle(r, resource, ttl, release).await
                    }
                    (_, Runner::Baseline(_)) => unreachable!("refused before the run"),
                    (Workload::Multi, Runner::Dragonlock(redlock)) => {
                        let r = redlock.try_acquire_many(&multi, ttl).await;
                        let t1 = Instant::now();
                        match r {
                            Ok(lock) => (Ok(lock.release().await.ok()), t1),
                            Err(e) => (Err(e.kind()), t1),
                        }
                    }
                    (Workload::Extend, Runner::Dragonlock(redlock)) => {
                        if held.is_none() {
                            held = redlock.try_acquire(&own, ttl).await.ok();
                        }
                        let r = match held.as_mut() {
                            Some(lock) => {
                                lock.extend(ttl).await.map(|()| None).map_err(|e| e.kind())
                            }
                            // The first acquire failed (busy or nodes down): count it as such.
                            None => Err(LockErrorKind::NoQuorum),
                        };
                        let t1 = Instant::now();
                        if r.is_err() {
                            held = None;
                        }
                        (r, t1)
                    }
                };
                let t2 = Instant::now();
                if !measuring {
                    continue;
                }
                cycles += 1;
                let ns = |d: Duration| (d.as_nanos() as u64).max(1);
                let _ = cyc.record(ns(t2 - t0));
                let _ = recent.record(ns(t2 - t0));
                match outcome {
                    Ok(released) => {
                        outcomes.granted += 1;
                        if let Some(n) = released {
                            outcomes.releases += 1;
                            outcomes.released_nodes += n as u64;
                        }
                        let _ = acq.record(ns(t1 - t0));
                        if t2 > t1 && !matches!(workload, Workload::AcquireOnly | Workload::Extend)
                        {
                            let _ = rel.record(ns(t2 - t1));
                        }
                    }
                    Err(kind) => {
                        classify(&mut outcomes, kind);
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress.cycles.fetch_add(1, Ordering::Relaxed);
                if t2 - last_flush > PROGRESS_FLUSH {
                    last_flush = t2;
                    if let Ok(mut r) = progress.recent.lock() {
                        let _ = r.add(&recent);
                    }
                    recent.reset();
                }
            }
            if let Some(lock) = held {
                let _ = lock.release().await;
            }
            WorkerOut {
                acquire: acq,
                release: rel,
                cycle: cyc,
                outcomes,
                cycles,
            }
        }));
    }
    let results = gather(workers, measure_from, end).await;
    progress.done.store(true, Ordering::SeqCst);
    let _ = reporter.await;
    results
}

async fn show_progress(p: Arc<Progress>, from: Instant, end: Instant, quiet: bool) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    while !p.done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if quiet || Instant::now() < from {
            continue;
        }
        let n = p.cycles.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, n);
        let p99 = p
            .recent
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0);
        let line = format!(
            "{rate:>9.0} cycles/s  p99 {:>8.1}us  errors {}  {}s left",
            p99 as f64 / 1000.0,
            p.errors.load(Ordering::Relaxed),
            end.saturating_duration_since(now).as_secs()
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }
    if tty && !quiet {
        eprintln!();
    }
}

/// One cycle on one key: acquire, then (with `release`) release. Returns the outcome (the
/// nodes released, when a release ran) and when the acquire returned.
async fn single_key_cycle(
    runner: &mut Runner,
    resource: &str,
    ttl: Duration,
    release: bool,
) -> (Result<Option<usize>, LockErrorKind>, Instant) {
    match runner {
        Runner::Dragonlock(redlock) => {
            let r = redlock.try_acquire(resource, ttl).await;
            let t1 = Instant::now();
            match r {
                Ok(lock) if !release => {
                    lock.forget();
                    (Ok(None), t1)
                }
                Ok(lock) => (Ok(lock.release().await.ok()), t1),
                Err(e) => (Err(e.kind()), t1),
            }
        }
        Runner::Baseline(client) => {
            let key = resource.as_bytes();
            let r = client.acquire(key).await;
            let t1 = Instant::now();
            match r {
                Ok(_) if !release => (Ok(None), t1),
                Ok(token) => (Ok(Some(client.release(key, &token).await)), t1),
                Err(kind) => (Err(kind), t1),
            }
        }
    }
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let us = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 10.0).round() / 10.0;
    serde_json::json!({
        "count": h.len(),
        "p50_us": us(0.50), "p90_us": us(0.90), "p99_us": us(0.99), "p999_us": us(0.999),
        "max_us": (h.max() as f64 / 100.0).round() / 10.0,
    })
}

fn as_json(r: &Results) -> serde_json::Value {
    let o = &r.outcomes;
    serde_json::json!({
        "cycles": r.cycles,
        "seconds": r.elapsed.as_secs_f64(),
        "cycles_per_sec": (r.cycles as f64 / r.elapsed.as_secs_f64()).round(),
        "client_cpu_us_per_cycle": if r.cycles > 0 { (r.cpu.as_secs_f64() * 1e6 / r.cycles as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "acquire": summary(&r.acquire),
        "release": summary(&r.release),
        "cycle": summary(&r.cycle),
        "outcomes": { "granted": o.granted, "busy": o.busy, "no_quorum": o.no_quorum, "unavailable": o.unavailable, "expired": o.expired, "other": o.other },
        "nodes_per_release": (o.releases > 0).then(|| o.released_nodes as f64 / o.releases as f64),
    })
}

fn report(args: &BenchArgs, r: &Results, baseline: Option<&Results>, setup: serde_json::Value) {
    let mut out = serde_json::json!({ "setup": setup, "dragonlock": as_json(r) });
    if let Some(b) = baseline {
        let ratio = |a: &Histogram<u64>, b: &Histogram<u64>, q: f64| {
            (a.value_at_quantile(q) as f64 / b.value_at_quantile(q).max(1) as f64 * 100.0).round()
                / 100.0
        };
        let rate = |x: &Results| x.cycles as f64 / x.elapsed.as_secs_f64();
        out["baseline"] = as_json(b);
        out["ratio_to_baseline"] = serde_json::json!({
            "throughput": (rate(r) / rate(b).max(1e-9) * 100.0).round() / 100.0,
            "cycle_p50": ratio(&r.cycle, &b.cycle, 0.5),
            "cycle_p99": ratio(&r.cycle, &b.cycle, 0.99),
        });
    }
    if args.json {
        println!("{out}");
        return;
    }
    let s = &out["setup"];
    println!(
        "setup: {} nodes ({} stopped), {}, RESP{}, release via {} (waits for {}), workload {}, concurrency {}, ttl {} ms, {} cores",
        s["nodes"].as_array().map(|a| a.len()).unwrap_or(0),
        s["nodes_down"],
        s["server"].as_str().unwrap_or(""),
        s["protocol"],
        s["release_path"],
        s["release_wait"].as_str().unwrap_or(""),
        s["workload"].as_str().unwrap_or(""),
        s["concurrency"],
        s["ttl_ms"],
        s["cores"],
    );
    if let Some(release) = s["baseline_release"].as_str() {
        println!("baseline: the single-loop client, releasing via {release} at the quorum");
    }
    println!();
    println!(
        "{:<22} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "cycles/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "cpu us/op"
    );
    let mut rows = vec![("dragonlock", &out["dragonlock"])];
    if baseline.is_some() {
        rows.push(("baseline", &out["baseline"]));
    }
    for (name, v) in rows {
        for part in ["acquire", "release", "cycle"] {
            let h = &v[part];
            let label = format!("{name} {part}");
            let (rate, cpu) = if part == "cycle" {
                (
                    v["cycles_per_sec"].to_string(),
                    v["client_cpu_us_per_cycle"].to_string(),
                )
            } else {
                (String::new(), String::new())
            };
            println!(
                "{label:<22} {rate:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {cpu:>10}",
                h["p50_us"].to_string(),
                h["p90_us"].to_string(),
                h["p99_us"].to_string(),
                h["p999_us"].to_string(),
                h["max_us"].to_string()
            );
        }
    }
    let o = &out["dragonlock"]["outcomes"];
    println!();
    println!(
        "outcomes: granted {}, busy {}, no quorum {}, unavailable {}, expired {}, other {}",
        o["granted"], o["busy"], o["no_quorum"], o["unavailable"], o["expired"], o["other"]
    );
    if let Some(n) = out["dragonlock"]["nodes_per_release"].as_f64() {
        println!("released on {n:.2} nodes per release, on average");
    }
    if let Some(r) = out.get("ratio_to_baseline") {
        println!(
            "ratio to baseline: throughput {}x, cycle p50 {}x, cycle p99 {}x",
            r["throughput"], r["cycle_p50"], r["cycle_p99"]
        );
    }
}
