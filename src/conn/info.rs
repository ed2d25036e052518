//! What a server said about itself at handshake.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::resp::Frame;

/// Tells one server process from the next on the same address. Redlock's delayed-restart rule
/// uses it: a node whose marker changed within the lock ttl lost its keys and must not vote yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartMarker {
    /// Redis's `run_id`, new at every start.
    RunId(String),
    /// Where there is no `run_id` (Dragonfly): the start time derived from `uptime_in_seconds`, in
    /// Unix seconds. Two readings of one process may differ by a second of rounding.
    StartedAt(u64),
}

impl RestartMarker {
    /// True when both markers describe the same server process.
    pub fn same_process(&self, other: &RestartMarker) -> bool {
        match (self, other) {
            (RestartMarker::RunId(a), RestartMarker::RunId(b)) => a == b,
            (RestartMarker::StartedAt(a), RestartMarker::StartedAt(b)) => a.abs_diff(*b) <= 2,
            _ => false,
        }
    }
}

/// The server behind a connection, as learned by the last handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// `redis` for both Redis and Dragonfly (Dragonfly reports itself as Redis-compatible).
    pub server: String,
    /// The Redis-compatible version the server reports.
    pub version: String,
    /// Dragonfly's own version, when the server is Dragonfly.
    pub dragonfly_version: Option<String>,
    /// The RESP version in use: 2 or 3.
    pub protocol: u8,
    /// The connection's client id, when `HELLO` told it.
    pub client_id: Option<i64>,
    /// Tells this server process from a restarted one.
    pub restart_marker: Option<RestartMarker>,
    /// How long the server process had been running, as it said (`uptime_in_seconds`: the
    /// difference of two whole-second clock readings, so up to a second more than the truth).
    pub uptime: Option<Duration>,
    /// The port the server says it listens on (`tcp_port` in `INFO server`; Redis and Dragonfly
    /// both report it). With the start time it tells Dragonfly processes apart, which have no
    /// `run_id`.
    pub tcp_port: Option<u16>,
    /// The address the connection reached (the socket's peer), after name resolution.
    pub peer_addr: Option<std::net::SocketAddr>,
    /// The server has `DELEX key IFEQ value` (native compare-and-delete).
    pub has_delex: bool,
    /// Every registered script was loaded.
    pub scripts_loaded: bool,
}

impl ServerInfo {
    /// True for Dragonfly.
    pub fn is_dragonfly(&self) -> bool {
        self.dragonfly_version.is_some()
    }

    pub(crate) fn apply_hello(&mut self, hello: &Frame) {
        let text = |k: &[u8]| {
            hello
                .map_get(k)
                .and_then(Frame::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        self.server = text(b"server").unwrap_or_default();
        self.version = text(b"version").unwrap_or_default();
        self.dragonfly_version = text(b"dragonfly_version");
        self.protocol = hello
            .map_get(b"proto")
            .and_then(Frame::as_integer)
            .unwrap_or(3) as u8;
        self.client_id = hello.map_get(b"id").and_then(Frame::as_integer);
    }

    /// Reads `INFO server` text: version, run id or uptime.
    pub(crate) fn apply_info(&mut self, info: &[u8]) {
        let mut run_id = None;
        let mut uptime = None;
        for line in info.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (key, value) = (&line[..colon], &line[colon + 1..]);
            let value_str = || String::from_utf8_lossy(value).into_owned();
            match key {
                b"run_id" if !value.is_empty() => run_id = Some(value_str()),
                b"uptime_in_seconds" => {
                    uptime = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                }
                b"tcp_port" => {
                    self.tcp_port = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
                }
                b"redis_version" if self.version.is_empty() => self.version = value_str(),
                b"dragonfly_version" if self.dragonfly_version.is_none() => {
                    self.dragonfly_version = Some(value_str())
                }
                _ => {}
            }
        }
        if self.server.is_empty() {
            self.server = "redis".to_string();
        }
        self.uptime = uptime.map(Duration::from_secs);
        self.restart_marker = match (run_id, uptime) {
            (Some(id), _) => Some(RestartMarker::RunId(id)),
            (None, Some(up)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Some(RestartMarker::StartedAt(now.saturating_sub(up)))
            }
            (None, None) => None,
        };
    }
}
