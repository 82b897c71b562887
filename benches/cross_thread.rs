//! Hand-offs between plain threads and a loop: ringloop's `BridgeQueue` and `LoopThread` side by
//! side with what a tokio user writes for the same job.
//!
//! ```text
//! cargo bench --bench cross_thread                  # everything, about a minute
//! cargo bench --bench cross_thread -- thread_to_task
//! cargo bench --bench cross_thread -- --test        # smoke: run each bench once
//! ```
//!
//! # What is measured
//!
//! * `thread_to_task`: a plain thread puts `ITEMS` integers into a bounded queue (capacity
//!   `CAPACITY`) with a blocking call; a task on a single-threaded runtime on the bench thread
//!   awaits them one by one. ringloop: `BridgeQueue::blocking_put` / `get().await`. tokio:
//!   `mpsc::Sender::blocking_send` / `Receiver::recv().await`.
//! * `task_to_thread`: the other way round. ringloop: `put().await` / `blocking_get`. tokio:
//!   `send().await` / `blocking_recv`.
//! * `remote_spawn_wait`: a plain thread (the bench thread) runs a trivial future on a loop in a
//!   side thread and blocks until its value is back, `SPAWNS` times one after the other: the
//!   round trip of asyncio's `run_coroutine_threadsafe(...).result()`. ringloop:
//!   `LoopThread::spawn(..).wait()`. tokio: a `current_thread` runtime driven by `block_on` on
//!   its own thread, `Handle::spawn` of a future that sends its value on a `oneshot`, and
//!   `blocking_recv` (tokio's futures must be `Send` here; ringloop's closure builds a
//!   possibly `!Send` one on the loop).
//!
//! One iteration moves all `ITEMS` items (or makes all `SPAWNS` round trips), and the
//! throughput is set per item, so criterion also reports items per second. The producer or
//! consumer thread of the queue groups is a scoped thread started in each iteration (the same
//! for both runtimes, and small next to `ITEMS` hand-offs); each runtime is built once per group.
//!
//! ringloop runs on io_uring and on epoll (`ringloop_uring`, `ringloop_epoll`): a task is woken
//! from another thread through the loop's eventfd on both, but the loop parks in
//! `io_uring_enter` or in `epoll_wait`. tokio's runtime is built with `enable_all()`, so it too
//! parks in its I/O driver (`epoll_wait`) and is woken through an eventfd, as a real
//! application's would be.

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ringloop::sync::BridgeQueue;
use ringloop::{Backend, LoopThread, Runtime};

/// Items moved per iteration of the queue groups.
const ITEMS: u64 = 10_000;
/// The bound of the queue (ringloop) and the channel (tokio).
const CAPACITY: usize = 128;
/// Round trips per iteration of `remote_spawn_wait`.
const SPAWNS: u64 = 1_000;

fn ringloop_rt(backend: Backend) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .build()
        .expect("ringloop runtime")
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The ringloop backends to bench: io_uring where this kernel offers it, and epoll.
fn backends() -> Vec<(&'static str, Backend)> {
    let mut v = Vec::new();
    if Runtime::builder().backend(Backend::IoUring).build().is_ok() {
        v.push(("ringloop_uring", Backend::IoUring));
    } else {
        eprintln!("note: io_uring unavailable here; benching ringloop on epoll only");
    }
    v.push(("ringloop_epoll", Backend::Epoll));
    v
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, per_iter: u64) {
    g.throughput(Throughput::Elements(per_iter));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));
}

fn thread_to_task(c: &mut Criterion) {
    let mut g = c.benchmark_group("thread_to_task");
    configure(&mut g, ITEMS);
    for (name, backend) in backends() {
        let rt = ringloop_rt(backend);
        g.bench_function(name, |b| {
            b.iter(|| {
                let queue = BridgeQueue::new(CAPACITY);
                thread::scope(|s| {
                    s.spawn(|| {
                        for i in 0..ITEMS {
                            queue.blocking_put(i).unwrap();
                        }
                    });
                    rt.block_on(async {
                        for _ in 0..ITEMS {
                            black_box(queue.get().await.unwrap());
                        }
                    });
                });
            })
        });
    }
    let trt = tokio_rt();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
            thread::scope(|s| {
                s.spawn(move || {
                    for i in 0..ITEMS {
                        tx.blocking_send(i).unwrap();
                    }
                });
                trt.block_on(async {
                    for _ in 0..ITEMS {
                        black_box(rx.recv().await.unwrap());
                    }
                });
            });
        })
    });
    g.finish();
}

fn task_to_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("task_to_thread");
    configure(&mut g, ITEMS);
    for (name, backend) in backends() {
        let rt = ringloop_rt(backend);
        g.bench_function(name, |b| {
            b.iter(|| {
                let queue = BridgeQueue::new(CAPACITY);
                thread::scope(|s| {
                    s.spawn(|| {
                        for _ in 0..ITEMS {
                            black_box(queue.blocking_get().unwrap());
                        }
                    });
                    rt.block_on(async {
                        for i in 0..ITEMS {
                            queue.put(i).await.unwrap();
                        }
                    });
                });
            })
        });
    }
    let trt = tokio_rt();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
            thread::scope(|s| {
                s.spawn(move || {
                    for _ in 0..ITEMS {
                        black_box(rx.blocking_recv().unwrap());
                    }
                });
                trt.block_on(async {
                    for i in 0..ITEMS {
                        tx.send(i).await.unwrap();
                    }
                });
            });
        })
    });
    g.finish();
}

fn remote_spawn_wait(c: &mut Criterion) {
    let mut g = c.benchmark_group("remote_spawn_wait");
    configure(&mut g, SPAWNS);
    for (name, backend) in backends() {
        let lt = LoopThread::start_with(move || Runtime::builder().backend(backend))
            .expect("loop thread");
        g.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..SPAWNS {
                    let v = lt.spawn(move || async move { black_box(i) }).wait();
                    black_box(v.unwrap());
                }
            })
        });
        lt.stop().expect("stop the loop thread");
    }
    // tokio's side-thread loop: a current_thread runtime kept running by `block_on` on its own
    // thread until told to stop.
    let trt = tokio_rt();
    let handle = trt.handle().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let side = thread::spawn(move || {
        trt.block_on(async {
            let _ = stop_rx.await;
        })
    });
    g.bench_function("tokio", |b| {
        b.iter(|| {
            for i in 0..SPAWNS {
                let (tx, rx) = tokio::sync::oneshot::channel();
                handle.spawn(async move {
                    let _ = tx.send(black_box(i));
                });
                black_box(rx.blocking_recv().unwrap());
            }
        })
    });
    let _ = stop_tx.send(());
    side.join().expect("tokio side thread");
    g.finish();
}

criterion_group!(benches, thread_to_task, task_to_thread, remote_spawn_wait);
criterion_main!(benches);
