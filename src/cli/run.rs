//! `dragonlock run`: a command under a lock, so that no process of the command runs without it.
//!
//! The command runs in a process group of its own, and every signal, stop and kill goes to the
//! whole group, so a shell's children are stopped with the shell.
//!
//! | state     | event                                   | action                                   |
//! |-----------|-----------------------------------------|------------------------------------------|
//! | acquiring | SIGTERM / SIGINT / SIGHUP               | give up, exit 128 + signal               |
//! | running   | SIGTERM / SIGINT / SIGHUP               | forward it to the group, keep running    |
//! | running   | SIGTSTP (Ctrl-Z)                        | SIGSTOP the group, then stop ourselves   |
//! | running   | SIGCONT                                 | resume the group if before the stop time |
//! | running   | renewal due (every ttl/3)               | extend, still watching everything else   |
//! | running   | the extend failed                       | stopping, SIGKILL by the old validity    |
//! | running   | `valid_until - grace - KILL_MARGIN`     | stopping (a renewal in flight is dropped)|
//! | running   | the group's leader exited               | finishing                                |
//! | stopping  | SIGTERM sent; group gone or grace over  | SIGKILL the group, release, exit 77      |
//! | finishing | processes left in the group             | SIGTERM, SIGKILL after the grace         |
//! | finishing | group empty                             | release, exit with the leader's status   |
//!
//! The grace always ends `KILL_MARGIN` before the lock's validity does: a stop that starts
//! because no renewal came in time starts at `valid_until - grace - KILL_MARGIN`, and a stop
//! that starts because an extend failed sends SIGKILL at
//! `min(now + grace, valid_until_before_the_extend - KILL_MARGIN)`. `--grace` is therefore
//! bounded by the renewal window (see [`grace_for`]).
//!
//! What this cannot cover: a SIGKILLed `dragonlock` runs no code. The kernel then kills the
//! command's direct child (`PR_SET_PDEATHSIG`), but not its children, and the lock expires at
//! its ttl while they may still run. Making the direct child a small supervisor of its own
//! would only move the problem one level down (it can be SIGKILLed too); the way to cover it is
//! a service manager that kills the whole cgroup (systemd's `KillMode=control-group`), or a
//! command that `exec`s its worker so that the direct child is the worker. SIGSTOP (which,
//! unlike SIGTSTP, cannot be caught) likewise stops the renewals and not the command.
//!
//! The command's group is not the terminal's foreground group, so a command that reads from the
//! terminal is stopped by SIGTTIN, as under GNU `timeout`, which runs its command in a group of
//! its own for the same reason. Handing the terminal to the command's group would let Ctrl-Z
//! stop the command and not us, the shell waiting on a job that never stops; `run` is meant for
//! unattended commands.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep_until, Instant};

use crate::{fail, node_configs, EXIT_BUSY, EXIT_LOST, EXIT_UNAVAILABLE, EXIT_USAGE};
use dragonlock::{Lock, LockErrorKind, Redlock, RedlockOptions};

/// Time kept between the SIGKILL of the command's group and the end of the lock's validity.
/// The validity already has the clock-drift allowance taken off; this covers the rest: our own
/// timer firing late on a loaded machine, and the kernel tearing the processes down.
pub(crate) const KILL_MARGIN: Duration = Duration::from_millis(50);

/// After SIGKILL, how long to wait for the group's processes to be gone before the lock is
/// released anyway. A SIGKILLed process runs no more user code, so this only tidies up (the
/// leader's status, zombies reaped); it is bounded for a process stuck in the kernel.
const KILL_SETTLE: Duration = Duration::from_secs(1);

/// How often to look whether processes left in the group after its leader exited are gone
/// (they are not our children, so nothing tells us).
const GROUP_POLL: Duration = Duration::from_millis(10);

