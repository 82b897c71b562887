//! Ergonomics around cancellation: flattening `timeout(d, task)`, awaiting a task again after
//! its shielded await was cancelled, comparing errors, and a panic of `block_on`'s own future
//! shown once.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use ringloop_runtime::{
    set_exception_handler, sleep, spawn, timeout, yield_now, Cancelled, Flatten, Runtime,
    TaskError, TimedOut, WaitError,
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
