//! The sync primitives: FIFO order, hand-off without barging, and the cancellation protocol
//! (a cancelled wait leaves its queue; nothing handed to a waiter is ever lost).
//!
//! Every test is deterministic: tasks are ordered with `yield_now` (one loop iteration) and
//! outcomes are counted exactly; nothing asserts a duration.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::{yield_now, Log};
use ringloop_runtime::sync::{
    mpsc, oneshot, Condition, Event, Lock, PutCancelled, Queue, QueueFull, Semaphore, TaskDoneError,
};
use ringloop_runtime::{sleep, spawn, timeout, Cancelled, Runtime, TaskError, TimedOut};

/// Lets every ready task run until it blocks (a few loop iterations).
async fn settle() {
    for _ in 0..5 {
        yield_now().await;
    }
}

fn is_cancelled<T>(r: Result<T, TaskError>) -> bool {
    matches!(r, Err(TaskError::Cancelled(_)))
}

// ---------------------------------------------------------------------------------------------
// Event

#[test]
fn event_set_wakes_every_waiter() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let woken = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (event, woken) = (event.clone(), woken.clone());
                spawn(async move {
                    event.wait().await.unwrap();
                    woken.set(woken.get() + 1);
                })
            })
            .collect();
        settle().await;
        assert_eq!(woken.get(), 0);
        assert!(!event.is_set());
        event.set();
        // Woken by `set`, they return even though the flag is cleared before they run.
        event.clear();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(woken.get(), 3);
    });
}

#[test]
fn event_wait_returns_at_once_when_set() {
    Runtime::new().unwrap().block_on(async {
        let event = Event::new();
        event.set();
        assert!(event.is_set());
        event.wait().await.unwrap();
        event.wait().await.unwrap();
        event.clear();
        assert!(!event.is_set());
    });
}

#[test]
fn event_wait_cancelled_leaves_the_waiters() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let waiter = spawn({
            let event = event.clone();
            async move { event.wait().await }
        });
        settle().await;
        assert!(waiter.cancel_with("stop"));
        let err = waiter.await.unwrap_err();
        assert_eq!(err.cancel_message(), Some("stop"));
        // A later set has no one left to wake, and later waits still work.
        event.set();
        event.wait().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Lock

#[test]
fn lock_waiters_are_served_fifo() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(Vec::new()));
        let guard = lock.lock().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let lock = lock.clone();
            tasks.push(spawn(async move {
                let mut order = lock.lock().await.unwrap();
                order.push(i);
                // Hold it across an await: the others must keep waiting.
                yield_now().await;
            }));
            yield_now().await; // task i queues before task i + 1 is spawned
        }
        drop(guard);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock.lock().await.unwrap(), [0, 1, 2, 3, 4]);
        assert!(!lock.is_locked());
    });
}

#[test]
fn lock_release_hands_off_without_barging() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(()));
        let log = Log::default();
        let guard = lock.lock().await.unwrap();
        let waiter = spawn({
            let (lock, log) = (lock.clone(), log.clone());
            async move {
                let _g = lock.lock().await.unwrap();
                log.push("waiter");
            }
        });
        settle().await;
        // Release: the lock goes straight to the waiter and stays locked...
        drop(guard);
        assert!(lock.is_locked());
        // ...so neither try_lock nor a late lock() can barge in ahead of it.
        assert!(lock.try_lock().is_none());
        let late = lock.lock().await.unwrap();
        log.push("late");
        drop(late);
        waiter.await.unwrap();
        assert_eq!(log.entries(), ["waiter", "late"]);
        assert!(!lock.is_locked());
        assert!(lock.try_lock().is_some());
    });
}

#[test]
fn cancelled_lock_waiter_leaves_the_queue_and_the_lock_goes_on() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(()));
        let log = Log::default();
        let guard = lock.lock().await.unwrap();
        let spawn_waiter = |name: &'static str| {
            let (lock, log) = (lock.clone(), log.clone());
            spawn(async move {
                match lock.lock().await {
                    Ok(_g) => {
                        log.push(format!("{name} got it"));
                        Ok(())
                    }
                    Err(c) => {
                        log.push(format!("{name} cancelled"));
                        Err(c)
                    }
                }
            })
        };
        let a = spawn_waiter("a");
        yield_now().await;
        let b = spawn_waiter("b");
        settle().await;
        a.cancel();
        assert!(is_cancelled(a.await));
        assert!(lock.is_locked());
        drop(guard);
        b.await.unwrap().unwrap();
        assert_eq!(log.entries(), ["a cancelled", "b got it"]);
        assert!(!lock.is_locked());
    });
}

