//! `dragonlock bench`: lock throughput and latency, with an optional same-run baseline.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    /// Also run the minimal hand-written client (plain sockets, SET NX PX and DEL to all nodes,
    /// quorum of replies) in the same run, and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Release with the Lua script even where the server has DELEX.
    #[arg(long)]
    force_script: bool,
    /// How long each of dragonlock's releases waits for the nodes' answers (the baseline always
    /// stops at a quorum).
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
    let redlock = Redlock::from_configs(configs, options).await;
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

    let results = measure(&args, &redlock).await;
    let baseline = if args.baseline {
        let live: Vec<String> = addrs
            .iter()
            .zip(&up)
            .filter(|(_, u)| **u)
            .map(|(a, _)| a.clone())
            .collect();
        Some(measure_baseline(&args, &live, redlock.quorum()).await)
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

async fn measure(args: &BenchArgs, redlock: &Redlock) -> Results {
    let progress = Arc::new(Progress {
        cycles: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        recent: Mutex::new(hist()),
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
        let redlock = redlock.clone();
        let progress = progress.clone();
        let (workload, ttl, resources) = (args.workload, args.ttl, args.resources);
        workers.push(tokio::spawn(async move {
            let (mut acq, mut rel, mut cyc, mut recent) = (hist(), hist(), hist(), hist());
            let mut outcomes = Outcomes::default();
            let mut cycles = 0u64;
            let own = format!("bench:w{w}");
            let multi = [
                format!("bench:w{w}:a"),
                format!("bench:w{w}:b"),
                format!("bench:w{w}:c"),
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
                let (outcome, t1) = match workload {
                    Workload::Uncontended | Workload::Contended | Workload::AcquireOnly => {
                        let contended;
                        let resource: &str = match workload {
                            Workload::Contended => {
                                contended = format!("bench:shared:{}", i as usize % resources);
                                &contended
                            }
                            Workload::AcquireOnly => {
                                contended = format!("{own}:{i}");
                                &contended
                            }
                            _ => &own,
                        };
                        let r = redlock.try_acquire(resource, ttl).await;
                        let t1 = Instant::now();
                        match r {
                            Ok(lock) if workload == Workload::AcquireOnly => {
                                lock.forget();
                                (Ok(None), t1)
                            }
                            Ok(lock) => (Ok(lock.release().await.ok()), t1),
                            Err(e) => (Err(e.kind()), t1),
                        }
                    }
                    Workload::Multi => {
                        let r = redlock.try_acquire_many(&multi, ttl).await;
                        let t1 = Instant::now();
                        match r {
                            Ok(lock) => (Ok(lock.release().await.ok()), t1),
                            Err(e) => (Err(e.kind()), t1),
                        }
                    }
                    Workload::Extend => {
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
                if t2 - last_flush > Duration::from_millis(200) {
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

/// The baseline: per worker, one plain socket per node; `SET … NX PX` to every node at once, a
/// quorum of replies, then `DEL` the same way.
async fn measure_baseline(args: &BenchArgs, addrs: &[String], quorum: usize) -> Results {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let per_worker_ops = args.ops.map(|o| o.div_ceil(args.concurrency as u64));
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let addrs = addrs.to_vec();
        let ttl_ms = args.ttl.as_millis().to_string();
        workers.push(tokio::spawn(async move {
            let mut socks = Vec::new();
            for a in &addrs {
                let s = TcpStream::connect(a).await.expect("baseline connect");
                s.set_nodelay(true).ok();
                socks.push((s, Vec::<u8>::with_capacity(256), 0usize));
            }
            let key = format!("bench:base:{w}");
            let mut set = bytes::BytesMut::new();
            dragonlock::resp::encode_command(
                &mut set,
                &[
                    "SET",
                    &key,
                    "0123456789abcdef0123456789abcdef",
                    "NX",
                    "PX",
                    &ttl_ms,
                ],
            );
            let mut del = bytes::BytesMut::new();
            dragonlock::resp::encode_command(&mut del, &["DEL", &key]);
            let (mut acq, mut rel, mut cyc) = (hist(), hist(), hist());
            let mut cycles = 0u64;
            loop {
                let now = Instant::now();
                if now >= end || per_worker_ops.is_some_and(|o| cycles >= o) {
                    break;
                }
                let t0 = Instant::now();
                quorum_round(&mut socks, &set, quorum).await;
                let t1 = Instant::now();
                quorum_round(&mut socks, &del, quorum).await;
                let t2 = Instant::now();
                if t0 >= measure_from {
                    cycles += 1;
                    let _ = acq.record((t1 - t0).as_nanos() as u64);
                    let _ = rel.record((t2 - t1).as_nanos() as u64);
                    let _ = cyc.record((t2 - t0).as_nanos() as u64);
                }
            }
            let outcomes = Outcomes {
                granted: cycles,
                ..Outcomes::default()
            };
            WorkerOut {
                acquire: acq,
                release: rel,
                cycle: cyc,
                outcomes,
                cycles,
            }
        }));
    }
    gather(workers, measure_from, end).await
}

/// Sends `frame` on every socket, then reads until `quorum` sockets answered this round. Every
/// reply the baseline sees is one line, so a reply is counted at its LF. Replies still owed from
/// the previous round are read first.
async fn quorum_round(socks: &mut [(TcpStream, Vec<u8>, usize)], frame: &[u8], quorum: usize) {
    for (s, _, owed) in socks.iter_mut() {
        s.write_all(frame).await.expect("baseline write");
        *owed += 1;
    }
    // A fixed array: the baseline allocates nothing per round either.
    let mut answered = [false; 16];
    assert!(socks.len() <= answered.len());
    std::future::poll_fn(|cx| {
        for (i, (s, buf, owed)) in socks.iter_mut().enumerate() {
            loop {
                while let Some(p) = memchr::memchr(b'\n', buf) {
                    buf.drain(..=p);
                    *owed -= 1;
                    if *owed == 0 {
                        answered[i] = true;
                    }
                }
                if *owed == 0 || s.poll_read_ready(cx).is_pending() {
                    break;
                }
                let mut chunk = [0u8; 1024];
                match s.try_read(&mut chunk) {
                    Ok(0) => panic!("baseline: server closed"),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("baseline: {e}"),
                }
            }
        }
        if answered.iter().filter(|a| **a).count() >= quorum {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
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
