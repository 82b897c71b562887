//! The timer heap: `(deadline, sequence)` in a binary heap with lazy deletion.
//!
//! Cancelling a timer removes its entry from the slab; its heap node stays behind and is skipped
//! when it surfaces (its slot is empty or holds a newer sequence number). When stale nodes
//! outnumber live ones three to one the heap is rebuilt, so a workload that arms and cancels
//! timeouts that never fire keeps the heap proportional to the live timers.
//!
//! Equal deadlines fire in scheduling order because the sequence number breaks ties. All timer
//! users (`sleep`, `call_later`, `call_at`, `timeout`, `wait_for`) sit on this one interface, so a
//! wheel can replace it if profiles ask.
//!
//! Moving a timer to a *later* deadline (a server's idle or header timeout, pushed back at every
//! request) touches no heap node: the entry records the new deadline, and when its old node
//! surfaces it goes back in at the new one. A timer pushed back at every request then costs a
//! heap push and pop once per timeout period instead of once per request (hyper's header-read
//! timer at 1 000 keep-alive connections spent about 3 % of the server's instructions in this
//! heap's pops before).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Waker;
use std::time::Instant;

use slab::Slab;

use crate::callback::CallbackPtr;

/// Identifies one armed timer: the heap it lives in, its slab slot and the sequence number it
/// was armed with.
///
/// Why the heap id: keys reach the heap through the thread's *current* runtime (a `Sleep` or a
/// `CallbackHandle` only stores the key), and several runtimes may share a thread one after the
/// other (or one inside another's task). Slots and sequence numbers start from zero in every
/// heap, so without the id a key from runtime B, cancelled while runtime A runs, would match and
/// disarm an unrelated timer of A.
///
/// Sixteen bytes, and `Option<TimerKey>` too (the heap id is never zero): a sleep's drop reads
/// it alone, and sixteen bytes at the start of the sleep's box sit in one cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    seq: u64,
    slot: u32,
    heap: NonZeroU32,
}

/// Source of [`TimerHeap::id`]s (zero is skipped). Wrapping after 2^32 heaps only matters if
/// a key outlives four billion runtimes created after its own, which we accept.
static NEXT_HEAP_ID: AtomicU32 = AtomicU32::new(1);

/// What happens when a timer expires.
pub(crate) enum TimerAction {
    /// Wake a task suspended in `sleep`/`timeout`.
    Wake(Waker),
    /// Move a `call_later`/`call_at` callback to the ready queue.
    Callback(CallbackPtr),
}

struct Entry {
    /// The sequence number of the timer's current arming (its key's); orders it among equal
    /// deadlines.
    seq: u64,
    /// When it fires.
    deadline: Instant,
    /// The sequence number and deadline of its one live heap node; the node's deadline may be
    /// earlier than `deadline` (moved later without touching the heap), never later.
    node_seq: u64,
    node_deadline: Instant,
    action: TimerAction,
}

pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    entries: Slab<Entry>,
    next_seq: u64,
    stale: usize,
    /// Tells this heap's keys from another runtime's (see [`TimerKey`]).
    id: NonZeroU32,
}

