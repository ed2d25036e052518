//! A subscriber connection: one socket per node in pub/sub mode, apart from the node's
//! [`Connection`](super::Connection).
//!
//! Apart, because a subscription changes what a socket may carry: on RESP2 a subscribed
//! connection accepts only (`P`)`SUBSCRIBE`, `UNSUBSCRIBE`, `PING` and `QUIT`, and on RESP3 the
//! answer to every `SUBSCRIBE` is a push (`>3 subscribe …`, `server-ops.json`), not a reply, so
//! the request FIFO of a lock connection would wait for it forever. A socket of its own keeps
//! the lock path's sockets, their FIFO and their zero-allocation cycle exactly as they are, and
//! works over both protocols, on plain TCP or TLS as the node's config says.
//!
//! ```text
//!  start --> connect + handshake --ok--> Connected --> serve --EOF / error--> Lost --+
//!              ^      |                                                            |
//!              |      +--error-----------------------------------------------------+
//!              +------------- backoff (full jitter, doubling) <--------------------+
//!  dropping the Subscriber ends the task from any state.
//! ```
//!
//! *Serve* writes whatever the sink asks for ([`PubSubSink::requests`], asked after every
//! connect and every [`Subscriber::wake`]) and reports every frame it reads as a
//! [`PubSubEvent`]. The sink owns what is subscribed: after `Lost` nothing is, and after
//! `Connected` it asks for everything again. This module knows sockets and frames, not locks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::Notify;

use super::handshake::{self, Stream};
use super::ConnectionConfig;
use crate::error::{Error, ErrorKind};
use crate::resp::{encode_command, Decoder, Frame};

/// Read buffer of a subscriber connection: a release notification is ~80 bytes, so one read
/// takes dozens; larger bursts are read in several reads.
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;

/// A command a sink asks the subscriber connection to send, for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PubSubCommand {
    /// `SUBSCRIBE channel`.
    Subscribe,
    /// `UNSUBSCRIBE channel`.
    Unsubscribe,
}

/// What a subscriber connection reports to its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PubSubEvent<'a> {
    /// Connected and handshaken: nothing is subscribed yet.
    Connected,
    /// The connection failed: nothing is subscribed any more.
    Lost,
    /// The server confirmed a `SUBSCRIBE` (confirmations come in the order the commands went).
    Subscribed(&'a [u8]),
    /// The server confirmed an `UNSUBSCRIBE`.
    Unsubscribed(&'a [u8]),
    /// An error answered the oldest unconfirmed command (an ACL without channel rights).
    Refused,
    /// A message published on a subscribed channel.
    Message {
        /// The channel.
        channel: &'a [u8],
        /// What was published.
        payload: &'a [u8],
    },
}

/// Where a subscriber connection's events go, and where its commands come from. Called from the
/// connection's task, one call at a time.
pub(crate) trait PubSubSink: Send + Sync + 'static {
    /// One event, in the order they happened on the socket.
    fn event(&self, event: PubSubEvent<'_>);
    /// Appends the commands to send now to `out`.
    fn requests(&self, out: &mut Vec<(PubSubCommand, Vec<u8>)>);
}

/// The pub/sub meaning of one frame read from a subscriber connection: a RESP3 push or a RESP2
/// array `[kind, channel, payload-or-count]`, or an error (the answer to a refused command).
/// Anything else (a `PONG`, another kind of push) is `None`.
pub(crate) fn parse_event(frame: &Frame) -> Option<PubSubEvent<'_>> {
    let items = match frame {
        Frame::Push(items) | Frame::Array(items) => items,
        Frame::Error(_) => return Some(PubSubEvent::Refused),
        _ => return None,
    };
    let [kind, channel, third] = items.as_slice() else {
        return None;
    };
    let (kind, channel) = (kind.as_bytes()?, channel.as_bytes()?);
    match kind {
        b"message" => Some(PubSubEvent::Message {
            channel,
            payload: third.as_bytes()?,
        }),
        b"subscribe" => Some(PubSubEvent::Subscribed(channel)),
        b"unsubscribe" => Some(PubSubEvent::Unsubscribed(channel)),
        _ => None,
    }
}

