//! A held lock, and the signal that tells the tasks working under it that it is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{LockError, LockErrorKind, NodeResults};
use super::quorum::{self, Decision, Vote};
use super::stats::Count;
use super::{Keys, Notice, Redlock, ReleaseWait, Token};
use crate::conn::{Connection, Fill, HandedMeta, OpId, OpRule, ReplyFuture, ScriptCall};
use crate::error::{Error, ErrorKind};
use crate::resp::Frame;

/// A held lock. It is also the guard: dropping it without [`release`](Lock::release) releases
/// it in the background (best effort); [`forget`](Lock::forget) leaves it to expire instead.
///
/// The lock is yours until [`valid_until`](Lock::valid_until), measured on this process's
/// monotonic clock with the drift allowance already taken off. Check [`is_valid`](Lock::is_valid)
/// before acting on the protected resource, and use the [`token`](Lock::token) as a fencing
/// value where the resource can check it. Tasks that work under the lock without owning it
/// can watch a [`signal`](Lock::signal).
pub struct Lock {
    redlock: Redlock,
    keys: Keys,
    token: Token,
    ttl: Duration,
    valid_until: Instant,
    extensions: u32,
    /// Released, lost or forgotten: nothing to do on drop.
    done: bool,
    /// Made on the first call to `signal`, so a lock nobody watches allocates nothing.
    signal: OnceLock<LockSignal>,
    /// The fencing tokens, one per key in `keys` order, for locks taken with fencing on
    /// (empty otherwise). Inline for one key: a fenced single-resource lock allocates nothing.
    fences: smallvec::SmallVec<[u64; 1]>,
    /// Rebuilt from a token ([`Redlock::lock_from_token`]) and not extended since: its
    /// validity is unknown, so it claims none, and `extend` is not refused for lack of it.
    unconfirmed: bool,
    /// Found lost while held (and counted so, once).
    lost: bool,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource())
            .field("token", &self.token())
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Lock {
    pub(crate) fn new(
        redlock: Redlock,
        keys: Keys,
        token: Token,
        ttl: Duration,
        valid_until: Instant,
    ) -> Lock {
        Lock {
            redlock,
            keys,
            token,
            ttl,
            valid_until,
            extensions: 0,
            done: false,
            signal: OnceLock::new(),
            fences: smallvec::SmallVec::new(),
            unconfirmed: false,
            lost: false,
        }
    }

    /// A lock rebuilt from a stored token: no validity (it ends now) until an `extend`
    /// succeeds. See [`Redlock::lock_from_token`].
    pub(crate) fn rebuilt(redlock: Redlock, keys: Keys, token: Token) -> Lock {
        let mut lock = Lock::new(redlock, keys, token, Duration::ZERO, Instant::now());
        lock.unconfirmed = true;
        lock
    }

    /// Sets the fencing tokens, one per key in the lock's key order.
    pub(crate) fn with_fences(mut self, tokens: smallvec::SmallVec<[u64; 1]>) -> Lock {
        debug_assert_eq!(tokens.len(), self.keys.all().len());
        self.fences = tokens;
        self
    }

    /// The fencing token, when the manager has [fencing](super::RedlockOptions::fencing) on and
    /// the lock covers one resource: larger than the token of every grant of this resource that
    /// ended before this one's acquire began. Hand it to the protected resource with every
    /// write, and have the resource refuse a token lower than the highest it has seen. `None`
    /// without fencing, and for a lock over several resources
    /// ([`acquire_many`](super::Redlock::acquire_many)): each of those has its own token, from
    /// [`fencing_token_of`](Lock::fencing_token_of) or [`fencing_tokens`](Lock::fencing_tokens).
    pub fn fencing_token(&self) -> Option<u64> {
        match self.fences[..] {
            [token] => Some(token),
            _ => None,
        }
    }

    /// The fencing token of one of the lock's resources, named as it was given to the acquire
    /// (without the manager's [key prefix](super::RedlockOptions::key_prefix)); `None` without
    /// fencing or for a resource the lock does not cover.
    ///
    /// Each resource of a multi-resource lock has its own counter and its own token, with the
    /// single-resource guarantee for each: if a grant of resource `r` (alone or in any set)
    /// ended before this lock's acquire began, its token for `r` is smaller. Hand each protected
    /// resource its own token.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// // With `RedlockOptions::default().fencing(true)`:
    /// let both = redlock
    ///     .acquire_many(&["account:1", "account:2"], std::time::Duration::from_secs(5))
    ///     .await?;
    /// let from = both.fencing_token_of("account:1");
    /// let to = both.fencing_token_of("account:2");
    /// # let _ = (from, to);
    /// both.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn fencing_token_of(&self, resource: &str) -> Option<u64> {
        let key = self.redlock.key(resource);
        let all = self.keys.all();
        // The resource as it was acquired, or the key as `resources` and `fencing_tokens` give
        // it (the manager's prefix included): both name the same lock.
        let i = all
            .iter()
            .position(|k| k[..] == key[..])
            .or_else(|| all.iter().position(|k| k[..] == *resource.as_bytes()))?;
        self.fences.get(i).copied()
    }

    /// Every resource's fencing token, as (key, token) in the order of
    /// [`resources`](Lock::resources) (keys with the manager's prefix, sorted); empty without
    /// fencing. [`fencing_token_of`](Lock::fencing_token_of) takes these keys as well as the
    /// resource names.
    pub fn fencing_tokens(&self) -> Vec<(&str, u64)> {
        self.keys
            .all()
            .iter()
            .zip(&self.fences)
            .map(|(k, &t)| (std::str::from_utf8(k).unwrap_or(""), t))
            .collect()
    }

    /// A signal for the tasks that work under this lock: it fires when the lock is lost (its
    /// validity runs out, or an [`extend`](Lock::extend) fails) and when it is released or
    /// dropped. It follows successful extensions. Clone it freely; it outlives the `Lock`.
    ///
    /// The first call allocates the signal; a lock whose signal is never asked for costs
    /// nothing extra.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// use std::time::Duration;
    /// let mut lock = redlock.try_acquire("ledger", Duration::from_secs(5)).await?;
    /// let signal = lock.signal();
    /// let worker = tokio::spawn(async move {
    ///     tokio::select! {
    ///         _ = signal.lost() => {} // lost or released: stop writing
    ///         _ = write_ledger() => {}
    ///     }
    /// });
    /// lock.extend(Duration::from_secs(5)).await?; // the worker's signal follows
    /// let _ = worker.await;
    /// lock.release().await?; // fires the signal if the worker still runs
    /// # Ok(()) }
    /// # async fn write_ledger() {}
    /// ```
    pub fn signal(&self) -> LockSignal {
        self.signal
            .get_or_init(|| {
                let signal = LockSignal::new(self.valid_until, self.fencing_token());
                if self.done {
                    signal.fire();
                }
                signal
            })
            .clone()
    }

    /// Counts the lock as lost, once per lock, and traces why.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn mark_lost(&mut self, why: &'static str) {
        if !self.lost {
            self.lost = true;
            self.redlock.count(Count::Lost);
            crate::trace::event!(WARN, resource = self.resource(), why, "lock lost");
        }
    }

    /// Tells the signal, if anyone asked for one, that the lock is no longer held.
    fn fire_signal(&self) {
        if let Some(signal) = self.signal.get() {
            signal.fire();
        }
    }

    /// The locked resource as it was given to the acquire (for a multi-resource lock, the first
    /// in sorted order), without the manager's
    /// [key prefix](super::RedlockOptions::key_prefix): what
    /// [`lock_from_token`](super::Redlock::lock_from_token), [`holder`](super::Redlock::holder)
    /// and the acquires take. The key on the servers is [`key`](Lock::key).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let prefixed = redlock.with_options(|o| o.key_prefix("app:"))?;
    /// let lock = prefixed.try_acquire("report", Duration::from_secs(10)).await?;
    /// assert_eq!(lock.resource(), "report");
    /// assert_eq!(lock.key(), "app:report");
    /// // Stored, and rebuilt elsewhere by the same name.
    /// let (resource, token) = (lock.resource().to_string(), lock.token().to_string());
    /// lock.forget();
    /// let mut again = prefixed.lock_from_token(&resource, &token)?;
    /// again.extend(Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub fn resource(&self) -> &str {
        self.name(&self.keys.all()[0])
    }

    /// Every locked resource as given to the acquire, in sorted order, without the key prefix
    /// (see [`resource`](Lock::resource)).
    pub fn resources(&self) -> Vec<&str> {
        self.keys.all().iter().map(|k| self.name(k)).collect()
    }

    /// The locked key on the servers, [key prefix](super::RedlockOptions::key_prefix)
    /// included (for a multi-resource lock, the first in sorted order).
    pub fn key(&self) -> &str {
        std::str::from_utf8(&self.keys.all()[0]).unwrap_or("")
    }

    /// Every locked key on the servers, key prefix included, in sorted order.
    pub fn keys(&self) -> Vec<&str> {
        self.keys
            .all()
            .iter()
            .map(|k| std::str::from_utf8(k).unwrap_or(""))
            .collect()
    }

    /// A key without the prefix of the manager the lock was taken through.
    fn name<'a>(&self, key: &'a [u8]) -> &'a str {
        let prefix = self.redlock.inner.options.key_prefix.len();
        std::str::from_utf8(key.get(prefix..).unwrap_or(key)).unwrap_or("")
    }

    /// The token, unique to this acquisition: the manager's
    /// [token prefix](super::RedlockOptions::token_prefix), if any, then 128 random bits as 32
    /// hex characters. What [`Redlock::lock_from_token`] takes back.
    pub fn token(&self) -> &str {
        // A prefix comes from a `String`, the rest is hex, so this never fails.
        std::str::from_utf8(&self.token).unwrap_or("")
    }

    /// The ttl the lock was taken (or last extended) with; zero for a lock rebuilt from a token
    /// and not extended since.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The instant the lock stops being valid.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Validity left now (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// True while the lock is valid.
    pub fn is_valid(&self) -> bool {
        !self.done && Instant::now() < self.valid_until
    }

    /// How many times the lock was extended.
    pub fn extensions(&self) -> u32 {
        self.extensions
    }

    /// Resolves when the lock's validity runs out (at once if it already has).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// let lock = redlock.try_acquire("batch", std::time::Duration::from_secs(5)).await?;
    /// tokio::select! {
    ///     _ = do_the_work() => {}
    ///     _ = lock.expired() => eprintln!("ran past the lock's validity: stop touching the data"),
    /// }
    /// lock.release().await?;
    /// # Ok(()) }
    /// # async fn do_the_work() {}
    /// ```
    pub async fn expired(&self) {
        tokio::time::sleep_until(self.valid_until).await
    }

    /// Releases the lock on every node (compare-and-delete, pipelined) and returns how many
    /// nodes confirmed that they deleted the key with this lock's token when it returned. By
    /// default it returns once a quorum has ([`ReleaseWait::Quorum`]: the count is then at least
    /// the quorum, not necessarily every node that will release; the others still get the
    /// request); with [`ReleaseWait::All`] it waits for every answer and the count is exact.
    /// Either way it waits at most the release timeout.
    ///
    /// A release confirmed by fewer than a quorum is an error, in both modes: the caller must
    /// learn that its critical section may have outlived the lock (redsync returns
    /// `ErrLockAlreadyExpired`, node-redlock fails such a release too).
    ///
    /// # Errors
    ///
    /// With each node's answer in [`LockError::nodes`]:
    /// - [`LockErrorKind::NotHeld`] when more nodes than the quorum can spare no longer had the
    ///   key with this token: the lock expired (or was taken over) before the release, and work
    ///   done under it may have overlapped another holder's.
    /// - `Unavailable` when more nodes than that failed or stayed silent until the release
    ///   timeout: whether the lock was still held is unknown; the keys run out at their ttl.
    /// - `NoQuorum` for a mix of the two.
    ///
    /// # Cancel safety
    ///
    /// The release requests are sent when the future is first polled (or handed to the task
    /// that drives the nodes, which sends them to every node whatever becomes of the future);
    /// dropping it afterwards only loses the count.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// let lock = redlock.try_acquire("job:7", std::time::Duration::from_secs(5)).await?;
    /// match lock.release().await {
    ///     Ok(released_on) => assert!(released_on >= redlock.quorum()),
    ///     Err(e) if e.is_not_held() => eprintln!("the work outlived the lock: {e}"),
    ///     Err(e) => eprintln!("release not confirmed, the keys run out at the ttl: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    // An `async` block rather than an `async fn`: the `async fn` kept the lock twice in its
    // future (its argument, and the binding the body moves it into). Not through
    // `release_ref`: each layer of `async fn` moves the 400-byte result again.
    #[allow(clippy::manual_async_fn)]
    pub fn release(mut self) -> impl std::future::Future<Output = Result<usize, LockError>> {
        async move {
            if !self.begin_release() {
                return Ok(0);
            }
            let mut results = NodeResults::new();
            match self.release_now(&mut results).await {
                Ok(released) => Ok(released),
                Err(kind) => Err(self.error(kind, results)),
            }
        }
    }

    /// Releases, and can be called more than once: the first call does the release (and
    /// reports as [`release`](Lock::release) does, errors included); later calls release
    /// nothing and return `Ok(0)`, whatever the first returned. So does a call after
    /// [`forget`](Lock::forget). A count of 0 is never a successful release (that is at least
    /// the quorum), so it always means "nothing done by this call".
    ///
    /// # Errors
    ///
    /// As `release`, on the first call.
    ///
    /// # Cancel safety
    ///
    /// As `release`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// let mut lock = redlock.try_acquire("job:7", std::time::Duration::from_secs(5)).await?;
    /// lock.release_ref().await?;
    /// assert_eq!(lock.release_ref().await?, 0); // already released
    /// assert!(!lock.is_valid());
    /// # Ok(()) }
    /// ```
    pub async fn release_ref(&mut self) -> Result<usize, LockError> {
        if !self.begin_release() {
            return Ok(0);
        }
        let mut results = NodeResults::new();
        match self.release_now(&mut results).await {
            Ok(released) => Ok(released),
            Err(kind) => Err(self.error(kind, results)),
        }
    }

    /// Marks the lock released and fires its signal; false when it was done already.
    fn begin_release(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        self.fire_signal();
        true
    }

    /// The release's phase: the count of nodes that released, or why it failed, with each
    /// node's answer left in `results`. Returns a word rather than the
    /// 400-byte result, which each `async fn` layer moves again: the caller builds that, and
    /// only for a failure (measured: see `DESIGN.md`, *Results built where they are returned*).
    async fn release_now(&self, results: &mut NodeResults) -> Result<usize, LockErrorKind> {
        let redlock = &self.redlock;
        let nodes = &redlock.inner.nodes;
        let deadline = Instant::now() + redlock.inner.options.release_timeout;
        let mut notice = Notice::off();
        redlock.notice(
            &mut notice,
            &self.keys,
            &self.token,
            true,
            ScriptCall::BySha,
        );
        let all = redlock.inner.options.release_wait == ReleaseWait::All;
        let multi = self.keys.is_multi();
        let release =
            |node, call, op| redlock.send_release(node, &self.keys, &self.token, call, &notice, op);
        // The hot path: the compare-and-deletes as one op, decided by the driver.
        let rule = OpRule::Count {
            unknown_retries: !multi,
        };
        // The script's call prepared once (`notice`) is the same request on every node when no
        // node releases by `DELEX`: handed to the group's driver while it is busy.
        let op = if notice.everywhere && !notice.script.is_empty() {
            // Sent to every node even if this future is dropped or decided first: a release
            // deletes its key wherever it may be, as when its requests went out at once.
            // The script `notice.script` calls, for a node that answers `NOSCRIPT` late.
            let s = super::scripts::scripts();
            let script = if notice.channel.is_some() {
                &s.release_notify
            } else {
                &s.release
            };
            let meta = HandedMeta {
                sent_us: crate::conn::now_us(),
                outlive_caller: true,
                source: script.source(),
                ..HandedMeta::default()
            };
            redlock.open_op_handing(rule, all, deadline, meta, |h| {
                let fits = notice.script.len() <= h.request.inline_size();
                if fits {
                    h.request.extend_from_slice(&notice.script);
                }
                fits
            })
        } else {
            redlock
                .open_op(rule, all, deadline)
                .map(|(table, id)| (table, id, false))
        };
        let quorum = redlock.inner.quorum;
        // Each node's result (filled only for a failure's error).
        let granted = if let Some((table, id, handed)) = op {
            let send = |i: usize, again| {
                let op = Some((id, i as u8));
                if again {
                    // As the general path's resend below.
                    nodes[i].disable_delex();
                    release(&nodes[i], ScriptCall::WithSource, op).map(drop)
                } else {
                    release(&nodes[i], ScriptCall::BySha, op).map(drop)
                }
            };
            let failed = |_: &Decision, granted| granted < quorum;
            // A release's entry (handed or not) stays for the nodes still to answer, so that a
            // late `NOSCRIPT` gets the release again (see `OpTable::finish`).
            quorum::run_op(
                table,
                id,
                handed,
                nodes,
                send,
                results,
                failed,
                None::<Fill>,
            )
            .await
            .1
        } else {
            let granted;
            (granted, *results) = self.release_collect(deadline, all, &release).await;
            granted
        };
        if granted >= quorum {
            redlock.count(Count::ReleaseOk);
            return Ok(granted);
        }
        // A quorum no longer holds our token: the lock ran out (or was taken) before the
        // release; or too many failed or were silent to tell.
        let kind = match redlock.classify_failure(results, true) {
            LockErrorKind::Busy => LockErrorKind::NotHeld,
            kind => kind,
        };
        redlock.count(Count::ReleaseFailed(kind));
        Err(kind)
    }

    /// The release's phase on the general path (see `quorum.rs`): more nodes than an op
    /// counts, a full op table, or connections not started as one group.
    async fn release_collect<'a>(
        &'a self,
        deadline: Instant,
        all: bool,
        release: &impl Fn(
            &'a Connection,
            ScriptCall,
            Option<(OpId, u8)>,
        ) -> Result<Option<ReplyFuture<'a>>, Error>,
    ) -> (usize, NodeResults) {
        let redlock = &self.redlock;
        let nodes = &redlock.inner.nodes;
        let multi = self.keys.is_multi();
        let sent = |node, call| {
            release(node, call, None).map(|f| f.expect("sent without an op: a future"))
        };
        let (_, mut collector) = redlock
            .collect_sent(
                deadline,
                all,
                |node| sent(node, ScriptCall::BySha),
                |f| match f {
                    Frame::Integer(n) if *n >= 1 => Vote::Yes,
                    Frame::Integer(_) => Vote::No,
                    Frame::Error(e) if e.has_code("NOSCRIPT") => Vote::Retry,
                    // Only a single-key release may have gone out as DELEX.
                    Frame::Error(e) if !multi && e.is_unknown_command() => Vote::Retry,
                    Frame::Error(e) => Vote::Fail(Error::new(ErrorKind::Server(e.clone()))),
                    _ => Vote::Fail(Error::new(ErrorKind::UnexpectedReply)),
                },
                |i| {
                    // NOSCRIPT, or a DELEX the server did not know after all: once more with the
                    // script and its source. (Disabling DELEX is a no-op on a script node.)
                    let node = &nodes[i];
                    node.disable_delex();
                    sent(node, ScriptCall::WithSource)
                },
            )
            .await;
        (collector.granted(), std::mem::take(&mut collector.results))
    }

    /// Extends the lock to `ttl` from now on every node that still holds it with this token
    /// (compare-and-`PEXPIRE`: an expired key is never re-created). Succeeds only with a quorum
    /// inside the current validity; the new validity is computed as for an acquire.
    ///
    /// # Errors
    ///
    /// [`LockErrorKind::Lost`] when the lock already expired or no quorum extended it in time
    /// (the lock is then treated as lost: [`is_valid`](Lock::is_valid) turns false);
    /// `ExtensionLimit` past the configured number of extensions; `Invalid` for a ttl not
    /// larger than the drift allowance.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the lock as it was, or extended on some nodes, and the local
    /// validity on the safe side: an extension to a ttl shorter than the validity left
    /// shortens the keys on every node it reaches, so before it is sent the local validity is
    /// lowered to what that ttl leaves; a longer one changes the local validity only once a
    /// quorum confirmed it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// let mut lock = redlock.try_acquire("job:7", Duration::from_secs(5)).await?;
    /// match lock.extend(Duration::from_secs(5)).await {
    ///     Ok(()) => {}
    ///     // Stop working on the resource: the lock is no longer ours.
    ///     Err(e) if e.is_lost() => return Err(e),
    ///     // Not extended (the extension limit, say), but still held as before.
    ///     Err(e) => eprintln!("{e}; still held for {:?}", lock.remaining()),
    /// }
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        self.check_extend(ttl)?;
        // A rebuilt lock's current validity is unknown: only the new one bounds the wait.
        let current = (!self.unconfirmed).then_some(self.valid_until);
        // Read before the nodes are sent anything (their `PEXPIRE` starts later), so no
        // earlier than any key this extension shortens will live.
        let shortest = Redlock::valid_until(Instant::now(), ttl, self.redlock.drift(ttl));
        if shortest < self.valid_until {
            self.valid_until = shortest;
            if let Some(signal) = self.signal.get() {
                signal.shorten_to(shortest);
            }
        }
        let r = extend_on_nodes(&self.redlock, &self.keys, &self.token, current, ttl).await;
        self.apply_extension(ttl, r)
    }

    /// What `extend` checks before asking the nodes: the ttl, the extension limit, and that
    /// the lock is still held (firing the signal if it is not). A rebuilt lock not yet extended
    /// has no validity to check; the nodes decide.
    pub(crate) fn check_extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let redlock = &self.redlock;
        redlock.check_ttl(ttl)?;
        if let Some(max) = redlock.inner.options.max_extensions {
            if self.extensions >= max {
                return Err(self.error(LockErrorKind::ExtensionLimit, NodeResults::new()));
            }
        }
        if self.done || (!self.unconfirmed && Instant::now() >= self.valid_until) {
            if !self.done {
                self.mark_lost("its validity ran out before it was extended");
            }
            self.fire_signal();
            return Err(self.error(LockErrorKind::Lost, NodeResults::new()));
        }
        Ok(())
    }

    /// Takes the outcome of [`extend_on_nodes`] into the lock: the new validity, or, without a
    /// quorum, the lock is no longer trusted.
    pub(crate) fn apply_extension(
        &mut self,
        ttl: Duration,
        outcome: Result<Instant, LockError>,
    ) -> Result<(), LockError> {
        match outcome {
            Ok(new_valid_until) => {
                self.redlock.count(Count::ExtensionOk);
                self.unconfirmed = false;
                self.valid_until = new_valid_until;
                self.ttl = ttl;
                self.extensions += 1;
                if let Some(signal) = self.signal.get() {
                    signal.set_valid_until(new_valid_until);
                }
                Ok(())
            }
            Err(e) => {
                self.redlock.count(Count::ExtensionFailed);
                self.mark_lost("an extension was not confirmed by a quorum in time");
                // Without a quorum the lock can no longer be trusted: stop claiming it.
                self.valid_until = self.valid_until.min(Instant::now());
                self.fire_signal();
                Err(e)
            }
        }
    }

    /// Owned copies of what an extension needs (a reference count, a key copied inline, the
    /// token), so that [`Redlock::with_lock`] can keep one in flight beside the body while the
    /// lock itself stays free to be updated.
    pub(crate) fn renewal(&self) -> (Redlock, Keys, Token) {
        (self.redlock.clone(), self.keys.clone(), self.token)
    }

    /// A failed operation's error: `kind`, with each node's answer.
    #[cold]
    pub(crate) fn error(&self, kind: LockErrorKind, nodes: NodeResults) -> LockError {
        self.redlock.lock_error(kind, nodes, &self.keys)
    }

    /// Gives up the guard without releasing: the keys expire at their ttl, and the
    /// [`signal`](Lock::signal) fires then.
    pub fn forget(mut self) {
        self.done = true;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.done {
            self.fire_signal();
            self.redlock.count(Count::ReleasedOnDrop);
            self.redlock
                .release_in_background(&self.keys, &self.token, true, |_| true);
        }
    }
}

