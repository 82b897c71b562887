//! [`Handle`]: what other threads may hold of a runtime, and the injector behind it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::driver::WakeTarget;
use crate::handshake::ParkState;
use crate::task::{Remote, TaskPtr};

/// A task woken from another thread. Only the pointer travels; the task is polled and dropped
/// on its own thread.
pub(super) struct RemoteTask(pub(super) TaskPtr);

// SAFETY: a `TaskPtr` may hold a `!Send` future, but the injector only moves the pointer to the
// owner thread, which is the only thread that polls or drops the future (see `task::cell`);
// the `Arc` counts are atomic, and a count released here never drops the future.
unsafe impl Send for RemoteTask {}

#[derive(Default)]
pub(super) struct Injected {
    pub(super) tasks: Vec<RemoteTask>,
    pub(super) callbacks: Vec<Box<dyn FnOnce() + Send>>,
}

/// The part of a runtime other threads may touch: the injector and what wakes the loop.
pub(crate) struct Shared {
    pub(super) injected: Mutex<Injected>,
    /// Whether something is in `injected`, and whether the loop is parking: the wake handshake
    /// (see `handshake.rs`, model-checked with loom).
    pub(super) park: ParkState,
    pub(super) stop_requested: AtomicBool,
    /// The runtime is gone: remote wakes are dropped instead of queued.
    pub(super) closed: AtomicBool,
    /// The loop's eventfd, and its ring's descriptor for `MSG_RING` wakes (io_uring).
    pub(super) wake: Arc<WakeTarget>,
    /// Unparks sent to this loop (eventfd writes and `MSG_RING`s), for `RuntimeStats::unparks`.
    pub(super) unparks: AtomicU64,
}

/// What a task's waker on another thread sees of its loop.
impl Remote for Shared {
    fn inject(&self, task: TaskPtr) {
        Shared::inject(self, |inj| inj.tasks.push(RemoteTask(task)));
    }
}

impl Shared {
    pub(super) fn inject(&self, push: impl FnOnce(&mut Injected)) {
        {
            let mut inj = self.injected.lock().unwrap_or_else(|e| e.into_inner());
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            push(&mut inj);
            self.park.announce();
        }
        self.unpark();
    }

    /// Wakes the loop if it announced a park and no other waker has woken it since (the
    /// handshake makes a burst of wakes cost one).
    ///
    /// The wake goes through the ring when it can: if this thread is running an io_uring loop
    /// with `MSG_RING`, and this loop is an io_uring loop too, the calling loop queues a
    /// `MSG_RING` to this loop's ring on its own ring, submitted when the calling task's poll
    /// ends (see `Core::send_wake`). Otherwise (a plain thread, an epoll loop on either side,
    /// no `MSG_RING`, the calling driver busy) it writes this loop's eventfd.
    pub(super) fn unpark(&self) {
        if self.park.must_unpark() {
            self.unparks.fetch_add(1, Ordering::Relaxed);
            if !self.unpark_through_ring() {
                self.wake.wake_eventfd();
            }
        }
    }

    /// Queues this loop's unpark as a `MSG_RING` on the calling thread's loop; false if that
    /// cannot be done.
    fn unpark_through_ring(&self) -> bool {
        self.wake.has_ring() && super::try_with_core(|core| core.send_wake(self)).unwrap_or(false)
    }

    pub(super) fn take_injected(&self) -> Injected {
        self.park.take_announced();
        let mut inj = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *inj)
    }
}

/// A `Send + Sync` handle to a runtime, for other threads: stop it, or schedule a callback on
/// it (asyncio's `call_soon_threadsafe`).
///
/// ```
/// use ringloop_runtime::Runtime;
///
/// let rt = Runtime::new().unwrap();
/// let handle = rt.handle();
/// let t = std::thread::spawn(move || handle.call_soon_threadsafe(|| ringloop_runtime::stop()));
/// rt.run_forever().unwrap();
/// t.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Handle {
    pub(super) shared: Arc<Shared>,
}

impl Handle {
    /// Stops the loop after its current iteration, as [`stop`](crate::stop) does, from any
    /// thread.
    pub fn stop(&self) {
        self.shared.stop_requested.store(true, Ordering::Release);
        self.shared.park.force_unpark();
        self.shared.unpark();
    }

    /// Schedules `f` on the runtime's thread, waking the loop if it is parked. Returns false if
    /// the runtime is gone (then `f` is dropped).
    pub fn call_soon_threadsafe(&self, f: impl FnOnce() + Send + 'static) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        self.shared.inject(|inj| inj.callbacks.push(Box::new(f)));
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the runtime has been dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The part of the runtime other threads may touch (for `Handle::spawn` in `remote.rs`).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.is_closed())
            .finish()
    }
}
