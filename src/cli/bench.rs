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
//!
//! Each client's JSON has `cycles` (measured cycles: attempts), `seconds`, `grants_per_sec`
//! (acquisitions: the headline), `attempts_per_sec` (= `cycles_per_sec`, kept for older
//! readers), `client_cpu_us_per_cycle`, the `acquire`, `release` and `cycle` latency
//! summaries, `outcomes` and `nodes_per_release`. `setup` also has `ops`, `keys` and `zipf_s`
//! (contended only), `key_prefix`, `retries`, `retry_delay_ms` and `restart_delay_ms`.
//! `ratio_to_baseline.throughput` is the grants/s ratio, `ratio_to_baseline.attempts` the
//! attempts/s one.
//!
//! Open loop (`--rate N`): cycle k is meant to start at `k / N` seconds into the run (warm-up
//! included; only slots meant for the measured window are measured), the workers taking the
//! slots in order as each becomes free. `setup.rate` is N, and each client's JSON adds
//! `open_loop` (`target_per_sec`, `achieved_per_sec`: measured cycles over the window;
//! `reached`: at least 95% of the target) and `cycle_corrected` (shaped as `cycle`, measured
//! from each cycle's intended start: the latency a caller arriving on schedule sees, queueing
//! behind late cycles included). `cycle` stays the uncorrected time from the cycle's actual
//! start. The corrected figures include the timer's lateness in waking a worker for its slot
//! (up to about a millisecond in tokio).

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

/// How the contended workload picks a resource for each cycle.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysArg {
    /// Resource `cycle number mod --resources`: every worker walks the same sequence in step,
    /// so they all collide on the same key at the same moment.
    RoundRobin,
    /// Uniformly at random, per cycle.
    Random,
    /// Zipf-distributed (`--zipf-s`): a few hot resources take most cycles.
    Zipf,
}

/// A worker's resource picker for the contended workload.
enum KeyPicker {
    RoundRobin,
    Random,
    Zipf(rand_distr::Zipf<f64>),
}

impl KeyPicker {
    fn new(keys: KeysArg, resources: usize, s: f64) -> Result<KeyPicker, String> {
        Ok(match keys {
            KeysArg::RoundRobin => KeyPicker::RoundRobin,
            KeysArg::Random => KeyPicker::Random,
            KeysArg::Zipf => KeyPicker::Zipf(
                rand_distr::Zipf::new(resources as f64, s)
                    .map_err(|e| format!("--zipf-s {s}: {e}"))?,
            ),
        })
    }