#[test]
fn lock_handed_to_a_cancelled_waiter_is_still_taken() {
    // The protocol: what a wait was handed is returned even if a cancel request arrived in the
    // meantime; the request is delivered at the task's next await.
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(()));
        let log = Log::default();
        let guard = lock.lock().await.unwrap();
        let a = spawn({
            let (lock, log) = (lock.clone(), log.clone());
            async move {
                let g = lock.lock().await?;
                log.push("a got it");
                let next = sleep(Duration::from_secs(3600)).await;
                log.push(format!("a's next await cancelled: {}", next.is_err()));
                drop(g);
                next
            }
        });
        let b = spawn({
            let (lock, log) = (lock.clone(), log.clone());
            async move {
                let _g = lock.lock().await.unwrap();
                log.push("b got it");
            }
        });
        settle().await;
        // Step 1: release hands the lock to `a`; step 2: `a` is cancelled before it runs.
        drop(guard);
        a.cancel();
        assert!(is_cancelled(a.await));
        b.await.unwrap();
        assert_eq!(
            log.entries(),
            ["a got it", "a's next await cancelled: true", "b got it"]
        );
        assert!(!lock.is_locked());
    });
}

#[test]
fn lock_handed_to_an_aborted_waiter_passes_to_the_next() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(0));
        let guard = lock.lock().await.unwrap();
        let a = spawn({
            let lock = lock.clone();
            async move { *lock.lock().await.unwrap() += 1 }
        });
        yield_now().await;
        let b = spawn({
            let lock = lock.clone();
            async move { *lock.lock().await.unwrap() += 10 }
        });
        settle().await;
        // Step 1: release hands the lock to `a`; step 2: `a` is dropped before it runs. Its
        // acquire must pass the lock on to `b` rather than lose it.
        drop(guard);
        a.abort();
        assert!(is_cancelled(a.await));
        b.await.unwrap();
        assert_eq!(*lock.lock().await.unwrap(), 10);
        assert!(!lock.is_locked());
    });
}

#[test]
fn lock_wait_under_timeout_withdraws_the_waiter() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(()));
        let guard = lock.lock().await.unwrap();
        let r = timeout(Duration::from_millis(1), lock.lock()).await;
        assert!(matches!(r, Err(TimedOut)));
        drop(guard);
        // The timed-out waiter is gone: the lock is free, not handed to a ghost.
        assert!(!lock.is_locked());
        assert!(lock.try_lock().is_some());
    });
}

#[test]
fn lock_into_inner_and_get_mut() {
    let mut lock = Lock::new(vec![1]);
    lock.get_mut().push(2);
    assert_eq!(lock.into_inner(), [1, 2]);
}

// ---------------------------------------------------------------------------------------------
// Semaphore

#[test]
fn semaphore_waiters_are_served_fifo() {
    Runtime::new().unwrap().block_on(async {
        let sem = Rc::new(Semaphore::new(1));
        let order = Rc::new(RefCell::new(Vec::new()));
        let held = sem.acquire().await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (sem, order) = (sem.clone(), order.clone());
            tasks.push(spawn(async move {
                let _p = sem.acquire().await.unwrap();
                order.borrow_mut().push(i);
                yield_now().await;
            }));
            yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.borrow(), [0, 1, 2, 3, 4]);
        assert_eq!(sem.available_permits(), 1);
    });
}

#[test]
fn semaphore_caps_concurrency_at_n() {
    Runtime::new().unwrap().block_on(async {
        let sem = Rc::new(Semaphore::new(3));
        let running = Rc::new(Cell::new(0));
        let max = Rc::new(Cell::new(0));
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let (sem, running, max, done) =
                    (sem.clone(), running.clone(), max.clone(), done.clone());
                spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    running.set(running.get() + 1);
                    max.set(max.get().max(running.get()));
                    for _ in 0..(i % 3 + 1) {
                        yield_now().await;
                    }
                    running.set(running.get() - 1);
                    done.set(done.get() + 1);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.get(), 3);
        assert_eq!(done.get(), 10);
        assert_eq!(sem.available_permits(), 3);
    });
}

