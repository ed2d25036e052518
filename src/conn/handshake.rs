//! Connect and handshake, in one round trip where the server allows.
//!
//! RESP3 (the default) sends, in one write:
//! `HELLO 3 [AUTH user pass] [SETNAME name]`, `[SELECT db]`, `INFO server`,
//! `[COMMAND INFO DELEX]`, `SCRIPT LOAD` for each registered script.
//! If `HELLO` is refused as unknown (`NOPROTO` from Redis, `unknown command` from Dragonfly and
//! old servers), a second round trip does the RESP2 equivalent: `[AUTH]`, `[CLIENT SETNAME]`,
//! and the rest. Forced RESP2 starts there.
//!
//! Over TLS the same commands follow the TLS handshake on the encrypted stream, so the count of
//! round trips after it is the same: one (two with the RESP2 fallback).

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::{self, Connector, Session};
use super::{ConnectionConfig, Protocol, ServerInfo};
use crate::error::{Error, ErrorKind};
use crate::resp::{encode_command, Decoder, Frame, ServerError};

/// A connected socket, with its TLS session when the connection uses TLS.
pub(super) struct Stream {
    pub(super) tcp: TcpStream,
    pub(super) tls: Option<Box<Session>>,
}

impl Stream {
    /// Writes all of `data` (encrypted, over TLS), and any TLS record the session queued while
    /// reading (rare: a warning alert), even when `data` is empty.
    pub(super) async fn write_all(&mut self, data: &[u8]) -> Result<(), Error> {
        match &mut self.tls {
            Some(s) => s.write_all(&self.tcp, data).await,
            None => Ok(self.tcp.write_all(data).await?),
        }
    }

    /// Waits for bytes (decrypted, over TLS) and appends them to `buf`; `Ok(0)` at the end of
    /// the stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes read from the socket are either appended to `buf` before the future
    /// completes or kept by the TLS session for the next call.
    pub(super) async fn read_buf(&mut self, buf: &mut BytesMut) -> Result<usize, Error> {
        match &mut self.tls {
            Some(s) => s.read_buf(&self.tcp, buf).await,
            None => Ok(self.tcp.read_buf(buf).await?),
        }
    }

    /// Whether the TLS session holds records to send (never on plain TCP).
    pub(super) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|s| s.wants_write())
    }
}

/// Connects, handshakes (TLS first, when configured), and returns the stream with what the
/// server said. The handshake deadline covers the TLS handshake and the commands together.
pub(super) async fn establish(
    config: &ConnectionConfig,
    connector: &mut Connector,
) -> Result<(Stream, ServerInfo), Error> {
    let tcp = tokio::time::timeout(
        config.connect_timeout,
        TcpStream::connect((config.host.as_str(), config.port)),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::Timeout))??;
    tcp.set_nodelay(true)?;
    let mut stream = Stream { tcp, tls: None };
    let setup = async {
        if let Some(tls) = &config.tls {
            stream.tls = Some(tls::connect(&stream.tcp, connector, tls, &config.host).await?);
        }
        handshake(&mut stream, config).await
    };
    let mut info = tokio::time::timeout(config.handshake_timeout, setup)
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout))??;
    // Redlock tells duplicate nodes apart by it (the same server under two names).
    info.peer_addr = stream.tcp.peer_addr().ok();
    Ok((stream, info))
}

fn is_auth_error(e: &ServerError) -> bool {
    ["WRONGPASS", "NOAUTH", "NOPERM", "AUTH"]
        .iter()
        .any(|c| e.has_code(c))
        || (e.has_code("ERR") && memchr::memmem::find(e.message(), b"password").is_some())
}

fn auth_or_handshake(e: ServerError) -> Error {
    if is_auth_error(&e) {
        Error::new(ErrorKind::Auth(e))
    } else {
        Error::new(ErrorKind::Handshake(e))
    }
}

