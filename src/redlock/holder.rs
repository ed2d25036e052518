//! Who holds a resource: each node's token and remaining ttl, read in one round trip, and the
//! token a quorum agrees on. For operators and hand-overs; it takes and changes nothing.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::scripts::scripts;
use super::Redlock;
use crate::conn::{ReplyFuture, ScriptCall};
use crate::error::{Error, ErrorKind};
use crate::resp::Frame;

/// What one node said about a resource's lock key.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeHolder {
    /// The key holds `token`.
    Held {
        /// The key's value: the holder's token (lossy UTF-8 for a value this crate did not
        /// write).
        token: String,
        /// The key's remaining time to live on that node when it answered, on the node's
        /// clock; `None` for a key without expiry (not set by a lock client).
        ttl: Option<Duration>,
    },
    /// No key: nobody holds the resource on that node.
    Free,
    /// The node did not answer (down, or silent past the release timeout) or answered with
    /// an error.
    Failed(Error),
}

impl NodeHolder {
    /// The token, when the key is held.
    pub fn token(&self) -> Option<&str> {
        match self {
            NodeHolder::Held { token, .. } => Some(token),
            _ => None,
        }
    }
}

/// Each node's answer to [`Redlock::holder`], in node order, and the summary.
///
/// This is a snapshot, not a lock: the answers were true when each node gave them, and a
/// holder can release, expire or be replaced a moment later.
#[derive(Debug, Clone)]
pub struct Holders {
    nodes: Vec<NodeHolder>,
    quorum: usize,
}

impl Holders {
    /// Each node's answer, in the order the nodes were given.
    pub fn nodes(&self) -> &[NodeHolder] {
        &self.nodes
    }

    /// How many nodes answered that the key holds `token`.
    pub fn held_by(&self, token: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.token() == Some(token))
            .count()
    }

    /// The token that at least a quorum of nodes hold, if any: the holder a Redlock acquire
    /// would have granted the resource to. (Two tokens cannot both have a quorum.)
    pub fn quorum_token(&self) -> Option<&str> {
        self.nodes
            .iter()
            .filter_map(NodeHolder::token)
            .find(|t| self.held_by(t) >= self.quorum)
    }

    /// True when no node answered that the key is held (failed nodes are not known to be free:
    /// see [`nodes`](Holders::nodes)).
    pub fn none_held(&self) -> bool {
        !self
            .nodes
            .iter()
            .any(|n| matches!(n, NodeHolder::Held { .. }))
    }
}

