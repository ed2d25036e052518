//! Hand-off on a contended key: waiters of [`Redlock::acquire`](super::Redlock::acquire) are
//! woken when the lock is released, instead of sleeping out their retry delay; waiters of
//! [`acquire_many`](super::Redlock::acquire_many) when any key of their set is ([`Waiters`]).
//!
//! Release side: a release publishes its token on the key's release channel
//! ([`RELEASE_CHANNEL_PREFIX`](super::scripts::RELEASE_CHANNEL_PREFIX) and the key) on every
//! node, inside the release script where it deleted, or right behind a native `DELEX` in the
//! same write (see `Redlock::send_release`).
//!
//! Waiting side (this module): one subscriber connection per node
//! ([`Subscriber`](crate::conn::Subscriber)), started by the first waiter of the manager and
//! shared by all its waiters and views; one subscription per resource that has waiters
//! (reference-counted: subscribed when the first waiter comes, unsubscribed when the last one
//! leaves, dropped futures included). The lock connections never carry a subscription.
//!
//! Who is woken: **one waiter per release**, the oldest of this manager that is not already
//! woken. The n nodes each deliver the release's message; they carry the released token, so
//! the duplicates are recognised and dropped. Waking every waiter would have them all race for
//! the lock (one wins, the others spend a retry each, every release), and they would exhaust
//! their retry budget in `retry_count` releases. Oldest first is what keeps 16 contending
//! tasks from starving one another. A set's waiter has a place in each of its keys' queues and
//! passes on a release it was woken for and could not use ([`Waiters::requeue`]), so that it
//! does not hold a key's queue while another of its keys is held. Other processes' waiters are
//! woken by their own managers, and the jitter after a wake-up
//! ([`RedlockOptions::wake_jitter`](super::RedlockOptions::wake_jitter)) spreads them.
//!
//! A wake-up is a hint. Polling stays: a waiter sleeps its retry delay as before, and a hint
//! only cuts that sleep short. Every lost hint (a subscriber connection down, a message that
//! raced the subscription, a woken waiter that lost the race) costs at most one retry delay.
//! Two hints cover the races that would otherwise lose a release for certain:
//! - A waiter registers after its attempt failed. A release in between is missed by the
//!   subscription. If the channel was already subscribed, the time of its last message tells
//!   (a message since the attempt started wakes the waiter at once); if the subscription is
//!   new, the first node to confirm it wakes the oldest waiter, which then tries once more.
//! - After a subscriber connection comes back, it resubscribes; a channel that had no node
//!   subscribed in between counts as new again.
//!
//! State of one channel, per node (kept in [`NodeState::subscribed`]):
//!
//! ```text
//!  (absent) --SUBSCRIBE sent--> pending --confirmed--> live (counts in Entry::live)
//!     ^                            |                     |
//!     +--UNSUBSCRIBE sent (no waiter left) / connection lost / refused
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use smallvec::SmallVec;
use tokio::time::Instant;

use super::scripts::RELEASE_CHANNEL_PREFIX;
use super::Key;
use crate::conn::{ConnectionConfig, PubSubCommand, PubSubEvent, PubSubSink, Subscriber};

/// A release channel's name: [`RELEASE_CHANNEL_PREFIX`] and the key, inline (no allocation)
/// for keys up to 108 bytes.
pub(crate) type Channel = SmallVec<[u8; 128]>;

/// The release channel of `key`.
pub(crate) fn channel(key: &[u8]) -> Channel {
    let prefix = RELEASE_CHANNEL_PREFIX.as_bytes();
    let mut c = Channel::new();
    if prefix.len() + key.len() <= c.inline_size() {
        // Two copies into the inline buffer: `extend_from_slice` checks and reserves on each.
        let mut buf = [0u8; 128];
        buf[..prefix.len()].copy_from_slice(prefix);
        buf[prefix.len()..prefix.len() + key.len()].copy_from_slice(key);
        return Channel::from_buf_and_len(buf, prefix.len() + key.len());
    }
    c.extend_from_slice(prefix);
    c.extend_from_slice(key);
    c
}

/// Released tokens remembered per channel to drop the other nodes' copies of one release's
/// message. Each node delivers its copy within a round trip or so; four cover the releases that
/// can follow one another in that time on one key.
const RECENT_TOKENS: usize = 4;

/// The hand-off of one manager and all its views. Dropping it closes the subscriber
/// connections.
pub(crate) struct Handoff {
    shared: Arc<Shared>,
}

struct Shared {
    /// The nodes' configs, for the subscriber connections.
    configs: Vec<ConnectionConfig>,
    /// How many nodes' copies of a release's message show that a quorum has released.
    quorum: usize,
    state: Mutex<State>,
    /// How many channels have waiters: read without the lock by every `acquire`, so that one
    /// with nobody waiting pays a load, not a lock.
    waited_channels: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// One per node once the first waiter came; empty before.
    subscribers: Vec<Subscriber>,
    nodes: Vec<NodeState>,
    /// The channels that have waiters.
    channels: HashMap<Vec<u8>, Entry>,
    next_id: u64,
}

#[derive(Default)]
struct NodeState {
    /// The subscriber connection is up (between `Connected` and `Lost`): only then are channels
    /// marked dirty for it. A connection that comes up reconciles every channel anyway, so a
    /// node that is down keeps nothing.
    serving: bool,
    /// Channels to reconcile with `channels` at the subscriber's next turn, each once.
    dirty: Vec<Vec<u8>>,
    /// What this node's connection subscribed: the id of the entry it did so for, and whether
    /// the server confirmed it.
    subscribed: HashMap<Vec<u8>, (u64, bool)>,
    /// `SUBSCRIBE` (with its entry's id) and `UNSUBSCRIBE` (`None`) sent and not yet confirmed,
    /// oldest first: the server confirms in order.
    sent: VecDeque<(Vec<u8>, Option<u64>)>,
}

