//! What wakes a parked loop from another thread: its eventfd, and for an io_uring loop its
//! ring's descriptor, kept open for other rings' `MSG_RING`s by a pin protocol.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, PoisonError};

#[cfg(ringloop_loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(ringloop_loom))]
use std::sync::{Mutex, MutexGuard};

use super::errno::{is_interrupted, is_would_block};

/// An eventfd that wakes a parked driver from any thread.
#[derive(Debug)]
pub(crate) struct WakeFd {
    fd: OwnedFd,
}

impl WakeFd {
    pub(crate) fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error, anything else a new
        // descriptor that we own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(WakeFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable. Never blocks: a counter at its limit is already readable.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local into our own eventfd.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Resets the counter so the next park can block again.
    pub(crate) fn drain(&self) {
        let mut buf: u64 = 0;
        loop {
            // SAFETY: reads 8 bytes into a live local from our own non-blocking eventfd.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    &mut buf as *mut u64 as *mut libc::c_void,
                    8,
                )
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            if !is_interrupted(&e) || is_would_block(&e) {
                return;
            }
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// How other threads wake a parked loop: its eventfd, and, for an io_uring loop, a duplicate
/// of its ring's descriptor that another io_uring loop can send an `IORING_OP_MSG_RING` to
/// instead (see [`Uring::send_wake`](super::uring::Uring::send_wake)).
///
/// Shared by the loop's `Shared` (so by every `Handle` and waker of the loop) and by every
/// `MSG_RING` another ring has queued for it and not yet seen complete ([`RingPin`]).
#[derive(Debug)]
pub(crate) struct WakeTarget {
    eventfd: WakeFd,
    /// The ring's duplicate descriptor; `None` for an epoll loop (or with `MSG_RING` wakes off).
    ring: Option<Retirable<OwnedFd>>,
}

impl WakeTarget {
    pub(crate) fn new(eventfd: WakeFd, ring: Option<OwnedFd>) -> WakeTarget {
        WakeTarget {
            eventfd,
            ring: ring.map(Retirable::new),
        }
    }

    /// The eventfd, for the loop's own driver (epoll watches it, io_uring polls it).
    pub(crate) fn eventfd(&self) -> &WakeFd {
        &self.eventfd
    }

    /// Wakes the loop through its eventfd (the transport of plain threads and epoll loops, and
    /// the fallback of a `MSG_RING` that failed).
    pub(crate) fn wake_eventfd(&self) {
        self.eventfd.wake();
    }

    /// Whether the loop takes `MSG_RING` wakes (it is an io_uring loop that has not retired its
    /// ring descriptor). A hint only: [`pin_ring`](Self::pin_ring) decides.
    pub(crate) fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Keeps the ring's descriptor open until the returned pin is dropped, so an SQE may name
    /// it; `None` for a loop without one, or once the loop retired it (its runtime is gone).
    pub(crate) fn pin_ring(self: &Arc<Self>) -> Option<RingPin> {
        let fd = self.ring.as_ref()?.pin(|fd| fd.as_raw_fd())?;
        Some(RingPin {
            target: self.clone(),
            fd,
        })
    }

    /// The loop's runtime is going: no new pin is given, and the duplicate descriptor is closed
    /// now, or when the last pin goes. (Without this, a `Handle` kept after its runtime was
    /// dropped would keep the whole ring alive in the kernel: its queues, its registered
    /// buffers and files.)
    pub(crate) fn retire_ring(&self) {
        if let Some(ring) = &self.ring {
            ring.retire();
        }
    }
}

/// A loop's ring descriptor held open for a `MSG_RING` that names it (see
/// [`WakeTarget::pin_ring`]); dropping the pin lets the descriptor be closed.
pub(crate) struct RingPin {
    target: Arc<WakeTarget>,
    fd: RawFd,
}

impl RingPin {
    /// The target ring's descriptor: open, and the same ring's, while this pin lives.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// The target loop, to wake through its eventfd when the `MSG_RING` did not land.
    pub(crate) fn target(&self) -> &WakeTarget {
        &self.target
    }
}

impl Drop for RingPin {
    fn drop(&mut self) {
        if let Some(ring) = &self.target.ring {
            ring.unpin();
        }
    }
}

impl fmt::Debug for RingPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingPin").field("fd", &self.fd).finish()
    }
}

/// A value that other threads may pin for a while, and that its owner may retire at any time.
/// Once retired, no new pin is given, and the value is dropped as soon as no pin holds it: by
/// `retire` if none does, else by the last `unpin`. Exactly once either way, and never while
/// pinned (`loom_*` tests below).
///
/// It is a lock and a count: pins are taken once per unpark of a parked loop, next to a system
/// call, so a lock costs nothing that shows.
pub(crate) struct Retirable<T> {
    state: Mutex<RetireState<T>>,
}