#[derive(clap::Args)]
pub struct RunArgs {
    /// Nodes: host:port, redis:// or rediss:// (TLS) URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    tls: crate::TlsArgs,
    /// The resource to lock.
    #[arg(long)]
    resource: String,
    /// Lock ttl; the lock is renewed every third of it. If a renewal fails, or none succeeded
    /// by `validity - grace - 50ms`, the command is stopped (see --grace).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    ttl: Duration,
    /// How long to keep trying for the lock. 0s: one attempt.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wait: Duration,
    /// When the lock is lost: time between SIGTERM and SIGKILL to the command's process group.
    /// SIGKILL comes at the latest 50ms before the lock's validity ends, so --grace must be
    /// less than ttl/3 - 50ms (longer is rejected with exit 2). Default: ttl/5 (2s for a 10s
    /// ttl). Also what processes left in the group after the command exits get before SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Take a fencing token with the lock and export it to the command as
    /// DRAGONLOCK_FENCING_TOKEN: larger than the token of every earlier holder of the resource
    /// whose lock ended before this one began. Pass it with every write to the protected store,
    /// and have the store refuse a token lower than the highest it has seen. Needs
    /// --restart-delay of at least twice the ttl where the nodes restart without persistence.
    #[arg(long)]
    fenced: bool,
    /// The delayed-restart rule: a node whose server has been up for less does not vote.
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The grace to use for `ttl` and the `--grace` given, or the message for a combination that
/// cannot be honoured. The stop must start after the renewal that could have saved the lock was
/// tried: a renewal is due ttl/3 after the last one, the stop starts `grace + KILL_MARGIN`
/// before the validity (about a whole ttl after that renewal) ends, so `grace + KILL_MARGIN <
/// ttl/3` leaves the extend at least a third of the ttl (less the drift allowance) to answer.
/// The default, ttl/5, is well inside that for any ttl above 375 ms. A `--grace` too long is
/// refused, not clamped: a grace silently cut short would surprise a command that counts on it
/// to clean up.
pub(crate) fn grace_for(ttl: Duration, grace: Option<Duration>) -> Result<Duration, String> {
    let fmt = |d: Duration| {
        humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
    };
    let window = ttl / 3;
    let Some(limit) = window.checked_sub(KILL_MARGIN).filter(|l| !l.is_zero()) else {
        return Err(format!(
            "--ttl {} is too short for run: a third of it must exceed the {} kept between \
             SIGKILL and the end of the lock's validity",
            fmt(ttl),
            fmt(KILL_MARGIN)
        ));
    };
    let (chosen, what) = match grace {
        Some(g) => (g, format!("--grace {}", fmt(g))),
        None => (
            ttl / 5,
            format!("the default --grace (ttl/5 = {})", fmt(ttl / 5)),
        ),
    };
    if chosen >= limit {
        return Err(format!(
            "{what} is too long for --ttl {}: the command must be stopped inside the lock's \
             validity, so --grace must be less than ttl/3 - {} = {}; shorten --grace or \
             lengthen --ttl",
            fmt(ttl),
            fmt(KILL_MARGIN),
            fmt(limit)
        ));
    }
    Ok(chosen)
}

/// Exit code for a status: the code, or 128 + the signal that killed it.
fn exit_code(status: io::Result<ExitStatus>) -> u8 {
    match status {
        Ok(s) => s
            .code()
            .unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
            .clamp(0, 255) as u8,
        Err(e) => {
            eprintln!("dragonlock: cannot wait for the command: {e}");
            1
        }
    }
}

/// The signals `dragonlock` handles itself: SIGTERM, SIGINT and SIGHUP, forwarded to the
/// command's group instead of killing us; SIGTSTP and SIGCONT, for job control (see
/// [`Group::on_signal`]).
struct Forwarded {
    term: Signal,
    int: Signal,
    hup: Signal,
    tstp: Signal,
    cont: Signal,
}

impl Forwarded {
    fn install() -> io::Result<Forwarded> {
        Ok(Forwarded {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            tstp: signal(SignalKind::from_raw(libc::SIGTSTP))?,
            cont: signal(SignalKind::from_raw(libc::SIGCONT))?,
        })
    }

