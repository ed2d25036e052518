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
//! (acquisitions: the headline), `attempts` and `attempts_per_sec` (every lock attempt: with
//! `--retries`, the manager's attempt count over the window, retries included; without, equal
//! to `cycles` and `cycles_per_sec`), `client_cpu_us_per_cycle`, the `acquire`, `release` and `cycle` latency
//! summaries (granted cycles only, as in the table: failed attempts are in `outcomes`), `outcomes`, `nodes_per_release`, and `refused` with `refused_by_reason`
//! (`overloaded`, `not_connected`, `restarted`): node requests dragonlock's client refused over
//! the measured window ([`REFUSED_LEGEND`]; null for the baseline, which has its own sockets). `setup` also has `ops`, `keys` and `zipf_s`
//! (contended only), `key_prefix`, `retries`, `retry_delay_ms`, `restart_delay_ms` and
//! `wake_on_release` (false with `--no-wake-on-release`: neither client publishes its releases).
//! With `--server-stats` and `--baseline`, `baseline_server` is shaped as `server` (without
//! `saturated`), read around the baseline's run.
//! `ratio_to_baseline.throughput` is the grants/s ratio, `ratio_to_baseline.attempts` the
//! attempts/s one.
//!
//! Open loop (`--rate N`): cycle k is meant to start at `k / N` seconds into the run (warm-up
//! included), the workers taking the slots in order as each becomes free. A cycle is measured
//! when it actually starts inside the measured window, whichever slot it took: a run that
//! falls behind the schedule is measured at the rate it really keeps. `setup.rate` is N, and each client's JSON adds
//! `open_loop` (`target_per_sec`, `achieved_per_sec`: measured cycles over the window;
//! `reached`: at least 95% of the target) and `cycle_corrected` (shaped as `cycle`, measured
//! from each cycle's intended start: the latency a caller arriving on schedule sees, queueing
//! behind late cycles included). `cycle` stays the uncorrected time from the cycle's actual
//! start. A worker that takes a slot still ahead sleeps until it, and the timer's lateness in
//! waking it (a millisecond or two in tokio) is not counted: the corrected latency is the
//! cycle plus how late its worker took the slot.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::baseline::{self, Baseline};
use crate::cli::bench_multi;
use crate::cli::bench_plot::{self, Series};
use crate::cli::bench_server::{self, ServerDelta};
use crate::cli::bench_sides::{self, Compare, CompareKey, Side};
use crate::{fail, EXIT_UNAVAILABLE, EXIT_USAGE};
use dragonlock::{LockErrorKind, Redlock, ReleaseWait};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Acquire then release, each worker on its own resource.
    Uncontended,
    /// Acquire then release on --resources shared resources (busy answers are counted in
    /// attempts/s and the outcomes; the latency rows hold granted cycles only).
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
pub(crate) enum ReleaseWaitArg {
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
    pub(crate) nodes: Vec<String>,
    #[command(flatten)]
    pub(crate) tls: crate::TlsArgs,
    /// What each worker does.
    #[arg(long, value_enum, default_value = "uncontended")]
    pub(crate) workload: Workload,
    /// Concurrent workers. A comma-separated list (`1,4,16,64`) sweeps them: one point after
    /// another on the same servers, one table row (or JSON line) per point.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub(crate) concurrency: Vec<usize>,
    /// How long to measure (after the warm-up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub(crate) duration: Duration,
    /// Stop after exactly this many measured cycles in total, shared by the workers (or at
    /// --duration, whichever comes first).
    #[arg(long)]
    pub(crate) ops: Option<u64>,
    /// Open loop: start this many cycles a second in all, at fixed intended start times shared
    /// by the workers, and measure each cycle's latency from its intended start as well
    /// (coordinated omission corrected, as wrk2 does). Without it, each worker starts its next
    /// cycle when the last one ends (closed loop). A comma-separated list sweeps the rates.
    #[arg(long, value_delimiter = ',')]
    pub(crate) rate: Vec<u64>,
    /// Repeat every point (and every side of --compare) this many times, and report the median
    /// and the spread ((max - min) / median) of the runs.
    #[arg(long, default_value_t = 1)]
    pub(crate) runs: u32,
    /// Compare two or more settings in one run, interleaved in --slice slices (A B B A ...) so
    /// that the machine's drift lands on every side alike; prints each side and its ratios to
    /// the first. KEY=A,B[,C...] with KEY one of:
    /// `release=script,delex` (the release by Lua script or by DELEX where a node has it),
    /// `release-wait=all,quorum`, `nodes=H:P+H:P+H:P,H:P+H:P+H:P` (node sets: `+` joins the
    /// nodes of one side, `,` separates the sides), `server-bin=PATH,PATH` (5 local servers of
    /// each binary, e.g. redis-server against dragonfly), `server-threads=1,4` (Dragonfly's
    /// proactor threads), `client=baseline,dragonlock` (the single-loop baseline of
    /// --baseline and dragonlock in turns, with --runs for the spread: on a noisy machine,
    /// the fair way to compare them).
    #[arg(long, verbatim_doc_comment)]
    pub(crate) compare: Option<String>,
    /// With --compare: the length of each side's turn. --duration is each side's measured time
    /// in all, cut into slices of this length. [default: 1s, or --duration if shorter]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) slice: Option<Duration>,
    /// Read the servers' CPU time and command statistics (INFO) before the workers start and
    /// after they end, and report server CPU per cycle (over every cycle run, warm-up
    /// included) per node and in all, and usec_per_call of the lock commands; warn when the
    /// servers and this client keep the machine's cores busy. Always on in a sweep, with
    /// --runs and with --compare.
    #[arg(long)]
    pub(crate) server_stats: bool,
    /// Write an SVG plot: latency by percentile (HdrHistogram style, the percentile on a log
    /// axis), one line per point or side; for a sweep also throughput against p99.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// Write each point's or side's cycle latency as an HdrHistogram interval log
    /// (`DIR/<series>.hlog`, V2 compressed, values in nanoseconds), one interval per
    /// measurement; open-loop runs add the corrected histograms, tagged `intended`.
    #[arg(long, value_name = "DIR")]
    pub(crate) hdr_out: Option<PathBuf>,
    /// The binary of the local servers: redis-server or dragonfly (told apart by its
    /// --version). Default: $DRAGONLOCK_SERVER_BIN, else dragonfly, else redis-server on PATH.
    #[arg(long, value_name = "PATH")]
    pub(crate) server_bin: Option<PathBuf>,
    /// Dragonfly's --proactor_threads for the local servers (default 1).
    #[arg(long, value_name = "N")]
    pub(crate) server_threads: Option<usize>,
    /// Warm-up before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub(crate) warmup: Duration,
    /// Lock ttl.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub(crate) ttl: Duration,
    /// Shared resources for the contended workload.
    #[arg(long, default_value_t = 4)]
    pub(crate) resources: usize,
    /// How the contended workload picks each cycle's resource (default: random).
    #[arg(long, value_enum)]
    pub(crate) keys: Option<KeysArg>,
    /// The exponent of `--keys zipf`: resource k (from 1) is picked with weight 1/k^s.
    #[arg(long, default_value_t = 0.99)]
    pub(crate) zipf_s: f64,
    /// Put before every lock key, as `RedlockOptions::key_prefix` does (the bench's resources
    /// are `bench:…`; the baseline gets the same keys).
    #[arg(long, default_value = "")]
    pub(crate) key_prefix: String,
    /// The delayed-restart rule (`RedlockOptions::restart_delay`): a node up for less than this
    /// does not vote. Off by default, as in the library.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) restart_delay: Option<Duration>,
    /// Retries after a failed attempt (`RedlockOptions::retry_count`); 0, the default, makes
    /// one attempt per cycle. Not with --baseline, which makes one attempt. attempts/s then
    /// counts every attempt, retries included (the manager's lock counters over the window),
    /// and can exceed the cycles a second.
    #[arg(long, default_value_t = 0)]
    pub(crate) retries: u32,
    /// Delay between retries; a random extra of up to as much again is added (the jitter).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "50ms")]
    pub(crate) retry_delay: Duration,
    /// Start this many of the local servers stopped (SIGSTOP): a dead minority should cost nothing.
    #[arg(long, default_value_t = 0)]
    pub(crate) nodes_down: usize,
    /// Also run the single-loop baseline (one task owning every node socket, the same lock
    /// cycle and release command as dragonlock) with the same workers, after dragonlock, and
    /// print the ratios. Workloads: uncontended, contended, acquire-only. To take turns in
    /// slices, and for sweeps and --runs: --compare client=baseline,dragonlock.
    #[arg(long)]
    pub(crate) baseline: bool,
    /// Release with the Lua script even where the server has DELEX.
    #[arg(long)]
    pub(crate) force_script: bool,
    /// Release without telling waiters (`RedlockOptions::wake_on_release(false)`), in dragonlock
    /// and in the baseline: no `PUBLISH` on the key's release channel. By default both publish,
    /// as dragonlock does out of the box; the difference between the two runs is what the
    /// publish costs (the servers' CPU, on every release).
    #[arg(long)]
    pub(crate) no_wake_on_release: bool,
    /// How long each of dragonlock's releases waits for the nodes' answers (the baseline always
    /// stops at a quorum, as `quorum` does).
    /// [default: quorum]
    #[arg(long, value_enum)]
    pub(crate) release_wait: Option<ReleaseWaitArg>,
    /// Print the results as one JSON object instead of a table; with a sweep, --runs or
    /// --compare, one JSON object per line: a `point` line per point and side, a `ratio`
    /// line per side after the first (the schema: README, "bench --json").
    #[arg(long)]
    pub(crate) json: bool,
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

/// Node requests dragonlock's client refused before sending them, over the measured window
/// (from [`Redlock::stats`]): an acquire, extend or release that met a refusal on a node got
/// no vote from it. See [`REFUSED_LEGEND`].
#[derive(Default, Clone, Copy)]
pub(crate) struct Refused {
    /// `Overloaded`: the node had too many requests in flight.
    pub(crate) overloaded: u64,
    /// The node was not connected.
    pub(crate) not_connected: u64,
    /// The node had not been up for `--restart-delay`.
    pub(crate) restarted: u64,
}

impl Refused {
    fn of(redlock: &Redlock) -> Refused {
        let mut r = Refused::default();
        for n in redlock.stats().nodes {
            r.overloaded += n.errors.refused_overloaded;
            r.not_connected += n.errors.refused_not_connected;
            r.restarted += n.errors.refused_restarted;
        }
        r
    }

