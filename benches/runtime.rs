//! ringloop's runtime core side by side with tokio's `current_thread` runtime.
//!
//! Every group has a `ringloop` function and a `tokio` function doing the same work, so
//! criterion's report (and `target/criterion/<group>/report`) compares them directly. Run with
//!
//! ```text
//! cargo bench --bench runtime                 # everything, a few minutes
//! cargo bench --bench runtime -- spawn_await  # one group
//! cargo bench --bench runtime -- --test       # smoke: run each bench once
//! ```
//!
//! # What "tokio" means here
//!
//! tokio's runtime is built with `Builder::new_current_thread().enable_time()`, once per group and
//! reused across iterations, like ringloop's. A ringloop task may be `!Send`; tokio's
//! equivalent of that capability is a `LocalSet` with `spawn_local`, so the `tokio` functions run
//! inside `LocalSet::block_on` and spawn with `spawn_local`. That is the fairest like-for-like
//! comparison. Where spawning dominates (`spawn_await`, `yield_ping_pong`) a third function,
//! `tokio_send`, also measures plain `tokio::spawn` on the same runtime without a `LocalSet`
//! (tasks must be `Send` there): tokio's fastest single-thread path, as a reference.
//!
//! Completion is awaited the same way on both sides: either by awaiting the join handles, or
//! through [`Latch`], a std-only countdown, so neither runtime is helped by its own primitives
//! where the other has none.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::hint::black_box;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::task::LocalSet;

/// A tokio runtime comparable to ringloop's: one thread, a timer, no I/O driver (ringloop's
/// driver in this milestone only sleeps and wakes).
fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn ringloop_rt() -> ringloop::Runtime {
    ringloop::Runtime::new().expect("ringloop runtime")
}

/// A countdown the main future waits on: the last `count_down` wakes it. Runtime-neutral (std
/// only), so both sides pay the same for "tell me when all N are done".
#[derive(Clone)]
struct Latch(Rc<LatchInner>);

struct LatchInner {
    left: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

impl Latch {
    fn new(n: usize) -> Self {
        Latch(Rc::new(LatchInner {
            left: Cell::new(n),
            waker: RefCell::new(None),
        }))
    }

    fn count_down(&self) {
        let left = self.0.left.get() - 1;
        self.0.left.set(left);
        if left == 0 {
            if let Some(w) = self.0.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.0.left.get() == 0 {
                Poll::Ready(())
            } else {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// Spawn a trivial task and await its handle, one after the other, `SPAWN_BATCH` times per
/// iteration (inside one `block_on`). Each await suspends the main task once, so this is the
/// full round trip: allocate, schedule, poll, complete, wake the awaiter, read the output.
fn spawn_await(c: &mut Criterion) {
    const SPAWN_BATCH: u64 = 1000;
    let mut g = c.benchmark_group("spawn_await");
    g.throughput(Throughput::Elements(SPAWN_BATCH));

    let rt = ringloop_rt();
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..SPAWN_BATCH {
                    let v = ringloop::spawn(async move { black_box(i) }).await.unwrap();
                    black_box(v);
                }
            })
        })
    });

    let trt = tokio_rt();
    let local = LocalSet::new();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                for i in 0..SPAWN_BATCH {
                    let v = tokio::task::spawn_local(async move { black_box(i) })
                        .await
                        .unwrap();
                    black_box(v);
                }
            })
        })
    });
    g.bench_function("tokio_send", |b| {
        b.iter(|| {
            trt.block_on(async {
                for i in 0..SPAWN_BATCH {
                    let v = tokio::spawn(async move { black_box(i) }).await.unwrap();
                    black_box(v);
                }
            })
        })
    });
    g.finish();
}

/// 1,000,000 `call_soon` callbacks scheduled, then run. tokio has no loop callbacks: its
/// nearest equivalent is `spawn_local` of a trivial future per callback (join handles dropped),
/// which is what the `tokio` function measures. Each callback/task counts down a [`Latch`].
fn call_soon_1m(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let mut g = c.benchmark_group("call_soon_1m_vs_spawn_local");
    g.throughput(Throughput::Elements(N as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20);

    let rt = ringloop_rt();
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let latch = Latch::new(N);
                for _ in 0..N {
                    let l = latch.clone();
                    ringloop::call_soon(move || l.count_down());
                }
                latch.wait().await;
            })
        })
    });

    let trt = tokio_rt();
    let local = LocalSet::new();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let latch = Latch::new(N);
                for _ in 0..N {
                    let l = latch.clone();
                    tokio::task::spawn_local(async move { l.count_down() });
                }
                latch.wait().await;
            })
        })
    });
    g.finish();
}

