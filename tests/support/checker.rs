//! The safety checker: a randomized, time-bounded run of many independent clients against
//! five real nodes behind fault proxies, with a nemesis injecting network and process faults.
//!
//! Every grant is recorded as an interval [granted at, stopped believing] on the one monotonic
//! clock of this process: the holder stops believing at its release, at a failed extension, or
//! at the lock's validity, whichever comes first. Mutual exclusion holds when, per resource, no
//! two intervals overlap. Liveness holds when, after the nemesis heals everything, every client
//! acquires again within a bound.
//!
//! With fencing on, a second property: for every pair of grants of one resource where the first
//! ended before the second's acquire began (on the same clock), the first's token is smaller.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonlock::redlock::fence::FenceProtocol;
use dragonlock::{Redlock, RedlockOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::proxy::{Direction, Fault, Proxy};
use super::server::Server;

/// The faults the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Proxy: fixed plus jittered latency.
    Delay,
    /// Proxy: nothing forwarded in one or both directions.
    BlackHole,
    /// Proxy: every connection reset.
    Reset,
    /// Proxy: a reply cut in the middle, the rest held.
    Stall,
    /// Proxy: replies one byte at a time.
    Trickle,
    /// Process: SIGSTOP, then SIGCONT.
    Pause,
    /// Process: kill -9, down for a while, then started again (its keys are lost).
    Kill,
    /// Process: kill -9 and started again at once (its keys are lost).
    Restart,
}

impl FaultKind {
    const NETWORK: [FaultKind; 5] = [
        FaultKind::Delay,
        FaultKind::BlackHole,
        FaultKind::Reset,
        FaultKind::Stall,
        FaultKind::Trickle,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::BlackHole => "blackhole",
            FaultKind::Reset => "reset",
            FaultKind::Stall => "stall",
            FaultKind::Trickle => "trickle",
            FaultKind::Pause => "pause",
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
        }
    }
}

/// One run's shape.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    pub nodes: usize,
    /// Independent `Redlock` instances, each with its own connections.
    pub clients: usize,
    /// Concurrent workers per client.
    pub workers: usize,
    pub resources: usize,
    /// How long the nemesis runs.
    pub duration: Duration,
    /// Lock ttls are drawn from this range (milliseconds), extensions too.
    pub ttl_ms: (u64, u64),
    /// The faults the nemesis picks from.
    pub faults: Vec<FaultKind>,
    /// Chance that one fault hits a majority of the nodes instead of a minority.
    pub majority_chance: f64,
    /// The clients' delayed-restart rule.
    pub restart_delay: Option<Duration>,
    /// How long every client gets to acquire again after the heal.
    pub recovery_bound: Duration,
    pub seed: u64,
    /// Fencing tokens, and which protocol makes them (the broken ones are negative controls).
    pub fencing: Option<FenceProtocol>,
    /// A node the nemesis never kills or restarts. Fenced runs keep one, so that no schedule of
    /// restarts wipes the counters of every node: a resource whose every counter is gone looks
    /// exactly like a new one, which is outside the fencing guarantee.
    pub spare: Option<usize>,
    /// Kills and restarts hit a minority only, whatever `majority_chance` says for the rest.
    pub minority_restarts: bool,
    /// The quiet time after each fault is healed, drawn from this range (milliseconds).
    pub gap_ms: (u64, u64),
    /// Chance that an attempt takes two resources at once (`try_acquire_many`) instead of one.
    /// Each resource of such a grant gets its own interval (and, fenced, its own token), so
    /// both properties are checked per resource across single and multi-resource grants.
    pub multi_chance: f64,
}

impl CheckerConfig {
    /// The CI configuration: every fault kind, restarts under the delayed-restart rule.
    pub fn short(duration: Duration) -> CheckerConfig {
        let mut faults = FaultKind::NETWORK.to_vec();
        faults.extend([FaultKind::Pause, FaultKind::Kill, FaultKind::Restart]);
        CheckerConfig {
            nodes: 5,
            clients: 4,
            workers: 2,
            resources: 3,
            duration,
            ttl_ms: (150, 600),
            faults,
            majority_chance: 0.2,
            // Past the longest ttl (600 ms). The credited uptime is the report less a second.
            restart_delay: Some(Duration::from_secs(1)),
            recovery_bound: Duration::from_secs(30),
            seed: seed(),
            fencing: None,
            spare: None,
            minority_restarts: false,
            gap_ms: (0, 300),
            multi_chance: 0.0,
        }
    }

