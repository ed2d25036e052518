//! The slot table: every request's place, in arrays allocated when the connection starts.
//!
//! Every request written has an entry in the *in-flight queue*, a ring in the order the requests
//! were written: the next reply belongs to the entry at its head. An entry says where its reply
//! goes:
//!
//! - a caller's request (`send`) holds a *slot* from `send` until its future takes the reply,
//!   or, when its caller went away (*abandoned*), until its reply has been read and dropped.
//!   Free slots are a stack linked through their `next` field;
//! - a lock phase's request names its op and node (see `ops.rs`): the driver counts the reply
//!   there and nothing else holds it, so it takes no slot;
//! - a request whose reply nobody wants (the `PUBLISH` behind a release) is dropped.
//!
//! ```text
//!  in-flight queue (ring, oldest at the head)     slots (free stack: free -> 4 -> 0 -> NIL)
//!  head -> [slot 2] [op 17, node 3] [dropped] [slot 5] <- tail
//!
//!  send:  free slot --take()--> queued --pop_oldest()--> answered --release()--> free
//!  phase: push_op() --> queued --pop_oldest()--> counted in its op
//! ```
//!
//! `used` counts the requests whose place is taken: slots in use (queued, or answered and not
//! yet taken by their future) and queued entries without a slot. Nothing grows: when `used`
//! reaches the capacity, [`SlotTable::has_free`] says no and the request is refused
//! (`Overloaded`) before anything is written. As every queued entry is counted in `used`, the
//! ring never holds more than the capacity either.
//!
//! The ring replaced a queue linked through the slots: a lock phase's request, the hot path's,
//! now costs one entry written and one read, where it took a slot off the free stack, linked it
//! at the tail, unlinked it at the head and pushed it back (DESIGN.md, "The slot table").

use std::task::Waker;

use super::ops::OpId;
use super::stats::RTT_CLOCK_MASK;
use crate::error::Error;
use crate::resp::Frame;

/// The end of the free stack, and "no slot" in a queue entry.
const NIL: u32 = u32::MAX;

/// The most slots one table can have: ids are `u32` and `NIL` is taken. The config clamps
/// `max_in_flight` far below this anyway.
pub(super) const MAX_SLOTS: usize = (u32::MAX - 1) as usize;

/// One caller's request: its reply once it came, and who to wake.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) reply: Option<Result<Frame, Error>>,
    pub(super) waker: Option<Waker>,
    /// The next free slot, while this one is free; `NIL` at the end.
    next: u32,
    /// The caller dropped its `ReplyFuture`: the reply is read and thrown away.
    abandoned: bool,
}

impl Slot {
    /// Marks the request as abandoned by its caller.
    #[inline]
    pub(super) fn abandon(&mut self) {
        self.abandoned = true;
    }
}

/// Where a reply goes, told by the queue entry of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A caller's request: the reply is kept in this slot for its future.
    Slot(u32),
    /// Node `.1`'s request of op `.0`: the reply is counted in the op (see `ops.rs`).
    Op(OpId, u8),
    /// Nobody: the reply is read and dropped (a request sent only for its effect, or one whose
    /// caller went away).
    Dropped,
}

/// One request in flight: when it was queued, on the connection's 31-bit microsecond clock
/// (see `stats::now_us`), for its round trip, and where its reply goes. 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Queued {
    /// The slot, or the op (its whole id, generation included), by `kind`.
    id: u64,
    stamp: u32,
    node: u8,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slot,
    Op,
    Dropped,
}

/// The oldest request, whose reply goes to no caller as a frame (see
/// [`SlotTable::oldest_frameless`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frameless {
    /// When it was queued (see [`Popped::sent_us`]).
    pub(super) sent_us: u32,
    /// The op and node its reply counts for; `None`: the reply is dropped.
    pub(super) op: Option<(OpId, u8)>,
    /// The abandoned caller's slot it holds, `NIL` for none.
    slot: u32,
}

/// A request taken off the queue by [`SlotTable::pop_oldest`]: its send time, and where its
/// reply goes. An abandoned caller's request comes out as `Owner::Dropped`, its slot already
/// free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Popped {
    pub(super) sent_us: u32,
    pub(super) owner: Owner,
}

/// Every slot of one connection, the free stack threaded through them, and the in-flight queue.
/// See the module docs.
#[derive(Debug)]
pub(super) struct SlotTable {
    slots: Box<[Slot]>,
    /// Top of the free stack.
    free: u32,
    /// The in-flight queue: `queued` entries from `head`, wrapping at the end.
    ring: Box<[Queued]>,
    head: usize,
    queued: usize,
    /// Places taken: slots not on the free stack, and queued entries without a slot.
    used: usize,
}

