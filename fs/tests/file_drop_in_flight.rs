//! Drop-in-flight: a file op's future is dropped (or its task aborted) while the kernel or a
//! pool thread still works on it, many rounds, on both backends.
//!
//! What must hold (ARCHITECTURE.md, "Ops and their memory"):
//!
//! * the op's buffer outlives the future: on io_uring it moves into the op table as an orphan
//!   and is freed when the op's own completion arrives, never before (checked at once after
//!   each drop, before the loop can reap anything); on the pool the job keeps it until its
//!   call returns; either way it is freed exactly once ([`CountedBuf`] counts);
//! * nothing writes into memory after it was freed: canary buffers allocated right after each
//!   drop (where the allocator likely reuses the freed memory) must keep their bytes, and a
//!   dropped write puts either all of its block or none of it in the file;
//! * afterwards no op is in flight, no task alive and no descriptor open (`common::run`).
//!
//! Under AddressSanitizer (`.ci/run`) a use after free in our own code shows too. Reads are
//! not tried without blocking first here (see [`reads_in_flight`]), so that they are in flight.

mod common;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::{pattern, CountedBuf, TempDir};
use ringloop_fs::{File, OpenOptions};
use ringloop_runtime::{current_backend, current_stats, sleep, spawn, Backend};

const ROUNDS: usize = 200;
const READ: usize = 256 * 1024;

/// Polls `fut` exactly once, from the current task.
async fn poll_once<F: Future + ?Sized>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Runs the loop until `cond` holds (a few seconds at most); returns whether it holds.
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..5000 {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(1)).await.unwrap();
    }
    cond()
}

/// Turns off the non-blocking first try of reads (`RINGLOOP_FS_NOWAIT=0`, read once per
/// process): a read of cached pages would otherwise complete within its first poll, and never
/// be in flight to drop. Every test calls it first, so no test thread reads the environment
/// while it is written.
fn reads_in_flight() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("RINGLOOP_FS_NOWAIT", "0"));
}

macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn uring() {
                super::reads_in_flight();
                if super::common::runs_on(ringloop_runtime::Backend::IoUring) {
                    super::common::run(ringloop_runtime::Backend::IoUring, super::$body)
                }
            }
            #[test]
            fn epoll() {
                super::reads_in_flight();
                super::common::run(ringloop_runtime::Backend::Epoll, super::$body)
            }
        }
    };
}

async fn file_with(dir: &TempDir, data: &[u8]) -> File {
    let path = dir.join("f");
    std::fs::write(&path, data).unwrap();
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .await
        .unwrap()
}

/// Reads of 256 KiB are started and dropped, one a round; each buffer lives until its op is
/// done, and memory allocated after the drop is never written by the late read.
async fn dropped_reads() {
    let dir = TempDir::new("drop-reads");
    let data = pattern(1, 4 << 20);
    let file = file_with(&dir, &data).await;
    let drops = Arc::new(AtomicUsize::new(0));
    let mut canaries = Vec::new();
    let mut completed = 0;
    for round in 0..ROUNDS {
        let pos = ((round * 4096) % (3 << 20)) as u64;
        let mut fut = Box::pin(file.read_at(CountedBuf::empty(READ, &drops), pos));
        if let Poll::Ready((r, buf)) = poll_once(&mut fut).await {
            r.unwrap();
            assert_eq!(buf.bytes(), &data[pos as usize..][..READ]);
            completed += 1;
        }
        let before = drops.load(Ordering::SeqCst);
        drop(fut);
        if current_backend() == Backend::IoUring {
            // Nothing was reaped since the submission: the orphan still holds the buffer.
            assert_eq!(drops.load(Ordering::SeqCst), before, "round {round}");
        }
        // Likely the freed buffer's memory, if it had been freed.
        canaries.push(vec![0xa5u8; READ]);
    }
    assert!(
        until(|| drops.load(Ordering::SeqCst) == ROUNDS).await,
        "buffers dropped: {} of {ROUNDS}",
        drops.load(Ordering::SeqCst)
    );
    assert!(until(|| current_stats().ops_in_flight == 0).await);
    for (i, c) in canaries.iter().enumerate() {
        assert!(c.iter().all(|&b| b == 0xa5), "canary {i} was written");
    }
    eprintln!("{completed} of {ROUNDS} reads completed within their first poll");
}
on_both_backends!(
    dropped_reads_keep_their_buffers_until_the_completion,
    dropped_reads
);

/// Writes of one 4 KiB block each are started and dropped; afterwards every block holds either
/// its old bytes or all of its new ones, and each buffer was freed once.
async fn dropped_writes() {
    const BLOCK: usize = 4096;
    let dir = TempDir::new("drop-writes");
    let old = vec![0u8; ROUNDS * BLOCK];
    let file = file_with(&dir, &old).await;
    let drops = Arc::new(AtomicUsize::new(0));
    for round in 0..ROUNDS {
        let data = vec![(round % 255) as u8 + 1; BLOCK];
        let mut fut =
            Box::pin(file.write_at(CountedBuf::filled(data, &drops), (round * BLOCK) as u64));
        let _ = poll_once(&mut fut).await;
        let before = drops.load(Ordering::SeqCst);
        drop(fut);
        if current_backend() == Backend::IoUring {
            assert_eq!(drops.load(Ordering::SeqCst), before, "round {round}");
        }
        // Reuse the memory the buffer would have had, with other bytes.
        drop(vec![0xeeu8; BLOCK]);
    }
    assert!(until(|| drops.load(Ordering::SeqCst) == ROUNDS).await);
    assert!(until(|| current_stats().ops_in_flight == 0).await);
    let (r, content) = file
        .read_exact_at(Vec::with_capacity(ROUNDS * BLOCK), 0)
        .await;
    r.unwrap();
    let mut written = 0;
    for (round, block) in content.chunks(BLOCK).enumerate() {
        let new = (round % 255) as u8 + 1;
        if block.iter().all(|&b| b == new) {
            written += 1;
        } else {
            assert!(
                block.iter().all(|&b| b == 0),
                "block {round} is torn or foreign"
            );
        }
    }
    eprintln!("{written} of {ROUNDS} dropped writes happened");
}
on_both_backends!(
    dropped_writes_keep_their_buffers_until_the_completion,
    dropped_writes
);

/// Tasks aborted while their reads are in flight, and the `File` dropped with them: the reads
/// keep the descriptor open until they are done, and then it is closed (`common::run` checks
/// that no descriptor is left).
async fn aborted_tasks_and_a_dropped_file() {
    let dir = TempDir::new("abort");
    let file = Rc::new(file_with(&dir, &pattern(2, 1 << 20)).await);
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..8 {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let file = file.clone();
                let buf = CountedBuf::empty(64 * 1024, &drops);
                spawn(async move {
                    let (r, _) = file.read_at(buf, i * 65536).await;
                    r.map(drop)
                })
            })
            .collect();
        ringloop_runtime::yield_now().await.unwrap(); // the reads go in flight
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
    drop(file);
    assert!(until(|| drops.load(Ordering::SeqCst) == 8 * 16).await);
    assert!(until(|| current_stats().ops_in_flight == 0).await);
}
on_both_backends!(
    aborted_tasks_keep_the_file_open_until_their_ops_are_done,
    aborted_tasks_and_a_dropped_file
);
