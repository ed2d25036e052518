//! A fake RESP server for tests: answers the handshake like Redis 7.0.15 (or Dragonfly when
//! asked), and hands every other command to the test's handler, which may misbehave on purpose.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use dragonlock::resp::{Decoder, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake does with one command.
pub enum Action {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// Send these bytes one at a time, pausing between them.
    Trickle(Vec<u8>, Duration),
    /// Send these bytes, then close the connection.
    ReplyThenClose(Vec<u8>),
    /// Send nothing.
    Silent,
}

pub type Handler = Arc<dyn Fn(&[Vec<u8>]) -> Action + Send + Sync>;

pub struct FakeServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a fake. `dragonfly` selects which server's handshake replies it gives.
    pub async fn start(dragonfly: bool, handler: Handler) -> FakeServer {
        FakeServer::start_with_uptime(dragonfly, 100, handler).await
    }

    /// A fake whose `INFO` reports `uptime_in_seconds:uptime`.
    pub async fn start_with_uptime(dragonfly: bool, uptime: u64, handler: Handler) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                // As real servers do: a reply written right after another (a release's
                // `PUBLISH` behind its `DELEX`) must not wait for the client's delayed ACK.
                let _ = sock.set_nodelay(true);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    let mut dec = Decoder::default();
                    loop {
                        let frame = loop {
                            match dec.decode(&mut buf) {
                                Ok(Some(f)) => break f,
                                Ok(None) => {}
                                Err(_) => return,
                            }
                            match sock.read_buf(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        };
                        let Frame::Array(items) = frame else { return };
                        let args: Vec<Vec<u8>> = items
                            .iter()
                            .map(|f| f.as_bytes().unwrap_or_default().to_vec())
                            .collect();
                        let action = handshake_reply(dragonfly, uptime, port, &args)
                            .unwrap_or_else(|| handler(&args));
                        let ok = match action {
                            Action::Reply(bytes) => sock.write_all(&bytes).await.is_ok(),
                            Action::Trickle(bytes, pause) => {
                                let mut ok = true;
                                for b in bytes {
                                    if sock.write_all(&[b]).await.is_err() {
                                        ok = false;
                                        break;
                                    }
                                    tokio::time::sleep(pause).await;
                                }
                                ok
                            }
                            Action::ReplyThenClose(bytes) => {
                                let _ = sock.write_all(&bytes).await;
                                false
                            }
                            Action::Silent => true,
                        };
                        if !ok {
                            return;
                        }
                    }
                });
            }
        });
        FakeServer {
            port,
            connections,
            task,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn upper(a: &[u8]) -> String {
    String::from_utf8_lossy(a).to_uppercase()
}

/// The handshake commands, answered with the exact bytes the real servers gave
/// (`tests/data/server-replies.json`).
fn handshake_reply(dragonfly: bool, uptime: u64, port: u16, args: &[Vec<u8>]) -> Option<Action> {
    let name = upper(args.first()?);
    let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
    let bytes: Vec<u8> = match (name.as_str(), sub.as_str()) {
        ("HELLO", "3") if dragonfly => super::fixtures::reply("dragonfly", "hello3"),
        ("HELLO", "3") => super::fixtures::reply("redis", "hello3"),
        ("INFO", _) => {
            let text = if dragonfly {
                format!("# Server\r\nredis_version:7.4.0\r\ndragonfly_version:df-v1.40.1\r\ntcp_port:{port}\r\nuptime_in_seconds:{uptime}\r\n")
            } else {
                // A run_id of its own per fake (per port), as distinct servers have.
                format!("# Server\r\nredis_version:7.0.15\r\nrun_id:fake{port:036}\r\ntcp_port:{port}\r\nuptime_in_seconds:{uptime}\r\n")
            };
            format!("${}\r\n{}\r\n", text.len(), text).into_bytes()
        }
        ("COMMAND", "INFO") if dragonfly => {
            super::fixtures::reply("dragonfly", "command_info_delex_resp3")
        }
        ("COMMAND", "INFO") => b"*1\r\n_\r\n".to_vec(),
        ("SCRIPT", "LOAD") => {
            let sha = sha1_hex(args.get(2)?);
            format!("$40\r\n{sha}\r\n").into_bytes()
        }
        _ => return None,
    };
    Some(Action::Reply(bytes))
}

pub fn sha1_hex(data: &[u8]) -> String {
    dragonlock::conn::Script::new(Box::leak(
        String::from_utf8_lossy(data).into_owned().into_boxed_str(),
    ))
    .sha()
    .to_string()
}
