//! `Handle::spawn`, `RemoteTask` and `LoopThread`: a future started from another thread runs
//! on the loop (even a `!Send` one), its output, panic or cancellation comes back to a plain
//! thread or to a task of another runtime, a cancel reaches it from anywhere (and follows the
//! await chain), a runtime that goes away never leaves a waiter hanging, and stopping a loop
//! thread cancels every task and lets it clean up. Every test runs on both backends.
//!
//! Nothing here asserts a duration. Waits on other threads are bounded by `LONG` only so that
//! a broken hand-off fails the test instead of hanging it. The loop thread is held still where
//! a race must be won one way (a spawn cancelled before it starts) by a task that blocks the
//! loop thread on a channel the test holds.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use common::{backends, yield_now};
use ringloop_runtime::{
    current_backend, sleep, spawn, stop, Backend, Builder, Cancelled, LoopThread, RemoteError,
    RemoteTask, Runtime, TaskError,
};

/// A bound on waits for other threads: only a broken hand-off ever reaches it.
const LONG: Duration = Duration::from_secs(30);

/// An hour: a sleep that only a cancellation ends.
const HOUR: Duration = Duration::from_secs(3600);

fn start(backend: Backend) -> LoopThread {
    LoopThread::start_with(move || Runtime::builder().backend(backend)).unwrap()
}

/// Waits for the task, failing the test (rather than hanging) if it never ends.
fn wait<T>(mut task: RemoteTask<T>) -> Result<T, RemoteError> {
    match task.wait_timeout(LONG) {
        Err(RemoteError::TimedOut) => panic!("the remote task did not end within {LONG:?}"),
        other => other,
    }
}

/// A minimal executor that knows nothing of ringloop: polls on this thread, parks between.
fn block_on_foreign<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
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
        thread::park();
    }
}

/// Blocks the loop thread of `lt` until the returned sender is dropped or sent to: spawns, cancels
/// and wakes queue up meanwhile and are all seen by the loop's next iteration.
fn hold_loop(lt: &LoopThread) -> (mpsc::Sender<()>, RemoteTask<()>) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let holder = lt.spawn(move || async move {
        held_tx.send(()).unwrap();
        let _ = release_rx.recv(); // blocks the loop thread on purpose
    });
    held_rx.recv_timeout(LONG).unwrap();
    (release_tx, holder)
}

#[test]
fn a_non_send_future_runs_on_the_loop_and_its_value_comes_back() {
    for backend in backends() {
        let lt = start(backend);
        let caller = thread::current().id();
        let task = lt.spawn(move || {
            // The closure runs on the loop thread, and the future it builds holds an `Rc`.
            let on_loop = thread::current().id();
            async move {
                let local = Rc::new(Cell::new(20));
                sleep(Duration::from_millis(1)).await.unwrap();
                local.set(local.get() + 22);
                (
                    local.get(),
                    on_loop,
                    thread::current().id(),
                    current_backend(),
                )
            }
        });
        let (value, closure_thread, task_thread, ran_on) = wait(task).unwrap();
        assert_eq!(value, 42);
        assert_ne!(closure_thread, caller);
        assert_eq!(closure_thread, task_thread);
        assert_eq!(ran_on, backend);
        lt.stop().unwrap();
    }
}

#[test]
fn awaited_from_a_task_of_another_runtime() {
    for backend in backends() {
        let lt = start(backend);
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let got = rt.block_on(async {
            let remote = lt.spawn(|| async {
                sleep(Duration::from_millis(1)).await.unwrap();
                7
            });
            // The remote task wakes this one through this runtime's injector.
            remote.await.unwrap()
        });
        assert_eq!(got, 7);
        lt.stop().unwrap();
    }
}

#[test]
fn awaited_from_a_foreign_executor() {
    for backend in backends() {
        let lt = start(backend);
        let remote = lt.spawn(|| async { "any executor" });
        assert_eq!(block_on_foreign(remote).unwrap(), "any executor");
        lt.stop().unwrap();
    }
}

