//! `dragonlock fuzz-server`: fuzzes a live server's protocol handling.
//!
//! Each *batch* opens a connection and sends a few *cases*, written in one to four pieces with
//! short pauses between them (so frames arrive split): well-formed commands with mutated
//! arguments, and malformed frames (bad lengths, huge declared sizes, deep nesting, bad type
//! bytes, truncated frames), often pipelined behind well-formed ones. After each batch a *check*
//! on a fresh connection must get `+PONG` for `PING` and the value back for a `SET`/`GET` of a
//! random key. A check that times out (a hang), cannot connect or sees the connection close (a
//! crash), or reads anything else (a wrong answer) is a finding: the exact bytes of the batch
//! before it are saved as a reproducer, which `--replay FILE` sends again and checks.
//!
//! Safety of the fuzzing itself: only addresses in 127.0.0.0/8 unless `--allow-remote`; no
//! administrative command is ever sent (the commands are a fixed list, and garbage starts
//! with a byte no command name starts with, so an inline-command parser cannot read one);
//! every loop is bounded by `--duration` and `--max-batches`, every wait by `--timeout`.
//!
//! Exit codes: 0 nothing found (or `--replay` did not reproduce); 1 a finding (or `--replay`
//! reproduced it); 2 bad input; 69 the server did not pass the check before fuzzing started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dragonlock::resp::{encode_command, Decoder, DecoderConfig, Frame};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{fail, EXIT_UNAVAILABLE, EXIT_USAGE};

/// Exit code: a finding.
const EXIT_FINDING: u8 = 1;

/// How long a batch's replies are read before the connection is dropped: long enough for a
/// local server to answer a batch, short enough for thousands of batches a minute.
const DRAIN_FOR: Duration = Duration::from_millis(20);

/// Most reply bytes read per batch: a reply to a mutated `GET` is at most a few KiB.
const DRAIN_MAX_BYTES: usize = 1 << 20;

/// Longest pause between the pieces of a split batch.
const MAX_PAUSE_MS: u64 = 3;

/// The `fuzz-server` arguments.
#[derive(clap::Args)]
pub struct FuzzServerArgs {
    /// The server: host:port (the first, if several are given).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// How long to fuzz.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Seed of the case generator; the same seed sends the same batches. Random if absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Send this reproducer's bytes once, then check the server; exit 1 if it fails the check.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Where reproducers are saved.
    #[arg(long, default_value = "fuzz-server-findings")]
    out: PathBuf,
    /// At most this many batches, whatever the duration.
    #[arg(long, default_value_t = 1_000_000)]
    max_batches: u64,
    /// How long a check waits for each reply before calling the server hung.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    timeout: Duration,
    /// Allow a server outside 127.0.0.0/8. Fuzzing sends garbage: only to servers you own.
    #[arg(long)]
    allow_remote: bool,
}

/// Runs `fuzz-server`.
/// Bounds that leave nothing to measure, or make every check a false "hang".
fn check_bounds(args: &FuzzServerArgs) -> Result<(), String> {
    if args.timeout < MIN_TIMEOUT {
        return Err(format!(
            "--timeout {:?} is too short: every check would look like a hang (at least {MIN_TIMEOUT:?})",
            args.timeout
        ));
    }
    if args.replay.is_none() && (args.duration.is_zero() || args.max_batches == 0) {
        return Err("--duration and --max-batches must allow at least one batch".to_string());
    }
    Ok(())
}

/// The shortest `--timeout`: a loopback round trip on a loaded machine can take milliseconds,
/// and a timeout shorter than that reports a healthy server as hung.
const MIN_TIMEOUT: Duration = Duration::from_millis(50);