struct Shared {
    closed: AtomicBool,
    /// The sink has commands to send.
    wake: Notify,
    /// The handle was dropped.
    shutdown: Notify,
}

/// A subscriber connection's handle. Dropping it closes the connection.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Starts the connection's task (in the current tokio runtime) for the node `config`
    /// reaches, with its credentials, protocol and timeouts; no scripts are loaded on it.
    pub(crate) fn start(config: &ConnectionConfig, sink: Arc<dyn PubSubSink>) -> Subscriber {
        let mut config = config.clone();
        config.scripts.clear();
        config.probe_delex = false;
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            shutdown: Notify::new(),
        });
        super::spawn_driver(run(config, shared.clone(), sink));
        Subscriber { shared }
    }

    /// Tells the task that the sink has commands to send.
    pub(crate) fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.shutdown.notify_one();
    }
}

async fn run(config: ConnectionConfig, shared: Arc<Shared>, sink: Arc<dyn PubSubSink>) {
    let mut failures: u32 = 0;
    let mut connector = super::tls::Connector::new();
    while !shared.closed.load(Ordering::Acquire) {
        let attempt = tokio::select! {
            r = handshake::establish(&config, &mut connector) => r,
            _ = shared.shutdown.notified() => return,
        };
        // A refused attempt (credentials, a TLS certificate) waits as the lock connections'
        // do, at least `AUTH_FAILURE_BACKOFF`, rather than repeat within the backoff.
        let refused = match attempt {
            Ok((stream, _)) => {
                failures = 0;
                sink.event(PubSubEvent::Connected);
                let ended = serve(&config, stream, &shared, &*sink).await;
                sink.event(PubSubEvent::Lost);
                if ended.kind() == &ErrorKind::Closed {
                    return;
                }
                false
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                e.is_refusal()
            }
        };
        let delay = super::driver::reconnect_delay(&config, failures, refused);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.notified() => return,
        }
    }
}

