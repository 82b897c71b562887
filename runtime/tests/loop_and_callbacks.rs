//! Running the loop (`block_on`, `run_until_complete`, `run_forever`/`stop`, `Handle`), and
//! callbacks and time (`call_soon`, `call_later`, `call_at`, their handles, the iteration rule).
//!
//! Every test builds its own runtime and asserts orders, counts and states, never durations.
//! "Never early" checks compare `Instant::now()` with a deadline inside the callback: that is a
//! correctness check, not a timing measurement.

mod common;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{panic_text, DropCount, Gate, Log, SendDropCount};
use ringloop_runtime::{
    all_tasks, call_at, call_later, call_soon, current_task, set_exception_handler, sleep, spawn,
    spawn_named, stop, task_tree, time, timeout, Cancelled, Runtime, TaskState,
};

const NO_RUNTIME: &str = "must be called from the context of a running ringloop runtime";
const NESTED: &str = "cannot start a ringloop runtime from within a running one";

// ---------------------------------------------------------------------------------------------
// block_on
// ---------------------------------------------------------------------------------------------

#[test]
fn block_on_returns_the_future_output_and_may_borrow_locals() {
    let rt = Runtime::new().unwrap();
    let local = [1, 2, 3];
    let sum = rt.block_on(async {
        sleep(Duration::from_millis(1)).await.unwrap();
        local.iter().sum::<i32>()
    });
    assert_eq!(sum, 6);
    // The runtime can be reused.
    assert_eq!(rt.block_on(async { "again" }), "again");
    let s = rt.stats();
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.tasks_spawned, 2, "one main task per block_on");
    assert_eq!(s.tasks_completed, 2);
}

/// asyncio.run: when the main future is done, every task still alive is cancelled and driven to
/// its end, so a task that catches the cancellation may clean up asynchronously.
#[test]
fn block_on_cancels_leftover_tasks_and_lets_them_clean_up_asynchronously() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let leftover = rt.block_on(async move {
        let task = spawn_named("leftover", async move {
            match sleep(Duration::from_secs(3600)).await {
                Ok(()) => l.push("slept an hour"),
                Err(c) => {
                    l.push(format!("cancelled: {c}"));
                    // Asynchronous cleanup: the request was consumed, this sleep completes.
                    sleep(Duration::from_millis(1)).await.unwrap();
                    l.push("cleanup done");
                    return Err(c);
                }
            }
            Ok(())
        });
        sleep(Duration::ZERO).await.unwrap(); // let it start
        assert_eq!(task.state(), TaskState::Pending);
        task.as_ref().clone() // the handle drops here: the task is detached
    });
    assert_eq!(
        log.take(),
        ["cancelled: task was cancelled", "cleanup done"],
        "the cleanup ran to its end before block_on returned"
    );
    assert!(leftover.is_done());
    assert!(leftover.is_cancelled());
    let s = rt.stats();
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.tasks_cancelled, 1);
    assert_eq!(s.timers_pending, 0);
}

#[test]
fn block_on_drops_a_task_that_suppresses_cancel_forever_after_the_shutdown_timeout() {
    let rt = Runtime::builder()
        .shutdown_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let drops = DropCount::default();
    let cancels_seen = Rc::new(Cell::new(0));
    let (g, seen) = (drops.guard(), cancels_seen.clone());
    let stubborn = rt.block_on(async move {
        let t = spawn(async move {
            let _g = g;
            loop {
                if sleep(Duration::from_secs(3600)).await.is_err() {
                    seen.set(seen.get() + 1); // suppressed: carry on sleeping
                }
            }
        });
        sleep(Duration::ZERO).await.unwrap();
        t.as_ref().clone()
    });
    assert_eq!(
        cancels_seen.get(),
        1,
        "cancelled exactly once, not re-cancelled"
    );
    assert_eq!(drops.get(), 1, "dropped once the grace period ran out");
    assert_eq!(stubborn.state(), TaskState::Cancelled);
    let s = rt.stats();
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.tasks_cancelled, 1);
    assert_eq!(s.timers_pending, 0);
}