#[test]
fn cancelled_semaphore_acquire_does_not_lose_the_permit() {
    Runtime::new().unwrap().block_on(async {
        let sem = Rc::new(Semaphore::new(1));
        let log = Log::default();
        let held = sem.try_acquire().unwrap();
        assert!(sem.try_acquire().is_none());
        let spawn_waiter = |name: &'static str| {
            let (sem, log) = (sem.clone(), log.clone());
            spawn(async move {
                let _p = sem.acquire().await?;
                log.push(name);
                Ok::<_, Cancelled>(())
            })
        };
        let a = spawn_waiter("a");
        yield_now().await;
        let b = spawn_waiter("b");
        settle().await;
        a.cancel();
        assert!(is_cancelled(a.await));
        drop(held);
        b.await.unwrap().unwrap();
        assert_eq!(log.entries(), ["b"]);
        assert_eq!(sem.available_permits(), 1);
    });
}

#[test]
fn permit_handed_to_an_aborted_waiter_is_passed_on() {
    Runtime::new().unwrap().block_on(async {
        let sem = Rc::new(Semaphore::new(0));
        let log = Log::default();
        let spawn_waiter = |name: &'static str| {
            let (sem, log) = (sem.clone(), log.clone());
            spawn(async move {
                let p = sem.acquire_owned().await.unwrap();
                log.push(name);
                p.forget(); // keep the count observable
            })
        };
        let a = spawn_waiter("a");
        yield_now().await;
        let b = spawn_waiter("b");
        settle().await;
        // Step 1: one permit is handed to `a`; step 2: `a` is dropped before it runs.
        sem.add_permits(1);
        assert_eq!(sem.available_permits(), 0);
        a.abort();
        assert!(is_cancelled(a.await));
        b.await.unwrap();
        assert_eq!(log.entries(), ["b"]);
        assert_eq!(sem.available_permits(), 0);
    });
}

#[test]
fn semaphore_add_permits_serves_waiters_then_counts_the_rest() {
    Runtime::new().unwrap().block_on(async {
        let sem = Rc::new(Semaphore::new(0));
        let got = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (sem, got) = (sem.clone(), got.clone());
                spawn(async move {
                    sem.acquire().await.unwrap().forget();
                    got.set(got.get() + 1);
                })
            })
            .collect();
        settle().await;
        sem.add_permits(5);
        assert_eq!(sem.available_permits(), 3);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(got.get(), 2);
        let p = sem.try_acquire_owned().unwrap();
        assert_eq!(sem.available_permits(), 2);
        drop(p);
        assert_eq!(sem.available_permits(), 3);
    });
}

// ---------------------------------------------------------------------------------------------
// Condition

#[test]
fn condition_notify_wakes_waiters_fifo() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(()));
        let log = Log::default();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (cond, log) = (cond.clone(), log.clone());
            tasks.push(spawn(async move {
                let g = cond.lock().await.unwrap();
                let _g = cond.wait(g).await.unwrap();
                log.push(format!("w{i}"));
            }));
            yield_now().await;
        }
        settle().await;
        assert!(!cond.is_locked()); // every waiter released the lock
        assert_eq!(cond.notify(1), 1);
        settle().await;
        assert_eq!(log.entries(), ["w0"]);
        assert_eq!(cond.notify(5), 2);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(log.entries(), ["w0", "w1", "w2"]);
        assert_eq!(cond.notify_all(), 0);
    });
}

#[test]
fn condition_notify_all_wakes_every_waiter() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(0));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let cond = cond.clone();
                spawn(async move {
                    let g = cond.lock().await.unwrap();
                    let mut g = cond.wait(g).await.unwrap();
                    *g += 1;
                })
            })
            .collect();
        settle().await;
        assert_eq!(cond.notify_all(), 4);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*cond.lock().await.unwrap(), 4);
    });
}

#[test]
fn condition_wait_for_rechecks_the_predicate_under_the_lock() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(0));
        let checks = Rc::new(Cell::new(0));
        let waiter = spawn({
            let (cond, checks) = (cond.clone(), checks.clone());
            async move {
                let g = cond.lock().await?;
                let g = cond
                    .wait_for(g, |n| {
                        checks.set(checks.get() + 1);
                        *n >= 3
                    })
                    .await?;
                Ok::<_, Cancelled>(*g)
            }
        });
        settle().await;
        for _ in 0..3 {
            *cond.lock().await.unwrap() += 1;
            cond.notify_all();
            settle().await;
        }
        assert_eq!(waiter.await.unwrap().unwrap(), 3);
        // Once at the start, once per notification.
        assert_eq!(checks.get(), 4);
    });
}

