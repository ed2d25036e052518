//! The node list: each server listed once, and waiting for a quorum to connect.
//!
//! A server listed twice votes twice: with `127.0.0.1:7701`, `redis://127.0.0.1:7701` and
//! `localhost:7701` among five nodes, one process holds three of the five votes and a lock
//! "held on a quorum" lives on one machine. Two checks catch it:
//! - before connecting, every address is put in a normal form ([`normal_addr`]) and compared;
//! - after connecting, the servers' identities from the handshake are compared
//!   ([`same_server`]): the socket address reached, Redis's `run_id`, and, where there is no
//!   `run_id` (Dragonfly), the `tcp_port` with the process start time, a suspicion confirmed
//!   by a probe key ([`Redlock::same_keyspace`]).
//!
//! What stays undetectable is in `DESIGN.md` ("Each server once").

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{new_token, Redlock};
use crate::conn::{ConnectionConfig, RestartMarker, ServerInfo};
use crate::error::{Error, ErrorKind};

/// One node's wait for its connection, boxed (a cold path: once per call, per node down).
type ConnectWait<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// How long a same-server probe key lives if its cleanup `DEL` never arrives.
const PROBE_TTL_MS: &str = "10000";

/// `host:port` in a normal form, so that spellings of one address compare equal: the host in
/// lower case without IPv6 brackets or a trailing dot, `localhost` as `127.0.0.1`, and an IP
/// address in its canonical text (an IPv4-mapped IPv6 address as IPv4). The URL scheme, the
/// credentials and the database number are not part of it: two databases of one server are
/// still one server, whose crash takes both votes.
pub(crate) fn normal_addr(host: &str, port: u16) -> String {
    let host = lower_host(host);
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) if host == "localhost" => "127.0.0.1".to_string(),
        Err(_) => host,
    };
    format!("{host}:{port}")
}

/// The server name a TLS connection asks for, as a router that sends each name to its own
/// server would read it (lower case, no trailing dot); `None` for plain TCP, and for an IP
/// address or `localhost`, which name no server apart from their address (rustls sends no
/// name for an IP address at all).
fn routing_name(config: &ConnectionConfig) -> Option<String> {
    let name = lower_host(config.tls_name()?);
    (name.parse::<IpAddr>().is_err() && name != "localhost").then_some(name)
}

/// A host name or address without IPv6 brackets or a trailing dot, in lower case: the part of
/// the normal form that [`normal_addr`] and [`routing_name`] share.
fn lower_host(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Refuses an empty list, and two configs whose addresses are one in the normal form, unless
/// both are TLS connections asking for different server names (a router that sends each
/// name to its own server; the handshakes then tell, see [`same_server`]).
pub(crate) fn check_configs<'a>(
    configs: impl ExactSizeIterator<Item = &'a ConnectionConfig>,
) -> Result<(), Error> {
    if configs.len() == 0 {
        return Err(Error::new(ErrorKind::InvalidConfig(
            "Redlock needs at least one node",
        )));
    }
    let addrs: Vec<(String, String, Option<String>)> = configs
        .map(|c| (c.addr(), normal_addr(&c.host, c.port), routing_name(c)))
        .collect();
    for (second, (given, normal, name)) in addrs.iter().enumerate() {
        let same = |(_, n, other): &(String, String, Option<String>)| {
            n == normal && !matches!((name, other), (Some(x), Some(y)) if x != y)
        };
        if let Some(first) = addrs[..second].iter().position(same) {
            return Err(duplicate(
                first,
                second,
                format!(
                    "nodes {first} ({}) and {second} ({given}) are the same address, {normal}",
                    addrs[first].0
                ),
            ));
        }
    }
    Ok(())
}

fn duplicate(first: usize, second: usize, detail: String) -> Error {
    Error::new(ErrorKind::DuplicateNode {
        first,
        second,
        detail: detail.into(),
    })
}