/// Shutdown cancels in rounds, like asyncio.run's `_cancel_all_tasks` which waits only for the
/// tasks it cancelled: a helper that a cancelled task spawns *and awaits* during its cleanup is
/// not cancelled (the flush happens), and a helper it leaves behind is cancelled in the next
/// round (it sees `Err(Cancelled)`) instead of being dropped at the shutdown timeout.
#[test]
fn block_on_lets_cleanup_helpers_run_and_cancels_the_ones_left_behind() {
    let rt = Runtime::builder()
        .shutdown_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        spawn(async move {
            let c = sleep(Duration::from_secs(3600)).await.unwrap_err();
            let l2 = l.clone();
            let flush = spawn(async move {
                sleep(Duration::from_millis(1)).await.unwrap();
                l2.push("flushed");
            });
            let l3 = l.clone();
            spawn(async move {
                if sleep(Duration::from_secs(3600)).await.is_err() {
                    l3.push("leftover helper cancelled");
                }
            });
            flush.await.unwrap();
            l.push("cleanup done");
            Err::<(), _>(c)
        });
        sleep(Duration::ZERO).await.unwrap();
    });
    assert_eq!(
        log.take(),
        ["flushed", "cleanup done", "leftover helper cancelled"]
    );
    let s = rt.stats();
    assert_eq!(s.tasks_alive, 0);
    // The leftover helper caught its cancel and returned normally: it completed.
    assert_eq!(
        s.tasks_completed, 3,
        "main, the flush helper, the leftover helper"
    );
    assert_eq!(
        s.tasks_cancelled, 1,
        "the original task let its cancel escape"
    );
}

#[test]
fn block_on_resumes_a_panic_of_its_future_after_cleaning_up_the_other_tasks() {
    let reports = Rc::new(Cell::new(0));
    let r = reports.clone();
    let rt = Runtime::builder()
        .exception_handler(move |_| r.set(r.get() + 1))
        .build()
        .unwrap();
    let drops = DropCount::default();
    let g = drops.guard();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async move {
            spawn(async move {
                let _g = g;
                let _ = sleep(Duration::from_secs(3600)).await;
            });
            sleep(Duration::ZERO).await.unwrap();
            panic!("main failed");
        })
    }));
    assert_eq!(panic_text(&*result.unwrap_err()), "main failed");
    assert_eq!(
        drops.get(),
        1,
        "the other task was still cancelled and ended"
    );
    let s = rt.stats();
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.tasks_panicked, 1);
    assert_eq!(
        s.tasks_cancelled, 0,
        "the other task saw the cancel and returned"
    );
    assert_eq!(s.tasks_completed, 1);
    assert_eq!(
        reports.get(),
        0,
        "the main future's panic is resumed, not also reported (it would show twice)"
    );
}

#[test]
fn run_until_complete_leaves_other_tasks_alive_for_a_later_run() {
    let rt = Runtime::new().unwrap();
    // A gate, not a short sleep: a slow machine could finish the sleep within the first run.
    let gate = Gate::default();
    let wait = gate.wait();
    let task = rt.spawn(async {
        wait.await;
        sleep(Duration::from_millis(1)).await.unwrap();
        7
    });
    rt.run_until_complete(async { sleep(Duration::ZERO).await.unwrap() });
    assert_eq!(task.state(), TaskState::Pending, "still suspended");
    assert_eq!(rt.stats().tasks_alive, 1);
    // A later run carries it on, timers included.
    gate.open();
    assert_eq!(rt.run_until_complete(task).unwrap(), 7);
    assert_eq!(rt.stats().tasks_alive, 0);
}

#[test]
fn block_on_after_run_until_complete_cancels_what_the_earlier_run_left() {
    let rt = Runtime::new().unwrap();
    let t = rt.spawn(async {
        sleep(Duration::from_secs(3600)).await?;
        Ok::<_, Cancelled>(())
    });
    rt.run_until_complete(async { sleep(Duration::ZERO).await.unwrap() });
    assert!(!t.is_done());
    rt.block_on(async {});
    assert!(t.is_cancelled());
    assert_eq!(rt.stats().tasks_alive, 0);
}