/// Two tasks that each yield `ROUNDS` times. The ready queues are FIFO on both runtimes, so
/// the two alternate: one round trip is A yields → B runs → B yields → A runs.
fn yield_ping_pong(c: &mut Criterion) {
    const ROUNDS: u64 = 10_000;
    let mut g = c.benchmark_group("yield_ping_pong");
    g.throughput(Throughput::Elements(ROUNDS));

    let rt = ringloop_rt();
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let player = || async {
                    for _ in 0..ROUNDS {
                        ringloop::yield_now().await.unwrap();
                    }
                };
                let a = ringloop::spawn(player());
                let b = ringloop::spawn(player());
                a.await.unwrap();
                b.await.unwrap();
            })
        })
    });

    let trt = tokio_rt();
    let local = LocalSet::new();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let player = || async {
                    for _ in 0..ROUNDS {
                        tokio::task::yield_now().await;
                    }
                };
                let a = tokio::task::spawn_local(player());
                let b = tokio::task::spawn_local(player());
                a.await.unwrap();
                b.await.unwrap();
            })
        })
    });
    g.bench_function("tokio_send", |b| {
        b.iter(|| {
            trt.block_on(async {
                let player = || async {
                    for _ in 0..ROUNDS {
                        tokio::task::yield_now().await;
                    }
                };
                let a = tokio::spawn(player());
                let b = tokio::spawn(player());
                a.await.unwrap();
                b.await.unwrap();
            })
        })
    });
    g.finish();
}

/// 100,000 timers armed and fired: 100k tasks each `sleep(1 ms)`, then count down a [`Latch`].
///
/// Each task computes its deadline when it is first polled, so every timer really is armed in
/// the future and goes through the timer structure (a heap for ringloop, the wheel for tokio).
/// A single deadline fixed before spawning would be long past for most tasks by the time they
/// are polled (arming 100k takes more than 1 ms), and then ringloop's `Sleep` yields once
/// without touching the heap, which is not what we want to measure. The clock is real time, so
/// each iteration also contains up to ~1 ms of waiting for the last deadlines; both sides pay it.
/// Spawning is included on both sides (`spawn_await` isolates it); `ringloop_call_later` arms
/// the same 100k timers as `call_later` callbacks, without tasks, for reference (tokio has no
/// equivalent).
fn timers_100k(c: &mut Criterion) {
    const N: usize = 100_000;
    const DELAY: Duration = Duration::from_millis(1);
    let mut g = c.benchmark_group("timers_100k");
    g.throughput(Throughput::Elements(N as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20);

    let rt = ringloop_rt();
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let latch = Latch::new(N);
                for _ in 0..N {
                    let l = latch.clone();
                    ringloop::spawn(async move {
                        ringloop::sleep(DELAY).await.unwrap();
                        l.count_down();
                    });
                }
                latch.wait().await;
            })
        })
    });
    g.bench_function("ringloop_call_later", |b| {
        b.iter(|| {
            rt.block_on(async {
                let latch = Latch::new(N);
                for _ in 0..N {
                    let l = latch.clone();
                    ringloop::call_later(DELAY, move || l.count_down());
                }
                latch.wait().await;
            })
        })
    });

    let trt = tokio_rt();
    let local = LocalSet::new();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let latch = Latch::new(N);
                for _ in 0..N {
                    let l = latch.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(DELAY).await;
                        l.count_down();
                    });
                }
                latch.wait().await;
            })
        })
    });
    g.finish();
}