/// Writes what the sink asks, reports what is read, until the connection fails or is closed.
/// Plain TCP or TLS alike (`Stream`): the subscriber's traffic is rare and small, so it takes
/// the handshake's simple awaited reads and writes rather than the lock drivers' polled ones.
async fn serve(
    config: &ConnectionConfig,
    mut stream: Stream,
    shared: &Shared,
    sink: &dyn PubSubSink,
) -> Error {
    let mut decoder = Decoder::new(config.decoder);
    let mut read_buf = BytesMut::with_capacity(SUBSCRIBER_READ_BUFFER);
    let mut out = BytesMut::new();
    let mut requests = Vec::new();
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return Error::new(ErrorKind::Closed);
        }
        sink.requests(&mut requests);
        for (command, channel) in requests.drain(..) {
            let name: &[u8] = match command {
                PubSubCommand::Subscribe => b"SUBSCRIBE",
                PubSubCommand::Unsubscribe => b"UNSUBSCRIBE",
            };
            encode_command(&mut out, &[name, &channel]);
        }
        // With nothing to send, still any TLS record the session queued while reading (rare:
        // a warning alert; it goes out here rather than wait for a subscription).
        if !out.is_empty() || stream.wants_write() {
            if let Err(e) = stream.write_all(&out).await {
                return e;
            }
            out.clear();
        }
        tokio::select! {
            // Cancel safe (`Stream::read_buf`): a wake-up or the shutdown loses no bytes.
            read = stream.read_buf(&mut read_buf) => match read {
                Ok(0) => return Error::new(ErrorKind::Eof),
                Ok(_) => loop {
                    match decoder.decode(&mut read_buf) {
                        Ok(Some(frame)) => {
                            if let Some(event) = parse_event(&frame) {
                                sink.event(event);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return e.into(),
                    }
                },
                Err(e) => return e,
            },
            _ = shared.wake.notified() => {}
            _ = shared.shutdown.notified() => return Error::new(ErrorKind::Closed),
        }
        if read_buf.is_empty() && read_buf.capacity() < SUBSCRIBER_READ_BUFFER {
            read_buf = BytesMut::with_capacity(SUBSCRIBER_READ_BUFFER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's bytes for one step of `tests/data/server-ops.json`. The library's unit
    /// tests do without a JSON parser (it is a dependency of the CLI only), and the file's
    /// layout is fixed: a step's `"reply"` follows its `"step"`, a JSON string whose characters
    /// are one byte each (Latin-1).
    fn fixture(server: &str, step: &str) -> Vec<u8> {
        let all = include_str!("../../tests/data/server-ops.json");
        let section = &all[all.find(&format!("\"{server}\": [")).expect("server")..];
        let at = section
            .find(&format!("\"step\": \"{step}\""))
            .unwrap_or_else(|| panic!("{server} has no step {step}"));
        let reply = &section[at..];
        let reply = &reply[reply.find("\"reply\": \"").unwrap() + 10..];
        let mut out = Vec::new();
        let mut chars = reply.chars();
        while let Some(c) = chars.next() {
            let c = match c {
                '"' => return out,
                '\\' => match chars.next().unwrap() {
                    'r' => '\r',
                    'n' => '\n',
                    't' => '\t',
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap()
                    }
                    other => other,
                },
                c => c,
            };
            out.push(c as u32 as u8);
        }
        panic!("unterminated reply");
    }

    fn decode(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let frame = Decoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "one frame");
        frame
    }

    #[test]
    fn the_servers_pubsub_pushes_parse_as_captured_on_redis_and_dragonfly() {
        for server in ["redis-7.0.15", "dragonfly-1.40.1"] {
            let channel = &b"dragonlock:released:r1"[..];
            let subscribed = decode(&fixture(server, "subscribe_resp3_b"));
            assert!(
                subscribed.is_push(),
                "{server}: a SUBSCRIBE is answered by a push"
            );
            assert_eq!(
                parse_event(&subscribed),
                Some(PubSubEvent::Subscribed(channel))
            );
            // A PUBLISH from another connection and one from inside a script arrive alike.
            for step in ["push_received_b", "push_received_b_2"] {
                assert_eq!(
                    parse_event(&decode(&fixture(server, step))),
                    Some(PubSubEvent::Message {
                        channel,
                        payload: b"tok1"
                    }),
                    "{server} {step}"
                );
            }
            assert_eq!(
                parse_event(&decode(&fixture(server, "unsubscribe_b"))),
                Some(PubSubEvent::Unsubscribed(channel))
            );
            // Ordinary replies on a subscribed RESP3 connection are not events.
            for step in [
                "ping_while_subscribed_resp3_b",
                "get_while_subscribed_resp3_b",
            ] {
                assert_eq!(parse_event(&decode(&fixture(server, step))), None);
            }
        }
    }

    #[test]
    fn resp2_arrays_parse_like_resp3_pushes_and_other_frames_are_not_events() {
        // RESP2 is not in the captures: the same three elements in an array, per the protocol.
        let message = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nt\r\n";
        assert_eq!(
            parse_event(&decode(message)),
            Some(PubSubEvent::Message {
                channel: b"ch",
                payload: b"t"
            })
        );
        let ack = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(
            parse_event(&decode(ack)),
            Some(PubSubEvent::Subscribed(b"ch"))
        );
        let refused = b"-NOPERM this user has no permissions to access one of the channels\r\n";
        assert_eq!(parse_event(&decode(refused)), Some(PubSubEvent::Refused));
        for other in [
            &b"+PONG\r\n"[..],
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
            b">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$2\r\nch\r\n$1\r\nt\r\n",
            b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nt\r\n",
        ] {
            assert_eq!(parse_event(&decode(other)), None);
        }
    }
}