/// `stop()` does not apply to `block_on` (it runs until its future is done), and it must not
/// linger: the loop still parks while the future waits, and a later `run_forever` is not stopped
/// by the stale request.
#[test]
fn stop_inside_block_on_has_no_effect_and_does_not_linger() {
    let rt2 = Rc::new(Runtime::new().unwrap());
    let r = rt2.clone();
    let (parks_before, parks_after, iterations) = rt2.block_on(async move {
        stop();
        let before = r.stats();
        sleep(Duration::from_millis(20)).await.unwrap();
        let after = r.stats();
        (
            before.parks,
            after.parks,
            after.loop_iterations - before.loop_iterations,
        )
    });
    assert!(
        parks_after > parks_before,
        "the loop must park while the only work is a timer"
    );
    assert!(
        iterations < 100,
        "the loop spun {iterations} times instead of parking"
    );
    // No stale stop: this run_forever runs both iterations before its own stop.
    let log = Log::default();
    let l = log.clone();
    rt2.call_soon(move || {
        l.push("first");
        let l = l.clone();
        call_soon(move || {
            l.push("second");
            stop();
        });
    });
    rt2.run_forever().unwrap();
    assert_eq!(log.take(), ["first", "second"]);
}

// ---------------------------------------------------------------------------------------------
// run_forever and stop
// ---------------------------------------------------------------------------------------------

/// asyncio: stop() finishes the current batch of callbacks, then `run_forever` returns; what
/// the batch schedules waits for the next run.
#[test]
fn run_forever_returns_when_a_task_calls_stop_after_finishing_the_iteration() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let task = rt.spawn(async move {
        l.push("task calls stop");
        stop();
        let l2 = l.clone();
        call_soon(move || l2.push("scheduled by the stopping task"));
        sleep(Duration::ZERO).await.unwrap();
        l.push("task resumed");
    });
    let l = log.clone();
    rt.call_soon(move || l.push("callback in the same iteration"));
    rt.run_forever().unwrap();
    assert_eq!(
        log.take(),
        ["task calls stop", "callback in the same iteration"]
    );
    assert_eq!(rt.stats().loop_iterations, 1);
    // The next run carries on where this one stopped.
    rt.run_until_complete(task).unwrap();
    assert_eq!(
        log.take(),
        ["scheduled by the stopping task", "task resumed"]
    );
}

#[test]
fn run_forever_returns_when_a_callback_calls_stop() {
    let rt = Runtime::new().unwrap();
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    rt.call_soon(move || {
        r.set(r.get() + 1);
        call_later(Duration::from_millis(1), stop);
    });
    rt.run_forever().unwrap();
    assert_eq!(ran.get(), 1);
    assert_eq!(rt.stats().timers_pending, 0);
    assert_eq!(rt.stats().callbacks_run, 2);
}

#[test]
fn run_forever_returns_when_another_thread_calls_handle_stop() {
    let rt = Runtime::new().unwrap();
    // Something alive but idle, so the loop has nothing to do and parks with no timer.
    let idle = rt.spawn(std::future::pending::<()>());
    let handle = rt.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.stop();
    });
    rt.run_forever().unwrap();
    stopper.join().unwrap();
    assert!(!idle.is_done());
    let s = rt.stats();
    assert_eq!(s.timers_pending, 0);
    assert!(s.parks >= 1, "the loop was parked when the stop arrived");
}

/// asyncio: a stop requested before `run_forever` makes it run one iteration and return.
#[test]
fn handle_stop_before_run_forever_runs_exactly_one_iteration() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.call_soon(move || {
        l.push("first");
        let l = l.clone();
        call_soon(move || l.push("second"));
    });
    rt.handle().stop();
    rt.run_forever().unwrap();
    assert_eq!(log.take(), ["first"]);
    assert_eq!(rt.stats().loop_iterations, 1);
    assert_eq!(rt.stats().parks, 0);
}

#[test]
fn call_soon_threadsafe_runs_on_the_loop_thread_in_submission_order() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    let loop_thread = std::thread::current().id();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = order.clone();
    let submitter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2));
        for i in 0..10 {
            let o = o.clone();
            assert!(handle.call_soon_threadsafe(move || {
                assert_eq!(std::thread::current().id(), loop_thread);
                o.lock().unwrap().push(i);
            }));
        }
        assert!(handle.call_soon_threadsafe(stop));
    });
    rt.run_forever().unwrap();
    submitter.join().unwrap();
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
    assert_eq!(rt.stats().callbacks_run, 11);
}

#[test]
fn call_soon_threadsafe_after_the_runtime_is_dropped_returns_false_and_drops_the_closure() {
    let rt = Runtime::new().unwrap();
    let handle = rt.handle();
    assert!(!handle.is_closed());
    drop(rt);
    assert!(handle.is_closed());
    let drops = SendDropCount::default();
    let g = drops.guard();
    let h = handle.clone();
    std::thread::spawn(move || {
        assert!(!h.call_soon_threadsafe(move || drop(g)));
        h.stop(); // harmless too
    })
    .join()
    .unwrap();
    assert_eq!(drops.get(), 1);
}