/// One channel's waiters.
struct Entry {
    /// Unique over the manager's life, so that a confirmation meant for an earlier entry of the
    /// same channel is not taken for this one's.
    id: u64,
    /// Oldest first.
    waiters: VecDeque<WaiterSlot>,
    /// Nodes on which the subscription is confirmed.
    live: usize,
    /// When the last message came (a waiter whose attempt started before it missed it).
    last_message: Option<Instant>,
    recent: VecDeque<Release>,
}

/// One release heard on a channel: its token, the waiter its first copy woke (0: none), and
/// how many nodes' copies came.
struct Release {
    token: Vec<u8>,
    woke: u64,
    copies: usize,
    /// The sets that tried it and passed it on ([`Waiters::requeue`]): it is not passed back to
    /// them, so two sets held up by the same other key do not hand one release to each other
    /// for as long as that key is held.
    passed_by: SmallVec<[u64; 2]>,
}

struct WaiterSlot {
    id: u64,
    /// Woken and not yet seen by the waiter.
    notified: bool,
    /// The last wake-up was a release's message (not a hint that one may have been missed).
    by_release: bool,
    waker: Option<Waker>,
}

/// Why [`Waiters::sleep_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The sleep ran out: the retry delay's poll.
    Timer,
    /// A release's message.
    Release,
    /// A release may have come while nobody listened (a new or renewed subscription, or a
    /// message just before the waiter registered).
    Hint,
}

impl Entry {
    /// Wakes the oldest waiter not already woken; returns its waker to call after unlocking.
    fn wake_one(&mut self, by_release: bool) -> Option<Waker> {
        self.wake_where(by_release, |_| true).1
    }

    /// Wakes the oldest waiter not already woken for which `pick` holds; returns its id (0:
    /// none) and its waker.
    fn wake_where(&mut self, by_release: bool, pick: impl Fn(u64) -> bool) -> (u64, Option<Waker>) {
        match self.waiters.iter_mut().find(|w| !w.notified && pick(w.id)) {
            Some(slot) => {
                slot.notified = true;
                slot.by_release = by_release;
                (slot.id, slot.waker.take())
            }
            None => (0, None),
        }
    }
}

impl Handoff {
    /// The hand-off over nodes reached with `configs`; nothing is started until a waiter comes.
    pub(crate) fn new(configs: Vec<ConnectionConfig>) -> Handoff {
        Handoff {
            shared: Arc::new(Shared {
                quorum: configs.len() / 2 + 1,
                configs,
                state: Mutex::new(State::default()),
                waited_channels: AtomicUsize::new(0),
            }),
        }
    }

    /// Registers a waiter for the lock whose release channel is `channel`, whose last failed
    /// attempt started at `attempt_started`. Starts the subscriber connections if this is the
    /// manager's first waiter.
    pub(crate) fn register(&self, channel: &[u8], attempt_started: Instant) -> Waiter {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.subscribers.is_empty() {
            let count = shared.configs.len();
            st.nodes = (0..count).map(|_| NodeState::default()).collect();
            st.subscribers = (0..count)
                .map(|node| {
                    let sink = Arc::new(NodeSink {
                        shared: shared.clone(),
                        node,
                    });
                    Subscriber::start(&shared.configs[node], sink)
                })
                .collect();
        }
        st.next_id += 1;
        let id = st.next_id;
        let is_new = !st.channels.contains_key(channel);
        let entry = st
            .channels
            .entry(channel.to_vec())
            .or_insert_with(|| Entry {
                id,
                waiters: VecDeque::new(),
                live: 0,
                last_message: None,
                recent: VecDeque::new(),
            });
        // A release published after the failed attempt began, before this waiter was here.
        let missed = entry.last_message.is_some_and(|at| at >= attempt_started);
        entry.waiters.push_back(WaiterSlot {
            id,
            notified: missed,
            by_release: false,
            waker: None,
        });
        if is_new {
            shared.waited_channels.fetch_add(1, Ordering::Relaxed);
            st.mark_dirty(channel);
        }
        Waiter {
            shared: shared.clone(),
            channel: channel.to_vec(),
            id,
        }
    }

    /// Registers a waiter for each of `keys` (on its release channel, see
    /// [`register`](Handoff::register)): one place for a single resource, one per key for a
    /// set.
    pub(crate) fn register_keys(&self, keys: &[Key], attempt_started: Instant) -> Waiters {
        Waiters {
            places: keys
                .iter()
                .map(|k| self.register(&channel(k), attempt_started))
                .collect(),
            set: keys.len() > 1,
        }
    }

    /// Places behind this manager's waiters of those of `keys` that have some (see
    /// [`queue_behind_waiters`](Handoff::queue_behind_waiters)), so that a new acquire does not
    /// overtake them; `None` when none has. A set's other keys get their places as a waiter's
    /// do, after its first attempt failed ([`Waiters::cover`]): a place registered now would
    /// subscribe a new channel, whose first confirmation would wake the set ahead of the
    /// waiters it queued behind.
    pub(crate) fn queue_behind_waiters_of(&self, keys: &[Key]) -> Option<Waiters> {
        let places: SmallVec<[Waiter; 1]> = keys
            .iter()
            .filter_map(|k| self.queue_behind_waiters(k))
            .collect();
        (!places.is_empty()).then_some(Waiters {
            places,
            set: keys.len() > 1,
        })
    }

