//! Metrics: counts and latencies per op kind (`Runtime::op_stats`), on both backends, and the
//! stats and op kinds as Prometheus text (`Runtime::metrics_text`, and `metrics` on the live
//! view's socket). Counts are checked exactly; latencies only by which bucket cannot hold them.

mod common;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::backends;
use io_uring::{opcode, squeue, types};
use ringloop_runtime::{
    sleep, spawn, spawn_blocking, yield_now, Interest, Op, OpKind, OpKindStats, Runtime,
};

/// `read` from a pipe: an op kind of its own, so its counts are the test's alone.
struct PipeRead {
    fd: Rc<OwnedFd>,
    buf: Vec<u8>,
}

// SAFETY: the SQE points into `self.buf`'s heap memory (owned by the op, never reallocated
// while in flight) and names `self.fd`, which the op keeps open.
unsafe impl OpKind for PipeRead {
    type Output = io::Result<usize>;
    const NAME: &'static str = "metrics_pipe_read";

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.fd.as_raw_fd()),
            self.buf.as_mut_ptr(),
            self.buf.capacity() as u32,
        )
        .build()
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.as_raw_fd(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: the buffer is valid for `capacity` bytes of writes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.capacity(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as u32)
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<usize> {
        result.map(|n| n as usize)
    }

    /// Tried as a system call first on a nearly idle ring, as a send is (so an op with data
    /// already there finishes without waiting on io_uring too).
    fn try_first(&self) -> bool {
        true
    }
}

fn pipe() -> (Rc<OwnedFd>, File) {
    let mut fds = [0; 2];
    // SAFETY: `pipe2` writes two descriptors into the array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    // SAFETY: both descriptors are fresh and ours.
    unsafe {
        (
            Rc::new(OwnedFd::from_raw_fd(fds[0])),
            File::from_raw_fd(fds[1]),
        )
    }
}

fn read(fd: &Rc<OwnedFd>) -> Op<PipeRead> {
    Op::new(PipeRead {
        fd: fd.clone(),
        buf: Vec::with_capacity(8),
    })
}

fn kind(stats: &[OpKindStats]) -> OpKindStats {
    stats
        .iter()
        .find(|k| k.op == "metrics_pipe_read")
        .cloned()
        .unwrap_or_else(|| panic!("no pipe reads in {stats:?}"))
}

/// One op that waits and completes, one that finds its data and needs no wait, one cancelled
/// while it waits, one dropped while it waits, one that fails at once: each counted where it
/// belongs, on each backend.
#[test]
fn op_kinds_count_what_their_ops_did_on_both_backends() {
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let stats = rt.block_on(async {
            let (r, mut w) = pipe();
            // 1. Waits, then completes after a while.
            let waiting = spawn(read(&r));
            yield_now().await.unwrap();
            sleep(Duration::from_millis(30)).await.unwrap();
            w.write_all(b"a").unwrap();
            assert_eq!(waiting.await.unwrap().unwrap(), 1);
            // 2. Data already there: on epoll the first attempt succeeds; on io_uring the
            //    nearly idle ring lets it try the system call first.
            w.write_all(b"b").unwrap();
            assert_eq!(read(&r).await.unwrap(), 1);
            // 3. Cancelled while it waits.
            let cancelled = spawn(read(&r));
            yield_now().await.unwrap();
            cancelled.cancel();
            // The read's error carries the `Cancelled`, which escapes: the task ends cancelled.
            assert!(cancelled.await.unwrap_err().is_cancelled());
            // 4. Dropped while it waits (aborted task).
            let dropped = spawn(read(&r));
            yield_now().await.unwrap();
            dropped.abort();
            assert!(dropped.await.is_err());
            // 5. Fails at once: a descriptor that is not readable (the write end).
            let bad = Rc::new(w.try_clone().unwrap().into());
            let e = read(&bad).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
            // Let the dropped op's cancellation come back.
            for _ in 0..4 {
                yield_now().await.unwrap();
            }
            ringloop_runtime::current_op_stats()
        });
        let k = kind(&stats);
        assert_eq!(k.completed, 4, "{backend}: {k:?}");
        assert_eq!(k.errors, 1, "{backend}: {k:?}");
        assert_eq!(k.cancelled, 1, "{backend}: {k:?}");
        assert_eq!(k.dropped, 1, "{backend}: {k:?}");
        assert_eq!(k.immediate, 2, "{backend}: {k:?}");
        let waited: u64 = k.latency_buckets.iter().sum();
        assert_eq!(waited, 2, "the two that waited and finished: {k:?}");
        // The first one waited at least 30 ms: not in a bucket below 16 ms.
        assert!(k.latency_buckets[..15].iter().sum::<u64>() <= 1, "{k:?}");
        assert!(k.latency_sum_us >= 25_000, "{k:?}");
        assert_eq!(rt.op_stats(), stats, "the runtime's view after the fact");
    }
}