async fn handshake(stream: &mut Stream, config: &ConnectionConfig) -> Result<ServerInfo, Error> {
    let mut decoder = Decoder::new(config.decoder);
    let mut read_buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(1024);
    let mut info = ServerInfo::default();

    if config.protocol == Protocol::Resp3 {
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(pass) = &config.password {
            hello.extend([
                b"AUTH".as_slice(),
                config.username.as_deref().unwrap_or("default").as_bytes(),
                pass.as_bytes(),
            ]);
        }
        if let Some(name) = &config.client_name {
            hello.extend([b"SETNAME".as_slice(), name.as_bytes()]);
        }
        encode_command(&mut out, &hello);
        let setup = encode_setup(&mut out, config);
        let replies = round_trip(stream, &mut decoder, &mut read_buf, &mut out, 1 + setup).await?;
        match &replies[0] {
            Frame::Error(e) if e.has_code("NOPROTO") || e.is_unknown_command() => {
                // Fall through to RESP2.
            }
            Frame::Error(e) => return Err(auth_or_handshake(e.clone())),
            hello => {
                info.apply_hello(hello);
                apply_setup(&mut info, config, &replies[1..])?;
                return Ok(info);
            }
        }
    }

    // RESP2.
    let mut first = 0;
    if let Some(pass) = &config.password {
        match &config.username {
            Some(user) => encode_command(
                &mut out,
                &[b"AUTH".as_slice(), user.as_bytes(), pass.as_bytes()],
            ),
            None => encode_command(&mut out, &[b"AUTH".as_slice(), pass.as_bytes()]),
        }
        first += 1;
    }
    if let Some(name) = &config.client_name {
        encode_command(
            &mut out,
            &[b"CLIENT".as_slice(), b"SETNAME", name.as_bytes()],
        );
        first += 1;
    }
    let setup = encode_setup(&mut out, config);
    let replies = round_trip(stream, &mut decoder, &mut read_buf, &mut out, first + setup).await?;
    for reply in &replies[..first] {
        if let Frame::Error(e) = reply {
            return Err(auth_or_handshake(e.clone()));
        }
    }
    info.protocol = 2;
    apply_setup(&mut info, config, &replies[first..])?;
    Ok(info)
}

/// Writes the commands that follow authentication; returns how many.
fn encode_setup(out: &mut BytesMut, config: &ConnectionConfig) -> usize {
    let mut n = 0;
    if let Some(db) = config.db {
        encode_command(
            out,
            &[
                b"SELECT".as_slice(),
                itoa::Buffer::new().format(db).as_bytes(),
            ],
        );
        n += 1;
    }
    encode_command(out, &[b"INFO".as_slice(), b"server"]);
    n += 1;
    if config.probe_delex {
        encode_command(out, &[b"COMMAND".as_slice(), b"INFO", b"DELEX"]);
        n += 1;
    }
    for script in &config.scripts {
        encode_command(
            out,
            &[b"SCRIPT".as_slice(), b"LOAD", script.source().as_bytes()],
        );
        n += 1;
    }
    n
}

fn apply_setup(
    info: &mut ServerInfo,
    config: &ConnectionConfig,
    replies: &[Frame],
) -> Result<(), Error> {
    let mut replies = replies.iter();
    if config.db.is_some() {
        if let Some(Frame::Error(e)) = replies.next() {
            return Err(auth_or_handshake(e.clone()));
        }
    }
    match replies.next() {
        Some(Frame::Error(e)) => return Err(auth_or_handshake(e.clone())),
        Some(text) => info.apply_info(text.as_bytes().unwrap_or_default()),
        None => {}
    }
    if config.probe_delex {
        // An entry means the command exists; a null entry (or an error from an old server)
        // means it does not.
        info.has_delex = matches!(replies.next(), Some(Frame::Array(entries)) if matches!(entries.first(), Some(Frame::Array(_))));
    }
    info.scripts_loaded = replies.all(|r| r.as_bytes().is_some());
    Ok(())
}

/// Writes `out` and reads `n` replies (pushes skipped).
async fn round_trip(
    stream: &mut Stream,
    decoder: &mut Decoder,
    read_buf: &mut BytesMut,
    out: &mut BytesMut,
    n: usize,
) -> Result<Vec<Frame>, Error> {
    stream.write_all(out).await?;
    out.clear();
    let mut replies = Vec::with_capacity(n);
    while replies.len() < n {
        match decoder.decode(read_buf)? {
            Some(frame) if frame.is_push() => {}
            Some(frame) => replies.push(frame),
            None => {
                if stream.read_buf(read_buf).await? == 0 {
                    return Err(Error::new(ErrorKind::Eof));
                }
            }
        }
    }
    if !read_buf.is_empty() {
        return Err(Error::new(ErrorKind::UnsolicitedReply));
    }
    Ok(replies)
}
