//! `spawn_blocking` and `BlockingPool`: values and panics come back, a cancelled await resolves
//! at once while the job runs to completion, dropping detaches, the thread cap holds and excess
//! jobs queue in order, idle threads are reused and then exit.
//!
//! Nothing here asserts a duration. Waits on other threads are bounded by `LONG` only so that a
//! broken pool fails the test instead of hanging it; "at once" is shown by a job that is still
//! blocked (on a channel the test holds) when the await has already resolved.
//!
//! The process-wide pool is shared by every test of this binary, so the tests that count
//! threads use private pools (`BlockingPool::builder`).

mod common;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread, ThreadId};
use std::time::{Duration, Instant};

use common::{panic_text, yield_now};
use ringloop_runtime::blocking::{set_max_blocking_threads, BlockingPool};
use ringloop_runtime::{current_task, sleep, spawn, spawn_blocking, Runtime, TaskError};

/// A bound on waits for other threads: only a broken pool ever reaches it.
const LONG: Duration = Duration::from_secs(30);

/// Sends the id of the thread that drops it.
struct DropNotice(Sender<ThreadId>);

impl Drop for DropNotice {
    fn drop(&mut self) {
        let _ = self.0.send(thread::current().id());
    }
}

/// Waits (bounded by `LONG`) until `cond` holds.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LONG, "gave up waiting until {what}");
        thread::sleep(Duration::from_millis(1));
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

#[test]
fn the_value_comes_back_through_a_remote_wake() {
    let rt = Runtime::new().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let value = rt.block_on(async {
        let job = spawn_blocking(move || {
            release_rx.recv().unwrap();
            thread::current().name().map(str::to_owned)
        });
        let waiter = spawn(job);
        yield_now().await; // 1. the waiter is suspended on the job
        release_tx.send(()).unwrap(); // 2. the job returns on its thread and wakes the waiter
        waiter.await.unwrap().unwrap()
    });
    assert_eq!(value.as_deref(), Some("ringloop-blocking"));
    // The wake came from the pool thread, through the runtime's injector.
    assert!(rt.stats().remote_wakes >= 1);
}

