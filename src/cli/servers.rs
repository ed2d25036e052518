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
pub fn start(
    n: usize,
    bin: &Path,
    flavor: Flavor,
    threads: usize,
) -> Result<(Vec<LocalServer>, String), String> {
    let bin = bin.to_path_buf();
    let dir = std::env::temp_dir();
    let mut servers = Vec::new();
    for _ in 0..n {
        let port = local::free_port();
        let child = local::server_command_with_threads(&bin, flavor, port, &dir, threads)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        servers.push(LocalServer {
            port,
            child,
            stopped: false,
        });
    }
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(s.addr()).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the server on {} did not start", s.addr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((servers, bin.display().to_string()))
}
