//! A loop thread started and stopped 1 000 times per backend leaves no thread and no file
//! descriptor behind: `/proc/self/task` and `/proc/self/fd` count the same before and after.
//!
//! Alone in its binary, as one test, so no other test's threads or descriptors come and go
//! meanwhile. Each round spawns a remote task that spawns a local child and waits, so every stop
//! has tasks to cancel and drain.

mod common;

use std::fs;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::backends;
use ringloop_runtime::{sleep, spawn, LoopThread, RemoteError, Runtime};

const ROUNDS: usize = 1000;

/// A bound on waiting for exited threads to leave `/proc/self/task`: only a leak reaches it.
const LONG: Duration = Duration::from_secs(30);

fn count(dir: &str) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// Counts threads until there are at most `expected`, bounded by `LONG`. A joined thread has
/// run to its end, but the kernel may list it for a moment longer while it is reaped.
fn settled_threads(expected: usize) -> usize {
    let deadline = Instant::now() + LONG;
    loop {
        let n = count("/proc/self/task");
        if n <= expected || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_thousand_loop_threads_leave_no_thread_and_no_descriptor_behind() {
    let threads_before = count("/proc/self/task");
    let fds_before = count("/proc/self/fd");
    // Handles kept after their loops are gone: each may hold its loop's eventfd (the target
    // of its wakes) but not its ring, which other rings wake through (`MSG_RING`).
    let mut kept = Vec::new();
    for backend in backends() {
        for round in 0..ROUNDS {
            let lt = LoopThread::start_with(move || Runtime::builder().backend(backend)).unwrap();
            if round % 10 == 0 {
                kept.push(lt.handle().clone());
            }
            let (started_tx, started_rx) = mpsc::channel();
            let task = lt.spawn(move || async move {
                // A child left behind: the stop must cancel it too.
                drop(spawn(async { sleep(Duration::from_secs(3600)).await }));
                started_tx.send(()).unwrap();
                sleep(Duration::from_secs(3600)).await
            });
            started_rx.recv().unwrap();
            if round % 2 == 0 {
                lt.stop().unwrap();
            } else {
                drop(lt); // dropping stops and joins too
            }
            match task.wait() {
                Err(RemoteError::Cancelled(_)) => {}
                other => panic!("round {round} on {backend}: {other:?}"),
            }
        }
    }
    assert_eq!(
        count("/proc/self/fd"),
        fds_before + kept.len(),
        "a handle of a dropped loop holds one descriptor, its eventfd"
    );
    drop(kept);
    let threads_after = settled_threads(threads_before);
    let fds_after = count("/proc/self/fd");
    assert_eq!(threads_after, threads_before, "threads leaked");
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
}
