//! Real server processes for the tests: started on free 127.0.0.1 ports, stopped by pid on drop.
//!
//! The binary is `$DRAGONLOCK_SERVER_BIN` when set, else `redis-server` on PATH. A Dragonfly
//! binary (told apart by its `--version` output) gets Dragonfly's flags, and `DFLY_*` variables
//! are removed from its environment (Dragonfly aborts on unknown ones). ACL users are made the
//! same way on both, with `ACL SETUSER` once the server is up (`server-ops.json`: `+OK` on both).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use dragonlock::local::{free_port, Flavor};

/// The server binary and its flavor, found once per test process.
pub fn binary() -> &'static (PathBuf, Flavor) {
    static BIN: OnceLock<(PathBuf, Flavor)> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("DRAGONLOCK_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        let flavor = Flavor::detect(&bin).unwrap_or_else(|e| {
            panic!(
                "cannot run the server binary {bin:?} ({e}). Install Redis with \
                 `apt-get update && apt-get install -y redis-server`, or set DRAGONLOCK_SERVER_BIN \
                 to a redis-server or dragonfly binary."
            )
        });
        (bin, flavor)
    })
}

/// Options for one server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub requirepass: Option<String>,
    /// ACL users as (name, password) with every permission on every key, made with
    /// `ACL SETUSER name on >password ~* +@all` at each start.
    pub users: Vec<(String, String)>,
    /// Also serve TLS, on a second port ([`Server::tls_port`]). Redis only.
    pub tls: Option<TlsServer>,
}

/// A server's TLS files and whether it requires a client certificate.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must come from (Redis needs one even when it asks for none).
    pub ca: PathBuf,
    /// `--tls-auth-clients yes`: mutual TLS.
    pub auth_clients: bool,
}

