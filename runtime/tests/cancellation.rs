//! Cancellation with asyncio's semantics over Rust's drop: delivery at the suspension point,
//! asynchronous cleanup, suppression, the await chain, foreign futures, detaching, `abort`,
//! `cancelling`/`uncancel`, and `timeout`/`wait_for`.
//!
//! Every test builds its own runtime and asserts orders, counts and states, never durations:
//! "cancelled at once" is shown by the loop never having had to park, not by a clock.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{yield_now, DropCount, Gate, Guard, Log};
use ringloop_runtime::{
    current_task, sleep, spawn, spawn_named, timeout, wait_for, Cancelled, Runtime, TaskError,
    TaskRef, TaskState, TimedOut,
};

const HOUR: Duration = Duration::from_secs(3600);

/// A future that knows nothing of ringloop: pending forever, counting its polls; its drop is
/// counted through the guard it owns.
struct Foreign {
    polls: Rc<Cell<u32>>,
    _guard: Guard,
}

impl Future for Foreign {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.polls.set(self.polls.get() + 1);
        Poll::Pending
    }
}

fn cancel_message(e: &TaskError) -> Option<String> {
    assert!(e.is_cancelled(), "expected a cancellation, got {e:?}");
    e.cancel_message().map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Delivery, cleanup, escape, suppression
// ---------------------------------------------------------------------------------------------

/// A task sleeping for an hour is cancelled now: its sleep resolves to `Err(Cancelled)` on the
/// next iteration, its timer leaves the heap, and the loop never had to wait.
#[test]
fn cancel_during_an_hour_long_sleep_is_delivered_at_once() {
    let rt = Rc::new(Runtime::new().unwrap());
    let r = rt.clone();
    let (err, sleeper) = rt.block_on(async move {
        let t = spawn(async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>("woke up")
        });
        yield_now().await;
        assert_eq!(r.stats().timers_pending, 1);
        assert!(t.cancel_with("now"));
        let sleeper = t.as_ref().clone();
        (t.await.unwrap_err(), sleeper)
    });
    assert_eq!(cancel_message(&err).as_deref(), Some("now"));
    assert_eq!(sleeper.state(), TaskState::Cancelled);
    assert!(sleeper.is_cancelled());
    let s = rt.stats();
    assert_eq!(s.parks, 0, "nothing ever had to wait for the hour");
    assert_eq!(s.timers_pending, 0, "the hour-long timer was disarmed");
    assert_eq!(s.tasks_cancelled, 1);
}

/// The task observes `Err(Cancelled)`, cleans up asynchronously (sleeps, cancels and awaits its
/// own child), then lets the error escape: it ends cancelled, with the message.
#[test]
fn a_cancelled_task_cleans_up_asynchronously_then_lets_the_cancel_escape() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let (err, task) = rt.block_on(async move {
        let t = spawn_named("worker", async move {
            let l2 = l.clone();
            let child = spawn_named("child", async move {
                let r = sleep(HOUR).await;
                l2.push(format!(
                    "child: {:?}",
                    r.as_ref().map_err(Cancelled::message)
                ));
                r
            });
            let c = match sleep(HOUR).await {
                Ok(()) => return Ok(()),
                Err(c) => c,
            };
            l.push(format!("worker saw: {c}"));
            sleep(Duration::from_millis(1)).await.unwrap(); // the request was consumed
            l.push("worker slept during cleanup");
            assert!(child.cancel_with("parent cleanup"));
            let child_result = child.await;
            l.push(format!(
                "child ended: {:?}",
                child_result
                    .as_ref()
                    .map(|_| ())
                    .map_err(TaskError::cancel_message)
            ));
            Err(c)
        });
        yield_now().await;
        t.cancel_with("shutdown");
        let task = t.as_ref().clone();
        (t.await.unwrap_err(), task)
    });
    assert_eq!(
        log.take(),
        [
            "worker saw: task was cancelled: shutdown",
            "worker slept during cleanup",
            "child: Err(Some(\"parent cleanup\"))",
            "child ended: Err(Some(\"parent cleanup\"))",
        ]
    );
    assert_eq!(cancel_message(&err).as_deref(), Some("shutdown"));
    assert!(task.is_cancelled());
    assert_eq!(task.state(), TaskState::Cancelled);
}

