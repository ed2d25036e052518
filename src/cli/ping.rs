//! `dragonlock ping`: the check an operator runs before trusting a set of nodes with locks.
//!
//! For each node it reports reachability and round trip, the server and its version, and every
//! setting that breaks Redlock's assumptions, then a verdict line. Findings come in two
//! severities:
//!
//! | finding | severity | why |
//! |---|---|---|
//! | unreachable | counts against the quorum | a lock needs a majority of the *configured* nodes |
//! | replica (`role:slave`) | unsafe | not an independent primary: it follows another node's keys |
//! | `maxmemory-policy` `allkeys-*` / `volatile-*`, Dragonfly cache mode | unsafe | every lock key has a ttl, so both families may evict a held lock |
//! | the same server named twice | unsafe | one server would cast two votes |
//! | a primary with replicas | warning | a failover can promote a replica without the newest keys |
//! | snapshots (`save` points, AOF not `always`) | warning | a crash restores older lock keys, so clients need the delayed-restart rule (the fencing counters it restores are tagged with the old `run_id` and set aside as stale) |
//! | Dragonfly (persistence not readable) | warning | a restored snapshot brings back older fencing counters, which Dragonfly (no `run_id`) cannot tag: tokens can go backwards |
//! | no persistence and no `--restart-delay` | warning | a restart loses the keys, so clients need the delayed-restart rule |
//! | up for less than `--restart-delay` (less the second clients discount) | sitting out, does not vote | clients with that delay do not ask it yet |
//!
//! Exit codes: 0 safe (warnings allowed); 78 some node is configured unsafely (whatever else);
//! 69 no node is unsafe, but fewer than a quorum can vote (unreachable, or inside the restart
//! delay).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dragonlock::conn::{Connection, ConnectionConfig, ConnectionStats};

/// Exit code: a node is configured unsafely for locks (sysexits' `EX_CONFIG`).
pub const EXIT_UNSAFE: u8 = 78;

/// How many `PING`s the round trip is the best of: the first can pay for a cold path.
const RTT_SAMPLES: usize = 3;

#[derive(clap::Args)]
pub struct PingArgs {
    /// Nodes: host:port, redis:// or rediss:// (TLS) URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    tls: crate::TlsArgs,
    /// The clients' `restart_delay`: nodes up for less do not vote, and persistence that can lose
    /// keys is then expected and not warned about.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
    /// How long to wait for each node's connect and handshake.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    timeout: Duration,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Breaks mutual exclusion: the node must not be a lock node.
    Unsafe,
    /// Worth an operator's look; the node still votes.
    Warning,
    /// The node is healthy but does not vote now (inside the restart delay).
    Sitting,
}

/// One thing found about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

/// What the server's `INFO` sections said, as far as lock safety goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub role: String,
    pub maxmemory_policy: String,
    pub cache_mode: bool,
    pub aof_enabled: bool,
    pub appendfsync: String,
    /// Redis's `save` points (`CONFIG GET save`); `None` where the server does not say
    /// (Dragonfly answers `CONFIG GET` with an empty map).
    pub save: Option<String>,
    pub dragonfly: bool,
    pub replicas: u64,
    pub uptime: Option<Duration>,
    /// Tells one server process from every other: `run_id` (Redis), else `master_replid`
    /// (Dragonfly has no `run_id`; both report a replication id made at start).
    pub identity: Option<String>,
}

/// `key:value` lines of `INFO` text.
fn info_fields(text: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        line.split_once(':')
    })
}