pub async fn run(args: FuzzServerArgs) -> ExitCode {
    if let Err(e) = check_bounds(&args) {
        return fail(EXIT_USAGE, e);
    }
    let addr = match resolve(&args.nodes[0], args.allow_remote).await {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Some(file) = &args.replay {
        return replay(addr, file, args.timeout).await;
    }
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    if let Err(e) = check(addr, &mut rng, args.timeout).await {
        return fail(
            EXIT_UNAVAILABLE,
            format!("{addr} fails the check before fuzzing: {e}"),
        );
    }
    println!("fuzz-server: {addr}, seed {seed}, for {:?}", args.duration);
    let started = Instant::now();
    let (mut batches, mut cases) = (0u64, 0u64);
    while started.elapsed() < args.duration && batches < args.max_batches {
        let (bytes, n) = batch(&mut rng);
        batches += 1;
        cases += n as u64;
        send(addr, &bytes, &mut rng).await;
        if let Err(e) = check(addr, &mut rng, args.timeout).await {
            let path = save(&args.out, seed, batches, &bytes);
            report(started, batches, cases);
            println!("finding: {e} after batch {batches} (seed {seed})");
            match path {
                Ok(p) => println!(
                    "reproducer: {} (dragonlock fuzz-server --nodes {addr} --replay {})",
                    p.display(),
                    p.display()
                ),
                Err(e) => eprintln!("dragonlock: cannot save the reproducer: {e}"),
            }
            return ExitCode::from(EXIT_FINDING);
        }
    }
    report(started, batches, cases);
    println!("no finding");
    ExitCode::SUCCESS
}

fn report(started: Instant, batches: u64, cases: u64) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{batches} batches, {cases} executions in {secs:.1} s: {:.0} exec/s",
        cases as f64 / secs
    );
}

/// `host:port` to one address; refused outside 127.0.0.0/8 unless `allow_remote`. A name is
/// resolved, and every address it gives must be allowed, so a name cannot smuggle one in.
async fn resolve(node: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let hostport = node.trim().trim_start_matches("redis://");
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("bad node {node:?}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or(format!("bad node {node:?}: no address"))?;
    if allow_remote {
        return Ok(first);
    }
    // `localhost` may also give `::1`: loopback, tolerated in the name, never used.
    let in_127 = |a: &SocketAddr| matches!(a, SocketAddr::V4(v4) if v4.ip().octets()[0] == 127);
    let loopback = |a: &SocketAddr| in_127(a) || a.ip() == std::net::Ipv6Addr::LOCALHOST;
    match addrs.iter().find(|a| in_127(a)) {
        Some(a) if addrs.iter().all(loopback) => Ok(*a),
        _ => Err(format!(
            "{node} is outside 127.0.0.0/8: fuzzing sends garbage, so only to a server you own \
             (--allow-remote to confirm)"
        )),
    }
}

async fn replay(addr: SocketAddr, file: &Path, timeout: Duration) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return fail(EXIT_USAGE, format!("cannot read {}: {e}", file.display())),
    };
    let mut rng = StdRng::seed_from_u64(0);
    if let Err(e) = check(addr, &mut rng, timeout).await {
        return fail(
            EXIT_UNAVAILABLE,
            format!("{addr} fails the check before replay: {e}"),
        );
    }
    let mut conn = match TcpStream::connect(addr).await {
        Ok(c) => c,
        Err(e) => return fail(EXIT_UNAVAILABLE, format!("{addr}: {e}")),
    };
    let _ = conn.write_all(&bytes).await;
    drain(&mut conn).await;
    drop(conn);
    match check(addr, &mut rng, timeout).await {
        Ok(()) => {
            println!(
                "replayed {} bytes: the server passes the check",
                bytes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("replayed {} bytes: reproduced: {e}", bytes.len());
            ExitCode::from(EXIT_FINDING)
        }
    }
}

fn save(dir: &Path, seed: u64, batch: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("crash-seed{seed}-batch{batch}.resp"));
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// Sends one batch in one to four pieces, then reads replies for a moment and drops the
/// connection. A server that refuses or resets is left for the check to judge.
async fn send(addr: SocketAddr, bytes: &[u8], rng: &mut StdRng) {
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    else {
        return;
    };
    let pieces = rng.random_range(1..=4usize).min(bytes.len().max(1));
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| rng.random_range(0..=bytes.len()))
        .collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    let mut last = 0;
    for cut in cuts {
        let write = conn.write_all(&bytes[last..cut]);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(1), write).await,
            Ok(Ok(()))
        ) {
            return;
        }
        last = cut;
        if cut < bytes.len() {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=MAX_PAUSE_MS))).await;
        }
    }
    // Half-closed, the server answers what it has and closes: the drain ends at its EOF
    // instead of waiting `DRAIN_FOR` (about 10x the batches a second against Redis).
    let _ = conn.shutdown().await;
    drain(&mut conn).await;
}

