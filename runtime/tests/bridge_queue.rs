//! `BridgeQueue`: threads and tasks on both sides, FIFO, bounded, `close` wakes everyone and
//! still delivers what was put, timeouts give items back, cancellation loses nothing, and a
//! million items from 8 producer threads to 8 consumer tasks arrive exactly once, in order per
//! producer. Every test with tasks runs on both backends (the task side is woken through the
//! loop's injector and its eventfd or ring).
//!
//! Nothing here asserts a duration; waits are bounded by `LONG` only so that a lost wake fails
//! the test instead of hanging it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{backends, yield_now};
use ringloop_runtime::sync::bridge::{GetError, PutError};
use ringloop_runtime::sync::BridgeQueue;
use ringloop_runtime::{spawn, Backend, LoopThread, Runtime};

/// A bound on waits for other threads: only a lost wake ever reaches it.
const LONG: Duration = Duration::from_secs(30);

fn runtime(backend: Backend) -> Runtime {
    Runtime::builder().backend(backend).build().unwrap()
}

#[test]
fn a_thread_feeds_a_task_and_a_task_feeds_a_thread() {
    for backend in backends() {
        let to_task = BridgeQueue::new(2);
        let to_thread = BridgeQueue::new(2);
        let producer = thread::spawn({
            let to_task = to_task.clone();
            move || {
                for i in 0..100 {
                    to_task.blocking_put(i).unwrap();
                }
                to_task.close();
            }
        });
        let consumer = thread::spawn({
            let to_thread = to_thread.clone();
            move || {
                let mut got = Vec::new();
                while let Ok(i) = to_thread.blocking_get_timeout(LONG) {
                    got.push(i);
                }
                got
            }
        });
        let rt = runtime(backend);
        rt.block_on(async {
            while let Ok(i) = to_task.get().await {
                to_thread.put(i * 2).await.unwrap();
            }
            to_thread.close();
        });
        producer.join().unwrap();
        let got = consumer.join().unwrap();
        assert_eq!(got, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }
}

/// The load test: 8 producer threads, 8 consumer tasks, a million items. Every item
/// arrives exactly once, and each consumer sees each producer's items in the order they were
/// put.
#[test]
fn a_million_items_from_8_threads_to_8_tasks_none_lost_none_duplicated_fifo_per_producer() {
    const PRODUCERS: usize = 8;
    const CONSUMERS: usize = 8;
    const ITEMS: usize = 1_000_000;
    const EACH: usize = ITEMS / PRODUCERS;
    for backend in backends() {
        let queue = BridgeQueue::new(256);
        let start = Arc::new(Barrier::new(PRODUCERS + 1));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (queue, start) = (queue.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    for seq in 0..EACH {
                        queue.blocking_put((p, seq)).unwrap();
                    }
                })
            })
            .collect();
        // Closes the queue once every producer is done; the consumers then drain it.
        let closer = thread::spawn({
            let (queue, start) = (queue.clone(), start.clone());
            move || {
                start.wait();
                for p in producers {
                    p.join().unwrap();
                }
                assert!(queue.close());
            }
        });
        let rt = runtime(backend);
        let per_consumer: Vec<Vec<(usize, usize)>> = rt.block_on(async {
            let consumers: Vec<_> = (0..CONSUMERS)
                .map(|_| {
                    let queue = queue.clone();
                    spawn(async move {
                        let mut got = Vec::new();
                        loop {
                            match queue.get().await {
                                Ok(item) => got.push(item),
                                Err(GetError::Closed) => return got,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    })
                })
                .collect();
            let mut all = Vec::new();
            for c in consumers {
                all.push(c.await.unwrap());
            }
            all
        });
        closer.join().unwrap();
        let mut seen = vec![false; ITEMS];
        let mut total = 0;
        for got in &per_consumer {
            let mut last = [None; PRODUCERS];
            for &(p, seq) in got {
                assert!(
                    last[p] < Some(seq),
                    "producer {p}: {seq} after {:?}",
                    last[p]
                );
                last[p] = Some(seq);
                let slot = &mut seen[p * EACH + seq];
                assert!(!*slot, "({p}, {seq}) delivered twice");
                *slot = true;
                total += 1;
            }
        }
        assert_eq!(total, ITEMS);
        assert!(seen.iter().all(|&s| s), "an item was lost");
        assert!(queue.is_empty());
    }
}

#[test]
fn tasks_of_two_runtimes_on_two_threads() {
    const ITEMS: u64 = 10_000;
    for backend in backends() {
        let queue = BridgeQueue::new(16);
        let lt = LoopThread::start_with(move || Runtime::builder().backend(backend)).unwrap();
        let producer = lt.spawn({
            let queue = queue.clone();
            move || async move {
                for i in 0..ITEMS {
                    queue.put(i).await.unwrap();
                }
                queue.close();
            }
        });
        let got = runtime(backend).block_on(async {
            let mut got = Vec::new();
            while let Ok(i) = queue.get().await {
                got.push(i);
            }
            got
        });
        assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
        producer.wait().unwrap();
        lt.stop().unwrap();
    }
}