    /// Whether this manager has waiters for any lock (one atomic load, no lock).
    pub(crate) fn has_waiters(&self) -> bool {
        self.shared.waited_channels.load(Ordering::Relaxed) != 0
    }

    /// A place at the back of `key`'s queue when this manager already has waiters for it, so
    /// that a new acquire does not overtake them: the one that releases and asks again at once
    /// would otherwise win every time against the waiter its release woke (whose attempt starts
    /// a notification's trip later), and that waiter would spend its retries losing.
    pub(crate) fn queue_behind_waiters(&self, key: &[u8]) -> Option<Waiter> {
        if !self.has_waiters() {
            return None;
        }
        let channel = channel(key);
        let mut st = self.shared.lock();
        let id = st.next_id + 1;
        let entry = st.channels.get_mut(&channel[..])?;
        entry.waiters.push_back(WaiterSlot {
            id,
            notified: false,
            by_release: false,
            waker: None,
        });
        st.next_id = id;
        Some(Waiter {
            shared: self.shared.clone(),
            channel: channel.to_vec(),
            id,
        })
    }

    /// Subscriptions this manager holds per node (confirmed or not), for tests and debugging.
    #[cfg(test)]
    fn subscriptions(&self) -> Vec<usize> {
        self.shared
            .lock()
            .nodes
            .iter()
            .map(|n| n.subscribed.len())
            .collect()
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // The subscriber tasks hold the shared state through their sinks: dropping their
        // handles is what ends them (and with them the last references).
        let subscribers = std::mem::take(&mut self.shared.lock().subscribers);
        drop(subscribers);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a few plain steps that leave the state consistent; a panic in
        // between is not spread to the other waiters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Asks every subscriber connection to bring `channel` in line with `channels`.
    fn mark_dirty(&mut self, channel: &[u8]) {
        for node in self.nodes.iter_mut().filter(|n| n.serving) {
            if !node.dirty.iter().any(|c| c == channel) {
                node.dirty.push(channel.to_vec());
            }
        }
        for s in &self.subscribers {
            s.wake();
        }
    }
}

/// The sink of one node's subscriber connection.
struct NodeSink {
    shared: Arc<Shared>,
    node: usize,
}

impl PubSubSink for NodeSink {
    fn event(&self, event: PubSubEvent<'_>) {
        let mut wake = None;
        {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            let node = &mut st.nodes[self.node];
            match event {
                PubSubEvent::Connected => {
                    node.serving = true;
                    node.subscribed.clear();
                    node.sent.clear();
                    node.dirty = st.channels.keys().cloned().collect();
                }
                PubSubEvent::Lost => {
                    node.serving = false;
                    node.dirty.clear();
                    for (channel, (id, live)) in node.subscribed.drain() {
                        match st.channels.get_mut(&channel) {
                            Some(entry) if live && entry.id == id => entry.live -= 1,
                            _ => {}
                        }
                    }
                    node.sent.clear();
                }
                PubSubEvent::Subscribed(channel) => {
                    let Some((sent, Some(id))) = node.sent.pop_front() else {
                        return;
                    };
                    if sent != channel {
                        return;
                    }
                    match node.subscribed.get_mut(channel) {
                        Some((want, live)) if *want == id && !*live => *live = true,
                        _ => return,
                    }
                    if let Some(entry) = st.channels.get_mut(channel) {
                        if entry.id == id {
                            entry.live += 1;
                            if entry.live == 1 {
                                // The first node listening: a release before it was missed.
                                wake = entry.wake_one(false);
                            }
                        }
                    }
                }
                PubSubEvent::Unsubscribed(_) => {
                    node.sent.pop_front();
                }
                PubSubEvent::Refused => {
                    // Not subscribed here: its waiters poll (or hear another node).
                    if let Some((channel, Some(id))) = node.sent.pop_front() {
                        if node
                            .subscribed
                            .get(&channel)
                            .is_some_and(|(want, _)| *want == id)
                        {
                            node.subscribed.remove(&channel);
                        }
                    }
                }
                PubSubEvent::Message { channel, payload } => {
                    let quorum = self.shared.quorum;
                    if let Some(entry) = st.channels.get_mut(channel) {
                        let known = entry.recent.iter_mut().find(|r| r.token == payload);
                        if let Some(release) = known {
                            // Another node's copy. The waiter the first one woke may have tried
                            // too early (the release not yet run on a quorum of nodes, it
                            // failed): once a quorum's copies are in, it may try once more.
                            release.copies += 1;
                            if release.copies == quorum && release.woke != 0 {
                                let woke = release.woke;
                                if entry.waiters.iter().any(|w| w.id == woke) {
                                    wake = entry.wake_where(true, |id| id == woke).1;
                                } else {
                                    // It left after its try (out of budget, cancelled): the
                                    // next waiter tries in its place, or the free lock waits
                                    // for its polls.
                                    let (next, waker) = entry.wake_where(true, |_| true);
                                    wake = waker;
                                    if let Some(r) =
                                        entry.recent.iter_mut().find(|r| r.token == payload)
                                    {
                                        r.woke = next;
                                    }
                                }
                            }
                        } else {
                            if entry.recent.len() == RECENT_TOKENS {
                                entry.recent.pop_front();
                            }
                            entry.last_message = Some(Instant::now());
                            let (woke, waker) = entry.wake_where(true, |_| true);
                            wake = waker;
                            entry.recent.push_back(Release {
                                token: payload.to_vec(),
                                woke,
                                copies: 1,
                                passed_by: SmallVec::new(),
                            });
                        }
                    }
                }
            }
        }
        if let Some(w) = wake {
            w.wake();
        }
    }