/// One running server process.
pub struct Server {
    pub port: u16,
    /// The TLS port, when started with `ServerOptions::tls`; the plain port stays open for the
    /// harness's own commands.
    pub tls_port: Option<u16>,
    options: ServerOptions,
    child: Option<Child>,
    dir: PathBuf,
    stopped: bool,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    /// Starts a server on a port that was free a moment ago. Another process can take that port
    /// before the server binds it (any outgoing connection's ephemeral port comes from the same
    /// range): then the server exits at start, or another server answers on the port. Either
    /// way this start is abandoned and another port is tried (at most 5).
    pub fn start_with(options: ServerOptions) -> Server {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("dragonlock-test-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = Server {
                port,
                tls_port: options.tls.as_ref().map(|_| free_port()),
                options: options.clone(),
                child: None,
                dir,
                stopped: false,
            };
            match s.spawn() {
                Ok(()) => return s,
                // Dropping `s` kills what is left of the process and removes its directory.
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!("no server started in 5 attempts: {failures:#?}");
    }

    /// Starts the process on `self.port` and waits until it serves; `Err` when it exited at start
    /// or when the server answering on the port is not this process.
    fn spawn(&mut self) -> Result<(), String> {
        let (bin, flavor) = binary();
        let mut cmd = dragonlock::local::server_command(bin, *flavor, self.port, &self.dir);
        match flavor {
            Flavor::Redis => {
                cmd.args(["--enable-debug-command", "yes"]);
                if let Some(p) = &self.options.requirepass {
                    cmd.args(["--requirepass", p]);
                }
                if let (Some(tls), Some(port)) = (&self.options.tls, self.tls_port) {
                    cmd.arg("--tls-port")
                        .arg(port.to_string())
                        .arg("--tls-cert-file")
                        .arg(&tls.cert)
                        .arg("--tls-key-file")
                        .arg(&tls.key)
                        .arg("--tls-ca-cert-file")
                        .arg(&tls.ca)
                        .args([
                            "--tls-auth-clients",
                            if tls.auth_clients { "yes" } else { "no" },
                        ]);
                }
            }
            Flavor::Dragonfly => {
                assert!(
                    self.options.tls.is_none(),
                    "the harness starts TLS servers on Redis only"
                );
                if let Some(p) = &self.options.requirepass {
                    cmd.arg(format!("--requirepass={p}"));
                }
            }
        }
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin:?}: {e}")),
        );
        self.stopped = false;
        self.wait_ready()?;
        for (user, pass) in self.options.users.clone() {
            let reply = self.raw(&[
                "ACL",
                "SETUSER",
                &user,
                "on",
                &format!(">{pass}"),
                "~*",
                "+@all",
            ]);
            assert_eq!(reply, b"+OK\r\n", "ACL SETUSER {user}");
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(format!("server exited at start ({status}): {log}"));
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                // Any reply (PONG or NOAUTH) means it is serving.
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 64];
                    if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                        quit(s);
                        return self.check_it_is_ours();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server on port {} did not start within 15 s", self.port);
    }

    /// Whoever answered on the port is this process: it reports our child's pid (Redis's
    /// `process_id`), and the child is still running (a server that lost the port exits).
    fn check_it_is_ours(&mut self) -> Result<(), String> {
        let info = String::from_utf8_lossy(&self.raw(&["INFO", "server"])).into_owned();
        let pid = self.child.as_ref().unwrap().id().to_string();
        if let Some(reported) = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(str::trim)
        {
            if reported != pid {
                return Err(format!(
                    "another server (pid {reported}) answers on the port"
                ));
            }
        }
        match self.child.as_mut().unwrap().try_wait().unwrap() {
            Some(status) => Err(format!("exited after another server answered ({status})")),
            None => Ok(()),
        }
    }

    /// The server's working directory (`--dir`): where `SAVE` writes `dump.rdb`, and where a
    /// restarted process loads it from.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:TLS_PORT` (the certificate is checked against the IP address).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.stopped {
                dragonlock::local::resume(child.id());
            }
            child.kill().ok();
            child.wait().ok();
        }
        self.stopped = false;
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing is answered. Returns once every
    /// thread of the process is stopped: `kill` returns before that, and a command sent in
    /// between can still be answered (seen on Dragonfly: a lock granted by "stopped" nodes).
    pub fn stop(&mut self) {
        let pid = self.pid();
        dragonlock::local::pause(pid as u32);
        self.stopped = true;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "server {pid} not stopped 5 s after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT.
    pub fn cont(&mut self) {
        dragonlock::local::resume(self.pid() as u32);
        self.stopped = false;
    }

    /// Starts a new process on the same port (after `kill9`, or killing it first). Its keys are
    /// gone (no persistence), unless a `dump.rdb` was left in [`dir`](Server::dir): a Redis
    /// loads it at start.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port can linger briefly after the kill, and another process can take it in
            // the moment between this check and the bind: then wait and try again (bounded).
            let busy = |port| TcpListener::bind(("127.0.0.1", port)).is_err();
            while (busy(self.port) || self.tls_port.is_some_and(busy)) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            match self.spawn() {
                Ok(()) => return,
                Err(why) if Instant::now() >= deadline => {
                    panic!("no restart on port {} within 10 s: {why}", self.port)
                }
                Err(_) => self.kill9(),
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs one command over a fresh plain socket (RESP2) and returns the raw reply bytes.
    pub fn raw(&self, args: &[&str]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        if let Some(p) = &self.options.requirepass {
            out.extend(encode(&["AUTH", p]));
        }
        out.extend(encode(args));
        s.write_all(&out).unwrap();
        let mut want_replies = 1 + usize::from(self.options.requirepass.is_some());
        let mut buf = bytes::BytesMut::new();
        let mut dec = dragonlock::resp::Decoder::default();
        let mut last = Vec::new();
        while want_replies > 0 {
            let before = buf.clone();
            match dec.decode(&mut buf).unwrap() {
                Some(_) => {
                    want_replies -= 1;
                    last = before[..before.len() - buf.len()].to_vec();
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).expect("server reply");
                    assert!(n > 0, "server closed");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        quit(s);
        last
    }

    /// `calls` of `command` in `INFO commandstats` (0 when it was never called).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
        let prefix = format!("cmdstat_{command}:calls=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    }

    /// Runs a command and decodes the reply.
    pub fn cmd(&self, args: &[&str]) -> dragonlock::resp::Frame {
        let raw = self.raw(args);
        dragonlock::resp::Decoder::default()
            .decode(&mut bytes::BytesMut::from(&raw[..]))
            .unwrap()
            .unwrap()
    }
}

/// Closes a harness connection so that the server has forgotten it when this returns: `QUIT`,
/// then read until the server closes its side, which it does after freeing the client. A plain
/// close is processed whenever the server gets to it, and a test that counts the server's
/// clients (`INFO clients`) right after would count the harness's connections too (seen under
/// load: 2 where a fresh server should have had none).
fn quit(mut s: TcpStream) {
    if s.write_all(&encode(&["QUIT"])).is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    for _ in 0..100 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// True when every thread of `pid` is in state `T (stopped)`, from `/proc/PID/task/*/status`.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains("T (stopped)"))
        })
    })
}

pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    dragonlock::resp::encode_command(&mut buf, args);
    buf.to_vec()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// `n` servers.
pub fn cluster(n: usize) -> Vec<Server> {
    (0..n).map(|_| Server::start()).collect()
}