/// `?` converts `Cancelled` into `io::Error` and still counts as letting it escape.
#[test]
fn a_cancel_escaping_through_an_io_error_ends_the_task_cancelled() {
    let rt = Runtime::new().unwrap();
    let err = rt.block_on(async {
        let t = spawn(async {
            sleep(HOUR).await?;
            Ok::<(), io::Error>(())
        });
        yield_now().await;
        t.cancel_with("io");
        t.await.unwrap_err()
    });
    assert_eq!(cancel_message(&err).as_deref(), Some("io"));
}

/// Suppressing (dropping the `Cancelled` and carrying on) is asyncio's `except CancelledError:
/// pass`: the task ends with its value and is not cancelled; `cancelling()` still counts the
/// request until `uncancel()`.
#[test]
fn a_task_that_suppresses_the_cancel_returns_its_value_and_is_not_cancelled() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let t = spawn(async {
            let suppressed = sleep(HOUR).await.is_err();
            let me = current_task().unwrap();
            let before = me.cancelling();
            let after = me.uncancel();
            sleep(Duration::from_millis(1)).await.unwrap(); // no request left
            (suppressed, before, after)
        });
        yield_now().await;
        t.cancel();
        let task = t.as_ref().clone();
        assert_eq!(t.await.unwrap(), (true, 1, 0));
        assert!(!task.is_cancelled());
        assert_eq!(task.state(), TaskState::Finished);
    });
    assert_eq!(rt.stats().tasks_cancelled, 0);
}

/// The escape check counts every live `Cancelled` delivered to the task, wherever it is: one
/// stored outside the task (here in a shared cell) when the task returns counts as escaping, so
/// the task ends cancelled and its value is dropped. (Documented on `Cancelled`; asyncio has no
/// equivalent, as it tells an exception raised out of the coroutine from one stored away.)
#[test]
fn a_cancelled_value_still_alive_outside_the_task_counts_as_escaping() {
    let rt = Runtime::new().unwrap();
    let stash: Rc<RefCell<Option<Cancelled>>> = Rc::default();
    let s = stash.clone();
    let drops = DropCount::default();
    let g = drops.guard();
    let r = rt.block_on(async move {
        let t = spawn(async move {
            if let Err(c) = sleep(HOUR).await {
                *s.borrow_mut() = Some(c);
            }
            g // the value the task returns
        });
        yield_now().await;
        t.cancel();
        t.await.map(|_| ())
    });
    assert!(r.unwrap_err().is_cancelled());
    assert_eq!(drops.get(), 1, "the output was dropped");
    assert!(stash.borrow().is_some());
}

/// Only the text of the `Cancelled` kept: the task ended by suppressing.
#[test]
fn keeping_only_the_cancel_message_suppresses_the_cancel() {
    let rt = Runtime::new().unwrap();
    let r = rt.block_on(async {
        let t = spawn(async {
            match sleep(HOUR).await {
                Ok(()) => String::new(),
                Err(c) => c.to_string(),
            }
        });
        yield_now().await;
        t.cancel_with("m");
        t.await
    });
    assert_eq!(r.unwrap(), "task was cancelled: m");
}

// ---------------------------------------------------------------------------------------------
// The await chain
// ---------------------------------------------------------------------------------------------

