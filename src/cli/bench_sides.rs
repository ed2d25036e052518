//! The server sets and settings a bench run measures: one side, or the sides of `--compare`.
//!
//! A side is a connected `Redlock` manager with its own options, on its own nodes (the local
//! servers it started, or `--nodes`). Sides of one comparison on the same servers each have
//! their own connections, so that one side's queued requests never delay the other's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dragonlock::local::Flavor;
use dragonlock::{Redlock, RedlockOptions};

use crate::cli::baseline::Baseline;
use crate::cli::bench::{BenchArgs, ReleaseWaitArg};
use crate::cli::servers::{self, LocalServer};
use crate::{fail, node_configs, redacted, EXIT_UNAVAILABLE, EXIT_USAGE};

/// The most sides one `--compare` takes: a comparison is read side by side, and every side
/// costs the whole run's time again.
pub const MAX_SIDES: usize = 8;

/// What `--compare` varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareKey {
    Release,
    ReleaseWait,
    Nodes,
    ServerBin,
    ServerThreads,
    /// dragonlock against the single-loop baseline (`cli/baseline.rs`), in turns.
    Client,
}

impl CompareKey {
    pub fn name(self) -> &'static str {
        match self {
            CompareKey::Release => "release",
            CompareKey::ReleaseWait => "release-wait",
            CompareKey::Nodes => "nodes",
            CompareKey::ServerBin => "server-bin",
            CompareKey::ServerThreads => "server-threads",
            CompareKey::Client => "client",
        }
    }
}

/// A parsed `--compare KEY=A,B[,…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: CompareKey,
    pub values: Vec<String>,
}

/// `--compare`'s argument as its messages show it: every node in it with its password as
/// `***` (`nodes=` values are node URLs; a forgotten `nodes=` still leaves URLs in it).
fn shown(spec: &str) -> String {
    let side = |v: &str| v.split('+').map(redacted).collect::<Vec<_>>().join("+");
    spec.split(',').map(side).collect::<Vec<_>>().join(",")
}

impl Compare {
    pub fn parse(raw: &str) -> Result<Compare, String> {
        let spec = shown(raw);
        let usage = "--compare takes KEY=A,B with KEY one of release (script,delex), release-wait \
                     (all,quorum), nodes (H:P+H:P,H:P+H:P), server-bin (PATH,PATH), \
                     server-threads (N,N), client (baseline,dragonlock)";
        let Some((key, values)) = raw.split_once('=') else {
            return Err(format!("--compare {spec:?}: {usage}"));
        };
        let key = match key.trim() {
            "release" => CompareKey::Release,
            "release-wait" => CompareKey::ReleaseWait,
            "nodes" => CompareKey::Nodes,
            "server-bin" => CompareKey::ServerBin,
            "server-threads" => CompareKey::ServerThreads,
            "client" => CompareKey::Client,
            other => return Err(format!("--compare: unknown key {other:?}: {usage}")),
        };
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(format!("--compare {spec:?}: an empty value; {usage}"));
        }
        if values.len() < 2 {
            return Err(format!(
                "--compare {spec:?}: give at least two values to compare, comma-separated"
            ));
        }
        if values.len() > MAX_SIDES {
            return Err(format!("--compare {spec:?}: at most {MAX_SIDES} sides"));
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(format!("--compare {spec:?}: {:?} is named twice", shown(v)));
            }
            let ok = match key {
                CompareKey::Release => ["script", "delex"].contains(&v.as_str()),
                CompareKey::ReleaseWait => ["all", "quorum"].contains(&v.as_str()),
                CompareKey::ServerThreads => v.parse::<usize>().is_ok_and(|n| n >= 1),
                CompareKey::Client => ["dragonlock", "baseline"].contains(&v.as_str()),
                CompareKey::Nodes | CompareKey::ServerBin => true,
            };
            if !ok {
                let want = match key {
                    CompareKey::Release => "script or delex",
                    CompareKey::ReleaseWait => "all or quorum",
                    CompareKey::Client => "dragonlock or baseline",
                    _ => "a thread count of at least 1",
                };
                return Err(format!("--compare {spec:?}: {v:?} is not {want}"));
            }
        }
        Ok(Compare { key, values })
    }
}

/// One side's settings.
#[derive(Clone, Debug)]
pub struct SideSpec {
    /// The side's name in reports (`None` for a run without `--compare`).
    pub label: Option<String>,
    /// Empty: local servers.
    pub nodes: Vec<String>,
    pub server_bin: Option<PathBuf>,
    pub server_threads: Option<usize>,
    pub force_script: bool,
    pub release_wait: ReleaseWaitArg,
    /// The side is the single-loop baseline (`--compare client=…`), not dragonlock.
    pub baseline: bool,
    /// `nodes` are the local servers an earlier side started (`--compare client=…` measures
    /// both clients on the same servers), some perhaps stopped by `--nodes-down`.
    pub shared: bool,
}