/// Why two connections are believed to reach one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SameServer {
    /// Both reached the same socket address (after name resolution): certain, unless both
    /// are TLS connections asking for different server names (a router that sends each name
    /// to its own server can serve several behind one address).
    PeerAddr,
    /// Both servers reported the same `run_id` (random per process): certain.
    RunId,
    /// Neither has a `run_id` (Dragonfly): the same `tcp_port` and the same start time, to the
    /// rounding of `uptime_in_seconds`. Only a suspicion: distinct processes on different hosts,
    /// listening on the same port and started within the same second or two (a fleet rolled
    /// out at once), look the same. A probe decides.
    PortAndStart,
}

impl SameServer {
    fn evidence(self) -> &'static str {
        match self {
            SameServer::PeerAddr => "both connections reached the same socket address",
            SameServer::RunId => "both servers report the same run_id",
            SameServer::PortAndStart => {
                "both servers report the same tcp_port and start time, and a key written \
                 through one was read through the other"
            }
        }
    }
}

/// Whether two handshakes describe one server process, and how sure that is. `names` are the
/// TLS server names the two connections asked for, as a router reads them (`routing_name`;
/// `None`: plain TCP, or no name to route by): with two different names, one socket address
/// may front two servers, and the handshakes decide.
pub(crate) fn same_server(
    a: &ServerInfo,
    b: &ServerInfo,
    names: (Option<&str>, Option<&str>),
) -> Option<SameServer> {
    let routed_by_name = matches!(names, (Some(x), Some(y)) if x != y);
    if a.peer_addr.is_some() && a.peer_addr == b.peer_addr && !routed_by_name {
        return Some(SameServer::PeerAddr);
    }
    match (&a.restart_marker, &b.restart_marker) {
        (Some(RestartMarker::RunId(x)), Some(RestartMarker::RunId(y))) => {
            (x == y).then_some(SameServer::RunId)
        }
        (Some(x @ RestartMarker::StartedAt(_)), Some(y @ RestartMarker::StartedAt(_))) => {
            (a.tcp_port.is_some() && a.tcp_port == b.tcp_port && x.same_process(y))
                .then_some(SameServer::PortAndStart)
        }
        // One with a run_id and one without: two kinds of server.
        _ => None,
    }
}

impl Redlock {
    /// Compares the handshakes of every pair of connected nodes: an error for a pair that is
    /// certainly one server, and the pairs only suspected ([`SameServer::PortAndStart`]).
    pub(crate) fn check_servers_now(&self) -> Result<Vec<(usize, usize)>, Error> {
        let nodes = &self.inner.nodes;
        let infos: Vec<_> = nodes.iter().map(|n| n.server_info()).collect();
        let mut suspects = Vec::new();
        for second in 0..nodes.len() {
            for first in 0..second {
                let (Some(a), Some(b)) = (&infos[first], &infos[second]) else {
                    continue;
                };
                let (x, y) = (
                    routing_name(nodes[first].config()),
                    routing_name(nodes[second].config()),
                );
                match same_server(a, b, (x.as_deref(), y.as_deref())) {
                    None => {}
                    Some(SameServer::PortAndStart) => suspects.push((first, second)),
                    Some(certain) => {
                        return Err(self.one_server(first, second, certain.evidence()));
                    }
                }
            }
        }
        Ok(suspects)
    }

    /// [`check_servers_now`](Redlock::check_servers_now), with each suspicion settled by a
    /// probe key. A probe that fails leaves the suspicion standing, and it is reported (fail
    /// closed), with the probe's error.
    pub(crate) async fn check_servers(&self) -> Result<(), Error> {
        for (first, second) in self.check_servers_now()? {
            match self.same_keyspace(first, second).await {
                Ok(false) => {}
                Ok(true) => {
                    return Err(self.one_server(first, second, SameServer::PortAndStart.evidence()))
                }
                Err(e) => {
                    let why = format!(
                        "both servers report the same tcp_port and start time, and the probe \
                         that would tell them apart failed ({e})"
                    );
                    return Err(self.one_server(first, second, &why));
                }
            }
        }
        Ok(())
    }

    fn one_server(&self, first: usize, second: usize, evidence: &str) -> Error {
        let nodes = &self.inner.nodes;
        duplicate(
            first,
            second,
            format!(
                "nodes {first} ({}) and {second} ({}) are one server: {evidence}",
                nodes[first].config().addr(),
                nodes[second].config().addr()
            ),
        )
    }