#[test]
fn call_soon_threadsafe_queued_before_the_runtime_is_dropped_is_dropped_with_it() {
    let rt = Runtime::new().unwrap();
    let drops = SendDropCount::default();
    let ran = Arc::new(AtomicUsize::new(0));
    let (g, r) = (drops.guard(), ran.clone());
    assert!(rt.handle().call_soon_threadsafe(move || {
        let _g = g;
        r.fetch_add(1, Ordering::SeqCst);
    }));
    drop(rt);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(drops.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Outside a runtime; nested runtimes
// ---------------------------------------------------------------------------------------------

fn assert_panics_outside(what: &str, f: impl FnOnce()) {
    let payload = panic::catch_unwind(AssertUnwindSafe(f))
        .err()
        .unwrap_or_else(|| panic!("{what} did not panic outside a runtime"));
    let text = panic_text(&*payload);
    assert!(
        text.contains(NO_RUNTIME),
        "{what} panicked with an unclear message: {text:?}"
    );
}

/// Polls `f` once with a waker that does nothing (`Waker::noop` needs a newer Rust than our
/// MSRV).
fn poll_once<F: std::future::Future>(f: F) {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(&waker);
    let _ = f.as_mut().poll(&mut cx);
}

#[test]
fn free_functions_outside_a_runtime_panic_with_a_clear_message() {
    assert_panics_outside("spawn", || drop(spawn(async {})));
    assert_panics_outside("spawn_named", || drop(spawn_named("x", async {})));
    assert_panics_outside("call_soon", || drop(call_soon(|| {})));
    assert_panics_outside("call_later", || {
        drop(call_later(Duration::from_millis(1), || {}))
    });
    assert_panics_outside("call_at", || drop(call_at(Instant::now(), || {})));
    assert_panics_outside("current_task", || drop(current_task()));
    assert_panics_outside("all_tasks", || drop(all_tasks()));
    assert_panics_outside("task_tree", || drop(task_tree()));
    assert_panics_outside("stop", stop);
    assert_panics_outside("set_exception_handler", || set_exception_handler(|_| {}));
    assert_panics_outside("a polled sleep", || {
        poll_once(sleep(Duration::from_millis(1)))
    });
    assert_panics_outside("a polled sleep(0)", || poll_once(sleep(Duration::ZERO)));
    // An hour, so the deadline cannot pass before the poll (a timeout past its deadline
    // takes another path), however slow the machine.
    assert_panics_outside("a polled timeout", || {
        poll_once(timeout(
            Duration::from_secs(3600),
            std::future::pending::<()>(),
        ))
    });
    // Creating a sleep is fine (asyncio creates coroutines outside a loop too), and so is
    // reading the clock.
    let _s = sleep(Duration::from_millis(1));
    let _now = time();
}

#[test]
fn free_functions_between_runs_of_an_existing_runtime_still_panic() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {});
    assert_panics_outside("spawn", || drop(spawn(async {})));
    assert_panics_outside("call_soon", || drop(call_soon(|| {})));
    // The runtime's own methods work outside its loop.
    let t = rt.spawn(async { 3 });
    assert_eq!(rt.block_on(t).unwrap(), 3);
}

/// A nested `block_on` on a runtime thread is refused: the task that tried ends panicked with
/// the message, and the loop goes on (asyncio raises "This event loop is already running").
#[test]
fn nested_block_on_in_a_task_is_refused_and_the_loop_goes_on() {
    let reports = Rc::new(RefCell::new(Vec::new()));
    let r = reports.clone();
    let rt = Rc::new(
        Runtime::builder()
            .exception_handler(move |ctx| {
                r.borrow_mut()
                    .push(ctx.task.as_ref().map(|t| t.name()).unwrap_or_default())
            })
            .build()
            .unwrap(),
    );
    let inner_rt = rt.clone();
    let (same, other, forever) = rt.block_on(async move {
        let same = spawn_named("same runtime", async move {
            inner_rt.block_on(async { 1 });
        });
        let other = spawn_named("other runtime", async {
            let other = Runtime::new().unwrap();
            other.block_on(async { 2 });
        });
        let forever = spawn_named("run_forever", async {
            let other = Runtime::new().unwrap();
            let _ = other.run_forever();
        });
        (same.await, other.await, forever.await)
    });
    for (name, r) in [
        ("same runtime", same),
        ("other runtime", other),
        ("run_forever", forever),
    ] {
        let e = r.unwrap_err();
        assert!(e.is_panic(), "{name}: {e:?}");
        let msg = e.panic_message().unwrap_or_default().to_owned();
        assert!(msg.contains(NESTED), "{name}: {msg:?}");
    }
    assert_eq!(
        *reports.borrow(),
        ["same runtime", "other runtime", "run_forever"]
    );
    // The loop went on and is still usable.
    assert_eq!(rt.block_on(async { 5 }), 5);
    assert_eq!(rt.stats().tasks_panicked, 3);
}