#[test]
fn a_hundred_concurrent_jobs_each_return_their_own_value() {
    let rt = Runtime::new().unwrap();
    let values = rt.block_on(async {
        // All spawned before any is awaited: more jobs than the default cap of 64, so some
        // wait in the queue.
        let jobs: Vec<_> = (0..100u64)
            .map(|i| {
                spawn_blocking(move || {
                    thread::yield_now();
                    i * i
                })
            })
            .collect();
        let mut values = Vec::new();
        for job in jobs {
            values.push(job.await.unwrap());
        }
        values
    });
    assert_eq!(values, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn a_panic_comes_back_with_its_payload_and_the_pool_thread_survives() {
    // One thread, so the job after the panic must run on the very thread that panicked.
    let pool = BlockingPool::builder().max_threads(1).build().unwrap();
    let rt = Runtime::new().unwrap();
    let panicked_on = Arc::new(Mutex::new(None));
    let p = panicked_on.clone();
    let (err, next_on) = rt.block_on(async {
        let err = pool
            .spawn(move || {
                *p.lock().unwrap() = Some(thread::current().id());
                panic!("disk on fire");
            })
            .await
            .unwrap_err();
        let next_on = pool.spawn(|| thread::current().id()).await.unwrap();
        (err, next_on)
    });
    assert!(err.is_panic(), "{err:?}");
    assert_eq!(err.panic_message(), Some("disk on fire"));
    assert_eq!(panic_text(&*err.try_into_panic().unwrap()), "disk on fire");
    assert_eq!(Some(next_on), *panicked_on.lock().unwrap());
    assert_eq!(pool.threads(), 1);

    // The process-wide pool too.
    let err = rt
        .block_on(spawn_blocking(|| -> u8 { panic!("boom") }))
        .unwrap_err();
    assert_eq!(err.panic_message(), Some("boom"));
    assert_eq!(rt.block_on(spawn_blocking(|| 5)).unwrap(), 5);
}

#[test]
fn a_cancelled_await_resolves_at_once_while_the_job_runs_to_completion() {
    let rt = Runtime::new().unwrap();
    let completed = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (dropped_tx, dropped_rx) = mpsc::channel::<ThreadId>();
    let c = completed.clone();
    // Should the await wrongly wait for the job, this releases it after `LONG`, so the test
    // fails (below) instead of hanging.
    let rescue = release_tx.clone();
    thread::spawn(move || {
        thread::sleep(LONG);
        let _ = rescue.send(());
    });
    let outcome = rt.block_on(async move {
        let waiter = spawn(async move {
            let r = spawn_blocking(move || {
                release_rx.recv().unwrap();
                c.fetch_add(1, SeqCst);
                DropNotice(dropped_tx)
            })
            .await;
            match r {
                Err(TaskError::Cancelled(c)) => format!("cancelled: {:?}", c.message()),
                Err(e) => format!("unexpected {e:?}"),
                Ok(_) => "value".to_owned(),
            }
        });
        yield_now().await; // 1. the waiter is suspended on the job
        waiter.cancel_with("enough"); // 2. cancel it while the job is blocked
        waiter.await.unwrap()
    });
    // 3. The await resolved while the job was still blocked on the channel.
    assert_eq!(outcome, r#"cancelled: Some("enough")"#);
    assert_eq!(completed.load(SeqCst), 0);
    // 4. The job runs on to completion; its value is dropped on the pool thread.
    release_tx.send(()).unwrap();
    let dropped_on = dropped_rx
        .recv_timeout(LONG)
        .expect("the job completes and its value is dropped");
    assert_eq!(completed.load(SeqCst), 1);
    assert_ne!(dropped_on, thread::current().id());
}

#[test]
fn a_value_that_is_ready_wins_over_a_cancellation_which_waits_for_the_next_await() {
    let rt = Runtime::new().unwrap();
    let (value, next) = rt.block_on(async {
        let t = spawn(async {
            let job = spawn_blocking(|| 7);
            while !job.is_finished() {
                yield_now().await;
            }
            current_task().unwrap().cancel();
            let value = job.await.map_err(|e| e.to_string());
            let next = sleep(Duration::from_secs(3600)).await.is_err();
            (value, next)
        });
        t.await.unwrap()
    });
    assert_eq!(value, Ok(7));
    assert!(next, "the request is delivered at the next await");
}

#[test]
fn dropping_the_handle_detaches_the_job() {
    let completed = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (dropped_tx, dropped_rx) = mpsc::channel::<ThreadId>();
    let c = completed.clone();
    // 1. Dropped while the job is blocked: it runs on, and its value is dropped on its thread.
    drop(spawn_blocking(move || {
        release_rx.recv().unwrap();
        c.fetch_add(1, SeqCst);
        DropNotice(dropped_tx)
    }));
    release_tx.send(()).unwrap();
    let dropped_on = dropped_rx.recv_timeout(LONG).expect("the job completes");
    assert_eq!(completed.load(SeqCst), 1);
    assert_ne!(dropped_on, thread::current().id());

    // 2. Dropped after the job returned: the handle drops the value, here.
    let (dropped_tx, dropped_rx) = mpsc::channel::<ThreadId>();
    let job = spawn_blocking(move || DropNotice(dropped_tx));
    wait_until("the job has returned", || job.is_finished());
    assert!(
        dropped_rx.try_recv().is_err(),
        "the value waits for its handle"
    );
    drop(job);
    assert_eq!(dropped_rx.try_recv(), Ok(thread::current().id()));
}

#[test]
fn the_thread_cap_holds_and_excess_jobs_queue_until_a_thread_is_free() {
    const CAP: usize = 3;
    let pool = BlockingPool::builder().max_threads(CAP).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    // The test thread takes part in both barriers: `started` proves CAP jobs run at once,
    // `release` holds them until the test has looked at the pool.
    let started = Arc::new(Barrier::new(CAP + 1));
    let release = Arc::new(Barrier::new(CAP + 1));
    let job = |blocking: bool| {
        let (running, most) = (running.clone(), most.clone());
        let (started, release) = (started.clone(), release.clone());
        move || {
            let now = running.fetch_add(1, SeqCst) + 1;
            most.fetch_max(now, SeqCst);
            if blocking {
                started.wait();
                release.wait();
            }
            running.fetch_sub(1, SeqCst);
        }
    };
    // 1. CAP jobs occupy every thread.
    let mut tasks: Vec<_> = (0..CAP).map(|_| pool.spawn(job(true))).collect();
    started.wait();
    assert_eq!(pool.threads(), CAP);
    // 2. More jobs find no free thread and may start none: they queue.
    tasks.extend((0..2 * CAP).map(|_| pool.spawn(job(false))));
    assert_eq!(pool.threads(), CAP);
    assert_eq!(pool.queued(), 2 * CAP);
    // 3. Released, the threads work through the queue.
    release.wait();
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(most.load(SeqCst), CAP);
    assert_eq!(pool.queued(), 0);
    assert!(pool.threads() <= CAP);
}

#[test]
fn queued_jobs_run_in_the_order_they_were_spawned() {
    let pool = BlockingPool::builder().max_threads(1).build().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // 1. The only thread is busy with the first job.
    let first = pool.spawn(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap()
    });
    started_rx.recv_timeout(LONG).unwrap();
    // 2. Five more jobs queue behind it.
    let rest: Vec<_> = (1..=5)
        .map(|i| {
            let order = order.clone();
            pool.spawn(move || order.lock().unwrap().push(i))
        })
        .collect();
    assert_eq!(pool.queued(), 5);
    // 3. They run in the order they were spawned.
    release_tx.send(()).unwrap();
    block_on_foreign(async {
        first.await.unwrap();
        for t in rest {
            t.await.unwrap();
        }
    });
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4, 5]);
}