    fn since(&self, before: &Refused) -> Refused {
        Refused {
            overloaded: self.overloaded.saturating_sub(before.overloaded),
            not_connected: self.not_connected.saturating_sub(before.not_connected),
            restarted: self.restarted.saturating_sub(before.restarted),
        }
    }

    fn add(&mut self, o: &Refused) {
        self.overloaded += o.overloaded;
        self.not_connected += o.not_connected;
        self.restarted += o.restarted;
    }

    pub(crate) fn total(&self) -> u64 {
        self.overloaded + self.not_connected + self.restarted
    }
}

/// What the latency rows hold, printed when some attempts failed.
pub(crate) const LATENCY_LEGEND: &str = "latency rows (acquire, release, cycle, intended): \
    granted cycles only; failed attempts (busy, no quorum ...), and granted locks whose release \
    failed, count in attempts/s and the outcomes";

/// What "refused" means, for the help, the outcomes line and the per-node view.
pub(crate) const REFUSED_LEGEND: &str = "refused: node requests dragonlock's client did not \
    send, so that node gave no vote. `overloaded`: the node already owed too many replies \
    (acquires are refused once three quarters of the connection's max_in_flight are in use, \
    768 of the library's default 1,024; the bench sets 8 per worker, at least 1,024; releases \
    may use them all), because it fell behind: the server, or the cores it shares with the \
    others and this client, did not keep up, and dragonlock does not wait for a lagging node \
    (the single-loop baseline does, so it sends every request). `not connected`: the node was \
    down or unreachable (as with --nodes-down). `restart delay`: the node had not been up for \
    --restart-delay.";

#[derive(Default)]
pub(crate) struct Outcomes {
    pub(crate) granted: u64,
    pub(crate) busy: u64,
    pub(crate) no_quorum: u64,
    pub(crate) unavailable: u64,
    pub(crate) expired: u64,
    pub(crate) other: u64,
    /// Cycles whose acquire was granted and whose release failed (fewer than a quorum
    /// confirmed it): not counted as granted, and left out of the latency rows.
    pub(crate) release_failed: u64,
    /// Successful releases, and the nodes they counted: with `--release-wait all` every node
    /// that deleted the key, with `quorum` the nodes that had when it returned. Failed ones
    /// are left out for both clients (dragonlock's error carries no count).
    pub(crate) releases: u64,
    pub(crate) released_nodes: u64,
}

pub(crate) struct Results {
    pub(crate) cycles: u64,
    /// Lock attempts: `cycles`, or with `--retries` every attempt the manager counted over
    /// the window (`LockStats`: granted + every failed kind), retries included.
    pub(crate) attempts: u64,
    pub(crate) elapsed: Duration,
    pub(crate) acquire: Histogram<u64>,
    pub(crate) release: Histogram<u64>,
    pub(crate) cycle: Histogram<u64>,
    /// Open loop only: each cycle from its intended start (coordinated omission corrected).
    pub(crate) cycle_corrected: Histogram<u64>,
    pub(crate) outcomes: Outcomes,
    pub(crate) cpu: Duration,
    /// When the measured window began.
    pub(crate) started: Instant,
    /// The servers' side over the window (with `--server-stats`, a sweep, `--runs`, `--compare`).
    pub(crate) server: Option<ServerDelta>,
    /// dragonlock only (the baseline has its own sockets): node requests refused by the client
    /// over the measured window.
    pub(crate) refused: Option<Refused>,
}

impl Results {
    pub(crate) fn empty() -> Results {
        Results {
            cycles: 0,
            attempts: 0,
            elapsed: Duration::ZERO,
            acquire: hist(),
            release: hist(),
            cycle: hist(),
            cycle_corrected: hist(),
            outcomes: Outcomes::default(),
            cpu: Duration::ZERO,
            started: Instant::now(),
            server: None,
            refused: None,
        }
    }

