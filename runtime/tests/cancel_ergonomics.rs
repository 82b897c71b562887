//! Ergonomics around cancellation: flattening `timeout(d, task)`, awaiting a task again after
//! its shielded await was cancelled, gathering tasks the caller keeps, comparing errors, and a
//! panic of `block_on`'s own future shown once.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use ringloop_runtime::{
    gather, gather_settled, set_exception_handler, sleep, spawn, timeout, try_gather, yield_now,
    Cancelled, Flatten, GatherError, Runtime, TaskError, TaskState, TimedOut, WaitError,
};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn flat_turns_a_timeout_around_a_task_into_one_result() {
    Runtime::new().unwrap().block_on(async {
        let quick = spawn(async { Ok::<_, Cancelled>(7) });
        assert_eq!(timeout(HOUR, quick).await.flat(), Ok(7));

        let slow = spawn(async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(7)
        });
        let r = timeout(Duration::from_millis(1), slow).await.flat();
        assert_eq!(r, Err(WaitError::TimedOut));
        assert!(r.unwrap_err().is_timed_out());

        let cancelled = spawn(async {
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(7)
        });
        yield_now().await.unwrap();
        cancelled.cancel_with("stop");
        match timeout(HOUR, cancelled).await.flat() {
            Err(WaitError::Cancelled(c)) => assert_eq!(c.message(), Some("stop")),
            other => panic!("{other:?}"),
        }

        set_exception_handler(|_| {});
        let panicked = spawn(async {
            if true {
                panic!("boom");
            }
            Ok::<u32, Cancelled>(7)
        });
        match timeout(HOUR, panicked).await.flat() {
            Err(WaitError::Panicked(e)) => assert_eq!(e.panic_message(), Some("boom")),
            other => panic!("{other:?}"),
        }

        // The plain layers flatten too.
        assert_eq!(
            timeout(Duration::from_millis(1), sleep(HOUR)).await.flat(),
            Err(WaitError::TimedOut)
        );
        let t = spawn(async { Ok::<_, Cancelled>("v") });
        assert_eq!(t.await.flat(), Ok("v"));
    });
}

#[test]
fn a_shielded_task_can_be_awaited_again_after_the_shielded_await_was_cancelled() {
    Runtime::new().unwrap().block_on(async {
        let outer = spawn(async {
            let mut shielded = spawn(async {
                sleep(Duration::from_millis(1)).await.unwrap();
                7
            })
            .shield();
            let first = (&mut shielded).await;
            assert!(first.is_err_and(|e| e.is_cancelled()));
            // asyncio: `await task` after `await shield(task)` raised CancelledError.
            shielded.into_task().await.unwrap()
        });
        yield_now().await.unwrap();
        outer.cancel();
        assert_eq!(outer.await.unwrap(), 7);
    });
}

#[test]
fn gathered_tasks_can_be_borrowed_and_looked_at_afterwards() {
    Runtime::new().unwrap().block_on(async {
        // All succeed: the values move into the output, the handles stay.
        let mut a = spawn(async { 1 });
        let mut b = spawn(async { 2 });
        assert_eq!(gather([&mut a, &mut b]).await.unwrap(), vec![1, 2]);
        assert!(a.is_done() && !a.is_cancelled());
        assert_eq!(b.state(), TaskState::Finished);
        assert!(
            a.try_result().is_none(),
            "the value was taken by the gather"
        );

        // One fails: the caller can tell which one, and that the other was cancelled.
        let mut slow = spawn(async { sleep(HOUR).await.map_err(|_| "cancelled") });
        let mut bad = spawn(async { Err::<(), _>("bad input") });
        let r = try_gather(vec![&mut slow, &mut bad]).await;
        assert_eq!(r.unwrap_err(), GatherError::Failed("bad input"));
        assert!(bad.is_done() && !bad.is_cancelled());
        assert!(!slow.is_done(), "cancelled, ends at its next await");
        assert_eq!(slow.as_ref().cancelling(), 1);
        assert_eq!(
            slow.await.unwrap(),
            Err("cancelled"),
            "the sleep saw the cancel"
        );

        // gather_settled: every outcome, and the handles.
        let mut ok = spawn(async { 5 });
        let mut boom = spawn(async {
            yield_now().await.ok();
            panic!("boom")
        });
        let outcomes = gather_settled([&mut ok, &mut boom]).await.unwrap();
        assert_eq!(outcomes[0], Ok(5));
        assert!(outcomes[1].as_ref().unwrap_err().is_panic());
        assert_eq!(boom.state(), TaskState::Panicked);
        assert!(
            boom.try_result().unwrap().unwrap_err().is_panic(),
            "a failed task's handle still gives its error"
        );
    });
}

#[test]
#[should_panic(expected = "Task polled after its result was taken")]
fn awaiting_a_task_whose_value_a_gather_took_panics() {
    Runtime::new().unwrap().block_on(async {
        let mut a = spawn(async { 1 });
        gather([&mut a]).await.unwrap();
        let _ = a.await;
    });
}

#[test]
fn errors_compare_by_kind() {
    Runtime::new().unwrap().block_on(async {
        set_exception_handler(|_| {});
        let a = spawn(async { panic!("x") }).await.unwrap_err();
        let b = spawn(async { panic!("x") }).await.unwrap_err();
        let c = spawn(async { panic!("y") }).await.unwrap_err();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let t = spawn(async { sleep(HOUR).await });
        yield_now().await.unwrap();
        t.cancel();
        let cancelled: TaskError = t.await.unwrap_err();
        assert_ne!(cancelled, a);
        assert_eq!(WaitError::from(TimedOut), WaitError::TimedOut);
    });
}

#[test]
fn a_panic_of_the_main_future_is_resumed_but_not_reported_to_the_exception_handler() {
    let rt = Runtime::new().unwrap();
    let reports = Rc::new(Cell::new(0));
    let r = reports.clone();
    rt.set_exception_handler(move |_| r.set(r.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            panic!("main failed");
        })
    }));
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"main failed"));
    assert_eq!(reports.get(), 0, "shown once: by the resumed panic only");
    // A spawned task's panic is still reported.
    rt.block_on(async {
        let _ = spawn(async { panic!("child") }).await;
    });
    assert_eq!(reports.get(), 1);
}

/// A custom future that takes the task's cancel request, then finds its own result ready (the
/// work it stood for finished elsewhere), returns that result and hands the request back with
/// `repost_cancel_request`: the task's next await is cancelled, and `cancelling()` still counts
/// one request.
#[test]
fn a_reposted_request_reaches_the_next_await() {
    use std::future::poll_fn;
    use std::task::Poll;

    use ringloop_runtime::{current_task, repost_cancel_request, take_cancel_request};

    Runtime::new().unwrap().block_on(async {
        let taken = Rc::new(Cell::new(false));
        let seen = taken.clone();
        let task = spawn(async move {
            // 1. Wait (by hand) until the request comes, take it, then "finish" anyway.
            let value = poll_fn(|_| match take_cancel_request() {
                Some(c) => {
                    seen.set(true);
                    repost_cancel_request(c);
                    Poll::Ready(42)
                }
                None => Poll::Pending,
            })
            .await;
            assert_eq!(current_task().unwrap().cancelling(), 1);
            // 2. The next await sees the request.
            sleep(HOUR).await?;
            Ok::<_, Cancelled>(value)
        });
        yield_now().await.unwrap();
        task.cancel();
        let r = task.await;
        assert!(taken.get());
        assert!(matches!(r, Err(TaskError::Cancelled(_))), "{r:?}");
    });
}