/// The sides of the run: one, or one per `--compare` value.
pub fn side_specs(args: &BenchArgs, compare: Option<&Compare>) -> Vec<SideSpec> {
    let base = SideSpec {
        label: None,
        nodes: args.nodes.clone(),
        server_bin: args.server_bin.clone(),
        server_threads: args.server_threads,
        force_script: args.force_script,
        release_wait: args.release_wait.unwrap_or(ReleaseWaitArg::Quorum),
        baseline: false,
        shared: false,
    };
    let Some(c) = compare else {
        return vec![base];
    };
    let names: Vec<String> = c
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| match c.key {
            // Node lists are too long for a table's column: `set1`, `set2`, … (the header
            // lists each side's servers).
            CompareKey::Nodes => format!("set{}", i + 1),
            // A binary by its file name, unless two share one.
            CompareKey::ServerBin => {
                let name = |v: &str| {
                    std::path::Path::new(v)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_else(|| v.to_string())
                };
                let mine = name(v);
                if c.values.iter().filter(|o| name(o) == mine).count() > 1 {
                    format!("bin{}", i + 1)
                } else {
                    mine
                }
            }
            CompareKey::ServerThreads => format!("{v}-threads"),
            _ => v.clone(),
        })
        .collect();
    c.values
        .iter()
        .zip(names)
        .map(|(v, name)| {
            let mut s = base.clone();
            s.label = Some(name);
            match c.key {
                CompareKey::Release => s.force_script = v == "script",
                CompareKey::ReleaseWait => {
                    s.release_wait = if v == "all" {
                        ReleaseWaitArg::All
                    } else {
                        ReleaseWaitArg::Quorum
                    }
                }
                CompareKey::Nodes => s.nodes = v.split('+').map(str::to_string).collect(),
                CompareKey::ServerBin => s.server_bin = Some(PathBuf::from(v)),
                CompareKey::ServerThreads => s.server_threads = v.parse().ok(),
                CompareKey::Client => s.baseline = v == "baseline",
            }
            s
        })
        .collect()
}

/// The checks that need no server: flags that contradict the comparison.
pub fn check(args: &BenchArgs, compare: Option<&Compare>) -> Result<(), String> {
    if args.server_threads == Some(0) {
        return Err("--server-threads must be at least 1".into());
    }
    if !args.nodes.is_empty() && (args.server_bin.is_some() || args.server_threads.is_some()) {
        return Err(
            "--server-bin and --server-threads configure the local servers this command starts; \
             not with --nodes"
                .into(),
        );
    }
    let Some(c) = compare else { return Ok(()) };
    let clash = match c.key {
        CompareKey::Release => args.force_script.then_some("--force-script"),
        CompareKey::ReleaseWait => args.release_wait.is_some().then_some("--release-wait"),
        CompareKey::Nodes => (!args.nodes.is_empty()).then_some("--nodes"),
        CompareKey::ServerBin => (!args.nodes.is_empty())
            .then_some("--nodes")
            .or(args.server_bin.is_some().then_some("--server-bin")),
        CompareKey::ServerThreads => (!args.nodes.is_empty())
            .then_some("--nodes")
            .or(args.server_threads.is_some().then_some("--server-threads")),
        // `--baseline` with it is refused earlier, in `validate`.
        CompareKey::Client => None,
    };
    if let Some(flag) = clash {
        return Err(format!(
            "--compare {}=… and {flag} both set what the comparison varies",
            c.key.name()
        ));
    }
    if c.key == CompareKey::Nodes && args.nodes_down > 0 {
        return Err("--nodes-down works only with the local servers".into());
    }
    if c.key == CompareKey::Nodes {
        for v in &c.values {
            node_configs(
                &v.split('+').map(str::to_string).collect::<Vec<_>>(),
                &args.tls,
            )?;
        }
    }
    Ok(())
}

/// A connected side.
pub struct Side {
    pub spec: SideSpec,
    pub redlock: Redlock,
    pub addrs: Vec<String>,
    pub up: Vec<bool>,
    /// `redis 7.0.15` or `dragonfly 1.40.1`, from the first node that answered.
    pub server: String,
    pub protocol: u8,
    /// The binary of the local servers (empty with `--nodes`).
    pub server_bin: String,
    /// Some node is a `rediss://` (TLS) one.
    pub tls: bool,
    /// Each node: server, version and threads.
    pub servers: Vec<String>,
    pub release_paths: Vec<&'static str>,
    /// The single-loop baseline this side runs (`--compare client=…`), on sockets of its own
    /// to the same nodes; `redlock` then only reads the servers (`answering`, the server
    /// statistics).
    pub baseline: Option<Baseline>,
    /// The local servers this side started (none with `--nodes`, or on the servers of an
    /// earlier side): they stop with the side.
    pub local: Vec<LocalServer>,
}