    /// The next signal received.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a signal is consumed only when this returns it.
    async fn recv(&mut self) -> libc::c_int {
        async fn next(s: &mut Signal) {
            if s.recv().await.is_none() {
                // The runtime is shutting down: no more signals will come.
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => libc::SIGTERM,
            _ = next(&mut self.int) => libc::SIGINT,
            _ = next(&mut self.hup) => libc::SIGHUP,
            _ = next(&mut self.tstp) => libc::SIGTSTP,
            _ = next(&mut self.cont) => libc::SIGCONT,
        }
    }
}

/// Stops this whole process, as SIGTSTP would have without our handler, until a SIGCONT.
fn stop_self() {
    // SAFETY: raise(3) with a constant signal touches no memory.
    unsafe { libc::raise(libc::SIGSTOP) };
}

/// The command: its process group, and the signals to forward to it.
struct Group {
    /// The group's leader, our direct child.
    child: tokio::process::Child,
    /// The process group id: the leader's pid.
    pgid: libc::pid_t,
    signals: Forwarded,
    /// The leader's exit code, once it has been reaped.
    exit: Option<u8>,
    /// Until when a SIGCONT may resume the group: the time the stop would start (see
    /// [`Group::on_signal`]).
    resume_until: Instant,
}

impl Group {
    /// Spawns `command` as the leader of a new process group, set to be SIGKILLed by the kernel
    /// if this process dies.
    fn spawn(command: &[String], fence: Option<u64>, signals: Forwarded) -> io::Result<Group> {
        // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
        // process. This runs in the future that `main` drives with `block_on` on the main
        // thread, which lives until the process exits; spawning from a runtime worker would
        // also work today (the workers live as long as the runtime), but not from a blocking
        // thread, which exits when idle. Keep the spawn out of `tokio::spawn`/`spawn_blocking`.
        debug_assert_eq!(std::thread::current().name(), Some("main"));
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..]).process_group(0).kill_on_drop(true);
        if let Some(token) = fence {
            cmd.env("DRAGONLOCK_FENCING_TOKEN", token.to_string());
        }
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // calls are allowed: prctl(2) and getppid(2) are, and the error values are built
        // without allocating. It captures only a pid_t.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // If the parent died between fork and prctl, the death signal will never come:
                // the child was re-parented already. Do not run the command then.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        // `spawn` returns after the child has exec'd (std waits on a close-on-exec pipe), so
        // the group exists by then and no signal to it can be lost.
        let child = cmd.spawn()?;
        let pgid = child.id().expect("a child just spawned has a pid") as libc::pid_t;
        Ok(Group {
            child,
            pgid,
            signals,
            exit: None,
            resume_until: Instant::now(),
        })
    }

