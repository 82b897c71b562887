//! Regressions of the cancellation model (issue 14): scopes dropped before they end, `gather`
//! swallowing its own cancel, a dropped `TaskGroup`, group children that let a cancel escape,
//! concurrent branches of one task, and second requests while a future is mid-cleanup.
//!
//! Pure task and timer tests (no I/O), deterministic: orders are forced with events and bare
//! yields, never with durations.

mod common;

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::Log;
use ringloop_runtime::sync::{Condition, Event};
use ringloop_runtime::{
    current_task, gather, sleep, spawn, timeout, timeout_at, try_gather, yield_now, Cancelled,
    GatherError, Runtime, TaskGroup, TaskRef, TaskState, TimedOut,
};

const HOUR: Duration = Duration::from_secs(3600);

/// Polls two futures in one task poll, as `futures::join!` does: both branches of one task.
struct Join2<A: Future, B: Future> {
    a: Pin<Box<A>>,
    b: Pin<Box<B>>,
    ra: Option<A::Output>,
    rb: Option<B::Output>,
}

impl<A: Future, B: Future> Unpin for Join2<A, B> {}

fn join2<A: Future, B: Future>(a: A, b: B) -> Join2<A, B> {
    Join2 {
        a: Box::pin(a),
        b: Box::pin(b),
        ra: None,
        rb: None,
    }
}