impl Redlock {
    /// Which token holds `resource` on each node, and the key's remaining ttl there, with the
    /// token a quorum agrees on ([`Holders::quorum_token`]). One round trip: a small script
    /// per node (`GET` and `PTTL` of the one key it declares, atomically, so a token is never
    /// paired with the next holder's ttl). Waits at most the
    /// [release timeout](super::RedlockOptions::release_timeout) for the answers.
    ///
    /// For operators and hand-overs: it takes nothing and changes nothing. Compare a
    /// [`Lock::token`](super::Lock::token) with [`Holders::quorum_token`] to see whether the
    /// nodes still agree that it holds; but a lock's validity comes from its acquire or
    /// [`extend`](super::Lock::extend), never from this snapshot.
    ///
    /// # Errors
    ///
    /// None as a whole: a node that failed or stayed silent is
    /// [`NodeHolder::Failed`], and the others' answers still count.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the requests only read, and their replies are dropped when they arrive.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// use dragonlock::NodeHolder;
    /// let lock = redlock.try_acquire("invoice:17", std::time::Duration::from_secs(10)).await?;
    /// let holders = redlock.holder("invoice:17").await;
    /// assert_eq!(holders.quorum_token(), Some(lock.token()));
    /// for (i, node) in holders.nodes().iter().enumerate() {
    ///     match node {
    ///         NodeHolder::Held { token, ttl } => println!("node {i}: {token} for {ttl:?}"),
    ///         NodeHolder::Free => println!("node {i}: free"),
    ///         NodeHolder::Failed(e) => println!("node {i}: {e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holder(&self, resource: &str) -> Holders {
        let key = self.key(resource);
        let keys = [&key[..]];
        let no_args: [&[u8]; 0] = [];
        let script = &scripts().holder;
        let nodes = &self.inner.nodes;
        let deadline = Instant::now() + self.inner.options.release_timeout;
        let send = |i: usize, call| nodes[i].send(|buf| script.encode(buf, call, &keys, &no_args));
        let mut answers: SmallVec<[Option<NodeHolder>; 7]> = SmallVec::new();
        let mut pending: SmallVec<[Option<ReplyFuture<'_>>; 7]> = SmallVec::new();
        let mut retried: SmallVec<[bool; 7]> = SmallVec::from_elem(false, nodes.len());
        for i in 0..nodes.len() {
            match send(i, ScriptCall::BySha) {
                Ok(f) => {
                    pending.push(Some(f));
                    answers.push(None);
                }
                Err(e) => {
                    pending.push(None);
                    answers.push(Some(NodeHolder::Failed(e)));
                }
            }
        }
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        poll_fn(|cx| {
            for i in 0..pending.len() {
                let Some(f) = pending[i].as_mut() else {
                    continue;
                };
                let Poll::Ready(reply) = std::pin::Pin::new(f).poll(cx) else {
                    continue;
                };
                pending[i] = None;
                let answer = match reply {
                    // The script cache was lost (a restart, `SCRIPT FLUSH`): once with source.
                    Ok(Frame::Error(e)) if e.has_code("NOSCRIPT") && !retried[i] => {
                        retried[i] = true;
                        match send(i, ScriptCall::WithSource) {
                            Ok(mut f) => match std::pin::Pin::new(&mut f).poll(cx) {
                                Poll::Ready(r) => classify(r),
                                Poll::Pending => {
                                    pending[i] = Some(f);
                                    continue;
                                }
                            },
                            Err(e) => NodeHolder::Failed(e),
                        }
                    }
                    r => classify(r),
                };
                answers[i] = Some(answer);
            }
            if pending.iter().all(Option::is_none) || sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        let nodes = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| NodeHolder::Failed(Error::new(ErrorKind::Timeout))))
            .collect();
        Holders {
            nodes,
            quorum: self.inner.quorum,
        }
    }
}

/// One node's reply to the holder script.
fn classify(reply: Result<Frame, Error>) -> NodeHolder {
    let frame = match reply {
        Ok(f) => f,
        Err(e) => return NodeHolder::Failed(e),
    };
    match frame {
        Frame::Null => NodeHolder::Free,
        Frame::Array(parts) => match parts.as_slice() {
            [Frame::Bulk(value), Frame::Integer(pttl)] => NodeHolder::Held {
                token: String::from_utf8_lossy(value).into_owned(),
                ttl: u64::try_from(*pttl).ok().map(Duration::from_millis),
            },
            _ => NodeHolder::Failed(Error::new(ErrorKind::UnexpectedReply)),
        },
        Frame::Error(e) => NodeHolder::Failed(Error::new(ErrorKind::Server(e))),
        _ => NodeHolder::Failed(Error::new(ErrorKind::UnexpectedReply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn held(token: &str) -> NodeHolder {
        NodeHolder::Held {
            token: token.into(),
            ttl: Some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn the_quorum_token_needs_a_quorum() {
        let failed = || NodeHolder::Failed(Error::new(ErrorKind::Timeout));
        let h = Holders {
            nodes: vec![held("a"), held("b"), held("a"), NodeHolder::Free, failed()],
            quorum: 3,
        };
        assert_eq!(h.quorum_token(), None);
        assert_eq!(h.held_by("a"), 2);
        let h = Holders {
            nodes: vec![held("a"), failed(), held("a"), held("a"), held("b")],
            quorum: 3,
        };
        assert_eq!(h.quorum_token(), Some("a"));
        assert!(!h.none_held());
    }

    #[test]
    fn replies_become_answers() {
        let pair = |pttl| {
            Ok(Frame::Array(vec![
                Frame::Bulk(Bytes::from_static(b"tok")),
                Frame::Integer(pttl),
            ]))
        };
        assert_eq!(
            classify(pair(1500)),
            NodeHolder::Held {
                token: "tok".into(),
                ttl: Some(Duration::from_millis(1500))
            }
        );
        // A key without expiry: PTTL -1.
        assert_eq!(
            classify(pair(-1)),
            NodeHolder::Held {
                token: "tok".into(),
                ttl: None
            }
        );
        assert_eq!(classify(Ok(Frame::Null)), NodeHolder::Free);
        assert!(matches!(
            classify(Ok(Frame::Integer(3))),
            NodeHolder::Failed(_)
        ));
    }
}