    /// Sends `sig` to every process of the group.
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: killpg(2) touches no memory. The group id stays ours while any process of
        // the group lives (the kernel does not reuse a pid that is a live group's id); once the
        // group is empty the call fails with ESRCH, which is the answer we want.
        unsafe { libc::killpg(self.pgid, sig) };
    }

    /// Acts on a signal we received.
    ///
    /// - SIGTERM, SIGINT, SIGHUP: forwarded to the group.
    /// - SIGTSTP (Ctrl-Z reaches our group only, the command is not in it): the group gets
    ///   SIGSTOP, which it cannot ignore, and then we stop ourselves; stopping only ourselves
    ///   would stop the renewals and leave the command running.
    /// - SIGCONT (`fg`, `bg`): the group resumes only if the lock can still be trusted (before
    ///   the time the stop would start). Otherwise it stays stopped, and the stop that follows
    ///   kills it without letting it run again.
    fn on_signal(&self, sig: libc::c_int) {
        match sig {
            libc::SIGTSTP => {
                self.signal(libc::SIGSTOP);
                stop_self();
            }
            libc::SIGCONT => {
                if Instant::now() < self.resume_until {
                    self.signal(libc::SIGCONT);
                }
            }
            sig => self.signal(sig),
        }
    }

    /// True while some process of the group still exists (a zombie counts until reaped).
    fn is_alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the group exists; no memory is touched.
        unsafe { libc::killpg(self.pgid, 0) == 0 }
    }

    /// Reaps the processes of the group that were re-parented to us (we are a subreaper) and
    /// have exited. Only once the leader was reaped: before that, this could take the leader's
    /// status from tokio.
    fn reap_strays(&self) {
        debug_assert!(self.exit.is_some());
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) writes the status into a local we own; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-self.pgid, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
        }
    }

    /// Waits for the leader to exit, forwarding the signals we receive to the group, and
    /// returns its exit code (the code, or 128 + the signal that killed it).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the status is kept once the leader is reaped, and a signal is forwarded as
    /// soon as it is taken.
    async fn leader_exit(&mut self) -> u8 {
        if let Some(code) = self.exit {
            return code;
        }
        loop {
            tokio::select! {
                status = self.child.wait() => {
                    let code = exit_code(status);
                    self.exit = Some(code);
                    return code;
                }
                sig = self.signals.recv() => self.on_signal(sig),
            }
        }
    }

    /// Waits until every process of the group is gone, or `deadline`; true if they are gone.
    async fn gone_by(&mut self, deadline: Instant) -> bool {
        loop {
            if self.exit.is_none() {
                tokio::select! {
                    _ = self.leader_exit() => {}
                    _ = sleep_until(deadline) => return false,
                }
                continue;
            }
            self.reap_strays();
            if !self.is_alive() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                sig = self.signals.recv() => self.on_signal(sig),
                _ = sleep_until((now + GROUP_POLL).min(deadline)) => {}
            }
        }
    }

    /// SIGTERM to the group; SIGKILL at `kill_at` to whatever is left; then a bounded wait for
    /// the processes (the leader first) to be gone.
    async fn stop(&mut self, kill_at: Instant) {
        self.signal(libc::SIGTERM);
        if self.gone_by(kill_at).await {
            return;
        }
        self.signal(libc::SIGKILL);
        if !self.gone_by(Instant::now() + KILL_SETTLE).await {
            eprintln!(
                "dragonlock: the command's processes were SIGKILLed but are not all gone yet"
            );
        }
    }
}

/// Races `fut` against SIGTERM, SIGINT and SIGHUP: `Err(signal)` if one came first. SIGTSTP
/// stops us as it would without a handler.
async fn unless_signalled<T>(
    signals: &mut Forwarded,
    fut: impl Future<Output = T>,
) -> Result<T, libc::c_int> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            sig = signals.recv() => match sig {
                libc::SIGTSTP => stop_self(),
                libc::SIGCONT => {}
                sig => return Err(sig),
            },
        }
    }
}

/// Why the command stops.
enum Ending {
    /// The group's leader exited by itself.
    Exited,
    /// The lock is lost or about to be: stop the group, SIGKILL by `kill_at` at the latest.
    Lost { why: String, kill_at: Instant },
}

/// The SIGKILL deadline for a lock valid until `valid_until`.
fn kill_deadline(valid_until: Instant) -> Instant {
    valid_until
        .checked_sub(KILL_MARGIN)
        .unwrap_or_else(Instant::now)
}

