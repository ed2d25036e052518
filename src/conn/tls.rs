//! TLS for a connection (the `tls` feature): [`TlsConfig`], and a rustls client session driven
//! over the same readiness-based socket as plain TCP.
//!
//! Design (see `DESIGN.md`, "TLS"): the driver keeps its readiness loop and owns a
//! `rustls::ClientConnection` beside the `TcpStream`. Writing hands the queued plaintext to
//! rustls (`writer().write`), which encrypts it into records at once, then writes the records
//! with `write_tls` over `try_write`. Reading takes what the socket has with `read_tls` over
//! `try_read`, decrypts it with `process_new_packets`, and copies the plaintext into the read
//! buffer the decoder works on. There is no `AsyncRead`/`AsyncWrite` layer and no extra task.
//!
//! A TLS connection never lets a caller write to the socket itself (the idle fast path of
//! plain TCP): records carry sequence numbers and are encrypted in order by the one
//! `ClientConnection`, which the driver owns outside the state lock. Sharing it would put
//! encryption and decryption under that lock, on every caller's path.
//!
//! Without the feature, [`Session`] and the private config type are empty enums: the
//! connection code compiles the same, and every TLS branch is statically unreachable.

#[cfg(feature = "tls")]
pub(crate) use imp::{connect, Connector, Session};
#[cfg(feature = "tls")]
pub use imp::{TlsConfig, TlsRoots};

#[cfg(not(feature = "tls"))]
pub(crate) use off::{connect, Connector, Session, TlsConfig};

#[cfg(feature = "tls")]
mod imp {
    use std::io::{self, BufRead, Read, Write};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::BytesMut;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{AlertDescription, ClientConfig, ClientConnection, DigitallySignedStruct};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use crate::error::{Error, ErrorKind, TlsFailure};