    /// Fencing tokens made by `protocol`, with the restart rule at twice the longest ttl (the
    /// fencing guarantee's assumption; extensions draw from the same range).
    pub fn fenced(mut self, protocol: FenceProtocol) -> CheckerConfig {
        self.fencing = Some(protocol);
        self.spare = Some(0);
        self.restart_delay = self
            .restart_delay
            .map(|_| Duration::from_millis(2 * self.ttl_ms.1 + 200));
        self
    }
}

impl CheckerConfig {
    /// The persistence hazard: the nemesis only restarts nodes (losing their keys), a majority
    /// of them at once each time. `rule` turns the delayed-restart rule on, just past the
    /// longest ttl.
    ///
    /// The ttls are long against a restart. The nemesis restarts its victims one after the
    /// other, each waiting for the server to answer, and a holder shows the hazard only if its
    /// hold (up to half its ttl) spans the restarts and another client's acquire. With ttls of
    /// 300–600 ms, restarts slowed by a loaded machine outlasted most holds: one clean-clone CI
    /// run under two busy loops saw 244 grants over 11 majority restarts and no violation.
    pub fn restarts(duration: Duration, rule: bool) -> CheckerConfig {
        let mut c = CheckerConfig::short(duration);
        c.faults = vec![FaultKind::Restart];
        c.majority_chance = 1.0;
        c.ttl_ms = (2_000, 4_000);
        c.restart_delay = rule.then(|| Duration::from_millis(c.ttl_ms.1 + 200));
        c
    }
}

/// `DRAGONLOCK_SAFETY_SEED` when set (to replay a schedule), else random.
fn seed() -> u64 {
    std::env::var("DRAGONLOCK_SAFETY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub attempts: u64,
    pub grants: u64,
    /// Of the grants, those of two resources at once.
    pub multi_grants: u64,
    pub extends: u64,
    pub extend_failures: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub majority_faults: u64,
    /// Overlapping grants on one resource: must be 0.
    pub violations: Vec<String>,
    /// Fenced runs: a grant whose token was not larger than that of a grant that ended before
    /// it began. Must be 0.
    pub fence_violations: Vec<String>,
    /// Fenced runs: acquires refused because too few nodes kept the counter.
    pub fence_unavailable: u64,
    /// Fenced runs: resources reseeded after the heal (from the highest token granted) and
    /// then granted a token above it.
    pub reseeded: u64,
    /// Per client, from the heal to its first grant; `None` when it did not recover in time.
    pub recoveries: Vec<Option<Duration>>,
}

impl Report {
    pub fn longest_recovery(&self) -> Option<Duration> {
        self.recoveries
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|r| r.into_iter().max())
    }

    pub fn summary(&self, config: &CheckerConfig) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "safety: seed={} duration={:?} clients={}x{} resources={} ops={} grants={} multi_grants={} extends={} \
             extend_failures={} faults[{}] majority_faults={} violations={} fence_violations={} \
             fence_unavailable={} reseeded={} spare={:?} multi_chance={} longest_recovery={}",
            config.seed,
            config.duration,
            config.clients,
            config.workers,
            config.resources,
            self.attempts,
            self.grants,
            self.multi_grants,
            self.extends,
            self.extend_failures,
            faults.join(" "),
            self.majority_faults,
            self.violations.len(),
            self.fence_violations.len(),
            self.fence_unavailable,
            self.reseeded,
            config.spare,
            config.multi_chance,
            match self.longest_recovery() {
                Some(d) => format!("{}ms", d.as_millis()),
                None => "did-not-recover".into(),
            }
        )
    }
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    grants: AtomicU64,
    multi_grants: AtomicU64,
    extends: AtomicU64,
    extend_failures: AtomicU64,
    fence_unavailable: AtomicU64,
}

