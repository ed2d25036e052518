//! The slot table: every request's place, in one array allocated when the connection starts.
//!
//! A request holds a slot from `send` until its future takes the reply, or, when its caller went
//! away (*abandoned*), until its reply has been read and dropped. The slots are linked through
//! their `next` field into two lists that share the array:
//!
//! ```text
//!  free list (a stack)      in-flight queue (FIFO, oldest at the head)
//!  free -> 4 -> 0 -> NIL    head -> 2 -> 5 -> 1 <- tail
//!
//!  free --take()--> queued --pop_oldest()--> answered --release()--> free
//!                                            (reply waits for its future)
//! ```
//!
//! A slot is on at most one list: free, queued, or answered but not yet taken by its future (on
//! neither). The table never grows: when every slot is in use, [`SlotTable::take`] says no and
//! the request is refused (`Overloaded`) before anything is written. So the in-flight queue and
//! the free list cost no memory of their own and cannot grow at a moment nobody chose.

use std::task::Waker;

use super::stats::RTT_CLOCK_MASK;
use crate::error::Error;
use crate::resp::Frame;

/// The bit of a slot's `stamp` that says its caller went away.
const ABANDONED: u32 = !RTT_CLOCK_MASK;

/// The end of a list.
const NIL: u32 = u32::MAX;

/// The most slots one table can have: ids are `u32` and `NIL` is taken. The config clamps
/// `max_in_flight` far below this anyway.
pub(super) const MAX_SLOTS: usize = (u32::MAX - 1) as usize;

/// One request's place: its reply once it came, and who to wake.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) reply: Option<Result<Frame, Error>>,
    pub(super) waker: Option<Waker>,
    /// When the request was queued, on the connection's 31-bit microsecond clock (see
    /// `stats::clock_us`), for its round trip; the top bit is the *abandoned* flag (the caller
    /// dropped its `ReplyFuture`: the reply is read and thrown away). Packed into one `u32` so
    /// that a slot stays 80 bytes: see `a_slot_is_80_bytes`.
    stamp: u32,
    /// The next slot on the list this one is on (free list or queue); `NIL` at the end.
    next: u32,
    /// The lock phase this request belongs to (see `ops.rs`), `NIL` for none: the driver then
    /// counts the reply in the op instead of keeping it here.
    op: u32,
    /// The request's node in that op.
    node: u8,
}

impl Slot {
    /// The caller dropped its `ReplyFuture`: the reply is read and thrown away.
    #[inline]
    pub(super) fn abandoned(&self) -> bool {
        self.stamp & ABANDONED != 0
    }

    /// Marks the request as abandoned by its caller.
    #[inline]
    pub(super) fn abandon(&mut self) {
        self.stamp |= ABANDONED;
    }

    /// When the request was queued (see `stamp`).
    #[inline]
    pub(super) fn sent_us(&self) -> u32 {
        self.stamp & RTT_CLOCK_MASK
    }

    /// Makes the request part of op `op`, as node `node`'s (see `ops.rs`).
    #[inline]
    pub(super) fn belong_to(&mut self, op: u32, node: u8) {
        self.op = op;
        self.node = node;
    }

    /// The op and node this request counts for, if it is part of an op.
    #[inline]
    pub(super) fn op(&self) -> Option<(u32, u8)> {
        (self.op != NIL).then_some((self.op, self.node))
    }
}

/// Every slot of one connection, with the free list and the in-flight queue threaded through
/// them. See the module docs.
#[derive(Debug)]
pub(super) struct SlotTable {
    slots: Box<[Slot]>,
    /// Top of the free stack.
    free: u32,
    /// Oldest and newest request in flight.
    head: u32,
    tail: u32,
    /// Requests in the queue.
    queued: usize,
    /// Slots not on the free list (queued, or answered and not yet taken).
    used: usize,
}

impl SlotTable {
    /// A table of `capacity` slots, all free: the only allocation it ever makes.
    pub(super) fn new(capacity: usize) -> SlotTable {
        assert!(
            (1..=MAX_SLOTS).contains(&capacity),
            "slot table capacity {capacity}"
        );
        let slots: Box<[Slot]> = (0..capacity)
            .map(|i| Slot {
                reply: None,
                waker: None,
                stamp: 0,
                next: if i + 1 < capacity { i as u32 + 1 } else { NIL },
                op: NIL,
                node: 0,
            })
            .collect();
        SlotTable {
            slots,
            free: 0,
            head: NIL,
            tail: NIL,
            queued: 0,
            used: 0,
        }
    }

    /// True when [`take`](SlotTable::take) would get a slot.
    pub(super) fn has_free(&self) -> bool {
        self.free != NIL
    }

    /// Requests in the in-flight queue.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Slots in use: queued, or answered and waiting for their future.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// Takes a free slot and puts it at the tail of the in-flight queue, stamped with its send
    /// time (`sent_us`, see [`Slot::sent_us`]); `None` when every slot is in use.
    pub(super) fn take(&mut self, sent_us: u32) -> Option<u32> {
        let id = self.free;
        if id == NIL {
            return None;
        }
        let slot = &mut self.slots[id as usize];
        self.free = slot.next;
        slot.next = NIL;
        slot.stamp = sent_us & RTT_CLOCK_MASK;
        if self.tail == NIL {
            self.head = id;
        } else {
            self.slots[self.tail as usize].next = id;
        }
        self.tail = id;
        self.queued += 1;
        self.used += 1;
        Some(id)
    }

