//! How remote wakes reach a parked loop: how many unparks a burst costs, which transport it
//! takes (the eventfd, or a `MSG_RING` from the waking loop's ring), and that a wake queued on
//! a ring is sent whatever the waking loop does next (it is left, its thread blocks in the
//! same poll, its runtime is dropped).
//!
//! These tests need to know that the receiving loop is parked before they wake it, which only
//! the crate can see (`ParkState::is_parked`); the receiver runs no timer, so once parked it
//! stays parked until woken.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sync::oneshot;
use crate::{spawn, yield_now, Backend, LoopThread, Runtime};

/// How long a test waits for something that should happen at once before it fails (a hang
/// guard, never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(20);

/// The backends this run tests (`RINGLOOP_TEST_BACKENDS`, as the integration tests read it).
fn backends() -> Vec<Backend> {
    let uring = std::env::var("RINGLOOP_TEST_BACKENDS")
        .map(|list| list.split(',').any(|b| b.trim() == "uring"))
        .unwrap_or(true);
    let mut v = Vec::new();
    if uring {
        v.push(Backend::IoUring);
    }
    v.push(Backend::Epoll);
    v
}

fn loop_thread(backend: Backend) -> LoopThread {
    LoopThread::start_with(move || Runtime::builder().backend(backend)).unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::yield_now();
    }
}

/// Waits until `lt`'s loop has announced a park (and, with nothing to do and no timer, blocks).
fn wait_parked(lt: &LoopThread) {
    let shared = lt.handle().shared().clone();
    wait_until("the loop parks", || shared.park.is_parked());
}

fn unparks(lt: &LoopThread) -> u64 {
    lt.handle().shared().unparks.load(Ordering::Relaxed)
}

