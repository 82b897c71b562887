//! The cross-thread wake handshake: how a wake from another thread reaches a loop that may be
//! about to block in the kernel, without a lost wake-up and without an eventfd write per wake.
//!
//! Two flags:
//!
//! * **remote side** ([`announce`](ParkState::announce), with the injector's lock held after
//!   pushing; then [`must_unpark`](ParkState::must_unpark) after releasing it): mark work
//!   pending, then unpark the loop only if it said it is parking (and clear that, so a burst of
//!   wakes costs one unpark). The unpark is an eventfd write, or a `MSG_RING` that the waking
//!   loop submits a little later (when the poll that woke ends); either stays pending until
//!   the parked loop sees it (a readable eventfd, a completion in its CQ), so one sent before
//!   the park still ends it.
//! * **loop side** ([`prepare_park`](ParkState::prepare_park) before it blocks,
//!   [`end_park`](ParkState::end_park) after, [`take_announced`](ParkState::take_announced)
//!   before it drains the injector): announce the park, then look at the pending flag one last
//!   time; block only if it was clear.
//!
//! Why no wake is lost: every access that decides it is a read-modify-write, so each one reads
//! the latest value of its flag and synchronises with the write it reads. If the loop's last
//! look (an RMW) saw no work, the remote `announce` (an RMW) comes after it in the flag's order
//! and synchronises with it, so the remote's later swap of `parked` happens after the loop set
//! it and sees `true`: it writes the eventfd, which ends the park. If the swap saw `false`, the
//! loop either had not announced yet (then its last look comes after `announce` and sees the
//! work) or has already left the park. `tests::loom_*` check this exhaustively with loom
//! (`RUSTFLAGS="--cfg ringloop_loom"`, run by `.ci/run`).
//!
//! *Why RMWs and not plain `SeqCst` stores and loads:* the store-then-load version (a Dekker
//! pattern) is correct under Rust's `SeqCst` total order, but loom models `SeqCst` loads and
//! stores as acquire/release only and reports it as a lost wake; with RMWs the argument above
//! needs nothing but acquire/release, so the model checks what runs. Two locked instructions
//! per park and one per remote wake, next to a system call each.

#[cfg(ringloop_loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(ringloop_loom))]
use std::sync::atomic::{AtomicBool, Ordering};

/// The two flags of the handshake (see the module docs).
#[derive(Debug)]
pub(crate) struct ParkState {
    /// Something was pushed to the injector and not yet taken.
    has_injected: AtomicBool,
    /// The loop is (about to be) blocked in the driver: a remote wake must write the eventfd.
    parked: AtomicBool,
}

impl ParkState {
    pub(crate) fn new() -> ParkState {
        ParkState {
            has_injected: AtomicBool::new(false),
            parked: AtomicBool::new(false),
        }
    }

    /// Remote side, with the injector's lock held, right after pushing: work is pending.
    pub(crate) fn announce(&self) {
        self.has_injected.swap(true, Ordering::AcqRel);
    }

    /// Remote side, after releasing the lock: whether this caller must write the eventfd (the
    /// loop announced a park, and no other waker has written since).
    pub(crate) fn must_unpark(&self) -> bool {
        self.parked.swap(false, Ordering::AcqRel)
    }

    /// Makes the next [`must_unpark`](Self::must_unpark) answer yes (a stop request, which
    /// must wake the loop whatever it is doing).
    pub(crate) fn force_unpark(&self) {
        self.parked.swap(true, Ordering::AcqRel);
    }

    /// Loop side, before blocking: announces the park and takes the last look. False: work is
    /// pending, so do not block.
    pub(crate) fn prepare_park(&self) -> bool {
        self.parked.swap(true, Ordering::AcqRel);
        !self.has_injected.fetch_or(false, Ordering::AcqRel)
    }

    /// Loop side, after the park.
    pub(crate) fn end_park(&self) {
        self.parked.swap(false, Ordering::AcqRel);
    }

    /// Whether the loop has announced a park that no waker has ended yet (for tests that must
    /// act on a parked loop).
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    /// Loop side: whether work was announced (cheap, no lock).
    pub(crate) fn announced(&self) -> bool {
        self.has_injected.load(Ordering::Acquire)
    }

    /// Loop side, right before taking the injector's contents under its lock: clears the flag.
    /// A push that races with it sets the flag again (it is set under the lock, after the
    /// push), so at worst the next iteration takes an empty injector.
    pub(crate) fn take_announced(&self) -> bool {
        self.has_injected.swap(false, Ordering::AcqRel)
    }
}

#[cfg(all(test, ringloop_loom))]
mod tests {
    //! Exhaustive checks of the handshake under every interleaving loom can find. The eventfd
    //! is modelled by a counter under a lock with a condition variable (a wake written before
    //! the park is not lost: the counter stays readable), the injector by a `Mutex<Vec<_>>`,
    //! and a park with no timer blocks until the counter is non-zero, so a lost wake is a
    //! deadlock loom reports.

    use super::ParkState;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// An eventfd: `notify` adds one, `wait` blocks until non-zero and drains it.
    struct EventFd {
        count: Mutex<u64>,
        readable: Condvar,
    }

