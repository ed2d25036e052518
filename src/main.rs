//! The `dragonlock` command: `bench`, `run` and `ping`.
//!
//! Exit codes: 0 success (for `run`, the command's own code is passed through); 2 bad input;
//! 69 unavailable (no quorum of nodes reachable, or for `ping` able to vote); 78 (`ping`) a
//! node is configured unsafely for locks; 75 busy (the lock stayed held by someone else
//! for the whole `--wait`); 77 lost (`run`: the lock was lost while the command ran, and the
//! command was stopped).

mod cli {
    pub mod bench;
    pub mod fuzz_server;
    pub mod ping;
    pub mod servers;
}

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dragonlock::conn::ConnectionConfig;
use dragonlock::{LockErrorKind, Redlock, RedlockOptions};

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
    Bench(cli::bench::BenchArgs),
    /// Run a command while holding a lock, renewing it, and pass its exit code through.
    Run(RunArgs),
    /// Check that the nodes are safe to lock on: reachability, round trip, server, role, eviction
    /// policy, persistence against the restart rule, uptime, DELEX, duplicates; a verdict line.
    Ping(cli::ping::PingArgs),
    /// Fuzz a server's protocol handling (127.0.0.0/8 only unless --allow-remote); saves a
    /// reproducer of each hang, crash or wrong answer.
    FuzzServer(cli::fuzz_server::FuzzServerArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes: host:port or redis:// URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// The resource to lock.
    #[arg(long)]
    resource: String,
    /// Lock ttl; the lock is renewed every third of it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    ttl: Duration,
    /// How long to keep trying for the lock. 0s: one attempt.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait: Duration,
    /// After SIGTERM on a lost lock, how long before SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub(crate) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("dragonlock: {message}");
    ExitCode::from(code)
}

pub(crate) fn node_configs(nodes: &[String]) -> Result<Vec<ConnectionConfig>, String> {
    nodes
        .iter()
        .map(|n| ConnectionConfig::from_url(n.trim()).map_err(|e| format!("bad node {n:?}: {e}")))
        .collect()
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
            Command::Bench(args) => cli::bench::run(args).await,
            Command::Run(args) => run(args).await,
            Command::Ping(args) => cli::ping::run(args).await,
            Command::FuzzServer(args) => cli::fuzz_server::run(args).await,
        }
    })
}

async fn run(args: RunArgs) -> ExitCode {
    use tokio::process::Command as Child;
    let configs = match node_configs(&args.nodes) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let options = RedlockOptions::default()
        .acquire_timeout(args.wait)
        .retry_count(u32::MAX)
        .retry_delay(Duration::from_millis(50), Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(2));
    let redlock = Redlock::from_configs(configs, options).await;
    // No wait means one whole attempt (bounded by the lock's validity), not a zero time budget
    // that would cancel the attempt in flight and call a free lock busy.
    let acquired = if args.wait.is_zero() {
        redlock.try_acquire(&args.resource, args.ttl).await
    } else {
        redlock.acquire(&args.resource, args.ttl).await
    };
    let mut lock = match acquired {
        Ok(lock) => lock,
        Err(e) if e.is_invalid() => return fail(EXIT_USAGE, e),
        Err(e)
            if e.is_busy()
                || (e.is_cancelled()
                    && redlock.nodes().iter().filter(|n| n.is_connected()).count()
                        >= redlock.quorum()) =>
        {
            return fail(
                EXIT_BUSY,
                format!("{} is held by someone else", args.resource),
            )
        }
        Err(e) => return fail(EXIT_UNAVAILABLE, e),
    };
    let mut child = match Child::new(&args.command[0])
        .args(&args.command[1..])
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = lock.release_ref().await;
            return fail(127, format!("cannot run {:?}: {e}", args.command[0]));
        }
    };
    let renew_every = args.ttl / 3;
    let mut next = tokio::time::Instant::now() + renew_every;
    loop {
        tokio::select! {
            status = child.wait() => {
                let _ = lock.release_ref().await;
                let status = match status { Ok(s) => s, Err(e) => return fail(1, e) };
                use std::os::unix::process::ExitStatusExt;
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                return ExitCode::from(code as u8);
            }
            _ = tokio::time::sleep_until(next) => {
                if let Err(e) = lock.extend(args.ttl).await {
                    debug_assert!(e.kind() == LockErrorKind::Lost || e.kind() == LockErrorKind::ExtensionLimit);
                    return stop_child(&mut child, args.grace).await;
                }
                next = tokio::time::Instant::now() + renew_every;
            }
            _ = tokio::time::sleep_until(lock.valid_until()) => {
                return stop_child(&mut child, args.grace).await;
            }
        }
    }
}

async fn stop_child(child: &mut tokio::process::Child, grace: Duration) -> ExitCode {
    eprintln!("dragonlock: the lock was lost; stopping the command");
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    ExitCode::from(EXIT_LOST)
}
