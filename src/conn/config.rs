//! Connection options: a builder, or a `redis://` URL.

use std::time::Duration;

use super::Script;
use crate::error::{Error, ErrorKind};
use crate::resp::DecoderConfig;

/// Default connect timeout: a loopback or LAN connect takes well under a millisecond; 1 s leaves
/// room for a busy host without letting a black-holed node hold up start-up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default handshake deadline (HELLO and the setup commands, one round trip).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// First reconnect delay bound; each failure doubles it (full jitter picks a delay below it).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(20);

/// Largest reconnect delay bound: a restarted node is back in use within this.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Smallest delay after an authentication failure: wrong credentials do not fix themselves, so
/// they are never retried in a tight loop.
pub const AUTH_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

/// Default most requests in flight on one connection. Past it, requests fail at once with
/// `Overloaded` instead of queueing without bound. 64 Ki replies of a lock client are about
/// 1 MiB of buffered bytes.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64 * 1024;

/// Which RESP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `HELLO 3`, falling back to RESP2 when the server does not know it.
    Resp3,
    /// RESP2 only (no `HELLO`).
    Resp2,
}

/// How to reach and talk to one node.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: Option<u32>,
    pub(crate) protocol: Protocol,
    pub(crate) client_name: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) decoder: DecoderConfig,
    pub(crate) scripts: Vec<Script>,
    pub(crate) probe_delex: bool,
}

impl ConnectionConfig {
    /// A config for `host:port` with every default.
    pub fn new(host: impl Into<String>, port: u16) -> ConnectionConfig {
        ConnectionConfig {
            host: host.into(),
            port,
            username: None,
            password: None,
            db: None,
            protocol: Protocol::Resp3,
            client_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            decoder: DecoderConfig::default(),
            scripts: Vec::new(),
            probe_delex: true,
        }
    }

    /// Parses `redis://[user[:password]@]host[:port][/db]`; `dragonfly://` is a synonym, and a
    /// bare `host:port` is accepted too. The port defaults to 6379.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for another scheme, a bad port or db, or an empty host.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = dragonlock::conn::ConnectionConfig::from_url("redis://app:s3cret@127.0.0.1:7000/2").unwrap();
    /// assert_eq!(c.addr(), "127.0.0.1:7000");
    /// assert!(dragonlock::conn::ConnectionConfig::from_url("http://x").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<ConnectionConfig, Error> {
        let bad = |what| Error::new(ErrorKind::InvalidConfig(what));
        let rest = if let Some((scheme, rest)) = url.split_once("://") {
            if scheme != "redis" && scheme != "dragonfly" {
                return Err(bad("the URL scheme must be redis:// or dragonfly://"));
            }
            rest
        } else {
            url
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?,
            ),
            None => (hostport, 6379),
        };
        if host.is_empty() {
            return Err(bad("the URL has no host"));
        }
        if port == 0 {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
        let mut config = ConnectionConfig::new(host, port);
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, pass)) => {
                    if !user.is_empty() {
                        config.username = Some(user.to_string());
                    }
                    config.password = Some(pass.to_string());
                }
                // `redis://secret@host` is a password, as redis-cli reads it.
                None if !userinfo.is_empty() => config.password = Some(userinfo.to_string()),
                None => {}
            }
        }
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            config.db = Some(
                path.parse()
                    .map_err(|_| bad("the database must be a number"))?,
            );
        }
        Ok(config)
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Authenticates as `username` (ACL) with `password`.
    pub fn credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_string);
        self.password = Some(password.to_string());
        self
    }

    /// Selects database `db` after connecting.
    pub fn database(mut self, db: u32) -> Self {
        self.db = Some(db);
        self
    }

    /// RESP3 with fallback (the default), or RESP2 only.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The name shown by `CLIENT LIST`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// The TCP connect timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The deadline for the whole handshake.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Reconnect backoff: the first bound and the cap (full jitter below the bound).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// The most requests in flight before new ones fail with `Overloaded`.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The decoder's limits.
    pub fn decoder(mut self, decoder: DecoderConfig) -> Self {
        self.decoder = decoder;
        self
    }

    /// Scripts to load at every (re)connect, so `EVALSHA` rarely meets `NOSCRIPT`.
    pub fn script(mut self, script: Script) -> Self {
        if !self.scripts.iter().any(|s| s.sha() == script.sha()) {
            self.scripts.push(script);
        }
        self
    }

    /// Whether the handshake asks the server if it has `DELEX` (on by default).
    pub fn probe_delex(mut self, probe: bool) -> Self {
        self.probe_delex = probe;
        self
    }
}