#[test]
fn condition_wait_cancelled_gives_the_lock_back_held() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(Vec::new()));
        let waiter = spawn({
            let cond = cond.clone();
            async move {
                let g = cond.lock().await.unwrap();
                match cond.wait(g).await {
                    Ok(_) => "notified",
                    Err(mut e) => {
                        // The lock is held again, and ours to use.
                        e.guard.push("cleanup under the lock");
                        "cancelled"
                    }
                }
            }
        });
        settle().await;
        // Hold the lock while cancelling: the wait must re-acquire it before returning.
        let g = cond.lock().await.unwrap();
        waiter.cancel();
        settle().await;
        assert!(!waiter.is_done());
        drop(g);
        assert_eq!(waiter.await.unwrap(), "cancelled");
        assert_eq!(*cond.lock().await.unwrap(), ["cleanup under the lock"]);
        assert!(!cond.is_locked());
    });
}

#[test]
fn condition_notification_is_passed_on_by_a_waiter_cancelled_while_reacquiring() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(()));
        let log = Log::default();
        let spawn_waiter = |name: &'static str| {
            let (cond, log) = (cond.clone(), log.clone());
            spawn(async move {
                let g = cond.lock().await.unwrap();
                match cond.wait(g).await {
                    Ok(_) => log.push(format!("{name} notified")),
                    Err(_) => log.push(format!("{name} cancelled")),
                }
            })
        };
        let a = spawn_waiter("a");
        yield_now().await;
        let b = spawn_waiter("b");
        settle().await;
        let g = cond.lock().await.unwrap();
        // Step 1: `a` is notified and starts re-acquiring the (held) lock.
        assert_eq!(cond.notify(1), 1);
        settle().await;
        // Step 2: `a` is cancelled while re-acquiring: its notification must go to `b`.
        a.cancel();
        settle().await;
        drop(g);
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(log.entries(), ["a cancelled", "b notified"]);
    });
}

#[test]
fn condition_wait_with_a_cancel_already_pending_keeps_the_lock() {
    Runtime::new().unwrap().block_on(async {
        let cond = Rc::new(Condition::new(()));
        let held_during_wait = Rc::new(Cell::new(false));
        let task = spawn({
            let (cond, held) = (cond.clone(), held_during_wait.clone());
            async move {
                let g = cond.lock().await?;
                // The cancel arrives while we sleep; the wait sees it at once.
                let _ = sleep(Duration::ZERO).await;
                let r = cond.wait(g).await;
                held.set(cond.is_locked());
                drop(r?);
                Ok::<_, Cancelled>(())
            }
        });
        yield_now().await; // the task takes the lock and sleeps
        task.cancel();
        assert!(is_cancelled(task.await));
        assert!(held_during_wait.get());
        assert!(!cond.is_locked());
    });
}

// ---------------------------------------------------------------------------------------------
// Queue

#[test]
fn queue_getters_are_served_fifo() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::unbounded());
        let log = Log::default();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (queue, log) = (queue.clone(), log.clone());
            tasks.push(spawn(async move {
                let item: &str = queue.get().await.unwrap();
                log.push(format!("g{i}:{item}"));
            }));
            yield_now().await;
        }
        for item in ["x", "y", "z"] {
            queue.put_nowait(item).unwrap();
        }
        assert_eq!(queue.qsize(), 0); // handed straight to the getters
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(log.entries(), ["g0:x", "g1:y", "g2:z"]);
    });
}

#[test]
fn queue_putters_are_served_fifo_and_bounded() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::new(1));
        assert_eq!(queue.maxsize(), 1);
        queue.put(0).await.unwrap();
        assert!(queue.full());
        let mut tasks = Vec::new();
        for i in 1..=3 {
            let queue = queue.clone();
            tasks.push(spawn(async move { queue.put(i).await.unwrap() }));
            yield_now().await;
        }
        settle().await;
        assert_eq!(queue.qsize(), 1);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(queue.get().await.unwrap());
            assert!(queue.qsize() <= 1);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(queue.empty());
    });
}