impl SlotTable {
    /// A table for `capacity` requests, all free: the only allocation it ever makes.
    pub(super) fn new(capacity: usize) -> SlotTable {
        assert!(
            (1..=MAX_SLOTS).contains(&capacity),
            "slot table capacity {capacity}"
        );
        let slots: Box<[Slot]> = (0..capacity)
            .map(|i| Slot {
                reply: None,
                waker: None,
                next: if i + 1 < capacity { i as u32 + 1 } else { NIL },
                abandoned: false,
            })
            .collect();
        let empty = Queued {
            stamp: 0,
            id: u64::from(NIL),
            node: 0,
            kind: Kind::Dropped,
        };
        SlotTable {
            slots,
            free: 0,
            ring: vec![empty; capacity].into_boxed_slice(),
            head: 0,
            queued: 0,
            used: 0,
        }
    }

    /// True when one more request has a place: [`take`](SlotTable::take) would get a slot, and
    /// [`push_op`](SlotTable::push_op) room in the queue.
    #[inline]
    pub(super) fn has_free(&self) -> bool {
        self.used < self.slots.len()
    }

    /// Requests in the in-flight queue.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Places taken: slots in use (queued, or answered and waiting for their future), and
    /// queued requests without a slot.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// Puts a request at the tail of the queue (the caller checked `has_free`).
    #[inline]
    fn push(&mut self, sent_us: u32, id: u64, node: u8, kind: Kind) {
        debug_assert!(self.used < self.ring.len(), "pushed past the capacity");
        let mut at = self.head + self.queued;
        if at >= self.ring.len() {
            at -= self.ring.len();
        }
        self.ring[at] = Queued {
            stamp: sent_us & RTT_CLOCK_MASK,
            id,
            node,
            kind,
        };
        self.queued += 1;
        self.used += 1;
    }

    /// Takes a free slot for a caller's request and queues the request, stamped with its send
    /// time (`sent_us`, see [`Popped::sent_us`]); `None` when every place is taken.
    pub(super) fn take(&mut self, sent_us: u32) -> Option<u32> {
        if !self.has_free() {
            return None;
        }
        let id = self.free;
        let slot = &mut self.slots[id as usize];
        self.free = slot.next;
        slot.next = NIL;
        self.push(sent_us, u64::from(id), 0, Kind::Slot);
        Some(id)
    }

    /// Queues node `node`'s request of op `op`, which takes no slot (the caller checked
    /// `has_free`).
    #[inline]
    pub(super) fn push_op(&mut self, sent_us: u32, op: OpId, node: u8) {
        self.push(sent_us, op, node, Kind::Op);
    }

    /// Queues a request whose reply is dropped (the caller checked `has_free`).
    #[inline]
    pub(super) fn push_dropped(&mut self, sent_us: u32) {
        self.push(sent_us, u64::from(NIL), 0, Kind::Dropped);
    }

    /// The oldest request when its reply goes to no caller as a frame: an op's, counted in the
    /// op table, or one whose reply is dropped. `None` when the queue is empty or the oldest
    /// request is a caller's. Taken off the queue with
    /// [`pop_frameless`](SlotTable::pop_frameless) once its reply is read. See
    /// `driver::dispatch`.
    #[inline]
    pub(super) fn oldest_frameless(&self) -> Option<Frameless> {
        if self.queued == 0 {
            return None;
        }
        let q = self.ring[self.head];
        let op = match q.kind {
            Kind::Op => Some((q.id, q.node)),
            Kind::Dropped => None,
            Kind::Slot if self.slots[q.id as usize].abandoned => None,
            Kind::Slot => return None,
        };
        Some(Frameless {
            sent_us: q.stamp,
            op,
            slot: if q.kind == Kind::Slot {
                q.id as u32
            } else {
                NIL
            },
        })
    }

    /// Takes off the queue the request [`oldest_frameless`](SlotTable::oldest_frameless) just
    /// returned (its reply was read), freeing its place.
    #[inline]
    pub(super) fn pop_frameless(&mut self, oldest: Frameless) {
        self.head += 1;
        if self.head == self.ring.len() {
            self.head = 0;
        }
        self.queued -= 1;
        if oldest.slot == NIL {
            self.used -= 1;
        } else {
            self.release(oldest.slot);
        }
    }

