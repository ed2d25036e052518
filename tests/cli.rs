//! The `dragonlock` command end to end, as a process: exit codes and JSON.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::server::{cluster, free_port};

fn dragonlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `host:port,host:port,…` for `--nodes`.
fn node_list(servers: &[support::server::Server]) -> String {
    servers
        .iter()
        .map(|s| s.addr())
        .collect::<Vec<_>>()
        .join(",")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn bench_on_the_embedded_default_reports_json_with_a_baseline() {
    support::server::binary(); // fails with install instructions when no server is installed
    let o = dragonlock(&[
        "bench",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--concurrency",
        "4",
        "--baseline",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["setup"]["nodes"].as_array().unwrap().len(), 5);
    assert!(v["dragonlock"]["cycles"].as_u64().unwrap() > 0);
    assert_eq!(
        v["dragonlock"]["outcomes"]["granted"],
        v["dragonlock"]["cycles"]
    );
    assert!(v["dragonlock"]["cycle"]["p99_us"].as_f64().unwrap() > 0.0);
    assert!(v["baseline"]["cycles"].as_u64().unwrap() > 0);
    assert!(v["ratio_to_baseline"]["throughput"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_with_a_stopped_minority_still_grants_every_lock() {
    support::server::binary();
    let o = dragonlock(&[
        "bench",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--concurrency",
        "2",
        "--nodes-down",
        "2",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["dragonlock"]["outcomes"]["granted"].as_u64().unwrap() > 0);
    assert_eq!(
        v["dragonlock"]["outcomes"]["granted"],
        v["dragonlock"]["cycles"]
    );
}

#[test]
fn bench_workloads_run_against_given_nodes() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    for workload in ["contended", "acquire-only", "extend", "multi"] {
        let o = dragonlock(&[
            "bench",
            "--nodes",
            &nodes,
            "--workload",
            workload,
            "--ops",
            "200",
            "--warmup",
            "0s",
            "--concurrency",
            "4",
            "--ttl",
            "5s",
            "--json",
        ]);
        assert_eq!(
            code(&o),
            0,
            "{workload}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v["dragonlock"]["outcomes"]["granted"].as_u64().unwrap() > 0,
            "{workload}"
        );
    }
}

/// `--release-wait` reaches the lock manager. With `quorum` a release returns when 2 of the 3
/// nodes have deleted the key, so it never counts more than 2; with `all` it waits for the
/// third as well. Each worker re-locks its own resource at once, so a release that returned
/// without the key gone would show up as a busy answer.
#[test]
fn bench_release_wait_quorum_returns_at_the_quorum() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let run = |wait: &str| {
        let o = dragonlock(&[
            "bench",
            "--nodes",
            &nodes,
            "--release-wait",
            wait,
            "--ops",
            "300",
            "--warmup",
            "0s",
            "--concurrency",
            "3",
            "--ttl",
            "5s",
            "--json",
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["setup"]["release_wait"], wait);
        assert!(v["dragonlock"]["cycles"].as_u64().unwrap() >= 300);
        assert_eq!(
            v["dragonlock"]["outcomes"]["granted"],
            v["dragonlock"]["cycles"]
        );
        v["dragonlock"]["nodes_per_release"].as_f64().unwrap()
    };
    let quorum = run("quorum");
    assert!(quorum <= 2.0, "a quorum release counted {quorum} nodes");
    let all = run("all");
    assert!(all > 2.0, "releases waiting for all counted {all} nodes");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dead = format!("127.0.0.1:{}", free_port());
    for args in [
        vec!["bench", "--concurrency", "0"],
        vec!["bench", "--nodes", "http://x:1"],
        vec!["bench", "--ttl", "2ms"],
        vec!["bench", "--nodes", &dead, "--duration", "1s"],
        vec!["bench", "--bogus-flag"],
    ] {
        let o = dragonlock(&args);
        assert_eq!(
            code(&o),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stderr.is_empty());
    }
}

#[test]
fn ping_reports_live_and_dead_nodes() {
    let servers = cluster(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let o = dragonlock(&["ping", "--nodes", &format!("{},{dead}", servers[0].addr())]);
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("{:<22} up", servers[0].addr())),
        "{text}"
    );
    assert!(text.contains(&format!("{dead:<22} down")), "{text}");
    assert!(text.contains("scripts loaded"), "{text}");
    let o = dragonlock(&["ping", "--nodes", &dead]);
    assert_eq!(code(&o), 69);
}

#[test]
fn run_passes_the_exit_code_through_and_reports_busy() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    let o = dragonlock(&[
        "run",
        "--nodes",
        &nodes,
        "--resource",
        "job",
        "--ttl",
        "5s",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 0);
    let o = dragonlock(&[
        "run",
        "--nodes",
        &nodes,
        "--resource",
        "job",
        "--ttl",
        "5s",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code(&o), 3);
    // Held by someone else for the whole wait: busy.
    for s in &servers {
        s.cmd(&["SET", "job", "other", "PX", "60000"]);
    }
    let o = dragonlock(&[
        "run",
        "--nodes",
        &nodes,
        "--resource",
        "job",
        "--ttl",
        "5s",
        "--wait",
        "300ms",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 75, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn run_stops_the_command_when_the_lock_is_lost() {
    let mut servers = cluster(3);
    let nodes = node_list(&servers);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args([
            "run",
            "--nodes",
            &nodes,
            "--resource",
            "long",
            "--ttl",
            "1s",
            "--grace",
            "1s",
            "--",
            "sleep",
            "30",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until the lock is taken, then stop a majority.
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers[0].cmd(&["EXISTS", "long"]).as_integer() != Some(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    servers[0].stop();
    servers[1].stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "dragonlock run did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    servers[0].cont();
    servers[1].cont();
    assert_eq!(status.code(), Some(77));
}

#[test]
fn run_with_no_reachable_quorum_is_unavailable() {
    let dead: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let o = dragonlock(&[
        "run",
        "--nodes",
        &dead.join(","),
        "--resource",
        "x",
        "--ttl",
        "1s",
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 69, "{}", String::from_utf8_lossy(&o.stderr));
}

/// `--wait 0s` (the default) means one attempt, not a 1 ms budget: behind nodes that answer
/// 20 ms late, the one attempt still completes and the command runs. (It used to give up at
/// 1 ms and report the free lock as busy: a loaded CI machine showed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_wait_makes_one_whole_attempt_on_slow_nodes() {
    use support::proxy::Fault;
    let (_servers, proxies) = support::proxy::proxied_cluster(3).await;
    for p in &proxies {
        p.set(Fault::Delay {
            fixed: Duration::from_millis(20),
            jitter: Duration::ZERO,
        });
    }
    let nodes = proxies
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect::<Vec<_>>()
        .join(",");
    let o = tokio::task::spawn_blocking(move || {
        dragonlock(&[
            "run",
            "--nodes",
            &nodes,
            "--resource",
            "slow",
            "--ttl",
            "5s",
            "--",
            "true",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

/// Reads `INFO commandstats` into (command, calls) pairs.
fn command_calls(server: &support::server::Server) -> Vec<(String, u64)> {
    let info = server.cmd(&["INFO", "commandstats"]);
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// `bench --baseline` runs the single-loop baseline with the same workers, and it releases with
/// the command dragonlock uses on the server: on Redis 7.0 (no `DELEX`) `EVALSHA` of the
/// release script, never a plain `DEL`. The servers' own counters say so: every release of
/// either client reaches every node as one `EVALSHA`, and nothing but the script deletes.
#[test]
fn bench_baseline_is_the_single_loop_releasing_like_dragonlock() {
    let servers = cluster(3);
    let nodes = node_list(&servers);
    for s in &servers {
        s.cmd(&["CONFIG", "RESETSTAT"]);
    }
    let o = dragonlock(&[
        "bench",
        "--nodes",
        &nodes,
        "--baseline",
        "--ops",
        "200",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--ttl",
        "5s",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["setup"]["baseline"], "single-loop");
    assert_eq!(v["setup"]["baseline_release"], "evalsha");
    let (ours, base) = (&v["dragonlock"], &v["baseline"]);
    let base_cycles = base["cycles"].as_u64().unwrap();
    assert!(base_cycles >= 200, "{base}");
    assert_eq!(base["outcomes"]["granted"], base["cycles"]);
    // Quorum releases: at least 2 of the 3 nodes had released when each returned.
    assert!(base["nodes_per_release"].as_f64().unwrap() >= 2.0, "{base}");
    let releases = ours["cycles"].as_u64().unwrap() + base_cycles;
    for s in &servers {
        let calls = command_calls(s);
        let count = |c: &str| calls.iter().find(|(n, _)| n == c).map_or(0, |(_, k)| *k);
        assert_eq!(count("evalsha"), releases, "{calls:?}");
        assert_eq!(count("set"), releases, "{calls:?}");
        // Redis counts the script's own `redis.call('del')` too: one per release, so a plain
        // `DEL` anywhere would show as more.
        assert_eq!(count("del"), releases, "{calls:?}");
        assert_eq!(count("eval"), 0, "{calls:?}");
    }

    // Contended: one key, four callers, one attempt each time (the bench's policy for both
    // clients): every cycle is granted or busy, and some of each.
    let o = dragonlock(&[
        "bench",
        "--nodes",
        &nodes,
        "--baseline",
        "--workload",
        "contended",
        "--resources",
        "1",
        "--ops",
        "400",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--ttl",
        "5s",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let b = &v["baseline"]["outcomes"];
    let (granted, busy) = (b["granted"].as_u64().unwrap(), b["busy"].as_u64().unwrap());
    assert!(granted > 0, "{b}");
    assert_eq!(
        granted + busy,
        v["baseline"]["cycles"].as_u64().unwrap(),
        "{b}"
    );

    // Workloads the baseline does not have are refused, not compared against something else.
    let o = dragonlock(&[
        "bench",
        "--nodes",
        &nodes,
        "--baseline",
        "--workload",
        "multi",
    ]);
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
}