    /// Writes a random key through node `first` and reads it through node `second`: true when
    /// it is there (one keyspace: one server). The key carries the manager's key prefix (so an
    /// ACL that allows the lock keys allows it), lives 10 s at most, and is deleted at once.
    pub(crate) async fn same_keyspace(&self, first: usize, second: usize) -> Result<bool, Error> {
        let nodes = &self.inner.nodes;
        let timeout = self.inner.options.connect_timeout;
        let token = new_token();
        let mut key = self.inner.options.key_prefix.as_bytes().to_vec();
        key.extend_from_slice(b"dragonlock:same-server-probe:");
        key.extend_from_slice(&token);
        let set: [&[u8]; 6] = [b"SET", &key, &token, b"NX", b"PX", PROBE_TTL_MS.as_bytes()];
        if !nodes[first].command_timeout(&set, timeout).await?.is_ok() {
            return Err(Error::new(ErrorKind::UnexpectedReply));
        }
        let got = nodes[second]
            .command_timeout(&[b"GET".as_slice(), &key], timeout)
            .await;
        let _ = nodes[first]
            .command_timeout(&[b"DEL".as_slice(), &key], timeout)
            .await;
        Ok(got?.as_bytes() == Some(&token[..]))
    }

    /// Waits until at least a quorum of nodes is connected, for at most `timeout`, then checks
    /// that a quorum of them answers a `PING` (connected is not answering: a stopped server
    /// keeps its connection open) and that the connected nodes are distinct servers. The
    /// `PING`s get what is left of `timeout`, and at least 250 ms.
    ///
    /// [`connect`](Redlock::connect) returns once every node has had its first connect
    /// attempt, whatever came of it: one node of three reachable is not an error there, since
    /// the others are retried in the background and may come up later. A service that should
    /// not start (or report ready) before it can lock calls this.
    ///
    /// The duplicate check covers the nodes connected at that moment, as at `connect`: a node
    /// that connects later and turns out to be a server already listed is found by the next
    /// call, not before (see `DESIGN.md`, "Each server once").
    ///
    /// # Errors
    ///
    /// [`ErrorKind::QuorumNotConnected`] (`is_unavailable()`) when fewer than a quorum are
    /// connected at the end of `timeout`; [`ErrorKind::QuorumNotAnswering`]
    /// (`is_unavailable()`) when fewer than a quorum answered the `PING`;
    /// [`ErrorKind::DuplicateNode`] (`is_config()`) when two
    /// connected nodes are one server. A node's refusal of the credentials (`is_auth()`) or of
    /// a TLS certificate (`is_tls()`) as soon as so many nodes refused that a quorum cannot
    /// connect: waiting cannot help until the configuration changes (they are still retried
    /// in the background).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches the connections (a same-server probe in flight leaves a
    /// key that expires within 10 s).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let redlock = dragonlock::Redlock::connect(&[
    ///     "redis://127.0.0.1:7001",
    ///     "redis://127.0.0.1:7002",
    ///     "redis://127.0.0.1:7003",
    /// ])
    /// .await?;
    /// redlock.wait_for_quorum(Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_quorum(&self, timeout: Duration) -> Result<(), Error> {
        let nodes = &self.inner.nodes;
        let quorum = self.inner.quorum;
        let deadline = Instant::now() + timeout;
        let connected = || nodes.iter().filter(|n| n.is_connected()).count();
        // One watcher per node still down; done when enough of them have come up.
        let mut waits: Vec<ConnectWait<'_>> = nodes
            .iter()
            .filter(|n| !n.is_connected())
            .map(|n| Box::pin(n.wait_connected(timeout)) as Pin<Box<_>>)
            .collect();
        // The first refusal, when the nodes that refused our credentials or certificates leave
        // fewer than a quorum that could connect.
        let refused = || {
            let mut first = None;
            let mut count = 0;
            for e in nodes.iter().filter(|n| !n.is_connected()) {
                if let Some(e) = e.last_error().filter(Error::is_refusal) {
                    count += 1;
                    first.get_or_insert(e);
                }
            }
            first.filter(|_| nodes.len() - count < quorum)
        };
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        std::future::poll_fn(|cx| {
            waits.retain_mut(|w| w.as_mut().poll(cx).is_pending());
            if connected() >= quorum
                || sleep.as_mut().poll(cx).is_ready()
                || waits.is_empty()
                || refused().is_some()
            {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        let up = connected();
        if up < quorum {
            if let Some(refusal) = refused() {
                return Err(refusal);
            }
        }
        if up >= quorum {
            self.quorum_answers(deadline).await?;
        }
        if up < quorum {
            return Err(Error::new(ErrorKind::QuorumNotConnected {
                connected: up,
                quorum,
            }));
        }
        self.check_servers().await
    }
}

impl Redlock {
    /// A quorum of the connected nodes answers a `PING` before `deadline` (at least
    /// [`MIN_PING_WAIT`] from now, for a wait whose time went to the connects): connected is not
    /// answering, since a stopped server (SIGSTOP, a VM paused) keeps its connection open, and
    /// a readiness check that asked only for connections said yes with three of five nodes
    /// stopped (found by a user's review).
    async fn quorum_answers(&self, deadline: Instant) -> Result<(), Error> {
        let quorum = self.inner.quorum;
        let deadline = deadline.max(Instant::now() + MIN_PING_WAIT);
        let mut pings: Vec<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = self
            .inner
            .nodes
            .iter()
            .filter(|n| n.is_connected())
            .map(|n| Box::pin(async move { n.command(&["PING"]).await.is_ok() }) as Pin<Box<_>>)
            .collect();
        let mut answering = 0;
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        std::future::poll_fn(|cx| {
            pings.retain_mut(|p| match p.as_mut().poll(cx) {
                Poll::Ready(ok) => {
                    answering += usize::from(ok);
                    false
                }
                Poll::Pending => true,
            });
            if answering >= quorum || pings.is_empty() || sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        if answering < quorum {
            return Err(Error::new(ErrorKind::QuorumNotAnswering {
                answering,
                quorum,
            }));
        }
        Ok(())
    }
}

/// The least time [`Redlock::wait_for_quorum`] gives the `PING`s, whatever is left of its wait.
const MIN_PING_WAIT: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_address_have_one_normal_form() {
        let one = normal_addr("127.0.0.1", 7701);
        for (host, port) in [
            ("127.0.0.1", 7701),
            ("localhost", 7701),
            ("LOCALHOST.", 7701),
            ("::ffff:127.0.0.1", 7701),
            ("[::ffff:127.0.0.1]", 7701),
        ] {
            assert_eq!(normal_addr(host, port), one, "{host}");
        }
        assert_ne!(normal_addr("127.0.0.1", 7702), one);
        assert_ne!(normal_addr("127.0.0.2", 7701), one);
        assert_eq!(normal_addr("[::1]", 1), normal_addr("0:0:0:0:0:0:0:1", 1));
        assert_eq!(normal_addr("Redis-A.example", 1), "redis-a.example:1");
    }

    #[test]
    fn an_empty_list_or_a_repeated_address_is_a_configuration_error() {
        let none: Vec<ConnectionConfig> = Vec::new();
        assert!(check_configs(none.iter()).unwrap_err().is_config());
        let urls = [
            "127.0.0.1:7701",
            "redis://127.0.0.1:7702",
            "redis://localhost:7701/3",
        ];
        let configs: Vec<_> = urls
            .iter()
            .map(|u| ConnectionConfig::from_url(u).unwrap())
            .collect();
        let e = check_configs(configs.iter()).unwrap_err();
        assert!(e.is_duplicate_node(), "{e}");
        assert!(
            matches!(
                e.kind(),
                ErrorKind::DuplicateNode {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("127.0.0.1:7701") && text.contains("localhost:7701"),
            "{text}"
        );
        assert!(check_configs(configs[..2].iter()).is_ok());
    }

    /// One address asked for under two TLS server names may front two servers (a router that
    /// sends each name to its own): not refused before connecting. Under one name, or
    /// without TLS, it is one server.
    #[cfg(feature = "tls")]
    #[test]
    fn one_address_under_two_tls_names_is_not_refused_before_connecting() {
        use crate::conn::TlsConfig;
        let named = |name: &str| {
            ConnectionConfig::new("10.0.0.1", 6380).tls(TlsConfig::new().server_name(name))
        };
        let two = [named("one.example"), named("two.example")];
        assert!(check_configs(two.iter()).is_ok());
        let same = [named("one.example"), named("one.example")];
        assert!(check_configs(same.iter()).unwrap_err().is_duplicate_node());
        let mixed = [
            named("one.example"),
            ConnectionConfig::new("10.0.0.1", 6380),
        ];
        assert!(check_configs(mixed.iter()).unwrap_err().is_duplicate_node());
        // Spellings of one name, or names that route nothing (an IP address, localhost), are
        // not two names.
        for (x, y) in [
            ("One.Example", "one.example."),
            ("10.0.0.1", "10.0.0.2"),
            ("localhost", "127.0.0.1"),
        ] {
            let pair = [named(x), named(y)];
            let e = check_configs(pair.iter()).unwrap_err();
            assert!(e.is_duplicate_node(), "{x} and {y}: {e}");
        }
        let spelt: Vec<ConnectionConfig> = ["rediss://localhost:6380", "rediss://127.0.0.1:6380"]
            .iter()
            .map(|u| ConnectionConfig::from_url(u).unwrap())
            .collect();
        assert!(check_configs(spelt.iter()).unwrap_err().is_duplicate_node());
    }

    fn info(marker: Option<RestartMarker>, port: Option<u16>) -> ServerInfo {
        ServerInfo {
            restart_marker: marker,
            tcp_port: port,
            ..ServerInfo::default()
        }
    }

    #[test]
    fn handshakes_tell_one_server_from_two() {
        let run = |id: &str| Some(RestartMarker::RunId(id.to_string()));
        let started = |at| Some(RestartMarker::StartedAt(at));
        // Redis: the run_id decides.
        assert_eq!(
            same_server_tcp(&info(run("a"), Some(1)), &info(run("a"), Some(2))),
            Some(SameServer::RunId)
        );
        assert_eq!(
            same_server_tcp(&info(run("a"), Some(1)), &info(run("b"), Some(1))),
            None
        );
        // Dragonfly: port and start time, to the rounding of the uptime; only a suspicion.
        assert_eq!(
            same_server_tcp(&info(started(100), Some(1)), &info(started(101), Some(1))),
            Some(SameServer::PortAndStart)
        );
        assert_eq!(
            same_server_tcp(&info(started(100), Some(1)), &info(started(100), Some(2))),
            None
        );
        assert_eq!(
            same_server_tcp(&info(started(100), Some(1)), &info(started(200), Some(1))),
            None
        );
        assert_eq!(
            same_server_tcp(&info(started(100), None), &info(started(100), None)),
            None
        );
        // The same socket reached: certain, whatever the markers say.
        let mut a = info(None, None);
        a.peer_addr = Some("127.0.0.1:7701".parse().unwrap());
        let b = a.clone();
        assert_eq!(same_server_tcp(&a, &b), Some(SameServer::PeerAddr));
        // Two TLS names behind one address (a router that sends each name to its own
        // server): the handshakes decide, here two run_ids.
        let (mut c, mut d) = (info(run("c"), Some(1)), info(run("d"), Some(1)));
        c.peer_addr = a.peer_addr;
        d.peer_addr = a.peer_addr;
        assert_eq!(
            same_server(&c, &d, (Some("one.example"), Some("two.example"))),
            None
        );
        assert_eq!(
            same_server(&c, &d, (Some("one.example"), Some("one.example"))),
            Some(SameServer::PeerAddr)
        );
        d = info(run("c"), Some(1));
        d.peer_addr = a.peer_addr;
        assert_eq!(
            same_server(&c, &d, (Some("one.example"), Some("two.example"))),
            Some(SameServer::RunId)
        );
    }

    fn same_server_tcp(a: &ServerInfo, b: &ServerInfo) -> Option<SameServer> {
        same_server(a, b, (None, None))
    }
}