impl Side {
    /// Starts the side's local servers (or takes its nodes) and connects. The `ExitCode` of a
    /// failure has been reported already.
    pub async fn open(
        args: &BenchArgs,
        spec: SideSpec,
        max_concurrency: usize,
    ) -> Result<Side, ExitCode> {
        let mut local = Vec::new();
        let mut server_bin = String::new();
        let mut local_flavor = None;
        let configs = if spec.nodes.is_empty() {
            if args.nodes_down >= 3 {
                return Err(fail(
                    EXIT_USAGE,
                    "--nodes-down must leave a majority of the 5 local servers up (at most 2)",
                ));
            }
            let (bin, flavor) = match servers::binary(spec.server_bin.as_deref()) {
                Ok(b) => b,
                Err(e) if spec.server_bin.is_some() => return Err(fail(EXIT_USAGE, e)),
                Err(e) => return Err(fail(EXIT_UNAVAILABLE, e)),
            };
            if spec.server_threads.is_some() && flavor != Flavor::Dragonfly {
                return Err(fail(
                    EXIT_USAGE,
                    format!(
                        "--server-threads sets Dragonfly's --proactor_threads, and {} is not \
                         Dragonfly (redis-server runs commands on one thread)",
                        bin.display()
                    ),
                ));
            }
            local_flavor = Some(flavor);
            let threads = spec.server_threads.unwrap_or(1);
            match servers::start(5, &bin, flavor, threads) {
                Ok((servers, bin)) => {
                    local = servers;
                    server_bin = bin;
                }
                Err(e) => return Err(fail(EXIT_UNAVAILABLE, e)),
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
                Err(e) => return Err(fail(EXIT_USAGE, e)),
            }
        } else {
            if args.nodes_down > 0 && !spec.shared {
                return Err(fail(
                    EXIT_USAGE,
                    "--nodes-down works only with the local servers (no --nodes)",
                ));
            }
            match node_configs(&spec.nodes, &args.tls) {
                Ok(c) => c,
                Err(e) => return Err(fail(EXIT_USAGE, e)),
            }
        };
        let tls = configs.iter().any(|c| c.is_tls());
        if (args.baseline || spec.baseline) && tls {
            // The baseline speaks plain TCP only; a ratio against it over TLS would compare TLS
            // with no TLS.
            let flag = if args.baseline {
                "--baseline"
            } else {
                "--compare client=…"
            };
            return Err(fail(
                EXIT_USAGE,
                format!("{flag} runs on plain TCP nodes only (no rediss://)"),
            ));
        }
        let addrs: Vec<String> = configs.iter().map(|c| c.addr()).collect();
        let mut options = RedlockOptions::default()
            .retry_count(args.retries)
            .retry_delay(args.retry_delay, args.retry_delay)
            .key_prefix(args.key_prefix.clone())
            .force_script_release(spec.force_script)
            .wake_on_release(!args.no_wake_on_release)
            .release_wait(spec.release_wait.into())
            .connect_timeout(Duration::from_secs(3));
        if let Some(d) = args.restart_delay {
            options = options.restart_delay(d);
        }
        // Each worker holds a place per node while it waits, and more for replies that come
        // after the quorum (two a cycle on a node that lags). Acquires may use three quarters
        // of the table (the rest is kept for releases): eight per worker leaves room, so the
        // bench measures the nodes, not the bound. A sweep sizes them for its largest point.
        let slots = (8 * max_concurrency).max(dragonlock::conn::DEFAULT_MAX_IN_FLIGHT);
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
            Err(e) => return Err(fail(EXIT_USAGE, e)),
        };
        let up: Vec<bool> = redlock.nodes().iter().map(|n| n.is_connected()).collect();
        if args.nodes_down == 0 {
            if let Some(i) = up.iter().position(|u| !u) {
                let why = redlock.nodes()[i]
                    .last_error()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no answer".into());
                // Unavailable, not bad input: the list parsed, the node did not answer.
                return Err(fail(
                    EXIT_UNAVAILABLE,
                    format!("cannot reach node {}: {why}", addrs[i]),
                ));
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
        let release_paths: Vec<&'static str> = redlock
            .nodes()
            .iter()
            .map(|n| {
                if !n.is_connected() {
                    "down"
                } else if n.has_delex() && !spec.force_script {
                    "DELEX"
                } else {
                    "EVALSHA"
                }
            })
            .collect();
        let mut described = Vec::new();
        for n in redlock.nodes() {
            described.push(describe(n, local_flavor, spec.server_threads).await);
        }
        let baseline = if spec.baseline {
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
                spec.force_script,
                !args.no_wake_on_release,
                max_concurrency,
            )
            .await;
            match connected {
                Ok(b) => Some(b),
                Err(e) => return Err(fail(EXIT_UNAVAILABLE, format!("baseline: {e}"))),
            }
        } else {
            None
        };
        Ok(Side {
            baseline,
            spec,
            redlock,
            addrs,
            up,
            server,
            protocol: info.protocol,
            server_bin,
            tls,
            servers: described,
            release_paths,
            local,
        })
    }