/// asyncio's `future.result(timeout)` raises `TimeoutError` and leaves the coroutine running; so
/// does `wait_timeout`. The cancel that follows is a request the task may answer with a value
/// (asyncio would mark its concurrent future cancelled regardless: see `RemoteTask`'s docs).
#[test]
fn wait_timeout_leaves_the_task_running_and_a_cancel_gets_the_cleanup_value() {
    for backend in backends() {
        let lt = start(backend);
        let (started_tx, started_rx) = mpsc::channel();
        let mut task = lt.spawn(move || async move {
            started_tx.send(()).unwrap();
            match sleep(HOUR).await {
                Ok(()) => "slept an hour",
                Err(_cancelled) => {
                    // Asynchronous cleanup still runs after the cancel.
                    sleep(Duration::from_millis(1)).await.unwrap();
                    "cleaned up"
                }
            }
        });
        started_rx.recv_timeout(LONG).unwrap();
        assert!(matches!(
            task.wait_timeout(Duration::from_millis(5)),
            Err(RemoteError::TimedOut)
        ));
        assert!(!task.is_done());
        assert!(task.try_result().is_none());
        assert!(task.cancel());
        assert_eq!(wait(task).unwrap(), "cleaned up");
        lt.stop().unwrap();
    }
}

#[test]
fn a_cancel_is_delivered_at_the_await_with_its_message() {
    for backend in backends() {
        let lt = start(backend);
        let (started_tx, started_rx) = mpsc::channel();
        let task = lt.spawn(move || async move {
            started_tx.send(()).unwrap();
            sleep(HOUR).await?; // the cancellation escapes: the task ends cancelled
            Ok::<_, Cancelled>(())
        });
        started_rx.recv_timeout(LONG).unwrap();
        assert!(task.cancel_with("from a plain thread"));
        let err = wait(task).unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(err.cancel_message(), Some("from a plain thread"));
        lt.stop().unwrap();
    }
}

#[test]
fn a_task_suspended_on_a_foreign_future_is_dropped_by_a_cancel() {
    for backend in backends() {
        let lt = start(backend);
        let (started_tx, started_rx) = mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, SeqCst);
            }
        }
        let guard = SetOnDrop(dropped.clone());
        let task = lt.spawn(move || async move {
            let _guard = guard;
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await; // knows nothing of ringloop
        });
        started_rx.recv_timeout(LONG).unwrap();
        task.cancel();
        assert!(wait(task).unwrap_err().is_cancelled());
        assert!(dropped.load(SeqCst), "the future was dropped on its loop");
        lt.stop().unwrap();
    }
}

/// Cancelled before the loop got to it: the closure is never called (asyncio never starts a
/// coroutine cancelled before its first step).
#[test]
fn a_spawn_cancelled_before_it_starts_never_runs() {
    for backend in backends() {
        let lt = start(backend);
        // 1. The loop thread is held, so the spawn below waits in the injector.
        let (release, holder) = hold_loop(&lt);
        let called = Arc::new(AtomicBool::new(false));
        let task = lt.spawn({
            let called = called.clone();
            move || {
                called.store(true, SeqCst);
                async {}
            }
        });
        // 2. Cancelled while queued.
        assert!(task.cancel_with("too late"));
        assert!(!task.is_done());
        // 3. The loop runs the queued closure, which sees the request and does not start.
        release.send(()).unwrap();
        let err = wait(task).unwrap_err();
        assert_eq!(err.cancel_message(), Some("too late"));
        assert!(!called.load(SeqCst));
        wait(holder).unwrap();
        lt.stop().unwrap();
    }
}

#[test]
fn a_panic_is_reported_on_its_loop_and_surfaces_to_the_waiter() {
    for backend in backends() {
        let (report_tx, report_rx) = mpsc::channel::<String>();
        let lt = LoopThread::start_with(move || {
            Runtime::builder()
                .backend(backend)
                .exception_handler(move |ctx| report_tx.send(ctx.to_string()).unwrap())
        })
        .unwrap();
        // The task panics...
        let task = lt.spawn(|| async {
            sleep(Duration::from_millis(1)).await.unwrap();
            panic!("task blew up");
        });
        let err = wait(task).unwrap_err();
        assert!(err.is_panic());
        assert_eq!(err.panic_message(), Some("task blew up"));
        let report = report_rx.recv_timeout(LONG).unwrap();
        assert!(report.contains("task blew up"), "{report}");
        // ...or the closure that builds it does.
        let task = lt.spawn(|| -> std::future::Ready<()> { panic!("closure blew up") });
        assert_eq!(
            wait(task).unwrap_err().panic_message(),
            Some("closure blew up")
        );
        let report = report_rx.recv_timeout(LONG).unwrap();
        assert!(report.contains("closure blew up"), "{report}");
        // The loop goes on.
        assert_eq!(wait(lt.spawn(|| async { 1 })).unwrap(), 1);
        lt.stop().unwrap();
    }
}

