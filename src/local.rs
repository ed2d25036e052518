//! Throwaway servers on 127.0.0.1, for benchmarks and tests: which server a binary is, a free
//! port, and the command line each server needs. `dragonlock bench` and the test harness both
//! start their servers through this module, so the flags of each server are written once.
//!
//! Available with the `testing` feature (the `cli` feature turns it on too).
//!
//! Redis and Dragonfly differ here: Dragonfly takes `--dbfilename ''`, `--proactor_threads` and
//! `--maxmemory`, does not daemonize, and aborts at start on any unknown environment variable
//! whose name starts with `DFLY_`, so those are removed from its environment. By default it
//! also tries to reach its vendor's update server once at start (`version_check`): a throwaway
//! server on 127.0.0.1 has no business on the network, so it gets `--version_check=false`.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Which server a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `redis-server` (or a compatible server that takes Redis's flags).
    Redis,
    /// Dragonfly.
    Dragonfly,
}

impl Flavor {
    /// Runs `bin --version` and tells the two apart by its output.
    ///
    /// # Errors
    ///
    /// When the binary cannot be run (not installed, not executable).
    pub fn detect(bin: &Path) -> io::Result<Flavor> {
        let mut cmd = Command::new(bin);
        remove_dfly_vars(&mut cmd);
        let out = cmd.arg("--version").output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase()
            + &String::from_utf8_lossy(&out.stderr).to_lowercase();
        Ok(if text.contains("dragonfly") {
            Flavor::Dragonfly
        } else {
            Flavor::Redis
        })
    }
}

/// A port that was free on 127.0.0.1 a moment ago; never 6379, where a shared server may live.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && port != 6379 {
            return port;
        }
    }
}