impl NodeFacts {
    /// Reads the fields that matter from `INFO` text (any sections, any order).
    pub fn from_info(text: &[u8]) -> NodeFacts {
        let mut f = NodeFacts::default();
        let (mut run_id, mut replid) = (None, None);
        for (k, v) in info_fields(text) {
            match k {
                "role" => f.role = v.to_string(),
                "maxmemory_policy" => f.maxmemory_policy = v.to_string(),
                "cache_mode" => f.cache_mode = v == "cache",
                "aof_enabled" => f.aof_enabled = v == "1",
                "dragonfly_version" => f.dragonfly = true,
                "connected_slaves" => f.replicas = v.parse().unwrap_or(0),
                "uptime_in_seconds" => f.uptime = v.parse().ok().map(Duration::from_secs),
                "run_id" if !v.is_empty() => run_id = Some(v.to_string()),
                "master_replid" if !v.is_empty() => replid = Some(v.to_string()),
                _ => {}
            }
        }
        f.identity = run_id.or(replid);
        f
    }

    /// The findings about this node alone (duplicates are found across nodes).
    pub fn findings(&self, restart_delay: Option<Duration>) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut add = |severity, text: String| out.push(Finding { severity, text });
        if !self.role.is_empty() && self.role != "master" {
            add(
                Severity::Unsafe,
                format!(
                    "role {}: a replica is not an independent primary and must not be a lock node",
                    self.role
                ),
            );
        }
        let policy = self.maxmemory_policy.as_str();
        if policy.starts_with("allkeys-") {
            add(
                Severity::Unsafe,
                format!("maxmemory-policy {policy}: any key can be evicted, a held lock's too"),
            );
        } else if policy.starts_with("volatile-") {
            add(
                Severity::Unsafe,
                format!(
                    "maxmemory-policy {policy}: keys with a ttl can be evicted, and every lock key has one"
                ),
            );
        } else if self.cache_mode || policy == "eviction" {
            add(
                Severity::Unsafe,
                "cache mode: Dragonfly evicts keys under memory pressure, lock keys included"
                    .to_string(),
            );
        }
        if self.replicas > 0 {
            add(
                Severity::Warning,
                format!(
                    "{} replica(s): a failover can promote one that lacks the newest lock keys and \
                     fencing counters; lock nodes should be standalone primaries",
                    self.replicas
                ),
            );
        }
        let durable = self.aof_enabled && self.appendfsync == "always";
        let snapshots =
            self.save.as_deref().is_some_and(|s| !s.is_empty()) || (self.aof_enabled && !durable);
        if durable {
            // Every write survives a restart: nothing is forgotten, nothing rolled back.
        } else if snapshots {
            add(
                Severity::Warning,
                format!(
                    "restarts from a snapshot ({}): after a crash it brings back older lock keys, \
                     so clients need restart_delay at least the longest ttl, twice it for \
                     fencing (the fencing counters it restores are set aside as stale)",
                    if self.aof_enabled {
                        format!("appendfsync {}", self.appendfsync)
                    } else {
                        format!("save '{}'", self.save.as_deref().unwrap_or_default())
                    }
                ),
            );
        } else if self.dragonfly {
            add(
                Severity::Warning,
                "persistence cannot be read from Dragonfly: fenced locks need no snapshots to \
                 restore from (--dbfilename '') and, as for every node without persistence, \
                 clients with restart_delay at least twice the longest ttl"
                    .to_string(),
            );
        } else if self.save.is_none() {
            // Redis, whose `CONFIG GET save` was refused (an ACL, a managed service): the
            // default save points may be on. `INFO` cannot say either way.
            add(
                Severity::Warning,
                "persistence cannot be read (CONFIG GET save was refused or not answered): if \
                 the node restarts from a snapshot it brings back older lock keys, so clients \
                 need restart_delay at least the longest ttl, twice it for fencing, whatever \
                 its uptime"
                    .to_string(),
            );
        } else if restart_delay.is_none() {
            add(
                Severity::Warning,
                "a restart loses its lock keys (no persistence): clients need restart_delay at \
                 least the longest ttl, twice it for fencing (pass --restart-delay to check \
                 uptime against it)"
                    .to_string(),
            );
        }
        if let Some(delay) = restart_delay {
            // As the clients count it: the reported uptime can run a second ahead, so they
            // credit one second less.
            let credited = self
                .uptime
                .map(|up| up.saturating_sub(Duration::from_secs(1)));
            if let Some(up) = credited.filter(|up| *up < delay) {
                let left = (delay - up).as_secs_f64().ceil() as u64;
                add(
                    Severity::Sitting,
                    format!(
                        "up {}s (credited {}s), inside the restart delay of {}s: does not vote \
                         for {left}s more",
                        self.uptime.unwrap_or_default().as_secs(),
                        up.as_secs(),
                        delay.as_secs(),
                    ),
                );
            }
        }
        out
    }
}