#[test]
fn nested_block_on_in_the_main_future_is_refused_with_the_message() {
    let rt = Runtime::new().unwrap();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async { rt.block_on(async {}) });
    }))
    .unwrap_err();
    assert!(panic_text(&*payload).contains(NESTED));
    assert_eq!(rt.stats().tasks_alive, 0);
    assert_eq!(rt.block_on(async { 1 }), 1, "the runtime is still usable");
}

// ---------------------------------------------------------------------------------------------
// Callbacks and time
// ---------------------------------------------------------------------------------------------

#[test]
fn call_soon_callbacks_run_in_fifo_order() {
    let rt = Runtime::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    for i in 0..50 {
        let o = order.clone();
        rt.call_soon(move || o.borrow_mut().push(i));
    }
    rt.block_on({
        let order = order.clone();
        async move {
            for i in 50..100 {
                let o = order.clone();
                call_soon(move || o.borrow_mut().push(i));
            }
            sleep(Duration::ZERO).await.unwrap();
            sleep(Duration::ZERO).await.unwrap();
        }
    });
    assert_eq!(*order.borrow(), (0..100).collect::<Vec<_>>());
    assert_eq!(rt.stats().callbacks_run, 100);
}

#[test]
fn call_soon_from_a_callback_runs_on_the_next_iteration() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.call_soon(move || {
        l.push("outer");
        let l = l.clone();
        call_soon(move || l.push("inner"));
    });
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["outer"]);
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["inner"]);
}