/// A gate that threads wait at until it is opened.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// `n` tasks on `lt`'s loop, each pending on its own oneshot receiver; returns the senders.
/// When woken, each task first waits at `gate`, blocking the loop's thread: so once the
/// first woken task runs, the loop cannot park again until the gate opens.
fn parked_waiters(
    lt: &LoopThread,
    n: usize,
    gate: &Arc<Gate>,
    done: &Arc<AtomicUsize>,
) -> Vec<oneshot::Sender<()>> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel::<()>()).unzip();
    let (gate, done) = (gate.clone(), done.clone());
    lt.spawn(move || async move {
        let waiting = Arc::new(AtomicUsize::new(0));
        for rx in rxs {
            let (gate, done, waiting) = (gate.clone(), done.clone(), waiting.clone());
            spawn(async move {
                waiting.fetch_add(1, Ordering::SeqCst);
                let _ = rx.await;
                gate.wait();
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Every waiter has been polled once, so each is pending with its waker registered.
        while waiting.load(Ordering::SeqCst) < n {
            yield_now().await.unwrap();
        }
    })
    .wait()
    .unwrap();
    txs
}

/// Who wakes the parked loop.
#[derive(Clone, Copy, Debug)]
enum Waker {
    /// A plain thread: the eventfd.
    Thread,
    /// A task of a loop on this backend, with or without `MSG_RING` wakes.
    Loop(Backend, bool),
}

/// A burst of `N` wakes of `N` different tasks of a parked loop, sent by `waker`; returns how
/// many unparks the burst cost the loop and how many wakes the waking loop sent through its
/// ring.
fn burst(receiver: Backend, waker: Waker) -> (u64, u64) {
    const N: usize = 1000;
    let lt = loop_thread(receiver);
    let gate = Arc::new(Gate::default());
    let done = Arc::new(AtomicUsize::new(0));
    let txs = parked_waiters(&lt, N, &gate, &done);
    wait_parked(&lt);
    let before = unparks(&lt);
    let mut msg_ring_wakes = 0;
    match waker {
        Waker::Thread => {
            for tx in txs {
                tx.send(()).unwrap();
            }
        }
        Waker::Loop(backend, msg_ring) => {
            let rt = Runtime::builder()
                .backend(backend)
                .msg_ring_wakes(msg_ring)
                .build()
                .unwrap();
            // One poll of one task: the whole burst.
            rt.block_on(async move {
                for tx in txs {
                    tx.send(()).unwrap();
                }
            });
            msg_ring_wakes = rt.stats().msg_ring_wakes;
        }
    }
    gate.open();
    wait_until("every waiter ran", || done.load(Ordering::SeqCst) == N);
    let cost = unparks(&lt) - before;
    lt.stop().unwrap();
    (cost, msg_ring_wakes)
}

#[test]
fn a_burst_of_wakes_to_a_parked_loop_costs_one_unpark() {
    for receiver in backends() {
        let mut wakers = vec![Waker::Thread];
        for backend in backends() {
            wakers.push(Waker::Loop(backend, true));
            if backend == Backend::IoUring {
                wakers.push(Waker::Loop(backend, false));
            }
        }
        for waker in wakers {
            let (cost, through_ring) = burst(receiver, waker);
            assert_eq!(
                cost, 1,
                "{waker:?} waking a parked {receiver} loop 1000 times"
            );
            let expected = u64::from(matches!(
                (receiver, waker),
                (Backend::IoUring, Waker::Loop(Backend::IoUring, true))
            ));
            assert_eq!(
                through_ring, expected,
                "{waker:?} waking a {receiver} loop: wakes sent through the ring"
            );
        }
    }
}

/// A loop on `receiver` with one task pending on a oneshot receiver; returns the loop, the
/// sender, and a count the task bumps when it has run to its end.
fn one_waiter(receiver: Backend) -> (LoopThread, oneshot::Sender<u32>, Arc<AtomicUsize>) {
    let lt = loop_thread(receiver);
    let (tx, rx) = oneshot::channel::<u32>();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let waiting = Arc::new(AtomicUsize::new(0));
    let w = waiting.clone();
    lt.spawn(move || async move {
        spawn(async move {
            w.fetch_add(1, Ordering::SeqCst);
            let _ = rx.await;
            d.fetch_add(1, Ordering::SeqCst);
        });
    })
    .wait()
    .unwrap();
    wait_until("the waiter is pending", || {
        waiting.load(Ordering::SeqCst) == 1
    });
    wait_parked(&lt);
    (lt, tx, done)
}

/// 1. A task wakes a parked io_uring loop from an io_uring loop: a `MSG_RING` is queued on
///    the waking loop's ring.
/// 2. That loop is left right after (`Runtime::run_once` returns) and never runs again.
/// 3. The woken loop still wakes: the message went when the task's poll ended (or, at the
///    latest, when the loop was left).
#[test]
fn a_wake_queued_on_the_ring_goes_when_the_loop_is_left() {
    for backend in backends() {
        let (lt, tx, done) = one_waiter(backend);
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let _task = rt.spawn(async move { tx.send(1).unwrap() });
        rt.run_once().unwrap(); // runs the task, which queues the wake, and returns
        wait_until("the woken task ends", || done.load(Ordering::SeqCst) == 1);
        lt.stop().unwrap();
        drop(rt);
    }
}

/// 1. A task of an io_uring loop wakes a parked io_uring loop (a `MSG_RING`, queued).
/// 2. In the same poll it blocks its thread waiting for the woken loop's answer.
/// 3. The wait returns: blocking sent the queued message first.
#[test]
fn a_task_that_blocks_after_a_wake_through_the_ring_still_gets_its_answer() {
    for backend in backends() {
        let lt = loop_thread(backend);
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let (answer, before) = rt.block_on(async {
            let (tx, rx) = oneshot::channel::<u32>();
            let waiting = Arc::new(AtomicUsize::new(0));
            let w = waiting.clone();
            let task = lt.spawn(move || async move {
                w.fetch_add(1, Ordering::SeqCst);
                rx.await.unwrap() + 1
            });
            // Let this loop enter the kernel (sending the spawn's wake) until the remote task
            // waits, then until its loop is parked.
            while waiting.load(Ordering::SeqCst) == 0 {
                yield_now().await.unwrap();
            }
            wait_parked(&lt);
            // (The spawn's own wake may have gone through the ring too, if that loop was
            // parked then: count from here.)
            let before = crate::current_stats().msg_ring_wakes;
            tx.send(41).unwrap();
            let mut task = task;
            (task.wait_timeout(PATIENCE), before) // blocks this loop's thread
        });
        assert_eq!(answer.unwrap(), 42);
        assert_eq!(
            rt.stats().msg_ring_wakes - before,
            u64::from(backend == Backend::IoUring),
            "the answer's wake went through the ring"
        );
        lt.stop().unwrap();
    }
}

/// 1. A task of an io_uring loop holds the sender of a parked loop's waiter.
/// 2. Its runtime is dropped: the task is dropped with it, and so the sender, which wakes the
///    waiter (a `MSG_RING` queued during the teardown).
/// 3. The waiter wakes: the teardown sent the message before the ring went.
#[test]
fn a_wake_from_a_dropped_runtime_s_teardown_is_sent() {
    for backend in backends() {
        let (lt, tx, done) = one_waiter(backend);
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let task = rt.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        rt.run_once().unwrap(); // the task holds the sender now
        drop(task);
        drop(rt);
        wait_until("the woken task ends", || done.load(Ordering::SeqCst) == 1);
        lt.stop().unwrap();
    }
}

/// A loop's ring descriptor is not kept open by those who may wake it once its runtime is
/// gone: a stop sent through a kept handle afterwards falls back to the eventfd, harmlessly.
#[test]
fn waking_a_dropped_io_uring_loop_from_a_ring_is_harmless() {
    for backend in backends() {
        let lt = loop_thread(backend);
        let handle = lt.handle().clone();
        lt.stop().unwrap();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            handle.stop();
            assert!(handle.is_closed());
            assert!(
                handle.shared().wake.pin_ring().is_none(),
                "the ring was retired"
            );
        });
        assert_eq!(rt.stats().msg_ring_wakes, 0);
    }
}