/// A awaits B; cancelling A cancels B (with A's message), and A's await yields B's cancellation.
#[test]
fn cancellation_follows_the_await_chain() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let b_ref: Rc<RefCell<Option<TaskRef>>> = Rc::default();
    let (l, br) = (log.clone(), b_ref.clone());
    let (err, a_ref) = rt.block_on(async move {
        let a = spawn_named("A", async move {
            let l2 = l.clone();
            let b = spawn_named("B", async move {
                let r = sleep(HOUR).await;
                l2.push(format!(
                    "B saw {:?}",
                    r.as_ref().map_err(Cancelled::message)
                ));
                r
            });
            *br.borrow_mut() = Some(b.as_ref().clone());
            let r = b.await;
            l.push(format!(
                "A's await yielded {:?}",
                r.as_ref().map_err(TaskError::cancel_message)
            ));
            r??;
            Ok::<_, TaskError>(())
        });
        yield_now().await;
        yield_now().await; // A awaits B, B sleeps
        assert!(a.cancel_with("stop A"));
        let a_ref = a.as_ref().clone();
        (a.await.unwrap_err(), a_ref)
    });
    assert_eq!(
        log.take(),
        [
            "B saw Err(Some(\"stop A\"))",
            "A's await yielded Err(Some(\"stop A\"))"
        ]
    );
    assert_eq!(cancel_message(&err).as_deref(), Some("stop A"));
    assert!(a_ref.is_cancelled());
    assert!(b_ref.borrow().as_ref().unwrap().is_cancelled());
}

/// asyncio semantics: if the awaited task suppresses the forwarded cancel and returns a value,
/// the awaiting task gets that value and is not cancelled (the request was spent on B).
#[test]
fn an_awaited_task_that_suppresses_the_cancel_hands_its_value_to_the_awaiter() {
    let rt = Runtime::new().unwrap();
    let (value, a) = rt.block_on(async {
        let a = spawn(async {
            let b = spawn(async {
                if sleep(HOUR).await.is_err() {
                    sleep(Duration::from_millis(1)).await.unwrap(); // cleanup
                    return 42;
                }
                0
            });
            b.await.unwrap()
        });
        yield_now().await;
        yield_now().await;
        a.cancel();
        let r = a.as_ref().clone();
        (a.await.unwrap(), r)
    });
    assert_eq!(value, 42);
    assert!(!a.is_cancelled());
    assert_eq!(a.cancelling(), 1, "the request was made, and not withdrawn");
}

/// A task awaiting a future that cannot observe the request is dropped instead (Rust's native
/// cancel). The runtime finds out by polling the task once with the request pending: the
/// foreign future is polled exactly once more, then dropped.
#[test]
fn a_task_suspended_on_a_foreign_future_is_dropped_on_cancel() {
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(Cell::new(0));
    let drops = DropCount::default();
    let after_await = Rc::new(Cell::new(false));
    let (p, g, aa) = (polls.clone(), drops.guard(), after_await.clone());
    let err = rt.block_on(async {
        let t = spawn(async move {
            Foreign {
                polls: p,
                _guard: g,
            }
            .await;
            aa.set(true);
        });
        yield_now().await;
        assert_eq!(polls.get(), 1);
        assert_eq!(drops.get(), 0);
        t.cancel_with("drop it");
        t.await.unwrap_err()
    });
    assert_eq!(cancel_message(&err).as_deref(), Some("drop it"));
    assert_eq!(
        polls.get(),
        2,
        "one poll to look for an observer, then dropped"
    );
    assert_eq!(drops.get(), 1);
    assert!(!after_await.get());
}

#[test]
fn a_task_awaiting_std_pending_is_dropped_on_cancel() {
    let rt = Runtime::new().unwrap();
    let drops = DropCount::default();
    let g = drops.guard();
    let task = rt.block_on(async move {
        let t = spawn(async move {
            let _g = g;
            std::future::pending::<()>().await;
        });
        yield_now().await;
        t.cancel();
        yield_now().await;
        t.as_ref().clone()
    });
    assert_eq!(drops.get(), 1);
    assert_eq!(task.state(), TaskState::Cancelled);
}

/// asyncio never starts a coroutine cancelled before its first step; neither do we.
#[test]
fn a_task_cancelled_before_it_ever_ran_is_never_polled() {
    let rt = Runtime::new().unwrap();
    let body_ran = Rc::new(Cell::new(false));
    let drops = DropCount::default();
    let (b, g) = (body_ran.clone(), drops.guard());
    let err = rt.block_on(async move {
        let t = spawn(async move {
            let _g = g;
            b.set(true);
        });
        assert!(t.cancel_with("too early"));
        t.await.unwrap_err()
    });
    assert_eq!(cancel_message(&err).as_deref(), Some("too early"));
    assert!(!body_ran.get());
    assert_eq!(drops.get(), 1, "the unpolled future was dropped");
    assert_eq!(
        rt.stats().polls,
        2,
        "main polled twice, the cancelled task never"
    );
}