/// A port from `next` (say [`free_port`]) that is not in `taken`, added to it. Ports picked one
/// after another for servers that bind later can repeat: the kernel hands the same free port out
/// again while the first server has not bound it yet (seen: `dragonlock bench` on a busy machine
/// started two of its five servers on one port).
pub fn distinct_port(taken: &mut Vec<u16>, mut next: impl FnMut() -> u16) -> u16 {
    loop {
        let port = next();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// The process id the server on `127.0.0.1:port` reports (`process_id` in `INFO server`), when
/// it answers within `timeout` and says: a port picked as free can be bound by another process
/// before the server meant for it, and then that process answers instead. Redis reports it;
/// Dragonfly does not (`None`), nor does anything that is not a RESP server, or a server that
/// wants a password first.
pub fn reported_pid(port: u16, timeout: Duration) -> Option<u32> {
    /// Far more than an `INFO server` reply; a larger length is not believed.
    const MAX_REPLY: usize = 64 * 1024;
    let deadline = std::time::Instant::now() + timeout;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    // A bulk string, `$len\r\n` and `len` bytes of text: read it whole, by the deadline.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let text = loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = s.read(&mut buf).ok()?;
        if n == 0 || reply.len() > MAX_REPLY {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply[0] != b'$' {
            return None;
        }
        let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let len: usize = std::str::from_utf8(&reply[1..end]).ok()?.parse().ok()?;
        if len > MAX_REPLY {
            return None;
        }
        if let Some(text) = reply.get(end + 2..end + 2 + len) {
            break String::from_utf8_lossy(text).into_owned();
        }
    };
    let _ = s.write_all(b"QUIT\r\n");
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// The command that starts `bin` in the foreground on `127.0.0.1:port`, with no persistence,
/// working in `dir`. Callers add their own flags (passwords, debug commands) and stdio.
pub fn server_command(bin: &Path, flavor: Flavor, port: u16, dir: &Path) -> Command {
    server_command_with_threads(bin, flavor, port, dir, 1)
}

/// [`server_command`] with Dragonfly's `--proactor_threads` set to `threads` (one thread is
/// the default: the servers share the machine with the client and each other). Redis takes no
/// such flag: `threads` is ignored for it.
pub fn server_command_with_threads(
    bin: &Path,
    flavor: Flavor,
    port: u16,
    dir: &Path,
    threads: usize,
) -> Command {
    let mut cmd = Command::new(bin);
    let port = port.to_string();
    match flavor {
        Flavor::Redis => {
            cmd.args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            cmd.args(["--daemonize", "no", "--protected-mode", "no"]);
        }
        Flavor::Dragonfly => {
            cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dbfilename", ""]);
            cmd.arg("--proactor_threads")
                .arg(threads.max(1).to_string());
            cmd.args(["--maxmemory", "512mb"]);
            cmd.arg("--version_check=false");
            remove_dfly_vars(&mut cmd);
        }
    }
    cmd.arg("--dir").arg(dir).current_dir(dir);
    cmd
}

/// Dragonfly aborts at start on any `DFLY_*` variable it does not know.
fn remove_dfly_vars(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DFLY_") {
            cmd.env_remove(name);
        }
    }
}

/// Freezes the process `pid` (SIGSTOP): its sockets stay open and nothing is answered, the
/// hardest kind of dead node for a client.
pub fn pause(pid: u32) {
    signal(pid, libc::SIGSTOP);
}

/// Lets a paused process run again (SIGCONT).
pub fn resume(pid: u32) {
    signal(pid, libc::SIGCONT);
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours; a stale pid or a bad
    // signal number is reported through errno, which is deliberately ignored here (the process
    // may already be gone). Exercised by every test that stops a server (tests/redlock.rs).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that answers its first connection's first request with `reply`, in pieces of
    /// `chunk` bytes.
    fn fake(reply: &'static [u8], chunk: usize) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 64];
            let _ = c.read(&mut req);
            for piece in reply.chunks(chunk) {
                let _ = c.write_all(piece);
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(200));
        });
        port
    }

    #[test]
    fn the_reported_pid_is_read_from_a_whole_bulk_reply_and_nothing_else() {
        let t = Duration::from_secs(2);
        let info = b"$49\r\n# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\n\r\n";
        assert_eq!(reported_pid(fake(info, 1024), t), Some(4242));
        assert_eq!(reported_pid(fake(info, 3), t), Some(4242), "split anywhere");
        for reply in [
            &b"-NOAUTH Authentication required.\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"$18446744073709551615\r\nprocess_id:1\r\n",
            b"$99999999999999999999999\r\n",
            b"$31\r\n# Server\r\ndragonfly_version:1\r\n\r\n",
        ] {
            assert_eq!(
                reported_pid(fake(reply, 1024), t),
                None,
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        // A reply that never completes: the deadline ends the wait.
        assert_eq!(
            reported_pid(
                fake(b"$40\r\nprocess_id:", 1024),
                Duration::from_millis(100)
            ),
            None
        );
    }

    fn args(flavor: Flavor) -> Vec<String> {
        let cmd = server_command(Path::new("server"), flavor, 7001, Path::new("/tmp"));
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The flags the fixtures' README (`shared/fixtures`) lists for starting Dragonfly 1.40.1,
    /// and no update check: a throwaway server makes no connection off the machine.
    #[test]
    fn dragonfly_starts_without_its_version_check_and_with_its_own_flags() {
        let df = args(Flavor::Dragonfly);
        assert!(df.iter().any(|a| a == "--version_check=false"), "{df:?}");
        for flag in [
            "--port",
            "--bind",
            "--dbfilename",
            "--proactor_threads",
            "--maxmemory",
        ] {
            assert!(df.iter().any(|a| a == flag), "{flag} missing: {df:?}");
        }
        assert!(!df.iter().any(|a| a == "--daemonize"), "{df:?}");
        assert!(
            df.windows(2).any(|w| w == ["--proactor_threads", "1"]),
            "{df:?}"
        );
        let four = server_command_with_threads(
            Path::new("server"),
            Flavor::Dragonfly,
            7001,
            Path::new("/tmp"),
            4,
        );
        let four: Vec<_> = four
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            four.windows(2).any(|w| w == ["--proactor_threads", "4"]),
            "{four:?}"
        );
        let redis = args(Flavor::Redis);
        assert!(
            !redis.iter().any(|a| a.contains("version_check")),
            "{redis:?}"
        );
        assert!(
            redis.windows(2).any(|w| w == ["--daemonize", "no"]),
            "{redis:?}"
        );
    }
}