/// A task awaiting a remote task and cancelled forwards the cancel, as awaiting a local `Task`
/// does; the await then yields what the remote task ended with.
#[test]
fn a_cancel_of_the_awaiting_task_is_forwarded_to_the_remote_task() {
    for backend in backends() {
        let lt = start(backend);
        let cleaned = Arc::new(AtomicBool::new(false));
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            let (started_tx, started_rx) = ringloop_runtime::sync::oneshot::channel();
            let remote = lt.spawn({
                let cleaned = cleaned.clone();
                move || async move {
                    started_tx.send(()).unwrap();
                    let r = sleep(HOUR).await;
                    cleaned.store(true, SeqCst);
                    r
                }
            });
            let waiter = spawn(async move {
                let r = remote.await; // forwards the cancel below
                r?.map_err(RemoteError::Cancelled)
            });
            started_rx.await.unwrap();
            // The waiter was queued before this yield, so it is suspended on the remote task
            // when the cancel comes (not cancelled before it ever ran).
            yield_now().await;
            waiter.cancel_with("stop waiting");
            let err = waiter.await.unwrap_err();
            // The remote task let the cancellation escape, the waiter let it escape in turn: both
            // ended cancelled, with the message that started it.
            assert!(err.is_cancelled(), "{err:?}");
            assert_eq!(err.cancel_message(), Some("stop waiting"));
        });
        assert!(cleaned.load(SeqCst));
        lt.stop().unwrap();
    }
}

#[test]
fn many_threads_spawn_on_one_loop_at_once() {
    const THREADS: usize = 8;
    const EACH: usize = 200;
    for backend in backends() {
        let lt = start(backend);
        let handle = lt.handle().clone();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let handle = handle.clone();
                thread::spawn(move || {
                    let tasks: Vec<_> = (0..EACH)
                        .map(|i| handle.spawn(move || async move { t * EACH + i }))
                        .collect();
                    tasks.into_iter().map(|t| wait(t).unwrap()).sum::<usize>()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let n = THREADS * EACH;
        assert_eq!(total, n * (n - 1) / 2);
        lt.stop().unwrap();
    }
}

#[test]
fn stopping_cancels_every_task_and_lets_it_clean_up() {
    for backend in backends() {
        let lt = start(backend);
        let cleanups = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = mpsc::channel();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let cleanups = cleanups.clone();
                let started_tx = started_tx.clone();
                lt.spawn(move || async move {
                    // A local child, detached: the stop cancels it too. It says it started
                    // from its first poll, which comes after this task is suspended below.
                    let child_cleanups = cleanups.clone();
                    drop(spawn(async move {
                        started_tx.send(()).unwrap();
                        if sleep(HOUR).await.is_err() {
                            sleep(Duration::from_millis(1)).await.unwrap();
                            child_cleanups.fetch_add(1, SeqCst);
                        }
                    }));
                    let r = sleep(HOUR).await;
                    // Asynchronous cleanup after the cancel.
                    sleep(Duration::from_millis(1)).await.unwrap();
                    cleanups.fetch_add(1, SeqCst);
                    r
                })
            })
            .collect();
        for _ in 0..4 {
            started_rx.recv_timeout(LONG).unwrap();
        }
        let handle = lt.handle().clone();
        lt.stop().unwrap();
        assert_eq!(cleanups.load(SeqCst), 8, "4 tasks and their 4 children");
        for t in tasks {
            let err = t.wait().unwrap_err();
            assert!(err.is_cancelled(), "{err:?}");
        }
        // The runtime is gone: a late spawn says so at once, and its closure is never called.
        assert!(handle.is_closed());
        let late = handle.spawn(|| -> std::future::Ready<()> { unreachable!() });
        assert!(late.is_done());
        assert!(matches!(late.wait(), Err(RemoteError::Closed)));
    }
}

#[test]
fn a_stop_from_inside_the_loop_ends_the_thread() {
    for backend in backends() {
        let lt = start(backend);
        let task = lt.spawn(|| async { stop() });
        lt.join().unwrap();
        wait(task).unwrap();
    }
}

