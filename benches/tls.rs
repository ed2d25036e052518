//! The lock cycle over TLS against the same cycle over plain TCP, in one run on the same five
//! servers (each serves both a plain and a TLS port): cycle by cycle in a new random order each
//! round, so drift and the machine's load fall on both alike. Prints p50 / p99 of each, the
//! p50 ratio, and client CPU per cycle (`getrusage` of this thread: the runtime is
//! current-thread, so the drivers run here too).
//!
//! `cargo bench --bench tls` (needs `redis-server` built with TLS; under
//! `flock /tmp/dragonlock-bench.lock` on a shared machine). `DRAGONLOCK_TLS_ROUNDS` sets the
//! rounds (default 5,000).

#[path = "../tests/support/pki.rs"]
#[allow(dead_code)]
mod pki;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dragonlock::conn::{ConnectionConfig, TlsConfig, TlsRoots};
use dragonlock::local::{free_port, server_command, Flavor};
use dragonlock::{Redlock, RedlockOptions};
use rand::seq::SliceRandom;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass and touches nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A redis-server with a plain and a TLS port, killed on drop.
struct Node {
    port: u16,
    tls_port: u16,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn start(pki: &pki::Pki, dir: &Path) -> Node {
    let (port, tls_port) = (free_port(), free_port());
    let server = pki.pair("server");
    let mut cmd = server_command(Path::new("redis-server"), Flavor::Redis, port, dir);
    cmd.arg("--tls-port")
        .arg(tls_port.to_string())
        .arg("--tls-cert-file")
        .arg(server.cert)
        .arg("--tls-key-file")
        .arg(server.key)
        .arg("--tls-ca-cert-file")
        .arg(pki.ca())
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("redis-server");
    Node {
        port,
        tls_port,
        child,
    }
}

async fn cycle(r: &Redlock, key: &str) {
    let lock = r.try_acquire(key, Duration::from_secs(30)).await.unwrap();
    lock.release().await.unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then a few rounds show that it works, without a measurement's length.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("DRAGONLOCK_TLS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20 } else { 5_000 });
    let warmup = if smoke { 0 } else { 500 };
    let pki = pki::Pki::new();
    let dir = pki.dir().join("servers");
    std::fs::create_dir_all(&dir).unwrap();
    let nodes: Vec<Node> = (0..5).map(|_| start(&pki, &dir)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = |tls: bool| {
            let configs = nodes
                .iter()
                .map(|n| {
                    if tls {
                        ConnectionConfig::new("127.0.0.1", n.tls_port)
                            .tls(TlsConfig::new().roots(TlsRoots::None).ca_file(pki.ca()))
                    } else {
                        ConnectionConfig::new("127.0.0.1", n.port)
                    }
                })
                .collect();
            Redlock::from_configs(configs, RedlockOptions::default())
        };
        // The servers take a moment to listen: retry the connect (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        let (plain, tls) = loop {
            let plain = connect(false).await.unwrap();
            let tls = connect(true).await.unwrap();
            let up = plain
                .nodes()
                .iter()
                .chain(tls.nodes())
                .all(|n| n.is_connected());
            if up || Instant::now() > deadline {
                break (plain, tls);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for n in plain.nodes().iter().chain(tls.nodes()) {
            n.wait_connected(Duration::from_secs(10)).await.unwrap();
        }
        let mut times: [Vec<Duration>; 2] = Default::default();
        let mut cpu = [Duration::ZERO; 2];
        let mut order = [0usize, 1];
        let mut rng = rand::rng();
        for i in 0..rounds + warmup {
            order.shuffle(&mut rng);
            for &k in &order {
                let (t0, c0) = (Instant::now(), thread_cpu());
                match k {
                    0 => cycle(&plain, "bench:plain").await,
                    _ => cycle(&tls, "bench:tls").await,
                }
                if i >= warmup {
                    times[k].push(t0.elapsed());
                    cpu[k] += thread_cpu() - c0;
                }
            }
        }
        for t in &mut times {
            t.sort_unstable();
        }
        let q = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
        let [p, t] = &times;
        eprintln!(
            "interleaved lock cycles ({rounds} each) on 5 nodes, p50 / p99: plain TCP {:?} / \
             {:?}; TLS {:?} / {:?}; ratio p50 TLS / plain {:.3}x",
            q(p, 0.5),
            q(p, 0.99),
            q(t, 0.5),
            q(t, 0.99),
            q(t, 0.5).as_secs_f64() / q(p, 0.5).as_secs_f64()
        );
        let per = |c: Duration| c / rounds as u32;
        eprintln!(
            "client CPU per cycle: plain TCP {:?}; TLS {:?}; ratio {:.3}x",
            per(cpu[0]),
            per(cpu[1]),
            cpu[1].as_secs_f64() / cpu[0].as_secs_f64()
        );
    });
}