    /// Adds another measurement of the same setting (a slice, a run): counts, times and CPU
    /// add up, histograms merge.
    pub(crate) fn merge(&mut self, o: &Results) {
        if self.cycles == 0 && self.elapsed.is_zero() {
            self.started = o.started;
        }
        self.cycles += o.cycles;
        self.attempts += o.attempts;
        self.elapsed += o.elapsed;
        self.acquire.add(&o.acquire).ok();
        self.release.add(&o.release).ok();
        self.cycle.add(&o.cycle).ok();
        self.cycle_corrected.add(&o.cycle_corrected).ok();
        self.outcomes.add(&o.outcomes);
        self.cpu += o.cpu;
        if let Some(d) = &o.server {
            self.server
                .get_or_insert_with(ServerDelta::default)
                .merge(d);
        }
        if let Some(f) = &o.refused {
            self.refused.get_or_insert_with(Refused::default).add(f);
        }
    }

    pub(crate) fn grants_per_sec(&self) -> f64 {
        self.outcomes.granted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn attempts_per_sec(&self) -> f64 {
        self.attempts as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Cycles (calls of the workload, retries inside one) a second: the open loop's rate.
    pub(crate) fn cycles_per_sec(&self) -> f64 {
        self.cycles as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Outcomes {
    fn add(&mut self, o: &Outcomes) {
        self.granted += o.granted;
        self.busy += o.busy;
        self.no_quorum += o.no_quorum;
        self.unavailable += o.unavailable;
        self.expired += o.expired;
        self.other += o.other;
        self.release_failed += o.release_failed;
        self.releases += o.releases;
        self.released_nodes += o.released_nodes;
    }
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
    /// Every cycle it ran, the warm-up's included.
    all_cycles: u64,
    /// When its last measured cycle ended.
    last_end: Option<Instant>,
    /// Open loop only: the latest schedule slot among its measured cycles.
    last_slot: Option<u64>,
    /// The worker's client, and the locks acquire-only kept, for the release after the run.
    runner: Runner,
    kept: Vec<Kept>,
}

/// Waits for the workers and merges what they measured. Client CPU is read over the measured
/// window only: from the end of the warm-up to the last worker's end. Then the locks that
/// acquire-only kept are released, outside the window: the workload measures acquires, and
/// leaving rate × ttl keys on the servers (millions, for a 30 s ttl) is not a bench's to do.
///
/// With `probe`, the servers' counters were read before the first worker started (`server0`)
/// and are read again once the last has ended, on the manager's own connections: so the
/// second reading comes after every request the cycles queued on each node, releases that
/// returned at the quorum included. The difference covers every cycle run, warm-up included
/// (`ServerDelta::cycles`): a reading at the end of the warm-up takes round trips while the
/// workers go on, and counted 15 cycles' SETs too few in a test.
async fn gather(
    workers: Vec<tokio::task::JoinHandle<Box<WorkerOut>>>,
    measure_from: Instant,
    end: Instant,
    probe: Option<(&Redlock, Vec<Option<bench_server::Reading>>, Instant)>,
    counted: Option<Redlock>,
    manager_attempts: bool,
    early: EarlyEnd<'_>,
) -> Results {
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = cpu_time();
    let refused0 = counted.as_ref().map(Refused::of);
    let attempts0 = counted.as_ref().map(lock_attempts);
    let mut all_cycles = 0;
    let mut r = Results::empty();
    r.started = measure_from;
    let mut leftovers = Vec::new();
    let mut last_end: Option<Instant> = None;
    let mut last_slot: Option<u64> = None;
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
        all_cycles += w.all_cycles;
        r.outcomes.add(&w.outcomes);
        last_end = last_end.max(w.last_end);
        last_slot = last_slot.max(w.last_slot);
    }
    r.cpu = cpu_time().saturating_sub(cpu0);
    // Read now, before the servers' counters below (1-2 ms, on a 40 ms run 3-5% of the rate).
    let ran_out = early.progress.remaining.load(Ordering::SeqCst) == 0;
    let next_slot = match (early.schedule, last_slot) {
        (Some((start, rate)), Some(k)) => Some(slot_time(start, rate, k + 1)),
        _ => None,
    };
    let window_end = window_end(
        end,
        Instant::now(),
        ran_out.then_some(last_end).flatten(),
        next_slot,
    );
    // Read once the last worker has ended: their requests have all been sent or refused.
    if let (Some(redlock), Some(before)) = (&counted, &refused0) {
        r.refused = Some(Refused::of(redlock).since(before));
    }
    r.attempts = match (&counted, attempts0) {
        // Attempts of cycles that straddle the window's edges are counted whole at the edge
        // they end on: a few, against thousands.
        (Some(redlock), Some(before)) if manager_attempts => {
            lock_attempts(redlock).saturating_sub(before)
        }
        _ => r.cycles,
    };
    if let Some((redlock, before, t0)) = probe {
        let after = bench_server::read(redlock).await;
        let addrs: Vec<String> = redlock.nodes().iter().map(|n| n.config().addr()).collect();
        let mut d = ServerDelta::between(&addrs, &before, &after, t0.elapsed());
        d.cycles = all_cycles;
        r.server = Some(d);
    }
    r.elapsed = window_end
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

/// What may end the measured window before its clock does: the last `--ops` ticket, and for
/// an open loop the schedule (its start and rate) that the tickets were taken on.
struct EarlyEnd<'a> {
    progress: &'a Progress,
    schedule: Option<(Instant, f64)>,
}

/// When the open loop's slot `k` is meant to start.
fn slot_time(start: Instant, rate: f64, k: u64) -> Instant {
    start + Duration::from_secs_f64(k as f64 / rate)
}

/// Where the measured window ends, given `now` (the last worker has just ended).
///
/// It ends at `end`, or earlier once the `--ops` tickets ran out (`tickets_out` is when the
/// last measured cycle ended), never at `now` after that: reading the servers' counters and an
/// open loop's workers waking for slots they held after the last ticket are not the run's.
/// An open loop's window also runs to the slot after its last measured one (`next_slot`): its
/// schedule would not have started another cycle before then, and ending at the last cycle's
/// end instead counted N cycles over N-1 slot gaps and one latency (`--rate 100 --ops 10`
/// reported 110/s). Without `tickets_out` (no `--ops`, or the clock ended the run before the
/// tickets did) a closed loop's window ends at `now` or `end`, whichever is first; an open
/// loop's at `end` once its next slot is there, since its workers stop without waiting for a
/// slot at or past the end (ending at `now`, the last cycle's end, reported `--rate 10
/// --duration 1s` as 11/s).
fn window_end(
    end: Instant,
    now: Instant,
    tickets_out: Option<Instant>,
    next_slot: Option<Instant>,
) -> Instant {
    let last = tickets_out.unwrap_or(now);
    last.max(next_slot.unwrap_or(last)).min(end)
}

/// Every acquire attempt the manager has decided: granted or failed, retries included.
fn lock_attempts(redlock: &Redlock) -> u64 {
    let l = redlock.stats().locks;
    l.granted + l.busy + l.no_quorum + l.unavailable + l.expired + l.fence_unavailable
}

pub(crate) fn hist() -> Histogram<u64> {
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
const PROGRESS_FLUSH_NS: u64 = 1_000_000_000;

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Nanoseconds on the monotonic clock (the one `Instant` reads on Linux): the workers' per-cycle
/// timestamps as plain integers. `Instant`'s subtraction checks and normalises (seconds,
/// nanoseconds) pairs through a call: the five per cycle were about 420 instructions, 4% of a
/// lock cycle's CPU as callgrind counts it (2026-12-01, at 0716e72), charged to both clients.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the one timespec we pass it and nothing else; on failure
    // `ts` stays zero (CLOCK_MONOTONIC exists on every unix Rust supports).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` and the same moment in [`mono_ns`], to carry instants into the workers' clock
/// and back.
#[derive(Clone, Copy)]
struct ClockPair {
    at: Instant,
    ns: u64,
}

impl ClockPair {
    fn now() -> ClockPair {
        ClockPair {
            at: Instant::now(),
            ns: mono_ns(),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        self.ns + t.saturating_duration_since(self.at).as_nanos() as u64
    }

    fn instant(&self, ns: u64) -> Instant {
        self.at + Duration::from_nanos(ns.saturating_sub(self.ns))
    }
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

/// The most points one sweep runs (concurrencies × rates): each costs a warm-up and a
/// measurement, and a table of more rows is not read.
const MAX_POINTS: usize = 64;
/// The most `--runs`: each repeats the whole sweep.
const MAX_RUNS: u32 = 100;
/// The shortest `--slice`: below it a slice is mostly the start and end of its workers.
const MIN_SLICE: Duration = Duration::from_millis(50);
/// The default `--slice`: long enough that a slice is mostly steady state (its workers start
/// and stop in microseconds, its warm-up is a tenth of it), short enough that a 10 s side
/// takes ten turns.
const DEFAULT_SLICE: Duration = Duration::from_secs(1);

impl BenchArgs {
    /// Each side's turn with `--compare`.
    pub(crate) fn slice(&self) -> Duration {
        self.slice
            .unwrap_or(DEFAULT_SLICE.min(self.duration))
            .max(Duration::from_millis(1))
    }

    /// A sweep, repeated runs or a comparison: the table of points instead of one run's.
    pub(crate) fn is_multi(&self) -> bool {
        self.concurrency.len() > 1 || self.rate.len() > 1 || self.runs > 1 || self.compare.is_some()
    }

    /// Any of the flags that came with sweeps: the report then names the servers.
    fn new_flags(&self) -> bool {
        self.is_multi()
            || self.server_stats
            || self.plot.is_some()
            || self.hdr_out.is_some()
            || self.server_bin.is_some()
            || self.server_threads.is_some()
    }
}

/// The checks that need no server.
fn validate(args: &BenchArgs) -> Result<Option<Compare>, String> {
    if args.concurrency.contains(&0) {
        return Err("--concurrency must be at least 1".into());
    }
    if args.ops == Some(0) {
        return Err("--ops must be at least 1 (leave it out to run for --duration)".into());
    }
    if args.rate.contains(&0) {
        return Err("--rate must be at least 1 cycle a second".into());
    }
    for (i, c) in args.concurrency.iter().enumerate() {
        if args.concurrency[..i].contains(c) {
            return Err(format!("--concurrency lists {c} twice"));
        }
    }
    for (i, r) in args.rate.iter().enumerate() {
        if args.rate[..i].contains(r) {
            return Err(format!("--rate lists {r} twice"));
        }
    }
    let points = args.concurrency.len() * args.rate.len().max(1);
    if points > MAX_POINTS {
        return Err(format!(
            "{points} points (--concurrency values x --rate values): at most {MAX_POINTS}"
        ));
    }
    if args.runs == 0 || args.runs > MAX_RUNS {
        return Err(format!("--runs must be from 1 to {MAX_RUNS}"));
    }
    let drift = args.ttl.mul_f64(dragonlock::redlock::DEFAULT_DRIFT_FACTOR)
        + dragonlock::redlock::DRIFT_FIXED;
    if args.ttl <= drift + Duration::from_millis(1) {
        return Err(format!(
            "--ttl {:?} is too small: it must exceed the drift allowance of {drift:?}",
            args.ttl
        ));
    }
    if args.workload == Workload::Contended && args.resources == 0 {
        return Err("--resources must be at least 1".into());
    }
    if args.keys.is_some() && args.workload != Workload::Contended {
        return Err("--keys picks among the contended workload's shared resources".into());
    }
    KeyPicker::new(args.keys(), args.resources.max(1), args.zipf_s)?;
    let compare = args.compare.as_deref().map(Compare::parse).transpose()?;
    if args.baseline
        && compare
            .as_ref()
            .is_some_and(|c| c.key == CompareKey::Client)
    {
        return Err("--baseline and --compare client=… both run the baseline: give one".into());
    }
    // The baseline's limits, for `--baseline` and for `--compare client=…` alike.
    let with_baseline = match &compare {
        Some(c) if c.key == CompareKey::Client => Some("--compare client=…"),
        _ => args.baseline.then_some("--baseline"),
    };
    if let Some(flag) = with_baseline {
        if args.retries > 0 {
            return Err(format!(
                "--retries with {flag}: the baseline makes one attempt per cycle"
            ));
        }
        if args.key_prefix.len() + 32 > baseline::MAX_KEY {
            return Err(format!(
                "--key-prefix with {flag}: the baseline's keys are at most {} bytes",
                baseline::MAX_KEY
            ));
        }
        if matches!(args.workload, Workload::Extend | Workload::Multi) {
            return Err(format!(
                "{flag} runs the uncontended, contended and acquire-only workloads"
            ));
        }
        if args.release_wait == Some(ReleaseWaitArg::All) {
            // Its releases return at the quorum: dragonlock's waiting for every node would be
            // compared with less work.
            return Err(format!(
                "--release-wait all with {flag}: the baseline's releases return at the quorum"
            ));
        }
    }
    if args.baseline && args.is_multi() {
        return Err(
            "--baseline runs beside a single point: not with a sweep, --runs or --compare (for \
             those, and for turns in slices: --compare client=baseline,dragonlock)"
                .into(),
        );
    }
    if compare.is_some() {
        if args.ops.is_some() {
            return Err(
                "--ops with --compare: the sides take turns in time slices; use --duration".into(),
            );
        }
        if args.slice.is_some_and(|s| s < MIN_SLICE) {
            return Err(format!("--slice must be at least {MIN_SLICE:?}"));
        }
        if args.slice.is_some_and(|s| s > args.duration) {
            return Err("--slice must not be longer than --duration".into());
        }
    }
    bench_sides::check(args, compare.as_ref())?;
    if let Some(path) = &args.plot {
        if path.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(format!(
                "--plot {}: the plot is SVG; give a file name ending in .svg",
                path.display()
            ));
        }
        // Fail now, not after the run: an existing file is left as it is until the end.
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("--plot {}: cannot write it: {e}", path.display()))?;
    }
    if let Some(dir) = &args.hdr_out {
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                let probe = dir.join(".dragonlock-write-test");
                std::fs::write(&probe, b"")?;
                std::fs::remove_file(probe)
            })
            .map_err(|e| format!("--hdr-out {}: cannot write there: {e}", dir.display()))?;
    }
    Ok(compare)
}

pub async fn run(args: BenchArgs) -> ExitCode {
    let compare = match validate(&args) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let mut sides: Vec<Side> = Vec::new();
    // The two clients of `client=…` on the same servers: the local ones the first side starts.
    let same_servers = compare
        .as_ref()
        .is_some_and(|c| c.key == CompareKey::Client);
    for mut spec in bench_sides::side_specs(&args, compare.as_ref()) {
        let first = sides
            .first()
            .filter(|f| same_servers && !f.local.is_empty());
        if let Some(first) = first {
            spec.nodes = first.addrs.clone();
            spec.shared = true;
        }
        match Side::open(&args, spec, max_concurrency).await {
            Ok(mut side) => {
                if let Some(first) = sides.first().filter(|_| side.spec.shared) {
                    side.server_bin = first.server_bin.clone();
                    side.servers = first.servers.clone();
                }
                sides.push(side)
            }
            Err(code) => return code,
        }
    }
    if compare
        .as_ref()
        .is_some_and(|c| c.key == CompareKey::Release)
        && !sides[0].redlock.nodes().iter().any(|n| n.has_delex())
    {
        return fail(
            EXIT_USAGE,
            format!(
                "--compare release=…: no node has DELEX ({}; DELEX is in Dragonfly >= 1.37, \
                 Redis >= 8.4, Valkey >= 9.2), so both sides would release by script",
                sides[0].server
            ),
        );
    }
    if args.is_multi() {
        return bench_multi::run(&args, sides, compare).await;
    }
    let side = sides.pop().expect("one side");
    single(&args, side).await
}

/// A run of one point on one side: the table (or JSON object) of before sweeps.
async fn single(args: &BenchArgs, side: Side) -> ExitCode {
    let spec = Spec {
        concurrency: args.concurrency[0],
        rate: args.rate.first().copied(),
        warmup: args.warmup,
        duration: args.duration,
        ops: args.ops,
        progress: !args.json,
    };
    let redlock = side.redlock.clone();
    let probe = args.server_stats.then_some(&redlock);
    let results = measure(
        args,
        &spec,
        |_| Runner::Dragonlock(redlock.clone()),
        "bench",
        probe,
    )
    .await;
    let answering = side.answering().await;
    let mut baseline_release = None;
    let baseline = if args.baseline {
        let live: Vec<String> = side
            .addrs
            .iter()
            .zip(&side.up)
            .filter(|(_, u)| **u)
            .map(|(a, _)| a.clone())
            .collect();
        let connected = Baseline::connect(
            &live,
            side.addrs.len(),
            args.ttl,
            side.spec.force_script,
            !args.no_wake_on_release,
            spec.concurrency,
        )
        .await;
        let mut base = match connected {
            Ok(b) => b,
            Err(e) => return fail(EXIT_UNAVAILABLE, format!("baseline: {e}")),
        };
        baseline_release = Some(base.release_command());
        // The baseline has no key prefix of its own: it gets the one dragonlock's manager adds.
        let prefix = format!("{}bench:base", args.key_prefix);
        Some(
            measure(
                args,
                &spec,
                |_| Runner::Baseline(base.client()),
                &prefix,
                // The same servers, read the same way: server CPU per cycle of either client.
                probe,
            )
            .await,
        )
    } else {
        None
    };

    let mut setup = setup_json(args, &side, &spec);
    setup["baseline"] = serde_json::json!(args.baseline.then_some("single-loop"));
    setup["baseline_release"] = serde_json::json!(baseline_release);
    if !args.new_flags() {
        // Exactly the keys of before the sweeps (and `wake_on_release` only when it is off).
        if let Some(o) = setup.as_object_mut() {
            o.remove("servers");
            if !args.no_wake_on_release {
                o.remove("wake_on_release");
            }
        }
    }
    report(args, spec.rate, &results, baseline.as_ref(), setup, &side);
    if !args.json {
        print_node_stats(&side.redlock);
    }
    let mut series = vec![Series::new("dragonlock", spec.rate.is_some(), &results)];
    if let Some(b) = &baseline {
        series.push(Series::new("baseline", spec.rate.is_some(), b));
    }
    let code = write_outputs(args, &series, &[]);
    let quorum = side.redlock.quorum();
    drop(redlock);
    drop(side);
    if answering < quorum {
        return fail(
            EXIT_UNAVAILABLE,
            format!(
                "lost the servers: after the run only {answering} nodes answer, fewer than the \
                 quorum of {quorum}; the figures above are what was measured"
            ),
        );
    }
    code
}

/// Writes `--plot` and `--hdr-out`; a failure is reported and makes the exit code 73.
pub(crate) fn write_outputs(
    args: &BenchArgs,
    series: &[Series],
    sweep: &[bench_plot::SweepLine],
) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    if let Some(path) = &args.plot {
        if let Err(e) = bench_plot::plot(path, series, sweep) {
            code = fail(EXIT_CANT_CREATE, format!("--plot {}: {e}", path.display()));
        }
    }
    if let Some(dir) = &args.hdr_out {
        if let Err(e) = bench_plot::hdr_logs(dir, series) {
            code = fail(
                EXIT_CANT_CREATE,
                format!("--hdr-out {}: {e}", dir.display()),
            );
        }
    }
    code
}

/// Exit code: an output file could not be written (`EX_CANTCREAT`).
const EXIT_CANT_CREATE: u8 = 73;

/// The `setup` object of one side at one point.
pub(crate) fn setup_json(args: &BenchArgs, side: &Side, spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "nodes": side.addrs,
        "nodes_down": args.nodes_down,
        "server": side.server,
        // null with --nodes: no binary was started here (it was "" before 2026-11-30).
        "server_binary": (!side.server_bin.is_empty()).then_some(&side.server_bin),
        "tls": side.tls,
        "protocol": side.protocol,
        "release_path": side.release_paths,
        "release_wait": format!("{:?}", side.spec.release_wait).to_lowercase(),
        // On the baseline's side of `--compare client=…`: this side is the baseline.
        "baseline": side.baseline.as_ref().map(|_| "single-loop"),
        "baseline_release": side.baseline.as_ref().map(|b| b.release_command()),
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "concurrency": spec.concurrency,
        "ttl_ms": args.ttl.as_millis() as u64,
        "ops": spec.ops,
        "rate": spec.rate,
        "keys": (args.workload == Workload::Contended).then(|| key_mode_name(args.keys())),
        "zipf_s": (args.workload == Workload::Contended && args.keys() == KeysArg::Zipf).then_some(args.zipf_s),
        "key_prefix": args.key_prefix,
        "restart_delay_ms": args.restart_delay.map(|d| d.as_millis() as u64),
        "wake_on_release": !args.no_wake_on_release,
        "retries": args.retries,
        "retry_delay_ms": args.retry_delay.as_millis() as u64,
        "cores": cores(),
        "servers": side.servers,
    })
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

/// The warning for a run whose servers (and this client, when they share the machine) kept
/// the machine's cores busy: its latency is the scheduler's, not the servers'.
pub(crate) fn saturation_warning(r: &Results, addrs: &[String]) -> Option<String> {
    let server = r.server.as_ref()?;
    let cores = cores() as f64;
    if !bench_server::all_local(addrs) || cores == 0.0 {
        return None;
    }
    let wall = r.elapsed.as_secs_f64().max(1e-9);
    let (servers, client) = (server.cores_used(), r.cpu.as_secs_f64() / wall);
    (servers + client >= bench_server::SATURATED * cores).then(|| {
        format!(
            "warning: the servers used {servers:.2} and this client {client:.2} of the machine's \
             {cores} cores: the run measured the machine, not the servers"
        )
    })
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

/// What a granted cycle's release did.
#[derive(Clone, Copy)]
enum Release {
    /// None in this cycle: the lock is kept (acquire-only) or extended.
    Kept,
    /// Confirmed on this many nodes (at least a quorum).
    On(usize),
    /// Fewer than a quorum confirmed it.
    Failed,
}

/// Who a worker's cycles go through.
pub(crate) enum Runner {
    Dragonlock(Redlock),
    Baseline(baseline::Client),
}

/// One measurement: how many workers, at what rate, for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<u64>,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) ops: Option<u64>,
    /// The live line a second on stderr.
    pub(crate) progress: bool,
}

/// Runs `spec.concurrency` workers, each with the client `runner` makes for it, on keys under
/// `prefix`; with `probe`, reads the servers' counters around the measured window.
pub(crate) async fn measure(
    args: &BenchArgs,
    spec: &Spec,
    mut runner: impl FnMut(usize) -> Runner,
    prefix: &str,
    probe: Option<&Redlock>,
) -> Results {
    let progress = Arc::new(Progress {
        cycles: AtomicU64::new(0),
        granted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        remaining: AtomicU64::new(spec.ops.unwrap_or(u64::MAX)),
        recent: Mutex::new(coarse_hist()),
        printed: AtomicBool::new(false),
    });
    let (server0, t0) = match probe {
        Some(redlock) => (bench_server::read(redlock).await, Instant::now()),
        None => (Vec::new(), Instant::now()),
    };
    let start = Instant::now();
    let clock = ClockPair::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    // `--rate`: cycle k of the run is meant to start at `start + k / rate`; the workers take
    // the slots in order from this counter.
    let schedule = spec.rate.map(|_| Arc::new(AtomicU64::new(0)));
    let reporter = spec
        .progress
        .then(|| tokio::spawn(show_progress(progress.clone(), measure_from, end)));
    let runners: Vec<Runner> = (0..spec.concurrency).map(&mut runner).collect();
    // dragonlock's workers share one manager: its counters are read around the window.
    let counted = match runners.first() {
        Some(Runner::Dragonlock(redlock)) => Some(redlock.clone()),
        _ => None,
    };
    let mut workers = Vec::new();
    for (w, mut runner) in runners.into_iter().enumerate() {
        let progress = progress.clone();
        let (workload, ttl, resources) = (args.workload, args.ttl, args.resources);
        let retry = args.retries > 0;
        let schedule = schedule.clone();
        let rate = spec.rate.unwrap_or(0) as f64;
        let picker =
            KeyPicker::new(args.keys(), resources.max(1), args.zipf_s).expect("checked in run()");
        let prefix = prefix.to_string();
        workers.push(tokio::spawn(async move {
            let (mut acq, mut rel, mut cyc) = (hist(), hist(), hist());
            let mut corrected = hist();
            let mut recent = coarse_hist();
            let mut outcomes = Outcomes::default();
            let mut cycles = 0u64;
            let mut all_cycles = 0u64;
            let mut last_end = None;
            let mut last_slot = None;
            let mut kept = Vec::new();
            let own = format!("{prefix}:w{w}");
            // The contended and acquire-only workloads' resource names, written in place.
            let mut name = String::with_capacity(prefix.len() + 32);
            let multi = [
                format!("{prefix}:w{w}:a"),
                format!("{prefix}:w{w}:b"),
                format!("{prefix}:w{w}:c"),
            ];
            let mut held = None;
            let mut i = 0u64;
            // The window's edges on the integer clock the cycles are timed with.
            let (end_ns, from_ns) = (clock.ns(end), clock.ns(measure_from));
            let mut last_flush = mono_ns();
            loop {
                // Open loop: the next slot of the shared schedule, whenever this worker is free
                // to take it; a slot already past is started at once, and its lateness counts.
                // How late the worker took it is what counts, not how late the timer then woke
                // it for a slot still ahead (tokio's timer wakes a millisecond or two late: that
                // was most of the corrected latency at loads the client kept up with).
                let (queued, slot) = match &schedule {
                    // `--ops`: no slot is waited for once the tickets are gone.
                    Some(_) if progress.remaining.load(Ordering::Relaxed) == 0 => break,
                    Some(slots) => {
                        let k = slots.fetch_add(1, Ordering::Relaxed);
                        let at = slot_time(start, rate, k);
                        if at >= end {
                            break;
                        }
                        let taken = Instant::now();
                        tokio::time::sleep_until(at.into()).await;
                        let queued = taken.saturating_duration_since(at).as_nanos() as u64;
                        (Some(queued), Some(k))
                    }
                    None => (None, None),
                };
                let now = mono_ns();
                if now >= end_ns {
                    break;
                }
                // Measured when it really starts inside the window, whatever its slot: a run
                // that fell behind the schedule still runs slots meant for the warm-up once
                // the window has begun, and dropping those (as counting by intended start did)
                // reported 0 cycles/s at a rate far above capacity. Its corrected latency is
                // still taken from its intended start, as wrk2 does.
                let measuring = now >= from_ns;
                // `--ops N`: each measured cycle takes one of N tickets, so the workers run
                // exactly N between them (not N rounded up to a multiple of the workers).
                if measuring && !progress.take_ticket() {
                    break;
                }
                i += 1;
                all_cycles += 1;
                let t0 = mono_ns();
                let (outcome, t1) = match (workload, &mut runner) {
                    (Workload::Uncontended | Workload::Contended | Workload::AcquireOnly, r) => {
                        use std::fmt::Write;
                        // Written into the worker's one buffer: a `format!` per attempt cost
                        // the bench a heap allocation and its free each time (about 400
                        // instructions an attempt on one contended key, callgrind), counted
                        // in the client CPU of both clients.
                        let resource: &str = match workload {
                            Workload::Contended => {
                                let n = picker.pick(i, resources);
                                name.clear();
                                let _ = write!(name, "{prefix}:shared:{n}");
                                &name
                            }
                            Workload::AcquireOnly => {
                                name.clear();
                                let _ = write!(name, "{own}:{i}");
                                &name
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
                        let t1 = mono_ns();
                        match r {
                            Ok(lock) => (Ok(released(lock.release().await)), t1),
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
                            Some(lock) => lock
                                .extend(ttl)
                                .await
                                .map(|()| Release::Kept)
                                .map_err(|e| e.kind()),
                            // The first acquire failed (busy or nodes down): count it as such.
                            None => Err(LockErrorKind::NoQuorum),
                        };
                        let t1 = mono_ns();
                        if r.is_err() {
                            held = None;
                        }
                        (r, t1)
                    }
                };
                let t2 = mono_ns();
                if !measuring {
                    continue;
                }
                cycles += 1;
                last_end = Some(t2);
                last_slot = last_slot.max(slot);
                // At least 1 ns (the histograms' floor); the clock never runs back.
                let ns = |d: u64| d.max(1);
                match outcome {
                    // A lock granted and then not released on a quorum is not a cycle done:
                    // its own outcome, out of the grants and the latency rows.
                    Ok(Release::Failed) => {
                        outcomes.release_failed += 1;
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // The latency histograms hold granted cycles only, as acquire and release
                    // do: a busy answer is one round trip, and mixing those in put the contended
                    // cycle p50 below the acquire p50. Failed attempts are in attempts/s and
                    // the outcomes.
                    // Saturating: a sample past the histograms' 60 s top (an open loop far
                    // behind its schedule) counts as 60 s rather than not at all.
                    Ok(released) => {
                        let cycle = ns(t2.saturating_sub(t0));
                        cyc.saturating_record(cycle);
                        if let Some(queued) = queued {
                            corrected.saturating_record(cycle + queued);
                        }
                        recent.saturating_record(cycle);
                        outcomes.granted += 1;
                        progress.granted.fetch_add(1, Ordering::Relaxed);
                        if let Release::On(n) = released {
                            outcomes.releases += 1;
                            outcomes.released_nodes += n as u64;
                        }
                        acq.saturating_record(ns(t1.saturating_sub(t0)));
                        if t2 > t1 && !matches!(workload, Workload::AcquireOnly | Workload::Extend)
                        {
                            rel.saturating_record(t2 - t1);
                        }
                    }
                    Err(kind) => {
                        classify(&mut outcomes, kind);
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress.cycles.fetch_add(1, Ordering::Relaxed);
                if t2.saturating_sub(last_flush) > PROGRESS_FLUSH_NS {
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
            // Boxed: tokio moves a task's whole `Poll<Output>` out of its unwind guard on every
            // poll, `Pending` or not, and this one is about 700 bytes: two `memcpy` calls of
            // about 76 instructions each per lock cycle, for both clients, in the CPU measured.
            Box::new(WorkerOut {
                acquire: acq,
                release: rel,
                cycle: cyc,
                cycle_corrected: corrected,
                outcomes,
                cycles,
                all_cycles,
                last_end: last_end.map(|ns| clock.instant(ns)),
                last_slot,
                runner,
                kept,
            })
        }));
    }
    let probe = probe.map(|redlock| (redlock, server0, t0));
    // With --retries each cycle may make several attempts, which the manager counts; extend's
    // cycles are extensions, one attempt each.
    let manager_attempts = args.retries > 0 && args.workload != Workload::Extend;
    let early = EarlyEnd {
        progress: &progress,
        schedule: spec.rate.map(|rate| (start, rate as f64)),
    };
    let results = gather(
        workers,
        measure_from,
        end,
        probe,
        counted,
        manager_attempts,
        early,
    )
    .await;
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
        // Over the cycles the workers handed in since the last line, not since the start. A
        // worker hands its cycles in once a second at most, so at a low rate a line may have
        // none: it shows "-", not a p99 of 0.
        let p99 = p
            .recent
            .lock()
            .ok()
            .and_then(|mut h| {
                let p99 = (!h.is_empty()).then(|| h.value_at_quantile(0.99));
                h.reset();
                p99
            })
            .map_or_else(
                || "-".to_string(),
                |ns| format!("{:.1}us", ns as f64 / 1000.0),
            );
        let line = format!(
            "{rate:>9.0} cycles/s {grants:>9.0} grants/s  p99 {p99:>10}  errors {}  {}s left",
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
) -> (Result<Release, LockErrorKind>, u64) {
    match runner {
        Runner::Dragonlock(redlock) => {
            let r = if retry {
                redlock.acquire(resource, ttl).await
            } else {
                redlock.try_acquire(resource, ttl).await
            };
            let t1 = mono_ns();
            match r {
                Ok(lock) if !release => {
                    kept.push(Kept::Lock(lock));
                    (Ok(Release::Kept), t1)
                }
                Ok(lock) => (Ok(released(lock.release().await)), t1),
                Err(e) => (Err(e.kind()), t1),
            }
        }
        Runner::Baseline(client) => {
            let key = resource.as_bytes();
            let r = client.acquire(key).await;
            let t1 = mono_ns();
            match r {
                Ok(token) if !release => {
                    kept.push(Kept::Token(resource.to_string(), token));
                    (Ok(Release::Kept), t1)
                }
                Ok(token) => {
                    let n = client.release(key, &token).await;
                    let r = if n >= client.quorum() {
                        Release::On(n)
                    } else {
                        Release::Failed
                    };
                    (Ok(r), t1)
                }
                Err(kind) => (Err(kind), t1),
            }
        }
    }
}

/// What dragonlock's release returned, as a cycle's outcome.
fn released(r: Result<usize, dragonlock::LockError>) -> Release {
    match r {
        Ok(n) => Release::On(n),
        Err(_) => Release::Failed,
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

pub(crate) fn as_json(r: &Results, rate: Option<u64>) -> serde_json::Value {
    let o = &r.outcomes;
    let mut v = serde_json::json!({
        "cycles": r.cycles,
        "seconds": r.elapsed.as_secs_f64(),
        "cycles_per_sec": (r.cycles as f64 / r.elapsed.as_secs_f64()).round(),
        "attempts": r.attempts,
        "attempts_per_sec": (r.attempts as f64 / r.elapsed.as_secs_f64()).round(),
        "grants_per_sec": (o.granted as f64 / r.elapsed.as_secs_f64()).round(),
        "client_cpu_us_per_cycle": if r.cycles > 0 { (r.cpu.as_secs_f64() * 1e6 / r.cycles as f64 * 100.0).round() / 100.0 } else { 0.0 },
        "acquire": summary(&r.acquire),
        "release": summary(&r.release),
        "cycle": summary(&r.cycle),
        "outcomes": { "granted": o.granted, "busy": o.busy, "no_quorum": o.no_quorum, "unavailable": o.unavailable, "expired": o.expired, "other": o.other, "release_failed": o.release_failed },
        "nodes_per_release": (o.releases > 0).then(|| o.released_nodes as f64 / o.releases as f64),
        "refused": r.refused.map(|f| f.total()),
        "refused_by_reason": r.refused.map(|f| serde_json::json!({
            "overloaded": f.overloaded, "not_connected": f.not_connected, "restarted": f.restarted,
        })),
    });
    if let Some(target) = rate {
        let achieved = r.cycles_per_sec();
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
pub(crate) const OPEN_LOOP_REACHED: f64 = 0.95;

fn report(
    args: &BenchArgs,
    rate: Option<u64>,
    r: &Results,
    baseline: Option<&Results>,
    setup: serde_json::Value,
    side: &Side,
) {
    let mut out = serde_json::json!({ "setup": setup, "dragonlock": as_json(r, rate) });
    let warning = saturation_warning(r, &side.addrs);
    if let Some(server) = &r.server {
        out["server"] = server.to_json();
        out["server"]["saturated"] = serde_json::json!(warning.is_some());
    }
    if let Some(b) = baseline {
        let ratio = |a: &Histogram<u64>, b: &Histogram<u64>, q: f64| {
            (a.value_at_quantile(q) as f64 / b.value_at_quantile(q).max(1) as f64 * 100.0).round()
                / 100.0
        };
        out["baseline"] = as_json(b, rate);
        if let Some(server) = &b.server {
            out["baseline_server"] = server.to_json();
        }
        let rate = |x: &Results| x.attempts_per_sec();
        let grants = |x: &Results| x.outcomes.granted as f64 / x.elapsed.as_secs_f64();
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
        "options: key prefix {:?}, retries {} (delay {} ms + jitter up to as much), restart delay {}, wake on release {}{keys}",
        s["key_prefix"].as_str().unwrap_or(""),
        s["retries"],
        s["retry_delay_ms"],
        s["restart_delay_ms"]
            .as_u64()
            .map_or("off".to_string(), |ms| format!("{ms} ms")),
        if s["wake_on_release"] == false { "off" } else { "on" },
    );
    if s.get("servers").is_some() {
        println!("servers: {}", side.servers_line());
    }
    if let Some(release) = s["baseline_release"].as_str() {
        let publish = if s["wake_on_release"] == false {
            ""
        } else {
            " (publishing the release, as dragonlock's does)"
        };
        println!(
            "baseline: the single-loop client, releasing via {release}{publish} at the quorum"
        );
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
    let b = &out["baseline"]["outcomes"];
    // The baseline's rows hold its granted cycles only, too.
    let baseline_short = b.is_object() && b["granted"] != out["baseline"]["cycles"];
    println!();
    if r.outcomes.granted < r.cycles || baseline_short {
        println!("{LATENCY_LEGEND}");
    }
    if !open_loop.is_empty() {
        println!(
            "'(intended)': each cycle from its intended start, coordinated omission corrected"
        );
    }
    for line in open_loop {
        println!("{line}");
    }
    println!(
        "outcomes: granted {}, busy {}, no quorum {}, unavailable {}, expired {}, other {}, \
         release failed {}{}",
        o["granted"],
        o["busy"],
        o["no_quorum"],
        o["unavailable"],
        o["expired"],
        o["other"],
        o["release_failed"],
        refused_words(r.refused.as_ref())
    );
    if let Some(n) = out["dragonlock"]["nodes_per_release"].as_f64() {
        println!("released on {n:.2} nodes per release, on average");
    }
    // The baseline's outcomes only when it had other than grants: a failed release or busy
    // answers there change what its ratio means.
    if baseline_short {
        println!(
            "baseline outcomes: granted {}, busy {}, no quorum {}, unavailable {}, expired {}, \
             other {}, release failed {}",
            b["granted"],
            b["busy"],
            b["no_quorum"],
            b["unavailable"],
            b["expired"],
            b["other"],
            b["release_failed"],
        );
    }
    if let Some(r) = out.get("ratio_to_baseline") {
        println!(
            "ratio to baseline: throughput (grants/s) {:.2}x, attempts/s {:.2}x, cycle p50 {:.2}x, \
             cycle p99 {:.2}x",
            r["throughput"].as_f64().unwrap_or(0.0),
            r["attempts"].as_f64().unwrap_or(0.0),
            r["cycle_p50"].as_f64().unwrap_or(0.0),
            r["cycle_p99"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(server) = out.get("server") {
        for line in server_lines(server) {
            println!("{line}");
        }
    }
    if let Some(server) = out.get("baseline_server") {
        for line in server_lines(server) {
            println!("baseline's {line}");
        }
    }
    if let Some(w) = warning {
        println!("{w}");
    }
}

/// The outcomes line's tail: the node requests the client refused, when it refused any.
pub(crate) fn refused_words(refused: Option<&Refused>) -> String {
    match refused {
        Some(f) if f.total() > 0 => format!(
            "; refused {} node requests ({} overloaded, {} not connected, {} restart delay): \
             see 'refused' under the per-node view",
            f.total(),
            f.overloaded,
            f.not_connected,
            f.restarted
        ),
        Some(_) => ", refused 0".into(),
        None => String::new(),
    }
}

/// The servers' side in words: CPU per cycle in total and per node, cores used, and each lock
/// command's calls and usec_per_call.
pub(crate) fn server_lines(server: &serde_json::Value) -> Vec<String> {
    let per_node: Vec<String> = server["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| match n["cpu_us_per_cycle"].as_f64() {
            Some(us) => format!("{us}"),
            None => "?".into(),
        })
        .collect();
    let commands: Vec<String> = server["commands"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, c)| {
            format!(
                "{name} {} us/call ({} calls)",
                c["usec_per_call"], c["calls"]
            )
        })
        .collect();
    vec![
        format!(
            "server CPU: {} us per cycle in all ({} per node), {} cores busy on average",
            server["cpu_us_per_cycle"],
            per_node.join(" / "),
            server["cores_used"]
        ),
        format!("server commands: {}", commands.join(", ")),
    ]
}

/// Each node as dragonlock's manager saw it over its whole run, warm-up and the closing `PING`s
/// included (the baseline has sockets of its own and is not in these figures): requests,
/// failures and round trips, from [`Redlock::stats`]. Round trips are from the request being queued to
/// its reply being read, so under load they include the wait for the driver's next write.
fn print_node_stats(redlock: &Redlock) {
    let stats = redlock.stats();
    // Power-of-two buckets: estimates within a factor of two (`RttHistogram::quantile`).
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("~{d:.0?}"));
    println!("per node (dragonlock, the whole run; rtt within 2x):");
    let mut any_refused = false;
    for n in &stats.nodes {
        let e = &n.errors;
        println!(
            "  {:<22} {:?}: {} requests, errors: {} lost, {} timeouts, {} server, {} refused; \
             {} reconnects; rtt p50 {} p99 {}",
            n.addr,
            n.state,
            n.requests_sent,
            e.connection_lost,
            e.timeouts,
            e.server_errors,
            e.refused_overloaded + e.refused_not_connected + e.refused_restarted,
            n.reconnects,
            ms(n.rtt.p50()),
            ms(n.rtt.p99()),
        );
        any_refused |= e.refused_overloaded + e.refused_not_connected + e.refused_restarted > 0;
    }
    if any_refused {
        println!("{REFUSED_LEGEND}");
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

    /// `--rate 100 --ops 10`: ten slots 10 ms apart, the last cycle ending 1 ms after its slot.
    /// The window runs to the eleventh slot (100 ms, 100/s), not to the last cycle's end
    /// (91 ms, the 110/s it reported); a loop that fell behind ends at its last cycle's end; and
    /// when the clock ended the run before the tickets did, at the clock.
    #[test]
    fn the_window_ends_at_the_last_ticket_or_the_clock() {
        let start = Instant::now();
        let ms = |x: u64| start + Duration::from_millis(x);
        let (end, now) = (ms(1_000), ms(95));
        let slot = |k| slot_time(start, 100.0, k);
        assert_eq!(slot(10), ms(100));
        assert_eq!(window_end(end, now, Some(ms(91)), Some(slot(10))), ms(100));
        assert_eq!(window_end(end, now, Some(ms(130)), Some(slot(10))), ms(130));
        // Closed loop: the last ticket's cycle end, not when the workers were gathered.
        assert_eq!(window_end(end, ms(120), Some(ms(91)), None), ms(91));
        // The clock first (`--rate 10 --duration 1s --ops 1000` reported ~11/s): the workers
        // stop at the last slot's cycle end, before `end`, without waiting for the next slot.
        assert_eq!(window_end(end, ms(905), None, Some(ms(1_000))), end);
        assert_eq!(window_end(end, ms(905), None, Some(ms(1_100))), end);
        // A closed loop's workers each end on the clock: the window ends when the last did.
        assert_eq!(window_end(end, ms(900), None, None), ms(900));
        // Never past the end, whatever the schedule says.
        assert_eq!(window_end(end, now, Some(ms(990)), Some(ms(1_010))), end);
    }

    /// The workers' integer clock: read through `clock_gettime` (the `unsafe` block in
    /// `mono_ns`), it runs forward from a pair's reading, and instants carried into it and back
    /// come out as they went in.
    #[test]
    fn the_integer_clock_carries_instants_both_ways() {
        let clock = ClockPair::now();
        let (a, b) = (mono_ns(), mono_ns());
        assert!(clock.ns > 0 && a >= clock.ns && b >= a);
        let t = clock.at + Duration::from_millis(1_500);
        assert_eq!(clock.ns(t), clock.ns + 1_500_000_000);
        assert_eq!(clock.instant(clock.ns(t)), t);
        // Before the pair's reading: clamped to it, never wrapped.
        assert_eq!(clock.instant(clock.ns - 5), clock.at);
    }
}