struct Interval {
    /// When the acquire that led to this grant began.
    began: Instant,
    start: Instant,
    end: Instant,
    client: usize,
    token: Option<u64>,
}

/// Runs one checker configuration to the end and reports.
pub async fn run(config: CheckerConfig) -> Report {
    let (servers, proxies) = super::proxy::proxied_cluster(config.nodes).await;
    let proxies: Vec<Arc<Proxy>> = proxies.into_iter().map(Arc::new).collect();
    let urls: Vec<String> = proxies.iter().map(|p| p.url()).collect();
    let mut options = RedlockOptions::default();
    if let Some(d) = config.restart_delay {
        options = options.restart_delay(d);
    }
    if let Some(protocol) = config.fencing {
        options = options.fencing(true).fence_protocol_for_tests(protocol);
    }
    let mut clients = Vec::new();
    for _ in 0..config.clients {
        clients.push(super::redlock_over(&urls, options.clone()).await);
    }
    if let Some(d) = config.restart_delay {
        // Fresh servers: the rule keeps them from voting until they have been up this long (the
        // credited uptime is the report less a second).
        tokio::time::sleep(d + Duration::from_millis(1100)).await;
    }

    if config.fencing.is_some() {
        // Every resource's counter on every node before the first fault (the spare keeps it).
        for r in 0..config.resources {
            let lock = clients[0]
                .try_acquire(&format!("r{r}"), Duration::from_secs(1))
                .await
                .expect("a fenced grant on healthy nodes");
            let _ = lock.release().await;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let intervals: Arc<Mutex<BTreeMap<usize, Vec<Interval>>>> = Default::default();

    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..config.workers {
            workers.spawn(worker(
                client.clone(),
                c,
                config.seed ^ ((c * 64 + w) as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                config.clone(),
                stop.clone(),
                counters.clone(),
                intervals.clone(),
            ));
        }
    }

    let nemesis = {
        let (config, proxies) = (config.clone(), proxies.clone());
        std::thread::spawn(move || nemesis(servers, proxies, config))
    };
    let nemesis_result = tokio::task::spawn_blocking(move || nemesis.join())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let (servers, faults, majority_faults) = match nemesis_result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };

    // Everything is healed now: each client must get a lock again.
    let recoveries = recover(&clients, config.recovery_bound).await;
    let mut intervals = std::mem::take(&mut *intervals.lock().unwrap());
    // The broken protocols of the negative controls have nothing to reseed.
    let reseeded = match config.fencing {
        Some(FenceProtocol::Proven) => reseed(&clients[0], &intervals).await,
        _ => 0,
    };
    drop(servers);
    let violations = overlaps(&mut intervals);
    let fence_violations = fence_order(&intervals);

    Report {
        attempts: counters.attempts.load(Ordering::SeqCst),
        grants: counters.grants.load(Ordering::SeqCst),
        multi_grants: counters.multi_grants.load(Ordering::SeqCst),
        extends: counters.extends.load(Ordering::SeqCst),
        extend_failures: counters.extend_failures.load(Ordering::SeqCst),
        faults,
        majority_faults,
        violations,
        fence_violations,
        fence_unavailable: counters.fence_unavailable.load(Ordering::SeqCst),
        reseeded,
        recoveries,
    }
}

/// After the heal, as an operator would: each resource that refuses for lack of counters is
/// reseeded from the highest token its grants carried, and must then grant a larger token.
/// Returns how many resources needed it.
async fn reseed(client: &Redlock, intervals: &BTreeMap<usize, Vec<Interval>>) -> u64 {
    let mut reseeded = 0;
    for (resource, list) in intervals {
        let name = format!("r{resource}");
        let highest = list.iter().filter_map(|i| i.token).max().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let lock = loop {
            match client.try_acquire(&name, Duration::from_millis(500)).await {
                Ok(lock) => break lock,
                Err(e) if e.is_fence_unavailable() => {
                    client.reseed_fence(&name, highest + 1).await.unwrap();
                    reseeded += 1;
                }
                Err(e) => assert!(Instant::now() < deadline, "{name} after the heal: {e}"),
            }
        };
        let token = lock.fencing_token().unwrap();
        assert!(token > highest, "{name}: token {token} after {highest}");
        let _ = lock.release().await;
    }
    reseeded
}

/// Every grant whose token is not larger than that of a grant of the same resource that ended
/// before this one's acquire began.
fn fence_order(intervals: &BTreeMap<usize, Vec<Interval>>) -> Vec<String> {
    let mut violations = Vec::new();
    for (resource, list) in intervals {
        let mut by_end: Vec<&Interval> = list.iter().filter(|i| i.token.is_some()).collect();
        by_end.sort_by_key(|i| i.end);
        let mut by_began: Vec<&Interval> = by_end.clone();
        by_began.sort_by_key(|i| i.began);
        // Sweep: the largest token among grants that ended before each acquire began.
        let (mut ended, mut highest) = (0, None::<(u64, usize)>);
        for b in by_began {
            while ended < by_end.len() && by_end[ended].end < b.began {
                let a = by_end[ended];
                if highest.is_none_or(|(t, _)| a.token.unwrap() > t) {
                    highest = Some((a.token.unwrap(), a.client));
                }
                ended += 1;
            }
            if let Some((t, by)) = highest {
                let tb = b.token.unwrap();
                if tb <= t {
                    violations.push(format!(
                        "resource {resource}: client {} got token {tb} after client {by}'s {t} had ended",
                        b.client
                    ));
                }
            }
        }
    }
    violations
}

/// Per client, how long after now it took to get a lock; `None` past `bound`.
async fn recover(clients: &[Redlock], bound: Duration) -> Vec<Option<Duration>> {
    let healed_at = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            while healed_at.elapsed() < bound {
                if let Ok(lock) = client
                    .try_acquire(&format!("recovery-{c}"), Duration::from_millis(500))
                    .await
                {
                    let took = healed_at.elapsed();
                    let _ = lock.release().await;
                    return (c, Some(took));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (c, None)
        });
    }
    let mut by_client = vec![None; clients.len()];
    while let Some(r) = tasks.join_next().await {
        let (c, took) = r.unwrap();
        by_client[c] = took;
    }
    by_client
}

