//! The embedded default for `dragonlock bench`: local servers on free 127.0.0.1 ports, stopped
//! (by pid) when the run ends. The flags of each server live in `dragonlock::local`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dragonlock::local::{self, Flavor};

pub struct LocalServer {
    pub port: u16,
    child: Child,
    flavor: Flavor,
    stopped: bool,
}

impl LocalServer {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: alive but silent, the worst kind of dead node.
    pub fn stop(&mut self) {
        local::pause(self.child.id());
        self.stopped = true;
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if self.stopped {
            local::resume(self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: `$DRAGONLOCK_SERVER_BIN`, else `dragonfly` or `redis-server` on PATH.
pub fn find_binary() -> Result<(PathBuf, Flavor), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DRAGONLOCK_SERVER_BIN") {
        Some(b) => vec![PathBuf::from(b)],
        None => vec!["dragonfly".into(), "redis-server".into()],
    };
    for bin in candidates {
        if let Ok(flavor) = Flavor::detect(&bin) {
            return Ok((bin, flavor));
        }
    }
    Err("no server binary found: install Redis (`sudo apt-get install -y redis-server`), put `dragonfly` on PATH, \
         set DRAGONLOCK_SERVER_BIN, or pass --nodes"
        .to_string())
}

/// `bin` (`--server-bin`) when given, else [`find_binary`]'s; bad input when `bin` cannot run.
pub fn binary(bin: Option<&Path>) -> Result<(PathBuf, Flavor), String> {
    match bin {
        Some(b) => Flavor::detect(b)
            .map(|f| (b.to_path_buf(), f))
            .map_err(|e| format!("--server-bin {}: cannot run it: {e}", b.display())),
        None => find_binary(),
    }
}

/// Starts `n` servers of `bin` (see [`binary`]), Dragonfly with `threads` proactor threads.
/// Returns them, the binary's path and its flavor.
///
/// Each server gets a port no other server of this start has, and counts as started only when
/// the process answering on its port is that server (its reported pid, and the child still
/// running): another process can bind a port picked as free before the server does. A server
/// that lost its port is started again on another (at most 5 attempts each); one that does not
/// start in 10 s fails the start at once.
///
/// Dragonfly reports no pid: for it, only the child still running is checked, which a process
/// that took the port before a slow-starting Dragonfly tried to bind it can pass. Distinct ports
/// rule out the case seen (two servers of one start on one port).
pub fn start(
    n: usize,
    bin: &Path,
    flavor: Flavor,
    threads: usize,
) -> Result<(Vec<LocalServer>, String), String> {
    start_with_ports(n, bin, flavor, threads, local::free_port)
}

/// [`start`] with the candidate ports drawn from `next_port`.
fn start_with_ports(
    n: usize,
    bin: &Path,
    flavor: Flavor,
    threads: usize,
    mut next_port: impl FnMut() -> u16,
) -> Result<(Vec<LocalServer>, String), String> {
    let dir = std::env::temp_dir();
    let mut taken = Vec::new();
    let mut port = || local::distinct_port(&mut taken, &mut next_port);
    // All started first, then waited for: Dragonfly takes a while to start.
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(LocalServer::spawn(bin, flavor, port(), &dir, threads)?);
    }
    for server in &mut servers {
        let mut failures = Vec::new();
        while let Err(why) = server.wait_ready() {
            failures.push(format!("port {}: {why}", server.port));
            if matches!(why, NotReady::Silent) || failures.len() == 5 {
                return Err(format!(
                    "a server did not start in 5 attempts: {}",
                    failures.join("; ")
                ));
            }
            // Dropping the old one stops what is left of it.
            *server = LocalServer::spawn(bin, flavor, port(), &dir, threads)?;
        }
    }
    Ok((servers, bin.display().to_string()))
}

impl LocalServer {
    fn spawn(
        bin: &Path,
        flavor: Flavor,
        port: u16,
        dir: &Path,
        threads: usize,
    ) -> Result<LocalServer, String> {
        let child = local::server_command_with_threads(bin, flavor, port, dir, threads)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(LocalServer {
            port,
            child,
            flavor,
            stopped: false,
        })
    }