    fn requests(&self, out: &mut Vec<(PubSubCommand, Vec<u8>)>) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        let node = &mut st.nodes[self.node];
        for channel in std::mem::take(&mut node.dirty) {
            let want = st.channels.get(&channel).map(|e| e.id);
            let have = node.subscribed.get(&channel).map(|(id, _)| *id);
            match (want, have) {
                (Some(want), have) if have != Some(want) => {
                    // Again for a new entry of a channel already subscribed: harmless for the
                    // server, and its confirmation is this entry's.
                    node.subscribed.insert(channel.clone(), (want, false));
                    node.sent.push_back((channel.clone(), Some(want)));
                    out.push((PubSubCommand::Subscribe, channel));
                }
                (None, Some(_)) => {
                    node.subscribed.remove(&channel);
                    node.sent.push_back((channel.clone(), None));
                    out.push((PubSubCommand::Unsubscribe, channel));
                }
                _ => {}
            }
        }
    }
}

/// One waiter's place in its channel's queue. Dropping it leaves the queue (and unsubscribes
/// the channel when it was the last); a wake-up it had not used goes to the next waiter.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    channel: Vec<u8>,
    id: u64,
}

/// An acquire's places in the queues of the keys it waits for: one for a single resource, one
/// per key for [`acquire_many`](super::Redlock::acquire_many), which a release of any of its
/// keys wakes (the set may be free once that one is). Each place is an ordinary [`Waiter`] of
/// its key's queue; a release a set could not use goes on to that key's next waiter
/// ([`requeue`](Waiters::requeue)). Dropping it leaves every queue.
pub(crate) struct Waiters {
    places: SmallVec<[Waiter; 1]>,
    /// For a set of keys (even while it has a place on some of them only).
    set: bool,
}

impl From<Waiter> for Waiters {
    fn from(w: Waiter) -> Waiters {
        let mut places = SmallVec::new();
        places.push(w);
        Waiters { places, set: false }
    }
}

impl Waiters {
    /// Sleeps until `until`, or until a release wakes one of the places: why, and which place
    /// the wake-up came through (the first on the timer). A wake-up that came while the waiter
    /// was not sleeping (during its attempt) returns at once; of several, one is taken per
    /// call.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a wake-up is consumed only when this returns it.
    pub(crate) async fn sleep_until(&self, until: Instant) -> (Wake, usize) {
        sleep_on(&self.places, until).await
    }

    /// Whether these are a set's places (more than one key, placed or not yet).
    pub(crate) fn is_set(&self) -> bool {
        self.set
    }

    /// Adds a place for each of `keys` that has none yet (a set that queued behind the
    /// waiters of some of its keys, after its first attempt failed).
    pub(crate) fn cover(&mut self, handoff: &Handoff, keys: &[Key], attempt_started: Instant) {
        for key in keys {
            let c = channel(key);
            if !self.places.iter().any(|p| p.channel[..] == c[..]) {
                self.places.push(handoff.register(&c, attempt_started));
            }
        }
    }

    /// After a set's attempt that a release woke through place `at` failed: that place goes
    /// to the back of its key's queue, and the release's wake-up to the waiter now oldest
    /// there. The set failed on another of its keys (or lost the race); kept at the head, it
    /// would take every release of this key, and this key's other waiters none, for as long
    /// as its other key is held.
    pub(crate) fn requeue(&mut self, at: usize) {
        self.places[at].requeue();
    }

    /// Leaves every queue after taking the lock (see [`Waiter::done`]).
    pub(crate) fn done(self) {
        for place in self.places {
            place.done();
        }
    }
}

/// Sleeps until `until`, or until a release wakes one of `places` (all of one manager): why,
/// and the place (0 on the timer).
async fn sleep_on(places: &[Waiter], until: Instant) -> (Wake, usize) {
    let sleep = tokio::time::sleep_until(until);
    tokio::pin!(sleep);
    let shared = &places[0].shared;
    poll_fn(|cx| {
        {
            let mut st = shared.lock();
            for (at, place) in places.iter().enumerate() {
                let Some(slot) = st
                    .channels
                    .get_mut(&place.channel)
                    .and_then(|e| e.waiters.iter_mut().find(|w| w.id == place.id))
                else {
                    continue;
                };
                if slot.notified {
                    slot.notified = false;
                    let why = if slot.by_release {
                        Wake::Release
                    } else {
                        Wake::Hint
                    };
                    return Poll::Ready((why, at));
                }
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
            }
        }
        sleep.as_mut().poll(cx).map(|()| (Wake::Timer, 0))
    })
    .await
}

impl Waiter {
    /// Sleeps until `until`, or until a release wakes this waiter (see
    /// [`Waiters::sleep_until`]).
    #[cfg(test)]
    async fn sleep_until(&self, until: Instant) -> Wake {
        sleep_on(std::slice::from_ref(self), until).await.0
    }

