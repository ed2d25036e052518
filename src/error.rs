//! The connection-level error type.

use std::fmt;
use std::io;

use crate::resp::{DecodeError, ServerError, ServerErrorKind};

/// What went wrong talking to one node. Cheap to clone (every request in flight on a failed
/// connection gets a copy) and never boxed.
#[derive(Clone, PartialEq)]
pub struct Error {
    kind: ErrorKind,
}

/// The kinds of [`Error`], for matching. The `is_*` accessors on [`Error`] cover the common
/// questions.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A socket error (connect refused, reset, ...).
    Io(io::ErrorKind),
    /// The server closed the connection.
    Eof,
    /// The server sent bytes that are not RESP, or broke a decoder limit.
    Protocol(DecodeError),
    /// A reply arrived that no request was waiting for.
    UnsolicitedReply,
    /// The server rejected the credentials (`WRONGPASS`, `NOAUTH`, `NOPERM` at handshake).
    Auth(ServerError),
    /// The server answered the command with an error.
    Server(ServerError),
    /// The handshake failed for another reason (the server's error is kept).
    Handshake(ServerError),
    /// The node is not connected now (down, or reconnecting); the request was not sent.
    NotConnected,
    /// The connection failed while the request was in flight.
    ConnectionLost,
    /// The deadline passed before the reply came.
    Timeout,
    /// Too many requests are in flight on this connection; the request was not sent.
    Overloaded,
    /// The connection was closed by its owner.
    Closed,
    /// The task that drives the connection is gone: the tokio runtime that started it
    /// ([`Redlock::connect`](crate::Redlock::connect), [`Connection::start`](crate::conn::Connection::start))
    /// shut down, or the task panicked. Nothing is sent any more: make a new connection (or
    /// manager) on a runtime that keeps running.
    TaskGone,
    /// A connection URL or option is invalid.
    InvalidConfig(&'static str),
    /// The [token prefix](crate::RedlockOptions::token_prefix) is longer than
    /// [`MAX_TOKEN_PREFIX`](crate::MAX_TOKEN_PREFIX) bytes.
    TokenPrefixTooLong {
        /// The prefix's length, in bytes.
        len: usize,
    },
    /// Two configured nodes are one server (the same address spelled differently, or the same
    /// server process found behind two addresses at handshake): it would vote twice, and one
    /// crash would take two votes. `first` and `second` are the nodes' positions in the list
    /// given; `detail` names them and says how they were found to be one.
    DuplicateNode {
        /// The earlier node's position.
        first: usize,
        /// The later node's position.
        second: usize,
        /// The addresses and the evidence, for the message.
        detail: std::sync::Arc<str>,
    },
    /// Fewer nodes than a quorum were connected when the wait for them ran out
    /// ([`Redlock::wait_for_quorum`](crate::Redlock::wait_for_quorum)).
    QuorumNotConnected {
        /// Nodes connected when the wait ended.
        connected: usize,
        /// Nodes needed.
        quorum: usize,
    },
    /// A quorum was connected, but fewer than a quorum answered a `PING` before the wait ran
    /// out ([`Redlock::wait_for_quorum`](crate::Redlock::wait_for_quorum)): a stopped or
    /// overloaded server keeps its connection open.
    QuorumNotAnswering {
        /// Nodes that answered.
        answering: usize,
        /// Nodes needed.
        quorum: usize,
    },
    /// The reply has a shape the command never produces.
    UnexpectedReply,
    /// The node's server process started less than the Redlock restart delay ago: it may have
    /// lost lock keys in the restart, so it does not vote (see
    /// [`RedlockOptions::restart_delay`](crate::RedlockOptions::restart_delay)). Not sent.
    Restarted,
    /// TLS failed (the `tls` feature): a certificate was refused, the TLS handshake failed
    /// otherwise, a record could not be decrypted, or the TLS options could not be loaded.
    /// `failure` says which; `detail` is rustls's or the file's message.
    Tls {
        /// What failed.
        failure: TlsFailure,
        /// What rustls, or the file being read, said.
        detail: std::sync::Arc<str>,
    },
}