    /// Waits (at most 10 s) until this server serves its port; `Err` when it exited, when
    /// another process answers there, or when nothing does in time.
    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NotReady::LostPort(format!("exited at start ({status})")));
            }
            if TcpStream::connect(self.addr()).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(NotReady::Silent);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Redis reports its pid; Dragonfly does not, and then the child still running is the
        // check.
        match local::reported_pid(self.port, Duration::from_secs(2)) {
            Some(pid) if pid != self.child.id() => {
                let why = format!("another process (pid {pid}) answers on the port");
                return Err(NotReady::LostPort(why));
            }
            None if self.flavor == Flavor::Redis => {
                let why = "whatever answers on the port reports no Redis pid".to_string();
                return Err(NotReady::LostPort(why));
            }
            _ => {}
        }
        match self.child.try_wait() {
            Ok(Some(status)) => Err(NotReady::LostPort(format!(
                "exited after another server answered ({status})"
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a server did not count as started.
#[derive(Debug)]
enum NotReady {
    /// Another process has its port (or it exited at start): worth another port.
    LostPort(String),
    /// Nothing answered within 10 s: another port would not help.
    Silent,
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::LostPort(why) => f.write_str(why),
            NotReady::Silent => f.write_str("did not start within 10 s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Redis, which reports its pid; `None` (the test is skipped, and says so) for Dragonfly.
    fn redis() -> Option<PathBuf> {
        match find_binary() {
            Ok((bin, Flavor::Redis)) => Some(bin),
            _ => {
                eprintln!("skipped: needs redis-server (Dragonfly reports no pid to check)");
                None
            }
        }
    }

    /// A port held by a listener that is not a Redis server: it accepts and closes.
    fn squatted_port() -> u16 {
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in squatter.incoming().take(16) {
                drop(conn);
            }
        });
        port
    }

    /// The flake this guards against, end to end: two servers of one start on one port (the
    /// kernel handed the same free port out twice before the first server bound it), and a port
    /// taken by another process first. Here the candidate ports repeat on purpose, and the first
    /// one is held by a listener that is not a Redis server: every server still ends up on a
    /// port of its own, answering with its own pid. (`a_server_whose_port_*` checks the pid
    /// check alone, without the race of a child that may have exited already.)
    #[test]
    fn each_server_gets_its_own_port_even_when_candidates_repeat_or_are_taken() {
        let Some(bin) = redis() else { return };
        let taken = squatted_port();
        let mut candidates = vec![taken, taken, taken].into_iter();
        let (servers, _) = start_with_ports(3, &bin, Flavor::Redis, 1, || {
            candidates.next().unwrap_or_else(local::free_port)
        })
        .unwrap();
        let mut ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        assert!(!ports.contains(&taken), "{ports:?}");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3, "one port each");
        for s in &servers {
            assert_eq!(
                local::reported_pid(s.port, Duration::from_secs(2)),
                Some(s.child.id())
            );
        }
    }

    /// The check itself, with no race: a live Redis child, and the port it is said to serve
    /// held by a listener that is not it. Without the pid check this passes as ready.
    #[test]
    fn a_server_whose_port_another_process_answers_is_not_ready() {
        let Some(bin) = redis() else { return };
        let port = squatted_port();
        let dir = std::env::temp_dir();
        let mut real =
            LocalServer::spawn(&bin, Flavor::Redis, local::free_port(), &dir, 1).unwrap();
        real.port = port;
        let why = real.wait_ready().unwrap_err();
        assert!(matches!(why, NotReady::LostPort(_)), "{why}");
    }

    #[test]
    fn distinct_ports_skip_the_ones_already_taken() {
        let mut taken = vec![7001];
        let mut draws = [7001, 7001, 7002, 7002, 7003].into_iter();
        let mut next = || draws.next().unwrap();
        assert_eq!(local::distinct_port(&mut taken, &mut next), 7002);
        assert_eq!(local::distinct_port(&mut taken, &mut next), 7003);
        assert_eq!(taken, [7001, 7002, 7003]);
    }
}
