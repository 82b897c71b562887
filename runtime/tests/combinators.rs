//! Combinators and Promise, pinned on the pitfalls asyncio users hit.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::{DropCount, Gate};
use ringloop_runtime::sync::Event;
use ringloop_runtime::*;

fn rt() -> Runtime {
    Runtime::builder()
        .exception_handler(|_| {})
        .build()
        .unwrap()
}

#[test]
fn gather_returns_results_in_argument_order_not_completion_order() {
    rt().block_on(async {
        let slow = spawn(async {
            sleep(Duration::from_millis(3)).await.unwrap();
            1
        });
        let fast = spawn(async { 2 });
        assert_eq!(gather([slow, fast]).await.unwrap(), vec![1, 2]);
    });
}

#[test]
fn gather_of_nothing_is_empty() {
    rt().block_on(async {
        let none: Vec<Task<u8>> = Vec::new();
        assert!(gather(none).await.unwrap().is_empty());
    });
}

#[test]
fn gather_first_error_cancels_siblings_and_reports_the_panic() {
    rt().block_on(async {
        let observed_cancel = Rc::new(Cell::new(false));
        let o = observed_cancel.clone();
        let sibling = spawn(async move {
            if sleep(Duration::from_secs(3600)).await.is_err() {
                o.set(true);
            }
        });
        let sibling_ref = sibling.as_ref().clone();
        let failing = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            panic!("db down");
        });
        let err = gather([sibling, failing]).await.unwrap_err();
        assert_eq!(err.panic_message(), Some("db down"));
        assert_eq!(sibling_ref.cancelling(), 1, "the sibling was sent a cancel");
        yield_now().await.unwrap();
        assert!(
            observed_cancel.get(),
            "the sibling saw Err(Cancelled) at its sleep"
        );
        assert!(sibling_ref.is_done());
    });
}

#[test]
fn cancelling_the_gathering_task_cancels_every_child() {
    rt().block_on(async {
        let children: Vec<Task<Result<(), Cancelled>>> = (0..3)
            .map(|_| spawn(async { sleep(Duration::from_secs(3600)).await }))
            .collect();
        let refs: Vec<TaskRef> = children.iter().map(|t| t.as_ref().clone()).collect();
        let outer = spawn(async move { gather(children).await.map(|_| ()) });
        sleep(Duration::from_millis(1)).await.unwrap();
        outer.cancel_with("stop");
        let r = outer.await;
        assert_eq!(r.unwrap_err().cancel_message(), Some("stop"));
        assert!(refs.iter().all(|t| t.is_done() && t.is_cancelled()));
    });
}

#[test]
fn gather_settled_returns_every_outcome_without_cancelling_anyone() {
    rt().block_on(async {
        let ok = spawn(async {
            sleep(Duration::from_millis(2)).await.unwrap();
            1
        });
        let bad = spawn(async { panic!("bad") });
        let cancelled = spawn(async { sleep(Duration::from_secs(3600)).await.map(|_| 3) });
        cancelled.cancel();
        let r = gather_settled([
            ok,
            spawn(async move { bad.await.unwrap() }),
            spawn(async move { cancelled.await.unwrap().unwrap_or(0) }),
        ])
        .await
        .unwrap();
        assert_eq!(*r[0].as_ref().unwrap(), 1);
        assert!(r[1].as_ref().unwrap_err().is_panic());
        // The third wrapper awaited a cancelled task: unwrap() panicked on the TaskError.
        assert!(r[2].is_err());
    });
}