    /// The side's name, or `""`.
    pub fn label(&self) -> &str {
        self.spec.label.as_deref().unwrap_or("")
    }

    /// Sends a `PING` on each node's connection and counts the answers. A release that
    /// returned at the quorum has queued its request to the other nodes: the round trip after
    /// it, on the same pipelined connection, also makes sure the servers have run it.
    pub async fn answering(&self) -> usize {
        let mut n = 0;
        for node in self.redlock.nodes().iter().filter(|n| n.is_connected()) {
            if node
                .command_timeout(&["PING"], Duration::from_secs(2))
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// One line for the setup: each distinct server description with its count.
    pub fn servers_line(&self) -> String {
        let mut groups: Vec<(String, usize)> = Vec::new();
        for d in &self.servers {
            match groups.iter_mut().find(|(g, _)| g == d) {
                Some(g) => g.1 += 1,
                None => groups.push((d.clone(), 1)),
            }
        }
        let list: Vec<String> = groups.iter().map(|(d, n)| format!("{n} x {d}")).collect();
        if self.server_bin.is_empty() {
            format!("{} at {}", list.join(", "), self.addrs.join(", "))
        } else {
            format!("{} ({})", list.join(", "), self.server_bin)
        }
    }
}

/// `dragonfly 1.40.1, 4 threads` / `redis 7.0.15, 1 thread`: from the handshake, and for the
/// threads from what this command started, else `CONFIG GET` (`proactor_threads` on
/// Dragonfly, `io-threads` on Redis, whose commands run on one thread whatever its I/O
/// threads), else `threads ?`.
async fn describe(
    node: &dragonlock::conn::Connection,
    local: Option<Flavor>,
    threads: Option<usize>,
) -> String {
    let Some(info) = node.server_info() else {
        return "down".into();
    };
    let dragonfly = info.dragonfly_version.is_some();
    let name = match &info.dragonfly_version {
        Some(v) => format!("dragonfly {v}"),
        None => format!("redis {}", info.version),
    };
    let threads = match local {
        Some(Flavor::Dragonfly) => Some(threads.unwrap_or(1).to_string()),
        Some(Flavor::Redis) => Some("1".to_string()),
        None => {
            let key = if dragonfly {
                "proactor_threads"
            } else {
                "io-threads"
            };
            crate::cli::ping::config_get(node, key, Duration::from_secs(2)).await
        }
    };
    match threads.as_deref() {
        Some("1") => format!("{name}, 1 thread"),
        Some(n) if !dragonfly => format!("{name}, io-threads {n}"),
        Some(n) => format!("{name}, {n} threads"),
        None => format!("{name}, threads ?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_specs() {
        let c = Compare::parse("release-wait=all,quorum").unwrap();
        assert_eq!(c.key, CompareKey::ReleaseWait);
        assert_eq!(c.values, ["all", "quorum"]);
        let c = Compare::parse("nodes=127.0.0.1:1+127.0.0.1:2,127.0.0.1:3").unwrap();
        assert_eq!(c.values.len(), 2);
        let c = Compare::parse("client=baseline,dragonlock").unwrap();
        assert_eq!(c.key, CompareKey::Client);
        assert_eq!(c.values, ["baseline", "dragonlock"]);
        for (bad, says) in [
            ("release-wait", "KEY=A,B"),
            ("colour=red,blue", "unknown key"),
            ("release-wait=all", "at least two"),
            ("release-wait=all,all", "named twice"),
            ("release-wait=all,,quorum", "empty value"),
            ("release-wait=all,maybe", "not all or quorum"),
            ("release=script,lua", "not script or delex"),
            ("server-threads=1,0", "at least 1"),
            ("client=dragonlock,redsync", "not dragonlock or baseline"),
            ("release-wait=all,quorum,a,b,c,d,e,f,g", "at most 8"),
        ] {
            let e = Compare::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // A node's password is never echoed, whichever message names the argument.
        for bad in [
            "nodes=redis://:hunter2@127.0.0.1:1",
            "nodes=redis://u:hunter2@127.0.0.1:1,redis://u:hunter2@127.0.0.1:1",
            "nodes=127.0.0.1:1+hunter2@127.0.0.1:2,,127.0.0.1:3",
            "redis://:hunter2@127.0.0.1:1+127.0.0.1:2,127.0.0.1:3",
        ] {
            let e = Compare::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2") && e.contains("***"), "{bad}: {e}");
        }
    }
}
