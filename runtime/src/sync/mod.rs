//! Synchronisation between tasks: asyncio's `Event`, `Lock`, `Semaphore`, `Condition` and
//! `Queue`, plus [`oneshot`] and [`mpsc`] channels that also work across threads.
//!
//! Everything here follows the runtime's cancellation protocol: every operation that can
//! suspend is a *cancellation point*. When the task awaiting it is cancelled, it withdraws from
//! its wait queue and resolves to `Err(`[`Cancelled`](crate::Cancelled)`)` (inside a richer
//! error where there is something to give back: the item of a [`Queue::put`], the re-held guard
//! of a [`Condition::wait`]). If what it waits for is already there, it returns that instead
//! and the cancel request stays pending for the task's next await: nothing is ever lost.
//!
//! Waiters are served first come, first served, with direct hand-off: a released lock or permit,
//! or a new queue item, goes straight to the first waiter, so a late comer never barges ahead.
//! A waiter that was handed something but is dropped before it runs passes it on.
//!
//! [`Event`], [`Lock`], [`Semaphore`], [`Condition`] and [`Queue`] are single-threaded, like
//! asyncio's: share them between the tasks of one runtime with `Rc`. The channels are
//! thread-safe, and [`BridgeQueue`] is a queue with a blocking side for threads and an async
//! side for tasks (Python's `janus`).
//!
//! ```
//! use ringloop_runtime::{Runtime, spawn, sync::{Lock, Queue}};
//! use std::rc::Rc;
//!
//! Runtime::new().unwrap().block_on(async {
//!     let jobs = Rc::new(Queue::new(8));
//!     let total = Rc::new(Lock::new(0));
//!     let workers: Vec<_> = (0..2)
//!         .map(|_| {
//!             let (jobs, total) = (jobs.clone(), total.clone());
//!             spawn(async move {
//!                 // Serves jobs until cancelled: `get` then returns `Err(Cancelled)`.
//!                 while let Ok(n) = jobs.get().await {
//!                     let Ok(mut total) = total.lock().await else { break };
//!                     *total += n;
//!                     jobs.task_done().unwrap();
//!                 }
//!             })
//!         })
//!         .collect();
//!     for n in 1..=10 {
//!         jobs.put(n).await.unwrap();
//!     }
//!     jobs.join().await.unwrap();
//!     assert_eq!(*total.lock().await.unwrap(), 55);
//!     for w in workers {
//!         w.cancel();
//!         w.await.unwrap(); // the worker saw the cancellation and returned
//!     }
//! });
//! ```

pub mod bridge;
mod chan_error;
mod condition;
mod event;
mod lock;
pub mod mpsc;
pub mod oneshot;
mod queue;
mod semaphore;
mod waiters;

pub use bridge::BridgeQueue;
pub use condition::{Condition, ConditionWait, WaitCancelled};
pub use event::{Event, EventWait};
pub use lock::{Lock, LockAcquire, LockGuard};
pub use queue::{PutCancelled, Queue, QueueFull, QueueGet, QueueJoin, QueuePut, TaskDoneError};
pub use semaphore::{
    OwnedSemaphorePermit, Semaphore, SemaphoreAcquire, SemaphoreAcquireOwned, SemaphorePermit,
};

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Runs `future` on the calling thread, parking it between polls: for the `blocking_*` calls
/// made from threads that run no ringloop runtime.
fn block_on_thread<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        // A wake between the poll and here leaves the token set: park returns at once. Wakes
        // queued on a loop's ring go first, if this is a loop's thread.
        crate::runtime::flush_wakes();
        thread::park();
    }
}
