//! The FIFO wait list every primitive in this module queues its waiters on.
//!
//! # The life of a waiter
//!
//! ```text
//!  push_back ──▶ Queued ──pop_front (the primitive hands it something)──▶ Dequeued ──remove──▶ gone
//!                  └──────────remove (the waiter gave up: cancelled or dropped)──────────────▶ gone
//! ```
//!
//! * **Queued**: linked into the FIFO; its waker is refreshed on every pending poll.
//! * **Dequeued**: unlinked by the primitive, which at the same moment wrote what the waiter was
//!   waiting for into the node's `data` (an item, or nothing: the grant itself is the news) and
//!   took its waker to wake it. The node stays in the slab until the waiter's future removes it,
//!   so the future can still read `data` when it is next polled, or hand it on when it is dropped
//!   without being polled again.
//!
//! Only the future that pushed a node removes it ([`WaiterKey`] is neither `Clone` nor `Copy`),
//! so a slab index is never reused while a key to it is alive.
//!
//! The list never wakes anyone itself: [`pop_front`](WaitList::pop_front) hands the waker back so
//! the caller can release its borrow or lock first and wake afterwards; a waker may run foreign
//! code, which must never find our state borrowed.

use std::task::Waker;

use slab::Slab;

/// The handle a waiting future keeps to its node.
#[derive(Debug)]
pub(crate) struct WaiterKey(usize);

#[derive(Debug)]
struct Node<D> {
    data: D,
    waker: Option<Waker>,
    /// Linked into the FIFO (not yet dequeued by the primitive).
    queued: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A FIFO of waiters, each carrying `D` (what it brings, or what it was handed); O(1) push, pop
/// and removal from the middle.
#[derive(Debug)]
pub(crate) struct WaitList<D> {
    nodes: Slab<Node<D>>,
    head: Option<usize>,
    tail: Option<usize>,
    /// How many nodes are queued (linked), as opposed to dequeued and not yet removed.
    queued: usize,
}

impl<D> Default for WaitList<D> {
    fn default() -> Self {
        WaitList {
            nodes: Slab::new(),
            head: None,
            tail: None,
            queued: 0,
        }
    }
}

impl<D> WaitList<D> {
    /// Queues a waiter at the back.
    pub(crate) fn push_back(&mut self, data: D, waker: &Waker) -> WaiterKey {
        let key = self.nodes.insert(Node {
            data,
            waker: Some(waker.clone()),
            queued: true,
            prev: self.tail,
            next: None,
        });
        match self.tail {
            Some(t) => self.nodes[t].next = Some(key),
            None => self.head = Some(key),
        }
        self.tail = Some(key);
        self.queued += 1;
        WaiterKey(key)
    }

    /// Whether any waiter is queued.
    pub(crate) fn has_queued(&self) -> bool {
        self.queued > 0
    }

    /// Whether the waiter is still queued (the primitive has not dequeued it yet).
    pub(crate) fn is_queued(&self, key: &WaiterKey) -> bool {
        self.nodes[key.0].queued
    }

    /// Stores `waker` as the one to wake, unless the stored one already wakes the same task.
    /// Returns the replaced waker, for the caller to drop once its borrow is released.
    #[must_use]
    pub(crate) fn set_waker(&mut self, key: &WaiterKey, waker: &Waker) -> Option<Waker> {
        let slot = &mut self.nodes[key.0].waker;
        match slot {
            Some(w) if w.will_wake(waker) => None,
            _ => slot.replace(waker.clone()),
        }
    }

    /// Removes the waiter's node, unlinking it first if it is still queued. Returns its data and
    /// whether it was still queued (false: the primitive had dequeued it and handed it `data`).
    pub(crate) fn remove(&mut self, key: WaiterKey) -> (D, bool) {
        let node = self.nodes.remove(key.0);
        if node.queued {
            self.unlink(node.prev, node.next);
        }
        (node.data, node.queued)
    }

    /// Dequeues the first queued waiter: the caller writes what it hands over into the returned
    /// `data` and wakes the returned waker once its own borrow or lock is released.
    pub(crate) fn pop_front(&mut self) -> Option<(&mut D, Option<Waker>)> {
        let key = self.head?;
        let (prev, next) = {
            let node = &mut self.nodes[key];
            node.queued = false;
            (node.prev, node.next)
        };
        self.unlink(prev, next);
        let node = &mut self.nodes[key];
        Some((&mut node.data, node.waker.take()))
    }

    fn unlink(&mut self, prev: Option<usize>, next: Option<usize>) {
        match prev {
            Some(p) => self.nodes[p].next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => self.nodes[n].prev = prev,
            None => self.tail = prev,
        }
        self.queued -= 1;
    }
}

/// Wakers collected under a borrow or a lock, to be woken once it is released.
pub(crate) type Wakers = Vec<Waker>;

/// Wakes every collected waker; call only with no borrow or lock held.
pub(crate) fn wake_all(wakers: Wakers) {
    for w in wakers {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_wakers::counting_waker;

    #[test]
    fn fifo_pop_and_remove_from_middle() {
        let (count, waker) = counting_waker();
        let mut list = WaitList::default();
        let a = list.push_back('a', &waker);
        let b = list.push_back('b', &waker);
        let c = list.push_back('c', &waker);
        assert_eq!(list.remove(b), ('b', true));
        let (d, w) = list.pop_front().unwrap();
        assert_eq!(*d, 'a');
        w.unwrap().wake();
        assert!(!list.is_queued(&a));
        assert!(list.is_queued(&c));
        assert_eq!(list.remove(a), ('a', false));
        assert_eq!(*list.pop_front().unwrap().0, 'c');
        assert!(list.pop_front().is_none());
        assert!(!list.has_queued());
        assert_eq!(list.remove(c), ('c', false));
        assert_eq!(count.wakes(), 1);
    }

    #[test]
    fn set_waker_keeps_an_equivalent_waker() {
        let (_, waker) = counting_waker();
        let (_, other) = counting_waker();
        let mut list = WaitList::default();
        let k = list.push_back((), &waker);
        assert!(list.set_waker(&k, &waker).is_none());
        assert!(list.set_waker(&k, &other).is_some());
        list.remove(k);
    }
}