/// Extends `keys` (held with `token`, valid until `valid_until`, `None` when that is unknown) to
/// `ttl` from now on every node (compare-and-`PEXPIRE`), and returns the new validity. Succeeds
/// only with a quorum inside the current validity (and the new one); otherwise `Lost`, with
/// each node's answer. Changes nothing locally: the caller applies the outcome
/// ([`Lock::apply_extension`]).
///
/// Safe without a known current validity (a rebuilt lock): a node extends only a key that still
/// holds `token` when the script runs, and then keeps it until at least `start + ttl`, so no
/// other client can take that node before the new validity (`start + ttl - drift`) ends.
pub(crate) async fn extend_on_nodes(
    redlock: &Redlock,
    keys: &Keys,
    token: &Token,
    valid_until: Option<Instant>,
    ttl: Duration,
) -> Result<Instant, LockError> {
    let start = Instant::now();
    let nodes = &redlock.inner.nodes;
    let mut ms = itoa::Buffer::new();
    let ms = ms.format(ttl.as_millis() as u64).as_bytes();
    let new_valid_until = Redlock::valid_until(start, ttl, redlock.drift(ttl));
    // The extension must complete while the current lock still holds.
    let deadline = valid_until.map_or(new_valid_until, |v| v.min(new_valid_until));
    let (script, args) = (keys.extend_script(), [&token[..], ms]);
    // The hot path, as for the acquire's `SET`s and the release: one op the driver decides,
    // read by the same flag rule as the general path's `Vote::of_script_flag`. The script's
    // call is the same on every node: handed to the group's driver while it is busy. Not an
    // acquire (no reserve, no restart rule, as the caller's own sends below), and not sent
    // after the caller gave up: an extension nobody waits for changes nothing it needs.
    let sent_us = crate::conn::now_us();
    let meta = HandedMeta {
        sent_us,
        ..HandedMeta::default()
    };
    let op = redlock.open_op_handing(OpRule::Flag, false, deadline, meta, |h| {
        script
            .evalsha()
            .encode_inline(&mut h.request, keys.all(), &args)
    });
    let min_validity = redlock.inner.options.min_validity;
    let extended = move |d: &Decision| d.quorum_in_time(min_validity, new_valid_until);
    // Each node's result, read only by a failure's error.
    let mut results = NodeResults::new();
    let decision = if let Some((table, id, handed)) = op {
        let send = |i: usize, again| {
            // A resend (after `NOSCRIPT`) carries the source, on its own clock.
            let (call, sent_us) = if again {
                (ScriptCall::WithSource, crate::conn::now_us())
            } else {
                (ScriptCall::BySha, sent_us)
            };
            nodes[i].send_op((id, i as u8), false, None, sent_us, 0, |buf| {
                script.encode(buf, call, keys.all(), &args)
            })
        };
        let failed = |d: &Decision, _| !extended(d);
        quorum::run_op(
            table,
            id,
            handed,
            nodes,
            send,
            &mut results,
            failed,
            None::<Fill>,
        )
        .await
        .0
    } else {
        let (decision, collector) = redlock
            .collect(
                deadline,
                false,
                |buf, _| script.encode(buf, ScriptCall::BySha, keys.all(), &args),
                Vote::of_script_flag,
                |i| {
                    nodes[i]
                        .send(|buf| script.encode(buf, ScriptCall::WithSource, keys.all(), &args))
                },
            )
            .await;
        results = collector.results.clone();
        decision
    };
    if extended(&decision) {
        Ok(new_valid_until)
    } else {
        Err(redlock.lock_error(LockErrorKind::Lost, results, keys))
    }
}

