//! The servers' side of a bench measurement, from `INFO` read before and after it: CPU time
//! (`used_cpu_sys` + `used_cpu_user`, `INFO cpu`) on each node, and the calls and time of the
//! lock commands (`INFO commandstats`: `set`, `evalsha`, `eval`, `delex`, the extend and fence
//! scripts running as `evalsha` too).
//!
//! The figures are differences of two readings, so nothing is reset on the servers (a shared
//! server's statistics are not ours to clear), and a reading that fails (a node down) leaves
//! that node out of the difference rather than failing the run.

use std::collections::BTreeMap;
use std::time::Duration;

use dragonlock::Redlock;

/// The commands whose `usec_per_call` the bench reports: the lock cycle's own.
pub const LOCK_COMMANDS: [&str; 4] = ["set", "evalsha", "eval", "delex"];

/// How long one `INFO` may take: a reading is outside the measured cycles, but a stopped node
/// must not hold the run up for long.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// `used_cpu_sys + used_cpu_user`, in seconds.
    pub cpu: f64,
    /// Per lock command: (calls, usec).
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl Reading {
    /// Reads the counters out of `INFO cpu` and `INFO commandstats` text.
    pub fn parse(text: &str) -> Reading {
        let mut r = Reading::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim_end_matches('\r').split_once(':') else {
                continue;
            };
            match k {
                "used_cpu_sys" | "used_cpu_user" => r.cpu += v.trim().parse::<f64>().unwrap_or(0.0),
                _ => {
                    let Some(name) = k.strip_prefix("cmdstat_") else {
                        continue;
                    };
                    let name = name.to_ascii_lowercase();
                    if !LOCK_COMMANDS.contains(&name.as_str()) {
                        continue;
                    }
                    let field = |want: &str| {
                        v.split(',')
                            .filter_map(|kv| kv.split_once('='))
                            .find(|(key, _)| *key == want)
                            .and_then(|(_, n)| n.trim().parse::<f64>().ok())
                            .unwrap_or(0.0) as u64
                    };
                    r.commands.insert(name, (field("calls"), field("usec")));
                }
            }
        }
        r
    }
}

/// What the servers did over one measurement (or the sum of several).
#[derive(Clone, Debug, Default)]
pub struct ServerDelta {
    /// Wall time between the readings, summed over measurements.
    pub wall: Duration,
    /// Per node (in the manager's order): its address and CPU seconds, `None` where a reading
    /// failed.
    pub nodes: Vec<(String, Option<f64>)>,
    /// Per lock command over all nodes: (calls, usec).
    pub commands: BTreeMap<String, (u64, u64)>,
    /// The cycles run between the readings (warm-ups included): the per-cycle figures' divisor.
    pub cycles: u64,
}

impl ServerDelta {
    /// The difference of two readings of every node.
    pub fn between(
        addrs: &[String],
        before: &[Option<Reading>],
        after: &[Option<Reading>],
        wall: Duration,
    ) -> ServerDelta {
        let mut d = ServerDelta {
            wall,
            ..ServerDelta::default()
        };
        for (i, addr) in addrs.iter().enumerate() {
            let pair = before
                .get(i)
                .cloned()
                .flatten()
                .zip(after.get(i).cloned().flatten());
            let cpu = pair.as_ref().map(|(b, a)| (a.cpu - b.cpu).max(0.0));
            if let Some((b, a)) = &pair {
                for (name, (calls, usec)) in &a.commands {
                    let (c0, u0) = b.commands.get(name).copied().unwrap_or((0, 0));
                    let e = d.commands.entry(name.clone()).or_default();
                    e.0 += calls.saturating_sub(c0);
                    e.1 += usec.saturating_sub(u0);
                }
            }
            d.nodes.push((addr.clone(), cpu));
        }
        d
    }