#[test]
fn call_later_never_fires_early() {
    let rt = Runtime::new().unwrap();
    let mut fired = rt.block_on(async {
        let fired = Rc::new(RefCell::new(Vec::new()));
        for ms in [3u64, 0, 2, 1] {
            let f = fired.clone();
            let delay = Duration::from_millis(ms);
            // call_later reads the clock after this, so its deadline is at least `earliest`.
            let earliest = Instant::now() + delay;
            call_later(delay, move || {
                assert!(Instant::now() >= earliest, "call_later({ms}ms) fired early");
                f.borrow_mut().push(ms);
            });
        }
        while fired.borrow().len() < 4 {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        fired.take()
    });
    // (The firing order is checked with call_at below: each call_later reads the clock itself,
    // so a descheduled test thread could legitimately reorder these deadlines.)
    fired.sort_unstable();
    assert_eq!(fired, [0, 1, 2, 3]);
    assert_eq!(rt.stats().timers_pending, 0);
}

#[test]
fn timers_fire_in_deadline_order_not_scheduling_order() {
    let rt = Runtime::new().unwrap();
    let order = rt.block_on(async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let base = time();
        for ms in [3u64, 0, 2, 1] {
            let o = order.clone();
            call_at(base + Duration::from_millis(ms), move || {
                o.borrow_mut().push(ms)
            });
        }
        while order.borrow().len() < 4 {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        order.take()
    });
    assert_eq!(order, [0, 1, 2, 3]);
}

#[test]
fn call_at_never_fires_early_and_a_past_deadline_fires_on_the_next_iteration() {
    let rt = Runtime::new().unwrap();
    let fired = Rc::new(Cell::new(0));
    rt.block_on({
        let fired = fired.clone();
        async move {
            let deadline = time() + Duration::from_millis(2);
            let f = fired.clone();
            call_at(deadline, move || {
                assert!(Instant::now() >= deadline, "call_at fired early");
                f.set(f.get() + 1);
            });
            let f = fired.clone();
            call_at(time() - Duration::from_millis(5), move || {
                f.set(f.get() + 10)
            });
            // The past timer expires in the next iteration, queued behind this task's own
            // wake-up in that iteration; one more yield and it has run.
            sleep(Duration::ZERO).await.unwrap();
            sleep(Duration::ZERO).await.unwrap();
            if Instant::now() < deadline {
                assert_eq!(fired.get(), 10, "only the past deadline has fired");
            }
            assert!(fired.get() >= 10, "the past deadline fired at once");
            sleep_until_at_least(deadline).await;
            while fired.get() != 11 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
        }
    });
    assert_eq!(fired.get(), 11);
}

async fn sleep_until_at_least(deadline: Instant) {
    ringloop_runtime::sleep_until(deadline).await.unwrap();
    assert!(Instant::now() >= deadline);
}

/// Polls `sleep` once from the running task, so that its timer is armed now, without yielding
/// to the loop (which, on a slow machine, could already run timers the test means to schedule
/// first).
async fn arm_now(mut sleep: std::pin::Pin<&mut ringloop_runtime::Sleep>) {
    std::future::poll_fn(|cx| {
        assert!(std::future::Future::poll(sleep.as_mut(), cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await
}

#[test]
fn equal_deadlines_fire_in_scheduling_order_with_tasks_and_callbacks_interleaved() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let deadline = time() + Duration::from_millis(20);
        for name in ["a", "b", "c"] {
            let l = l.clone();
            call_at(deadline, move || l.push(name));
        }
        // This task's sleep, armed after a, b, c and before d, e: polled once here, so that
        // nothing yields to the loop (which could fire a, b, c on a slow machine) until every
        // timer is in.
        let mut sleeper = std::pin::pin!(ringloop_runtime::sleep_until(deadline));
        arm_now(sleeper.as_mut()).await;
        for name in ["d", "e"] {
            let l = l.clone();
            call_at(deadline, move || l.push(name));
        }
        // An earlier deadline scheduled last still fires first.
        let l2 = l.clone();
        call_at(deadline - Duration::from_millis(1), move || {
            l2.push("earlier")
        });
        sleeper.await.unwrap();
        l.push("task");
        sleep(Duration::ZERO).await.unwrap();
    });
    assert_eq!(log.take(), ["earlier", "a", "b", "c", "task", "d", "e"]);
}

/// A sleep whose deadline has already passed when it is first polled still goes through the
/// timers, in deadline order with `call_at` callbacks (asyncio's `call_later` with a due
/// deadline); only `sleep(Duration::ZERO)` is a plain yield.
#[test]
fn a_sleep_already_due_fires_in_deadline_order_with_callbacks() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let now = time();
        let lt = l.clone();
        let sleeper = spawn(async move {
            ringloop_runtime::sleep_until(now - Duration::from_millis(2))
                .await
                .unwrap();
            lt.push("task");
        });
        sleep(Duration::ZERO).await.unwrap(); // the task polls its sleep now
        let late = l.clone();
        call_at(now - Duration::from_millis(1), move || late.push("late"));
        let early = l.clone();
        call_at(now - Duration::from_millis(3), move || early.push("early"));
        sleeper.await.unwrap();
        sleep(Duration::ZERO).await.unwrap();
    });
    assert_eq!(log.take(), ["early", "task", "late"]);
}

/// A sleep polled again after its deadline, before the loop has run its timer, does not finish
/// ahead of a timer due earlier: it finishes when its own timer fires, in deadline order.
#[test]
fn a_sleep_repolled_after_its_deadline_waits_for_its_timer_to_fire() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let deadline = time() + Duration::from_millis(5);
        let mut sleeper = std::pin::pin!(ringloop_runtime::sleep_until(deadline));
        arm_now(sleeper.as_mut()).await;
        let earlier = l.clone();
        call_at(deadline - Duration::from_millis(1), move || {
            earlier.push("earlier")
        });
        // Both deadlines pass without the loop running: the next poll of the sleep is late.
        std::thread::sleep(Duration::from_millis(10));
        sleeper.await.unwrap();
        l.push("sleep");
    });
    assert_eq!(log.take(), ["earlier", "sleep"]);
}

