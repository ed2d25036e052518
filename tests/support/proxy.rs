//! A TCP fault proxy: sits between the client and one node on 127.0.0.1 and injects network
//! faults on command, at run time, into live and new connections alike.
//!
//! Every accepted connection gets its own connection to the node and one task that pumps both
//! directions. Each chunk read is forwarded according to the fault in force when it is read,
//! and a held chunk (black hole, stall) waits for the fault to change. The control is a
//! `watch` channel, so any thread (the nemesis runs on its own) can change the fault.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to node: requests.
    ToServer,
    /// Node to client: replies.
    ToClient,
    Both,
}

impl Direction {
    fn covers(self, d: Direction) -> bool {
        self == Direction::Both || self == d
    }
}

/// The fault in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward everything at once.
    None,
    /// Hold each chunk for `fixed` plus a uniform random part of `jitter`, in order.
    Delay { fixed: Duration, jitter: Duration },
    /// Accept, but forward nothing in that direction until the fault changes. Held bytes are
    /// delivered afterwards, as TCP would after a partition heals.
    BlackHole(Direction),
    /// Reset (RST) every live connection, and every new one as soon as it is accepted.
    Reset,
    /// Forward the first half of the next reply chunk, then hold the rest until the fault
    /// changes: the client sees a frame cut in the middle.
    StallMidFrame,
    /// Forward replies one byte at a time, pausing between bytes.
    Trickle(Duration),
}

/// Counters, for the summary lines.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub resets: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    pub target: SocketAddr,
    control: watch::Sender<Fault>,
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free 127.0.0.1 port, forwarding to `target` (also on 127.0.0.0/8).
    pub async fn start(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the fault proxy only forwards to 127.0.0.0/8"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (control, watch_rx) = watch::channel(Fault::None);
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(accept_loop(listener, target, watch_rx, stats.clone()));
        Proxy {
            port,
            target,
            control,
            stats,
            task,
        }
    }

    /// A proxy in front of a node on `127.0.0.1:port`.
    pub async fn to_port(port: u16) -> Proxy {
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Puts `fault` in force (callable from any thread).
    pub fn set(&self, fault: Fault) {
        self.control.send_replace(fault);
    }

    /// Back to forwarding everything; held bytes go out.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    pub fn fault(&self) -> Fault {
        *self.control.borrow()
    }
}

/// `n` real servers, each behind its own fault proxy.
pub async fn proxied_cluster(n: usize) -> (Vec<super::server::Server>, Vec<Proxy>) {
    let servers = super::server::cluster(n);
    let mut proxies = Vec::with_capacity(n);
    for s in &servers {
        proxies.push(Proxy::to_port(s.port).await);
    }
    (servers, proxies)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Receiver<Fault>,
    stats: Arc<ProxyStats>,
) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Dropping a socket with linger 0 sends RST instead of FIN: how resets are made.
        let _ = client.set_zero_linger();
        if *control.borrow() == Fault::Reset {
            stats.resets.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let (control, stats) = (control.clone(), stats.clone());
        conns.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                // The node is down: the client sees the connection close.
                return;
            };
            let _ = server.set_zero_linger();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pump(cr, sw, Direction::ToServer, control.clone());
            let down = pump(sr, cw, Direction::ToClient, control);
            let reset = tokio::select! {
                r = up => r,
                r = down => r,
            };
            if reset {
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            // Both sockets drop here; with linger 0 a reset is a real RST.
        });
        // Reap finished connection tasks so the set does not grow over a long run.
        while conns.try_join_next().is_some() {}
    }
}

/// Forwards one direction until EOF, an error or a reset; true for a reset.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dir: Direction,
    mut control: watch::Receiver<Fault>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return false;
                }
                Ok(n) => n,
            },
            changed = control.changed() => {
                if changed.is_err() || *control.borrow_and_update() == Fault::Reset {
                    return true;
                }
                continue;
            }
        };
        match forward(&buf[..n], &mut to, dir, &mut control).await {
            Forwarded::Done => {}
            Forwarded::Reset => return true,
            Forwarded::Failed => return false,
        }
    }
}

enum Forwarded {
    Done,
    Reset,
    Failed,
}

async fn forward(
    mut data: &[u8],
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    dir: Direction,
    control: &mut watch::Receiver<Fault>,
) -> Forwarded {
    let mut stalled_once = false;
    while !data.is_empty() {
        let fault = *control.borrow_and_update();
        match fault {
            Fault::Reset => return Forwarded::Reset,
            Fault::BlackHole(d) if d.covers(dir) => {
                if control.changed().await.is_err() {
                    return Forwarded::Failed;
                }
                continue;
            }
            Fault::StallMidFrame if dir == Direction::ToClient && !stalled_once => {
                stalled_once = true;
                let half = data.len() / 2;
                if half > 0 {
                    if to.write_all(&data[..half]).await.is_err() {
                        return Forwarded::Failed;
                    }
                    data = &data[half..];
                }
                if control.changed().await.is_err() {
                    return Forwarded::Failed;
                }
                continue;
            }
            Fault::Trickle(pause) if dir == Direction::ToClient => {
                if to.write_all(&data[..1]).await.is_err() {
                    return Forwarded::Failed;
                }
                data = &data[1..];
                tokio::time::sleep(pause).await;
                continue;
            }
            Fault::Delay { fixed, jitter } => {
                let extra = if jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(rand::rng().random_range(0..=jitter.as_micros() as u64))
                };
                tokio::time::sleep(fixed + extra).await;
            }
            _ => {}
        }
        if to.write_all(data).await.is_err() {
            return Forwarded::Failed;
        }
        break;
    }
    Forwarded::Done
}
