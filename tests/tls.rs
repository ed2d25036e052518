//! TLS against real `redis-server` processes serving `--tls-port`, with certificates made at
//! test time (`support::pki`): a good chain by IP address and by host name, an unknown CA, an
//! expired certificate, another host's certificate, mutual TLS required with and without a
//! client certificate, a reconnect, and the lock cycle end to end.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use dragonlock::conn::{Connection, ConnectionConfig, TlsConfig, TlsRoots};
use dragonlock::{RedlockOptions, TlsFailure};
use support::pki::Pki;
use support::proxy::{Direction, Fault, Proxy};
use support::server::{Server, ServerOptions, TlsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server serving TLS with the certificate `name` from `pki`.
fn tls_server(pki: &Pki, name: &str, auth_clients: bool) -> Server {
    let pair = pki.pair(name);
    Server::start_with(ServerOptions {
        tls: Some(TlsServer {
            cert: pair.cert,
            key: pair.key,
            ca: pki.ca(),
            auth_clients,
        }),
        ..ServerOptions::default()
    })
}

/// Trusting only `ca`.
fn trusting(ca: std::path::PathBuf) -> TlsConfig {
    TlsConfig::new().roots(TlsRoots::None).ca_file(ca)
}

fn config(server: &Server, tls: TlsConfig) -> ConnectionConfig {
    ConnectionConfig::from_url(&server.tls_url())
        .unwrap()
        .tls(tls)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
}

async fn connect_err(config: ConnectionConfig) -> dragonlock::Error {
    let conn = Connection::start(config);
    tokio::time::timeout(Duration::from_secs(10), conn.ready())
        .await
        .expect("the first attempt ends")
        .unwrap_err()
}

#[test]
fn rediss_urls_select_tls_and_redis_urls_do_not() {
    for url in ["rediss://h:6380", "dragonflys://u:p@h:6380/2"] {
        let c = ConnectionConfig::from_url(url).unwrap();
        assert!(c.is_tls(), "{url}");
        assert!(!c.tls_config().unwrap().accepts_invalid_certs());
    }
    for url in ["redis://h:6380", "dragonfly://h", "h:6380"] {
        assert!(!ConnectionConfig::from_url(url).unwrap().is_tls(), "{url}");
    }
    let c = ConnectionConfig::from_url("rediss://h:6380")
        .unwrap()
        .no_tls();
    assert!(!c.is_tls());
    assert!(ConnectionConfig::from_url("redisss://h")
        .unwrap_err()
        .is_config());
}

#[tokio::test]
async fn a_good_chain_connects_by_ip_address_and_by_host_name() {
    let pki = Pki::new();
    let server = tls_server(&pki, "server", false);
    // By IP: the certificate's IP address SAN is checked (and no SNI is sent).
    let conn = Connection::connect(config(&server, trusting(pki.ca())))
        .await
        .unwrap();
    conn.command(&["SET", "k", "over tls"]).await.unwrap();
    let v = conn.command(&["GET", "k"]).await.unwrap();
    assert_eq!(v.as_bytes(), Some(&b"over tls"[..]));
    // The handshake's commands ran over TLS too.
    assert!(!conn.server_info().unwrap().version.is_empty());
    // By name: SNI `localhost`, checked against the DNS SAN.
    let by_name =
        ConnectionConfig::new("localhost", server.tls_port.unwrap()).tls(trusting(pki.ca()));
    let conn = Connection::connect(by_name).await.unwrap();
    assert!(conn.command(&["PING"]).await.is_ok());
    // A pipeline larger than one TLS record (16 KiB), and a command and a reply larger than
    // the buffers.
    let value = "v".repeat(1000);
    let replies: Vec<_> = (0..20)
        .map(|i| {
            let key = format!("k{i}");
            conn.send(|b| dragonlock::resp::encode_command(b, &["SET", key.as_str(), &value]))
                .unwrap()
        })
        .collect();
    for r in replies {
        assert!(r.await.unwrap().is_ok());
    }
    let big = "x".repeat(100_000);
    conn.command(&["SET", "big", &big]).await.unwrap();
    let v = conn.command(&["GET", "big"]).await.unwrap();
    assert_eq!(v.as_bytes().map(<[u8]>::len), Some(big.len()));
}

/// Every certificate failure is typed `Tls` / `Certificate`, reported by `ready` and by
/// requests sent while the node is down, and not retried in a tight loop: with a 5 ms reconnect
/// backoff, the attempts over a while stay within one per `AUTH_FAILURE_BACKOFF` (counted by a
/// proxy, bounded by the time that actually passed, so a slow machine cannot fail it).
#[tokio::test]
async fn certificate_failures_are_typed_and_not_retried_in_a_tight_loop() {
    let pki = Pki::new();
    let good = tls_server(&pki, "server", false);
    let expired = tls_server(&pki, "expired", false);
    let wrong_name = tls_server(&pki, "wrong-name", false);
    let cases = [
        ("unknown CA", &good, trusting(pki.other_ca())),
        ("expired", &expired, trusting(pki.ca())),
        ("host-name mismatch", &wrong_name, trusting(pki.ca())),
    ];
    for (what, server, tls) in cases {
        // Through a proxy that counts the connections it accepts.
        let proxy = Proxy::to_port(server.tls_port.unwrap()).await;
        let config = ConnectionConfig::new("127.0.0.1", proxy.port)
            .tls(tls)
            .backoff(Duration::from_millis(5), Duration::from_millis(5));
        let started = std::time::Instant::now();
        let conn = Connection::start(config);
        let err = tokio::time::timeout(Duration::from_secs(10), conn.ready())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.is_tls(), "{what}: {err:?}");
        assert_eq!(
            err.tls_failure(),
            Some(TlsFailure::Certificate),
            "{what}: {err}"
        );
        assert!(
            !err.is_unavailable() && !err.maybe_executed(),
            "{what}: {err:?}"
        );
        // A request while down gets the certificate error, unsent.
        let refused = conn.command(&["PING"]).await.unwrap_err();
        assert!(
            refused.is_tls() && refused.is_not_sent(),
            "{what}: {refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(conn);
        let elapsed = started.elapsed();
        let attempts = proxy.stats.accepted.load(Ordering::SeqCst);
        let allowed = 1
            + (elapsed.as_secs_f64() / dragonlock::conn::AUTH_FAILURE_BACKOFF.as_secs_f64()).ceil()
                as u64;
        assert!(
            (1..=allowed).contains(&attempts),
            "{what}: {attempts} attempts in {elapsed:?}, at most {allowed} allowed"
        );
    }
}

#[tokio::test]
async fn accepting_invalid_certificates_connects_to_any_of_them() {
    let pki = Pki::new();
    for name in ["expired", "wrong-name"] {
        let server = tls_server(&pki, name, false);
        let tls = TlsConfig::new().danger_accept_invalid_certs(true);
        assert!(tls.accepts_invalid_certs());
        let conn = Connection::connect(config(&server, tls)).await.unwrap();
        assert!(conn.command(&["PING"]).await.is_ok(), "{name}");
    }
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let server = tls_server(&pki, "server", true);
    let err = connect_err(config(&server, trusting(pki.ca()))).await;
    assert!(err.is_tls(), "{err:?}");
    assert_eq!(err.tls_failure(), Some(TlsFailure::Certificate), "{err}");
    let client = pki.pair("client");
    let conn = Connection::connect(config(
        &server,
        trusting(pki.ca()).client_cert(client.cert, client.key),
    ))
    .await
    .unwrap();
    assert!(conn.command(&["PING"]).await.is_ok());
}

#[tokio::test]
async fn a_tls_client_on_a_plain_port_fails_its_handshake_and_unreadable_files_are_config_errors() {
    let pki = Pki::new();
    let server = tls_server(&pki, "server", false);
    // A server that answers a RESP error to anything, as a plain Redis port does to a line
    // (Redis itself waits for a newline a TLS hello may never contain: that is a handshake
    // timeout).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = sock.read(&mut buf).await;
        sock.write_all(b"-ERR unknown command\r\n").await.unwrap();
        // Held open: the client must fail on the bytes, not on a close.
        let _ = sock.read(&mut buf).await;
    });
    let plain_port = ConnectionConfig::new("127.0.0.1", port).tls(trusting(pki.ca()));
    let err = connect_err(plain_port).await;
    plain.abort();
    assert!(err.is_tls(), "{err:?}");
    assert_eq!(err.tls_failure(), Some(TlsFailure::Handshake), "{err}");

    let missing = config(&server, trusting(pki.dir().join("no-such-ca.crt")));
    let err = connect_err(missing).await;
    assert!(err.is_tls() && err.is_config(), "{err:?}");
    assert_eq!(err.tls_failure(), Some(TlsFailure::Config));
    assert!(err.to_string().contains("no-such-ca.crt"), "{err}");

    let not_pem = config(&server, trusting(pki.pair("client").key));
    let err = connect_err(not_pem).await;
    assert_eq!(err.tls_failure(), Some(TlsFailure::Config), "{err}");
}

