//! Deadlines on ops (`Op::deadline`, `Op::timeout`) and on futures (`DeadlineExt`), on both
//! backends, with an op kind of our own: a read from a pipe into an owned buffer.
//!
//! No test asserts a duration: a slow machine (the kernel matrix emulates its CPU) only changes
//! which branch a race takes, and every branch is checked for what it must deliver.

mod common;

use std::cell::Cell;
use std::future::{pending, poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use ringloop_runtime::{
    is_cancelled, sleep, spawn, timed_out_error, yield_now, Backend, DeadlineExt, Interest, Op,
    OpKind, Runtime,
};

/// `read(2)` from a non-blocking pipe into an owned buffer (from its start, up to its
/// capacity).
struct PipeRead {
    fd: Rc<OwnedFd>,
    buf: Vec<u8>,
}

// SAFETY: the SQE points into `self.buf`'s heap memory (owned by the op, not reallocated while
// in flight) and names `self.fd`, which the op keeps open.
unsafe impl OpKind for PipeRead {
    type Output = (io::Result<usize>, Vec<u8>);

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.fd.as_raw_fd()),
            self.buf.as_mut_ptr(),
            self.buf.capacity() as u32,
        )
        .offset(u64::MAX)
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

    fn complete(self, result: io::Result<u32>, _flags: u32) -> Self::Output {
        let mut buf = self.buf;
        let result = result.map(|n| {
            // SAFETY: the kernel wrote `n` bytes at the start of the buffer.
            unsafe { buf.set_len(n as usize) };
            n as usize
        });
        (result, buf)
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (Rc<OwnedFd>, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live array of two ints the call fills.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and ours.
    unsafe {
        (
            Rc::new(OwnedFd::from_raw_fd(fds[0])),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn read(fd: &Rc<OwnedFd>, cap: usize) -> Op<PipeRead> {
    Op::new(PipeRead {
        fd: fd.clone(),
        buf: Vec::with_capacity(cap),
    })
}

fn write(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a live slice of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize, "{}", io::Error::last_os_error());
}

fn is_timed_out(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut && e.raw_os_error() == Some(libc::ETIMEDOUT)
}

/// Runs `body` on a fresh runtime of each backend this run tests; checks that nothing is left
/// in flight and no timer stays armed.
fn on_both<F, Fut>(body: F)
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in common::backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(body(backend));
        // The deadline's own completion (io_uring) or timer (epoll) is gone too.
        rt.block_on(async {
            for _ in 0..3 {
                yield_now().await.unwrap();
            }
        });
        let stats = rt.stats();
        assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        assert_eq!(stats.timers_pending, 0, "{backend}: {stats:?}");
    }
}

#[test]
fn an_op_that_never_completes_times_out_with_etimedout_and_gives_its_buffer_back() {
    on_both(|backend| async move {
        let (rx, _tx) = pipe();
        let (r, buf) = read(&rx, 64).timeout(Duration::from_millis(5)).await;
        let e = r.unwrap_err();
        assert!(is_timed_out(&e), "{backend}: {e:?}");
        assert_eq!(buf.capacity(), 64);
        assert!(buf.is_empty());
        assert_eq!(
            ringloop_runtime::current_stats().ops_timed_out,
            1,
            "{backend}"
        );
    });
}

#[test]
fn data_already_there_wins_over_a_deadline_already_past() {
    on_both(|backend| async move {
        let (rx, tx) = pipe();
        write(&tx, b"ready");
        // asyncio's `timeout(0)` lets a ready result through; so does a past deadline.
        let (r, buf) = read(&rx, 64).deadline(Instant::now()).await;
        assert_eq!(r.unwrap(), 5, "{backend}");
        assert_eq!(buf, b"ready");
        // With nothing there, a past deadline is one try.
        let (r, _) = read(&rx, 64).deadline(Instant::now()).await;
        assert!(is_timed_out(&r.unwrap_err()), "{backend}");
    });
}

#[test]
fn a_timed_out_read_leaves_the_pipe_usable_and_loses_nothing() {
    on_both(|backend| async move {
        let (rx, tx) = pipe();
        let (r, _) = read(&rx, 64).timeout(Duration::from_millis(2)).await;
        assert!(is_timed_out(&r.unwrap_err()), "{backend}");
        write(&tx, b"after");
        let (r, buf) = read(&rx, 64).timeout(Duration::from_secs(60)).await;
        assert_eq!(r.unwrap(), 5, "{backend}");
        assert_eq!(buf, b"after");
    });
}

#[test]
fn data_that_comes_before_the_deadline_is_delivered_and_the_deadline_is_disarmed() {
    on_both(|backend| async move {
        let (rx, tx) = pipe();
        let writer = spawn(async move {
            sleep(Duration::from_millis(1)).await.unwrap();
            write(&tx, b"soon");
            tx
        });
        let (r, buf) = read(&rx, 64).timeout(Duration::from_secs(60)).await;
        assert_eq!(r.unwrap(), 4, "{backend}");
        assert_eq!(buf, b"soon");
        drop(writer.await.unwrap());
        assert_eq!(ringloop_runtime::current_stats().ops_timed_out, 0);
    });
}

/// Data written at about the deadline, many times with varying offsets, by another thread (so
/// the write races the kernel's timeout, or the loop's timer, for real): every byte is read, in
/// order, either by the read with the deadline or by the next one.
#[test]
fn data_arriving_at_the_deadline_is_never_lost() {
    on_both(|backend| async move {
        let (rx, tx) = pipe();
        let (orders, inbox) = std::sync::mpsc::channel::<(Instant, [u8; 4])>();
        let writer = std::thread::spawn(move || {
            for (at, msg) in inbox {
                while Instant::now() < at {
                    std::hint::spin_loop();
                }
                write(&tx, &msg);
            }
        });
        let mut got = Vec::new();
        let mut sent = Vec::new();
        let (mut timed_out, mut won) = (0, 0);
        for round in 0..400u32 {
            let deadline = Instant::now() + Duration::from_micros(300);
            // From 150 µs before the deadline to 150 µs after, by round.
            let at = deadline - Duration::from_micros(150)
                + Duration::from_micros(u64::from(round % 11) * 30);
            let msg = round.to_be_bytes();
            sent.extend_from_slice(&msg);
            orders.send((at, msg)).unwrap();
            let (r, buf) = read(&rx, 4).deadline(deadline).await;
            match r {
                Ok(n) => {
                    won += 1;
                    got.extend_from_slice(&buf[..n]);
                }
                Err(e) => {
                    assert!(is_timed_out(&e), "{backend}: {e:?}");
                    timed_out += 1;
                }
            }
            // Whatever the timed read did not take comes to the next read.
            while got.len() < sent.len() {
                let (r, buf) = read(&rx, 4).await;
                let n = r.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, sent, "{backend}: round {round}");
        }
        drop(orders);
        writer.join().unwrap();
        eprintln!("{backend}: {won} reads got the data, {timed_out} timed out");
    });
}

#[test]
fn the_earliest_of_several_deadlines_applies() {
    on_both(|backend| async move {
        let (rx, _tx) = pipe();
        let far = Duration::from_secs(3600);
        let near = Duration::from_millis(2);
        let (r, _) = read(&rx, 8).timeout(far).timeout(near).await;
        assert!(
            is_timed_out(&r.unwrap_err()),
            "{backend}: op near after far"
        );
        let (r, _) = read(&rx, 8).timeout(near).timeout(far).await;
        assert!(
            is_timed_out(&r.unwrap_err()),
            "{backend}: op far after near"
        );
        // A scope's deadline and the op's own.
        let (r, _) = async { read(&rx, 8).timeout(far).await }
            .timeout(near)
            .await;
        assert!(
            is_timed_out(&r.unwrap_err()),
            "{backend}: scope near, op far"
        );
        let (r, _) = async { read(&rx, 8).timeout(near).await }
            .timeout(far)
            .await;
        assert!(
            is_timed_out(&r.unwrap_err()),
            "{backend}: scope far, op near"
        );
        // Nested scopes: the outer one is earlier.
        let r = async {
            let (r, _) = async { read(&rx, 8).await }.timeout(far).await;
            r
        }
        .timeout(near)
        .await;
        assert!(is_timed_out(&r.unwrap_err()), "{backend}: nested");
    });
}

#[test]
fn every_op_a_future_makes_takes_the_deadline_but_an_unscoped_one() {
    on_both(|backend| async move {
        let (rx, tx) = pipe();
        // Two ops in sequence inside one scope: the first gets data, the second times out.
        write(&tx, b"one");
        let (first, second) = async {
            let (a, buf) = read(&rx, 8).await;
            let (b, _) = read(&rx, 8).await;
            ((a, buf), b)
        }
        .timeout(Duration::from_millis(3))
        .await;
        assert_eq!(first.0.unwrap(), 3, "{backend}");
        assert_eq!(first.1, b"one");
        assert!(is_timed_out(&second.unwrap_err()), "{backend}");

        // An unscoped op ignores the scope: it is still waiting when a runtime `timeout`
        // (asyncio's, far later) gives up on it.
        let r = ringloop_runtime::timeout(
            Duration::from_millis(30),
            async { read(&rx, 8).unscoped().await }.timeout(Duration::from_millis(1)),
        )
        .await;
        // The outer timeout cancelled the op (a `Cancelled` error, or the op dropped): never
        // `ETIMEDOUT`.
        if let Ok((r, _)) = r {
            assert!(is_cancelled(&r.unwrap_err()), "{backend}");
        }
    });
}

#[test]
fn a_scope_with_an_io_result_gives_up_on_a_wait_that_is_not_ringloop_io() {
    on_both(|backend| async move {
        let r: io::Result<()> = async {
            pending::<()>().await;
            Ok(())
        }
        .timeout(Duration::from_millis(2))
        .await;
        assert!(is_timed_out(&r.unwrap_err()), "{backend}");

        // An owned-buffer result cannot be made up: that scope keeps waiting (here until a
        // runtime `timeout`, which drops it, gives up).
        let r = ringloop_runtime::timeout(
            Duration::from_millis(20),
            async {
                pending::<()>().await;
                (Ok::<usize, io::Error>(0), Vec::<u8>::new())
            }
            .timeout(Duration::from_millis(1)),
        )
        .await;
        assert!(
            r.is_err(),
            "{backend}: the owned-buffer scope resolved by itself"
        );
    });
}

#[test]
fn a_scope_waits_for_the_op_in_flight_rather_than_drop_it() {
    on_both(|backend| async move {
        let (rx, _tx) = pipe();
        // The op is awaited through a wait the scope cannot see into: past the deadline the
        // scope does not give up while the op is in flight (it could be completing with data);
        // the op resolves with its own timeout, and that is what comes back.
        let before = ringloop_runtime::current_stats().ops_timed_out;
        let r = async {
            let mut op = pin!(read(&rx, 8));
            poll_fn(|cx| match op.as_mut().poll(cx) {
                Poll::Ready((r, _)) => Poll::Ready(r),
                Poll::Pending => Poll::Pending,
            })
            .await
        }
        .timeout(Duration::from_millis(2))
        .await;
        assert!(is_timed_out(&r.unwrap_err()), "{backend}");
        let after = ringloop_runtime::current_stats().ops_timed_out;
        assert_eq!(
            after,
            before + 1,
            "{backend}: the op timed out, the scope did not give up"
        );
    });
}

#[test]
fn cancelling_the_task_while_a_deadline_waits_gives_cancelled() {
    on_both(|backend| async move {
        let (rx, _tx) = pipe();
        let started = Rc::new(Cell::new(false));
        let s = started.clone();
        let task = spawn(async move {
            s.set(true);
            let (r, _) = read(&rx, 8).timeout(Duration::from_secs(3600)).await;
            // Caught (not returned): the task ends with this value, not cancelled.
            is_cancelled(&r.unwrap_err())
        });
        while !started.get() {
            yield_now().await.unwrap();
        }
        yield_now().await.unwrap();
        task.cancel();
        assert!(task.await.unwrap(), "{backend}");
    });
}

/// A cancel and a deadline at about the same time, many rounds: the op resolves with
/// `Cancelled`, or with `ETIMEDOUT` and then the cancellation reaches the task's next await;
/// it is never lost, and never delivered twice.
#[test]
fn a_cancel_racing_the_deadline_is_never_lost() {
    on_both(|backend| async move {
        let (mut cancelled, mut timed_out) = (0, 0);
        for round in 0..100u32 {
            let (rx, _tx) = pipe();
            let deadline = Instant::now() + Duration::from_micros(300);
            let task = spawn(async move {
                let (r, _) = read(&rx, 8).deadline(deadline).await;
                let e = r.unwrap_err();
                if is_cancelled(&e) {
                    return "cancelled";
                }
                assert!(is_timed_out(&e), "{e:?}");
                // The cancellation waits for this await.
                match sleep(Duration::from_secs(3600)).await {
                    Err(_) => "timed out, then cancelled",
                    Ok(()) => "lost",
                }
            });
            let at = deadline + Duration::from_micros(u64::from(round % 5) * 60)
                - Duration::from_micros(120);
            ringloop_runtime::sleep_until(at).await.unwrap();
            task.cancel();
            match task.await {
                Ok("cancelled") => cancelled += 1,
                Ok("timed out, then cancelled") => timed_out += 1,
                other => panic!("{backend}: round {round}: {other:?}"),
            }
        }
        eprintln!("{backend}: {cancelled} cancelled, {timed_out} timed out then cancelled");
    });
}

#[test]
fn an_op_dropped_before_its_deadline_leaves_no_timer_and_no_op() {
    on_both(|backend| async move {
        let (rx, _tx) = pipe();
        {
            let mut op = pin!(read(&rx, 8).timeout(Duration::from_secs(3600)));
            poll_fn(|cx| {
                assert!(op.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            // Dropped here: on io_uring while its SQE and its timeout's may still be in the
            // submission queue (their memory must outlive that), on epoll with its timer armed.
        }
        let stats = ringloop_runtime::current_stats();
        if backend == Backend::Epoll {
            assert_eq!(stats.timers_pending, 0, "{stats:?}");
        }
        // The same with a scope.
        {
            let mut fut = pin!(async { read(&rx, 8).await.0 }.timeout(Duration::from_secs(3600)));
            poll_fn(|cx| {
                assert!(fut.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
        }
        // `on_both` checks that the orphans completed and no timer is left.
    });
}

#[test]
fn many_deadlines_in_one_iteration_fill_the_submission_queue_without_splitting_a_link() {
    for backend in common::backends() {
        // 16 SQEs: each op takes two, so the queue fills every eighth op.
        let rt = Runtime::builder()
            .backend(backend)
            .ring_entries(16)
            .build()
            .unwrap();
        rt.block_on(async {
            let pipes: Vec<_> = (0..200).map(|_| pipe()).collect();
            for (i, (_, tx)) in pipes.iter().enumerate() {
                if i % 3 == 0 {
                    write(tx, b"x");
                }
            }
            let tasks: Vec<_> = pipes
                .iter()
                .map(|(rx, _)| {
                    let op = read(rx, 8).timeout(Duration::from_millis(20));
                    spawn(async move { op.await.0 })
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                let r = t.await.unwrap();
                if i % 3 == 0 {
                    assert_eq!(r.unwrap(), 1, "{backend}: op {i}");
                } else {
                    assert!(is_timed_out(&r.unwrap_err()), "{backend}: op {i}");
                }
            }
        });
        assert_eq!(rt.stats().ops_in_flight, 0);
    }
}

#[test]
#[should_panic(expected = "before the op is first polled")]
fn a_deadline_set_after_the_first_poll_panics() {
    let rt = Runtime::builder().backend(Backend::Epoll).build().unwrap();
    rt.block_on(async {
        let (rx, _tx) = pipe();
        let mut op = read(&rx, 8);
        poll_fn(|cx| {
            assert!(std::pin::Pin::new(&mut op).poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drop(op.timeout(Duration::from_secs(1)));
    });
}

#[test]
fn timed_out_error_is_etimedout() {
    let e = timed_out_error();
    assert!(is_timed_out(&e));
    assert!(!is_cancelled(&e));
}