/// Every grant that began before an earlier grant of the same resource had ended.
fn overlaps(intervals: &mut BTreeMap<usize, Vec<Interval>>) -> Vec<String> {
    let mut violations = Vec::new();
    for (resource, list) in intervals.iter_mut() {
        list.sort_by_key(|i| i.start);
        let mut held_until: Option<(Instant, usize)> = None;
        for i in list.iter() {
            if let Some((until, by)) = held_until {
                if i.start < until {
                    violations.push(format!(
                        "resource {resource}: client {} granted {:?} before client {by}'s hold ended",
                        i.client,
                        until - i.start
                    ));
                }
            }
            if held_until.is_none_or(|(until, _)| i.end > until) {
                held_until = Some((i.end, i.client));
            }
        }
    }
    violations
}

async fn worker(
    client: Redlock,
    c: usize,
    seed: u64,
    config: CheckerConfig,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    intervals: Arc<Mutex<BTreeMap<usize, Vec<Interval>>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ttl = |rng: &mut StdRng| {
        Duration::from_millis(rng.random_range(config.ttl_ms.0..=config.ttl_ms.1))
    };
    while !stop.load(Ordering::SeqCst) {
        let resource = rng.random_range(0..config.resources);
        // A second, different resource for a multi-resource attempt.
        let second = (config.resources > 1 && rng.random_bool(config.multi_chance))
            .then(|| (resource + rng.random_range(1..config.resources)) % config.resources);
        let lock_ttl = ttl(&mut rng);
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        let acquired = match second {
            None => client.try_acquire(&format!("r{resource}"), lock_ttl).await,
            Some(other) => {
                let set = [format!("r{resource}"), format!("r{other}")];
                client.try_acquire_many(&set, lock_ttl).await
            }
        };
        let mut lock = match acquired {
            Ok(lock) => lock,
            Err(e) => {
                if e.is_fence_unavailable() {
                    counters.fence_unavailable.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
                continue;
            }
        };
        let start = Instant::now();
        counters.grants.fetch_add(1, Ordering::Relaxed);
        if second.is_some() {
            counters.multi_grants.fetch_add(1, Ordering::Relaxed);
        }
        let hold = Duration::from_millis(rng.random_range(0..=lock_ttl.as_millis() as u64 / 2));
        tokio::time::sleep(hold.min(lock.remaining())).await;
        if rng.random_bool(0.3) {
            match lock.extend(ttl(&mut rng)).await {
                Ok(()) => {
                    counters.extends.fetch_add(1, Ordering::Relaxed);
                    let more = Duration::from_millis(rng.random_range(0..=50));
                    tokio::time::sleep(more.min(lock.remaining())).await;
                }
                // A failed extension ends the holder's belief (valid_until moves to now).
                Err(_) => {
                    counters.extend_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The holder stops believing here: before its release goes out, or at the validity.
        let end = Instant::now().min(lock.valid_until());
        {
            let mut intervals = intervals.lock().unwrap();
            for r in std::iter::once(resource).chain(second) {
                intervals.entry(r).or_default().push(Interval {
                    began,
                    start,
                    end,
                    client: c,
                    token: lock.fencing_token_of(&format!("r{r}")),
                });
            }
        }
        let _ = lock.release().await;
    }
}

/// Injects faults until the configured duration is over, then heals everything. Runs on its own
/// thread: process faults block (a restart waits for the server to answer).
fn nemesis(
    mut servers: Vec<Server>,
    proxies: Vec<Arc<Proxy>>,
    config: CheckerConfig,
) -> (Vec<Server>, BTreeMap<&'static str, u64>, u64) {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut majority_faults = 0;
    let end = std::time::Instant::now() + config.duration;
    let n = servers.len();
    while std::time::Instant::now() < end {
        let kind = config.faults[rng.random_range(0..config.faults.len())];
        let loses_keys = matches!(kind, FaultKind::Kill | FaultKind::Restart);
        let majority =
            rng.random_bool(config.majority_chance) && !(loses_keys && config.minority_restarts);
        let victims_count = if majority {
            majority_faults += 1;
            n / 2 + 1
        } else {
            rng.random_range(1..=(n - 1) / 2)
        };
        let mut order: Vec<usize> = (0..n)
            .filter(|&v| !(loses_keys && config.spare == Some(v)))
            .collect();
        let n = order.len();
        for i in 0..victims_count {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
        let victims = &order[..victims_count];
        *counts.entry(kind.name()).or_default() += 1;
        let dur = Duration::from_millis(rng.random_range(100..=700));
        for &v in victims {
            match kind {
                FaultKind::Delay => proxies[v].set(Fault::Delay {
                    fixed: Duration::from_millis(rng.random_range(5..=50)),
                    jitter: Duration::from_millis(rng.random_range(0..=50)),
                }),
                FaultKind::BlackHole => proxies[v].set(Fault::BlackHole(
                    [Direction::Both, Direction::ToServer, Direction::ToClient]
                        [rng.random_range(0..3)],
                )),
                FaultKind::Reset => proxies[v].set(Fault::Reset),
                FaultKind::Stall => proxies[v].set(Fault::StallMidFrame),
                FaultKind::Trickle => proxies[v].set(Fault::Trickle(Duration::from_millis(1))),
                FaultKind::Pause => servers[v].stop(),
                FaultKind::Kill => servers[v].kill9(),
                FaultKind::Restart => servers[v].restart(),
            }
        }
        std::thread::sleep(dur);
        for &v in victims {
            match kind {
                FaultKind::Pause => servers[v].cont(),
                FaultKind::Kill => servers[v].restart(),
                FaultKind::Restart => {}
                _ => proxies[v].heal(),
            }
        }
        std::thread::sleep(Duration::from_millis(
            rng.random_range(config.gap_ms.0..=config.gap_ms.1),
        ));
    }
    for (s, p) in servers.iter_mut().zip(&proxies) {
        p.heal();
        if !s.is_running() {
            s.restart();
        }
    }
    (servers, counts, majority_faults)
}