impl<A: Future, B: Future> Future for Join2<A, B> {
    type Output = (A::Output, B::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.ra.is_none() {
            if let Poll::Ready(v) = this.a.as_mut().poll(cx) {
                this.ra = Some(v);
            }
        }
        if this.rb.is_none() {
            if let Poll::Ready(v) = this.b.as_mut().poll(cx) {
                this.rb = Some(v);
            }
        }
        if this.ra.is_some() && this.rb.is_some() {
            Poll::Ready((this.ra.take().unwrap(), this.rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    }
}

/// Polls `fut` once; true if it is still pending.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> bool {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}

/// Yields to the loop once without looking at cancel requests (a foreign yield). Only for the
/// main task of `block_on`, which is never dropped by the foreign-future fallback.
async fn bare_yield() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// The request a scope left behind, if any: a request made and withdrawn at once must leave
/// nothing for the next await.
async fn assert_no_phantom_cancel(me: &TaskRef) {
    assert_eq!(me.cancelling(), 0, "the scope's request is withdrawn");
    me.cancel();
    assert_eq!(me.uncancel(), 0);
    assert!(yield_now().await.is_ok(), "a phantom Cancelled");
    assert!(
        sleep(Duration::from_millis(1)).await.is_ok(),
        "a phantom Cancelled"
    );
}

#[derive(Debug)]
enum AppError {
    Cancelled(#[allow(dead_code)] Cancelled),
    Bad,
}

impl From<Cancelled> for AppError {
    fn from(c: Cancelled) -> Self {
        AppError::Cancelled(c)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A scope dropped before it ends undoes its request
// ---------------------------------------------------------------------------------------------

#[test]
fn a_timeout_dropped_while_its_inner_work_unwinds_ends_its_scope() {
    Runtime::new().unwrap().block_on(async {
        let me = current_task().unwrap();
        let cleanup = Event::new();
        let inner = async {
            let r = sleep(HOUR).await;
            assert!(r.is_err(), "the deadline's cancel reached the sleep");
            // Cleanup that takes a while: the timeout is still unwinding when dropped.
            cleanup.wait().await.unwrap();
            r
        };
        let mut t = Box::pin(timeout_at(Instant::now(), inner));
        assert!(poll_once(t.as_mut()).await, "the inner work is unwinding");
        assert_eq!(me.cancelling(), 1, "the scope's request is open");
        drop(t);
        assert_no_phantom_cancel(&me).await;
    });
}

#[test]
fn a_task_group_dropped_while_its_body_unwinds_withdraws_the_body_cancel() {
    Runtime::new().unwrap().block_on(async {
        let me = current_task().unwrap();
        let gate = Rc::new(Event::new());
        let cleanup = Rc::new(Event::new());
        let failed = Rc::new(Cell::new(false));
        let (g, c, f) = (gate.clone(), cleanup.clone(), failed.clone());
        let mut scope = Box::pin(TaskGroup::<(), AppError>::scope(|tg| async move {
            tg.spawn(async move {
                f.set(true);
                Err(AppError::Bad)
            });
            let r = g.wait().await; // the group's cancel arrives here
            c.wait().await.unwrap(); // cleanup, still running when the scope is dropped
            r?;
            Ok(())
        }));
        assert!(poll_once(scope.as_mut()).await);
        while !failed.get() {
            bare_yield().await;
        }
        assert_eq!(me.cancelling(), 1, "the failure cancelled the body");
        assert!(poll_once(scope.as_mut()).await, "the body is unwinding");
        drop(scope);
        assert_no_phantom_cancel(&me).await;
    });
}

#[test]
fn a_task_group_dropped_before_the_body_saw_its_cancel_leaves_no_phantom_request() {
    Runtime::new().unwrap().block_on(async {
        let me = current_task().unwrap();
        let gate = Rc::new(Event::new());
        let failed = Rc::new(Cell::new(false));
        let (g, f) = (gate.clone(), failed.clone());
        let mut scope = Box::pin(TaskGroup::<(), AppError>::scope(|tg| async move {
            tg.spawn(async move {
                f.set(true);
                Err(AppError::Bad)
            });
            g.wait().await?;
            Ok(())
        }));
        assert!(poll_once(scope.as_mut()).await);
        while !failed.get() {
            bare_yield().await;
        }
        drop(scope); // the group's request on the body was never delivered
        assert_no_phantom_cancel(&me).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 2. gather / try_gather report their own cancellation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cancelled_gather_returns_cancelled_even_if_the_tasks_finish_anyway() {
    Runtime::new().unwrap().block_on(async {
        let child = spawn(async {
            let r = sleep(HOUR).await;
            assert!(r.is_err());
            5 // caught the cancel and finished anyway
        });
        let g = spawn(async move { gather([child]).await });
        yield_now().await.unwrap();
        g.cancel_with("stop");
        let err = g.await.unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(err.cancel_message(), Some("stop"));
    });
}

#[test]
fn a_cancelled_try_gather_returns_cancelled_even_if_the_tasks_finish_anyway() {
    Runtime::new().unwrap().block_on(async {
        let child = spawn(async {
            let r = sleep(HOUR).await;
            assert!(r.is_err());
            Ok::<_, &str>(5)
        });
        let g = spawn(async move {
            match try_gather([child]).await {
                Err(GatherError::Task(e)) => {
                    assert!(e.is_cancelled());
                    Err::<Vec<u32>, _>(e)
                }
                other => panic!("expected the gather's own cancellation, got {other:?}"),
            }
        });
        yield_now().await.unwrap();
        g.cancel_with("stop");
        let err = g.await.unwrap_err();
        assert_eq!(err.cancel_message(), Some("stop"));
    });
}

// ---------------------------------------------------------------------------------------------
// 3. A dropped TaskGroup cancels its children
// ---------------------------------------------------------------------------------------------

#[test]
fn a_dropped_task_group_cancels_its_running_children() {
    Runtime::new().unwrap().block_on(async {
        let log = Log::default();
        let child: Rc<RefCell<Option<TaskRef>>> = Rc::default();
        let forever = Rc::new(Event::new());
        let (l, slot, fv) = (log.clone(), child.clone(), forever.clone());
        let mut scope = Box::pin(TaskGroup::<(), AppError>::scope(|tg| async move {
            let c = tg.spawn(async move {
                if let Err(c) = sleep(HOUR).await {
                    l.push("child cleaned up");
                    return Err(c.into());
                }
                Ok(())
            });
            *slot.borrow_mut() = Some(c);
            fv.wait().await?;
            Ok(())
        }));
        assert!(poll_once(scope.as_mut()).await);
        let child = child.borrow().clone().unwrap();
        while child.state() != TaskState::Pending {
            bare_yield().await; // the child runs and sleeps
        }
        drop(scope);
        for _ in 0..4 {
            bare_yield().await;
        }
        assert!(
            child.is_done(),
            "the child of a dropped group was cancelled"
        );
        assert!(child.is_cancelled());
        assert_eq!(log.entries(), ["child cleaned up"]);
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A group child that lets its Cancelled escape ends cancelled
// ---------------------------------------------------------------------------------------------

#[test]
fn a_group_child_letting_its_cancel_escape_ends_cancelled() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let slow: Rc<RefCell<Option<TaskRef>>> = Rc::default();
        let s = slow.clone();
        let err = TaskGroup::<u32, AppError>::scope(|tg| async move {
            *s.borrow_mut() = Some(tg.spawn(async {
                sleep(HOUR).await?;
                Ok(1)
            }));
            tg.spawn(async { Err(AppError::Bad) });
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.failures.len(), 1);
        let slow = slow.borrow().clone().unwrap();
        assert_eq!(slow.state(), TaskState::Cancelled);
        assert!(slow.is_cancelled());
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrent branches of one task all see the request
// ---------------------------------------------------------------------------------------------

#[test]
fn a_timeout_around_a_join_of_two_sleeps_times_out() {
    Runtime::new().unwrap().block_on(async {
        let t = spawn(timeout_at(Instant::now(), join2(sleep(HOUR), sleep(HOUR))));
        yield_now().await.unwrap();
        yield_now().await.unwrap();
        assert!(t.is_done(), "both branches saw the deadline's cancel");
        assert_eq!(t.await.unwrap().unwrap_err(), TimedOut);
    });
}

#[test]
fn cancelling_a_task_awaiting_a_join_of_two_sleeps_cancels_both_branches() {
    Runtime::new().unwrap().block_on(async {
        let t = spawn(async {
            let (a, b) = join2(sleep(HOUR), sleep(HOUR)).await;
            (a.is_err(), b.is_err())
        });
        yield_now().await.unwrap();
        t.cancel();
        yield_now().await.unwrap();
        assert!(t.is_done(), "both branches saw the cancel");
        assert_eq!(t.await.unwrap(), (true, true));
    });
}

#[test]
fn a_branchs_cleanup_awaits_after_the_cancel_are_not_cancelled() {
    Runtime::new().unwrap().block_on(async {
        let log = Log::default();
        let cleanup = Rc::new(Event::new());
        let (la, lb, c) = (log.clone(), log.clone(), cleanup.clone());
        let t = spawn(join2(
            async move {
                if sleep(HOUR).await.is_err() {
                    // A fresh await started after the delivery: not hit by it.
                    let r = c.wait().await;
                    la.push(format!("a cleanup ok={}", r.is_ok()));
                }
            },
            async move {
                let r = sleep(HOUR).await;
                lb.push(format!("b cancelled={}", r.is_err()));
            },
        ));
        yield_now().await.unwrap();
        t.cancel();
        yield_now().await.unwrap();
        yield_now().await.unwrap();
        assert_eq!(
            log.entries(),
            ["b cancelled=true"],
            "a's cleanup still waits"
        );
        cleanup.set();
        yield_now().await.unwrap();
        yield_now().await.unwrap();
        assert!(t.is_done());
        assert_eq!(log.entries(), ["b cancelled=true", "a cleanup ok=true"]);
    });
}

#[test]
fn a_tasks_awaited_in_two_branches_both_receive_the_forwarded_cancel() {
    Runtime::new().unwrap().block_on(async {
        let a = spawn(async { sleep(HOUR).await });
        let b = spawn(async { sleep(HOUR).await });
        let (ar, br) = (a.as_ref().clone(), b.as_ref().clone());
        let t = spawn(async move {
            let (ra, rb) = join2(a, b).await;
            // Suppressed (kept as flags), so the task itself finishes.
            (
                ra.is_err_and(|e| e.is_cancelled()),
                rb.is_err_and(|e| e.is_cancelled()),
            )
        });
        yield_now().await.unwrap();
        t.cancel();
        for _ in 0..4 {
            yield_now().await.unwrap();
        }
        assert!(t.is_done(), "both awaited tasks were cancelled");
        assert_eq!(t.await.unwrap(), (true, true));
        assert_eq!(
            (ar.cancelling(), br.cancelling()),
            (1, 1),
            "forwarded once each"
        );
    });
}

#[test]
fn a_timeout_in_one_branch_does_not_cancel_the_other_branch() {
    Runtime::new().unwrap().block_on(async {
        let log = Log::default();
        let fired = Rc::new(Cell::new(false));
        let (la, lb, f) = (log.clone(), log.clone(), fired.clone());
        let t = spawn(async move {
            // A cancellation caught earlier and not withdrawn: `cancelling()` stays 1, so the
            // timeout's `uncancel` alone does not clear its delivery.
            current_task().unwrap().cancel();
            assert!(yield_now().await.is_err());
            join2(
                async move {
                    let r = timeout(Duration::from_millis(1), sleep(HOUR)).await;
                    la.push(format!("timeout {:?}", r.map(|_| ())));
                    f.set(true);
                },
                async move {
                    let r = sleep(HOUR).await;
                    lb.push(format!("sibling cancelled={}", r.is_err()));
                },
            )
            .await
        });
        while !fired.get() {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        yield_now().await.unwrap();
        assert_eq!(
            log.entries(),
            ["timeout Err(TimedOut)"],
            "the sibling sleeps on"
        );
        t.cancel();
        t.await.unwrap();
        assert_eq!(log.entries()[1], "sibling cancelled=true");
    });
}

// ---------------------------------------------------------------------------------------------
// 6. A second request while a future holds a delivered cancel or is mid-cleanup
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_cancel_while_a_condition_wait_reacquires_the_lock_is_absorbed() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(0u32));
        let c = cond.clone();
        let t = spawn(async move {
            let guard = c.lock().await.unwrap();
            match c.wait(guard).await {
                Ok(_) => "notified",
                Err(e) => {
                    assert_eq!(*e.guard, 1, "the lock is held again");
                    "cancelled"
                }
            }
        });
        yield_now().await.unwrap();
        let mut guard = cond.lock().await.unwrap();
        *guard = 1;
        cond.notify(1); // the waiter now waits for the lock we hold
        t.cancel();
        yield_now().await.unwrap();
        t.cancel(); // a second request while it reacquires
        yield_now().await.unwrap();
        assert!(
            !t.is_done(),
            "not dropped as if suspended on a foreign future"
        );
        drop(guard);
        assert_eq!(t.await.unwrap(), "cancelled");
    });
}

#[test]
fn a_second_cancel_while_an_awaited_task_unwinds_is_forwarded_not_dropped() {
    Runtime::new().unwrap().block_on(async {
        let cleanup = Rc::new(Event::new());
        let c = cleanup.clone();
        let child = spawn(async move {
            let r = sleep(HOUR).await;
            c.wait().await.unwrap(); // slow cleanup
            r.map(|_| 0).unwrap_or(7)
        });
        let child_ref = child.as_ref().clone();
        let parent = spawn(child);
        yield_now().await.unwrap();
        parent.cancel();
        yield_now().await.unwrap();
        parent.cancel();
        yield_now().await.unwrap();
        assert!(!parent.is_done(), "the parent still awaits its child");
        assert_eq!(child_ref.cancelling(), 2, "both requests were forwarded");
        cleanup.set();
        assert_eq!(parent.await.unwrap().unwrap(), 7, "the child's value");
    });
}

#[test]
fn a_second_cancel_while_a_gather_waits_for_its_cancelled_tasks_is_taken() {
    Runtime::new().unwrap().block_on(async {
        let cleanup = Rc::new(Event::new());
        let c = cleanup.clone();
        let child = spawn(async move {
            let r = sleep(HOUR).await;
            c.wait().await.unwrap();
            r.is_err()
        });
        let g = spawn(async move { gather([child]).await });
        yield_now().await.unwrap();
        g.cancel_with("first");
        yield_now().await.unwrap();
        g.cancel_with("second");
        yield_now().await.unwrap();
        assert!(!g.is_done(), "the gather still waits for its task");
        cleanup.set();
        assert!(g.await.unwrap_err().is_cancelled());
    });
}

#[test]
fn a_second_cancel_while_a_task_group_waits_for_its_children_is_taken() {
    Runtime::new().unwrap().block_on(async {
        let cleanup = Rc::new(Event::new());
        let c = cleanup.clone();
        let t = spawn(async move {
            TaskGroup::<(), AppError>::scope(|tg| async move {
                tg.spawn(async move {
                    let r = sleep(HOUR).await;
                    c.wait().await.unwrap();
                    r?;
                    Ok(())
                });
                Ok(())
            })
            .await
            .map(|_| ())
        });
        yield_now().await.unwrap();
        t.cancel();
        yield_now().await.unwrap();
        t.cancel();
        yield_now().await.unwrap();
        assert!(!t.is_done(), "the group still waits for its child");
        cleanup.set();
        assert!(t.await.unwrap_err().is_cancelled());
    });
}
