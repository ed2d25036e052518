//! One request round trip over a `Connection`, next to the same round trip over a plain tokio
//! socket with a hand-written frame, in the same run; and pipelined throughput from 64 tasks
//! against the sequential rate.

mod common;

use std::time::{Duration, Instant};

use common::{baseline_round, cmd, BaselineNode};
use criterion::{criterion_group, criterion_main, Criterion};
use dragonlock::conn::{Connection, ConnectionConfig};
use dragonlock::resp::SetNxPxCommand;

/// `SET … NX PX 30000`, prepared once as an acquire prepares it.
static SET: std::sync::LazyLock<SetNxPxCommand> =
    std::sync::LazyLock::new(|| SetNxPxCommand::new(30_000));
const TOKEN: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// `iters` requests, one after the other, from one task: the round-trip time.
async fn sequential(conn: &Connection, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        conn.send(|buf| SET.encode(buf, b"k", TOKEN))
            .unwrap()
            .await
            .unwrap();
    }
    start.elapsed()
}

/// The measure, p50 against p50, with drift taken out: the two clients take turns
/// request by request in one loop, so whatever the machine does in the meantime hits both alike.
/// Prints the p50 and p99 of each and their ratios.
async fn interleaved_p50(conn: &Connection, base: &mut BaselineNode, set: &[u8]) {
    const ROUNDS: usize = 20_000;
    let (mut ours, mut theirs) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    let frames = [set.to_vec()];
    for i in 0..ROUNDS + 1_000 {
        let t0 = Instant::now();
        baseline_round(std::slice::from_mut(base), &frames, 1).await;
        let t1 = Instant::now();
        conn.send(|buf| SET.encode(buf, b"k", TOKEN))
            .unwrap()
            .await
            .unwrap();
        let t2 = Instant::now();
        if i >= 1_000 {
            theirs.push(t1 - t0);
            ours.push(t2 - t1);
        }
    }
    ours.sort_unstable();
    theirs.sort_unstable();
    let q = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    eprintln!(
        "interleaved round trips ({ROUNDS} each): dragonlock p50 {:?} p99 {:?}; baseline p50 {:?} p99 {:?}; ratio p50 {:.3}x p99 {:.3}x",
        q(&ours, 0.5),
        q(&ours, 0.99),
        q(&theirs, 0.5),
        q(&theirs, 0.99),
        q(&ours, 0.5).as_secs_f64() / q(&theirs, 0.5).as_secs_f64(),
        q(&ours, 0.99).as_secs_f64() / q(&theirs, 0.99).as_secs_f64(),
    );
}

fn round_trip(c: &mut Criterion) {
    let server = common::server::Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = rt
        .block_on(Connection::connect(
            ConnectionConfig::from_url(&server.url()).unwrap(),
        ))
        .unwrap();
    let mut base = rt.block_on(BaselineNode::connect(&server.addr()));
    let token = TOKEN;
    let set = cmd(&[b"SET", b"k", token, b"NX", b"PX", b"30000"]);
    rt.block_on(interleaved_p50(&conn, &mut base, &set));

    let mut group = c.benchmark_group("round trip SET NX PX");
    group.bench_function("baseline: plain tokio socket", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    baseline_round(
                        std::slice::from_mut(&mut base),
                        std::slice::from_ref(&set),
                        1,
                    )
                    .await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("dragonlock Connection", |b| {
        b.iter_custom(|iters| rt.block_on(sequential(&conn, iters)))
    });
    group.finish();

    // Throughput: requests per second, one task in sequence vs 64 tasks sharing the pipeline.
    let mut group = c.benchmark_group("throughput (time per request)");
    group.bench_function("sequential, 1 task", |b| {
        b.iter_custom(|iters| rt.block_on(sequential(&conn, iters)))
    });
    group.bench_function("pipelined, 64 tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let per_task = iters.div_ceil(64);
                let start = Instant::now();
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                conn.send(|buf| SET.encode(buf, b"k", token))
                                    .unwrap()
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                // `iters` requests in all, spread over 64 tasks.
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = round_trip
}
criterion_main!(benches);