/// What part of TLS failed, in [`ErrorKind::Tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// A certificate was refused: the server's (unknown CA, expired, another name), or ours
    /// (the server wanted a client certificate, or did not accept the one sent). Retrying
    /// cannot help until the certificates change.
    Certificate,
    /// The TLS handshake failed for another reason (no common version or cipher, the port
    /// does not speak TLS).
    Handshake,
    /// After the handshake: a record could not be decrypted, or the server sent a fatal alert.
    /// Requests in flight may have run.
    Record,
    /// The TLS options could not be used: a CA, certificate or key file missing or malformed,
    /// no trusted CA at all, or a host that is not a valid TLS server name.
    Config,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Error {
        Error { kind }
    }

    /// The kind of error.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The server answered with an error reply.
    pub fn is_server(&self) -> bool {
        matches!(self.kind, ErrorKind::Server(_))
    }

    /// The server's error, when it sent one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match &self.kind {
            ErrorKind::Server(e) | ErrorKind::Auth(e) | ErrorKind::Handshake(e) => Some(e),
            _ => None,
        }
    }

    /// Credentials were rejected or are missing: at handshake, or a command answered `NOAUTH`,
    /// `WRONGPASS` or `NOPERM` (a password changed on a live server).
    pub fn is_auth(&self) -> bool {
        match &self.kind {
            ErrorKind::Auth(_) => true,
            ErrorKind::Server(e) => e.kind() == ServerErrorKind::Auth,
            _ => false,
        }
    }

    /// The peer broke the protocol (malformed or oversized frame, unsolicited reply).
    pub fn is_protocol(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Protocol(_) | ErrorKind::UnsolicitedReply
        )
    }

    /// The deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout)
    }

    /// The request could not be sent or answered because the node is down or the connection
    /// broke: an infrastructure failure, as opposed to an answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Io(_)
                | ErrorKind::Eof
                | ErrorKind::NotConnected
                | ErrorKind::ConnectionLost
                | ErrorKind::Timeout
                | ErrorKind::Overloaded
                | ErrorKind::Closed
                | ErrorKind::TaskGone
                | ErrorKind::Protocol(_)
                | ErrorKind::UnsolicitedReply
                | ErrorKind::Restarted
                | ErrorKind::QuorumNotConnected { .. }
                | ErrorKind::QuorumNotAnswering { .. }
                | ErrorKind::Tls {
                    failure: TlsFailure::Record,
                    ..
                }
        )
    }

    /// The configuration is wrong: an invalid URL or option, no node at all, one server listed
    /// twice ([`ErrorKind::DuplicateNode`]), or a token prefix too long
    /// ([`ErrorKind::TokenPrefixTooLong`]). Retrying cannot help.
    pub fn is_config(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::InvalidConfig(_)
                | ErrorKind::DuplicateNode { .. }
                | ErrorKind::TokenPrefixTooLong { .. }
                | ErrorKind::Tls {
                    failure: TlsFailure::Config,
                    ..
                }
        )
    }

    /// TLS failed: see [`ErrorKind::Tls`] and [`tls_failure`](Error::tls_failure). A
    /// certificate or handshake failure is not retried in a tight loop: the connection waits
    /// at least [`AUTH_FAILURE_BACKOFF`](crate::conn::AUTH_FAILURE_BACKOFF) between attempts.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dragonlock::conn::{Connection, ConnectionConfig};
    ///
    /// # async fn demo() -> Result<(), dragonlock::Error> {
    /// let config = ConnectionConfig::from_url("rediss://127.0.0.1:6380")?;
    /// match Connection::connect(config).await {
    ///     Ok(conn) => drop(conn),
    ///     Err(e) if e.is_tls() => eprintln!("check the node's certificate and our CA: {e}"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, ErrorKind::Tls { .. })
    }

    /// For a TLS error, which part failed.
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        match self.kind {
            ErrorKind::Tls { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// The connection cannot be made until something changes on one side (credentials,
    /// certificates, TLS options): the driver waits at least
    /// [`AUTH_FAILURE_BACKOFF`](crate::conn::AUTH_FAILURE_BACKOFF) before trying again, and
    /// requests to the node fail with this error rather than `NotConnected`.
    pub(crate) fn is_refusal(&self) -> bool {
        match &self.kind {
            ErrorKind::Auth(_) => true,
            ErrorKind::Tls { failure, .. } => *failure != TlsFailure::Record,
            _ => false,
        }
    }

    /// One server was configured as two nodes.
    pub fn is_duplicate_node(&self) -> bool {
        matches!(self.kind, ErrorKind::DuplicateNode { .. })
    }

    /// The node restarted too recently to vote in a Redlock acquire.
    pub fn is_restarted(&self) -> bool {
        matches!(self.kind, ErrorKind::Restarted)
    }

    /// The request might have run on the server although no answer came: it was written and
    /// then the connection failed or the deadline passed. A lock key may have been set.
    pub fn maybe_executed(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Io(_)
                | ErrorKind::Eof
                | ErrorKind::ConnectionLost
                | ErrorKind::Timeout
                | ErrorKind::Protocol(_)
                | ErrorKind::UnsolicitedReply
                | ErrorKind::Tls {
                    failure: TlsFailure::Record,
                    ..
                }
        )
    }

    /// The request was refused before it was sent (node down, its credentials or its TLS
    /// certificates rejected, too many in flight, or restarted too recently to vote).
    pub fn is_not_sent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotConnected
                | ErrorKind::Overloaded
                | ErrorKind::Closed
                | ErrorKind::TaskGone
                | ErrorKind::Restarted
                | ErrorKind::Auth(_)
        ) || (self.is_tls() && self.is_refusal())
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::new(ErrorKind::Eof),
            io::ErrorKind::TimedOut => Error::new(ErrorKind::Timeout),
            k => Error::new(ErrorKind::Io(k)),
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::new(ErrorKind::Protocol(e))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Io(k) => write!(f, "socket error: {k}"),
            ErrorKind::Eof => f.write_str("the server closed the connection"),
            ErrorKind::Protocol(e) => write!(f, "{e}"),
            ErrorKind::UnsolicitedReply => f.write_str("the server sent a reply nobody asked for"),
            ErrorKind::Auth(e) => write!(f, "authentication failed: {e}"),
            ErrorKind::Server(e) => write!(f, "server error: {e}"),
            ErrorKind::Handshake(e) => write!(f, "handshake failed: {e}"),
            ErrorKind::NotConnected => f.write_str("not connected"),
            ErrorKind::ConnectionLost => f.write_str("connection lost with the request in flight"),
            ErrorKind::Timeout => f.write_str("timed out"),
            ErrorKind::Overloaded => f.write_str("too many requests in flight"),
            ErrorKind::Closed => f.write_str("connection closed"),
            ErrorKind::TaskGone => f.write_str(
                "the connection's task is gone: the runtime that started it shut down (or the task \
                 panicked); make the connection or manager on a runtime that keeps running",
            ),
            ErrorKind::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            ErrorKind::TokenPrefixTooLong { len } => write!(
                f,
                "invalid configuration: the token prefix is {len} bytes, at most {} allowed",
                crate::MAX_TOKEN_PREFIX
            ),
            ErrorKind::DuplicateNode { detail, .. } => write!(
                f,
                "invalid configuration: {detail}; list each server once (a server listed twice \
                 votes twice, and one crash takes both votes)"
            ),
            ErrorKind::QuorumNotConnected { connected, quorum } => write!(
                f,
                "only {connected} nodes connected, {quorum} needed for a quorum"
            ),
            ErrorKind::QuorumNotAnswering { answering, quorum } => write!(
                f,
                "only {answering} nodes answered a PING in time, {quorum} needed for a quorum \
                 (connected is not answering: a stopped or overloaded server keeps its \
                 connection open)"
            ),
            ErrorKind::UnexpectedReply => f.write_str("unexpected reply"),
            ErrorKind::Restarted => {
                f.write_str("the node restarted too recently to vote (restart delay)")
            }
            ErrorKind::Tls { failure, detail } => {
                let what = match failure {
                    TlsFailure::Certificate => "TLS certificate refused",
                    TlsFailure::Handshake => "TLS handshake failed",
                    TlsFailure::Record => "TLS failed",
                    TlsFailure::Config => "invalid TLS configuration",
                };
                write!(f, "{what}: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {}
