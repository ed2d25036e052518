//! Connection options: a builder, or a `redis://` URL.

use std::time::Duration;

use super::tls::TlsConfig;
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

/// Default most requests on one connection whose reply has not been taken yet (in flight, or
/// answered and not yet polled). Past it, requests fail at once with `Overloaded` instead of
/// queueing. The slot table is allocated whole at start, 88 bytes a slot (the slot and its
/// entry in the in-flight queue), so 1,024 slots are 88 KiB per connection. A lock operation
/// holds one per node while it waits, plus at most one per phase for a node that answers
/// after the quorum: 1,024 covers 512 lock operations at once on a node that stalls, twice the
/// 256 concurrent workers the benchmarks drive. A node further behind than that is not keeping
/// up, and failing fast on it (it counts as a failed node for that attempt) is better than
/// holding more memory for it.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The largest `max_in_flight` accepted (larger values are clamped): 1 Mi slots are 88 MiB, far
/// past what one lock client's connection should hold.
pub const MAX_IN_FLIGHT_LIMIT: usize = 1 << 20;

/// Default capacity of each of the connection's two write buffers (callers encode into one while
/// the driver writes the other). A lock command is 60–130 bytes, so 32 KiB holds about 250 of
/// them queued between two writes: one from each of 256 concurrent lock operations, the most
/// the benchmarks drive. Past it (less than [`COMMAND_ROOM`] left), requests fail with
/// `Overloaded` until the driver has written what is queued.
pub const DEFAULT_WRITE_BUFFER: usize = 32 * 1024;

/// Default capacity of the read buffer. A lock reply is 3–5 bytes, so one read takes thousands
/// of them; a burst larger than the buffer is read in several reads, never by growing it. Only
/// a single frame larger than half the buffer makes it grow, and it shrinks back once that
/// frame is consumed.
pub const DEFAULT_READ_BUFFER: usize = 16 * 1024;

/// Room kept for the command being encoded: a request is refused (`Overloaded`) when the write
/// buffer already holds commands and less than this is left. A lock command whose key is under
/// 800 bytes fits, so the lock path never grows the buffer. A larger command (an 8 MiB `ECHO`)
/// is still accepted into an empty buffer, which then grows for it.
pub const COMMAND_ROOM: usize = 1024;

/// The smallest buffer capacity accepted (smaller values are raised to it): a few lock commands
/// and the room for one more.
pub const MIN_BUFFER: usize = 4 * 1024;

/// The largest buffer capacity accepted (larger values are lowered to it).
pub const MAX_BUFFER: usize = 64 * 1024 * 1024;

/// Which RESP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `HELLO 3`, falling back to RESP2 when the server does not know it.
    Resp3,
    /// RESP2 only (no `HELLO`).
    Resp2,
}

/// How to reach and talk to one node.
///
/// # Memory
///
/// A connection allocates what it needs for requests once, when it starts, and then never
/// grows it while requests come and go, whatever the interleaving of requests and replies:
///
/// | what | size with the defaults |
/// |---|---|
/// | slot table: [`max_in_flight`](ConnectionConfig::max_in_flight) × 88 bytes (a slot and a queue entry) | 88 KiB |
/// | two write buffers of [`write_buffer`](ConnectionConfig::write_buffer) | 64 KiB |
/// | read buffer of [`read_buffer`](ConnectionConfig::read_buffer) | 16 KiB |
/// | decoder stack: `max_depth` × 16 bytes, inline up to 16 levels | 512 bytes |
///
/// About 168 KiB per node with the defaults, plus the kernel's socket buffers; connections
/// started as a group ([`Connection::start_group`](super::Connection::start_group), as a
/// `Redlock`'s are) also share a table of lock phases, 2 × the largest `max_in_flight` × 736
/// bytes (1.4 MiB with the defaults). Requests past
/// either bound fail at once with `Overloaded`, without being sent. Two things may still
/// allocate, both chosen by the caller: a command larger than what is left of the write buffer
/// (it grows for that command), and a reply frame larger than half the read buffer (it grows,
/// then shrinks back), besides the frames themselves when they are aggregates or kept payloads.
#[derive(Clone)]
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
    pub(crate) write_buffer: usize,
    pub(crate) read_buffer: usize,
    pub(crate) decoder: DecoderConfig,
    pub(crate) scripts: Vec<Script>,
    pub(crate) probe_delex: bool,
    /// TLS settings; `None` for plain TCP. Without the `tls` feature the type is empty, so
    /// this is always `None`.
    pub(crate) tls: Option<TlsConfig>,
}

