//! Sound wakers: a `Waker` may be cloned to another thread and woken there; the task is still
//! polled (and dropped) only on its runtime's thread, a parked loop is woken, stray wakes after
//! the task or the runtime is gone are harmless, and repeated wakes coalesce.
//!
//! Tests that wait for another thread carry a [`Watchdog`]: if a wake were lost they would hang,
//! so the watchdog aborts the process with a message instead.
//!
//! `waker.clone().wake()` is written on purpose here (clippy would suggest `wake_by_ref`): it
//! drives the waker vtable's `clone` and by-value `wake` entries, which `wake_by_ref` skips.
#![allow(clippy::waker_clone_wake)]

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{yield_now, SendDropCount};
use ringloop_runtime::{spawn, stop, Runtime, TaskState};

/// Aborts the process if the test it guards has not finished within a generous bound: a lost
/// wake-up must fail loudly rather than hang the suite. Not a timing assertion.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(test: &'static str) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        thread::spawn(move || {
            for _ in 0..300 {
                thread::sleep(Duration::from_millis(100));
                if d.load(Ordering::SeqCst) {
                    return;
                }
            }
            eprintln!("{test}: no progress after 30 s, a wake-up was lost");
            std::process::abort();
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a [`Signal`] shares with the other thread.
#[derive(Default)]
struct SignalState {
    ready: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// A future that completes once another thread sets `ready`; it knows nothing of ringloop. It
/// records the thread of every poll.
struct Signal {
    state: Arc<SignalState>,
    polls: Rc<RefCell<Vec<ThreadId>>>,
}

impl Future for Signal {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.borrow_mut().push(thread::current().id());
        // Store the waker before looking at the flag: a wake that comes in between is not lost.
        *self.state.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.state.ready.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl SignalState {
    /// Waits (on the calling thread) until a poll has stored a waker.
    fn wait_for_waker(&self) -> Waker {
        loop {
            if let Some(w) = self.waker.lock().unwrap().clone() {
                return w;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn fire(&self) {
        self.ready.store(true, Ordering::SeqCst);
        let w = self.waker.lock().unwrap().take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_waker_woken_on_another_thread_polls_the_task_on_its_own_thread() {
    let _wd = Watchdog::new("a_waker_woken_on_another_thread_polls_the_task_on_its_own_thread");
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(RefCell::new(Vec::new()));
    let by_value = Arc::new(SignalState::default());
    let by_ref = Arc::new(SignalState::default());
    let (p1, p2) = (polls.clone(), polls.clone());
    let (s1, s2) = (by_value.clone(), by_ref.clone());
    rt.block_on(async move {
        let a = spawn(Signal {
            state: s1,
            polls: p1,
        });
        let b = spawn(Signal {
            state: s2,
            polls: p2,
        });
        let (bv, br) = (by_value.clone(), by_ref.clone());
        let remote = thread::spawn(move || {
            bv.wait_for_waker(); // `a` has been polled once and is suspended
            bv.fire(); // Waker::wake (by value)
            let w = br.wait_for_waker();
            br.ready.store(true, Ordering::SeqCst);
            w.wake_by_ref();
            w.clone().wake();
            drop(w); // the last clone released on this thread
        });
        a.await.unwrap();
        b.await.unwrap();
        remote.join().unwrap();
    });
    let me = thread::current().id();
    let polls = polls.borrow();
    assert_eq!(
        polls.len(),
        4,
        "each signal polled exactly twice: {polls:?}"
    );
    assert!(
        polls.iter().all(|t| *t == me),
        "polled off the runtime thread"
    );
    assert!(rt.stats().remote_wakes >= 1);
}

/// The loop parks with no timer at all (nothing to do until another thread wakes a task), and a
/// remote wake unparks it.
#[test]
fn a_remote_wake_unparks_a_loop_with_no_timers() {
    let _wd = Watchdog::new("a_remote_wake_unparks_a_loop_with_no_timers");
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(RefCell::new(Vec::new()));
    let state = Arc::new(SignalState::default());
    let (p, s) = (polls.clone(), state.clone());
    let task = rt.spawn(async move {
        Signal { state: s, polls: p }.await;
        stop();
    });
    let st = state.clone();
    let remote = thread::spawn(move || {
        st.wait_for_waker();
        thread::sleep(Duration::from_millis(20)); // let the loop park
        st.fire();
    });
    rt.run_forever().unwrap();
    remote.join().unwrap();
    assert_eq!(task.state(), TaskState::Finished);
    let s = rt.stats();
    assert_eq!(
        s.timers_pending, 0,
        "there was never a timer to wake the loop"
    );
    assert!(s.parks >= 1, "the loop parked");
    assert_eq!(s.remote_wakes, 1);
    assert_eq!(s.polls, 2);
    let me = thread::current().id();
    assert!(polls.borrow().iter().all(|t| *t == me));
}

/// A `!Send` future (holding an `Rc`) is spawned, woken from another thread through its
/// `Send` waker, and polled and dropped on its own thread.
#[test]
fn a_not_send_future_holding_an_rc_is_woken_remotely_and_dropped_on_its_thread() {
    let _wd = Watchdog::new("a_not_send_future_holding_an_rc_is_woken_remotely");
    let rt = Runtime::new().unwrap();
    let shared = Rc::new(Cell::new(0));
    let polls = Rc::new(RefCell::new(Vec::new()));
    let state = Arc::new(SignalState::default());
    let (rc, p, s) = (shared.clone(), polls.clone(), state.clone());
    let v = rt.block_on(async move {
        let t = spawn(async move {
            let rc = rc; // the task owns an Rc: its future is !Send
            Signal { state: s, polls: p }.await;
            rc.set(rc.get() + 1);
            Rc::strong_count(&rc)
        });
        let st = state.clone();
        let remote = thread::spawn(move || {
            st.wait_for_waker();
            st.fire();
        });
        let v = t.await.unwrap();
        remote.join().unwrap();
        v
    });
    assert_eq!(v, 2, "the test's Rc and the task's");
    assert_eq!(shared.get(), 1);
    assert_eq!(Rc::strong_count(&shared), 1, "the task's Rc was dropped");
    let me = thread::current().id();
    assert!(polls.borrow().iter().all(|t| *t == me));
}

/// Waking a task that has already finished, on its own thread or another, does nothing: no
/// poll, no queueing, and what the future owned was dropped exactly once.
#[test]
fn wake_from_other_thread_after_task_done_is_harmless() {
    let rt = Runtime::new().unwrap();
    let drops = SendDropCount::default();
    let state = Arc::new(SignalState::default());
    let polls = Rc::new(RefCell::new(Vec::new()));
    let (g, s, p) = (drops.guard(), state.clone(), polls.clone());
    let waker = rt.block_on(async move {
        let t = spawn(async move {
            let _g = g;
            Signal { state: s, polls: p }.await;
        });
        yield_now().await;
        let waker = state.wait_for_waker(); // a clone kept past the task's end
        state.fire();
        t.await.unwrap();
        waker
    });
    assert_eq!(drops.get(), 1);
    let before = rt.stats();
    waker.wake_by_ref(); // on the owner thread, outside the loop
    let w = waker.clone();
    thread::spawn(move || {
        w.wake_by_ref();
        w.wake();
    })
    .join()
    .unwrap();
    rt.block_on(yield_now());
    let after = rt.stats();
    assert_eq!(
        after.remote_wakes, before.remote_wakes,
        "nothing was queued"
    );
    assert_eq!(
        after.polls,
        before.polls + 2,
        "only the new main task was polled (twice)"
    );
    assert_eq!(drops.get(), 1);
    assert_eq!(polls.borrow().len(), 2);
    drop(waker);
}

/// Waking after the runtime is dropped is harmless: the future was dropped exactly once, on
/// the runtime's thread, when the runtime went; the last reference to the task, held by the
/// waker, is released on the other thread without touching the (gone) future.
#[test]
fn wake_from_other_thread_after_runtime_dropped_is_harmless() {
    let rt = Runtime::new().unwrap();
    let drops = SendDropCount::default();
    let state = Arc::new(SignalState::default());
    let polls = Rc::new(RefCell::new(Vec::new()));
    let (g, s, p) = (drops.guard(), state.clone(), polls.clone());
    let handle = rt.handle();
    let task = rt.spawn(async move {
        let _g = g;
        Signal { state: s, polls: p }.await;
    });
    rt.run_until_complete(yield_now());
    drop(task); // detached: only the runtime and the waker hold the task now
    let waker = state.wait_for_waker();
    drop(rt);
    assert!(handle.is_closed());
    assert_eq!(drops.get(), 1, "dropped with the runtime");
    assert_eq!(drops.thread(), Some(thread::current().id()));
    state.waker.lock().unwrap().take();
    thread::spawn(move || {
        waker.wake_by_ref();
        waker.clone().wake();
        waker.wake(); // the last reference to the task goes here
    })
    .join()
    .unwrap();
    assert_eq!(drops.get(), 1);
    assert_eq!(polls.borrow().len(), 1);
}

/// Another thread hammers a task's waker while the runtime is being dropped: whichever side
/// wins each race, nothing crashes and the future is dropped exactly once, on its thread.
#[test]
fn remote_wakes_racing_with_runtime_drop_are_harmless() {
    let _wd = Watchdog::new("remote_wakes_racing_with_runtime_drop_are_harmless");
    for _ in 0..20 {
        let rt = Runtime::new().unwrap();
        let drops = SendDropCount::default();
        let state = Arc::new(SignalState::default());
        let polls = Rc::new(RefCell::new(Vec::new()));
        let (g, s, p) = (drops.guard(), state.clone(), polls.clone());
        let _task = rt.spawn(async move {
            let _g = g;
            Signal { state: s, polls: p }.await;
        });
        rt.run_until_complete(yield_now());
        let waker = state.waker.lock().unwrap().take().unwrap();
        let handle = rt.handle();
        let hammer = thread::spawn(move || {
            let mut n = 0u64;
            while !handle.is_closed() || n < 100 {
                waker.wake_by_ref();
                n += 1;
            }
        });
        thread::sleep(Duration::from_micros(200));
        drop(rt);
        hammer.join().unwrap();
        assert_eq!(drops.get(), 1);
        assert_eq!(drops.thread(), Some(thread::current().id()));
    }
}

/// Many remote wakes of the same task, while it waits in the loop, queue it once: the task is
/// polled once more, not once per wake.
#[test]
fn many_remote_wakes_of_one_task_coalesce_into_one_poll() {
    let rt = Rc::new(Runtime::new().unwrap());
    let polls = Rc::new(RefCell::new(Vec::new()));
    let state = Arc::new(SignalState::default());
    let (p, s) = (polls.clone(), state.clone());
    let r = rt.clone();
    rt.block_on(async move {
        let t = spawn(Signal { state: s, polls: p });
        yield_now().await;
        assert_eq!(polls.borrow().len(), 1);
        let remote_before = r.stats().remote_wakes;
        let waker = state.wait_for_waker();
        // Block the loop thread while another thread wakes the task 1000 times.
        thread::scope(|sc| {
            sc.spawn(|| {
                for _ in 0..1000 {
                    waker.wake_by_ref();
                }
            });
        });
        assert_eq!(t.state(), TaskState::Scheduled);
        yield_now().await;
        yield_now().await;
        assert_eq!(polls.borrow().len(), 2, "polled once for 1000 wakes");
        assert_eq!(r.stats().remote_wakes, remote_before + 1);
        state.fire();
        t.await.unwrap();
    });
}

/// A task that wakes itself several times during one poll is queued once.
#[test]
fn wakes_during_the_poll_requeue_the_task_once() {
    struct WakeSelf {
        polls: Rc<Cell<u32>>,
    }
    impl Future for WakeSelf {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            if self.polls.get() == 1 {
                cx.waker().wake_by_ref();
                cx.waker().wake_by_ref();
                cx.waker().clone().wake();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }
    }
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(Cell::new(0));
    let t = rt.spawn(WakeSelf {
        polls: polls.clone(),
    });
    rt.run_once().unwrap();
    assert_eq!(polls.get(), 1);
    assert_eq!(t.state(), TaskState::Scheduled);
    rt.run_once().unwrap();
    assert_eq!(polls.get(), 2);
    assert!(t.is_done());
    let s = rt.stats();
    assert_eq!(s.polls, 2);
    assert_eq!(s.loop_iterations, 2);
    assert_eq!(s.remote_wakes, 0, "local wakes use the local queue");
}

/// A thread and a task hand a counter back and forth many times, each side waiting for the
/// other: a single lost wake-up would hang (and trip the watchdog).
#[test]
fn ping_pong_between_a_task_and_a_thread_loses_no_wakeup() {
    const ROUNDS: u64 = 500;
    let _wd = Watchdog::new("ping_pong_between_a_task_and_a_thread_loses_no_wakeup");

    struct WaitFor {
        shared: Arc<(AtomicU64, Mutex<Option<Waker>>)>,
        target: u64,
    }
    impl Future for WaitFor {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.shared.1.lock().unwrap() = Some(cx.waker().clone());
            if self.shared.0.load(Ordering::SeqCst) >= self.target {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    let rt = Runtime::new().unwrap();
    let shared = Arc::new((AtomicU64::new(0), Mutex::new(None::<Waker>)));
    let (to_thread, from_task) = std::sync::mpsc::channel::<u64>();
    let sh = shared.clone();
    let remote = thread::spawn(move || {
        for i in 0..ROUNDS {
            sh.0.store(2 * i + 1, Ordering::SeqCst);
            let w = sh.1.lock().unwrap().take();
            if let Some(w) = w {
                w.wake();
            }
            assert_eq!(from_task.recv().unwrap(), 2 * i + 2);
        }
    });
    let loop_thread = thread::current().id();
    let rounds = rt.block_on(async move {
        let mut rounds = 0;
        for i in 0..ROUNDS {
            WaitFor {
                shared: shared.clone(),
                target: 2 * i + 1,
            }
            .await;
            assert_eq!(thread::current().id(), loop_thread);
            shared.0.store(2 * i + 2, Ordering::SeqCst);
            to_thread.send(2 * i + 2).unwrap();
            rounds += 1;
        }
        rounds
    });
    remote.join().unwrap();
    assert_eq!(rounds, ROUNDS);
}

/// Runtime A's waker woken from inside runtime B (on B's thread) goes to A, not into B's ready
/// queue: A's task is polled on A's thread, and B polls only its own tasks.
#[test]
fn a_waker_woken_inside_another_runtime_goes_to_its_own_runtime() {
    let _wd = Watchdog::new("a_waker_woken_inside_another_runtime_goes_to_its_own_runtime");
    let rt_a = Runtime::new().unwrap();
    let polls = Rc::new(RefCell::new(Vec::new()));
    let state = Arc::new(SignalState::default());
    let (p, s) = (polls.clone(), state.clone());
    let st = state.clone();
    let b_stats = thread::spawn(move || {
        let waker = st.wait_for_waker();
        let rt_b = Runtime::new().unwrap();
        rt_b.block_on(async move {
            st.ready.store(true, Ordering::SeqCst);
            waker.wake(); // inside B's task, on B's thread
            yield_now().await;
        });
        rt_b.stats()
    });
    let v = rt_a.block_on(async move {
        spawn(Signal { state: s, polls: p }).await.unwrap();
        "a's task finished"
    });
    let b_stats = b_stats.join().unwrap();
    assert_eq!(v, "a's task finished");
    assert_eq!(b_stats.tasks_spawned, 1, "only B's main");
    assert_eq!(b_stats.polls, 2, "B polled only its main task");
    assert_eq!(b_stats.remote_wakes, 0);
    let me = thread::current().id();
    assert!(polls.borrow().iter().all(|t| *t == me));
    assert!(rt_a.stats().remote_wakes >= 1);
}

/// A task woken from another thread while its runtime is not running at all (between runs) is
/// queued and polled on the next run.
#[test]
fn a_remote_wake_between_runs_is_picked_up_by_the_next_run() {
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(RefCell::new(Vec::new()));
    let state = Arc::new(SignalState::default());
    let task = rt.spawn(Signal {
        state: state.clone(),
        polls: polls.clone(),
    });
    rt.run_until_complete(yield_now());
    assert_eq!(task.state(), TaskState::Pending);
    let st = state.clone();
    thread::spawn(move || st.fire()).join().unwrap();
    assert_eq!(task.state(), TaskState::Scheduled, "queued in the injector");
    rt.run_until_complete(task).unwrap();
    assert_eq!(polls.borrow().len(), 2);
    assert_eq!(rt.stats().remote_wakes, 1);
}