/// One node's outcome.
struct NodeReport {
    addr: String,
    result: Result<Reached, String>,
    findings: Vec<Finding>,
}

struct Reached {
    rtt: Duration,
    server: String,
    delex: bool,
    facts: NodeFacts,
    /// The probe connection's snapshot once it is done.
    stats: ConnectionStats,
}

async fn probe(config: ConnectionConfig, timeout: Duration) -> Result<Reached, String> {
    let tls = config.is_tls();
    let conn = tokio::time::timeout(
        timeout,
        Connection::connect(config.connect_timeout(timeout)),
    )
    .await
    .map_err(|_| format!("no answer within {timeout:?}{}", transport_hint(tls, None)))?
    .map_err(|e| format!("{e}{}", transport_hint(tls, Some(&e))))?;
    let mut rtt = Duration::MAX;
    for _ in 0..RTT_SAMPLES {
        let start = Instant::now();
        conn.command_timeout(&["PING"], timeout)
            .await
            .map_err(|e| e.to_string())?;
        rtt = rtt.min(start.elapsed());
    }
    let mut text = Vec::new();
    for section in ["server", "replication", "persistence", "memory"] {
        let reply = conn
            .command_timeout(&["INFO", section], timeout)
            .await
            .map_err(|e| format!("INFO {section}: {e}"))?;
        text.extend_from_slice(reply.as_bytes().unwrap_or_default());
        text.push(b'\n');
    }
    let mut facts = NodeFacts::from_info(&text);
    // Redis answers CONFIG GET; Dragonfly answers an empty map and has no AOF.
    facts.appendfsync = config_get(&conn, "appendfsync", timeout)
        .await
        .unwrap_or_default();
    facts.save = config_get(&conn, "save", timeout).await;
    let info = conn.server_info().unwrap_or_default();
    let server = match &info.dragonfly_version {
        Some(v) => format!("dragonfly {v}"),
        None => format!("{} {}", info.server, info.version),
    };
    Ok(Reached {
        rtt,
        server,
        delex: info.has_delex,
        facts,
        stats: conn.stats(),
    })
}

/// One `CONFIG GET` value; `None` when the server does not say.
pub(crate) async fn config_get(conn: &Connection, name: &str, timeout: Duration) -> Option<String> {
    let reply = conn
        .command_timeout(&["CONFIG", "GET", name], timeout)
        .await
        .ok()?;
    let value = match reply.map_get(name.as_bytes()) {
        Some(v) => v.as_bytes(),
        // RESP2: a flat [name, value] array.
        None => match &reply {
            dragonlock::resp::Frame::Array(items) => items.get(1).and_then(|v| v.as_bytes()),
            _ => None,
        },
    }?;
    Some(String::from_utf8_lossy(value).into_owned())
}