#[test]
fn cancelled_call_later_never_runs_drops_its_closure_and_its_timer_at_once() {
    let rt = Rc::new(Runtime::new().unwrap());
    let drops = DropCount::default();
    let ran = Rc::new(Cell::new(false));
    let r = rt.clone();
    rt.block_on({
        let (g, ran) = (drops.guard(), ran.clone());
        async move {
            let before = r.stats().timers_pending;
            let h = call_later(Duration::from_millis(1), move || {
                let _g = g;
                ran.set(true);
            });
            assert_eq!(r.stats().timers_pending, before + 1);
            assert!(!h.is_cancelled());
            assert!(h.cancel());
            assert!(h.is_cancelled());
            assert_eq!(r.stats().timers_pending, before, "the timer left at once");
            assert_eq!(drops.get(), 1, "the closure was dropped at cancel");
            assert!(!h.cancel(), "a second cancel is refused");
            sleep(Duration::from_millis(3)).await.unwrap();
        }
    });
    assert!(!ran.get());
    assert_eq!(rt.stats().callbacks_run, 0);
}

#[test]
fn cancelled_call_soon_never_runs_and_is_not_counted() {
    let rt = Runtime::new().unwrap();
    let ran = Rc::new(Cell::new(0));
    let (a, b) = (ran.clone(), ran.clone());
    let h = rt.call_soon(move || a.set(a.get() + 1));
    rt.call_soon(move || b.set(b.get() + 10));
    assert!(h.cancel());
    rt.run_once().unwrap();
    assert_eq!(ran.get(), 10);
    assert_eq!(rt.stats().callbacks_run, 1);
}

#[test]
fn cancel_after_the_callback_ran_returns_false() {
    let rt = Runtime::new().unwrap();
    let h = rt.call_soon(|| {});
    rt.run_once().unwrap();
    assert!(!h.cancel());
    assert!(!h.is_cancelled());
}

/// Timer keys are per runtime: a handle (or sleep) from runtime B, cancelled while runtime A
/// runs on the same thread, must not disarm A's timer that happens to have the same slot and
/// sequence number.
#[test]
fn callback_handle_of_another_runtime_never_cancels_this_runtimes_timer() {
    let b = Runtime::new().unwrap();
    let b_handle = b.run_until_complete(async { call_later(Duration::from_secs(3600), || {}) });
    let a = Runtime::new().unwrap();
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    a.block_on(async move {
        call_later(Duration::from_millis(1), move || f.set(true));
        assert!(
            b_handle.cancel(),
            "B's callback is cancelled (it will never run)"
        );
        sleep(Duration::from_millis(3)).await.unwrap();
    });
    assert!(fired.get(), "A's timer was disarmed by B's handle");
    assert_eq!(a.stats().timers_pending, 0);
}

/// `Sleep` is `Send`: armed on runtime A, moved to another thread and dropped there under
/// runtime B, it must not disarm B's timer that has the same slot and sequence number; A
/// keeps the abandoned timer until it fires, then drops it.
#[test]
fn a_sleep_dropped_under_another_threads_runtime_never_cancels_that_runtimes_timer() {
    let a = Runtime::new().unwrap();
    // Far enough off that A's first iteration cannot find it due, however slow the machine
    // (under qemu's emulation a few milliseconds pass before `block_on` returns, and A would
    // then fire the timer itself).
    let deadline = Instant::now() + Duration::from_millis(500);
    #[allow(clippy::async_yields_async)] // the sleep is carried out, to another thread
    let armed_on_a = a.block_on(async move {
        let mut s = Box::pin(ringloop_runtime::sleep_until(deadline));
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(s.as_mut(), cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        s
    });
    std::thread::spawn(move || {
        let b = Runtime::new().unwrap();
        b.block_on(async move {
            let fired = Rc::new(Cell::new(false));
            let f = fired.clone();
            call_later(Duration::from_millis(1), move || f.set(true));
            drop(armed_on_a);
            assert_eq!(ringloop_runtime::current_stats().timers_pending, 1);
            sleep(Duration::from_millis(2)).await.unwrap();
            assert!(fired.get(), "B's timer was disarmed by A's sleep");
        });
    })
    .join()
    .unwrap();
    assert_eq!(
        a.stats().timers_pending,
        1,
        "still armed on A, out of reach"
    );
    a.block_on(async move {
        ringloop_runtime::sleep_until(deadline + Duration::from_millis(1))
            .await
            .unwrap();
    });
    assert_eq!(a.stats().timers_pending, 0);
}

// ---------------------------------------------------------------------------------------------
// One iteration runs only what was ready at its start
// ---------------------------------------------------------------------------------------------

#[test]
fn one_iteration_runs_only_what_was_ready_at_its_start() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.call_soon(move || {
        l.push("a");
        let l = l.clone();
        call_soon(move || l.push("b"));
    });
    let l = log.clone();
    let _yielder = rt.spawn(async move {
        loop {
            l.push("t");
            sleep(Duration::ZERO).await.unwrap();
        }
    });
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["a", "t"]);
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["b", "t"]);
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["t"]);
    let s = rt.stats();
    assert_eq!(s.loop_iterations, 3);
    assert_eq!(s.polls, 3);
    assert_eq!(s.callbacks_run, 2);
    assert_eq!(s.parks, 0);
}