#[test]
fn close_wakes_every_waiter_and_still_delivers_what_was_put() {
    for backend in backends() {
        let queue = BridgeQueue::new(2);
        queue.try_put(1).unwrap();
        queue.try_put(2).unwrap();
        // A thread waits for room; a task too (below).
        let blocked_putter = thread::spawn({
            let queue = queue.clone();
            move || queue.blocking_put_timeout(3, LONG)
        });
        let rt = runtime(backend);
        rt.block_on(async {
            let putter = spawn({
                let queue = queue.clone();
                async move { queue.put(4).await }
            });
            yield_now().await; // the putter waits for room
            assert!(queue.close());
            assert!(!queue.close(), "closed once");
            match putter.await.unwrap() {
                Err(PutError::Closed(4)) => {}
                other => panic!("{other:?}"),
            }
            // Put before the close: still delivered, then `Closed`.
            assert_eq!(queue.get().await, Ok(1));
            assert_eq!(queue.blocking_get(), Ok(2));
            assert_eq!(queue.get().await, Err(GetError::Closed));
            assert_eq!(queue.try_get(), Err(GetError::Closed));
            assert!(matches!(queue.try_put(5), Err(PutError::Closed(5))));
        });
        // Woken by the close (or too late to wait at all): the item comes back either way.
        match blocked_putter.join().unwrap() {
            Err(PutError::Closed(3)) => {}
            other => panic!("{other:?}"),
        }

        // Getters waiting on an empty queue, a thread and a task, are woken with `Closed`.
        let queue = BridgeQueue::<u32>::new(2);
        let blocked_getter = thread::spawn({
            let queue = queue.clone();
            move || queue.blocking_get_timeout(LONG)
        });
        rt.block_on(async {
            let getter = spawn({
                let queue = queue.clone();
                async move { queue.get().await }
            });
            yield_now().await; // the getter waits
            queue.close();
            assert_eq!(getter.await.unwrap(), Err(GetError::Closed));
        });
        assert_eq!(blocked_getter.join().unwrap(), Err(GetError::Closed));
    }
}

#[test]
fn blocking_timeouts_give_up_and_give_the_item_back() {
    let queue = BridgeQueue::new(1);
    assert_eq!(
        queue.blocking_get_timeout(Duration::from_millis(1)),
        Err(GetError::TimedOut)
    );
    queue.blocking_put_timeout("first", Duration::ZERO).unwrap();
    match queue.blocking_put_timeout("second", Duration::from_millis(1)) {
        Err(PutError::TimedOut("second")) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        queue.try_put("third"),
        Err(PutError::Full("third"))
    ));
    assert_eq!(queue.try_get(), Ok("first"));
    assert_eq!(queue.try_get(), Err(GetError::Empty));
    assert_eq!(queue.len(), 0);
}

/// A thread blocked in `blocking_get` is woken by a task's put, and one blocked in
/// `blocking_put` by a task's get.
#[test]
fn tasks_wake_blocked_threads() {
    for backend in backends() {
        let queue = BridgeQueue::new(1);
        let gets = Arc::new(AtomicUsize::new(0));
        let getter = thread::spawn({
            let (queue, gets) = (queue.clone(), gets.clone());
            move || {
                let item = queue.blocking_get_timeout(LONG);
                gets.fetch_add(1, SeqCst);
                item
            }
        });
        runtime(backend).block_on(async {
            queue.put(7).await.unwrap();
        });
        assert_eq!(getter.join().unwrap(), Ok(7));
        queue.try_put(8).unwrap();
        let putter = thread::spawn({
            let queue = queue.clone();
            move || queue.blocking_put_timeout(9, LONG)
        });
        let got = runtime(backend).block_on(async {
            let a = queue.get().await.unwrap();
            let b = queue.get().await.unwrap();
            (a, b)
        });
        assert_eq!(got, (8, 9));
        putter.join().unwrap().unwrap();
        assert_eq!(gets.load(SeqCst), 1);
    }
}

/// A getter handed an item and cancelled before it runs still returns the item; the request
/// waits for its next await.
#[test]
fn a_cancelled_get_that_was_handed_an_item_returns_it() {
    for backend in backends() {
        let queue = BridgeQueue::new(4);
        runtime(backend).block_on(async {
            let getter = spawn({
                let queue = queue.clone();
                async move {
                    let item = queue.get().await;
                    // Only whether it was cancelled: a `Cancelled` in the output would end the
                    // task cancelled and lose the item with it.
                    let next_cancelled = yield_or_cancelled().await.is_err();
                    (item, next_cancelled)
                }
            });
            yield_now().await; // 1. the getter waits
            queue.try_put(1).unwrap(); // 2. the item is handed to it
            getter.cancel(); // 3. cancelled before it ran
            let (item, next_cancelled) = getter.await.unwrap();
            assert_eq!(item, Ok(1));
            assert!(next_cancelled, "the request waited for the next await");
        });
        assert!(queue.is_empty());
    }
}