#[test]
fn queue_put_nowait_on_a_full_queue_returns_the_item() {
    let queue = Queue::new(2);
    queue.put_nowait('a').unwrap();
    queue.put_nowait('b').unwrap();
    let QueueFull(back) = queue.put_nowait('c').unwrap_err();
    assert_eq!(back, 'c');
    assert_eq!(queue.get_nowait(), Some('a'));
    assert_eq!(queue.get_nowait(), Some('b'));
    assert_eq!(queue.get_nowait(), None);
}

#[test]
fn queue_get_handed_an_item_then_cancelled_still_returns_it() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::unbounded());
        let getter = spawn({
            let queue = queue.clone();
            async move {
                let item = queue.get().await?;
                // The cancel request is still pending: delivered here.
                let next = sleep(Duration::from_secs(3600)).await;
                Ok::<_, Cancelled>((item, next.is_err()))
            }
        });
        settle().await;
        // Same loop iteration: the item is handed to the getter, then the getter is cancelled
        // before it runs.
        queue.put_nowait("item").unwrap();
        getter.cancel();
        assert_eq!(getter.await.unwrap().unwrap(), ("item", true));
        assert!(queue.empty());
    });
}

#[test]
fn queue_get_handed_an_item_then_dropped_puts_it_back_in_front() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::unbounded());
        let getter = spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        settle().await;
        // Step 1: `1` is handed to the getter; step 2: the getter is dropped before it runs;
        // step 3: `2` is put meanwhile.
        queue.put_nowait(1).unwrap();
        getter.abort();
        queue.put_nowait(2).unwrap();
        assert!(is_cancelled(getter.await));
        assert_eq!(queue.qsize(), 2);
        assert_eq!(queue.get_nowait(), Some(1));
        assert_eq!(queue.get_nowait(), Some(2));
    });
}

#[test]
fn queue_get_handed_an_item_then_dropped_passes_it_to_the_next_getter() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::unbounded());
        let first = spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        yield_now().await;
        let second = spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        settle().await;
        queue.put_nowait("only").unwrap();
        first.abort();
        assert!(is_cancelled(first.await));
        assert_eq!(second.await.unwrap().unwrap(), "only");
        assert!(queue.empty());
    });
}

#[test]
fn queue_put_cancelled_while_full_returns_the_item() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::new(1));
        queue.put_nowait("first").unwrap();
        let putter = spawn({
            let queue = queue.clone();
            async move {
                match queue.put("second").await {
                    Ok(()) => None,
                    Err(PutCancelled { item, cancelled }) => {
                        Some((item, cancelled.message().map(str::to_owned)))
                    }
                }
            }
        });
        settle().await;
        putter.cancel_with("no room");
        assert_eq!(
            putter.await.unwrap(),
            Some(("second", Some("no room".to_owned())))
        );
        assert_eq!(queue.qsize(), 1);
        assert_eq!(queue.get_nowait(), Some("first"));
        assert_eq!(queue.get_nowait(), None);
        // Only the item that was put counts for join.
        queue.task_done().unwrap();
        queue.join().await.unwrap();
    });
}

#[test]
fn queue_join_waits_for_every_task_done() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::new(0));
        queue.join().await.unwrap(); // nothing unfinished yet
        for i in 0..3 {
            queue.put(i).await.unwrap();
        }
        let joined = Rc::new(Cell::new(false));
        let joiner = spawn({
            let (queue, joined) = (queue.clone(), joined.clone());
            async move {
                queue.join().await.unwrap();
                joined.set(true);
            }
        });
        for _ in 0..3 {
            queue.get().await.unwrap();
        }
        settle().await;
        assert!(!joined.get()); // taken, not yet done
        queue.task_done().unwrap();
        queue.task_done().unwrap();
        settle().await;
        assert!(!joined.get());
        queue.task_done().unwrap();
        joiner.await.unwrap();
        assert!(joined.get());
    });
}

#[test]
fn queue_task_done_called_too_often_is_an_error() {
    let queue = Queue::new(0);
    assert_eq!(queue.task_done(), Err(TaskDoneError));
    queue.put_nowait(()).unwrap();
    assert_eq!(queue.get_nowait(), Some(()));
    assert_eq!(queue.task_done(), Ok(()));
    assert_eq!(queue.task_done(), Err(TaskDoneError));
}

#[test]
fn queue_get_cancelled_while_empty_leaves_no_ghost_getter() {
    Runtime::new().unwrap().block_on(async {
        let queue = Rc::new(Queue::unbounded());
        let getter = spawn({
            let queue = queue.clone();
            async move { queue.get().await }
        });
        settle().await;
        getter.cancel();
        assert!(is_cancelled(getter.await));
        queue.put_nowait(5).unwrap();
        assert_eq!(queue.qsize(), 1); // not handed to the cancelled getter
        assert_eq!(queue.get().await.unwrap(), 5);
    });
}