    /// The resource (0-based) of cycle `i` out of `n`.
    fn pick(&self, i: u64, n: usize) -> usize {
        use rand::Rng;
        match self {
            KeyPicker::RoundRobin => i as usize % n,
            KeyPicker::Random => rand::rng().random_range(0..n),
            // Zipf samples 1..=n as a float.
            KeyPicker::Zipf(z) => (rand::rng().sample(z) as usize).clamp(1, n) - 1,
        }
    }
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
    /// Nodes: host:port, redis:// or rediss:// (TLS) URLs, comma-separated. Default: 5 local
    /// servers started here.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    #[command(flatten)]
    tls: crate::TlsArgs,
    /// What each worker does.
    #[arg(long, value_enum, default_value = "uncontended")]
    workload: Workload,
    /// Concurrent workers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after the warm-up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after exactly this many measured cycles in total, shared by the workers (or at
    /// --duration, whichever comes first).
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop: start this many cycles a second in all, at fixed intended start times shared
    /// by the workers, and measure each cycle's latency from its intended start as well
    /// (coordinated omission corrected, as wrk2 does). Without it, each worker starts its next
    /// cycle when the last one ends (closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Warm-up before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Lock ttl.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ttl: Duration,
    /// Shared resources for the contended workload.
    #[arg(long, default_value_t = 4)]
    resources: usize,
    /// How the contended workload picks each cycle's resource (default: random).
    #[arg(long, value_enum)]
    keys: Option<KeysArg>,
    /// The exponent of `--keys zipf`: resource k (from 1) is picked with weight 1/k^s.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// Put before every lock key, as `RedlockOptions::key_prefix` does (the bench's resources
    /// are `bench:…`; the baseline gets the same keys).
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// The delayed-restart rule (`RedlockOptions::restart_delay`): a node up for less than this
    /// does not vote. Off by default, as in the library.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
    /// Retries after a failed attempt (`RedlockOptions::retry_count`); 0, the default, makes
    /// one attempt per cycle. Not with --baseline, which makes one attempt.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Delay between retries; a random extra of up to as much again is added (the jitter).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    retry_delay: Duration,
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

fn key_mode_name(k: KeysArg) -> String {
    use clap::ValueEnum;
    k.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

impl BenchArgs {
    /// The contended workload's key picker: random unless asked, so that workers do not all
    /// collide on one key in step (see `DESIGN.md`).
    fn keys(&self) -> KeysArg {
        self.keys.unwrap_or(KeysArg::Random)
    }
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
    /// Open loop only: each cycle from its intended start (coordinated omission corrected).
    cycle_corrected: Histogram<u64>,
    outcomes: Outcomes,
    cpu: Duration,
}

/// What one worker measured.
struct WorkerOut {
    acquire: Histogram<u64>,
    release: Histogram<u64>,
    cycle: Histogram<u64>,
    /// Open loop only: each cycle from its intended start (coordinated omission corrected).
    cycle_corrected: Histogram<u64>,
    outcomes: Outcomes,
    cycles: u64,
    /// The worker's client, and the locks acquire-only kept, for the release after the run.
    runner: Runner,
    kept: Vec<Kept>,
}

/// Waits for the workers and merges what they measured. Client CPU is read over the measured
/// window only: from the end of the warm-up to the last worker's end. Then the locks that
/// acquire-only kept are released, outside the window: the workload measures acquires, and
/// leaving rate × ttl keys on the servers (millions, for a 30 s ttl) is not a bench's to do.
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
        cycle_corrected: hist(),
        outcomes: Outcomes::default(),
        cpu: Duration::ZERO,
    };
    let mut leftovers = Vec::new();
    for w in workers {
        let w = w.await.expect("bench worker");
        if !w.kept.is_empty() {
            leftovers.push((w.runner, w.kept));
        }
        r.acquire.add(&w.acquire).ok();
        r.release.add(&w.release).ok();
        r.cycle.add(&w.cycle).ok();
        r.cycle_corrected.add(&w.cycle_corrected).ok();
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
    // Only now: a worker that ended early must not release while others still measure.
    let releases: Vec<_> = leftovers
        .into_iter()
        .map(|(runner, kept)| tokio::spawn(release_kept(runner, kept)))
        .collect();
    for r in releases {
        let _ = r.await;
    }
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
    granted: AtomicU64,
    errors: AtomicU64,
    /// `--ops` tickets left (`u64::MAX` without `--ops`).
    remaining: AtomicU64,
    recent: Mutex<Histogram<u64>>,
    /// A progress line was printed (a terminal then needs a newline after the `\r` lines).
    printed: AtomicBool,
}

impl Progress {
    /// Takes one measured cycle's ticket; `false` when `--ops` are all taken.
    fn take_ticket(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
            .is_ok()
    }
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
    if args.rate == Some(0) {
        return fail(EXIT_USAGE, "--rate must be at least 1 cycle a second");
    }
    if args.keys.is_some() && args.workload != Workload::Contended {
        return fail(
            EXIT_USAGE,
            "--keys picks among the contended workload's shared resources",
        );
    }
    if let Err(e) = KeyPicker::new(args.keys(), args.resources.max(1), args.zipf_s) {
        return fail(EXIT_USAGE, e);
    }
    if args.baseline && args.retries > 0 {
        return fail(
            EXIT_USAGE,
            "--retries with --baseline: the baseline makes one attempt per cycle",
        );
    }
    if args.baseline && args.key_prefix.len() + 32 > baseline::MAX_KEY {
        return fail(
            EXIT_USAGE,
            format!(
                "--key-prefix with --baseline: the baseline's keys are at most {} bytes",
                baseline::MAX_KEY
            ),
        );
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
        // The local servers are plain: TLS options here are refused, not ignored.
        match node_configs(
            &local.iter().map(|s| s.addr()).collect::<Vec<_>>(),
            &args.tls,
        ) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_USAGE, e),
        }
    } else {
        if args.nodes_down > 0 {
            return fail(
                EXIT_USAGE,
                "--nodes-down works only with the local servers (no --nodes)",
            );
        }
        match node_configs(&args.nodes, &args.tls) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_USAGE, e),
        }
    };
    if args.baseline && configs.iter().any(|c| c.is_tls()) {
        // The baseline speaks plain TCP only; a ratio against it over TLS would compare TLS
        // with no TLS.
        return fail(
            EXIT_USAGE,
            "--baseline runs on plain TCP nodes only (no rediss://)",
        );
    }
    let addrs: Vec<String> = configs.iter().map(|c| c.addr()).collect();
    let mut options = RedlockOptions::default()
        .retry_count(args.retries)
        .retry_delay(args.retry_delay, args.retry_delay)
        .key_prefix(args.key_prefix.clone())
        .force_script_release(args.force_script)
        .release_wait(args.release_wait.into())
        .connect_timeout(Duration::from_secs(3));
    if let Some(d) = args.restart_delay {
        options = options.restart_delay(d);
    }
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
            // Unavailable, not bad input: the list parsed, the node did not answer.
            return fail(
                EXIT_UNAVAILABLE,
                format!("cannot reach node {}: {why}", addrs[i]),
            );
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
    // A release that returned at the quorum has still queued its request to the other nodes:
    // one round trip to each node after it, on the same pipelined connection, makes sure the
    // servers have run it before this process exits and the sockets close.
    for n in redlock.nodes().iter().filter(|n| n.is_connected()) {
        let _ = n.command_timeout(&["PING"], Duration::from_secs(2)).await;
    }
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
        // The baseline has no key prefix of its own: it gets the one dragonlock's manager adds.
        let prefix = format!("{}bench:base", args.key_prefix);
        Some(measure(&args, |_| Runner::Baseline(base.client()), &prefix).await)
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
        "ops": args.ops,
        "rate": args.rate,
        "keys": (args.workload == Workload::Contended).then(|| key_mode_name(args.keys())),
        "zipf_s": (args.workload == Workload::Contended && args.keys() == KeysArg::Zipf).then_some(args.zipf_s),
        "key_prefix": args.key_prefix,
        "restart_delay_ms": args.restart_delay.map(|d| d.as_millis() as u64),
        "retries": args.retries,
        "retry_delay_ms": args.retry_delay.as_millis() as u64,
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
        granted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        remaining: AtomicU64::new(args.ops.unwrap_or(u64::MAX)),
        recent: Mutex::new(coarse_hist()),
        printed: AtomicBool::new(false),
    });
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    // `--rate`: cycle k of the run is meant to start at `start + k / rate`; the workers take
    // the slots in order from this counter.
    let schedule = args.rate.map(|_| Arc::new(AtomicU64::new(0)));
    let reporter =
        (!args.json).then(|| tokio::spawn(show_progress(progress.clone(), measure_from, end)));
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mut runner = runner(w);
        let progress = progress.clone();
        let (workload, ttl, resources) = (args.workload, args.ttl, args.resources);
        let retry = args.retries > 0;
        let schedule = schedule.clone();
        let rate = args.rate.unwrap_or(0) as f64;
        let picker =
            KeyPicker::new(args.keys(), resources.max(1), args.zipf_s).expect("checked in run()");
        let prefix = prefix.to_string();
        workers.push(tokio::spawn(async move {
            let (mut acq, mut rel, mut cyc) = (hist(), hist(), hist());
            let mut corrected = hist();
            let mut recent = coarse_hist();
            let mut outcomes = Outcomes::default();
            let mut cycles = 0u64;
            let mut kept = Vec::new();
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
                // Open loop: the next slot of the shared schedule, whenever this worker is free
                // to take it; a slot already past is started at once, and its lateness counts.
                let intended = match &schedule {
                    Some(slots) => {
                        let k = slots.fetch_add(1, Ordering::Relaxed);
                        let at = start + Duration::from_secs_f64(k as f64 / rate);
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        Some(at)
                    }
                    None => None,
                };
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let measuring = intended.unwrap_or(now) >= measure_from;
                // `--ops N`: each measured cycle takes one of N tickets, so the workers run
                // exactly N between them (not N rounded up to a multiple of the workers).
                if measuring && !progress.take_ticket() {
                    break;
                }
                i += 1;
                let t0 = Instant::now();
                let (outcome, t1) = match (workload, &mut runner) {
                    (Workload::Uncontended | Workload::Contended | Workload::AcquireOnly, r) => {
                        let contended;
                        let resource: &str = match workload {
                            Workload::Contended => {
                                let n = picker.pick(i, resources);
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
                        single_key_cycle(r, resource, ttl, release, retry, &mut kept).await
                    }
                    (_, Runner::Baseline(_)) => unreachable!("refused before the run"),
                    (Workload::Multi, Runner::Dragonlock(redlock)) => {
                        let r = if retry {
                            redlock.acquire_many(&multi, ttl).await
                        } else {
                            redlock.try_acquire_many(&multi, ttl).await
                        };
                        let t1 = Instant::now();
                        match r {
                            Ok(lock) => (Ok(lock.release().await.ok()), t1),
                            Err(e) => (Err(e.kind()), t1),
                        }
                    }
                    (Workload::Extend, Runner::Dragonlock(redlock)) => {
                        if held.is_none() {
                            held = if retry {
                                redlock.acquire(&own, ttl).await.ok()
                            } else {
                                redlock.try_acquire(&own, ttl).await.ok()
                            };
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
                if let Some(at) = intended {
                    let _ = corrected.record(ns(t2 - at));
                }
                let _ = recent.record(ns(t2 - t0));
                match outcome {
                    Ok(released) => {
                        outcomes.granted += 1;
                        progress.granted.fetch_add(1, Ordering::Relaxed);
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
                cycle_corrected: corrected,
                outcomes,
                cycles,
                runner,
                kept,
            }
        }));
    }
    let results = gather(workers, measure_from, end).await;
    if let Some(reporter) = reporter {
        // Its next line would cover an interval past the run's end: the summary follows instead.
        reporter.abort();
        let _ = reporter.await;
        if progress.printed.load(Ordering::SeqCst) && std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    results
}

/// The progress lines' clock: one line per whole second of the measured window, each with the
/// rate over exactly the interval it covers. No line during the warm-up (its cycles are not
/// counted, so a rate over it would be meaningless), and none for an interval that runs past
/// the window's end or past the last `--ops` ticket: such an interval is partial, and its rate
/// (down to 0 cycles/s) would be a lie; the final summary is printed instead.
struct RateClock {
    end: Instant,
    /// When the previous line was taken and the counts then: (time, cycles, grants).
    last: (Instant, u64, u64),
}

impl RateClock {
    fn new(measure_from: Instant, end: Instant) -> RateClock {
        RateClock {
            end,
            last: (measure_from, 0, 0),
        }
    }

    /// The cycles/s and grants/s since the previous line, or `None` when no line is due.
    fn tick(
        &mut self,
        now: Instant,
        cycles: u64,
        grants: u64,
        finished: bool,
    ) -> Option<(f64, f64)> {
        if now <= self.last.0 || now > self.end || finished {
            return None;
        }
        let secs = (now - self.last.0).as_secs_f64();
        let rate = |n: u64, was: u64| n.saturating_sub(was) as f64 / secs;
        let out = (rate(cycles, self.last.1), rate(grants, self.last.2));
        self.last = (now, cycles, grants);
        Some(out)
    }
}

async fn show_progress(p: Arc<Progress>, from: Instant, end: Instant) {
    let tty = std::io::stderr().is_terminal();
    let mut clock = RateClock::new(from, end);
    let mut ticks = tokio::time::interval_at(
        (from + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let finished = p.remaining.load(Ordering::SeqCst) == 0;
        let n = p.cycles.load(Ordering::Relaxed);
        let g = p.granted.load(Ordering::Relaxed);
        let Some((rate, grants)) = clock.tick(now, n, g, finished) else {
            if now > end || finished {
                return;
            }
            continue;
        };
        let p99 = p
            .recent
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0);
        let line = format!(
            "{rate:>9.0} cycles/s {grants:>9.0} grants/s  p99 {:>8.1}us  errors {}  {}s left",
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
        p.printed.store(true, Ordering::SeqCst);
    }
}

/// A lock an acquire-only worker took and kept: released after the measured window.
// Not boxed: boxing would put an allocation in dragonlock's measured acquire-only cycle; the
// size only costs memory in the list of kept locks.
#[allow(clippy::large_enum_variant)]
enum Kept {
    Lock(dragonlock::Lock),
    Token(String, baseline::Token),
}

/// One cycle on one key: acquire (with the manager's retries when `retry`), then (with
/// `release`) release; without, the lock is put in `kept`. Returns the outcome (the nodes
/// released, when a release ran) and when the acquire returned.
async fn single_key_cycle(
    runner: &mut Runner,
    resource: &str,
    ttl: Duration,
    release: bool,
    retry: bool,
    kept: &mut Vec<Kept>,
) -> (Result<Option<usize>, LockErrorKind>, Instant) {
    match runner {
        Runner::Dragonlock(redlock) => {
            let r = if retry {
                redlock.acquire(resource, ttl).await
            } else {
                redlock.try_acquire(resource, ttl).await
            };
            let t1 = Instant::now();
            match r {
                Ok(lock) if !release => {
                    kept.push(Kept::Lock(lock));
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
                Ok(token) if !release => {
                    kept.push(Kept::Token(resource.to_string(), token));
                    (Ok(None), t1)
                }
                Ok(token) => (Ok(Some(client.release(key, &token).await)), t1),
                Err(kind) => (Err(kind), t1),
            }
        }
    }
}

/// Releases what a worker kept (acquire-only), one lock after the other.
async fn release_kept(mut runner: Runner, kept: Vec<Kept>) {
    for k in kept {
        match (k, &mut runner) {
            (Kept::Lock(lock), _) => {
                let _ = lock.release().await;
            }
            (Kept::Token(key, token), Runner::Baseline(client)) => {
                client.release(key.as_bytes(), &token).await;
            }
            (Kept::Token(..), Runner::Dragonlock(_)) => unreachable!("tokens are the baseline's"),
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

fn as_json(r: &Results, rate: Option<u64>) -> serde_json::Value {
    let o = &r.outcomes;
    let mut v = serde_json::json!({
        "cycles": r.cycles,
        "seconds": r.elapsed.as_secs_f64(),
        "cycles_per_sec": (r.cycles as f64 / r.elapsed.as_secs_f64()).round(),
        "attempts_per_sec": (r.cycles as f64 / r.elapsed.as_secs_f64()).round(),
        "grants_per_sec": (o.granted as f64 / r.elapsed.as_secs_f64()).round(),
        "client_cpu_us_per_cycle": if r.cycles > 0 { (r.cpu.as_secs_f64() * 1e6 / r.cycles as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "acquire": summary(&r.acquire),
        "release": summary(&r.release),
        "cycle": summary(&r.cycle),
        "outcomes": { "granted": o.granted, "busy": o.busy, "no_quorum": o.no_quorum, "unavailable": o.unavailable, "expired": o.expired, "other": o.other },
        "nodes_per_release": (o.releases > 0).then(|| o.released_nodes as f64 / o.releases as f64),
    });
    if let Some(target) = rate {
        let achieved = r.cycles as f64 / r.elapsed.as_secs_f64();
        v["open_loop"] = serde_json::json!({
            "target_per_sec": target,
            "achieved_per_sec": achieved.round(),
            "reached": achieved >= target as f64 * OPEN_LOOP_REACHED,
        });
        v["cycle_corrected"] = summary(&r.cycle_corrected);
    }
    v
}

/// The share of `--rate` a run must achieve to be said to have reached it. Slots are fixed in
/// time, so a run that keeps up achieves the target to within its last slot; 5% of slack
/// covers the timer's millisecond granularity at the end of a short run, and a run that fell
/// behind misses by far more.
const OPEN_LOOP_REACHED: f64 = 0.95;

fn report(args: &BenchArgs, r: &Results, baseline: Option<&Results>, setup: serde_json::Value) {
    let mut out = serde_json::json!({ "setup": setup, "dragonlock": as_json(r, args.rate) });
    if let Some(b) = baseline {
        let ratio = |a: &Histogram<u64>, b: &Histogram<u64>, q: f64| {
            (a.value_at_quantile(q) as f64 / b.value_at_quantile(q).max(1) as f64 * 100.0).round()
                / 100.0
        };
        let rate = |x: &Results| x.cycles as f64 / x.elapsed.as_secs_f64();
        let grants = |x: &Results| x.outcomes.granted as f64 / x.elapsed.as_secs_f64();
        out["baseline"] = as_json(b, args.rate);
        out["ratio_to_baseline"] = serde_json::json!({
            "throughput": (grants(r) / grants(b).max(1e-9) * 100.0).round() / 100.0,
            "attempts": (rate(r) / rate(b).max(1e-9) * 100.0).round() / 100.0,
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
    let keys = match (s["keys"].as_str(), s["zipf_s"].as_f64()) {
        (Some(k), Some(z)) => format!(", keys {k} (s = {z})"),
        (Some(k), None) => format!(", keys {k}"),
        _ => String::new(),
    };
    println!(
        "options: key prefix {:?}, retries {} (delay {} ms + jitter up to as much), restart delay {}{keys}",
        s["key_prefix"].as_str().unwrap_or(""),
        s["retries"],
        s["retry_delay_ms"],
        s["restart_delay_ms"]
            .as_u64()
            .map_or("off".to_string(), |ms| format!("{ms} ms")),
    );
    if let Some(release) = s["baseline_release"].as_str() {
        println!("baseline: the single-loop client, releasing via {release} at the quorum");
    }
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "",
        "grants/s",
        "attempts/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "cpu us/op"
    );
    let mut rows = vec![("dragonlock", &out["dragonlock"])];
    if baseline.is_some() {
        rows.push(("baseline", &out["baseline"]));
    }
    let mut open_loop = Vec::new();
    for (name, v) in rows {
        let mut parts = vec!["acquire", "release", "cycle"];
        if v.get("cycle_corrected").is_some() {
            parts.push("cycle_corrected");
        }
        if let Some(ol) = v.get("open_loop") {
            let (target, achieved) = (&ol["target_per_sec"], &ol["achieved_per_sec"]);
            open_loop.push(if ol["reached"] == true {
                format!("{name}: open loop at {target} cycles/s, achieved {achieved}/s")
            } else {
                format!(
                    "{name}: open loop target {target} cycles/s NOT REACHED: achieved {achieved}/s \
                     (the workers fell behind the schedule; more --concurrency or a lower --rate)"
                )
            });
        }
        for part in parts {
            let h = &v[part];
            let label = match part {
                "cycle_corrected" => format!("{name} (intended)"),
                _ => format!("{name} {part}"),
            };
            let (grants, rate, cpu) = if part == "cycle" {
                (
                    v["grants_per_sec"].to_string(),
                    v["attempts_per_sec"].to_string(),
                    v["client_cpu_us_per_cycle"].to_string(),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            println!(
                "{label:<22} {grants:>10} {rate:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {cpu:>10}",
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
    if !open_loop.is_empty() {
        println!(
            "'(intended)': each cycle from its intended start, coordinated omission corrected"
        );
    }
    for line in open_loop {
        println!("{line}");
    }
    println!(
        "outcomes: granted {}, busy {}, no quorum {}, unavailable {}, expired {}, other {}",
        o["granted"], o["busy"], o["no_quorum"], o["unavailable"], o["expired"], o["other"]
    );
    if let Some(n) = out["dragonlock"]["nodes_per_release"].as_f64() {
        println!("released on {n:.2} nodes per release, on average");
    }
    if let Some(r) = out.get("ratio_to_baseline") {
        println!(
            "ratio to baseline: throughput (grants/s) {}x, attempts/s {}x, cycle p50 {}x, cycle p99 {}x",
            r["throughput"], r["attempts"], r["cycle_p50"], r["cycle_p99"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first line's rate covers the measured second only (the warm-up before it counted no
    /// cycles, so a rate over it read 314 cycles/s against ~60k); nothing is printed during
    /// the warm-up, nor for an interval past the end or after the last `--ops` ticket.
    #[test]
    fn progress_rates_cover_exactly_their_interval() {
        let start = Instant::now();
        let from = start + Duration::from_secs(5);
        let end = from + Duration::from_secs(3);
        let mut clock = RateClock::new(from, end);
        assert_eq!(
            clock.tick(start + Duration::from_secs(1), 0, 0, false),
            None
        );
        let s = |x: f64| from + Duration::from_secs_f64(x);
        assert_eq!(
            clock.tick(s(1.0), 60_000, 20_000, false),
            Some((60_000.0, 20_000.0))
        );
        assert_eq!(
            clock.tick(s(1.5), 90_000, 35_000, false),
            Some((60_000.0, 30_000.0))
        );
        // Past the end: a partial interval, left to the summary.
        assert_eq!(clock.tick(s(3.2), 90_000, 35_000, false), None);
        let mut clock = RateClock::new(from, end);
        assert_eq!(clock.tick(s(1.0), 10, 10, true), None);
    }

    #[test]
    fn key_pickers() {
        let rr = KeyPicker::new(KeysArg::RoundRobin, 4, 0.99).unwrap();
        assert_eq!(
            (1..=5).map(|i| rr.pick(i, 4)).collect::<Vec<_>>(),
            [1, 2, 3, 0, 1]
        );
        let mut seen = [0u32; 4];
        let random = KeyPicker::new(KeysArg::Random, 4, 0.99).unwrap();
        for i in 0..4000 {
            seen[random.pick(i, 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 500), "{seen:?}");
        let mut seen = [0u32; 4];
        let zipf = KeyPicker::new(KeysArg::Zipf, 4, 2.0).unwrap();
        for i in 0..4000 {
            seen[zipf.pick(i, 4)] += 1;
        }
        // Weights 1, 1/4, 1/9, 1/16: the first resource takes about 70%.
        assert!(
            seen[0] > 2000 && seen[0] > seen[1] && seen[1] > seen[3],
            "{seen:?}"
        );
        assert!(KeyPicker::new(KeysArg::Zipf, 4, -1.0).is_err());
    }
}