#[test]
fn an_idle_thread_is_reused_and_exits_after_the_idle_timeout() {
    let pool = BlockingPool::builder()
        .max_threads(4)
        .idle_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    assert_eq!(pool.threads(), 0, "threads start on demand");
    let first = block_on_foreign(pool.spawn(|| thread::current().id())).unwrap();
    // The thread goes idle after delivering; a job spawned then claims it.
    wait_until("the thread is idle", || pool.idle_threads() == 1);
    let second = block_on_foreign(pool.spawn(|| thread::current().id())).unwrap();
    assert_eq!(
        first, second,
        "an idle thread is reused rather than another started"
    );
    assert_eq!(pool.threads(), 1);
    wait_until("the idle thread has exited", || pool.threads() == 0);
    // And the pool starts a thread again on demand.
    assert_eq!(block_on_foreign(pool.spawn(|| 3)).unwrap(), 3);
}

#[test]
fn awaitable_from_an_executor_that_is_not_ringloop() {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let job = spawn_blocking(move || {
        release_rx.recv().unwrap();
        "done"
    });
    let t = thread::spawn(move || release_tx.send(()).unwrap());
    assert_eq!(block_on_foreign(job).unwrap(), "done");
    t.join().unwrap();
}

#[test]
fn the_process_wide_cap_is_fixed_once_and_zero_threads_are_refused() {
    assert_eq!(
        set_max_blocking_threads(0).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // Another test may have started the pool already (with the default); either way, the cap
    // is fixed after this call.
    let _ = set_max_blocking_threads(64);
    assert_eq!(
        set_max_blocking_threads(8).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    let err = BlockingPool::builder().max_threads(0).build().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