pub async fn run(args: RunArgs) -> ExitCode {
    let grace = match grace_for(args.ttl, args.grace) {
        Ok(g) => g,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if args.fenced {
        match fence_restart_rule(args.ttl, args.restart_delay) {
            Ok(None) => {}
            Ok(Some(warning)) => eprintln!("dragonlock: warning: {warning}"),
            Err(e) => return fail(EXIT_USAGE, e),
        }
    }
    let configs = match node_configs(&args.nodes, &args.tls) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    // From here on SIGTERM/SIGINT/SIGHUP no longer kill us: they are forwarded to the command
    // (or end the acquisition), so the command never outlives us without the lock.
    let mut signals = match Forwarded::install() {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot handle signals: {e}")),
    };
    // Processes the command leaves behind when their parent dies are re-parented to us, so
    // that we can reap them and tell when the group is empty (an init that reaps nothing, as
    // in many containers, would otherwise leave them as zombies that still count as members).
    // SAFETY: prctl(2) with integer arguments only; it changes this process's own attributes.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    let mut options = RedlockOptions::default().fencing(args.fenced);
    if let Some(delay) = args.restart_delay {
        options = options.restart_delay(delay);
    }
    let options = options
        .acquire_timeout(args.wait)
        .retry_count(u32::MAX)
        .retry_delay(Duration::from_millis(50), Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(2));
    let acquired = unless_signalled(&mut signals, async {
        // An empty or repeated node list is a usage error.
        let redlock = Redlock::from_configs(configs, options).await?;
        // No wait means one whole attempt (bounded by the lock's validity), not a zero time
        // budget that would cancel the attempt in flight and call a free lock busy.
        Ok::<_, dragonlock::Error>(if args.wait.is_zero() {
            redlock.try_acquire(&args.resource, args.ttl).await
        } else {
            redlock.acquire(&args.resource, args.ttl).await
        })
    })
    .await;
    // A signal while acquiring: nothing runs yet. An attempt in flight is dropped; whatever
    // keys it set expire at the ttl.
    let acquired = match acquired {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return fail(EXIT_USAGE, e),
        Err(sig) => return ExitCode::from(128 + sig as u8),
    };
    let mut lock = match acquired {
        Ok(lock) => lock,
        Err(e) if e.is_invalid() => return fail(EXIT_USAGE, e),
        // Out of time: busy when the last attempt was refused by a quorum.
        Err(e) if e.is_busy() || e.last_attempt() == Some(LockErrorKind::Busy) => {
            return fail(
                EXIT_BUSY,
                format!("{} is held by someone else", args.resource),
            )
        }
        Err(e) => return fail(EXIT_UNAVAILABLE, e),
    };
    // A lock granted late (a slow quorum) may have too little validity left for the command
    // to start and be stopped in time: it is extended first, or the command does not start.
    // A signal meanwhile: nothing runs yet, as while acquiring.
    match unless_signalled(&mut signals, room_to_start(&mut lock, args.ttl, grace)).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            let _ = lock.release_ref().await;
            return fail(EXIT_UNAVAILABLE, why);
        }
        Err(sig) => {
            let _ = lock.release_ref().await;
            return ExitCode::from(128 + sig as u8);
        }
    }
    let mut group = match Group::spawn(&args.command, lock.fencing_token(), signals) {
        Ok(g) => g,
        Err(e) => {
            let _ = lock.release_ref().await;
            return fail(127, format!("cannot run {:?}: {e}", args.command[0]));
        }
    };
    let ending = hold(&mut lock, &mut group, args.ttl, grace).await;
    let code = match ending {
        Ending::Exited => {
            let code = group.leader_exit().await;
            group.reap_strays();
            if group.is_alive() {
                // Still under the lock: whatever the command left in its group is stopped
                // before the lock goes, inside the validity like any stop.
                eprintln!(
                    "dragonlock: the command exited but left processes in its group; \
                     stopping them"
                );
                let kill_at = (Instant::now() + grace).min(kill_deadline(lock.valid_until()));
                group.stop(kill_at).await;
            }
            code
        }
        Ending::Lost { why, kill_at } => {
            eprintln!(
                "dragonlock: {why}; stopping the command (SIGTERM to its process group, \
                 SIGKILL at the latest {} ms before the lock's validity ends)",
                KILL_MARGIN.as_millis()
            );
            group.stop((Instant::now() + grace).min(kill_at)).await;
            EXIT_LOST
        }
    };
    let _ = lock.release_ref().await;
    ExitCode::from(code)
}