// ---------------------------------------------------------------------------------------------
// oneshot

#[test]
fn oneshot_send_then_recv() {
    Runtime::new().unwrap().block_on(async {
        let (tx, rx) = oneshot::channel();
        let receiver = spawn(rx);
        settle().await;
        assert!(!tx.is_closed());
        tx.send(42).unwrap();
        assert_eq!(receiver.await.unwrap(), Ok(42));
    });
}

#[test]
fn oneshot_sender_dropped_gives_closed() {
    Runtime::new().unwrap().block_on(async {
        let (tx, rx) = oneshot::channel::<u8>();
        let receiver = spawn(rx);
        settle().await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), Err(oneshot::RecvError::Closed));
    });
}

#[test]
fn oneshot_send_to_a_closed_receiver_gives_the_value_back() {
    let (tx, rx) = oneshot::channel();
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.send("v"), Err("v"));

    let (tx, mut rx) = oneshot::channel();
    rx.close();
    assert_eq!(tx.send(1), Err(1));
    assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Closed));
}

#[test]
fn oneshot_try_recv() {
    let (tx, mut rx) = oneshot::channel();
    assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Empty));
    tx.send(7).unwrap();
    assert_eq!(rx.try_recv(), Ok(7));
    assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Closed));
}

#[test]
fn oneshot_recv_cancelled_then_awaited_again() {
    Runtime::new().unwrap().block_on(async {
        let (tx, rx) = oneshot::channel();
        let task = spawn(async move {
            let mut rx = rx;
            let first = (&mut rx).await;
            assert!(matches!(first, Err(oneshot::RecvError::Cancelled(_))));
            // Suppress the cancellation and keep waiting: the value is not lost.
            rx.await
        });
        settle().await;
        task.cancel();
        settle().await;
        assert!(!task.is_done());
        tx.send("late").unwrap();
        assert_eq!(task.await.unwrap(), Ok("late"));
    });
}

#[test]
fn oneshot_cross_thread_send_wakes_the_runtime() {
    Runtime::new().unwrap().block_on(async {
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            // Give the runtime time to park with nothing to do.
            std::thread::sleep(Duration::from_millis(20));
            tx.send(String::from("from another thread")).unwrap();
        });
        assert_eq!(rx.await.unwrap(), "from another thread");
        thread.join().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// mpsc

#[test]
fn mpsc_bounded_send_waits_for_room() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel(2);
        let sent = Rc::new(Cell::new(0));
        let producer = spawn({
            let sent = sent.clone();
            async move {
                for i in 0..5 {
                    tx.send(i).await.unwrap();
                    sent.set(sent.get() + 1);
                }
            }
        });
        settle().await;
        assert_eq!(sent.get(), 2); // back-pressure: waiting for room
        assert_eq!(rx.len(), 2);
        let mut got = Vec::new();
        for expect_sent in [3, 4, 5] {
            got.push(rx.recv().await.unwrap());
            settle().await;
            assert_eq!(sent.get(), expect_sent);
        }
        producer.await.unwrap();
        while let Ok(v) = rx.recv().await {
            got.push(v);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
    });
}

#[test]
fn mpsc_waiting_senders_are_served_fifo() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(0).unwrap();
        assert!(matches!(tx.try_send(99), Err(mpsc::TrySendError::Full(99))));
        let mut tasks = Vec::new();
        for i in 1..=4 {
            let tx = tx.clone();
            tasks.push(spawn(async move { tx.send(i).await.unwrap() }));
            yield_now().await;
        }
        drop(tx);
        let mut got = Vec::new();
        while let Ok(v) = rx.recv().await {
            got.push(v);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn mpsc_closed_after_every_sender_drops() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tx2 = tx.clone();
        tx.send(1).await.unwrap();
        tx2.try_send(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        let waiter = spawn(async move {
            let a = rx.recv().await;
            let b = rx.recv().await;
            (a, b)
        });
        settle().await;
        assert!(!waiter.is_done()); // `tx2` is alive: the channel is not closed yet
        drop(tx2);
        assert_eq!(waiter.await.unwrap(), (Ok(2), Err(mpsc::RecvError::Closed)));
    });
}