/// A getter that was handed an item but is dropped before it runs hands the item back to the
/// front of the queue: it comes out first.
#[test]
fn a_dropped_get_hands_its_item_back_to_the_front() {
    for backend in backends() {
        let queue = BridgeQueue::new(4);
        runtime(backend).block_on(async {
            let getter = spawn({
                let queue = queue.clone();
                async move { queue.get().await }
            });
            yield_now().await; // 1. the getter waits
            queue.try_put(1).unwrap(); // 2. handed to the getter
            queue.try_put(2).unwrap(); //    queued
            getter.abort(); // 3. dropped without running
            yield_now().await;
            assert_eq!(queue.try_get(), Ok(1));
            assert_eq!(queue.try_get(), Ok(2));
        });
    }
}

/// The same after a close: the item handed to a getter that is dropped goes back to the front
/// of the closed queue and is still delivered, before gets fail with `Closed`.
#[test]
fn an_item_handed_to_a_getter_dropped_after_the_close_is_still_delivered() {
    for backend in backends() {
        let queue = BridgeQueue::new(4);
        runtime(backend).block_on(async {
            let getter = spawn({
                let queue = queue.clone();
                async move { queue.get().await }
            });
            yield_now().await; // the getter waits
            queue.try_put(1).unwrap(); // handed to the getter
            assert!(queue.close());
            getter.abort(); // dropped without running
            yield_now().await;
            assert_eq!(queue.try_get(), Ok(1));
            assert_eq!(queue.try_get(), Err(GetError::Closed));
        });
    }
}

/// Cancelled while waiting for room, a put gives its item back; once room was made for it,
/// the item is in the queue and the put succeeds despite the request.
#[test]
fn a_cancelled_put_gives_its_item_back_unless_it_was_already_put() {
    for backend in backends() {
        let queue = BridgeQueue::new(1);
        queue.try_put(0).unwrap();
        runtime(backend).block_on(async {
            let putter = spawn({
                let queue = queue.clone();
                async move {
                    match queue.put(1).await {
                        // Kept, and the cancellation handled (not let escape).
                        Err(PutError::Cancelled { item, cancelled }) => {
                            Some((item, cancelled.message().map(str::to_owned)))
                        }
                        _ => None,
                    }
                }
            });
            yield_now().await; // the putter waits for room
            putter.cancel_with("no room");
            assert_eq!(putter.await.unwrap(), Some((1, Some("no room".to_owned()))));

            let putter = spawn({
                let queue = queue.clone();
                async move { queue.put(2).await.is_ok() }
            });
            yield_now().await; // the putter waits for room
            assert_eq!(queue.try_get(), Ok(0)); // room: the putter's item moves in
            putter.cancel();
            assert!(putter.await.unwrap(), "already put when the cancel came");
            assert_eq!(queue.try_get(), Ok(2));
        });
    }
}

/// Waiters are served in arrival order, threads and tasks alike.
#[test]
fn waiting_tasks_are_served_first_come_first_served() {
    for backend in backends() {
        let queue = BridgeQueue::new(1);
        runtime(backend).block_on(async {
            let getters: Vec<_> = (0..3)
                .map(|_| {
                    let queue = queue.clone();
                    spawn(async move { queue.get().await.unwrap() })
                })
                .collect();
            yield_now().await; // all three wait, in spawn order
            for i in 0..3 {
                queue.put(i).await.unwrap();
            }
            let mut got = Vec::new();
            for g in getters {
                got.push(g.await.unwrap());
            }
            assert_eq!(got, [0, 1, 2]);
        });
    }
}

#[test]
fn unbounded_never_blocks_a_put() {
    let queue = BridgeQueue::unbounded();
    for i in 0..10_000 {
        queue.blocking_put_timeout(i, Duration::ZERO).unwrap();
    }
    assert_eq!(queue.len(), 10_000);
    assert!(!queue.is_full());
    assert_eq!(queue.maxsize(), 0);
}

#[test]
fn errors_convert_to_io_errors() {
    use std::io::{Error, ErrorKind};
    assert_eq!(Error::from(GetError::Closed).kind(), ErrorKind::BrokenPipe);
    assert_eq!(Error::from(GetError::TimedOut).kind(), ErrorKind::TimedOut);
    assert_eq!(Error::from(PutError::Full(1)).kind(), ErrorKind::WouldBlock);
    assert_eq!(PutError::TimedOut(5).into_inner(), 5);
}

/// Yields once; `Err` if the task had a cancel request pending.
async fn yield_or_cancelled() -> Result<(), ringloop_runtime::Cancelled> {
    ringloop_runtime::sleep(Duration::ZERO).await
}

/// The queue, and the futures of its async side, may be shared with and moved to other threads
/// when the items are `Send`.
#[test]
fn the_queue_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<BridgeQueue<String>>();
    send::<ringloop_runtime::sync::bridge::PutFuture<'static, String>>();
    send::<ringloop_runtime::sync::bridge::GetFuture<'static, String>>();
}