    /// The oldest request on the queue (the one the next reply belongs to) when its reply goes
    /// to no caller as a frame: an op's, counted in the op table (`Some((op, node))`), or an
    /// abandoned one's, dropped (`None`). See `driver::dispatch`.
    pub(super) fn oldest_frameless(&self) -> Option<(u32, Option<(u32, u8)>)> {
        let id = (self.head != NIL).then_some(self.head)?;
        let slot = &self.slots[id as usize];
        let op = slot.op();
        (op.is_some() || slot.abandoned()).then_some((id, op))
    }

    /// Takes the oldest request off the queue: the one the next reply belongs to. The slot stays
    /// in use until [`release`](SlotTable::release).
    pub(super) fn pop_oldest(&mut self) -> Option<u32> {
        let id = self.head;
        if id == NIL {
            return None;
        }
        let slot = &mut self.slots[id as usize];
        self.head = slot.next;
        slot.next = NIL;
        if self.head == NIL {
            self.tail = NIL;
        }
        self.queued -= 1;
        Some(id)
    }

    /// Gives a slot that is off the queue back to the free list, emptied.
    pub(super) fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        debug_assert!(slot.next == NIL, "released slot {id} is still on a list");
        slot.reply = None;
        slot.waker = None;
        slot.stamp = 0;
        slot.op = NIL;
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

    #[test]
    fn replies_go_to_the_oldest_request_and_slots_are_reused() {
        let mut t = SlotTable::new(3);
        let (a, b, c) = (t.take(0).unwrap(), t.take(0).unwrap(), t.take(0).unwrap());
        assert_eq!((t.queued(), t.used()), (3, 3));
        assert!(!t.has_free() && t.take(0).is_none(), "full: refused");
        assert_eq!(t.pop_oldest(), Some(a));
        // Answered but not taken: off the queue, still in use, still not free.
        assert_eq!((t.queued(), t.used()), (2, 3));
        assert!(t.take(0).is_none());
        t.release(a);
        let d = t.take(0).unwrap();
        assert_eq!(d, a, "the freed slot is reused");
        assert_eq!(t.pop_oldest(), Some(b));
        assert_eq!(t.pop_oldest(), Some(c));
        assert_eq!(t.pop_oldest(), Some(d), "a reused slot queues at the tail");
        assert_eq!(t.pop_oldest(), None);
        for id in [b, c, d] {
            t.release(id);
        }
        assert_eq!((t.queued(), t.used()), (0, 0));
    }

    /// Many rounds of take / answer / release in shifting orders against a model `VecDeque`.
    #[test]
    fn the_queue_is_fifo_under_any_interleaving() {
        let mut t = SlotTable::new(8);
        let mut model = std::collections::VecDeque::new();
        let mut answered = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 3 {
                0 => match t.take(0) {
                    Some(id) => model.push_back(id),
                    None => assert_eq!(model.len() + answered.len(), 8),
                },
                1 => {
                    let got = t.pop_oldest();
                    assert_eq!(got, model.pop_front());
                    answered.extend(got);
                }
                _ => {
                    if !answered.is_empty() {
                        let i = (seed >> 8) as usize % answered.len();
                        t.release(answered.swap_remove(i));
                    }
                }
            }
            assert_eq!(t.queued(), model.len());
            assert_eq!(t.used(), model.len() + answered.len());
        }
    }

    /// The memory figure `ConnectionConfig`'s docs give per slot. The round-trip clock shares
    /// a `u32` with the abandoned flag rather than adding a field: an `Instant` (16 bytes) would
    /// add 16 bytes a slot, for no better a measurement (31 bits of microseconds wrap after
    /// 35.8 minutes, far past any round trip a caller waits for). The op a request counts for
    /// (`op`, `node`: see `ops.rs`) took a slot from 72 to 80 bytes, 8 KiB per connection at
    /// the default 1,024 slots; an enum of the waker and the op is 24 bytes, no smaller.
    #[test]
    fn a_slot_is_80_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    #[test]
    fn the_abandoned_flag_and_the_send_time_share_a_word() {
        let mut t = SlotTable::new(2);
        let id = t.take(RTT_CLOCK_MASK).unwrap();
        let slot = t.get_mut(id);
        assert_eq!((slot.sent_us(), slot.abandoned()), (RTT_CLOCK_MASK, false));
        slot.abandon();
        assert_eq!((slot.sent_us(), slot.abandoned()), (RTT_CLOCK_MASK, true));
        assert_eq!(t.pop_oldest(), Some(id));
        t.release(id);
        let again = t.take(5).unwrap();
        assert_eq!(again, id);
        let slot = t.get_mut(again);
        assert_eq!(
            (slot.sent_us(), slot.abandoned()),
            (5, false),
            "cleared on reuse"
        );
    }
}
