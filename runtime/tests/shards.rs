//! Shards: start, serve, join, stop (from a thread, a signal, a failing shard), placement,
//! crossing between shards, stats and task trees. Both backends.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ringloop_runtime::{
    current_backend, sleep, spawn, Backend, Placement, RemoteError, Runtime, Shards,
};

const HOUR: Duration = Duration::from_secs(3600);

/// The tests of this file run one at a time: some count the process's threads.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts main tasks that have started, so a test stops the set only once they run (a task
/// cancelled before it starts never runs, as in asyncio).
#[derive(Clone, Default)]
struct Started(Arc<AtomicUsize>);

impl Started {
    fn mark(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wait_for(&self, n: usize) {
        for _ in 0..10_000 {
            if self.0.load(Ordering::SeqCst) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the main tasks did not start");
    }
}

fn builder(backend: Backend, count: usize) -> ringloop_runtime::ShardsBuilder {
    Shards::builder()
        .count(count)
        .placement(Placement::Unpinned)
        .runtime(move |_| Runtime::builder().backend(backend))
}

#[test]
fn shards_start_run_their_main_task_and_join_by_index() {
    let _serial = serial();
    for backend in common::backends() {
        let shards = builder(backend, 3)
            .start(move |shard| async move {
                // !Send state on the shard.
                let seen = Rc::new(Cell::new(0));
                let s = seen.clone();
                spawn(async move { s.set(s.get() + 1) }).await.unwrap();
                assert_eq!(current_backend(), backend);
                (shard.index(), shard.count(), seen.get())
            })
            .unwrap();
        assert_eq!(shards.len(), 3);
        assert_eq!(
            shards.join().unwrap(),
            vec![(0, 3, 1), (1, 3, 1), (2, 3, 1)],
            "{backend:?}"
        );
    }
}

#[test]
fn thread_names_carry_the_prefix_and_index() {
    let _serial = serial();
    let shards = Shards::builder()
        .count(2)
        .placement(Placement::Unpinned)
        .thread_name("edge")
        .start(|_| async { std::thread::current().name().map(str::to_owned) })
        .unwrap();
    assert_eq!(
        shards.join().unwrap(),
        vec![Some("edge-0".to_owned()), Some("edge-1".to_owned())]
    );
}

#[test]
fn stop_from_another_thread_cancels_every_main_task_which_may_answer() {
    let _serial = serial();
    for backend in common::backends() {
        let started = Started::default();
        let st = started.clone();
        let shards = builder(backend, 2)
            .start(move |shard| {
                let st = st.clone();
                async move {
                    st.mark();
                    // A server's main task: waits until cancelled, then finishes gracefully.
                    match sleep(HOUR).await {
                        Err(c) => Ok(format!("shard {} saw {c}", shard.index())),
                        Ok(()) => Err(()),
                    }
                }
            })
            .unwrap();
        started.wait_for(2);
        let stopper = shards.stopper();
        assert!(!stopper.is_stopping());
        std::thread::spawn(move || stopper.stop()).join().unwrap();
        let results = shards.join().unwrap();
        for (i, r) in results.iter().enumerate() {
            let msg = r.as_ref().unwrap();
            assert!(msg.starts_with(&format!("shard {i} saw")), "{msg}");
        }
    }
}

#[test]
fn a_stop_right_after_start_reaches_every_main_task_at_an_await() {
    let _serial = serial();
    for backend in common::backends() {
        for _ in 0..20 {
            let shards = builder(backend, 2)
                .start(|_| async { sleep(HOUR).await.is_err() })
                .unwrap();
            shards.stop();
            assert_eq!(shards.join().unwrap(), vec![true, true], "{backend:?}");
        }
    }
}

#[test]
fn a_main_task_that_lets_its_cancel_escape_ends_stopped() {
    let _serial = serial();
    for backend in common::backends() {
        let shards = builder(backend, 2)
            .start(|_| async {
                sleep(HOUR).await?;
                Ok::<_, ringloop_runtime::Cancelled>(())
            })
            .unwrap();
        shards.stop();
        for (i, r) in shards.join_all().into_iter().enumerate() {
            let e = r.unwrap_err();
            assert!(e.is_stopped(), "{e}");
            assert_eq!(e.index(), i);
        }
    }
}

#[test]
fn a_panicking_shard_is_reported_with_its_index_and_the_others_stop_cleanly() {
    let _serial = serial();
    for backend in common::backends() {
        let cleaned = Arc::new(AtomicUsize::new(0));
        let c = cleaned.clone();
        let shards = builder(backend, 3)
            .runtime(move |_| {
                // Keep the panic's report quiet.
                Runtime::builder()
                    .backend(backend)
                    .exception_handler(|_| {})
            })
            .start(move |shard| {
                let cleaned = c.clone();
                async move {
                    if shard.index() == 1 {
                        sleep(Duration::from_millis(5)).await.unwrap();
                        panic!("shard one fails");
                    }
                    // The others are told to stop, and clean up.
                    let r = sleep(HOUR).await;
                    assert!(r.is_err());
                    cleaned.fetch_add(1, Ordering::SeqCst);
                }
            })
            .unwrap();
        let results = shards.join_all();
        let e = results[1].as_ref().unwrap_err();
        assert!(e.is_panic(), "{e}");
        assert_eq!(e.index(), 1);
        assert_eq!(e.panic_message(), Some("shard one fails"));
        assert!(e.to_string().contains("shard 1 panicked"), "{e}");
        assert!(results[0].is_ok() && results[2].is_ok(), "{backend:?}");
        assert_eq!(cleaned.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn tasks_left_on_a_stopped_shard_are_cancelled_and_drained() {
    let _serial = serial();
    for backend in common::backends() {
        let drained = Arc::new(AtomicUsize::new(0));
        let d = drained.clone();
        let started = Started::default();
        let st = started.clone();
        let shards = builder(backend, 2)
            .start(move |_| {
                let drained = d.clone();
                let st = st.clone();
                async move {
                    for _ in 0..10 {
                        let drained = drained.clone();
                        // Detached tasks, never awaited by the main task.
                        drop(spawn(async move {
                            let r = sleep(HOUR).await;
                            assert!(r.is_err(), "cancelled, not finished");
                            drained.fetch_add(1, Ordering::SeqCst);
                        }));
                    }
                    st.mark();
                    let _ = sleep(HOUR).await;
                }
            })
            .unwrap();
        started.wait_for(2);
        shards.stop();
        shards.join().unwrap();
        assert_eq!(drained.load(Ordering::SeqCst), 20, "{backend:?}");
    }
}

#[test]
fn spawning_on_shards_from_many_threads_at_once() {
    let _serial = serial();
    for backend in common::backends() {
        let shards = builder(backend, 2)
            .start(|_| async {
                let _ = sleep(HOUR).await;
            })
            .unwrap();
        let handles = shards.handles().to_vec();
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let handles = handles.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let tasks: Vec<_> = (0..100u64)
                        .map(|i| {
                            let h = &handles[((t + i) % 2) as usize];
                            h.spawn(move || async move {
                                let local = Rc::new(t * 1000 + i);
                                *local
                            })
                        })
                        .collect();
                    tasks
                        .into_iter()
                        .enumerate()
                        .map(|(i, task)| assert_eq!(task.wait().unwrap(), t * 1000 + i as u64))
                        .count()
                })
            })
            .collect();
        let done: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(done, 800);
        shards.stop();
        shards.join().unwrap();
    }
}

#[test]
fn shards_spawn_on_each_other_and_await_the_result() {
    let _serial = serial();
    for backend in common::backends() {
        // A shard that ends drops its runtime, and the tasks others spawned on it with it:
        // each main task stays until both have their answer.
        let answered = Arc::new(AtomicUsize::new(0));
        let shards = builder(backend, 2)
            .start(move |shard| {
                let answered = answered.clone();
                async move {
                    let other = shard.handle((shard.index() + 1) % shard.count()).clone();
                    let me = shard.index();
                    // Await, from this shard's task, a task running on the other shard.
                    let r = other
                        .spawn(move || async move {
                            (me, std::thread::current().name().map(str::to_owned))
                        })
                        .await
                        .unwrap();
                    answered.fetch_add(1, Ordering::SeqCst);
                    while answered.load(Ordering::SeqCst) < 2 {
                        sleep(Duration::from_millis(1)).await.unwrap();
                    }
                    r
                }
            })
            .unwrap();
        let r = shards.join().unwrap();
        assert_eq!(r[0], (0, Some("ringloop-shard-1".to_owned())));
        assert_eq!(r[1], (1, Some("ringloop-shard-0".to_owned())));
    }
}

#[test]
fn a_remote_wait_that_times_out_and_a_cancel_from_another_thread() {
    let _serial = serial();
    let shards = builder(Backend::Auto, 1)
        .start(|_| async {
            let _ = sleep(HOUR).await;
        })
        .unwrap();
    let mut task = shards.handle(0).spawn(|| async {
        match sleep(HOUR).await {
            Err(_) => "cancelled at its await",
            Ok(()) => "slept",
        }
    });
    assert!(matches!(
        task.wait_timeout(Duration::from_millis(5)),
        Err(RemoteError::TimedOut)
    ));
    let canceller = {
        let task = &task;
        std::thread::scope(|s| s.spawn(|| task.cancel()).join().unwrap())
    };
    assert!(canceller);
    // The task caught its cancel and answered.
    assert_eq!(task.wait().unwrap(), "cancelled at its await");
    shards.stop();
    shards.join().unwrap();
}

#[test]
fn placement_pins_each_shard_to_its_cpu() {
    let _serial = serial();
    let shards = Shards::builder()
        .count(2)
        .placement(Placement::Cpus(vec![0]))
        .start(|shard| async move { (shard.cpu(), allowed_cpus()) })
        .unwrap();
    for (cpu, allowed) in shards.join().unwrap() {
        assert_eq!(cpu, Some(0));
        assert_eq!(allowed, vec![0]);
    }
    // Spread: one per CPU this process may use, each pinned to its own.
    let cpus = allowed_cpus();
    let shards = Shards::builder()
        .start(|shard| async move { (shard.cpu(), allowed_cpus()) })
        .unwrap();
    let placed = shards.join().unwrap();
    assert_eq!(placed.len(), cpus.len());
    // `shard_cpus` says where they go before they start.
    let told = Placement::Spread.shard_cpus(cpus.len()).unwrap();
    assert_eq!(told, Some(placed.iter().map(|(c, _)| c.unwrap()).collect()));
    for ((cpu, allowed), expected) in placed.into_iter().zip(&cpus) {
        assert_eq!(cpu, Some(*expected));
        assert_eq!(allowed, vec![*expected]);
    }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is live and of the size passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

#[test]
fn start_errors_name_the_shard_and_leave_nothing_running() {
    let _serial = serial();
    let e = Shards::builder()
        .count(2)
        .thread_name("start-err")
        .placement(Placement::Cpus(vec![0, 100_000]))
        .start(|_| async {})
        .unwrap_err();
    assert!(e.to_string().contains("shard 1"), "{e}");
    let e = Shards::builder()
        .count(3)
        .thread_name("start-err")
        .placement(Placement::Unpinned)
        .runtime(|i| {
            if i == 2 {
                panic!("no builder for shard 2");
            }
            Runtime::builder()
        })
        .start(|_| async {})
        .unwrap_err();
    assert!(
        e.to_string().contains("shard 2 panicked while starting"),
        "{e}"
    );
    let e = Shards::builder().count(0).start(|_| async {}).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        no_threads_named("start-err"),
        "every shard thread was joined"
    );
}

/// Whether no thread named `prefix...` is left. A joined thread can still be listed in
/// `/proc/self/task` for a moment (the kernel wakes the joiner before it reaps the thread), so
/// this looks again for a while before it says no.
fn no_threads_named(prefix: &str) -> bool {
    for _ in 0..2000 {
        if threads_named(prefix) == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn stats_and_task_trees_per_shard_and_in_total() {
    let _serial = serial();
    for backend in common::backends() {
        let shards = builder(backend, 2)
            .start(|shard| async move {
                for _ in 0..=shard.index() {
                    drop(spawn(async {
                        let _ = sleep(HOUR).await;
                    }));
                }
                let _ = sleep(HOUR).await;
            })
            .unwrap();
        // Let the mains spawn.
        let mut stats = shards.stats().unwrap();
        for _ in 0..1000 {
            if stats.total.tasks_alive >= 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            stats = shards.stats().unwrap();
        }
        // Main + 1 on shard 0, main + 2 on shard 1 (the stats ask itself may be alive too).
        assert!(stats.per_shard[0].tasks_alive >= 2);
        assert!(stats.per_shard[1].tasks_alive >= 3);
        assert_eq!(
            stats.total.tasks_spawned,
            stats.per_shard[0].tasks_spawned + stats.per_shard[1].tasks_spawned
        );
        let trees = shards.task_trees().unwrap();
        assert_eq!(trees.len(), 2);
        assert!(trees[1].len() > trees[0].len(), "{backend:?}");
        shards.stop();
        shards.join().unwrap();
    }
}

#[test]
fn a_signal_stops_the_set() {
    let _serial = serial();
    let started = Started::default();
    let st = started.clone();
    let shards = builder(Backend::Auto, 2)
        .start(move |_| {
            let st = st.clone();
            async move {
                st.mark();
                sleep(HOUR).await.is_err()
            }
        })
        .unwrap();
    shards.stop_on_signals().unwrap();
    started.wait_for(2);
    // SAFETY: raise has no memory-safety preconditions; ringloop's handler is installed.
    unsafe { libc::raise(libc::SIGTERM) };
    assert_eq!(shards.join().unwrap(), vec![true, true]);
}

#[test]
fn dropping_the_set_stops_and_joins_it() {
    let _serial = serial();
    let shards = builder(Backend::Auto, 2)
        .thread_name("dropped")
        .start(|_| async {
            let _ = sleep(HOUR).await;
        })
        .unwrap();
    assert_eq!(threads_named("dropped"), 2);
    drop(shards);
    assert!(no_threads_named("dropped"), "every shard thread was joined");
}