/// Every setting but the password, which shows as `***` when there is one: a config is
/// reachable from a running `Redlock` (`nodes()[i].config()`), and `{:?}` ends up in logs.
impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("protocol", &self.protocol)
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_in_flight", &self.max_in_flight)
            .field("write_buffer", &self.write_buffer)
            .field("read_buffer", &self.read_buffer)
            .field("decoder", &self.decoder)
            .field("scripts", &self.scripts.len())
            .field("probe_delex", &self.probe_delex)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConnectionConfig {
    /// The server name a TLS connection asks for (SNI): the configured one, else the host;
    /// `None` for plain TCP.
    pub(crate) fn tls_name(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.name_for(&self.host))
    }

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
            write_buffer: DEFAULT_WRITE_BUFFER,
            read_buffer: DEFAULT_READ_BUFFER,
            decoder: DecoderConfig::default(),
            scripts: Vec::new(),
            probe_delex: true,
            tls: None,
        }
    }

    /// Parses `redis://[user[:password]@]host[:port][/db][?protocol=resp2|resp3]`;
    /// `dragonfly://` is a synonym, and a bare `host:port` is accepted too. The port defaults to
    /// 6379. The user and the password are percent-decoded (`%40` for `@`, `%2F` for `/`,
    /// `%25` for `%`), so any password can be written; [`credentials`](ConnectionConfig::credentials)
    /// takes them as they are. An IPv6 host goes in brackets (`redis://[::1]:7000`).
    ///
    /// `rediss://` (and its synonym `dragonflys://`) is the same over TLS, with the default
    /// `TlsConfig` (the platform's roots, the host as the name to
    /// verify), and needs the `tls` feature; set `ConnectionConfig::tls` after
    /// parsing for a private CA or a client certificate.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for another scheme, a bad port or db, an empty host, a user
    /// or password that is not valid UTF-8 once decoded, or a query other than `protocol`; for
    /// `rediss://` without the `tls` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = dragonlock::conn::ConnectionConfig::from_url("redis://app:s3cret@127.0.0.1:7000/2").unwrap();
    /// assert_eq!(c.addr(), "127.0.0.1:7000");
    /// // A password with `@` and `/` in it, percent-encoded.
    /// let c = dragonlock::conn::ConnectionConfig::from_url("redis://:p%40ss%2Fw@127.0.0.1").unwrap();
    /// assert!(dragonlock::conn::ConnectionConfig::from_url("http://x").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<ConnectionConfig, Error> {
        let bad = |what| Error::new(ErrorKind::InvalidConfig(what));
        let mut tls = false;
        let rest = if let Some((scheme, rest)) = url.split_once("://") {
            match scheme {
                "redis" | "dragonfly" => {}
                "rediss" | "dragonflys" => tls = true,
                _ => {
                    return Err(bad(
                        "the URL scheme must be redis://, rediss:// (TLS), dragonfly:// or \
                         dragonflys:// (TLS)",
                    ))
                }
            }
            rest
        } else {
            url
        };
        if tls && !cfg!(feature = "tls") {
            return Err(bad(
                "rediss:// needs TLS, and this build of dragonlock has no TLS (the `tls` feature)",
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
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
            // An IPv6 address without a port (`[::1]`): its colons are not the port's.
            Some(_) if hostport.starts_with('[') && hostport.ends_with(']') => (hostport, 6379),
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?,
            ),
            None => (hostport, 6379),
        };
        // `[::1]` is the host `::1`.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("the URL has no host"));
        }
        if port == 0 {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
        let mut config = ConnectionConfig::new(host, port);
        #[cfg(feature = "tls")]
        if tls {
            config.tls = Some(TlsConfig::new());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|d| d.into_owned())
                .map_err(|_| bad("the user or password is not UTF-8 once percent-decoded"))
        };
        if let Some(userinfo) = userinfo {
            match userinfo.split_once(':') {
                Some((user, pass)) => {
                    if !user.is_empty() {
                        config.username = Some(decode(user)?);
                    }
                    config.password = Some(decode(pass)?);
                }
                // `redis://secret@host` is a password, as redis-cli reads it.
                None if !userinfo.is_empty() => config.password = Some(decode(userinfo)?),
                None => {}
            }
        }
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            config.protocol = match param {
                "protocol=resp3" | "protocol=3" => Protocol::Resp3,
                "protocol=resp2" | "protocol=2" => Protocol::Resp2,
                "" => continue,
                _ => {
                    return Err(bad(
                        "the URL's query may only set protocol=resp2 or protocol=resp3",
                    ))
                }
            };
        }
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            config.db = Some(
                path.parse()
                    .map_err(|_| bad("the database must be a number"))?,
            );
        }
        Ok(config)
    }

    /// `host:port` (`[host]:port` for an IPv6 address).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects over TLS with these settings (the `tls` feature). Reconnects do the whole TLS
    /// handshake again; the commands of the connection handshake follow it in one round trip,
    /// as on plain TCP.
    ///
    /// # Examples
    ///
    /// ```
    /// use dragonlock::conn::{ConnectionConfig, TlsConfig, TlsRoots};
    ///
    /// let config = ConnectionConfig::from_url("redis://127.0.0.1:6380")?
    ///     .tls(TlsConfig::new().roots(TlsRoots::None).ca_file("tests/ca.crt"));
    /// assert!(config.is_tls());
    /// # Ok::<(), dragonlock::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS settings, when the connection uses TLS.
    #[cfg(feature = "tls")]
    pub fn tls_config(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// Plain TCP again, after a `rediss://` URL or `ConnectionConfig::tls`.
    pub fn no_tls(mut self) -> Self {
        self.tls = None;
        self
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

    /// The most requests whose reply has not been taken yet (in flight, or answered and not yet
    /// polled) before new ones fail with `Overloaded`: the size of the slot table, allocated
    /// whole when the connection starts (88 bytes a slot). Clamped to 1 ..=
    /// [`MAX_IN_FLIGHT_LIMIT`]; the default is [`DEFAULT_MAX_IN_FLIGHT`].
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.clamp(1, MAX_IN_FLIGHT_LIMIT);
        self
    }

    /// The capacity of each of the two write buffers, allocated when the connection starts.
    /// Requests fail with `Overloaded` while less than [`COMMAND_ROOM`] of it is left. Clamped
    /// to [`MIN_BUFFER`] ..= [`MAX_BUFFER`]; the default is [`DEFAULT_WRITE_BUFFER`].
    pub fn write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes.clamp(MIN_BUFFER, MAX_BUFFER);
        self
    }

    /// The capacity of the read buffer, allocated at each connect. Clamped to [`MIN_BUFFER`]
    /// ..= [`MAX_BUFFER`]; the default is [`DEFAULT_READ_BUFFER`].
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.clamp(MIN_BUFFER, MAX_BUFFER);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_read_with_its_escapes_ipv6_host_and_protocol() {
        let c =
            ConnectionConfig::from_url("redis://a%3Ab:p%40ss%2Fw%25rd@127.0.0.1:7000/2").unwrap();
        assert_eq!(c.username.as_deref(), Some("a:b"));
        assert_eq!(c.password.as_deref(), Some("p@ss/w%rd"));
        assert_eq!((c.addr(), c.db), ("127.0.0.1:7000".into(), Some(2)));
        let c = ConnectionConfig::from_url("redis://s%2Fcret@127.0.0.1").unwrap();
        assert_eq!(c.password.as_deref(), Some("s/cret"));
        let c = ConnectionConfig::from_url("redis://[::1]:7000").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 7000));
        assert_eq!(c.addr(), "[::1]:7000");
        let c = ConnectionConfig::from_url("redis://[::1]").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 6379));
        let c = ConnectionConfig::from_url("redis://127.0.0.1:7000/0?protocol=resp2").unwrap();
        assert_eq!((c.protocol, c.db), (Protocol::Resp2, Some(0)));
        let c = ConnectionConfig::from_url("redis://127.0.0.1?protocol=resp3").unwrap();
        assert_eq!(c.protocol, Protocol::Resp3);
        for bad in [
            "redis://127.0.0.1?timeout=5",
            "redis://:%FF@127.0.0.1",
            "redis://127.0.0.1:70000",
        ] {
            assert!(
                ConnectionConfig::from_url(bad).unwrap_err().is_config(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_shows_no_password() {
        let c = ConnectionConfig::from_url("redis://user:hunter2@127.0.0.1:7000").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(r#"password: Some("***")"#), "{shown}");
        assert!(shown.contains(r#"username: Some("user")"#), "{shown}");
        let none = format!("{:?}", ConnectionConfig::new("127.0.0.1", 7000));
        assert!(none.contains("password: None"), "{none}");
    }
}