/// A cancel requested on the task that is running right now hits its very next runtime await.
#[test]
fn a_task_cancelling_itself_sees_the_cancel_at_its_next_await() {
    let rt = Runtime::new().unwrap();
    let r = rt.block_on(async {
        spawn(async {
            assert!(current_task().unwrap().cancel_with("self"));
            let r = sleep(HOUR).await.map_err(|c| c.to_string());
            r.unwrap_err()
        })
        .await
    });
    assert_eq!(r.unwrap(), "task was cancelled: self");
}

// ---------------------------------------------------------------------------------------------
// Detach and abort
// ---------------------------------------------------------------------------------------------

/// asyncio's tasks run whether or not anyone holds them: dropping the handle detaches the task,
/// which runs to completion; its output is dropped when produced.
#[test]
fn dropping_the_handle_detaches_the_task_which_runs_to_completion() {
    let rt = Runtime::new().unwrap();
    let drops = DropCount::default();
    let done = Rc::new(Cell::new(false));
    let (g, d) = (drops.guard(), done.clone());
    let task = rt.block_on(async move {
        let t = spawn(async move {
            sleep(Duration::from_millis(1)).await.unwrap();
            d.set(true);
            g // output
        });
        let r = t.as_ref().clone();
        drop(t);
        while !done.get() {
            yield_now().await;
        }
        yield_now().await;
        r
    });
    assert_eq!(task.state(), TaskState::Finished);
    assert_eq!(drops.get(), 1, "the detached output was dropped once");
    assert_eq!(rt.stats().tasks_completed, 2);
}

#[test]
fn dropping_the_handle_of_a_finished_task_drops_its_output() {
    let rt = Runtime::new().unwrap();
    let drops = DropCount::default();
    let g = drops.guard();
    rt.block_on(async move {
        let t = spawn(async move { g });
        yield_now().await;
        assert!(t.is_done());
        assert_eq!(drops.get(), 0, "kept for the handle");
        drop(t);
        assert_eq!(drops.get(), 1);
    });
}

/// `abort()` is the hard cancel: the future is dropped at the next scheduling point without
/// being polled again, so it cannot clean up asynchronously.
#[test]
fn abort_drops_the_future_at_the_next_scheduling_point_without_polling_it() {
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(Cell::new(0));
    let drops = DropCount::default();
    let (p, g) = (polls.clone(), drops.guard());
    rt.block_on(async move {
        let t = spawn(Foreign {
            polls: p,
            _guard: g,
        });
        yield_now().await;
        assert_eq!(polls.get(), 1);
        assert!(t.abort());
        assert_eq!(drops.get(), 0, "not dropped inline");
        yield_now().await;
        assert_eq!(polls.get(), 1, "never polled again");
        assert_eq!(drops.get(), 1);
        assert_eq!(t.state(), TaskState::Cancelled);
        assert!(!t.abort() && !t.cancel(), "already done");
        let e = t.await.unwrap_err();
        assert_eq!(cancel_message(&e), None);
    });
}

#[test]
fn abort_of_a_queued_task_never_polls_it_again() {
    let rt = Runtime::new().unwrap();
    let spins = Rc::new(Cell::new(0));
    let s = spins.clone();
    rt.block_on(async move {
        let t = spawn(async move {
            loop {
                s.set(s.get() + 1);
                yield_now().await;
            }
        });
        yield_now().await; // spinner polled once, queued again
        assert_eq!(spins.get(), 1);
        assert_eq!(t.state(), TaskState::Scheduled);
        t.abort();
        yield_now().await;
        yield_now().await;
        assert_eq!(spins.get(), 1);
        assert!(t.is_cancelled());
    });
}