pub async fn run(args: PingArgs) -> ExitCode {
    let configs = match crate::node_configs(&args.nodes, &args.tls) {
        Ok(c) => c,
        Err(e) => return crate::fail(crate::EXIT_USAGE, e),
    };
    let quorum = configs.len() / 2 + 1;
    // All nodes at once: a dead node costs one timeout, not one per node.
    let probes: Vec<_> = configs
        .into_iter()
        .zip(&args.nodes)
        .map(|(config, given)| {
            let addr = node_label(given, &config);
            (addr, tokio::spawn(probe(config, args.timeout)))
        })
        .collect();
    let mut reports = Vec::with_capacity(probes.len());
    for (addr, probe) in probes {
        let result = probe.await.unwrap_or_else(|e| Err(e.to_string()));
        let findings = match &result {
            Ok(r) => r.facts.findings(args.restart_delay),
            Err(_) => Vec::new(),
        };
        reports.push(NodeReport {
            addr,
            result,
            findings,
        });
    }
    mark_duplicates(&mut reports);

    let mut voting = 0;
    let mut unsafe_nodes = 0;
    for r in &reports {
        match &r.result {
            Ok(n) => {
                println!(
                    "{:<22} up   {:<22} rtt {:>8.1?}  role {}  maxmemory-policy {}  delex {}",
                    r.addr,
                    n.server,
                    n.rtt,
                    if n.facts.role.is_empty() {
                        "?"
                    } else {
                        &n.facts.role
                    },
                    if n.facts.maxmemory_policy.is_empty() {
                        "?"
                    } else {
                        &n.facts.maxmemory_policy
                    },
                    if n.delex { "yes" } else { "no" },
                );
                println!("{:<22}   {}", "", connection_line(&n.stats));
                let is_unsafe = r.findings.iter().any(|f| f.severity == Severity::Unsafe);
                let sitting = r.findings.iter().any(|f| f.severity == Severity::Sitting);
                unsafe_nodes += usize::from(is_unsafe);
                voting += usize::from(!is_unsafe && !sitting);
            }
            Err(e) => println!("{:<22} down {e}", r.addr),
        }
        for f in &r.findings {
            let tag = match f.severity {
                Severity::Unsafe => "UNSAFE",
                Severity::Warning => "warning",
                Severity::Sitting => "sitting out",
            };
            println!("{:<22}   {tag}: {}", "", f.text);
        }
    }
    let n = reports.len();
    // An unsafe node comes first: it needs fixing whether or not a quorum could vote without it.
    if unsafe_nodes > 0 {
        println!(
            "verdict: UNSAFE: {unsafe_nodes} of {n} nodes are configured unsafely for locks \
             ({voting} can vote, quorum {quorum})"
        );
        ExitCode::from(EXIT_UNSAFE)
    } else if voting < quorum {
        println!("verdict: UNAVAILABLE: {voting} of {n} nodes can vote, a lock needs {quorum}");
        ExitCode::from(crate::EXIT_UNAVAILABLE)
    } else {
        let warnings: usize = reports
            .iter()
            .map(|r| {
                r.findings
                    .iter()
                    .filter(|f| f.severity == Severity::Warning)
                    .count()
            })
            .sum();
        // Safe, but say how many more nodes may fail before no lock can be taken: with two
        // of six down, a lock needs every node that is left.
        let spare = voting - quorum;
        let margin = match spare {
            0 => "no node may fail (a lock needs every voting node)".to_string(),
            1 => "1 more node may fail".to_string(),
            k => format!("{k} more nodes may fail"),
        };
        println!(
            "verdict: SAFE: {voting} of {n} nodes can vote, quorum {quorum}, {margin}, \
             {warnings} warnings"
        );
        ExitCode::SUCCESS
    }
}

/// The probe connection as its snapshot saw it: state, protocol, requests, failures, and the
/// round trips of every request the probe made (the `INFO`s and `CONFIG GET`s included).
fn connection_line(s: &ConnectionStats) -> String {
    let e = &s.errors;
    let errors = e.connection_lost
        + e.timeouts
        + e.server_errors
        + e.refused_overloaded
        + e.refused_not_connected
        + e.protocol;
    // The connection's histogram has power-of-two buckets: its quantiles are estimates within
    // a factor of two (`RttHistogram::quantile`), unlike the timed `PING` above.
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("~{d:.0?}"));
    format!(
        "connection: {:?}, RESP{}, {} requests, {} errors, rtt p50 {} p99 {} (of {}, within 2x)",
        s.state,
        s.server.as_ref().map_or(0, |i| i.protocol),
        s.requests_sent,
        errors,
        ms(s.rtt.p50()),
        ms(s.rtt.p99()),
        s.rtt.count(),
    )
}

