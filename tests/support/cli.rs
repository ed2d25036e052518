//! Running the `dragonlock` binary from process tests.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::server::Server;

/// How long [`dragonlock`] waits for the command: far longer than any test's run takes even
/// under load, so that a command that hangs fails its test instead of holding CI.
const COMMAND_BOUND: Duration = Duration::from_secs(300);

/// Runs `dragonlock` with `args` and no stdin, and waits for it (at most [`COMMAND_BOUND`]:
/// then it is killed and the test fails with what it printed).
pub fn dragonlock(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on their own threads: a full pipe would stop the command.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v).unwrap_or_default()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "dragonlock {args:?} still running after {COMMAND_BOUND:?}: killed\n\
                 stdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `host:port,host:port,…` for `--nodes`.
pub fn node_list(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| s.addr())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `dragonlock bench` with `args` and `--json`, asserts it exits 0, and returns its
/// standard output.
pub fn bench_json_stdout(args: &[&str]) -> String {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = dragonlock(&all);
    assert_eq!(
        code(&o),
        0,
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The exit code, or -1 for a process killed by a signal.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