/// A task that always reschedules itself is polled once per iteration; timers and callbacks
/// still run, and the loop can be stopped.
#[test]
fn a_task_rescheduling_itself_forever_does_not_starve_timers_or_callbacks() {
    let rt = Runtime::new().unwrap();
    let spins = Rc::new(Cell::new(0u64));
    let drops = DropCount::default();
    let (s, g) = (spins.clone(), drops.guard());
    let _spinner = rt.spawn(async move {
        let _g = g;
        loop {
            s.set(s.get() + 1);
            sleep(Duration::ZERO).await.unwrap();
        }
    });
    let soon_at = Rc::new(Cell::new(None));
    let (s, sa) = (spins.clone(), soon_at.clone());
    rt.call_soon(move || sa.set(Some(s.get())));
    let fired_at = Rc::new(Cell::new(None));
    let (s, fa) = (spins.clone(), fired_at.clone());
    rt.call_soon(move || {
        let deadline = Instant::now() + Duration::from_millis(2);
        call_at(deadline, move || {
            assert!(Instant::now() >= deadline);
            fa.set(Some(s.get()));
            stop();
        });
    });
    rt.run_forever().unwrap();
    assert_eq!(
        soon_at.get(),
        Some(1),
        "the callback ran in the first iteration"
    );
    let fired_at = fired_at.get().expect("the timer fired");
    assert!(
        fired_at >= 2,
        "the spinner kept running while the timer waited"
    );
    let s = rt.stats();
    assert_eq!(spins.get(), fired_at, "stopped in the timer's iteration");
    assert_eq!(s.loop_iterations, spins.get(), "one poll per iteration");
    assert_eq!(s.polls, spins.get());
    assert_eq!(s.parks, 0, "never parked: there was always work");
    assert_eq!(s.tasks_alive, 1);
    drop(rt);
    assert_eq!(drops.get(), 1, "dropping the runtime drops the spinner");
}

#[test]
fn loop_time_is_the_monotonic_clock_used_by_deadlines() {
    let rt = Runtime::new().unwrap();
    let t0 = rt.time();
    rt.block_on(async move {
        let t1 = time();
        assert!(t1 >= t0);
        let d = ringloop_runtime::sleep_until(t1 + Duration::from_millis(1));
        assert_eq!(d.deadline(), t1 + Duration::from_millis(1));
        d.await.unwrap();
        assert!(time() >= t1 + Duration::from_millis(1));
    });
    assert!(rt.time() >= t0);
}

#[test]
fn a_task_spawned_on_the_runtime_before_it_runs_has_no_parent_and_runs_first() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let early = rt.spawn(async move { l.push("early") });
    assert_eq!(early.state(), TaskState::Scheduled);
    assert_eq!(early.as_ref().parent_id(), None);
    let l = log.clone();
    rt.block_on(async move { l.push("main") });
    assert_eq!(log.take(), ["early", "main"]);
    assert!(early.is_done());
}

/// `runtime_local` (the companion crates' per-runtime state): one instance per runtime, the
/// same at every call on it, dropped when the runtime is.
#[test]
fn a_runtime_local_is_per_runtime_and_dropped_with_it() {
    #[derive(Default)]
    struct Cache(Cell<u32>, RefCell<Option<common::Guard>>);
    for backend in common::backends() {
        let drops = DropCount::default();
        let make = || {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            rt.block_on(async {
                let c = ringloop_runtime::runtime_local::<Cache>();
                assert_eq!(c.0.replace(c.0.get() + 1), 0, "new on this runtime");
                assert_eq!(
                    ringloop_runtime::runtime_local::<Cache>().0.get(),
                    1,
                    "the same one"
                );
                *c.1.borrow_mut() = Some(drops.guard());
            });
            rt
        };
        let (a, b) = (make(), make());
        assert_eq!(drops.get(), 0);
        drop(a);
        assert_eq!(drops.get(), 1, "{backend}: dropped with its runtime");
        drop(b);
        assert_eq!(drops.get(), 2, "{backend}");
    }
}
