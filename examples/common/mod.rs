//! What every example locks on: the URLs given on its command line, or, with none, throwaway
//! servers on free 127.0.0.1 ports started through `dragonlock::local` (feature `testing`) and
//! stopped, by pid, when the example ends.
//!
//! The server binary is `$DRAGONLOCK_SERVER_BIN`, else `dragonfly`, else `redis-server` from
//! PATH, as for `dragonlock bench`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dragonlock::local::{self, Flavor};

/// Tries at a free port before giving up: another process may take the port `free_port` found
/// before the server binds it, and the server then exits at once.
const PORT_TRIES: usize = 5;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes an example runs against. Servers it started are stopped when it is dropped.
pub struct Nodes {
    /// One `redis://` URL per node.
    pub urls: Vec<String>,
    servers: Vec<Child>,
}

impl Nodes {
    /// The URLs on the command line, or `n` local servers when there are none.
    pub fn from_args_or_local(n: usize) -> Result<Nodes, String> {
        let urls: Vec<String> = std::env::args().skip(1).collect();
        if !urls.is_empty() {
            println!("nodes: {}", urls.join(" "));
            return Ok(Nodes {
                urls,
                servers: Vec::new(),
            });
        }
        let (bin, flavor) = server_binary()?;
        let mut nodes = Nodes {
            urls: Vec::new(),
            servers: Vec::new(),
        };
        for _ in 0..n {
            let (port, child) = start_one(&bin, flavor)?;
            nodes.urls.push(format!("redis://127.0.0.1:{port}"));
            nodes.servers.push(child);
        }
        println!(
            "nodes: {n} local {} servers ({})",
            match flavor {
                Flavor::Redis => "redis",
                Flavor::Dragonfly => "Dragonfly",
            },
            nodes.urls.join(" ")
        );
        Ok(nodes)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn server_binary() -> Result<(PathBuf, Flavor), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DRAGONLOCK_SERVER_BIN") {
        Some(bin) => vec![bin.into()],
        None => vec!["dragonfly".into(), "redis-server".into()],
    };
    for bin in candidates {
        if let Ok(flavor) = Flavor::detect(&bin) {
            return Ok((bin, flavor));
        }
    }
    Err(
        "no server binary: install redis-server, put dragonfly on PATH, set \
         DRAGONLOCK_SERVER_BIN, or pass redis:// URLs"
            .to_string(),
    )
}

/// Starts one server and waits until it accepts connections, on another port if it lost the
/// race for the first one.
fn start_one(bin: &Path, flavor: Flavor) -> Result<(u16, Child), String> {
    let dir = std::env::temp_dir();
    for _ in 0..PORT_TRIES {
        let port = local::free_port();
        let mut child = local::server_command(bin, flavor, port, &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: most likely the port was taken; try another
            }
            // Answered while our child still runs. Another process that took the port could
            // answer too, before our server exits; the test harness rules that out by asking
            // for `INFO` `process_id`, a check an example leaves out.
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && child.try_wait().ok().flatten().is_none()
            {
                return Ok((port, child));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the server on port {port} did not start"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(format!("no server started in {PORT_TRIES} tries"))
}