    /// Moves this waiter to the back of its queue and passes the wake-up it used to the waiter
    /// now oldest (see [`Waiters::requeue`]), with the quorum's second wake-up of the releases
    /// that woke it (see `PubSubEvent::Message`).
    fn requeue(&mut self) {
        let wake = {
            let mut st = self.shared.lock();
            let Some(entry) = st.channels.get_mut(&self.channel) else {
                return;
            };
            let Some(at) = entry.waiters.iter().position(|w| w.id == self.id) else {
                return;
            };
            let mut slot = entry.waiters.remove(at).expect("found above");
            // The releases this waiter was woken for, and who passed them on before it: passed
            // on to a waiter that has not tried them. A release no longer in `recent` (four
            // newer ones came since) is not passed on: the newer ones wake their own waiters.
            let mut passed_by: SmallVec<[u64; 4]> = SmallVec::new();
            let mut found = false;
            for release in entry.recent.iter().filter(|r| r.woke == self.id) {
                found = true;
                passed_by.extend_from_slice(&release.passed_by);
            }
            let (next, waker) = if found {
                entry.wake_where(true, |id| !passed_by.contains(&id))
            } else {
                (0, None)
            };
            // With nobody else here, the quorum's wake-up (and one that came during the
            // attempt) stays this waiter's: its attempt may have failed only for coming
            // before the release reached a quorum. With others, they have the release: the
            // next one woken (or already woken) tries it, and this waiter does not again.
            if !entry.waiters.is_empty() {
                for release in entry.recent.iter_mut().filter(|r| r.woke == self.id) {
                    release.woke = next;
                    release.passed_by.push(self.id);
                }
                slot.notified = false;
            }
            entry.waiters.push_back(slot);
            waker
        };
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Leaves the queue after taking the lock: a wake-up that came meanwhile was for this
    /// waiter's own success and is not passed on.
    pub(crate) fn done(mut self) {
        self.leave(false);
        self.id = 0;
    }

    fn leave(&mut self, pass_on: bool) {
        let mut wake = None;
        {
            let mut st = self.shared.lock();
            let Some(entry) = st.channels.get_mut(&self.channel) else {
                return;
            };
            let Some(at) = entry.waiters.iter().position(|w| w.id == self.id) else {
                return;
            };
            let slot = entry.waiters.remove(at).expect("found above");
            // Who a recent release's quorum wake-up is for, now that this waiter leaves (see
            // `PubSubEvent::Message`): nobody once it took the lock (the release was its
            // own), the waiter it passes an unused wake-up to, and otherwise still this one,
            // gone, so that the quorum wakes the next waiter in its place.
            let mut passed_to = 0;
            if slot.notified && pass_on {
                let (next, waker) = entry.wake_where(slot.by_release, |_| true);
                passed_to = next;
                wake = waker;
            }
            if !pass_on || passed_to != 0 {
                for release in entry.recent.iter_mut().filter(|r| r.woke == self.id) {
                    release.woke = passed_to;
                }
            }
            if entry.waiters.is_empty() {
                st.channels.remove(&self.channel);
                self.shared.waited_channels.fetch_sub(1, Ordering::Relaxed);
                st.mark_dirty(&self.channel);
            }
        }
        if let Some(w) = wake {
            w.wake();
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.id != 0 {
            self.leave(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_the_prefix_then_the_key_inline_or_not() {
        let prefix = RELEASE_CHANNEL_PREFIX.as_bytes();
        let room = Channel::new().inline_size() - prefix.len();
        for len in [0, 1, room - 1, room, room + 1, 300] {
            let key = vec![b'k'; len];
            let c = channel(&key);
            assert_eq!(&c[..prefix.len()], prefix);
            assert_eq!(&c[prefix.len()..], &key[..], "{len}");
            assert_eq!(c.spilled(), len > room, "{len}");
        }
    }

    fn sink(h: &Handoff, node: usize) -> NodeSink {
        NodeSink {
            shared: h.shared.clone(),
            node,
        }
    }

    fn requests(s: &NodeSink) -> Vec<(PubSubCommand, Vec<u8>)> {
        let mut out = Vec::new();
        s.requests(&mut out);
        out
    }

    fn woken(w: &Waiter) -> bool {
        let st = w.shared.lock();
        st.channels[&w.channel]
            .waiters
            .iter()
            .find(|s| s.id == w.id)
            .unwrap()
            .notified
    }

    /// A handoff over two nodes whose subscriber connections point nowhere useful: the tests
    /// drive the sinks by hand.
    fn handoff() -> Handoff {
        Handoff::new(vec![
            ConnectionConfig::new("127.0.0.1", 1),
            ConnectionConfig::new("127.0.0.1", 1),
        ])
    }

    /// Waiters that come and go on nodes whose subscriber is not up (down, or not yet
    /// connected) leave nothing behind: each such episode used to add the channel
    /// to every node's list of channels to reconcile, twice, for the manager's life. A node
    /// that is up has each channel at most once, however often it is marked.
    #[tokio::test]
    async fn channels_to_reconcile_do_not_pile_up() {
        let h = handoff();
        let t0 = Instant::now();
        for _ in 0..1_000 {
            drop(h.register(b"some:lock:key", t0));
        }
        let dirty = |h: &Handoff| -> Vec<usize> {
            h.shared
                .lock()
                .nodes
                .iter()
                .map(|n| n.dirty.len())
                .collect()
        };
        assert_eq!(dirty(&h), vec![0, 0]);
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        for _ in 0..1_000 {
            drop(h.register(b"some:lock:key", t0));
        }
        assert_eq!(dirty(&h), vec![1, 0]);
        assert!(
            requests(&a).is_empty(),
            "nothing to subscribe: no waiter left"
        );
        a.event(PubSubEvent::Lost);
        assert_eq!(dirty(&h), vec![0, 0]);
    }

    #[tokio::test]
    async fn one_release_wakes_one_waiter_oldest_first_whatever_the_number_of_nodes() {
        let h = handoff();
        let t0 = Instant::now();
        let first = h.register(b"c", t0);
        let second = h.register(b"c", t0);
        let (a, b) = (sink(&h, 0), sink(&h, 1));
        a.event(PubSubEvent::Connected);
        assert_eq!(
            requests(&a),
            vec![(PubSubCommand::Subscribe, b"c".to_vec())]
        );
        a.event(PubSubEvent::Subscribed(b"c"));
        // The first confirmation is a hint: a release may have come before it.
        assert!(woken(&first) && !woken(&second));
        assert_eq!(first.sleep_until(Instant::now()).await, Wake::Hint);
        // One release, heard from both nodes: one waiter.
        for s in [&a, &b] {
            s.event(PubSubEvent::Message {
                channel: b"c",
                payload: b"tok1",
            });
        }
        assert!(woken(&first) && !woken(&second));
        // The next release wakes the next waiter, the first one still having its wake-up.
        a.event(PubSubEvent::Message {
            channel: b"c",
            payload: b"tok2",
        });
        assert!(woken(&second));
        // Both gone: unsubscribed.
        drop(first);
        second.done();
        assert_eq!(
            requests(&a),
            vec![(PubSubCommand::Unsubscribe, b"c".to_vec())]
        );
        assert_eq!(h.subscriptions(), vec![0, 0]);
    }

    /// A set's waiter has a place in each key's queue: it queues behind the waiters of the
    /// keys that have some, takes places on the others after its first attempt (`cover`), is
    /// woken by a release of either key, passes a release it could not use to that key's next
    /// waiter (`requeue`), and leaves every queue when it took the set (`done`: a wake-up left
    /// on another place is not passed on, the set holds that key).
    #[tokio::test]
    async fn a_set_waiter_takes_turns_on_each_of_its_keys() {
        let h = handoff();
        let t0 = Instant::now();
        let (ka, kb) = (Key::from_slice(b"a"), Key::from_slice(b"b"));
        let (ca, cb) = (channel(b"a").to_vec(), channel(b"b").to_vec());
        let alone = h.register(&ca, t0);
        let mut set = h
            .queue_behind_waiters_of(&[ka.clone(), kb.clone()])
            .expect("behind the waiter of \"a\"");
        // A set, with a place on "a" only before its first attempt.
        assert!(set.is_set());
        assert_eq!(set.places.len(), 1);
        set.cover(&h, &[ka.clone(), kb.clone()], t0);
        assert_eq!(set.places.len(), 2);
        set.cover(&h, &[ka.clone(), kb.clone()], t0);
        assert_eq!(set.places.len(), 2, "one place per key");
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        let asked = requests(&a);
        let mut sorted = asked.clone();
        sorted.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            sorted,
            vec![
                (PubSubCommand::Subscribe, ca.clone()),
                (PubSubCommand::Subscribe, cb.clone())
            ]
        );
        // Confirmed in the order sent, as a server does. Each first confirmation wakes its
        // queue's oldest: the lone waiter on "a", the set on "b" (its place 1).
        a.event(PubSubEvent::Subscribed(&asked[0].1));
        a.event(PubSubEvent::Subscribed(&asked[1].1));
        assert_eq!(alone.sleep_until(t0).await, Wake::Hint);
        assert_eq!(set.sleep_until(t0).await, (Wake::Hint, 1));
        // A release of "b" wakes the set; one of "a" the lone waiter, the oldest there.
        let release = |c: &[u8], token: &[u8]| {
            a.event(PubSubEvent::Message {
                channel: c,
                payload: token,
            })
        };
        release(&cb, b"t1");
        assert_eq!(set.sleep_until(t0).await, (Wake::Release, 1));
        release(&ca, b"t2");
        assert!(woken(&alone));
        alone.done();
        // Now the set is oldest on "a", a newcomer behind it.
        let late = h.register(&ca, Instant::now());
        release(&ca, b"t3");
        assert_eq!(set.sleep_until(t0).await, (Wake::Release, 0));
        assert!(!woken(&late));
        // Its attempt failed ("b" held again): the release goes to the newcomer, and the set's
        // place on "a" behind it; the quorum's second copy re-wakes the newcomer, not the set.
        set.requeue(0);
        assert!(woken(&late));
        assert_eq!(late.sleep_until(t0).await, Wake::Release);
        sink(&h, 1).event(PubSubEvent::Message {
            channel: &ca,
            payload: b"t3",
        });
        assert!(woken(&late));
        assert_eq!(set.sleep_until(t0).await, (Wake::Timer, 0));
        // The usual order: the quorum's copy comes while the set tries. Its requeue clears
        // that second wake-up too: the waiter it passes the release to tries it, and neither
        // the set nor a third waiter is woken again by this release.
        late.done();
        let third = h.register(&ca, Instant::now());
        let fourth = h.register(&ca, Instant::now());
        release(&ca, b"t5");
        assert_eq!(set.sleep_until(t0).await, (Wake::Release, 0));
        sink(&h, 1).event(PubSubEvent::Message {
            channel: &ca,
            payload: b"t5",
        });
        set.requeue(0);
        assert!(woken(&third) && !woken(&fourth));
        assert_eq!(set.sleep_until(t0).await, (Wake::Timer, 0));
        drop((third, fourth));
        // A release of "b" while the set takes it: not passed on to "b"'s other waiter.
        let other = h.register(&cb, Instant::now());
        release(&cb, b"t4");
        set.done();
        assert!(!woken(&other));
        drop(other);
        let mut asked = requests(&a);
        asked.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            asked,
            vec![
                (PubSubCommand::Unsubscribe, ca),
                (PubSubCommand::Unsubscribe, cb)
            ]
        );
    }

    /// Two sets held up by the same other key: a release of their shared key is tried by each
    /// once, not handed back and forth for as long as the other key is held (found by review:
    /// about 500 attempts a second for one release).
    #[tokio::test]
    async fn two_sets_try_a_release_they_cannot_use_once_each() {
        let h = handoff();
        let t0 = Instant::now();
        let keys = [Key::from_slice(b"a"), Key::from_slice(b"b")];
        let ca = channel(b"a").to_vec();
        let mut one = h.register_keys(&keys, t0);
        let mut two = h.register_keys(&keys, t0);
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        for (_, c) in requests(&a) {
            a.event(PubSubEvent::Subscribed(&c));
        }
        while one.sleep_until(t0).await.0 == Wake::Hint {}
        while two.sleep_until(t0).await.0 == Wake::Hint {}
        a.event(PubSubEvent::Message {
            channel: &ca,
            payload: b"t1",
        });
        // The first set tries it, fails on "b", passes it on; the second likewise, and it does
        // not come back.
        assert_eq!(one.sleep_until(t0).await, (Wake::Release, 0));
        one.requeue(0);
        assert_eq!(two.sleep_until(t0).await, (Wake::Release, 0));
        two.requeue(0);
        assert_eq!(one.sleep_until(t0).await.0, Wake::Timer);
        assert_eq!(two.sleep_until(t0).await.0, Wake::Timer);
        // Nor does the quorum's copy wake either of them again.
        sink(&h, 1).event(PubSubEvent::Message {
            channel: &ca,
            payload: b"t1",
        });
        assert_eq!(one.sleep_until(t0).await.0, Wake::Timer);
        assert_eq!(two.sleep_until(t0).await.0, Wake::Timer);
        // The next release is tried again, by the oldest.
        a.event(PubSubEvent::Message {
            channel: &ca,
            payload: b"t2",
        });
        assert_eq!(one.sleep_until(t0).await, (Wake::Release, 0));
    }

    /// A set dropped with a wake-up it did not use passes it on, on that key; a set none of
    /// whose keys has waiters does not queue, whatever other keys have.
    #[tokio::test]
    async fn a_dropped_set_passes_its_wake_up_on_and_an_unwaited_set_does_not_queue() {
        let h = handoff();
        let t0 = Instant::now();
        let (ka, kb) = (Key::from_slice(b"a"), Key::from_slice(b"b"));
        let cb = channel(b"b").to_vec();
        let set = h.register_keys(&[ka.clone(), kb.clone()], t0);
        let other = h.register(&cb, t0);
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        for (_, c) in requests(&a) {
            a.event(PubSubEvent::Subscribed(&c));
        }
        // Both confirmations' hints are the set's (oldest on both).
        assert_eq!(set.sleep_until(t0).await.0, Wake::Hint);
        assert_eq!(set.sleep_until(t0).await.0, Wake::Hint);
        a.event(PubSubEvent::Message {
            channel: &cb,
            payload: b"t1",
        });
        assert!(!woken(&other));
        drop(set);
        assert!(
            woken(&other),
            "the unused wake-up went to the next waiter of \"b\""
        );
        drop(other);

        // A set alone on "b", woken by a release's first copy too early (the release not yet
        // on a quorum): its requeue finds nobody to pass the wake-up to, so the quorum's copy
        // still wakes it.
        let set = h.register_keys(&[ka.clone(), kb.clone()], Instant::now());
        for (_, c) in requests(&a) {
            a.event(PubSubEvent::Subscribed(&c));
        }
        while set.sleep_until(t0).await.0 == Wake::Hint {}
        a.event(PubSubEvent::Message {
            channel: &cb,
            payload: b"t2",
        });
        let (why, at) = set.sleep_until(t0).await;
        assert_eq!((why, at), (Wake::Release, 1), "through its place on \"b\"");
        let mut set = set;
        set.requeue(at);
        sink(&h, 1).event(PubSubEvent::Message {
            channel: &cb,
            payload: b"t2",
        });
        assert_eq!(set.sleep_until(t0).await.0, Wake::Release);
        drop(set);

        let _z = h.register(&channel(b"z"), t0);
        assert!(h.has_waiters());
        assert!(h.queue_behind_waiters_of(&[ka, kb]).is_none());
    }

    /// A handoff over three nodes, driven by hand as `handoff()`'s.
    fn three_nodes() -> Handoff {
        Handoff::new(vec![ConnectionConfig::new("127.0.0.1", 1); 3])
    }

    /// Node `node`'s copy of the release of channel `c` by token `payload`.
    fn copy(h: &Handoff, node: usize, payload: &[u8]) {
        sink(h, node).event(PubSubEvent::Message {
            channel: b"c",
            payload,
        })
    }

    #[tokio::test]
    async fn a_waiter_woken_too_early_gets_one_more_wake_up_when_a_quorum_has_released() {
        let h = three_nodes();
        let t0 = Instant::now();
        let (first, second) = (h.register(b"c", t0), h.register(b"c", t0));
        let copy = |node| copy(&h, node, b"t");
        copy(0);
        // The first node's copy: the oldest waiter tries (and, say, fails: the release has
        // not run on two of three nodes yet).
        assert_eq!(first.sleep_until(Instant::now()).await, Wake::Release);
        copy(1); // two of three: a quorum has released; the same waiter tries again
        assert!(woken(&first) && !woken(&second));
        assert_eq!(first.sleep_until(Instant::now()).await, Wake::Release);
        copy(2); // the rest changes nothing
        assert!(!woken(&first) && !woken(&second));
    }

    /// The waiter the first copy woke tried too early and left (its budget ran out): the copy
    /// that completes the quorum wakes the next waiter in its place.
    #[tokio::test]
    async fn a_quorums_wake_up_goes_to_the_next_waiter_when_the_first_left() {
        let h = three_nodes();
        let t0 = Instant::now();
        let (first, second) = (h.register(b"c", t0), h.register(b"c", t0));
        let copy = |node| copy(&h, node, b"t");
        copy(0);
        assert_eq!(first.sleep_until(Instant::now()).await, Wake::Release);
        drop(first); // tried, failed, gave up
        assert!(!woken(&second), "the first's wake-up was used");
        copy(1); // a quorum has released: the lock is free
        assert!(woken(&second));
        assert_eq!(second.sleep_until(Instant::now()).await, Wake::Release);
        copy(2);
        assert!(!woken(&second));
    }

    /// The quorum's wake-up follows the first copy's: to nobody when its waiter took the lock
    /// (the release was its own), and to the waiter it passed an unused wake-up to, not to a
    /// third one as well.
    #[tokio::test]
    async fn a_quorums_wake_up_follows_the_first_copys_wake_up() {
        let h = three_nodes();
        let t0 = Instant::now();
        let copy = |payload: &'static [u8], node| copy(&h, node, payload);
        // Taken: nobody else is woken by the quorum.
        let (first, second) = (h.register(b"c", t0), h.register(b"c", t0));
        copy(b"t1", 0);
        assert_eq!(first.sleep_until(Instant::now()).await, Wake::Release);
        first.done();
        copy(b"t1", 1);
        assert!(!woken(&second), "the lock is held by the first");
        // Passed on unused: the quorum wakes the one it went to (already woken), nobody more.
        // (Registered after t1's copy came, from attempts begun after it: nothing missed.)
        let third = h.register(b"c", Instant::now());
        copy(b"t2", 0);
        assert!(woken(&second));
        drop(second);
        assert!(woken(&third));
        let fourth = h.register(b"c", Instant::now());
        copy(b"t2", 1);
        assert!(!woken(&fourth), "one release, one waiter trying");
        assert_eq!(third.sleep_until(Instant::now()).await, Wake::Release);
    }

    #[tokio::test]
    async fn a_dropped_waiter_passes_its_unused_wake_up_on_and_a_done_one_does_not() {
        let h = handoff();
        let t0 = Instant::now();
        let (w1, w2, w3) = (
            h.register(b"c", t0),
            h.register(b"c", t0),
            h.register(b"c", t0),
        );
        let a = sink(&h, 0);
        a.event(PubSubEvent::Message {
            channel: b"c",
            payload: b"t",
        });
        assert!(woken(&w1));
        drop(w1); // cancelled before it used the wake-up
        assert!(woken(&w2));
        w2.done(); // took the lock: the wake-up was its own
        assert!(!woken(&w3));
    }

    #[tokio::test]
    async fn a_waiter_that_registers_after_a_message_it_missed_is_woken_at_once() {
        let h = handoff();
        let old = h.register(b"c", Instant::now());
        sink(&h, 0).event(PubSubEvent::Message {
            channel: b"c",
            payload: b"t",
        });
        let attempt_started = Instant::now() - std::time::Duration::from_millis(1);
        let late = h.register(b"c", attempt_started);
        assert!(woken(&late));
        let later = h.register(b"c", Instant::now() + std::time::Duration::from_millis(1));
        assert!(!woken(&later));
        drop(old);
    }

    #[tokio::test]
    async fn a_lost_connection_resubscribes_and_counts_as_new_when_no_node_listened() {
        let h = handoff();
        let w = h.register(b"c", Instant::now());
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        requests(&a);
        a.event(PubSubEvent::Subscribed(b"c"));
        assert_eq!(w.sleep_until(Instant::now()).await, Wake::Hint);
        a.event(PubSubEvent::Lost);
        a.event(PubSubEvent::Connected);
        assert_eq!(
            requests(&a),
            vec![(PubSubCommand::Subscribe, b"c".to_vec())]
        );
        a.event(PubSubEvent::Subscribed(b"c"));
        assert!(
            woken(&w),
            "no node listened in between: a release may have been missed"
        );
    }

    /// The other order: a node still listened while the other was away, so every release
    /// reached this manager and the comeback is no hint.
    #[tokio::test]
    async fn a_lost_connection_that_comes_back_while_another_node_listened_is_no_hint() {
        let h = handoff();
        let w = h.register(b"c", Instant::now());
        let (a, b) = (sink(&h, 0), sink(&h, 1));
        for s in [&a, &b] {
            s.event(PubSubEvent::Connected);
            requests(s);
            s.event(PubSubEvent::Subscribed(b"c"));
        }
        assert_eq!(w.sleep_until(Instant::now()).await, Wake::Hint);
        a.event(PubSubEvent::Lost);
        a.event(PubSubEvent::Connected);
        assert_eq!(
            requests(&a),
            vec![(PubSubCommand::Subscribe, b"c".to_vec())]
        );
        a.event(PubSubEvent::Subscribed(b"c"));
        assert!(!woken(&w), "node 1 listened all along: nothing was missed");
    }

    #[tokio::test]
    async fn a_channel_left_and_rejoined_before_the_subscriber_ran_is_subscribed_for_the_new_entry()
    {
        let h = handoff();
        let w = h.register(b"c", Instant::now());
        let a = sink(&h, 0);
        a.event(PubSubEvent::Connected);
        requests(&a);
        a.event(PubSubEvent::Subscribed(b"c"));
        drop(w);
        let w = h.register(b"c", Instant::now());
        // Still subscribed for the old entry: subscribed again, and this confirmation counts.
        assert_eq!(
            requests(&a),
            vec![(PubSubCommand::Subscribe, b"c".to_vec())]
        );
        a.event(PubSubEvent::Subscribed(b"c"));
        assert!(woken(&w));
    }
}