#[test]
fn try_gather_stops_at_first_err_value_and_cancels_the_rest() {
    rt().block_on(async {
        let slow = spawn(async {
            sleep(Duration::from_secs(3600))
                .await
                .map_err(|_| "cancelled")?;
            Ok(1)
        });
        let slow_ref = slow.as_ref().clone();
        let bad = spawn(async { Err::<i32, _>("invalid") });
        match try_gather([slow, bad]).await {
            Err(GatherError::Failed(e)) => assert_eq!(e, "invalid"),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
        yield_now().await.unwrap();
        assert!(slow_ref.is_done());
        let ok = try_gather([spawn(async { Ok::<_, ()>(1) }), spawn(async { Ok(2) })]).await;
        assert_eq!(ok.unwrap(), vec![1, 2]);
    });
}

/// asyncio.wait never cancels: on timeout the caller gets the pending tasks back and can tell
/// which timed out.
#[test]
fn wait_with_timeout_tells_which_tasks_timed_out_and_cancels_none() {
    rt().block_on(async {
        let names = ["fast", "slow", "stuck"];
        let tasks: Vec<Task<&str>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let n = *n;
                spawn_named(n, async move {
                    // "slow" takes two loop iterations, "stuck" an hour: the timeout falls
                    // between them however slow the machine (an emulated CPU took over 20 ms
                    // for one iteration), without timers racing each other.
                    match i {
                        0 => {}
                        1 => {
                            common::yield_now().await;
                            common::yield_now().await;
                        }
                        _ => {
                            let _ = sleep(Duration::from_secs(3600)).await;
                        }
                    }
                    n
                })
            })
            .collect();
        let (done, pending) = wait(
            tasks,
            ReturnWhen::AllCompleted,
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        let done_names: Vec<String> = done.iter().map(|t| t.name()).collect();
        let pending_names: Vec<String> = pending.iter().map(|t| t.name()).collect();
        assert_eq!(done_names, ["fast", "slow"]);
        assert_eq!(pending_names, ["stuck"]);
        assert_eq!(
            pending[0].as_ref().cancelling(),
            0,
            "wait cancelled nothing"
        );
        assert!(!pending[0].is_done());
        pending[0].cancel();
    });
}

#[test]
fn wait_first_completed_and_first_exception() {
    rt().block_on(async {
        let a = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            1
        });
        let b = spawn(async {
            sleep(Duration::from_secs(3600))
                .await
                .map(|_| 2)
                .unwrap_or(0)
        });
        let (done, pending) = wait([a, b], ReturnWhen::FirstCompleted, None)
            .await
            .unwrap();
        assert_eq!((done.len(), pending.len()), (1, 1));
        assert_eq!(done.into_iter().next().unwrap().await.unwrap(), 1);

        let fine = spawn(async { 5 });
        let boom = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            panic!("x")
        });
        let (done, pending) = wait(
            [
                boom,
                spawn(async {
                    sleep(Duration::from_secs(3600))
                        .await
                        .map(|_| 0)
                        .unwrap_or(0)
                }),
            ],
            ReturnWhen::FirstException,
            None,
        )
        .await
        .unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].state(), TaskState::Panicked);
        assert_eq!(pending.len(), 1);
        for t in pending.iter().chain(std::iter::once(&pending[0])) {
            t.cancel();
        }
        assert_eq!(fine.await.unwrap(), 5);
    });
}

#[test]
fn as_completed_yields_in_completion_order() {
    rt().block_on(async {
        // Gates, not timers, decide the order: a timer's deadline can pass before its task
        // first runs (seen under an emulated CPU), and then the order is the spawn order.
        let gates: [(u64, Gate); 3] = [5, 1, 3].map(|n| (n, Gate::default()));
        let tasks: Vec<Task<u64>> = gates
            .iter()
            .map(|(n, gate)| {
                let (n, wait) = (*n, gate.wait());
                spawn(async move {
                    wait.await;
                    n
                })
            })
            .collect();
        let mut it = as_completed(tasks);
        assert_eq!(it.remaining(), 3);
        let open = |n: u64| gates.iter().find(|(m, _)| *m == n).unwrap().1.open();
        // 1 and 3 finish in that order within one loop iteration; 5 only later.
        open(1);
        open(3);
        let mut order = Vec::new();
        for _ in 0..2 {
            let t = it.next().await.unwrap().expect("a task is left");
            order.push(t.await.unwrap());
        }
        open(5);
        while let Some(t) = it.next().await.unwrap() {
            order.push(t.await.unwrap());
        }
        assert_eq!(order, [1, 3, 5]);
    });
}

#[test]
fn timeout_returns_value_when_inner_finishes_first() {
    rt().block_on(async {
        let r = timeout(Duration::from_secs(60), async { 7 }).await;
        assert_eq!(r, Ok(7));
        assert_eq!(wait_for(async { 8 }, Duration::from_secs(1)).await, Ok(8));
    });
}

/// The inner work is cancelled asyncio-style: it sees Err(Cancelled) and may clean up
/// (asynchronously) before timeout returns TimedOut.
#[test]
fn timeout_cancels_inner_work_and_lets_it_clean_up() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    rt().block_on(async move {
        let r = timeout(Duration::from_millis(2), async {
            if let Err(cancelled) = sleep(Duration::from_secs(3600)).await {
                l.borrow_mut().push("inner cancelled");
                sleep(Duration::from_millis(1)).await.unwrap(); // async cleanup
                l.borrow_mut().push("cleanup done");
                return Err(cancelled);
            }
            Ok(())
        })
        .await;
        assert_eq!(r.map(|_| ()), Err(TimedOut));
        l.borrow_mut().push("timed out");
        // The scoped request was withdrawn: the next await is not cancelled.
        sleep(Duration::from_millis(1)).await.unwrap();
        assert_eq!(current_task().unwrap().cancelling(), 0);
    });
    assert_eq!(
        *log.borrow(),
        ["inner cancelled", "cleanup done", "timed out"]
    );
}