#[test]
fn a_task_aborting_itself_finishes_its_current_poll_and_is_never_polled_again() {
    let rt = Runtime::new().unwrap();
    let spins = Rc::new(Cell::new(0));
    let s = spins.clone();
    rt.block_on(async move {
        let t = spawn(async move {
            loop {
                s.set(s.get() + 1);
                if s.get() == 3 {
                    assert!(current_task().unwrap().abort());
                }
                yield_now().await;
            }
        });
        for _ in 0..6 {
            yield_now().await;
        }
        assert_eq!(spins.get(), 3);
        assert!(t.is_cancelled());
    });
}

/// Unlike `cancel`, `abort` does not follow the await chain: the aborted task's future is
/// dropped, and with it the handle of the task it awaited, which is detached and runs on.
#[test]
fn abort_does_not_follow_the_await_chain_and_the_awaited_task_runs_on() {
    let rt = Runtime::new().unwrap();
    let inner_done = Rc::new(Cell::new(false));
    let d = inner_done.clone();
    rt.block_on(async move {
        let inner_ref: Rc<RefCell<Option<TaskRef>>> = Rc::default();
        let ir = inner_ref.clone();
        let outer = spawn(async move {
            let inner = spawn(async move {
                sleep(Duration::from_millis(1)).await.unwrap();
                d.set(true);
            });
            *ir.borrow_mut() = Some(inner.as_ref().clone());
            inner.await.unwrap();
        });
        yield_now().await;
        yield_now().await;
        outer.abort();
        yield_now().await;
        assert!(outer.is_cancelled());
        let inner = inner_ref.borrow().clone().unwrap();
        assert_eq!(inner.cancelling(), 0, "the inner task was not cancelled");
        while !inner_done.get() {
            yield_now().await;
        }
        yield_now().await;
        assert_eq!(inner.state(), TaskState::Finished);
    });
}

#[test]
fn abort_refuses_the_main_task_of_block_on() {
    let rt = Runtime::new().unwrap();
    let v = rt.block_on(async {
        assert!(!current_task().unwrap().abort());
        yield_now().await;
        "main ran to its end"
    });
    assert_eq!(v, "main ran to its end");
}

// ---------------------------------------------------------------------------------------------
// cancelling / uncancel; "nothing lost"
// ---------------------------------------------------------------------------------------------

#[test]
fn cancelling_counts_requests_and_uncancel_to_zero_withdraws_an_undelivered_one() {
    let rt = Runtime::new().unwrap();
    let body_ran = Rc::new(Cell::new(false));
    let b = body_ran.clone();
    rt.block_on(async move {
        let t = spawn(async move {
            sleep(Duration::from_millis(1)).await.unwrap(); // no cancel left to see
            b.set(true);
            "ran normally"
        });
        assert_eq!(t.as_ref().cancelling(), 0);
        t.cancel();
        t.cancel();
        assert_eq!(t.as_ref().cancelling(), 2);
        assert_eq!(t.as_ref().uncancel(), 1);
        assert_eq!(t.as_ref().uncancel(), 0);
        assert_eq!(t.as_ref().uncancel(), 0, "never below zero");
        let r = t.as_ref().clone();
        assert_eq!(t.await.unwrap(), "ran normally");
        assert!(!r.is_cancelled());
    });
    assert!(body_ran.get());
}

/// "Nothing lost": a sleep that has already completed when the cancel arrives still yields
/// `Ok`, and the request hits the next await. (asyncio differs: it throws CancelledError into
/// the coroutine at the await that had already completed, losing its result.)
#[test]
fn a_sleep_completed_before_the_cancel_still_yields_ok_and_the_cancel_hits_the_next_await() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let err = rt.block_on(async move {
        let t = spawn(async move {
            let first = sleep(Duration::from_millis(1)).await;
            l.push(format!("first sleep: {first:?}"));
            let second = sleep(HOUR).await;
            l.push(format!(
                "second sleep: {:?}",
                second.as_ref().map_err(Cancelled::message)
            ));
            second
        });
        yield_now().await; // the task armed its 1ms timer
                           // Block the loop thread past the deadline: the sleep is complete, but the task has not
                           // been polled since.
        std::thread::sleep(Duration::from_millis(3));
        t.cancel_with("late");
        t.await.unwrap_err()
    });
    assert_eq!(
        log.take(),
        ["first sleep: Ok(())", "second sleep: Err(Some(\"late\"))"]
    );
    assert_eq!(cancel_message(&err).as_deref(), Some("late"));
}