struct RetireState<T> {
    /// `None` once dropped (retired with no pin left).
    value: Option<T>,
    pins: usize,
    retired: bool,
}

impl<T> Retirable<T> {
    pub(crate) fn new(value: T) -> Retirable<T> {
        Retirable {
            state: Mutex::new(RetireState {
                value: Some(value),
                pins: 0,
                retired: false,
            }),
        }
    }

    /// Our critical sections cannot panic, but a poisoned lock would still hold consistent
    /// state: go on with it.
    fn lock(&self) -> MutexGuard<'_, RetireState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pins the value and returns what `f` reads of it; `None` once retired. Every `Some` must
    /// be matched by one [`unpin`](Self::unpin).
    pub(crate) fn pin<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let mut st = self.lock();
        if st.retired {
            return None;
        }
        let r = f(st.value.as_ref()?);
        st.pins += 1;
        Some(r)
    }

    /// Releases one pin; the last one of a retired value drops it (outside the lock).
    pub(crate) fn unpin(&self) {
        let dropped = {
            let mut st = self.lock();
            st.pins = st.pins.saturating_sub(1);
            if st.retired && st.pins == 0 {
                st.value.take()
            } else {
                None
            }
        };
        drop(dropped);
    }

    /// Refuses new pins; drops the value now if nothing pins it (outside the lock).
    pub(crate) fn retire(&self) {
        let dropped = {
            let mut st = self.lock();
            st.retired = true;
            if st.pins == 0 {
                st.value.take()
            } else {
                None
            }
        };
        drop(dropped);
    }
}

impl<T> fmt::Debug for Retirable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Retirable")
            .field("pins", &st.pins)
            .field("retired", &st.retired)
            .field("live", &st.value.is_some())
            .finish()
    }
}

#[cfg(all(test, not(ringloop_loom)))]
mod tests {
    use super::Retirable;
    use std::cell::Cell;
    use std::rc::Rc;

    struct Counted(Rc<Cell<u32>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn retiring_an_unpinned_value_drops_it_at_once_and_refuses_pins() {
        let drops = Rc::new(Cell::new(0));
        let r = Retirable::new(Counted(drops.clone()));
        assert_eq!(r.pin(|_| 7), Some(7));
        r.unpin();
        r.retire();
        assert_eq!(drops.get(), 1);
        assert_eq!(r.pin(|_| 7), None);
        r.retire();
        drop(r);
        assert_eq!(drops.get(), 1, "dropped exactly once");
    }

    #[test]
    fn a_pinned_value_outlives_its_retirement_until_the_last_unpin() {
        let drops = Rc::new(Cell::new(0));
        let r = Retirable::new(Counted(drops.clone()));
        assert!(r.pin(|_| ()).is_some());
        assert!(r.pin(|_| ()).is_some());
        r.retire();
        assert_eq!(drops.get(), 0, "still pinned twice");
        assert!(r.pin(|_| ()).is_none(), "no new pin once retired");
        r.unpin();
        assert_eq!(drops.get(), 0, "still pinned once");
        r.unpin();
        assert_eq!(drops.get(), 1);
        drop(r);
        assert_eq!(drops.get(), 1, "dropped exactly once");
    }
}

#[cfg(all(test, ringloop_loom))]
mod loom_tests {
    //! The pin protocol of [`Retirable`] under every interleaving loom finds: a value is never
    //! dropped while pinned (the stand-in for a descriptor that an SQE names until the kernel
    //! has read it), and it is dropped exactly once.

    use super::Retirable;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    struct Fd(Arc<AtomicUsize>);
    impl Drop for Fd {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn loom_a_pinned_descriptor_is_closed_once_and_never_under_a_pin() {
        loom::model(|| {
            let closed = Arc::new(AtomicUsize::new(0));
            let ring = Arc::new(Retirable::new(Fd(closed.clone())));
            let senders: Vec<_> = (0..2)
                .map(|_| {
                    let (ring, closed) = (ring.clone(), closed.clone());
                    thread::spawn(move || {
                        if ring.pin(|_| ()).is_some() {
                            // The kernel reads the SQE that names the descriptor.
                            assert_eq!(closed.load(Ordering::SeqCst), 0, "closed under a pin");
                            ring.unpin();
                        }
                    })
                })
                .collect();
            ring.retire(); // the runtime is dropped
            for s in senders {
                s.join().unwrap();
            }
            assert_eq!(closed.load(Ordering::SeqCst), 1, "closed exactly once");
            drop(ring);
            assert_eq!(closed.load(Ordering::SeqCst), 1, "closed exactly once");
        });
    }
}