impl TimerHeap {
    pub(crate) fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            entries: Slab::new(),
            next_seq: 0,
            stale: 0,
            id: NonZeroU32::new(NEXT_HEAP_ID.fetch_add(1, Ordering::Relaxed))
                .unwrap_or(NonZeroU32::MIN),
        }
    }

    /// Whether `key` was armed on this heap and is still armed.
    #[inline]
    pub(crate) fn is_armed(&self, key: TimerKey) -> bool {
        self.owns(key)
    }

    /// Whether `key` was armed on this heap and is still armed.
    #[inline]
    fn owns(&self, key: TimerKey) -> bool {
        key.heap == self.id && self.is_live(key.seq, key.slot as usize)
    }

    /// Arms a timer.
    #[inline]
    pub(crate) fn insert(&mut self, deadline: Instant, action: TimerAction) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.entries.insert(Entry {
            seq,
            deadline,
            node_seq: seq,
            node_deadline: deadline,
            action,
        });
        self.heap.push(Reverse((deadline, seq, slot)));
        TimerKey {
            seq,
            // Each entry takes 72 bytes: the allocator fails long before 2^32 of them.
            slot: u32::try_from(slot).expect("fewer than 2^32 timers"),
            heap: self.id,
        }
    }

    /// Replaces the waker of an armed `Wake` timer (a task polled with a new waker). Returns
    /// whether the timer is still armed here (false once fired or cancelled, or for another
    /// heap's key), so callers learn both with one lookup, and the waker replaced, for the
    /// caller to drop once it no longer borrows the heap (a waker's drop is foreign code).
    #[inline]
    pub(crate) fn update_waker(&mut self, key: TimerKey, waker: &Waker) -> (bool, Option<Waker>) {
        if !self.owns(key) {
            return (false, None);
        }
        match &mut self.entries[key.slot as usize].action {
            TimerAction::Wake(w) if !w.will_wake(waker) => {
                (true, Some(std::mem::replace(w, waker.clone())))
            }
            _ => (true, None),
        }
    }

    /// Moves an armed timer to `deadline`, keeping its slot and its action (no allocation).
    /// Returns the timer's new key, or `None` if `key` is not armed here.
    ///
    /// The timer takes a new sequence number, so among equal deadlines it fires after the
    /// timers armed before the move, as if it had been armed anew. A later deadline than its
    /// heap node's is only recorded (the node moves when it surfaces); an earlier one pushes a
    /// new node and the old one goes stale.
    #[cfg_attr(not(any(test, feature = "hyper")), allow(dead_code))] // used by `compat::hyper`
    pub(crate) fn reschedule(&mut self, key: TimerKey, deadline: Instant) -> Option<TimerKey> {
        if !self.owns(key) {
            return None;
        }
        Some(self.rearm(key, deadline))
    }

    /// Moves the live timer `key` to `deadline` with a new sequence number (a heap node only
    /// if earlier than its node's); its new key.
    #[inline]
    fn rearm(&mut self, key: TimerKey, deadline: Instant) -> TimerKey {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = &mut self.entries[key.slot as usize];
        entry.seq = seq;
        entry.deadline = deadline;
        if deadline < entry.node_deadline {
            entry.node_seq = seq;
            entry.node_deadline = deadline;
            self.heap.push(Reverse((deadline, seq, key.slot as usize)));
            self.stale += 1;
            if self.too_stale() {
                self.compact();
            }
        }
        TimerKey { seq, ..key }
    }

    /// Moves the armed wake timer `key` to `deadline` ([`reschedule`](Self::reschedule)) and
    /// points it at `waker`: its new key and the waker replaced (for the caller to drop
    /// outside the borrow). `None` if `key` is not armed here, or is a callback's.
    #[cfg_attr(not(any(test, feature = "hyper")), allow(dead_code))] // used by `compat::hyper`
    #[inline]
    pub(crate) fn adopt(
        &mut self,
        key: TimerKey,
        deadline: Instant,
        waker: &Waker,
    ) -> Option<(TimerKey, Option<Waker>)> {
        if key.heap != self.id {
            return None;
        }
        let entry = self
            .entries
            .get_mut(key.slot as usize)
            .filter(|e| e.seq == key.seq)?;
        let TimerAction::Wake(w) = &mut entry.action else {
            return None;
        };
        let old = (!w.will_wake(waker)).then(|| std::mem::replace(w, waker.clone()));
        Some((self.rearm(key, deadline), old))
    }

    /// Disarms a timer; returns its action if it was still armed.
    #[inline]
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<TimerAction> {
        if !self.owns(key) {
            return None;
        }
        let entry = self.entries.remove(key.slot as usize);
        self.stale += 1;
        if self.too_stale() {
            self.compact();
        }
        Some(entry.action)
    }

    /// Whether stale nodes are worth a rebuild: more than three per live timer. A rebuild
    /// costs about as much per node as it keeps, so this spends a third of what a rebuild at
    /// one stale node per live timer spent per cancel (hyper's header timer, armed and
    /// cancelled at every request of 1 000 keep-alive connections: about 80 instructions
    /// per request at one per live timer), for at most four heap nodes per live timer.
    #[inline]
    fn too_stale(&self) -> bool {
        self.stale > 64 && self.stale > 3 * self.entries.len()
    }

    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        let entries = &self.entries;
        self.heap.retain(|Reverse((_, seq, slot))| {
            entries.get(*slot).is_some_and(|e| e.node_seq == *seq)
        });
        self.stale = 0;
    }

    /// Whether `key`'s arming is the timer's current one.
    #[inline]
    fn is_live(&self, seq: u64, slot: usize) -> bool {
        self.entries.get(slot).is_some_and(|e| e.seq == seq)
    }

    /// What the heap's top node is: `None` when the heap is empty, else whether it is the
    /// live node of a timer whose deadline is the node's (`Some(Ok(deadline))`); a stale node
    /// is popped, and the node of a timer moved later goes back in at its deadline
    /// (`Some(Err(()))`: look again).
    fn settle_top(&mut self) -> Option<Result<Instant, ()>> {
        let Reverse((deadline, seq, slot)) = *self.heap.peek()?;
        match self.entries.get_mut(slot) {
            Some(e) if e.node_seq == seq => {
                if e.deadline == deadline {
                    return Some(Ok(deadline));
                }
                // Moved later: the node follows now, with the timer's current sequence number
                // (its place among equal deadlines is that of its last arming).
                e.node_seq = e.seq;
                e.node_deadline = e.deadline;
                let node = Reverse((e.deadline, e.seq, slot));
                // `PeekMut` replaces the top and sifts it down once.
                *self.heap.peek_mut().expect("peeked") = node;
            }
            _ => {
                self.heap.pop();
                self.stale = self.stale.saturating_sub(1);
            }
        }
        Some(Err(()))
    }

    /// The earliest live deadline, dropping stale heap nodes on the way.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        loop {
            if let Ok(deadline) = self.settle_top()? {
                return Some(deadline);
            }
        }
    }

    /// How long the loop may park: the top node's deadline while it lies ahead of `now`, even
    /// if that node is stale (its timer cancelled or moved later), else the earliest live
    /// deadline as [`next_deadline`](Self::next_deadline) finds it. A bound, not the exact next
    /// timer: a stale top can wake an idle loop early once (and is popped then, being due),
    /// but a timer cancelled long before it is due costs no pop at every park. hyper's
    /// header-read timer, armed and cancelled at every request, was popped here once per
    /// request (a sift-down of the whole heap, 3.6 % of an HTTP server's instructions);
    /// [`cancel`](Self::cancel)'s compaction removes such nodes in bulk instead. With no
    /// timer armed the heap is emptied and there is no bound.
    pub(crate) fn park_deadline(&mut self, now: Instant) -> Option<Instant> {
        if self.entries.is_empty() {
            if !self.heap.is_empty() {
                self.heap.clear();
                self.stale = 0;
            }
            return None;
        }
        let Reverse((deadline, _, _)) = *self.heap.peek()?;
        if deadline > now {
            return Some(deadline);
        }
        self.next_deadline()
    }

    /// Moves every timer whose deadline is at or before `now` into `out`, in deadline order
    /// (ties in arming order).
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<TimerAction>) {
        while let Some(Reverse((deadline, _, slot))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            if self.settle_top() == Some(Ok(deadline)) {
                self.heap.pop();
                out.push(self.entries.remove(slot).action);
            }
        }
    }

    /// Heap nodes, live and stale.
    #[cfg(test)]
    pub(crate) fn nodes(&self) -> usize {
        self.heap.len()
    }

    /// Number of armed timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Disarms everything (runtime shutdown).
    pub(crate) fn drain(&mut self) -> Vec<TimerAction> {
        self.heap.clear();
        self.stale = 0;
        self.entries.drain().map(|e| e.action).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn noop() -> TimerAction {
        // Not `Waker::noop()`: that needs Rust 1.85, above our MSRV.
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        TimerAction::Wake(Waker::from(std::sync::Arc::new(Noop)))
    }

    #[test]
    fn equal_deadlines_expire_in_arming_order_and_cancelled_ones_never() {
        let mut heap = TimerHeap::new();
        let t0 = Instant::now();
        let d = t0 + Duration::from_millis(5);
        let a = heap.insert(d, noop());
        let b = heap.insert(d, noop());
        let c = heap.insert(t0 + Duration::from_millis(1), noop());
        assert!(heap.cancel(b).is_some());
        assert!(heap.cancel(b).is_none(), "cancel is idempotent");
        assert_eq!(heap.next_deadline(), Some(t0 + Duration::from_millis(1)));
        let mut out = Vec::new();
        heap.expire(t0, &mut out);
        assert!(out.is_empty(), "nothing is due before its deadline");
        heap.expire(d, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(heap.len(), 0);
        assert!(heap.cancel(a).is_none() && heap.cancel(c).is_none());
    }

    /// Deadlines keep their precision (the park bound is the instant armed, to the
    /// nanosecond) and their order however far in the past (years before the heap was made),
    /// and one a millennium ahead does not fire.
    #[test]
    fn deadlines_keep_their_order_and_precision_far_in_the_past_and_ahead() {
        let mut heap = TimerHeap::new();
        let now = Instant::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        let odd = now + Duration::from_nanos(1_234_567_891);
        heap.insert(odd, TimerAction::Wake(marker(0)));
        assert_eq!(heap.park_deadline(now), Some(odd), "to the nanosecond");
        let mut out = Vec::new();
        heap.expire(odd - Duration::from_nanos(1), &mut out);
        assert!(out.is_empty(), "not a nanosecond early");
        heap.expire(odd, &mut out);
        assert_eq!(marker_ids(&out), [0]);
        out.clear();
        // Long past, armed newest first: they fire oldest first all the same.
        let (Some(ten), Some(twenty)) = (now.checked_sub(10 * year), now.checked_sub(20 * year))
        else {
            return; // a clock that cannot go back that far (not Linux's)
        };
        heap.insert(ten, TimerAction::Wake(marker(10)));
        heap.insert(twenty, TimerAction::Wake(marker(20)));
        heap.insert(now + 1000 * year, TimerAction::Wake(marker(1000)));
        heap.expire(now, &mut out);
        assert_eq!(marker_ids(&out), [20, 10]);
        out.clear();
        heap.expire(now + 10 * year, &mut out);
        assert!(out.is_empty(), "a millennium ahead is not due in a decade");
        assert_eq!(heap.len(), 1);
    }

    #[test]
    fn the_park_bound_is_the_top_node_stale_or_not_while_it_lies_ahead() {
        let mut heap = TimerHeap::new();
        let now = Instant::now();
        let early = heap.insert(now + Duration::from_secs(1), noop());
        let _late = heap.insert(now + Duration::from_secs(2), noop());
        heap.cancel(early);
        // Ahead: the stale top bounds the park, and nothing is popped.
        assert_eq!(heap.park_deadline(now), Some(now + Duration::from_secs(1)));
        assert_eq!(heap.heap.len(), 2);
        // Due: settled as `next_deadline` does, the stale node popped.
        assert_eq!(
            heap.park_deadline(now + Duration::from_secs(1)),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(heap.heap.len(), 1);
        assert_eq!(heap.next_deadline(), Some(now + Duration::from_secs(2)));
    }

    #[test]
    fn with_no_timer_armed_there_is_no_park_bound_and_no_node_left() {
        let mut heap = TimerHeap::new();
        let now = Instant::now();
        let keys: Vec<_> = (1..=10)
            .map(|i| heap.insert(now + Duration::from_secs(i), noop()))
            .collect();
        for k in keys {
            heap.cancel(k);
        }
        assert_eq!(heap.park_deadline(now), None);
        assert!(heap.heap.is_empty());
        assert_eq!(heap.stale, 0);
    }

    #[test]
    fn timers_armed_and_cancelled_forever_keep_the_heap_bounded_without_parks() {
        // hyper's header timer: one live timer per connection, a new one armed and the old
        // one cancelled at every request, no park in between to pop them.
        let mut heap = TimerHeap::new();
        let now = Instant::now();
        let mut live: Vec<_> = (0..100)
            .map(|i| heap.insert(now + Duration::from_millis(i), noop()))
            .collect();
        for round in 0..10_000u64 {
            let i = (round % 100) as usize;
            heap.cancel(live[i]);
            live[i] = heap.insert(now + Duration::from_millis(100 + round), noop());
            assert!(heap.heap.len() <= 4 * 100 + 65, "{}", heap.heap.len());
        }
        assert_eq!(heap.len(), 100);
    }

    #[test]
    fn stale_nodes_are_compacted() {
        let mut heap = TimerHeap::new();
        let d = Instant::now() + Duration::from_secs(60);
        let keys: Vec<_> = (0..1000).map(|_| heap.insert(d, noop())).collect();
        for k in &keys[..990] {
            heap.cancel(*k);
        }
        assert!(heap.heap.len() < 200, "heap kept {} nodes", heap.heap.len());
        assert_eq!(heap.len(), 10);
    }

    #[test]
    fn reused_slot_is_not_cancelled_by_a_stale_key() {
        let mut heap = TimerHeap::new();
        let d = Instant::now();
        let old = heap.insert(d, noop());
        heap.cancel(old);
        let new = heap.insert(d, noop());
        assert_eq!(old.slot, new.slot);
        assert!(heap.cancel(old).is_none());
        assert_eq!(heap.len(), 1);
    }

    #[test]
    fn a_rescheduled_timer_fires_once_at_its_new_deadline_and_its_old_key_is_dead() {
        let mut heap = TimerHeap::new();
        let t0 = Instant::now();
        let early = t0 + Duration::from_millis(1);
        let late = t0 + Duration::from_millis(9);
        let a = heap.insert(early, noop());
        let b = heap.insert(late, noop());
        let moved = heap.reschedule(a, late).expect("armed");
        assert_eq!(moved.slot, a.slot, "the slot is kept");
        assert!(heap.reschedule(a, early).is_none(), "the old key is stale");
        assert!(heap.cancel(a).is_none());
        assert_eq!(heap.next_deadline(), Some(late));
        let mut out = Vec::new();
        heap.expire(early, &mut out);
        assert!(out.is_empty(), "nothing fires at the old deadline");
        heap.expire(late, &mut out);
        assert_eq!(out.len(), 2, "both fire once, at the new deadline");
        assert_eq!(heap.len(), 0);
        assert!(heap.reschedule(moved, late).is_none() && heap.cancel(b).is_none());
    }

    #[test]
    fn rescheduling_many_times_keeps_the_heap_small() {
        let mut heap = TimerHeap::new();
        let t0 = Instant::now();
        let mut key = heap.insert(t0, noop());
        for i in 1..10_000u64 {
            key = heap.reschedule(key, t0 + Duration::from_nanos(i)).unwrap();
        }
        assert!(heap.heap.len() < 200, "heap kept {} nodes", heap.heap.len());
        assert_eq!(heap.len(), 1);
    }

    #[test]
    fn a_key_from_another_heap_never_matches() {
        let mut a = TimerHeap::new();
        let mut b = TimerHeap::new();
        let d = Instant::now();
        let ka = a.insert(d, noop());
        let kb = b.insert(d, noop());
        assert_eq!(
            (ka.slot, ka.seq),
            (kb.slot, kb.seq),
            "same slot and sequence"
        );
        assert!(a.cancel(kb).is_none());
        assert!(a.reschedule(kb, d).is_none());
        assert_eq!(a.len(), 1);
        assert!(b.cancel(kb).is_some());
    }

    #[test]
    fn moving_a_timer_later_touches_no_heap_node_and_keeps_arming_order() {
        let mut heap = TimerHeap::new();
        let t0 = Instant::now();
        let mut a = heap.insert(t0 + Duration::from_millis(1), TimerAction::Wake(marker(1)));
        for i in 2..1000u64 {
            a = heap.reschedule(a, t0 + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(heap.heap.len(), 1, "one node for the moved timer");
        let end = t0 + Duration::from_millis(999);
        // Armed after the last move, at the same deadline: fires after it.
        heap.insert(end, TimerAction::Wake(marker(2)));
        // Moved earlier again: a new node.
        let c = heap.insert(end + Duration::from_millis(5), TimerAction::Wake(marker(3)));
        heap.reschedule(c, end).unwrap();
        assert_eq!(
            heap.next_deadline(),
            Some(end),
            "the old node moved when it surfaced"
        );
        let mut out = Vec::new();
        heap.expire(end - Duration::from_millis(1), &mut out);
        assert!(
            out.is_empty(),
            "nothing fires before the deadline it was moved to"
        );
        heap.expire(end, &mut out);
        let order = marker_ids(&out);
        assert_eq!(order, [1, 2, 3], "equal deadlines in arming order");
        assert_eq!(heap.len(), 0);
        assert_eq!(heap.next_deadline(), None);
    }

    #[test]
    fn adopt_moves_a_wake_timer_and_its_waker_and_refuses_the_rest() {
        let mut heap = TimerHeap::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Later: no new node; the new waker fires, at the new deadline, after timers armed
        // before the move at the same deadline.
        let a = heap.insert(at(1), TimerAction::Wake(marker(1)));
        let b = heap.insert(at(9), TimerAction::Wake(marker(2)));
        let (moved, old) = heap.adopt(a, at(9), &marker(3)).expect("armed");
        assert!(
            old.is_some_and(|w| w.data() as usize == 1),
            "the old waker is handed back"
        );
        assert_eq!(heap.heap.len(), 2, "moved later without a node");
        assert!(
            heap.adopt(a, at(2), &marker(3)).is_none(),
            "the old key is stale"
        );
        let mut out = Vec::new();
        heap.expire(at(8), &mut out);
        assert!(out.is_empty(), "nothing fires at the old deadline");
        heap.expire(at(9), &mut out);
        let order = marker_ids(&out);
        assert_eq!(order, [2, 3]);
        // Earlier: a new node, and it fires there.
        let c = heap.insert(at(50), TimerAction::Wake(marker(4)));
        let (moved_c, same) = heap.adopt(c, at(20), &marker(4)).expect("armed");
        assert!(same.is_none(), "the same waker is kept, not replaced");
        assert_eq!(heap.next_deadline(), Some(at(20)));
        // Refused: a fired or cancelled key, another heap's key.
        assert!(heap.adopt(moved, at(30), &marker(5)).is_none(), "fired");
        assert!(heap.cancel(b).is_none());
        let other = TimerHeap::new().insert(at(5), TimerAction::Wake(marker(6)));
        assert!(
            heap.adopt(other, at(30), &marker(6)).is_none(),
            "another heap's"
        );
        // Refused: a callback's timer (it has no waker to point elsewhere).
        let cb = heap.insert(
            at(40),
            TimerAction::Callback(crate::callback::new_callback(|| {})),
        );
        assert!(heap.adopt(cb, at(45), &marker(7)).is_none(), "a callback's");
        assert!(heap.cancel(cb).is_some(), "left armed as it was");
        assert!(heap.cancel(moved_c).is_some());
        assert_eq!(heap.len(), 0);
    }

    /// The ids of the `marker` wakers of fired actions, in order.
    fn marker_ids(fired: &[TimerAction]) -> Vec<usize> {
        fired
            .iter()
            .map(|a| match a {
                TimerAction::Wake(w) => w.data() as usize,
                TimerAction::Callback(_) => unreachable!(),
            })
            .collect()
    }

    /// A waker whose data pointer is `id`, to tell the fired actions apart.
    fn marker(id: usize) -> Waker {
        use std::task::{RawWaker, RawWakerVTable};
        fn clone(p: *const ()) -> RawWaker {
            RawWaker::new(p, &VTABLE)
        }
        fn noop(_: *const ()) {}
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
        // SAFETY: the vtable's functions ignore the data pointer, which is never dereferenced.
        unsafe { Waker::from_raw(RawWaker::new(id as *const (), &VTABLE)) }
    }
}