#[test]
fn mpsc_send_cancelled_returns_the_value() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel(1);
        tx.send("queued").await.unwrap();
        let sender = spawn(async move {
            match tx.send("blocked").await {
                Err(mpsc::SendError::Cancelled { value, .. }) => Some(value),
                _ => None,
            }
        });
        settle().await;
        sender.cancel();
        assert_eq!(sender.await.unwrap(), Some("blocked"));
        assert_eq!(rx.recv().await, Ok("queued"));
        assert_eq!(rx.recv().await, Err(mpsc::RecvError::Closed));
    });
}

#[test]
fn mpsc_receiver_closed_fails_waiting_senders_with_their_values() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(1).await.unwrap();
        let sender = spawn({
            let tx = tx.clone();
            async move { tx.send(2).await.map_err(mpsc::SendError::into_inner) }
        });
        settle().await;
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(sender.await.unwrap(), Err(2));
        assert!(matches!(tx.try_send(3), Err(mpsc::TrySendError::Closed(3))));
        // What was in the channel before the close is still delivered.
        assert_eq!(rx.recv().await, Ok(1));
        assert_eq!(rx.recv().await, Err(mpsc::RecvError::Closed));
    });
}

#[test]
fn mpsc_recv_cancelled_loses_nothing() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel::<u32>(4);
        let receiver = spawn(async move {
            let first = rx.recv().await;
            assert!(matches!(first, Err(mpsc::RecvError::Cancelled(_))));
            rx.recv().await
        });
        settle().await;
        receiver.cancel();
        settle().await;
        tx.send(9).await.unwrap();
        assert_eq!(receiver.await.unwrap(), Ok(9));
    });
}

#[test]
fn mpsc_rendezvous_send_waits_for_the_receiver() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel(0);
        assert!(matches!(tx.try_send(1), Err(mpsc::TrySendError::Full(1))));
        let delivered = Rc::new(Cell::new(false));
        let sender = spawn({
            let delivered = delivered.clone();
            async move {
                tx.send(5).await.unwrap();
                delivered.set(true);
            }
        });
        settle().await;
        assert!(!delivered.get());
        assert_eq!(rx.recv().await, Ok(5));
        sender.await.unwrap();
        assert!(delivered.get());
    });
}

#[test]
fn mpsc_cross_thread_senders_wake_the_receiver() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::channel::<(u32, u32)>(4);
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        tx.blocking_send((id, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0, 0];
        let mut total = 0;
        while let Ok((id, i)) = rx.recv().await {
            // Each producer's values arrive in its own order.
            assert_eq!(i, next[id as usize]);
            next[id as usize] += 1;
            total += 1;
        }
        assert_eq!(total, 200);
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn mpsc_unbounded_cross_thread_send_wakes_a_parked_runtime() {
    Runtime::new().unwrap().block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.try_send("hello").unwrap();
        });
        assert_eq!(rx.recv().await, Ok("hello"));
        assert_eq!(rx.recv().await, Err(mpsc::RecvError::Closed));
        thread.join().unwrap();
    });
}

#[test]
fn channels_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<mpsc::Sender<String>>();
    assert_send_sync::<mpsc::Receiver<String>>();
    assert_send_sync::<oneshot::Sender<String>>();
    assert_send_sync::<oneshot::Receiver<String>>();
}

#[test]
fn failed_try_acquire_creates_no_permit() {
    let sem = Rc::new(Semaphore::new(0));
    assert!(sem.try_acquire().is_none());
    assert!(sem.try_acquire_owned().is_none());
    assert_eq!(sem.available_permits(), 0);
    let lock = Lock::new(());
    let guard = lock.try_lock().unwrap();
    assert!(lock.try_lock().is_none());
    assert!(lock.try_lock().is_none());
    drop(guard);
    assert!(!lock.is_locked());
    assert!(lock.try_lock().is_some());
}

#[test]
fn queue_get_under_timeout_loses_nothing() {
    Runtime::new().unwrap().block_on(async {
        let queue = Queue::unbounded();
        let r = timeout(Duration::from_millis(1), queue.get()).await;
        assert!(matches!(r, Err(TimedOut)));
        // The timed-out getter left the queue: a later item waits for the next get.
        queue.put_nowait(1).unwrap();
        assert_eq!(queue.qsize(), 1);
        assert_eq!(queue.get_nowait(), Some(1));
    });
}