    /// Which certificate authorities a TLS connection trusts, besides any
    /// [`ca_file`](TlsConfig::ca_file).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum TlsRoots {
        /// The operating system's store (`/etc/ssl/certs` and the like, read once per
        /// connection at its first connect). The default: it is what the host's
        /// administrators keep current, as `redis-cli --tls` and most clients do.
        Platform,
        /// Mozilla's root store compiled into the binary (`webpki-roots`): for containers
        /// without a CA bundle.
        Bundled,
        /// None: only the CAs of [`ca_file`](TlsConfig::ca_file) (a private CA, the usual
        /// case for a self-hosted Redis or Dragonfly).
        None,
    }

    /// How to speak TLS to a node: which CAs to trust, a client certificate for mutual TLS,
    /// and the name to check the server's certificate against.
    ///
    /// Set it with [`ConnectionConfig::tls`](crate::conn::ConnectionConfig::tls); a
    /// `rediss://` URL sets the default one. The server's name is the connection's host: sent
    /// as SNI when it is a DNS name, and matched against the certificate's DNS names, or
    /// against its IP addresses when the host is an IP address (no SNI is sent then).
    ///
    /// The files are read, and the platform's roots loaded, when the connection first connects
    /// (and again at a reconnect only if that failed): a missing or malformed file is a
    /// [`TlsFailure::Config`] error from [`Connection::ready`](crate::conn::Connection::ready).
    ///
    /// # Examples
    ///
    /// ```
    /// use dragonlock::conn::{ConnectionConfig, TlsConfig, TlsRoots};
    ///
    /// // A self-hosted node with a private CA, and mutual TLS.
    /// let tls = TlsConfig::new()
    ///     .roots(TlsRoots::None)
    ///     .ca_file("/etc/redis/tls/ca.crt")
    ///     .client_cert("/etc/app/tls/client.crt", "/etc/app/tls/client.key");
    /// let config = ConnectionConfig::new("redis-1.internal", 6380).tls(tls);
    /// assert!(config.is_tls());
    ///
    /// // A managed service with a public certificate: the URL is enough.
    /// let config = ConnectionConfig::from_url("rediss://default:secret@cache.example.com:6380")?;
    /// assert!(config.is_tls());
    /// # Ok::<(), dragonlock::Error>(())
    /// ```
    #[derive(Debug, Clone)]
    pub struct TlsConfig {
        roots: TlsRoots,
        ca_files: Vec<PathBuf>,
        client_cert: Option<(PathBuf, PathBuf)>,
        server_name: Option<String>,
        danger_accept_invalid_certs: bool,
        rustls: Option<Arc<ClientConfig>>,
    }

    impl Default for TlsConfig {
        fn default() -> TlsConfig {
            TlsConfig::new()
        }
    }

    impl TlsConfig {
        /// The platform's roots, no client certificate, the server's certificate verified.
        pub fn new() -> TlsConfig {
            TlsConfig {
                roots: TlsRoots::Platform,
                ca_files: Vec::new(),
                client_cert: None,
                server_name: None,
                danger_accept_invalid_certs: false,
                rustls: None,
            }
        }

        /// Which root store to start from (the default is [`TlsRoots::Platform`]).
        pub fn roots(mut self, roots: TlsRoots) -> Self {
            self.roots = roots;
            self
        }

        /// Also trusts every CA certificate in this PEM file (may be called several times).
        pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
            self.ca_files.push(path.into());
            self
        }

        /// Presents this certificate chain (PEM, leaf first) and private key (PEM: PKCS#8,
        /// PKCS#1 or SEC1) when the server asks for one: mutual TLS.
        pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
            self.client_cert = Some((cert.into(), key.into()));
            self
        }

        /// Checks the server's certificate against (and sends as SNI) this name instead of the
        /// connection's host: for a node reached by an address its certificate does not name
        /// (a tunnel, a port forward).
        pub fn server_name(mut self, name: impl Into<String>) -> Self {
            self.server_name = Some(name.into());
            self
        }

        /// **Dangerous**: accepts any server certificate, expired, self-signed or for another
        /// name; the connection is encrypted but not authenticated, so anyone on the path can
        /// impersonate the node (and so grant locks nobody holds). For tests and throwaway
        /// setups only. The handshake's signatures are still checked.
        pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
            self.danger_accept_invalid_certs = accept;
            self
        }

        /// Uses this rustls configuration as it is (the other options are ignored, except
        /// [`server_name`](TlsConfig::server_name)): for a custom certificate verifier,
        /// another crypto provider, or session resumption. Ties the caller to this crate's
        /// rustls version (0.23). Its session resumption is used as it is set there; the
        /// configurations this type builds turn it off, so that every reconnect does a full
        /// handshake.
        pub fn rustls(mut self, config: Arc<ClientConfig>) -> Self {
            self.rustls = Some(config);
            self
        }

        /// Whether [`danger_accept_invalid_certs`](TlsConfig::danger_accept_invalid_certs) is
        /// set.
        pub fn accepts_invalid_certs(&self) -> bool {
            self.danger_accept_invalid_certs
        }

        /// Builds the rustls configuration: reads the files and loads the roots.
        fn build(&self) -> Result<Arc<ClientConfig>, Error> {
            if let Some(c) = &self.rustls {
                return Ok(c.clone());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| config_error(format!("TLS versions: {e}")))?;
            let builder = if self.danger_accept_invalid_certs {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            } else {
                let mut roots = rustls::RootCertStore::empty();
                match self.roots {
                    TlsRoots::Platform => {
                        let found = rustls_native_certs::load_native_certs();
                        let (added, _) = roots.add_parsable_certificates(found.certs);
                        if added == 0 && self.ca_files.is_empty() {
                            let why = found
                                .errors
                                .first()
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default();
                            return Err(config_error(format!(
                                "no root certificate found on this system{why}; give a CA \
                                 file, or use the bundled roots"
                            )));
                        }
                    }
                    TlsRoots::Bundled => {
                        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    }
                    TlsRoots::None => {}
                }
                for path in &self.ca_files {
                    let mut n = 0;
                    for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem(path, e))? {
                        roots
                            .add(cert.map_err(|e| pem(path, e))?)
                            .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
                        n += 1;
                    }
                    if n == 0 {
                        return Err(config_error(format!(
                            "{}: no certificate in the file",
                            path.display()
                        )));
                    }
                }
                if roots.is_empty() {
                    return Err(config_error(
                        "no trusted CA: give a CA file, or use the platform or bundled roots"
                            .into(),
                    ));
                }
                builder.with_root_certificates(roots)
            };
            let config = match &self.client_cert {
                Some((cert, key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .map_err(|e| pem(cert, e))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| pem(cert, e))?;
                    if chain.is_empty() {
                        return Err(config_error(format!(
                            "{}: no certificate in the file",
                            cert.display()
                        )));
                    }
                    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| config_error(format!("client certificate: {e}")))?
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = config;
            // Every reconnect does a full handshake: a reconnect is rare (a node restarted, or
            // the network broke), and a resumed session would be one more state carried from a
            // connection that failed to the next.
            config.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(config))
        }

        /// The name asked for (SNI) on a connection to `host`.
        pub(crate) fn name_for<'a>(&'a self, host: &'a str) -> &'a str {
            self.server_name.as_deref().unwrap_or(host)
        }

        fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, Error> {
            let name = self.name_for(host);
            ServerName::try_from(name.to_string())
                .map_err(|_| config_error(format!("{name:?} is not a valid TLS server name")))
        }
    }

    fn config_error(detail: String) -> Error {
        Error::new(ErrorKind::Tls {
            failure: TlsFailure::Config,
            detail: detail.into(),
        })
    }

    fn pem(path: &Path, e: rustls::pki_types::pem::Error) -> Error {
        config_error(format!("{}: {e}", path.display()))
    }

    /// A rustls error as this crate's: the certificate failures told apart from the rest.
    fn tls_error(e: rustls::Error, handshaking: bool) -> Error {
        use rustls::Error as E;
        let certificate = match &e {
            E::InvalidCertificate(_) | E::NoCertificatesPresented => true,
            // The server refused our certificate, or wanted one we did not send.
            E::AlertReceived(a) => matches!(
                a,
                AlertDescription::BadCertificate
                    | AlertDescription::UnsupportedCertificate
                    | AlertDescription::CertificateRevoked
                    | AlertDescription::CertificateExpired
                    | AlertDescription::CertificateUnknown
                    | AlertDescription::UnknownCA
                    | AlertDescription::CertificateRequired
            ),
            _ => false,
        };
        let failure = if certificate {
            TlsFailure::Certificate
        } else if handshaking {
            TlsFailure::Handshake
        } else {
            TlsFailure::Record
        };
        Error::new(ErrorKind::Tls {
            failure,
            detail: e.to_string().into(),
        })
    }

    /// Accepts every certificate; still checks that the server holds the key it presented.
    #[derive(Debug)]
    struct AcceptAnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// The rustls configuration of one connection, built at its first connect and kept for
    /// every reconnect (loading the platform's roots reads a few hundred files).
    pub(crate) struct Connector {
        built: Option<Arc<ClientConfig>>,
    }

    impl Connector {
        pub(crate) fn new() -> Connector {
            Connector { built: None }
        }
    }

    /// A TLS session on a connected socket.
    pub(crate) struct Session {
        conn: ClientConnection,
    }

    /// `io::Read` and `io::Write` on a shared tokio socket, through its non-blocking `try_*`
    /// calls: `WouldBlock` clears tokio's readiness, as the plain path's own calls do.
    struct Sock<'a> {
        stream: &'a TcpStream,
        /// Bytes asked for and got by the last read, to tell a short read.
        asked: usize,
        got: usize,
    }

    impl<'a> Sock<'a> {
        fn new(stream: &'a TcpStream) -> Sock<'a> {
            Sock {
                stream,
                asked: 0,
                got: 0,
            }
        }
    }

    impl Read for Sock<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.asked = buf.len();
            self.got = self.stream.try_read(buf)?;
            Ok(self.got)
        }
    }

    impl Write for Sock<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.stream.try_write(buf)
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            self.stream.try_write_vectored(bufs)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Makes a client session and runs the TLS handshake on `stream` (bounded by the caller's
    /// handshake deadline).
    pub(crate) async fn connect(
        stream: &TcpStream,
        connector: &mut Connector,
        tls: &TlsConfig,
        host: &str,
    ) -> Result<Box<Session>, Error> {
        let config = match &connector.built {
            Some(c) => c.clone(),
            None => connector.built.insert(tls.build()?).clone(),
        };
        let name = tls.server_name_for(host)?;
        let conn = ClientConnection::new(config, name).map_err(|e| tls_error(e, true))?;
        let mut session = Box::new(Session { conn });
        while session.conn.is_handshaking() {
            session.flush(stream).await?;
            if !session.conn.is_handshaking() {
                break;
            }
            stream.readable().await?;
            match session.conn.read_tls(&mut Sock::new(stream)) {
                Ok(0) => {
                    return Err(Error::new(ErrorKind::Tls {
                        failure: TlsFailure::Handshake,
                        detail: "the server closed the connection during the TLS handshake \
                                 (is its port TLS?)"
                            .into(),
                    }))
                }
                Ok(_) => session.process(stream, true)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The client's last flight (its Finished, and its certificate for mutual TLS).
        session.flush(stream).await?;
        Ok(session)
    }

    impl Session {
        /// Decrypts what `read_tls` took. On an error, sends the alert rustls prepared (best
        /// effort: the connection is failing anyway).
        fn process(&mut self, stream: &TcpStream, handshaking: bool) -> Result<(), Error> {
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.conn.write_tls(&mut Sock::new(stream));
                return Err(tls_error(e, handshaking));
            }
            Ok(())
        }

        /// Writes every pending record, waiting for the socket as needed.
        async fn flush(&mut self, stream: &TcpStream) -> Result<(), Error> {
            while self.conn.wants_write() {
                stream.writable().await?;
                match self.conn.write_tls(&mut Sock::new(stream)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }

        /// Encrypts and sends all of `data` (the handshake's commands, a subscriber's), then any
        /// record still pending (rustls queues a few while reading, such as a warning alert; a
        /// key update's answer waits for the next data), so an empty `data` sends those alone.
        pub(crate) async fn write_all(
            &mut self,
            stream: &TcpStream,
            mut data: &[u8],
        ) -> Result<(), Error> {
            while !data.is_empty() {
                let n = self.conn.writer().write(data)?;
                data = &data[n..];
                self.flush(stream).await?;
            }
            self.flush(stream).await
        }

        /// Waits for plaintext and appends it to `buf`; `Ok(0)` at the end of the stream.
        pub(crate) async fn read_buf(
            &mut self,
            stream: &TcpStream,
            buf: &mut BytesMut,
        ) -> Result<usize, Error> {
            loop {
                match self.take_plaintext(buf, usize::MAX)? {
                    Some(0) => {}
                    Some(n) => return Ok(n),
                    None => return Ok(0),
                }
                stream.readable().await?;
                match self.conn.read_tls(&mut Sock::new(stream)) {
                    Ok(0) => {
                        // The server closed: what rustls still holds, then the end.
                        self.process(stream, false)?;
                        return Ok(self.take_plaintext(buf, usize::MAX)?.unwrap_or(0));
                    }
                    Ok(_) => self.process(stream, false)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }

        /// Copies decrypted bytes into `buf`, at most `room`: `Some(n)` with what was
        /// copied (0 when rustls holds none now), `None` once the server closed the session
        /// and everything was taken. Never grows `buf` past `room`.
        fn take_plaintext(
            &mut self,
            buf: &mut BytesMut,
            room: usize,
        ) -> Result<Option<usize>, Error> {
            let mut total = 0;
            let mut reader = self.conn.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => return Ok(if total > 0 { Some(total) } else { None }),
                    Ok(chunk) => {
                        let n = chunk.len().min(room - total);
                        buf.extend_from_slice(&chunk[..n]);
                        reader.consume(n);
                        total += n;
                        if total == room {
                            return Ok(Some(total));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(total)),
                    // A TCP close without close_notify: the end, as on plain TCP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Ok(if total > 0 { Some(total) } else { None })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }

        /// The driver's write side: hands `out[*written..]` to rustls, and writes the records
        /// as far as the socket takes them. Returns whether anything moved.
        pub(crate) fn poll_write(
            &mut self,
            stream: &TcpStream,
            out: &[u8],
            written: &mut usize,
            cx: &mut Context<'_>,
        ) -> Result<bool, Error> {
            let mut progressed = false;
            loop {
                if *written < out.len() {
                    // Encrypts at once; takes less only when rustls's outgoing buffer is full.
                    let n = self.conn.writer().write(&out[*written..])?;
                    *written += n;
                    progressed |= n > 0;
                }
                let mut flushed = false;
                while self.conn.wants_write() {
                    match stream.poll_write_ready(cx) {
                        Poll::Pending => return Ok(progressed),
                        Poll::Ready(Err(e)) => return Err(e.into()),
                        Poll::Ready(Ok(())) => {}
                    }
                    match self.conn.write_tls(&mut Sock::new(stream)) {
                        Ok(_) => {
                            flushed = true;
                            progressed = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                if *written == out.len() || !flushed {
                    return Ok(progressed);
                }
            }
        }

        /// Whether records are waiting to be written (an alert or a key update answered
        /// while reading).
        pub(crate) fn wants_write(&self) -> bool {
            self.conn.wants_write()
        }

        /// The driver's read side, one step: reads what the socket has, decrypts it, and
        /// appends the plaintext to `buf` (at most `room` bytes; the rest stays in rustls for
        /// the next step). `Poll::Ready(Ok(n))` with the bytes appended (maybe 0: a record
        /// that held no data), `Ok` of `None` at the end of the stream, `Pending` when the
        /// socket is empty.
        pub(crate) fn poll_read(
            &mut self,
            stream: &TcpStream,
            buf: &mut BytesMut,
            room: usize,
            cx: &mut Context<'_>,
        ) -> Poll<Result<Option<usize>, Error>> {
            // Plaintext left from an earlier step first.
            match self.take_plaintext(buf, room) {
                Ok(Some(0)) => {}
                other => return Poll::Ready(other),
            }
            loop {
                match stream.poll_read_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(Ok(())) => {}
                }
                let mut n = 0;
                let read = stream.try_io(Interest::READABLE, || {
                    let mut sock = Sock::new(stream);
                    n = self.conn.read_tls(&mut sock)?;
                    if n > 0 && sock.got < sock.asked {
                        // A short read took everything there was: clear the readiness now,
                        // as the plain path does, rather than pay a read that answers EAGAIN.
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(())
                });
                match (read, n) {
                    (_, 1..) => {
                        if let Err(e) = self.process(stream, false) {
                            return Poll::Ready(Err(e));
                        }
                        return Poll::Ready(
                            self.take_plaintext(buf, room).map(|n| Some(n.unwrap_or(0))),
                        );
                    }
                    (Ok(()), 0) => {
                        // EOF: anything rustls still holds, then the end.
                        if let Err(e) = self.process(stream, false) {
                            return Poll::Ready(Err(e));
                        }
                        return Poll::Ready(match self.take_plaintext(buf, room) {
                            Ok(Some(n)) if n > 0 => Ok(Some(n)),
                            Ok(_) => Ok(None),
                            Err(e) => Err(e),
                        });
                    }
                    (Err(e), 0) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    (Err(e), 0) => return Poll::Ready(Err(e.into())),
                }
            }
        }
    }
}

#[cfg(not(feature = "tls"))]
mod off {
    use std::task::{Context, Poll};

    use bytes::BytesMut;
    use tokio::net::TcpStream;

    use crate::error::Error;

    /// Without the `tls` feature no config can hold TLS settings.
    #[derive(Debug, Clone)]
    pub(crate) enum TlsConfig {}

    impl TlsConfig {
        pub(crate) fn name_for<'a>(&'a self, _host: &'a str) -> &'a str {
            match *self {}
        }
    }

    pub(crate) struct Connector;

    impl Connector {
        pub(crate) fn new() -> Connector {
            Connector
        }
    }

    /// Without the `tls` feature there is no session.
    pub(crate) enum Session {}

    pub(crate) async fn connect(
        _: &TcpStream,
        _: &mut Connector,
        tls: &TlsConfig,
        _: &str,
    ) -> Result<Box<Session>, Error> {
        match *tls {}
    }

    impl Session {
        pub(crate) async fn write_all(&mut self, _: &TcpStream, _: &[u8]) -> Result<(), Error> {
            match *self {}
        }

        pub(crate) async fn read_buf(
            &mut self,
            _: &TcpStream,
            _: &mut BytesMut,
        ) -> Result<usize, Error> {
            match *self {}
        }

        pub(crate) fn poll_write(
            &mut self,
            _: &TcpStream,
            _: &[u8],
            _: &mut usize,
            _: &mut Context<'_>,
        ) -> Result<bool, Error> {
            match *self {}
        }

        pub(crate) fn wants_write(&self) -> bool {
            match *self {}
        }

        pub(crate) fn poll_read(
            &mut self,
            _: &TcpStream,
            _: &mut BytesMut,
            _: usize,
            _: &mut Context<'_>,
        ) -> Poll<Result<Option<usize>, Error>> {
            match *self {}
        }
    }
}
