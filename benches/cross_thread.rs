//! Hand-offs between plain threads and a loop, and between loops on two threads (shards):
//! ringloop's `BridgeQueue`, `LoopThread`, `Handle::spawn` and `sync::mpsc` side by side with what
//! a tokio user writes for the same job.
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
//! * `shard_spawn`: a task on one shard runs a trivial future on another and awaits its value,
//!   `SPAWNS` times one after the other. ringloop: two `Shards`, `Handle::spawn(..).await`
//!   (`RemoteTask`). tokio: two `current_thread` runtimes, each kept running by `block_on` on
//!   its own thread, `Handle::spawn(..).await` (`JoinHandle`).
//! * `shard_channel`: a task on one shard sends `ITEMS` integers through a bounded channel
//!   (capacity `CAPACITY`) to a task on the other. ringloop: `sync::mpsc`; tokio: `mpsc`.
//! * `shard_ping_pong`: a task on one shard sends an integer to a task on the other, which
//!   sends it back, over two channels of capacity 1, `SPAWNS` times: every message wakes a
//!   loop that is parked, so this is the wake's latency.
//!
//! The shard groups run ringloop on io_uring with wakes between the loops through their rings
//! (`ringloop_uring`, `IORING_OP_MSG_RING`, sent with the waking loop's next kernel entry),
//! on io_uring with eventfd wakes (`ringloop_uring_eventfd`, `Builder::msg_ring_wakes(false)`),
//! and on epoll (`ringloop_epoll`, eventfd wakes). Each iteration is started from the bench
//! thread by one more round trip to the first shard (a `RemoteTask` or a tokio `JoinHandle`
//! waited on), the same for both runtimes and small next to the work of the iteration.
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
use ringloop::sync::{mpsc, BridgeQueue};
use ringloop::{Backend, Handle, LoopThread, Placement, Runtime, Shards};

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

/// Two ringloop shards on `backend` (wakes between them through the rings or not), idle until
/// the bench hands them work.
struct RingloopPair {
    shards: Shards<()>,
}

impl RingloopPair {
    fn start(backend: Backend, msg_ring: bool) -> RingloopPair {
        let shards = Shards::builder()
            .count(2)
            .placement(Placement::Unpinned)
            .runtime(move |_| Runtime::builder().backend(backend).msg_ring_wakes(msg_ring))
            .start(|_| std::future::pending::<()>())
            .expect("two shards");
        RingloopPair { shards }
    }

    fn handle(&self, i: usize) -> Handle {
        self.shards.handle(i).clone()
    }

    fn stop(self) {
        self.shards.stop();
        for r in self.shards.join_all() {
            // The main tasks never end by themselves: a stop ends them.
            assert!(r.is_err_and(|e| e.is_stopped()), "a shard ended otherwise");
        }
    }
}

/// The ringloop variants of the shard groups: io_uring with and without `MSG_RING` wakes where
/// this kernel has io_uring, and epoll.
fn pair_variants() -> Vec<(&'static str, Backend, bool)> {
    let mut v = Vec::new();
    for (name, backend) in backends() {
        match backend {
            Backend::IoUring => {
                v.push((name, backend, true));
                v.push(("ringloop_uring_eventfd", backend, false));
            }
            _ => v.push((name, backend, true)),
        }
    }
    v
}

/// Two tokio `current_thread` runtimes, each kept running by `block_on` on its own thread.
struct TokioPair {
    handles: [tokio::runtime::Handle; 2],
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl TokioPair {
    fn start() -> TokioPair {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..2 {
            let rt = tokio_rt();
            handles.push(rt.handle().clone());
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop_tx);
            threads.push(thread::spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                })
            }));
        }
        TokioPair {
            handles: handles.try_into().expect("two runtimes"),
            stops,
            threads,
        }
    }

    /// Runs `fut` on the first runtime and blocks the bench thread until it is done.
    fn run_on_first<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handles[0].spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.blocking_recv().expect("the task ran")
    }

    fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            t.join().expect("tokio runtime thread");
        }
    }
}

fn shard_spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_spawn");
    configure(&mut g, SPAWNS);
    for (name, backend, msg_ring) in pair_variants() {
        let pair = RingloopPair::start(backend, msg_ring);
        let (first, second) = (pair.handle(0), pair.handle(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let second = second.clone();
                first
                    .spawn(move || async move {
                        for i in 0..SPAWNS {
                            let v = second.spawn(move || async move { black_box(i) }).await;
                            black_box(v.unwrap());
                        }
                    })
                    .wait()
                    .unwrap();
            })
        });
        pair.stop();
    }
    let pair = TokioPair::start();
    let second = pair.handles[1].clone();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let second = second.clone();
            pair.run_on_first(async move {
                for i in 0..SPAWNS {
                    let v = second.spawn(async move { black_box(i) }).await;
                    black_box(v.unwrap());
                }
            });
        })
    });
    pair.stop();
    g.finish();
}

fn shard_channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_channel");
    configure(&mut g, ITEMS);
    for (name, backend, msg_ring) in pair_variants() {
        let pair = RingloopPair::start(backend, msg_ring);
        let (first, second) = (pair.handle(0), pair.handle(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let (tx, mut rx) = mpsc::channel::<u64>(CAPACITY);
                let consumer = second.spawn(move || async move {
                    for _ in 0..ITEMS {
                        black_box(rx.recv().await.unwrap());
                    }
                });
                first
                    .spawn(move || async move {
                        for i in 0..ITEMS {
                            tx.send(i).await.unwrap();
                        }
                    })
                    .wait()
                    .unwrap();
                consumer.wait().unwrap();
            })
        });
        pair.stop();
    }
    let pair = TokioPair::start();
    let second = pair.handles[1].clone();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
            let consumer = second.spawn(async move {
                for _ in 0..ITEMS {
                    black_box(rx.recv().await.unwrap());
                }
            });
            pair.run_on_first(async move {
                for i in 0..ITEMS {
                    tx.send(i).await.unwrap();
                }
                consumer.await.unwrap();
            });
        })
    });
    pair.stop();
    g.finish();
}

fn shard_ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_ping_pong");
    configure(&mut g, SPAWNS);
    for (name, backend, msg_ring) in pair_variants() {
        let pair = RingloopPair::start(backend, msg_ring);
        let (first, second) = (pair.handle(0), pair.handle(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(1);
                let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(1);
                let echo = second.spawn(move || async move {
                    while let Ok(v) = ping_rx.recv().await {
                        pong_tx.send(v).await.unwrap();
                    }
                });
                first
                    .spawn(move || async move {
                        for i in 0..SPAWNS {
                            ping_tx.send(i).await.unwrap();
                            black_box(pong_rx.recv().await.unwrap());
                        }
                    })
                    .wait()
                    .unwrap();
                echo.wait().unwrap();
            })
        });
        pair.stop();
    }
    let pair = TokioPair::start();
    let second = pair.handles[1].clone();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u64>(1);
            let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u64>(1);
            let echo = second.spawn(async move {
                while let Some(v) = ping_rx.recv().await {
                    pong_tx.send(v).await.unwrap();
                }
            });
            pair.run_on_first(async move {
                for i in 0..SPAWNS {
                    ping_tx.send(i).await.unwrap();
                    black_box(pong_rx.recv().await.unwrap());
                }
                drop(ping_tx);
                echo.await.unwrap();
            });
        })
    });
    pair.stop();
    g.finish();
}

criterion_group!(
    benches,
    thread_to_task,
    task_to_thread,
    remote_spawn_wait,
    shard_spawn,
    shard_channel,
    shard_ping_pong
);
criterion_main!(benches);