/// Reads whatever comes for `DRAIN_FOR`, at most `DRAIN_MAX_BYTES`, until EOF.
async fn drain(conn: &mut TcpStream) {
    let until = tokio::time::Instant::now() + DRAIN_FOR;
    let mut buf = [0u8; 16 << 10];
    let mut total = 0;
    while total < DRAIN_MAX_BYTES {
        match tokio::time::timeout_at(until, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => return,
        }
    }
}

/// The check: on a fresh connection, `PING` answers `+PONG`, and a random value `SET` under a
/// random key comes back from `GET`. The error says which failure it was.
async fn check(addr: SocketAddr, rng: &mut StdRng, timeout: Duration) -> Result<(), String> {
    let mut conn = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("crash: cannot connect: {e}")),
        Err(_) => return Err("hang: connect timed out".into()),
    };
    let key = format!("dragonlock:fuzz-server:{:016x}", rng.random::<u64>());
    let value = format!("{:032x}", rng.random::<u128>());
    let mut out = BytesMut::new();
    encode_command(&mut out, &[&b"PING"[..]]);
    encode_command(
        &mut out,
        &[
            &b"SET"[..],
            key.as_bytes(),
            value.as_bytes(),
            b"PX",
            b"60000",
        ],
    );
    encode_command(&mut out, &[&b"GET"[..], key.as_bytes()]);
    encode_command(&mut out, &[&b"DEL"[..], key.as_bytes()]);
    if tokio::time::timeout(timeout, conn.write_all(&out))
        .await
        .is_err()
    {
        return Err("hang: writing the check timed out".into());
    }
    let mut decoder = Decoder::new(DecoderConfig::default().max_bulk_len(1 << 20));
    let mut buf = BytesMut::with_capacity(4096);
    let mut replies = Vec::with_capacity(4);
    while replies.len() < 4 {
        match decoder.decode(&mut buf) {
            Ok(Some(f)) => {
                replies.push(f);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("wrong answer: {e}")),
        }
        match tokio::time::timeout(timeout, conn.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("crash: the check's connection was closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("crash: {e}")),
            Err(_) => return Err(format!("hang: no reply within {timeout:?}")),
        }
    }
    let want = [
        Frame::Simple(bytes::Bytes::from_static(b"PONG")),
        Frame::Simple(bytes::Bytes::from_static(b"OK")),
        Frame::Bulk(bytes::Bytes::from(value.into_bytes())),
        Frame::Integer(1),
    ];
    for (got, want) in replies.iter().zip(&want) {
        if got != want {
            return Err(format!("wrong answer: {got:?} where {want:?} was due"));
        }
    }
    Ok(())
}

/// One batch: 1 to 6 cases, concatenated. Returns the bytes and the case count.
fn batch(rng: &mut StdRng) -> (Vec<u8>, usize) {
    let n = rng.random_range(1..=6);
    let mut out = Vec::new();
    for _ in 0..n {
        case(rng, &mut out);
    }
    (out, n)
}

/// Commands a fuzzer may send to a server it does not want to harm: data commands on its own
/// keys, nothing administrative (no `CONFIG`, `DEBUG`, `SHUTDOWN`, `FLUSH*`, `SCRIPT KILL`).
const COMMANDS: &[&[&[u8]]] = &[
    &[b"PING"],
    &[b"ECHO", b"x"],
    &[b"GET", b"k"],
    &[b"SET", b"k", b"v"],
    &[b"SET", b"k", b"v", b"NX", b"PX", b"30000"],
    &[b"DEL", b"k"],
    &[b"INCR", b"k"],
    &[b"PEXPIRE", b"k", b"1000"],
    &[b"EVAL", b"return 1", b"1", b"k", b"a"],
    &[
        b"EVALSHA",
        b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
        b"1",
        b"k",
    ],
    &[b"HELLO", b"3"],
    &[b"HELLO", b"2"],
    &[b"MGET", b"k", b"k2"],
    &[b"HSET", b"h", b"f", b"v"],
    &[b"LPUSH", b"l", b"v"],
];

/// Bytes a malformed frame starts with. None is a letter, so a server that reads a line without
/// a type byte as an inline command cannot find a command name in it.
const BAD_TYPE_BYTES: &[u8] = b"\x00\x01\x7f\xff?@[{0 ;.\r\n";