/// Tells the tasks working under a lock whether it still holds: from [`Lock::signal`], and
/// handed to the body of [`Redlock::with_lock`]. It fires when the lock is lost or released.
/// Cheap to clone and to hand to sub-tasks.
#[derive(Clone, Debug)]
pub struct LockSignal {
    inner: Arc<SignalState>,
}

#[derive(Debug)]
struct SignalState {
    lost: AtomicBool,
    notify: Notify,
    valid_until: Mutex<Instant>,
    fence: Option<u64>,
}

impl LockSignal {
    pub(crate) fn new(valid_until: Instant, fence: Option<u64>) -> LockSignal {
        LockSignal {
            inner: Arc::new(SignalState {
                lost: AtomicBool::new(false),
                notify: Notify::new(),
                valid_until: Mutex::new(valid_until),
                fence,
            }),
        }
    }

    /// The lock's fencing token, as [`Lock::fencing_token`]: what the body of
    /// [`Redlock::with_lock`] hands to the protected resource.
    pub fn fencing_token(&self) -> Option<u64> {
        self.inner.fence
    }

    pub(crate) fn set_valid_until(&self, t: Instant) {
        *self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Moves the validity earlier: the waiters of [`lost`](LockSignal::lost) sleep until the
    /// validity they read, so they are woken to read it again.
    pub(crate) fn shorten_to(&self, t: Instant) {
        self.set_valid_until(t);
        self.inner.notify.notify_waiters();
    }

    pub(crate) fn fire(&self) {
        self.inner.lost.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// True once the lock is lost (a renewal failed, or its validity ran out) or released.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.load(Ordering::SeqCst) || Instant::now() >= self.valid_until()
    }

    /// The current validity deadline.
    pub fn valid_until(&self) -> Instant {
        *self
            .inner
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the lock is lost or released.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn demo(redlock: dragonlock::Redlock) -> Result<(), dragonlock::LockError> {
    /// redlock
    ///     .with_lock("report", Duration::from_secs(3), None, |signal| async move {
    ///         let worker = tokio::spawn(async move {
    ///             tokio::select! {
    ///                 _ = signal.lost() => eprintln!("lock lost: abandoning the partial report"),
    ///                 _ = write_report() => {}
    ///             }
    ///         });
    ///         let _ = worker.await;
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// # async fn write_report() {}
    /// ```
    pub async fn lost(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_lost() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(self.valid_until()) => {}
            }
        }
    }
}