/// A settable future handed back and forth between two tasks: A sets `ping[i]` and awaits
/// `pong[i]`; B awaits `ping[i]` and sets `pong[i]`. Every await suspends, so one round trip is
/// two set → wake → await-resolves hand-offs. ringloop: `Promise<u64>`; tokio: `oneshot`. The
/// promises / channels of an iteration are created inside it, on both sides.
fn promise_set_await(c: &mut Criterion) {
    const ROUNDS: usize = 10_000;
    let mut g = c.benchmark_group("promise_set_await_vs_oneshot");
    g.throughput(Throughput::Elements(ROUNDS as u64));

    let rt = ringloop_rt();
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ping: Rc<Vec<ringloop::Promise<u64>>> =
                    Rc::new((0..ROUNDS).map(|_| ringloop::Promise::new()).collect());
                let pong: Rc<Vec<ringloop::Promise<u64>>> =
                    Rc::new((0..ROUNDS).map(|_| ringloop::Promise::new()).collect());
                let (ping_b, pong_b) = (ping.clone(), pong.clone());
                let echo = ringloop::spawn(async move {
                    for (ping, pong) in ping_b.iter().zip(pong_b.iter()) {
                        let v = ping.wait().await.unwrap();
                        pong.set_result(v).unwrap();
                    }
                });
                for (i, (ping, pong)) in ping.iter().zip(pong.iter()).enumerate() {
                    ping.set_result(i as u64).unwrap();
                    black_box(pong.wait().await.unwrap());
                }
                echo.await.unwrap();
            })
        })
    });

    let trt = tokio_rt();
    let local = LocalSet::new();
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let (ping_tx, ping_rx): (Vec<_>, Vec<_>) = (0..ROUNDS)
                    .map(|_| tokio::sync::oneshot::channel::<u64>())
                    .unzip();
                let (pong_tx, pong_rx): (Vec<_>, Vec<_>) = (0..ROUNDS)
                    .map(|_| tokio::sync::oneshot::channel::<u64>())
                    .unzip();
                let echo = tokio::task::spawn_local(async move {
                    for (ping, pong) in ping_rx.into_iter().zip(pong_tx) {
                        let v = ping.await.unwrap();
                        pong.send(v).unwrap();
                    }
                });
                for (i, (ping, pong)) in ping_tx.into_iter().zip(pong_rx).enumerate() {
                    ping.send(i as u64).unwrap();
                    black_box(pong.await.unwrap());
                }
                echo.await.unwrap();
            })
        })
    });
    g.finish();
}

/// Semaphore acquire/release.
///
/// - `uncontended`: one task acquires and releases a 1-permit semaphore `OPS` times; the
///   permit is always free, so this is the fast path.
/// - `contended`: 8 tasks share 2 permits; each acquires, holds the permit across one yield
///   (so the others queue up behind it), and releases, `OPS / 8` times. Most acquires wait in
///   the FIFO queue and are handed a permit by a release. The yields are included on both sides
///   (`yield_ping_pong` measures them alone).
fn semaphore_acquire_release(c: &mut Criterion) {
    const OPS: usize = 10_000;
    const TASKS: usize = 8;
    const PERMITS: usize = 2;

    let rt = ringloop_rt();
    let trt = tokio_rt();
    let local = LocalSet::new();

    let mut g = c.benchmark_group("semaphore_acquire_release_uncontended");
    g.throughput(Throughput::Elements(OPS as u64));
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sem = ringloop::sync::Semaphore::new(1);
                for _ in 0..OPS {
                    let permit = sem.acquire().await.unwrap();
                    black_box(&permit);
                }
            })
        })
    });
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let sem = tokio::sync::Semaphore::new(1);
                for _ in 0..OPS {
                    let permit = sem.acquire().await.unwrap();
                    black_box(&permit);
                }
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("semaphore_acquire_release_contended_8x2");
    g.throughput(Throughput::Elements(OPS as u64));
    g.bench_function("ringloop", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sem = Rc::new(ringloop::sync::Semaphore::new(PERMITS));
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let sem = sem.clone();
                        ringloop::spawn(async move {
                            for _ in 0..OPS / TASKS {
                                let permit = sem.acquire().await.unwrap();
                                ringloop::yield_now().await.unwrap();
                                drop(permit);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.bench_function("tokio", |b| {
        b.iter(|| {
            local.block_on(&trt, async {
                let sem = Rc::new(tokio::sync::Semaphore::new(PERMITS));
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let sem = sem.clone();
                        tokio::task::spawn_local(async move {
                            for _ in 0..OPS / TASKS {
                                let permit = sem.acquire().await.unwrap();
                                tokio::task::yield_now().await;
                                drop(permit);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Modest times so the whole suite runs in a few minutes on 2 cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = spawn_await, call_soon_1m, yield_ping_pong, timers_100k, promise_set_await,
        semaphore_acquire_release
}
criterion_main!(benches);
