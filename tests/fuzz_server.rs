//! `dragonlock fuzz-server` end to end: a short run against a real redis-server finds nothing
//! and reports its rate; a stand-in server that dies on one byte sequence is found, and the
//! saved reproducer replays; a server outside 127.0.0.0/8 is refused before any connection.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dragonlock::resp::{encode_frame, Decoder, Frame};
use support::server::Server;

fn fuzz_server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .arg("fuzz-server")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dragonlock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_short_run_against_redis_finds_nothing_and_reports_its_rate() {
    let server = Server::start();
    let out = scratch("fuzz-server-redis");
    let o = fuzz_server(&[
        "--nodes",
        &server.addr(),
        "--duration",
        "3s",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("no finding"), "{t}");
    assert!(t.contains(" exec/s"), "{t}");
    assert!(!out.exists(), "a reproducer was saved: {t}");
    // And the server is still fine.
    assert_eq!(
        server.cmd(&["PING"]),
        Frame::Simple(bytes::Bytes::from_static(b"PONG"))
    );
}

/// The byte sequence the stand-in dies on: a huge declared array, which the fuzzer sends among
/// its malformed frames.
const TRIGGER: &[u8] = b"*2147483647\r\n";

/// A small RESP server in threads: `PING`, `SET`, `GET`, `DEL`, and `+OK` to anything else; a
/// protocol error closes the connection, as Redis does. Once a connection has sent `TRIGGER`
/// it is "crashed": every connection after that is closed at once. Stops by itself after
/// `lifetime`.
struct StandIn {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(lifetime: Duration) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let store = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let stop2 = stop.clone();
        thread::spawn(move || {
            let until = Instant::now() + lifetime;
            while Instant::now() < until && !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (dead, store) = (dead.clone(), store.clone());
                        thread::spawn(move || serve(conn, &dead, &store, until));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        StandIn { addr, stop }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

type Store = Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>;

fn serve(mut conn: TcpStream, dead: &AtomicBool, store: &Store, until: Instant) {
    if dead.load(Ordering::Relaxed) {
        return;
    }
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    let mut chunk = [0u8; 4096];
    while Instant::now() < until && !dead.load(Ordering::Relaxed) {
        let n = match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        };
        seen.extend_from_slice(&chunk[..n]);
        if seen.windows(TRIGGER.len()).any(|w| w == TRIGGER) {
            dead.store(true, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let reply = match decoder.decode(&mut buf) {
                Ok(Some(Frame::Array(args))) => answer(&args, store),
                Ok(Some(_)) | Err(_) => {
                    let _ = conn.write_all(b"-ERR Protocol error\r\n");
                    return;
                }
                Ok(None) => break,
            };
            let mut out = BytesMut::new();
            encode_frame(&mut out, &reply);
            if conn.write_all(&out).is_err() {
                return;
            }
        }
    }
}

fn answer(args: &[Frame], store: &Store) -> Frame {
    let arg = |i: usize| {
        args.get(i)
            .and_then(Frame::as_bytes)
            .unwrap_or_default()
            .to_vec()
    };
    let ok = Frame::Simple(bytes::Bytes::from_static(b"OK"));
    match arg(0).to_ascii_uppercase().as_slice() {
        b"PING" => Frame::Simple(bytes::Bytes::from_static(b"PONG")),
        b"SET" => {
            store.lock().unwrap().insert(arg(1), arg(2));
            ok
        }
        b"GET" => match store.lock().unwrap().get(&arg(1)) {
            Some(v) => Frame::Bulk(bytes::Bytes::from(v.clone())),
            None => Frame::Null,
        },
        b"DEL" => Frame::Integer(store.lock().unwrap().remove(&arg(1)).is_some() as i64),
        _ => ok,
    }
}

#[test]
fn a_server_that_dies_on_one_sequence_is_found_and_its_reproducer_replays() {
    let standin = StandIn::start(Duration::from_secs(120));
    let out = scratch("fuzz-server-standin");
    let o = fuzz_server(&[
        "--nodes",
        &standin.addr,
        "--duration",
        "60s",
        "--seed",
        "11",
        "--timeout",
        "1s",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("finding: crash"), "{t}");
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let reproducer = std::fs::read(&files[0]).unwrap();
    assert!(
        reproducer.windows(TRIGGER.len()).any(|w| w == TRIGGER),
        "the reproducer holds the sequence that killed the stand-in"
    );

    // Replayed on a fresh stand-in: reproduced.
    let fresh = StandIn::start(Duration::from_secs(30));
    let file = files[0].to_str().unwrap();
    let o = fuzz_server(&["--nodes", &fresh.addr, "--replay", file, "--timeout", "1s"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("reproduced"), "{}", text(&o));

    // A harmless input replays clean.
    let harmless = out.join("harmless.resp");
    std::fs::write(&harmless, b"*1\r\n$4\r\nPING\r\n*1\r\n$").unwrap();
    let healthy = StandIn::start(Duration::from_secs(30));
    let o = fuzz_server(&[
        "--nodes",
        &healthy.addr,
        "--replay",
        harmless.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_server_outside_loopback_is_refused_before_any_connection() {
    // TEST-NET-1: never connected to; the refusal comes from the address alone.
    let o = fuzz_server(&["--nodes", "192.0.2.1:6379", "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("outside 127.0.0.0/8"), "{}", text(&o));
    let o = fuzz_server(&["--nodes", "[::2]:6379", "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// Found by review: `--timeout 0s` made every check a "hang" and saved a false reproducer.
#[test]
fn bounds_that_cannot_measure_anything_are_refused() {
    for args in [
        &["--timeout", "0s"][..],
        &["--timeout", "10ms"],
        &["--duration", "0s"],
        &["--max-batches", "0"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dragonlock"))
            .args(["fuzz-server", "--nodes", "127.0.0.1:1"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