/// With no await after the completed sleep, the request is never delivered and the task ends
/// with its value (asyncio would have raised CancelledError at the completed await).
#[test]
fn a_cancel_after_the_last_await_completed_lets_the_task_finish_normally() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let t = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            5
        });
        yield_now().await;
        std::thread::sleep(Duration::from_millis(3));
        assert!(t.cancel());
        let r = t.as_ref().clone();
        assert_eq!(t.await.unwrap(), 5);
        assert!(!r.is_cancelled());
        assert_eq!(r.cancelling(), 1);
    });
}

/// A cancel made from outside the loop (between runs, on the owner thread) is delivered when
/// the loop next runs.
#[test]
fn a_cancel_made_between_runs_is_delivered_on_the_next_run() {
    let rt = Runtime::new().unwrap();
    let t = rt.spawn(async {
        sleep(HOUR).await?;
        Ok::<_, Cancelled>(())
    });
    rt.run_until_complete(yield_now());
    assert_eq!(t.state(), TaskState::Pending);
    assert!(t.cancel_with("between runs"));
    let err = rt.run_until_complete(t).unwrap_err();
    assert_eq!(cancel_message(&err).as_deref(), Some("between runs"));
}

/// The main future of `block_on` can be cancelled like any task (its awaits yield
/// `Err(Cancelled)`), but it is never dropped: even suspended on a foreign future it runs on,
/// because its output must come back.
#[test]
fn the_main_task_sees_its_cancellations_but_is_never_dropped() {
    let rt = Runtime::new().unwrap();
    let (first, second) = rt.block_on(async {
        let me = current_task().unwrap();
        me.cancel_with("main");
        let first = sleep(HOUR).await.map_err(|c| c.to_string());
        me.cancel();
        let gate = Gate::default();
        let g = gate.clone();
        ringloop_runtime::call_later(Duration::from_millis(1), move || g.open());
        gate.wait().await; // foreign: cannot observe, but main is not dropped
        (first, "main survived")
    });
    assert_eq!(first.unwrap_err(), "task was cancelled: main");
    assert_eq!(second, "main survived");
}

// ---------------------------------------------------------------------------------------------
// timeout / wait_for
// ---------------------------------------------------------------------------------------------

/// When the deadline passes, the inner work is cancelled asyncio-style: its sleep sees
/// `Err(Cancelled)`, it may clean up (the cleanup's awaits are not cancelled), and once it lets
/// the cancellation escape `timeout` returns `Err(TimedOut)`. The task itself carries on
/// uncancelled.
#[test]
fn timeout_expiry_cancels_the_inner_work_which_can_clean_up() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let l2 = l.clone();
        let r = timeout(Duration::from_millis(1), async move {
            match sleep(HOUR).await {
                Ok(()) => l2.push("inner slept an hour"),
                Err(c) => {
                    l2.push(format!("inner saw cancel, message {:?}", c.message()));
                    sleep(Duration::from_millis(1)).await.unwrap();
                    l2.push("inner cleaned up");
                    return Err(c); // let it escape: the timeout reports TimedOut
                }
            }
            Ok(())
        })
        .await;
        l.push(format!("timeout returned {r:?}"));
        let me = current_task().unwrap();
        assert_eq!(me.cancelling(), 0, "the scoped request was withdrawn");
        sleep(Duration::from_millis(1)).await.unwrap(); // not cancelled
        l.push("task carried on");
    });
    assert_eq!(
        log.take(),
        [
            "inner saw cancel, message None",
            "inner cleaned up",
            "timeout returned Err(TimedOut)",
            "task carried on"
        ]
    );
    assert_eq!(rt.stats().timers_pending, 0);
}