    impl EventFd {
        fn notify(&self) {
            *self.count.lock().unwrap() += 1;
            self.readable.notify_one();
        }

        fn wait(&self) {
            let mut count = self.count.lock().unwrap();
            while *count == 0 {
                count = self.readable.wait(count).unwrap();
            }
            *count = 0;
        }
    }

    struct Loop {
        state: ParkState,
        injected: Mutex<Vec<u32>>,
        eventfd: EventFd,
    }

    impl Loop {
        fn new() -> Arc<Loop> {
            Arc::new(Loop {
                state: ParkState::new(),
                injected: Mutex::new(Vec::new()),
                eventfd: EventFd {
                    count: Mutex::new(0),
                    readable: Condvar::new(),
                },
            })
        }

        /// `Shared::inject` then `Shared::unpark`.
        fn inject(&self, item: u32) {
            {
                let mut q = self.injected.lock().unwrap();
                q.push(item);
                self.state.announce();
            }
            if self.state.must_unpark() {
                self.eventfd.notify();
            }
        }

        /// `Shared::inject` then `Shared::unpark` through a ring: the unpark is owed now and
        /// sent later, when the waking poll ends (returns whether it is owed).
        fn inject_deferred(&self, item: u32) -> bool {
            {
                let mut q = self.injected.lock().unwrap();
                q.push(item);
                self.state.announce();
            }
            self.state.must_unpark()
        }

        /// One iteration of `Core::run_once` with nothing ready locally and no timer: park
        /// (blocking unless work is announced), then drain the injector.
        fn run_once(&self, got: &mut Vec<u32>) {
            if self.state.prepare_park() {
                self.eventfd.wait();
            }
            self.state.end_park();
            if self.state.announced() && self.state.take_announced() {
                got.extend(self.injected.lock().unwrap().drain(..));
            }
        }
    }

    #[test]
    fn loom_one_remote_wake_is_never_lost() {
        loom::model(|| {
            let lp = Loop::new();
            let remote = lp.clone();
            let t = thread::spawn(move || remote.inject(1));
            let mut got = Vec::new();
            while got.is_empty() {
                lp.run_once(&mut got);
            }
            t.join().unwrap();
            assert_eq!(got, [1]);
        });
    }

    #[test]
    fn loom_two_remote_wakers_are_both_seen() {
        loom::model(|| {
            let lp = Loop::new();
            let (a, b) = (lp.clone(), lp.clone());
            let ta = thread::spawn(move || a.inject(1));
            let tb = thread::spawn(move || b.inject(2));
            let mut got = Vec::new();
            while got.len() < 2 {
                lp.run_once(&mut got);
            }
            ta.join().unwrap();
            tb.join().unwrap();
            got.sort_unstable();
            assert_eq!(got, [1, 2]);
        });
    }

    #[test]
    fn loom_a_wake_during_a_busy_iteration_is_seen_at_the_next_park() {
        loom::model(|| {
            let lp = Loop::new();
            let remote = lp.clone();
            let t = thread::spawn(move || remote.inject(7));
            let mut got = Vec::new();
            // A busy iteration (something ready locally): no park, just the drain.
            if lp.state.announced() && lp.state.take_announced() {
                got.extend(lp.injected.lock().unwrap().drain(..));
            }
            while got.is_empty() {
                lp.run_once(&mut got);
            }
            t.join().unwrap();
            assert_eq!(got, [7]);
        });
    }

    /// A wake through the ring (`MSG_RING`) is deferred: the waking loop takes the unpark when
    /// it wakes (`must_unpark`), goes on with its poll (here: another wake), and submits the
    /// message after. A second waker in between finds the unpark taken and sends nothing, so
    /// the first one's late message must end the park for both.
    #[test]
    fn loom_a_wake_the_waking_loop_sends_later_covers_the_wakes_behind_it() {
        loom::model(|| {
            let lp = Loop::new();
            let (a, b) = (lp.clone(), lp.clone());
            let ta = thread::spawn(move || {
                let mut owed = a.inject_deferred(1);
                owed |= a.inject_deferred(3);
                // The end of the waking poll: the `MSG_RING` is submitted.
                if owed {
                    a.eventfd.notify();
                }
            });
            let tb = thread::spawn(move || b.inject(2));
            let mut got = Vec::new();
            while got.len() < 3 {
                lp.run_once(&mut got);
            }
            ta.join().unwrap();
            tb.join().unwrap();
            got.sort_unstable();
            assert_eq!(got, [1, 2, 3]);
        });
    }

    #[test]
    fn loom_a_stop_wakes_a_parked_loop() {
        loom::model(|| {
            let lp = Loop::new();
            let stop = Arc::new(loom::sync::atomic::AtomicBool::new(false));
            let (remote, flag) = (lp.clone(), stop.clone());
            // `Handle::stop`.
            let t = thread::spawn(move || {
                flag.store(true, loom::sync::atomic::Ordering::Release);
                remote.state.force_unpark();
                if remote.state.must_unpark() {
                    remote.eventfd.notify();
                }
            });
            let mut got = Vec::new();
            while !stop.load(loom::sync::atomic::Ordering::Acquire) {
                lp.run_once(&mut got);
            }
            t.join().unwrap();
        });
    }
}
