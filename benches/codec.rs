//! Codec micro-benchmarks: decoding the replies a lock client sees, encoding its commands.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dragonlock::resp::{
    encode_command, encode_delex_ifeq, Decoder, EvalShaCommand, SetNxPxCommand,
};

const HELLO3: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

fn decode(c: &mut Criterion) {
    let mut array = b"*100\r\n".to_vec();
    for i in 0..100 {
        array.extend_from_slice(
            format!("${}\r\nelement-{i}\r\n", format!("element-{i}").len()).as_bytes(),
        );
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("+OK", b"+OK\r\n".to_vec()),
        ("_", b"_\r\n".to_vec()),
        (":1", b":1\r\n".to_vec()),
        ("$-1", b"$-1\r\n".to_vec()),
        (
            "-NOSCRIPT",
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n".to_vec(),
        ),
        ("HELLO 3 reply", HELLO3.to_vec()),
        ("100-element array", array),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, input) in cases {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::with_capacity(input.len() * BATCH as usize);
        // What is timed is the decode alone, as in a pipelined read where many replies wait in
        // the buffer: the buffer is refilled between batches, off the clock.
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                in_batches(iters, &input, &mut buf, |buf, batch| {
                    for _ in 0..batch {
                        black_box(dec.decode(buf).unwrap().unwrap());
                    }
                })
            })
        });
        // The same batch through `decode_each`, as the connection reads a pipeline: the frames'
        // bytes are consumed from the buffer once per batch, not once per frame.
        group.bench_function(format!("{name} (decode_each)"), |b| {
            b.iter_custom(|iters| {
                in_batches(iters, &input, &mut buf, |buf, _| {
                    dec.decode_each(buf, |frame| {
                        black_box(frame);
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                })
            })
        });
        // The same with the refill on the clock, one reply at a time: an upper bound that
        // includes copying the bytes in.
        group.bench_function(format!("{name} (with refill)"), |b| {
            b.iter(|| {
                buf.extend_from_slice(&input);
                black_box(dec.decode(&mut buf).unwrap().unwrap());
            })
        });
    }
    group.finish();
}

/// Times `decode` over `iters` copies of `input`, [`BATCH`] at a time: each batch is written
/// into `buf` off the clock, then `decode(buf, batch)` must consume it all, on the clock.
fn in_batches(
    iters: u64,
    input: &[u8],
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut, u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let batch = left.min(BATCH);
        buf.clear();
        for _ in 0..batch {
            buf.extend_from_slice(input);
        }
        let start = Instant::now();
        decode(buf, batch);
        total += start.elapsed();
        assert!(buf.is_empty(), "the batch was decoded whole");
        left -= batch;
    }
    total
}

/// Replies per refill in the decode benches: enough to make the timer's cost vanish, few enough
/// that the buffer stays small (1.7 MiB for the 100-element array, a few KiB for the rest).
const BATCH: u64 = 1024;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Every variable part goes through `black_box` as a slice, so nothing about it (its length
    // included) is known at compile time: what is timed is the formatting a real call does.
    let key: &[u8] = b"lock:orders:42";
    let token: &[u8] = b"0123456789abcdef0123456789abcdef";
    // As an acquire does: the ttl prepared once, then one encode per node.
    let set = SetNxPxCommand::new(black_box(30_000));
    group.bench_function("SET k token NX PX 30000 (prepared)", |b| {
        b.iter(|| {
            black_box(&set).encode(&mut buf, black_box(key), black_box(token));
            buf.clear();
        })
    });
    group.bench_function("SET NX PX: preparing the ttl", |b| {
        b.iter(|| SetNxPxCommand::new(black_box(30_000)))
    });
    group.bench_function("SET k token NX PX 30000 (generic encoder, baseline)", |b| {
        b.iter(|| {
            encode_command(
                &mut buf,
                &[
                    &b"SET"[..],
                    black_box(key),
                    black_box(token),
                    b"NX",
                    b"PX",
                    b"30000",
                ],
            );
            buf.clear();
        })
    });
    let evalsha = EvalShaCommand::new(&[b'a'; 40]);
    group.bench_function("EVALSHA sha 1 key token (prepared)", |b| {
        b.iter(|| {
            evalsha.encode(&mut buf, &[black_box(key)], &[black_box(token)]);
            buf.clear();
        })
    });
    // The release where the server has a native compare-and-delete (Dragonfly).
    group.bench_function("DELEX key IFEQ token (prepared)", |b| {
        b.iter(|| {
            encode_delex_ifeq(&mut buf, black_box(key), black_box(token));
            buf.clear();
        })
    });
    group.bench_function("DELEX key IFEQ token (generic encoder, baseline)", |b| {
        b.iter(|| {
            encode_command(
                &mut buf,
                &[&b"DELEX"[..], black_box(key), b"IFEQ", black_box(token)],
            );
            buf.clear();
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