#[test]
fn timeout_never_fires_before_its_deadline() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        for ms in [0u64, 1, 2, 3] {
            let d = Duration::from_millis(ms);
            let earliest = Instant::now() + d;
            let r = timeout(d, sleep(HOUR)).await;
            assert_eq!(r, Err(TimedOut));
            assert!(Instant::now() >= earliest, "timeout({ms}ms) fired early");
        }
    });
}

#[test]
fn timeout_returns_ok_when_the_inner_future_finishes_first_and_disarms_its_timer() {
    let rt = Rc::new(Runtime::new().unwrap());
    let r = rt.clone();
    rt.block_on(async move {
        let v = timeout(HOUR, async {
            sleep(Duration::from_millis(1)).await.unwrap();
            7
        })
        .await;
        assert_eq!(v, Ok(7));
        assert_eq!(r.stats().timers_pending, 0);
        assert_eq!(wait_for(async { 8 }, HOUR).await, Ok(8));
        assert_eq!(
            wait_for(sleep(HOUR), Duration::from_millis(1)).await,
            Err(TimedOut)
        );
        assert_eq!(current_task().unwrap().cancelling(), 0);
    });
}

/// A Task awaited inside a timeout is cancelled when the timeout expires (the await chain), and
/// the timeout waits for it to finish its cleanup.
#[test]
fn a_task_awaited_inside_a_timeout_is_cancelled_when_it_expires() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let l2 = l.clone();
        let child = spawn_named("child", async move {
            match sleep(HOUR).await {
                Ok(()) => Ok(()),
                Err(c) => {
                    l2.push("child saw cancel");
                    sleep(Duration::from_millis(1)).await.unwrap();
                    l2.push("child cleaned up");
                    Err(c)
                }
            }
        });
        let child_ref = child.as_ref().clone();
        // Let the child reach its sleep first: a task cancelled before it ever ran never runs
        // its body (as in asyncio), which a slow machine would otherwise make of this test.
        yield_now().await;
        let r = timeout(Duration::from_millis(2), child).await;
        l.push(format!("timeout returned {:?}", r.map(|_| ())));
        assert!(child_ref.is_cancelled());
    });
    assert_eq!(
        log.take(),
        [
            "child saw cancel",
            "child cleaned up",
            "timeout returned Err(TimedOut)"
        ]
    );
}

#[test]
fn a_foreign_future_inside_a_timeout_is_dropped_when_it_expires() {
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(Cell::new(0));
    let drops = DropCount::default();
    let (p, g, d) = (polls.clone(), drops.guard(), drops.clone());
    rt.block_on(async move {
        let r = timeout(
            Duration::from_millis(1),
            Foreign {
                polls: p,
                _guard: g,
            },
        )
        .await;
        assert_eq!(r, Err(TimedOut));
        assert_eq!(d.get(), 1);
        assert_eq!(current_task().unwrap().cancelling(), 0);
        sleep(Duration::ZERO)
            .await
            .expect("the task itself is not cancelled");
    });
    assert!(
        polls.get() >= 2,
        "polled before the deadline and once at it"
    );
}

/// A cancel from outside that arrives while the timeout's inner work is unwinding is not
/// swallowed by the timeout: it is delivered again at the task's next await (asyncio re-raises
/// it from the `timeout` block).
#[test]
fn an_external_cancel_during_a_timeouts_unwinding_is_not_swallowed() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let err = rt.block_on(async move {
        let lt = l.clone();
        let t = spawn(async move {
            let li = lt.clone();
            let r = timeout(Duration::from_millis(1), async move {
                let scoped = sleep(HOUR).await.unwrap_err();
                li.push(format!(
                    "inner saw the timeout's cancel: {:?}",
                    scoped.message()
                ));
                let cleanup = sleep(HOUR).await;
                li.push(format!(
                    "cleanup await: {:?}",
                    cleanup.as_ref().map_err(Cancelled::message)
                ));
                Err::<(), _>(scoped) // let the timeout's cancel escape: TimedOut
            })
            .await;
            lt.push(format!("timeout returned {r:?}"));
            let next = sleep(HOUR).await;
            lt.push(format!(
                "next await: {:?}",
                next.as_ref().map_err(Cancelled::message)
            ));
            next
        });
        while !l.contains("inner saw the timeout's cancel: None") {
            yield_now().await;
        }
        t.cancel_with("external");
        t.await.unwrap_err()
    });
    assert_eq!(
        log.take(),
        [
            "inner saw the timeout's cancel: None",
            "cleanup await: Err(Some(\"external\"))",
            "timeout returned Err(TimedOut)",
            "next await: Err(Some(\"external\"))",
        ]
    );
    assert_eq!(cancel_message(&err).as_deref(), Some("external"));
}