fn case(rng: &mut StdRng, out: &mut Vec<u8>) {
    match rng.random_range(0..10) {
        // A well-formed command, arguments mutated.
        0..=3 => {
            let cmd = COMMANDS[rng.random_range(0..COMMANDS.len())];
            let mut args: Vec<Vec<u8>> = cmd.iter().map(|a| a.to_vec()).collect();
            // An `EVAL` script is never mutated: random Lua is for the Lua fuzzers.
            let fixed = if cmd[0] == b"EVAL" { 2 } else { 1 };
            for arg in args.iter_mut().skip(fixed) {
                if rng.random_bool(0.5) {
                    *arg = mutated_arg(rng);
                }
            }
            // The keys stay in the fuzzer's own namespace.
            if let Some(k) = args.get_mut(1) {
                if !cmd[0].starts_with(b"EVAL") && !cmd[0].starts_with(b"HELLO") {
                    let mut key = b"dragonlock:fuzz-server:".to_vec();
                    key.extend_from_slice(k);
                    *k = key;
                }
            }
            let mut buf = BytesMut::new();
            encode_command(&mut buf, &args);
            out.extend_from_slice(&buf);
        }
        // Bad lengths: short, long, negative, signed, not a number.
        4 => {
            let len =
                [b"-5".as_slice(), b"+3", b"03", b"abc", b"", b"-0", b"99"][rng.random_range(0..7)];
            out.extend_from_slice(b"*2\r\n$4\r\nECHO\r\n$");
            out.extend_from_slice(len);
            out.extend_from_slice(b"\r\nhello\r\n");
        }
        // Huge declared sizes, then less than declared.
        5 => {
            let head = [
                b"*2147483647\r\n".as_slice(),
                b"*1\r\n$536870913\r\n",
                b"*2\r\n$4\r\nECHO\r\n$1000000000\r\nabc",
                b"*9223372036854775807\r\n",
                b"*1048577\r\n$1\r\na\r\n",
            ][rng.random_range(0..5)];
            out.extend_from_slice(head);
        }
        // Deep nesting.
        6 => {
            let depth = rng.random_range(2..=2000);
            for _ in 0..depth {
                out.extend_from_slice(b"*1\r\n");
            }
            out.extend_from_slice(b"$4\r\nPING\r\n");
        }
        // An invalid type byte, then random bytes.
        7 => {
            out.push(BAD_TYPE_BYTES[rng.random_range(0..BAD_TYPE_BYTES.len())]);
            let n = rng.random_range(0..64);
            out.extend((0..n).map(|_| rng.random::<u8>()));
            if rng.random_bool(0.5) {
                out.extend_from_slice(b"\r\n");
            }
        }
        // RESP3 types and bare line ends where a request's array belongs.
        8 => {
            let frame = [
                b"%1\r\n$1\r\na\r\n$1\r\nb\r\n".as_slice(),
                b"*1\r\n:1\r\n",
                b"*1\r\n_\r\n",
                b"*2\r\n$4\r\nECHO\r\n$1\r\na\n",
                b"*2\r\n$4\r\nECHO\r\n$1\r\nab\r\n",
                b"*1\r\n$?\r\n;4\r\nPING\r\n;0\r\n",
                b"\r\n\r\n",
            ][rng.random_range(0..7)];
            out.extend_from_slice(frame);
        }
        // A frame cut short, the rest never sent.
        _ => {
            let mut buf = BytesMut::new();
            encode_command(&mut buf, &[&b"ECHO"[..], &mutated_arg(rng)]);
            let cut = rng.random_range(0..buf.len());
            out.extend_from_slice(&buf[..cut]);
        }
    }
}

fn mutated_arg(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => Vec::new(),
        1 => [
            b"-1".as_slice(),
            b"0",
            b"+1",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"18446744073709551616",
            b"nan",
            b"inf",
            b"1e400",
            b"0x10",
        ][rng.random_range(0..10)]
        .to_vec(),
        2 => (0..rng.random_range(0..4096))
            .map(|_| rng.random())
            .collect(),
        3 => b"\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
        _ => (0..rng.random_range(1..32)).map(|_| rng.random()).collect(),
    }
}