#[test]
fn metrics_text_has_the_stats_and_every_op_kind() {
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            let (r, mut w) = pipe();
            let t = spawn(read(&r));
            yield_now().await.unwrap();
            w.write_all(b"x").unwrap();
            t.await.unwrap().unwrap();
        });
        let text = rt.metrics_text();
        assert!(
            text.contains("# TYPE ringloop_tasks_spawned_total counter\n"),
            "{text}"
        );
        assert!(text.contains("ringloop_tasks_spawned_total 2\n"), "{text}");
        assert!(text.contains("ringloop_tasks_alive 0\n"), "{text}");
        assert!(
            text.contains("ringloop_op_completed_total{op=\"metrics_pipe_read\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ringloop_op_latency_seconds_bucket{op=\"metrics_pipe_read\",le=\"+Inf\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("ringloop_op_latency_seconds_count{op=\"metrics_pipe_read\"} 1\n"));
        // Exposition format: one TYPE per metric, every sample a number.
        let mut types = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(
                    types.insert(rest.split(' ').next().unwrap().to_owned()),
                    "{line}"
                );
            } else if !line.starts_with("# HELP ") {
                let (_, value) = line.rsplit_once(' ').unwrap();
                value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
            }
        }
    }
}

/// The live view serves the same text, labelled with the runtime, and the op table shows the
/// kinds' counts.
#[test]
fn the_live_view_serves_metrics_and_the_op_table() {
    for backend in backends() {
        let dir =
            std::env::temp_dir().join(format!("ringloop-metrics-{backend}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rt.sock");
        let rt = Runtime::builder()
            .backend(backend)
            .inspect_socket(&path)
            .build()
            .unwrap();
        rt.block_on(async {
            let (r, mut w) = pipe();
            let t = spawn(read(&r));
            yield_now().await.unwrap();
            w.write_all(b"x").unwrap();
            t.await.unwrap().unwrap();
            let waiting = spawn(read(&r));
            yield_now().await.unwrap();
            let ask = |line: &'static str| {
                let path = path.clone();
                spawn_blocking(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    s.write_all(line.as_bytes()).unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    out
                })
            };
            let metrics = ask("metrics\n").await.unwrap();
            let label = format!("runtime=\"{}-", std::process::id());
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with("ringloop_op_completed_total{")
                        && l.contains(&label)
                        && l.contains("op=\"metrics_pipe_read\"")
                        && l.ends_with(" 1")),
                "{metrics}"
            );
            assert!(!metrics.starts_with("# ringloop "), "no header: {metrics}");
            let ops = ask("ops\n").await.unwrap();
            let row = ops
                .lines()
                .find(|l| l.starts_with("metrics_pipe_read "))
                .unwrap_or_else(|| panic!("{ops}"));
            let cols: Vec<&str> = row.split_whitespace().collect();
            // OP WAITING COMPLETED IMMEDIATE ERRORS CANCELS DROPPED P50 P99
            assert_eq!(&cols[1..7], ["1", "1", "0", "0", "0", "0"], "{ops}");
            let json: serde_json::Value =
                serde_json::from_str(&ask("ops json\n").await.unwrap()).unwrap();
            let kinds = json["ops"]["kinds"].as_array().unwrap();
            let k = kinds
                .iter()
                .find(|k| k["op"] == "metrics_pipe_read")
                .unwrap();
            assert_eq!(k["completed"], 1);
            assert_eq!(json["ops"]["waiting_tasks"]["metrics_pipe_read"], 1);
            w.write_all(b"y").unwrap();
            waiting.await.unwrap().unwrap();
        });
        drop(rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