#[test]
fn timeout_cancels_an_awaited_task_through_the_await_chain() {
    rt().block_on(async {
        let child = spawn(async { sleep(Duration::from_secs(3600)).await });
        let child_ref = child.as_ref().clone();
        let r = timeout(Duration::from_millis(1), child).await;
        assert_eq!(r.map(|_| ()), Err(TimedOut));
        assert!(child_ref.is_cancelled());
    });
}

#[test]
fn timeout_drops_a_foreign_future_it_cannot_cancel() {
    let drops = DropCount::default();
    let d = drops.clone();
    rt().block_on(async move {
        let guard = d.guard();
        let r = timeout(Duration::from_millis(1), async move {
            let _g = guard;
            std::future::pending::<()>().await
        })
        .await;
        assert_eq!(r, Err(TimedOut));
        assert_eq!(
            d.get(),
            1,
            "the foreign future was dropped when timeout returned"
        );
    });
    assert_eq!(drops.get(), 1);
}

/// An outside cancel that arrives while timeout is unwinding its inner work is re-delivered at
/// the task's next await (asyncio re-raises it), not swallowed with the timeout's own.
#[test]
fn external_cancel_during_timeout_unwinding_is_not_swallowed() {
    rt().block_on(async {
        // The outside cancel is sent once the cleanup has begun, whatever the machine's speed
        // (not after a fixed delay, which a slow machine can overrun).
        let cleaning = Rc::new(Cell::new(false));
        let c = cleaning.clone();
        let t = spawn(async move {
            let r = timeout(Duration::from_millis(1), async move {
                if let Err(cancelled) = sleep(Duration::from_secs(3600)).await {
                    c.set(true);
                    // Cleanup; the outside cancel lands here and is ignored.
                    let _ = sleep(Duration::from_secs(3600)).await;
                    return Err(cancelled);
                }
                Ok(())
            })
            .await;
            assert_eq!(r.map(|_| ()), Err(TimedOut));
            sleep(Duration::from_millis(1)).await
        });
        while !cleaning.get() {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        t.cancel_with("outside");
        assert_eq!(t.await.unwrap_err().cancel_message(), Some("outside"));
    });
}

/// When timeout did not fire, an outside cancel goes to the inner work like any await, which
/// may suppress it (as `except CancelledError` inside `asyncio.timeout` can).
#[test]
fn external_cancel_inside_timeout_reaches_the_inner_work() {
    rt().block_on(async {
        let t = spawn(async {
            let r = timeout(Duration::from_secs(3600), sleep(Duration::from_secs(3600))).await;
            r.expect("not timed out").is_err()
        });
        sleep(Duration::from_millis(1)).await.unwrap();
        t.cancel();
        assert!(t.await.unwrap(), "the inner sleep saw Err(Cancelled)");
    });
}

#[test]
fn shield_keeps_the_inner_work_running_when_the_caller_is_cancelled() {
    rt().block_on(async {
        // The inner work waits on a promise, not a clock, so the order is fixed.
        let go: Promise<()> = Promise::new();
        let finished = Rc::new(Cell::new(false));
        let f = finished.clone();
        let g = go.clone();
        let inner = spawn(async move {
            g.wait().await.unwrap();
            f.set(true);
            9
        });
        let inner_ref = inner.as_ref().clone();
        let caller = spawn(async move { inner.shield().await.ok() });
        yield_now().await.unwrap();
        caller.cancel();
        assert_eq!(
            caller.await.unwrap(),
            None,
            "the outer await yielded Cancelled"
        );
        assert!(!inner_ref.is_done() && inner_ref.cancelling() == 0);
        go.set_result(()).unwrap();
        yield_now().await.unwrap();
        yield_now().await.unwrap();
        assert!(finished.get());
        assert_eq!(inner_ref.state(), TaskState::Finished);
    });
}

#[test]
fn yield_now_lets_other_ready_tasks_run_in_between() {
    rt().block_on(async {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mk = |name: &'static str| {
            let log = log.clone();
            spawn(async move {
                for i in 0..3 {
                    log.borrow_mut().push(format!("{name}{i}"));
                    yield_now().await.unwrap();
                }
            })
        };
        let (a, b) = (mk("a"), mk("b"));
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1", "a2", "b2"]);
    });
}