    /// Takes the oldest request off the queue: the one the next reply belongs to. A caller's
    /// slot stays in use until [`release`](SlotTable::release), unless the caller went away:
    /// then it is freed here and the reply is `Owner::Dropped`.
    #[inline]
    pub(super) fn pop_oldest(&mut self) -> Option<Popped> {
        if self.queued == 0 {
            return None;
        }
        let q = self.ring[self.head];
        self.head += 1;
        if self.head == self.ring.len() {
            self.head = 0;
        }
        self.queued -= 1;
        let owner = match q.kind {
            Kind::Slot if !self.slots[q.id as usize].abandoned => Owner::Slot(q.id as u32),
            Kind::Slot => {
                self.release(q.id as u32);
                Owner::Dropped
            }
            Kind::Op => {
                self.used -= 1;
                Owner::Op(q.id, q.node)
            }
            Kind::Dropped => {
                self.used -= 1;
                Owner::Dropped
            }
        };
        Some(Popped {
            sent_us: q.stamp,
            owner,
        })
    }

    /// Gives a slot that is off the queue back to the free stack, emptied.
    pub(super) fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        debug_assert!(slot.next == NIL, "released slot {id} is free already");
        slot.reply = None;
        slot.waker = None;
        slot.abandoned = false;
        slot.next = self.free;
        self.free = id;
        self.used -= 1;
    }

    pub(super) fn get_mut(&mut self, id: u32) -> &mut Slot {
        &mut self.slots[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(p: Option<Popped>) -> Option<u32> {
        match p?.owner {
            Owner::Slot(id) => Some(id),
            other => panic!("not a caller's request: {other:?}"),
        }
    }

    #[test]
    fn replies_go_to_the_oldest_request_and_slots_are_reused() {
        let mut t = SlotTable::new(3);
        let (a, b, c) = (t.take(0).unwrap(), t.take(0).unwrap(), t.take(0).unwrap());
        assert_eq!((t.queued(), t.used()), (3, 3));
        assert!(!t.has_free() && t.take(0).is_none(), "full: refused");
        assert_eq!(slot(t.pop_oldest()), Some(a));
        // Answered but not taken: off the queue, still in use, still not free.
        assert_eq!((t.queued(), t.used()), (2, 3));
        assert!(t.take(0).is_none());
        t.release(a);
        let d = t.take(0).unwrap();
        assert_eq!(d, a, "the freed slot is reused");
        assert_eq!(slot(t.pop_oldest()), Some(b));
        assert_eq!(slot(t.pop_oldest()), Some(c));
        assert_eq!(
            slot(t.pop_oldest()),
            Some(d),
            "a reused slot queues at the tail"
        );
        assert_eq!(t.pop_oldest(), None);
        for id in [b, c, d] {
            t.release(id);
        }
        assert_eq!((t.queued(), t.used()), (0, 0));
    }

    /// Many rounds of sends, phases, dropped requests, abandons, answers (popped as a frame or
    /// in place) and releases in shifting orders against a model `VecDeque`, the ring wrapping
    /// many times.
    #[test]
    fn the_queue_is_fifo_under_any_interleaving() {
        const CAP: usize = 8;
        let mut t = SlotTable::new(CAP);
        // Each request in flight: its stamp, its owner, and whether its caller went away.
        let mut model: std::collections::VecDeque<(u32, Owner, bool)> = Default::default();
        let mut answered = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut stamp = 0u32;
        let mut in_place = 0;
        for _ in 0..60_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            stamp = stamp.wrapping_add(1);
            let full = model.len() + answered.len() == CAP;
            assert_eq!(t.has_free(), !full);
            // What a reply to the oldest request goes to: an abandoned caller's is dropped.
            let owner = |&(_, o, abandoned): &(u32, Owner, bool)| {
                if abandoned {
                    Owner::Dropped
                } else {
                    o
                }
            };
            match seed % 8 {
                0 => match t.take(stamp) {
                    Some(id) => model.push_back((stamp, Owner::Slot(id), false)),
                    None => assert!(full),
                },
                1 if !full => {
                    // An op's whole id, its generation's high bits included.
                    let (id, node) = (seed >> 3, (seed >> 40) as u8 % 7);
                    t.push_op(stamp, id, node);
                    model.push_back((stamp, Owner::Op(id, node), false));
                }
                2 if !full => {
                    t.push_dropped(stamp);
                    model.push_back((stamp, Owner::Dropped, false));
                }
                3 => {
                    // A caller goes away while its request is in flight.
                    let callers: Vec<usize> = (0..model.len())
                        .filter(|&i| matches!(model[i], (_, Owner::Slot(_), false)))
                        .collect();
                    if let Some(&i) = callers.get((seed >> 8) as usize % callers.len().max(1)) {
                        let Owner::Slot(id) = model[i].1 else {
                            unreachable!()
                        };
                        t.get_mut(id).abandon();
                        model[i].2 = true;
                    }
                }
                4 | 5 => {
                    let got = t.pop_oldest();
                    let want = model.pop_front().map(|q| Popped {
                        sent_us: q.0 & RTT_CLOCK_MASK,
                        owner: owner(&q),
                    });
                    assert_eq!(got, want);
                    if let Some(Popped {
                        owner: Owner::Slot(id),
                        ..
                    }) = got
                    {
                        answered.push(id);
                    }
                }
                6 => {
                    // The in-place read: only a reply no caller takes as a frame.
                    let got = t.oldest_frameless();
                    let want = model.front().map(|q| (q.0 & RTT_CLOCK_MASK, owner(q)));
                    match want {
                        Some((sent_us, Owner::Op(id, node))) => {
                            assert_eq!(
                                got.map(|f| (f.sent_us, f.op)),
                                Some((sent_us, Some((id, node))))
                            );
                        }
                        Some((sent_us, Owner::Dropped)) => {
                            assert_eq!(got.map(|f| (f.sent_us, f.op)), Some((sent_us, None)));
                        }
                        Some((_, Owner::Slot(_))) | None => assert_eq!(got, None),
                    }
                    if let Some(f) = got {
                        t.pop_frameless(f);
                        model.pop_front();
                        in_place += 1;
                    }
                }
                _ => {
                    if !answered.is_empty() {
                        let i = (seed >> 8) as usize % answered.len();
                        t.release(answered.swap_remove(i));
                    }
                }
            }
            assert_eq!(t.queued(), model.len());
            let slots_in_flight = model
                .iter()
                .filter(|(_, o, _)| matches!(o, Owner::Slot(_)))
                .count();
            let slotless = model.len() - slots_in_flight;
            assert_eq!(t.used(), slots_in_flight + answered.len() + slotless);
        }
        assert!(in_place > 1_000, "{in_place} replies read in place");
    }

    /// What a request in flight costs a connection, the figure `ConnectionConfig`'s docs give:
    /// a slot (72 bytes) and a queue entry (16: an op's id is 64 bits, see `ops::OpId`). A
    /// lock phase's request takes only the entry.
    #[test]
    fn a_request_takes_88_bytes_at_most() {
        assert_eq!(std::mem::size_of::<Slot>(), 72);
        assert_eq!(std::mem::size_of::<Queued>(), 16);
    }

    #[test]
    fn an_abandoned_request_is_dropped_and_its_slot_freed_at_its_reply() {
        let mut t = SlotTable::new(2);
        let id = t.take(RTT_CLOCK_MASK).unwrap();
        assert_eq!(
            t.oldest_frameless(),
            None,
            "a caller's request takes a frame"
        );
        t.get_mut(id).abandon();
        let oldest = t.oldest_frameless().expect("dropped");
        assert_eq!((oldest.sent_us, oldest.op), (RTT_CLOCK_MASK, None));
        t.pop_frameless(oldest);
        assert_eq!((t.queued(), t.used()), (0, 0), "freed at its reply");
        let id = t.take(RTT_CLOCK_MASK).unwrap();
        t.get_mut(id).abandon();
        assert_eq!(
            t.pop_oldest(),
            Some(Popped {
                sent_us: RTT_CLOCK_MASK,
                owner: Owner::Dropped
            }),
            "popped as any request: dropped too"
        );
        assert_eq!(t.used(), 0, "freed at its reply");
        let again = t.take(5).unwrap();
        assert_eq!(again, id);
        assert!(!t.get_mut(again).abandoned, "cleared on reuse");
        t.push_op(6, 9, 2);
        assert!(!t.has_free());
        assert_eq!(slot(t.pop_oldest()), Some(again));
        assert_eq!(t.oldest_frameless().map(|f| f.op), Some(Some((9, 2))));
        assert_eq!(
            t.pop_oldest().map(|p| (p.sent_us, p.owner)),
            Some((6, Owner::Op(9, 2)))
        );
        assert_eq!(t.used(), 1, "the slot waits for its future");
        t.release(again);
        t.push_op(7, 10, 1);
        t.push_dropped(8);
        assert!(!t.has_free());
        let op = t.oldest_frameless().unwrap();
        assert_eq!((op.sent_us, op.op), (7, Some((10, 1))));
        t.pop_frameless(op);
        let dropped = t.oldest_frameless().unwrap();
        assert_eq!((dropped.sent_us, dropped.op), (8, None));
        t.pop_frameless(dropped);
        assert_eq!((t.queued(), t.used()), (0, 0));
    }
}
