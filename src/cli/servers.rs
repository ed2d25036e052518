//! The embedded default for `dragonlock bench`: local servers on free 127.0.0.1 ports, stopped
//! (by pid) when the run ends.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        // SAFETY: kill(2) on a child we spawned; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
        self.stopped = true;
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if self.stopped {
            // SAFETY: as above.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: `$DRAGONLOCK_SERVER_BIN`, else `dragonfly` or `redis-server` on PATH.
pub fn find_binary() -> Result<(PathBuf, bool), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DRAGONLOCK_SERVER_BIN") {
        Some(b) => vec![PathBuf::from(b)],
        None => vec!["dragonfly".into(), "redis-server".into()],
    };
    for bin in candidates {
        if let Ok(out) = Command::new(&bin).arg("--version").output() {
            let text = String::from_utf8_lossy(&out.stdout).to_lowercase()
                + &String::from_utf8_lossy(&out.stderr).to_lowercase();
            return Ok((bin, text.contains("dragonfly")));
        }
    }
    Err("no server binary found: install Redis (`sudo apt-get install -y redis-server`), put `dragonfly` on PATH, \
         set DRAGONLOCK_SERVER_BIN, or pass --nodes"
        .to_string())
}

fn free_port() -> u16 {
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

pub fn start(n: usize) -> Result<(Vec<LocalServer>, String), String> {
    let (bin, dragonfly) = find_binary()?;
    let mut servers = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let p = port.to_string();
        let mut cmd = Command::new(&bin);
        if dragonfly {
            cmd.args([
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--dbfilename",
                "",
                "--proactor_threads",
                "1",
                "--maxmemory",
                "512mb",
            ]);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("DFLY_") {
                    cmd.env_remove(k);
                }
            }
        } else {
            cmd.args([
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]);
        }
        cmd.current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let child = cmd
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
