//! Helpers shared by the runtime's integration tests: drop counters, an ordered log, a foreign
//! (ringloop-unaware) gate future, panic payload text, and a one-iteration yield.
//!
//! Every test binary compiles its own copy of this module and uses only some of it.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};
use std::time::Duration;

use ringloop_runtime::sleep;

mod backends;
#[allow(unused_imports)] // each test binary uses some of them
pub use backends::{backends, runs_on, uring_tested};

/// Counts drops of the [`Guard`]s it hands out (single-threaded).
#[derive(Clone, Default)]
pub struct DropCount(Rc<Cell<usize>>);

/// Bumps its [`DropCount`] when dropped.
pub struct Guard(Rc<Cell<usize>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

impl DropCount {
    /// A new guard whose drop is counted here.
    pub fn guard(&self) -> Guard {
        Guard(self.0.clone())
    }
    /// How many guards have been dropped so far.
    pub fn get(&self) -> usize {
        self.0.get()
    }
}

/// Counts drops of the [`SendGuard`]s it hands out, from any thread, and remembers the thread
/// of the last one.
#[derive(Clone, Default)]
pub struct SendDropCount(Arc<(AtomicUsize, Mutex<Option<ThreadId>>)>);

/// Bumps its [`SendDropCount`] (and records the dropping thread) when dropped; `Send`.
pub struct SendGuard(SendDropCount);

impl Drop for SendGuard {
    fn drop(&mut self) {
        (self.0).0 .0.fetch_add(1, Ordering::SeqCst);
        *(self.0).0 .1.lock().unwrap() = Some(thread::current().id());
    }
}

impl SendDropCount {
    /// A new guard whose drop is counted here.
    pub fn guard(&self) -> SendGuard {
        SendGuard(self.clone())
    }
    /// How many guards have been dropped so far.
    pub fn get(&self) -> usize {
        self.0 .0.load(Ordering::SeqCst)
    }
    /// The thread that dropped the last guard, if any was dropped.
    pub fn thread(&self) -> Option<ThreadId> {
        *self.0 .1.lock().unwrap()
    }
}

/// A shared, ordered record of what happened.
#[derive(Clone, Default)]
pub struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    /// Appends an entry.
    pub fn push(&self, s: impl Into<String>) {
        self.0.borrow_mut().push(s.into());
    }
    /// Every entry so far, leaving the log empty.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
    /// Every entry so far, leaving the log as it is.
    pub fn entries(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
    /// Whether some entry equals `s`.
    pub fn contains(&self, s: &str) -> bool {
        self.0.borrow().iter().any(|e| e == s)
    }
}

/// A one-shot gate that knows nothing of ringloop: `wait()` is pending until `open()`, which
/// wakes every waiter.
#[derive(Clone, Default)]
pub struct Gate(Rc<RefCell<(bool, Vec<Waker>)>>);

impl Gate {
    /// Opens the gate and wakes every waiter.
    pub fn open(&self) {
        let wakers = {
            let mut g = self.0.borrow_mut();
            g.0 = true;
            std::mem::take(&mut g.1)
        };
        for w in wakers {
            w.wake();
        }
    }
    /// A future that is pending until the gate is open.
    pub fn wait(&self) -> GateWait {
        GateWait(self.clone())
    }
}

/// The future of [`Gate::wait`].
pub struct GateWait(Gate);

impl Future for GateWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = (self.0).0.borrow_mut();
        if g.0 {
            Poll::Ready(())
        } else {
            g.1.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Yields to the loop once (asyncio's `sleep(0)`).
pub async fn yield_now() {
    sleep(Duration::ZERO).await.unwrap();
}

/// The message of a panic payload (a `String` or a `&str`), or `""` for any other payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