#[derive(Debug)]
enum AppError {
    Cancelled(#[allow(dead_code)] Cancelled),
    Bad(#[allow(dead_code)] &'static str),
}
impl From<Cancelled> for AppError {
    fn from(c: Cancelled) -> Self {
        AppError::Cancelled(c)
    }
}

#[test]
fn task_group_returns_body_value_and_children_values_in_spawn_order() {
    rt().block_on(async {
        let (body, values) = TaskGroup::<u32, AppError>::scope(|tg| async move {
            tg.spawn(async {
                sleep(Duration::from_millis(2)).await?;
                Ok(1)
            });
            tg.spawn(async { Ok(2) });
            Ok("body")
        })
        .await
        .unwrap();
        assert_eq!(body, "body");
        assert_eq!(values, [1, 2]);
    });
}

#[test]
fn task_group_first_failure_cancels_siblings_and_body_and_awaits_everyone() {
    rt().block_on(async {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let err = TaskGroup::<u32, AppError>::scope(|tg| async move {
            let l2 = l.clone();
            tg.spawn(async move {
                let r = sleep(Duration::from_secs(3600)).await;
                l2.borrow_mut().push("sibling cancelled");
                sleep(Duration::from_millis(1)).await.ok(); // cleanup after cancel
                l2.borrow_mut().push("sibling cleaned up");
                r?;
                Ok(1)
            });
            tg.spawn(async {
                sleep(Duration::from_millis(1)).await?;
                Err(AppError::Bad("child failed"))
            });
            tg.spawn(async {
                sleep(Duration::from_millis(1)).await?;
                panic!("child panicked")
            });
            let r = sleep(Duration::from_secs(3600)).await;
            l.borrow_mut().push("body cancelled");
            r?;
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(
            err.cancelled.is_none(),
            "the group's own cancellations are not reported"
        );
        assert_eq!(err.failures.len(), 2, "{err:?}");
        assert!(matches!(
            err.failures[0],
            GroupFailure::Failed(AppError::Bad(_))
        ));
        assert!(matches!(err.failures[1], GroupFailure::Panicked(_)));
        assert_eq!(
            *log.borrow(),
            ["sibling cancelled", "body cancelled", "sibling cleaned up"]
        );
        // The body's cancel was withdrawn: this task is not left cancelled.
        assert_eq!(current_task().unwrap().cancelling(), 0);
        sleep(Duration::from_millis(1)).await.unwrap();
    });
}

/// asyncio's gather leaves siblings running; ringloop's gather cancels them but returns at
/// once, while TaskGroup cancels them and also waits for their cleanup.
#[test]
fn gather_vs_task_group_on_a_failing_child() {
    rt().block_on(async {
        let cleaned = Rc::new(Event::new());
        let c = cleaned.clone();
        let sibling: Task<Result<(), Cancelled>> = spawn(async move {
            let r = sleep(Duration::from_secs(3600)).await;
            sleep(Duration::from_millis(2)).await.ok();
            c.set();
            r
        });
        let failing: Task<Result<(), Cancelled>> = spawn(async { panic!("x") });
        assert!(gather([sibling, failing]).await.unwrap_err().is_panic());
        assert!(
            !cleaned.is_set(),
            "gather returned before the sibling's cleanup"
        );
        // The sibling still runs after gather returned, and finishes its cleanup. Waiting for
        // it, not for a fixed time, keeps this right on a slow (emulated) CPU.
        cleaned.wait().await.unwrap();
        assert!(cleaned.is_set());

        let cleaned = Rc::new(Cell::new(false));
        let c = cleaned.clone();
        let err = TaskGroup::<(), AppError>::scope(|tg| async move {
            tg.spawn(async move {
                let r = sleep(Duration::from_secs(3600)).await;
                sleep(Duration::from_millis(2)).await.ok();
                c.set(true);
                r?;
                Ok(())
            });
            tg.spawn(async { Err(AppError::Bad("x")) });
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.failures.len(), 1);
        assert!(
            cleaned.get(),
            "TaskGroup awaited the cancelled sibling's cleanup"
        );
    });
}

#[test]
fn cancelling_the_parent_cancels_the_group() {
    rt().block_on(async {
        let children_cancelled = Rc::new(Cell::new(0));
        let cc = children_cancelled.clone();
        let parent = spawn(async move {
            TaskGroup::<(), AppError>::scope(|tg| async move {
                for _ in 0..3 {
                    let cc = cc.clone();
                    tg.spawn(async move {
                        let r = sleep(Duration::from_secs(3600)).await;
                        cc.set(cc.get() + 1);
                        r?;
                        Ok(())
                    });
                }
                Ok(())
            })
            .await
        });
        sleep(Duration::from_millis(1)).await.unwrap();
        parent.cancel_with("shutdown");
        // The GroupError carries the Cancelled, so the parent ends cancelled.
        let r = parent.await;
        assert_eq!(r.unwrap_err().cancel_message(), Some("shutdown"));
        assert_eq!(children_cancelled.get(), 3);
    });
}

#[test]
fn promise_set_once_awaited_by_many() {
    rt().block_on(async {
        let p: Promise<String> = Promise::new();
        let waiters: Vec<Task<Result<String, PromiseError>>> = (0..3)
            .map(|_| {
                let p = p.clone();
                spawn(async move { p.await })
            })
            .collect();
        yield_now().await.unwrap();
        assert!(!p.is_done());
        assert!(p.try_result().is_none());
        p.set_result("v".into()).unwrap();
        assert_eq!(p.set_result("w".into()), Err(SetError("w".to_string())));
        assert!(p.set_error(std::io::Error::other("late")).is_err());
        assert!(!p.cancel());
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), "v");
        }
        assert_eq!(p.try_result().unwrap().unwrap(), "v");
    });
}

#[test]
fn promise_error_and_cancel_reach_every_waiter() {
    rt().block_on(async {
        let p: Promise<u8> = Promise::new();
        let w = spawn({
            let p = p.clone();
            async move { p.wait().await }
        });
        yield_now().await.unwrap();
        p.set_error(std::io::Error::other("disk")).unwrap();
        match w.await.unwrap() {
            Err(PromiseError::Failed(e)) => assert_eq!(e.to_string(), "disk"),
            other => panic!("{other:?}"),
        }
        let q: Promise<u8> = Promise::new();
        let w = spawn({
            let q = q.clone();
            async move { q.wait().await }
        });
        yield_now().await.unwrap();
        assert!(q.cancel_with("gone"));
        let e = w.await;
        // The waiter returned the Cancelled it got, so it ended cancelled.
        assert_eq!(e.unwrap_err().cancel_message(), Some("gone"));
        assert!(q.is_cancelled());
    });
}

#[test]
fn cancelled_waiter_leaves_the_promise_pending_for_others() {
    rt().block_on(async {
        let p: Promise<u8> = Promise::new();
        let a = spawn({
            let p = p.clone();
            async move { p.wait().await.ok() }
        });
        let b = spawn({
            let p = p.clone();
            async move { p.wait().await.ok() }
        });
        yield_now().await.unwrap();
        a.cancel();
        assert_eq!(a.await.unwrap(), None);
        assert!(!p.is_done());
        p.set_result(4).unwrap();
        assert_eq!(b.await.unwrap(), Some(4));
    });
}

#[test]
fn promise_done_callbacks_are_scheduled_not_inline() {
    rt().block_on(async {
        let p: Promise<u8> = Promise::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        p.add_done_callback(move |p| s.borrow_mut().push(p.try_result().unwrap().unwrap()));
        p.set_result(1).unwrap();
        assert!(seen.borrow().is_empty(), "not run inline");
        yield_now().await.unwrap();
        assert_eq!(*seen.borrow(), [1]);
        let s = seen.clone();
        p.add_done_callback(move |_| s.borrow_mut().push(2));
        yield_now().await.unwrap();
        assert_eq!(*seen.borrow(), [1, 2]);
    });
}

/// asyncio's timeout() raises TimeoutError only when the CancelledError escaped the body; inner
/// work that caught the cancel and still produced a value keeps it (nothing lost).
#[test]
fn timeout_keeps_a_value_the_inner_work_returned_after_catching_the_cancel() {
    rt().block_on(async {
        let r = timeout(Duration::from_millis(1), async {
            match sleep(Duration::from_secs(3600)).await {
                Ok(()) => "slept",
                Err(_caught) => "caught the cancel, returned anyway",
            }
        })
        .await;
        assert_eq!(r, Ok("caught the cancel, returned anyway"));
        assert_eq!(current_task().unwrap().cancelling(), 0);
        sleep(Duration::from_millis(1)).await.unwrap();
    });
}