/// A guess at a transport mix-up, for a connect that failed the way one does: a TLS client on
/// a plain Redis port gets no answer (Redis waits for the end of a line the TLS hello never
/// sends), and a plain client on a TLS port has its connection closed or reset.
fn transport_hint(tls: bool, e: Option<&dragonlock::Error>) -> &'static str {
    use dragonlock::ErrorKind;
    match (tls, e.map(dragonlock::Error::kind)) {
        (true, None | Some(ErrorKind::Timeout)) => {
            " (a plain port? a TLS client gets no answer there: use redis://)"
        }
        (
            false,
            Some(
                ErrorKind::Eof
                | ErrorKind::Io(
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe,
                ),
            ),
        ) => " (a TLS port? a plain client is cut off there: use rediss://)",
        _ => "",
    }
}

/// How a node is named in the report: `host:port`, or a URL as given with its password shown
/// as `***`, so that two URLs of one server (another user, another database) stay apart.
fn node_label(given: &str, config: &ConnectionConfig) -> String {
    if given.contains("://") || given.contains('@') {
        crate::redacted(given)
    } else {
        config.addr()
    }
}

/// Two reachable nodes with one identity are one server named twice.
fn mark_duplicates(reports: &mut [NodeReport]) {
    let mut first: HashMap<String, String> = HashMap::new();
    for r in reports.iter_mut() {
        let Ok(n) = &r.result else { continue };
        let Some(id) = &n.facts.identity else {
            continue;
        };
        match first.get(id) {
            Some(addr) => r.findings.push(Finding {
                severity: Severity::Unsafe,
                text: format!("the same server as {addr}: it would cast two votes"),
            }),
            None => {
                first.insert(id.clone(), r.addr.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_info(server: &str, step: &str) -> Vec<u8> {
        // The byte-exact replies captured from Redis 7.0.15 and Dragonfly 1.40.1.
        let all: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/server-ops.json")).unwrap();
        let reply = all[server]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap()["reply"]
            .as_str()
            .unwrap();
        reply.chars().map(|c| c as u8).collect()
    }

    #[test]
    fn nodes_are_named_as_given_without_their_passwords() {
        let label = |given: &str| node_label(given, &ConnectionConfig::from_url(given).unwrap());
        assert_eq!(label("127.0.0.1:7001"), "127.0.0.1:7001");
        assert_eq!(label("redis://127.0.0.1:7001"), "redis://127.0.0.1:7001");
        assert_eq!(
            label("redis://:s3cret@127.0.0.1:7001/3"),
            "redis://:***@127.0.0.1:7001/3"
        );
        assert_eq!(
            label("rediss://app:s3cret@h:6380"),
            "rediss://app:***@h:6380"
        );
        assert_eq!(label("redis://s3cret@h:6380/2"), "redis://***@h:6380/2");
        // Messages about a malformed node show none of its password either.
        assert_eq!(crate::redacted("redis://:pa/ss@h:1"), "redis://:***@h:1");
        assert_eq!(crate::redacted("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        assert_eq!(crate::redacted("h:1"), "h:1");
        assert_eq!(crate::redacted("s3cret@h:1"), "***@h:1");
        assert_eq!(crate::redacted("app:s3cret@h:1"), "app:***@h:1");
    }

    #[test]
    fn both_servers_fixtures_read_as_safe_primaries() {
        for server in ["redis-7.0.15", "dragonfly-1.40.1"] {
            let mut text = fixture_info(server, "info_replication");
            text.extend(fixture_info(server, "info_memory"));
            text.extend(fixture_info(server, "info_persistence"));
            let mut f = NodeFacts::from_info(&text);
            // `CONFIG GET save` as `reach` reads it: Redis answers '' (no save points),
            // Dragonfly an empty map (it does not say).
            let raw = fixture_info(server, "config_get_save");
            let reply = dragonlock::resp::Decoder::default()
                .decode(&mut bytes::BytesMut::from(&raw[..]))
                .unwrap()
                .unwrap();
            f.save = reply
                .map_get(b"save")
                .and_then(|v| v.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let redis = server.starts_with("redis");
            assert_eq!(f.save.is_some(), redis, "{server}");
            // What `INFO server` says (`dragonfly_version`); the fixtures do not have it.
            f.dragonfly = !redis;
            assert_eq!(f.role, "master", "{server}");
            assert_eq!(f.maxmemory_policy, "noeviction", "{server}");
            assert!(f.identity.is_some(), "{server}: master_replid");
            let findings = f.findings(Some(Duration::from_secs(0)));
            if redis {
                assert!(findings.is_empty(), "{server}: {findings:?}");
            } else {
                // Nothing unsafe; Dragonfly's persistence cannot be read, which is said.
                assert_eq!(findings.len(), 1, "{server}: {findings:?}");
                assert_eq!(findings[0].severity, Severity::Warning);
                assert!(findings[0].text.contains("cannot be read from Dragonfly"));
            }
        }
    }

    #[test]
    fn each_unsafe_setting_is_a_finding() {
        let facts = |text: &str| NodeFacts::from_info(text.as_bytes());
        let unsafe_count = |f: &NodeFacts| {
            f.findings(Some(Duration::ZERO))
                .iter()
                .filter(|x| x.severity == Severity::Unsafe)
                .count()
        };
        assert_eq!(unsafe_count(&facts("role:slave\r\n")), 1);
        assert_eq!(unsafe_count(&facts("maxmemory_policy:allkeys-lru\r\n")), 1);
        assert_eq!(unsafe_count(&facts("maxmemory_policy:volatile-ttl\r\n")), 1);
        assert_eq!(unsafe_count(&facts("cache_mode:cache\r\n")), 1);
        assert_eq!(
            unsafe_count(&facts("maxmemory_policy:noeviction\r\nrole:master\r\n")),
            0
        );
    }

    #[test]
    fn persistence_and_uptime_against_the_restart_delay() {
        let mut f = NodeFacts::from_info(b"uptime_in_seconds:5\r\naof_enabled:0\r\n");
        // `CONFIG GET save` refused: persistence unknown, a warning whatever the delay.
        let unknown = f.findings(Some(Duration::from_secs(4)));
        assert_eq!(unknown.len(), 1);
        assert!(unknown[0].text.contains("cannot be read"), "{unknown:?}");
        // No save points.
        f.save = Some(String::new());
        let warn = f.findings(None);
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].severity, Severity::Warning);
        let sit = f.findings(Some(Duration::from_secs(60)));
        assert_eq!(sit.len(), 1);
        assert_eq!(sit[0].severity, Severity::Sitting);
        // Clients credit a second less than the report: 5 s up does not satisfy a 5 s delay.
        assert_eq!(f.findings(Some(Duration::from_secs(5))).len(), 1);
        assert!(f.findings(Some(Duration::from_secs(4))).is_empty());
        // Snapshots roll keys and counters back after a crash: a warning, delay or not.
        f.save = Some("3600 1".into());
        let snap = f.findings(Some(Duration::from_secs(1)));
        assert!(
            snap[0].text.contains("restarts from a snapshot"),
            "{snap:?}"
        );
        f.aof_enabled = true;
        f.appendfsync = "everysec".into();
        assert!(f.findings(None)[0].text.contains("appendfsync everysec"));
        f.save = None;
        f.aof_enabled = true;
        f.appendfsync = "always".into();
        assert!(
            f.findings(None).is_empty(),
            "fsync always survives a restart"
        );
    }
}