/// Time the command must have, past its start, before its stop could begin: the spawn (the
/// fork and exec, which `Group::spawn` waits for) fits well inside it.
const START_ROOM: Duration = KILL_MARGIN;

/// Whether the command may start under `lock`: its stop begins `grace + KILL_MARGIN` before the
/// validity ends, and that must be at least `START_ROOM` away. An acquire is granted with any
/// validity above `min_validity`, so one whose quorum came late can leave less; it is then
/// extended once (to `ttl`), and the command starts only if that leaves enough. The error says
/// why not.
async fn room_to_start(lock: &mut Lock, ttl: Duration, grace: Duration) -> Result<(), String> {
    let needed = grace + KILL_MARGIN + START_ROOM;
    if lock.remaining() > needed {
        return Ok(());
    }
    let left = lock.remaining();
    match lock.extend(ttl).await {
        Ok(()) if lock.remaining() > needed => Ok(()),
        Ok(()) => Err(format!(
            "the lock was granted with {} ms of validity left and extended to only {} ms, \
             less than the {} ms the command needs to start and be stopped in time",
            left.as_millis(),
            lock.remaining().as_millis(),
            needed.as_millis()
        )),
        Err(e) => Err(format!(
            "the lock was granted with {} ms of validity left, less than the {} ms the \
             command needs to start and be stopped in time, and could not be extended: {e}",
            left.as_millis(),
            needed.as_millis()
        )),
    }
}

/// Keeps the lock while the group's leader runs: renews it every ttl/3, forwards signals, and
/// returns when the leader exits or the command must be stopped.
async fn hold(lock: &mut Lock, group: &mut Group, ttl: Duration, grace: Duration) -> Ending {
    let renew_every = ttl / 3;
    let mut next_renew = Instant::now() + renew_every;
    loop {
        let valid_until = lock.valid_until();
        // The latest time to start stopping so that the grace ends KILL_MARGIN before the
        // validity does.
        let stop_at = kill_deadline(valid_until)
            .checked_sub(grace)
            .unwrap_or_else(Instant::now);
        group.resume_until = stop_at;
        let too_late = Ending::Lost {
            why: "the lock could not be renewed in time".into(),
            kill_at: kill_deadline(valid_until),
        };
        tokio::select! {
            _ = group.leader_exit() => return Ending::Exited,
            _ = sleep_until(stop_at) => return too_late,
            _ = sleep_until(next_renew) => {}
        }
        // The extend runs against the stop deadline (and the leader's exit): a slow or
        // unanswered extend must not delay the stop. Dropping it is safe (`extend` is cancel
        // safe and leaves the local validity as it was).
        let renewed = tokio::select! {
            _ = group.leader_exit() => return Ending::Exited,
            _ = sleep_until(stop_at) => return too_late,
            r = lock.extend(ttl) => r,
        };
        match renewed {
            Ok(()) => next_renew = Instant::now() + renew_every,
            // The keys may still be held until the old validity (the nodes did not answer),
            // or be gone already (someone deleted or took them): either way the command stops
            // now, and is SIGKILLed by the old validity at the latest.
            Err(e) => {
                return Ending::Lost {
                    why: format!("the renewal failed: {e}"),
                    kill_at: kill_deadline(valid_until),
                }
            }
        }
    }
}