/// A plain `Runtime` driven by this thread: spawns made while it exists but never run, and
/// tasks still pending, get an outcome when it is dropped.
#[test]
fn a_dropped_runtime_never_leaves_a_waiter_hanging() {
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let handle = rt.handle();
        // Started and suspended on the loop when the runtime goes.
        let running = handle.spawn(|| async { sleep(HOUR).await });
        // 1. One iteration runs the queued closure (spawning the task), the next polls the
        //    task, which then waits on its sleep. Neither blocks: work is ready in both.
        while rt.stats().tasks_alive == 0 {
            rt.run_once().unwrap();
        }
        rt.run_once().unwrap();
        assert!(!running.is_done());
        // 2. Queued in the injector, never run.
        let called = Arc::new(AtomicBool::new(false));
        let queued = handle.spawn({
            let called = called.clone();
            move || {
                called.store(true, SeqCst);
                async {}
            }
        });
        // 3. The runtime goes: the running task is cancelled, the queued closure dropped.
        drop(rt);
        assert!(wait(running).unwrap_err().is_cancelled());
        assert!(matches!(wait(queued), Err(RemoteError::Closed)));
        assert!(!called.load(SeqCst));
    }
}

#[test]
fn waiting_on_the_tasks_own_loop_thread_panics_instead_of_hanging() {
    for backend in backends() {
        let lt = start(backend);
        let handle = lt.handle().clone();
        let outer = lt.spawn(move || async move {
            let inner = handle.spawn(|| async { 1 });
            inner.wait() // would block the loop the inner task needs
        });
        let err = wait(outer).unwrap_err();
        assert!(
            err.panic_message()
                .is_some_and(|m| m.contains("thread of the runtime the task runs on")),
            "{err:?}"
        );
        lt.stop().unwrap();
    }
}

#[test]
fn the_outcome_is_taken_once() {
    for backend in backends() {
        let lt = start(backend);
        let mut task = lt.spawn(|| async { 5 });
        assert_eq!(task.wait_timeout(LONG).unwrap(), 5);
        assert!(task.is_done());
        assert!(task.try_result().is_none());
        assert!(matches!(task.wait_timeout(LONG), Err(RemoteError::Taken)));
        assert!(!task.cancel(), "nothing to cancel once done");
        lt.stop().unwrap();
    }
}

#[test]
fn a_dropped_handle_detaches_the_task() {
    for backend in backends() {
        let lt = start(backend);
        let (done_tx, done_rx) = mpsc::channel();
        drop(lt.spawn(move || async move {
            sleep(Duration::from_millis(1)).await.unwrap();
            done_tx.send("ran on").unwrap();
        }));
        assert_eq!(done_rx.recv_timeout(LONG).unwrap(), "ran on");
        lt.stop().unwrap();
    }
}

#[test]
fn a_failing_builder_is_an_error_not_a_hang() {
    let err = LoopThread::start_with(|| -> Builder { panic!("no builder today") }).unwrap_err();
    assert!(err.to_string().contains("no builder today"), "{err}");
}

#[test]
fn a_loop_thread_cannot_join_itself() {
    for backend in backends() {
        let lt = start(backend);
        let handle = lt.handle().clone();
        let slot = Arc::new(Mutex::new(Some(lt)));
        let task = handle.spawn({
            let slot = slot.clone();
            move || async move {
                let lt = slot.lock().unwrap().take().unwrap();
                lt.stop().map_err(|e| e.kind())
            }
        });
        assert_eq!(wait(task).unwrap(), Err(io::ErrorKind::Deadlock));
        // The loop stopped anyway; the thread ends by itself and the runtime goes with it.
        let deadline = std::time::Instant::now() + LONG;
        while !handle.is_closed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop did not stop"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_remote_task_error_converts_for_question_mark() {
    let err: io::Error = RemoteError::TimedOut.into();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let err: io::Error = RemoteError::Closed.into();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let err: RemoteError = TaskError::Panicked(Box::new("boom")).into();
    assert_eq!(err.panic_message(), Some("boom"));
}

/// What other threads may hold: a `RemoteTask` of a `Send` output and a `LoopThread` are
/// `Send + Sync`, like a `Handle`.
#[test]
fn remote_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RemoteTask<String>>();
    send_sync::<LoopThread>();
    send_sync::<ringloop_runtime::Handle>();
    // A panic payload is `Send` only, as in `TaskError` and `std::thread::Result`.
    fn send<T: Send>() {}
    send::<RemoteError>();
}