/// A cancel from outside before the deadline reaches the inner work (the timeout does not
/// claim it): the timeout returns the inner output, and letting it escape ends the task
/// cancelled.
#[test]
fn an_external_cancel_before_the_deadline_reaches_the_inner_future() {
    let rt = Runtime::new().unwrap();
    let err = rt.block_on(async {
        let t = spawn(async {
            let inner = timeout(HOUR, sleep(HOUR)).await;
            assert!(matches!(inner, Ok(Err(_))), "{inner:?}");
            inner.unwrap()
        });
        yield_now().await;
        t.cancel_with("outside");
        t.await.unwrap_err()
    });
    assert_eq!(cancel_message(&err).as_deref(), Some("outside"));
}

/// asyncio's `timeout()`: if the inner work catches the timeout's cancel and returns a value
/// anyway, the value is kept (`Ok`), never thrown away; `TimedOut` only when the cancellation
/// escaped the inner work.
#[test]
fn timeout_whose_inner_work_catches_the_cancel_keeps_its_value() {
    let rt = Runtime::new().unwrap();
    let drops = DropCount::default();
    let (g, d) = (drops.guard(), drops.clone());
    rt.block_on(async move {
        let r = timeout(Duration::from_millis(1), async move {
            let caught = sleep(HOUR).await.is_err();
            (caught, g)
        })
        .await;
        let (caught, g) = r.expect("the caught-and-returned value is kept");
        assert!(caught);
        assert_eq!(d.get(), 0);
        drop(g);
        assert_eq!(current_task().unwrap().cancelling(), 0);
        sleep(Duration::ZERO)
            .await
            .expect("the task is not cancelled");
    });
    assert_eq!(drops.get(), 1);
}

/// The timeout decides "escaped or caught" from the `Cancelled` values its own request
/// produced: a `Cancelled` the task already holds from an earlier, caught cancellation (here
/// kept for the cleanup path) does not turn the inner work's returned value into `TimedOut`.
#[test]
fn timeout_during_cleanup_keeps_the_inner_value_despite_an_older_cancelled_held() {
    let rt = Runtime::new().unwrap();
    let r = rt.block_on(async {
        let t = spawn(async {
            let earlier = sleep(HOUR).await.unwrap_err(); // held during the cleanup below
            let r = timeout(Duration::from_millis(1), async {
                let _ = sleep(HOUR).await; // catches the timeout's cancel
                "flushed"
            })
            .await;
            drop(earlier);
            r
        });
        yield_now().await;
        t.cancel();
        t.await
    });
    assert_eq!(r.unwrap(), Ok("flushed"));
}

/// The task running a timeout is itself cancelled while suspended on a foreign future inside
/// it: nothing can observe the request, so the task is dropped (the inner future with it).
#[test]
fn a_cancelled_task_whose_timeout_wraps_a_foreign_future_is_dropped() {
    let rt = Runtime::new().unwrap();
    let polls = Rc::new(Cell::new(0));
    let drops = DropCount::default();
    let (p, g) = (polls.clone(), drops.guard());
    let err = rt.block_on(async move {
        let t = spawn(async move {
            let _ = timeout(
                HOUR,
                Foreign {
                    polls: p,
                    _guard: g,
                },
            )
            .await;
        });
        yield_now().await;
        t.cancel();
        t.await.unwrap_err()
    });
    assert!(err.is_cancelled());
    assert_eq!(drops.get(), 1);
    assert_eq!(polls.get(), 2);
}