    /// Adds another measurement of the same nodes.
    pub fn merge(&mut self, other: &ServerDelta) {
        self.wall += other.wall;
        self.cycles += other.cycles;
        if self.nodes.is_empty() {
            self.nodes = other.nodes.clone();
        } else {
            for (mine, theirs) in self.nodes.iter_mut().zip(&other.nodes) {
                mine.1 = match (mine.1, theirs.1) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
        }
        for (name, (calls, usec)) in &other.commands {
            let e = self.commands.entry(name.clone()).or_default();
            e.0 += calls;
            e.1 += usec;
        }
    }

    /// CPU seconds of every node that was read.
    pub fn cpu(&self) -> f64 {
        self.nodes.iter().filter_map(|n| n.1).sum()
    }

    /// The servers' cores in use on average: CPU seconds over wall seconds.
    pub fn cores_used(&self) -> f64 {
        self.cpu() / self.wall.as_secs_f64().max(1e-9)
    }

    /// The JSON object of `server` (the schema is in `dragonlock bench --help` and README).
    pub fn to_json(&self) -> serde_json::Value {
        let cycles = self.cycles;
        let per_cycle = |secs: f64| {
            if cycles == 0 {
                serde_json::Value::Null
            } else {
                serde_json::json!((secs * 1e6 / cycles as f64 * 100.0).round() / 100.0)
            }
        };
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|(addr, cpu)| {
                serde_json::json!({
                    "addr": addr,
                    "cpu_seconds": cpu.map(|c| (c * 1e6).round() / 1e6),
                    "cpu_us_per_cycle": cpu.map_or(serde_json::Value::Null, per_cycle),
                })
            })
            .collect();
        let commands: serde_json::Map<String, serde_json::Value> = self
            .commands
            .iter()
            .filter(|(_, (calls, _))| *calls > 0)
            .map(|(name, (calls, usec))| {
                (
                    name.clone(),
                    serde_json::json!({
                        "calls": calls,
                        "usec_per_call": (*usec as f64 / *calls as f64 * 100.0).round() / 100.0,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "cycles": cycles,
            "seconds": self.wall.as_secs_f64(),
            "cpu_us_per_cycle": per_cycle(self.cpu()),
            "cores_used": (self.cores_used() * 100.0).round() / 100.0,
            "nodes": nodes,
            "commands": commands,
        })
    }
}

/// Reads every node of `redlock` (`None` for a node that did not answer in time).
pub async fn read(redlock: &Redlock) -> Vec<Option<Reading>> {
    let mut out = Vec::new();
    for node in redlock.nodes() {
        let mut text = String::new();
        let mut ok = node.is_connected();
        for section in ["cpu", "commandstats"] {
            if !ok {
                break;
            }
            match node.command_timeout(&["INFO", section], INFO_TIMEOUT).await {
                Ok(reply) => {
                    text.push_str(&String::from_utf8_lossy(
                        reply.as_bytes().unwrap_or_default(),
                    ));
                    text.push('\n');
                }
                Err(_) => ok = false,
            }
        }
        out.push(ok.then(|| Reading::parse(&text)));
    }
    out
}

/// Whether every address is on this machine (127.0.0.0/8, `localhost`, `::1`): only then are
/// the servers' cores the machine's.
pub fn all_local(addrs: &[String]) -> bool {
    addrs.iter().all(|a| {
        let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// The share of the machine's cores above which a run is said to have measured the machine:
/// at 90% busy, a server that needs more CPU waits for it, and its latency is the scheduler's.
pub const SATURATED: f64 = 0.9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_and_their_difference() {
        let before = Reading::parse(
            "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.000000\r\nused_cpu_sys_children:9\r\n\
             # Commandstats\r\ncmdstat_set:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0\r\n\
             cmdstat_evalsha:calls=4,usec=40,usec_per_call=10.00\r\ncmdstat_info:calls=3,usec=9\r\n",
        );
        assert_eq!(before.cpu, 3.5);
        assert_eq!(before.commands.len(), 2, "{before:?}");
        let after = Reading::parse(
            "used_cpu_sys:2.0\nused_cpu_user:2.5\ncmdstat_set:calls=110,usec=220,usec_per_call=2\n\
             cmdstat_evalsha:calls=54,usec=540\ncmdstat_DELEX:calls=5,usec=5\n",
        );
        let addrs = ["a".to_string(), "b".to_string()];
        let d = ServerDelta::between(
            &addrs,
            &[Some(before), None],
            &[Some(after), None],
            Duration::from_secs(2),
        );
        assert_eq!(d.nodes[0].1, Some(1.0));
        assert_eq!(d.nodes[1].1, None);
        assert_eq!(d.commands["set"], (100, 200));
        assert_eq!(d.commands["evalsha"], (50, 500));
        assert_eq!(d.commands["delex"], (5, 5));
        let mut d = d;
        d.cycles = 100;
        let v = d.to_json();
        assert_eq!(v["cpu_us_per_cycle"], 10_000.0);
        assert_eq!(v["cores_used"], 0.5);
        assert_eq!(v["commands"]["evalsha"]["usec_per_call"], 10.0);
        assert_eq!(v["nodes"][1]["cpu_us_per_cycle"], serde_json::Value::Null);
        let mut sum = d.clone();
        sum.merge(&d);
        assert_eq!(sum.cpu(), 2.0);
        assert_eq!(sum.commands["set"], (200, 400));
        assert_eq!(sum.wall, Duration::from_secs(4));
        assert_eq!(sum.cycles, 200);
    }

    #[test]
    fn local_addresses() {
        assert!(all_local(&[
            "127.0.0.1:7000".into(),
            "localhost:1".into(),
            "[::1]:5".into()
        ]));
        assert!(!all_local(&["10.0.0.1:7000".into()]));
    }
}
