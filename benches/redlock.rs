//! Uncontended try_acquire + release against 5 local nodes, next to a minimal hand-written
//! baseline in the same run: plain sockets, `SET … NX PX` to every node at once, a quorum of
//! replies, then `DEL` the same way.

mod common;

use std::time::{Duration, Instant};

use common::{baseline_round, cmd, BaselineNode};
use criterion::{criterion_group, criterion_main, Criterion};
use dragonlock::conn::ConnectionConfig;
use dragonlock::{Redlock, RedlockOptions};

fn cycle(c: &mut Criterion) {
    let servers = common::server::cluster(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs: Vec<_> = servers
        .iter()
        .map(|s| ConnectionConfig::from_url(&s.url()).unwrap())
        .collect();
    let script = RedlockOptions::default().force_script_release(true);
    let redlock = rt.block_on(Redlock::from_configs(configs, script));
    let mut base: Vec<BaselineNode> = rt.block_on(async {
        let mut v = Vec::new();
        for s in &servers {
            v.push(BaselineNode::connect(&s.addr()).await);
        }
        v
    });
    let release_path = if redlock.nodes().iter().all(|n| n.has_delex()) {
        "DELEX"
    } else {
        "EVALSHA script"
    };
    eprintln!("release path on these nodes: {release_path}");
    let token = b"0123456789abcdef0123456789abcdef";
    let set = vec![cmd(&[b"SET", b"bench:base", token, b"NX", b"PX", b"30000"]); 5];
    let del = vec![cmd(&[b"DEL", b"bench:base"]); 5];

    let mut group = c.benchmark_group("lock cycle, 5 nodes");
    group.bench_function(
        "baseline: plain sockets SET NX PX + DEL, quorum of 3",
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        baseline_round(&mut base, &set, 3).await;
                        baseline_round(&mut base, &del, 3).await;
                    }
                    start.elapsed()
                })
            })
        },
    );
    group.bench_function("dragonlock try_acquire + release", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let lock = redlock
                        .try_acquire("bench:dl", Duration::from_secs(30))
                        .await
                        .unwrap();
                    lock.release().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = cycle
}
criterion_main!(benches);