/// A reconnect does the whole TLS handshake again: the server was restarted, so it has no
/// session to resume.
#[tokio::test]
async fn a_restarted_server_is_reconnected_over_tls() {
    let pki = Pki::new();
    let mut server = tls_server(&pki, "server", false);
    let conn = Connection::connect(config(&server, trusting(pki.ca())))
        .await
        .unwrap();
    assert!(conn.command(&["PING"]).await.is_ok());
    server.restart();
    assert!(
        support::eventually(Duration::from_secs(10), || conn.connects() >= 2).await,
        "no reconnect"
    );
    conn.wait_connected(Duration::from_secs(10)).await.unwrap();
    assert!(conn.command(&["PING"]).await.is_ok());
}

#[tokio::test]
async fn the_lock_cycle_runs_over_tls_on_three_nodes() {
    let pki = Pki::new();
    let servers: Vec<Server> = (0..3).map(|_| tls_server(&pki, "server", false)).collect();
    let configs = servers
        .iter()
        .map(|s| config(s, trusting(pki.ca())))
        .collect();
    let r = support::redlock_over_configs(configs, RedlockOptions::default()).await;
    for i in 0..50 {
        let key = format!("tls-lock-{}", i % 5);
        let lock = r.try_acquire(&key, Duration::from_secs(10)).await.unwrap();
        // Held on every node, under its token, once every node has run the `SET` (the
        // acquire returned at the quorum, with the third maybe still on its way).
        let ran = support::eventually(Duration::from_secs(10), || {
            r.nodes().iter().all(|n| n.in_flight() == 0)
        })
        .await;
        assert!(ran, "requests still in flight after 10 s");
        for s in &servers {
            assert_eq!(
                s.cmd(&["GET", &key]).as_bytes(),
                Some(lock.token().as_bytes()),
                "{key}"
            );
        }
        let busy = r
            .try_acquire(&key, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(busy.is_busy(), "{busy:?}");
        lock.release().await.unwrap();
    }
}

/// Release notifications over TLS: a waiter on three TLS nodes subscribes on each (its
/// subscriber connections speak TLS too) and is woken by the holder's release, not by its
/// retry delay, which is set past the test's bound, as in `tests/handoff.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_tls_nodes_is_woken_by_the_release() {
    use dragonlock::redlock::scripts::RELEASE_CHANNEL_PREFIX;
    use dragonlock::resp::Frame;
    const NEVER: Duration = Duration::from_secs(60);
    const BOUND: Duration = Duration::from_secs(20);

    let pki = Pki::new();
    let servers: Vec<Server> = (0..3).map(|_| tls_server(&pki, "server", false)).collect();
    let over = |options: RedlockOptions| {
        let configs = servers
            .iter()
            .map(|s| config(s, trusting(pki.ca())))
            .collect();
        support::redlock_over_configs(configs, options)
    };
    let holder_side = over(RedlockOptions::default()).await;
    let waiter_side = over(
        RedlockOptions::default()
            .retry_count(5)
            .retry_delay(NEVER, Duration::ZERO),
    )
    .await;
    // Longer than the waits below together, so the holder's lock cannot expire unpublished.
    let ttl = Duration::from_secs(120);
    let held = holder_side.try_acquire("hot", ttl).await.unwrap();

    let waiter = waiter_side.clone();
    let waiting = tokio::spawn(async move { waiter.acquire("hot", ttl).await });
    // Subscribed on every node (asked on the servers' plain ports).
    let channel = format!("{RELEASE_CHANNEL_PREFIX}hot");
    let numsub = |s: &Server| match s.cmd(&["PUBSUB", "NUMSUB", &channel]) {
        Frame::Array(items) => items[1].as_integer().unwrap(),
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    };
    let subscribed = support::eventually(BOUND, || servers.iter().all(|s| numsub(s) == 1)).await;
    assert!(subscribed, "the waiter did not subscribe over TLS");
    // Its first attempt, and the one its subscription's confirmation starts, have failed: from
    // here on only a wake-up gets it the lock before the bound.
    let attempts = |s: &Server| s.command_calls("set");
    let tried = support::eventually(BOUND, || servers.iter().all(|s| attempts(s) >= 3)).await;
    assert!(tried, "the waiter's attempts did not reach every node");

    held.release().await.unwrap();
    let lock = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the release woke the waiter")
        .unwrap()
        .expect("the waiter holds the lock");
    assert!(lock.is_valid());
    // The last waiter left: its `UNSUBSCRIBE` went out over TLS on every node (the write after
    // a wake-up ended a pending read).
    let left = support::eventually(BOUND, || servers.iter().all(|s| numsub(s) == 0)).await;
    assert!(left, "the subscription outlived its waiter");
    lock.release().await.unwrap();
}

