//! The `dragonlock` command: `bench`, `run` and `ping`.
//!
//! Exit codes: 0 success (for `run`, the command's own code is passed through); 2 bad input;
//! 69 unavailable (no quorum of nodes reachable, or for `ping` able to vote); 78 (`ping`) a
//! node is configured unsafely for locks; 75 busy (the lock stayed held by someone else
//! for the whole `--wait`); 77 lost (`run`: the lock was lost while the command ran, and the
//! command's process group was stopped).

mod cli {
    pub mod baseline;
    pub mod bench;
    pub mod bench_multi;
    pub mod bench_plot;
    pub mod bench_server;
    pub mod bench_sides;
    pub mod fuzz_server;
    pub mod ping;
    pub mod run;
    pub mod servers;
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dragonlock::conn::{ConnectionConfig, TlsConfig, TlsRoots};

/// Exit code: bad input.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: not enough nodes reachable for a quorum.
pub(crate) const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code: the lock was held by someone else until `--wait` ran out.
const EXIT_BUSY: u8 = 75;
/// Exit code: the lock was lost while the command ran.
const EXIT_LOST: u8 = 77;

#[derive(Parser)]
#[command(
    name = "dragonlock",
    version,
    about = "Redlock distributed locks on Dragonfly and Redis: benchmark, run under a lock, ping"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark lock throughput and latency (on 5 local servers it starts itself, or --nodes).
    // Boxed: the bench's flags make it far larger than the other commands' (clippy's
    // large_enum_variant); one allocation at start costs nothing.
    #[command(after_help = cli::bench::REFUSED_LEGEND)]
    Bench(Box<cli::bench::BenchArgs>),
    /// Run a command while holding a lock, renewing it, and pass its exit code through.
    ///
    /// The command runs in its own process group. SIGTERM, SIGINT and SIGHUP sent to
    /// dragonlock are forwarded to that group, and the lock is kept until the command exits;
    /// dragonlock then exits with the command's status (128 + signal if a signal killed it).
    /// Processes the command leaves in its group are stopped before the lock is released.
    /// SIGTSTP (Ctrl-Z) stops the group with dragonlock; SIGCONT resumes it only if the lock
    /// can still be kept, else the command is killed without running again (exit 77).
    ///
    /// If the lock is lost (a renewal fails, or none succeeded in time), the group gets
    /// SIGTERM, then SIGKILL after --grace; SIGKILL comes at the latest 50ms before the lock's
    /// validity ends, and dragonlock exits 77.
    ///
    /// If dragonlock itself is SIGKILLed, the kernel SIGKILLs the command's direct child, but
    /// not that child's own children: they may outlive the lock, which expires at its ttl.
    /// Use `exec` in shell commands so that the worker is the direct child. The command is not
    /// the terminal's foreground group: if it reads from the terminal, it is stopped (SIGTTIN).
    Run(cli::run::RunArgs),
    /// Check that the nodes are safe to lock on: reachability, round trip, server, role, eviction
    /// policy, persistence against the restart rule, uptime, DELEX, duplicates; a verdict line.
    Ping(cli::ping::PingArgs),
    /// Fuzz a server's protocol handling (127.0.0.0/8 only unless --allow-remote); saves a
    /// reproducer of each hang, crash or wrong answer.
    FuzzServer(cli::fuzz_server::FuzzServerArgs),
}

pub(crate) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("dragonlock: {message}");
    ExitCode::from(code)
}

/// The TLS options `bench`, `run` and `ping` share. They apply to the `rediss://` nodes.
#[derive(clap::Args, Default)]
pub(crate) struct TlsArgs {
    /// Trust only this CA (PEM file) for rediss:// nodes, instead of the system's roots (the
    /// usual case for a self-hosted node with a private CA).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM, with --tls-key) to rediss:// nodes: mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// DANGEROUS, for tests: accept any server certificate. The traffic is encrypted but the
    /// node is not authenticated: anyone on the path can pose as it and grant locks.
    #[arg(long)]
    tls_insecure: bool,
}

impl TlsArgs {
    fn any(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_insecure
    }

    fn apply(&self, config: ConnectionConfig) -> ConnectionConfig {
        if !config.is_tls() {
            return config;
        }
        let mut tls = TlsConfig::new().danger_accept_invalid_certs(self.tls_insecure);
        if let Some(ca) = &self.tls_ca {
            tls = tls.roots(TlsRoots::None).ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.client_cert(cert, key);
        }
        config.tls(tls)
    }
}

/// A node as given, its password shown as `***` (`redis://user:***@host:port/2`), for
/// messages and reports. Everything before the last `@` is the user information, so that a
/// malformed URL (a `/` in the password) shows no part of the password either.
pub(crate) fn redacted(node: &str) -> String {
    let node = node.trim();
    // With a scheme or without (`ConnectionConfig::from_url` reads `user:pass@host:port` too).
    let (scheme, rest) = match node.split_once("://") {
        Some((scheme, rest)) => (&node[..scheme.len() + 3], rest),
        None => ("", node),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) if !user.contains('/') => format!("{scheme}{user}:***@{host}"),
            // `redis://secret@host` is a password (see `ConnectionConfig::from_url`).
            _ => format!("{scheme}***@{host}"),
        },
        None => node.to_string(),
    }
}

pub(crate) fn node_configs(
    nodes: &[String],
    tls: &TlsArgs,
) -> Result<Vec<ConnectionConfig>, String> {
    let configs = nodes
        .iter()
        .map(|n| {
            ConnectionConfig::from_url(n.trim())
                .map(|c| tls.apply(c))
                .map_err(|e| format!("bad node {:?}: {e}", redacted(n)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A TLS option with no TLS node is a forgotten `rediss://`, not something to ignore.
    if tls.any() && !configs.iter().any(ConnectionConfig::is_tls) {
        return Err("TLS options were given, but no node is a rediss:// URL".into());
    }
    Ok(configs)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Bench(args) => cli::bench::run(*args).await,
            Command::Run(args) => cli::run::run(args).await,
            Command::Ping(args) => cli::ping::run(args).await,
            Command::FuzzServer(args) => cli::fuzz_server::run(args).await,
        }
    })
}
