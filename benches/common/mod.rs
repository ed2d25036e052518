//! Shared by the network benches: real servers (the test harness) and the plain-socket
//! baseline, whose one caller does its own I/O (the one-caller floor next to the single-loop
//! baseline in `src/cli/baseline.rs`, which the lock-cycle ratios are quoted against).

#![allow(dead_code)]

#[path = "../../tests/support/server.rs"]
pub mod server;

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The minimal baseline: a plain tokio socket per node, frames written by hand, replies (all
/// one-line: `+OK`, `_`, `$-1`, `:n`) counted by their CRLF. Nothing else: no pipelining
/// across callers, no slots, no reconnect.
pub struct BaselineNode {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Replies still owed by this node for earlier phases, then for the current one.
    owed_old: usize,
    owed_now: usize,
}

impl BaselineNode {
    pub async fn connect(addr: &str) -> BaselineNode {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        BaselineNode {
            stream,
            buf: Vec::with_capacity(4096),
            owed_old: 0,
            owed_now: 0,
        }
    }

    pub async fn send(&mut self, frame: &[u8]) {
        self.owed_old += self.owed_now;
        self.owed_now = 1;
        self.stream.write_all(frame).await.unwrap();
    }

    /// Reads what is there; returns true once the current phase's reply arrived.
    fn poll_reply(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        loop {
            while let Some(pos) = memchr::memchr(b'\n', &self.buf) {
                self.buf.drain(..=pos);
                if self.owed_old > 0 {
                    self.owed_old -= 1;
                } else if self.owed_now > 0 {
                    self.owed_now = 0;
                    return Poll::Ready(());
                }
            }
            if self.owed_now == 0 {
                return Poll::Ready(());
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.unwrap(),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => panic!("server closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Sends `frame` to every node at once and waits for `quorum` replies of this phase.
pub async fn baseline_round(nodes: &mut [BaselineNode], frames: &[Vec<u8>], quorum: usize) {
    for (n, f) in nodes.iter_mut().zip(frames) {
        n.send(f).await;
    }
    // A fixed array: the baseline allocates nothing per round either.
    let mut done = [false; 16];
    assert!(nodes.len() <= done.len());
    poll_fn(|cx| {
        let mut got = done.iter().filter(|d| **d).count();
        for (i, n) in nodes.iter_mut().enumerate() {
            if !done[i] && n.poll_reply(cx).is_ready() {
                done[i] = true;
                got += 1;
            }
        }
        if got >= quorum {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

pub fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    dragonlock::resp::encode_command(&mut b, args);
    b.to_vec()
}