fn dragonlock(args: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text)
}

/// `ping` on a transport mix-up says what it looks like: a plain client on a TLS port is cut
/// off, a TLS client on a plain port gets no answer; a port nothing listens on gets no hint.
#[test]
fn ping_hints_at_a_plain_and_tls_mix_up() {
    let pki = Pki::new();
    let server = tls_server(&pki, "server", false);
    let tls_port = format!("127.0.0.1:{}", server.tls_port.unwrap());
    let (code, out) = dragonlock(&["ping", "--nodes", &tls_port, "--timeout", "2s"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("use rediss://"), "{out}");

    let plain_port = format!("rediss://127.0.0.1:{}", server.port);
    let ca = pki.ca().to_string_lossy().into_owned();
    let (code, out) = dragonlock(&[
        "ping",
        "--nodes",
        &plain_port,
        "--tls-ca",
        &ca,
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("use redis://"), "{out}");

    let nothing = format!("127.0.0.1:{}", support::server::free_port());
    let (code, out) = dragonlock(&["ping", "--nodes", &nothing, "--timeout", "1s"]);
    assert_eq!(code, Some(69), "{out}");
    assert!(!out.contains("use redis"), "{out}");
}

/// `ping`, `run` and `bench` on three TLS nodes with a private CA; the certificate errors and
/// the options' misuse as they show on the command line.
#[test]
fn the_cli_speaks_tls_with_a_ca_a_client_certificate_or_insecurely() {
    let pki = Pki::new();
    let servers: Vec<Server> = (0..3).map(|_| tls_server(&pki, "server", false)).collect();
    let nodes = servers
        .iter()
        .map(Server::tls_url)
        .collect::<Vec<_>>()
        .join(",");
    let ca = pki.ca().to_string_lossy().into_owned();
    let client = pki.pair("client");
    let (cert, key) = (
        client.cert.to_string_lossy().into_owned(),
        client.key.to_string_lossy().into_owned(),
    );

    let (code, out) = dragonlock(&["ping", "--nodes", &nodes, "--tls-ca", &ca]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verdict: SAFE: 3 of 3 nodes can vote"),
        "{out}"
    );

    let (code, out) = dragonlock(&[
        "run",
        "--nodes",
        &nodes,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--resource",
        "job",
        "--ttl",
        "5s",
        "--",
        "true",
    ]);
    assert_eq!(code, Some(0), "{out}");

    let (code, out) = dragonlock(&[
        "bench",
        "--nodes",
        &nodes,
        "--tls-insecure",
        "--ops",
        "200",
        "--warmup",
        "0s",
        "--concurrency",
        "4",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let json = out[out.find('{').unwrap()..].to_string();
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        v["dragonlock"]["outcomes"]["granted"].as_u64().unwrap() > 0,
        "{out}"
    );
    // The JSON says the run was over TLS: its figures are not comparable with plain TCP's.
    assert_eq!(v["setup"]["tls"], true, "{out}");

    // Without the CA, the system's roots do not know the test CA: no node can vote.
    let (code, out) = dragonlock(&["ping", "--nodes", &nodes]);
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("certificate"), "{out}");

    // A TLS option with no rediss:// node, and a certificate without its key: usage errors.
    let plain = servers
        .iter()
        .map(Server::url)
        .collect::<Vec<_>>()
        .join(",");
    let (code, out) = dragonlock(&["ping", "--nodes", &plain, "--tls-ca", &ca]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("rediss://"), "{out}");
    let (code, out) = dragonlock(&["ping", "--nodes", &nodes, "--tls-cert", &cert]);
    assert_eq!(code, Some(2), "{out}");
}

/// The read side reassembles records that arrive a byte at a time, and a reset while requests
/// are in flight fails them as a lost connection (not a TLS error) and reconnects over TLS.
#[tokio::test]
async fn records_split_at_every_byte_are_read_and_a_reset_fails_what_is_in_flight() {
    let pki = Pki::new();
    let server = tls_server(&pki, "server", false);
    let proxy = Proxy::to_port(server.tls_port.unwrap()).await;
    let conn = Connection::connect(
        ConnectionConfig::new("127.0.0.1", proxy.port)
            .tls(trusting(pki.ca()))
            .backoff(Duration::from_millis(5), Duration::from_millis(50)),
    )
    .await
    .unwrap();
    conn.command(&["SET", "k", "split"]).await.unwrap();
    proxy.set(Fault::Trickle(Duration::from_micros(50)));
    let replies: Vec<_> = (0..3)
        .map(|_| {
            conn.send(|b| dragonlock::resp::encode_command(b, &["GET", "k"]))
                .unwrap()
        })
        .collect();
    for r in replies {
        assert_eq!(r.await.unwrap().as_bytes(), Some(&b"split"[..]));
    }
    proxy.set(Fault::BlackHole(Direction::ToClient));
    let pending = conn
        .send(|b| dragonlock::resp::encode_command(b, &["GET", "k"]))
        .unwrap();
    proxy.set(Fault::Reset);
    let err = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        !err.is_tls() && err.is_unavailable() && err.maybe_executed(),
        "{err:?}"
    );
    proxy.heal();
    conn.wait_connected(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        conn.command(&["GET", "k"]).await.unwrap().as_bytes(),
        Some(&b"split"[..])
    );
}