/// The fencing guarantee needs the restart rule at twice the ttl (see `redlock::fence`), on
/// every node whatever its persistence: a restarted node's counters are set aside as stale.
/// Too short a rule is refused; none at all is allowed with a warning, for nodes that are known
/// never to restart while a lock may be held.
pub(crate) fn fence_restart_rule(
    ttl: Duration,
    restart_delay: Option<Duration>,
) -> Result<Option<String>, String> {
    match restart_delay {
        Some(d) if d < ttl * 2 => Err(format!(
            "--fenced needs --restart-delay of at least twice --ttl ({:?}); {d:?} is shorter",
            ttl * 2
        )),
        Some(_) => Ok(None),
        None => Ok(Some(format!(
            "--fenced without --restart-delay: tokens can repeat if a node restarts and loses \
             its counters; pass --restart-delay {:?} or more",
            ttl * 2
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A lock with too little validity left for the command is extended before it starts,
    /// and the command does not start when that fails. The locks are left to run down to
    /// under what the command needs (a second left of 4, against 1.3 s needed: a second of
    /// slack for a late wake-up on a loaded machine) rather than taken from slow nodes; the
    /// last one's nodes are stopped before its extension.
    #[test]
    fn a_command_starts_only_with_room_to_be_stopped_in_time() {
        let (bin, flavor) = crate::cli::servers::find_binary().unwrap();
        let (mut servers, _) = crate::cli::servers::start(3, &bin, flavor, 1).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let nodes: Vec<String> = servers.iter().map(|s| s.addr()).collect();
            let configs = node_configs(&nodes, &Default::default()).unwrap();
            let options = RedlockOptions::default().retry_count(0);
            let redlock = Redlock::from_configs(configs, options).await.unwrap();
            let (ttl, grace) = (4_000 * MS, 1_200 * MS);
            let needed = grace + KILL_MARGIN + START_ROOM;
            let mut fresh = redlock.try_acquire("fresh", ttl).await.unwrap();
            assert_eq!(room_to_start(&mut fresh, ttl, grace).await, Ok(()));
            let mut late = redlock.try_acquire("late", ttl).await.unwrap();
            let mut lost = redlock.try_acquire("lost", ttl).await.unwrap();
            tokio::time::sleep_until(late.valid_until() - 1_000 * MS).await;
            assert!(late.remaining() < needed);
            assert_eq!(room_to_start(&mut late, ttl, grace).await, Ok(()));
            assert!(late.remaining() > needed, "extended before the start");
            for s in &mut servers[..2] {
                s.stop();
            }
            let refused = room_to_start(&mut lost, ttl, grace).await.unwrap_err();
            assert!(refused.contains("could not be extended"), "{refused}");
        });
    }

    #[test]
    fn fenced_runs_need_the_restart_rule_at_twice_the_ttl() {
        let ttl = 10_000 * MS;
        assert!(fence_restart_rule(ttl, Some(19_999 * MS)).is_err());
        assert_eq!(fence_restart_rule(ttl, Some(20_000 * MS)), Ok(None));
        assert!(fence_restart_rule(ttl, None).unwrap().is_some());
    }

    #[test]
    fn grace_must_end_inside_the_renewal_window() {
        // 10 s ttl: window 3.333 s, limit 3.283 s; default 2 s.
        let ttl = 10_000 * MS;
        assert_eq!(grace_for(ttl, None), Ok(2_000 * MS));
        assert_eq!(grace_for(ttl, Some(3_283 * MS)), Ok(3_283 * MS));
        assert!(grace_for(ttl, Some(3_284 * MS)).is_err());
        assert!(grace_for(ttl, Some(5_000 * MS)).is_err());
        assert_eq!(grace_for(ttl, Some(Duration::ZERO)), Ok(Duration::ZERO));
    }

    #[test]
    fn too_short_a_ttl_is_rejected_with_or_without_grace() {
        // ttl/3 must exceed the margin: 150 ms gives a zero limit.
        assert!(grace_for(150 * MS, Some(Duration::ZERO)).is_err());
        assert_eq!(
            grace_for(151 * MS, Some(Duration::ZERO)),
            Ok(Duration::ZERO)
        );
        // The default ttl/5 needs a ttl above 375 ms.
        assert!(grace_for(375 * MS, None).is_err());
        assert!(grace_for(400 * MS, None).is_ok());
        let e = grace_for(10_000 * MS, Some(5_000 * MS)).unwrap_err();
        assert!(e.contains("--grace 5s") && e.contains("--ttl 10s"), "{e}");
    }
}
