//! What safe code must never be able to do: read memory nobody wrote, hand an op another
//! runtime's completion, panic inside the driver and free memory the kernel still writes, or
//! let the kernel act on a reused descriptor. Each test reproduces one way it once could.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Duration;

use common::{backends, fd_count, localhost, runtime, serial, CountedBuf};
use ringloop_net::{IoBuf, TcpListener, UnixStream};
use ringloop_runtime::{current_stats, spawn, timeout, yield_now, Backend, Runtime};

/// Polls `fut` once with the task's own context.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Yields until `done` holds (at most 1 000 loop iterations).
async fn until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        yield_now().await.unwrap();
    }
    done()
}

both_backends! {
    /// A receive into a window that starts past the buffer's initialised bytes
    /// (`Vec::with_capacity(100).slice(50..)`) gives back a buffer whose gap is zeroed, not
    /// memory nobody wrote.
    async fn a_receive_into_a_window_past_the_initialised_bytes_zeroes_the_gap() {
        let (ours, mut peer) = StdUnixStream::pair().unwrap();
        let stream = UnixStream::from_std(ours).unwrap();
        // Garbage in the allocation, so "never written" cannot read as zero by luck.
        let mut v = vec![0xa5u8; 100];
        v.clear();
        peer.write_all(b"hello").unwrap();
        let (n, window) = stream.read(v.slice(50..)).await;
        assert_eq!(n.unwrap(), 5);
        let v = window.into_inner();
        assert_eq!(v.len(), 55);
        assert!(v[..50].iter().all(|&b| b == 0), "the gap must be zeroed: {:?}", &v[..50]);
        assert_eq!(&v[50..], b"hello");

        // A window inside the initialised bytes changes no length.
        peer.write_all(b"xyz").unwrap();
        let (n, window) = stream.read(b"0123456789".to_vec().slice(2..5)).await;
        assert_eq!(n.unwrap(), 3);
        assert_eq!(window.into_inner(), b"01xyz56789");
    }
}

/// 1. Under runtime A an op is submitted (A's first op: the same key as B's first op).
/// 2. Under runtime B, B's first op completes but is not taken yet; A's op is polled there.
/// 3. A's op must not take B's completion (its buffer would come back while the kernel still
///    targets it), and B's op gets its own data.
/// 4. Back under A, A's op gets A's data.
#[test]
fn an_op_polled_under_another_runtime_keeps_its_own_completion() {
    let _serial = serial();
    for backend in backends() {
        let (a_ours, mut a_peer) = StdUnixStream::pair().unwrap();
        let (b_ours, mut b_peer) = StdUnixStream::pair().unwrap();
        let a = runtime(backend);
        let a_stream = Rc::new(a.block_on(async { UnixStream::from_std(a_ours).unwrap() }));
        let s = a_stream.clone();
        let mut a_read = Box::pin(async move { s.read(vec![0u8; 16]).await });
        a.run_until_complete(async {
            assert!(poll_once(&mut a_read).await.is_pending());
        });

        let b = runtime(backend);
        b.block_on(async {
            let s = UnixStream::from_std(b_ours).unwrap();
            let mut b_read = Box::pin(s.read(vec![0u8; 16]));
            assert!(poll_once(&mut b_read).await.is_pending());
            b_peer.write_all(b"for b").unwrap();
            let before = current_stats().ops_completed;
            if backend == Backend::IoUring {
                assert!(until(|| current_stats().ops_completed > before).await);
            }
            assert!(
                poll_once(&mut a_read).await.is_pending(),
                "runtime A's op took runtime B's completion"
            );
            let (n, buf) = b_read.await;
            assert_eq!(&buf[..n.unwrap()], b"for b");
        });
        drop(b);

        a_peer.write_all(b"for a").unwrap();
        let (n, buf) = a.block_on(async {
            timeout(Duration::from_secs(10), a_read)
                .await
                .expect("A's op never completed")
        });
        assert_eq!(&buf[..n.unwrap()], b"for a", "{backend}");
    }
}

/// A runtime dropped while another is running (inside one of its tasks) shuts its own ops
/// down: its orphans go to its own ring, never into the running runtime's op table, where
/// they would take the place of an op with the same key.
#[test]
fn a_runtime_dropped_inside_another_orphans_into_its_own_ring() {
    let _serial = serial();
    for backend in backends() {
        let (a_ours, mut a_peer) = StdUnixStream::pair().unwrap();
        let (b_ours, _b_peer) = StdUnixStream::pair().unwrap();
        let drops = Rc::new(Cell::new(0));

        // 1. Runtime B: a task with a receive in flight, left alive.
        let b = runtime(backend);
        let d = drops.clone();
        b.run_until_complete(async move {
            // Dropping the handle detaches the task: it stays alive.
            drop(spawn(async move {
                let s = UnixStream::from_std(b_ours).unwrap();
                let _ = s.read(CountedBuf::empty(64, &d)).await;
            }));
            for _ in 0..3 {
                yield_now().await.unwrap();
            }
        });
        assert_eq!(b.stats().ops_in_flight, 1, "{backend}");

        // 2. Runtime A: its own receive in flight (the same key in A's table), then B is
        //    dropped from inside A's task.
        let a = runtime(backend);
        let got = a.block_on(async move {
            let s = UnixStream::from_std(a_ours).unwrap();
            let mut a_read = Box::pin(s.read(vec![0u8; 16]));
            assert!(poll_once(&mut a_read).await.is_pending());
            drop(b);
            a_peer.write_all(b"for a").unwrap();
            let (n, buf) = timeout(Duration::from_secs(10), a_read)
                .await
                .expect("A's op was hijacked by B's orphan");
            buf[..n.unwrap()].to_vec()
        });
        assert_eq!(got, b"for a");
        // B's shutdown reaped its cancelled receive and freed the buffer then.
        assert_eq!(drops.get(), 1, "{backend}");
        assert_eq!(a.stats().ops_in_flight, 0);
    }
}

thread_local! {
    /// The op future the dropping waker drops when it is woken.
    static PARKED: RefCell<Option<Pin<Box<dyn Future<Output = ()>>>>> = const { RefCell::new(None) };
}

/// A waker whose `wake` drops the parked op future: foreign code that runs when the driver
/// completes an op.
fn dropping_waker() -> Waker {
    fn clone(p: *const ()) -> RawWaker {
        RawWaker::new(p, &VTABLE)
    }
    fn wake(_: *const ()) {
        let parked = PARKED.with(|p| p.borrow_mut().take());
        drop(parked);
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, noop);
    // SAFETY: the vtable's functions ignore the data pointer, and are thread-safe in that they
    // touch only this thread's `PARKED`.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

both_backends! {
    /// A waker whose `wake` drops an op future (its own op, completed) runs after the driver's
    /// borrow ends: no panic inside the driver, and the op's buffer is freed once.
    async fn a_waker_that_drops_an_op_runs_outside_the_driver() {
        let (ours, mut peer) = StdUnixStream::pair().unwrap();
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let stream = UnixStream::from_std(ours).unwrap();
        let fut: Pin<Box<dyn Future<Output = ()>>> = Box::pin(async move {
            let _ = stream.read(CountedBuf::empty(64, &d)).await;
        });
        PARKED.with(|p| *p.borrow_mut() = Some(fut));
        let waker = dropping_waker();
        let polled = PARKED.with(|p| {
            let mut parked = p.borrow_mut();
            let fut = parked.as_mut().unwrap();
            fut.as_mut().poll(&mut Context::from_waker(&waker))
        });
        assert!(polled.is_pending());
        peer.write_all(b"x").unwrap();
        assert!(until(|| PARKED.with(|p| p.borrow().is_none())).await, "never woken");
        assert!(until(|| drops.get() == 1).await);
        assert!(until(|| current_stats().ops_in_flight == 0).await);
        assert_eq!(drops.get(), 1);
    }
}

/// A task whose destructor panics while the runtime shuts down does not stop the ring from
/// being drained first: the receive still in flight is cancelled and reaped, and its buffer is
/// freed once, after the kernel let go of it (AddressSanitizer checks the "after").
#[test]
fn a_panicking_destructor_at_shutdown_still_drains_the_ring() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("a destructor that panics");
        }
    }
    let _serial = serial();
    for backend in backends() {
        let (ours, _peer) = StdUnixStream::pair().unwrap();
        let drops = Rc::new(Cell::new(0));
        let rt = runtime(backend);
        let d = drops.clone();
        rt.run_until_complete(async move {
            drop(spawn(async move {
                let _guard = PanicOnDrop;
                std::future::pending::<()>().await;
            }));
            drop(spawn(async move {
                let s = UnixStream::from_std(ours).unwrap();
                let _ = s.read(CountedBuf::empty(64, &d)).await;
            }));
            for _ in 0..3 {
                yield_now().await.unwrap();
            }
        });
        assert_eq!(rt.stats().ops_in_flight, 1);
        let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(rt)));
        assert_eq!(drops.get(), 1, "{backend}: the in-flight receive's buffer");
    }
}

/// A multishot accept armed (its SQE queued, not yet submitted) and dropped together with its
/// listener keeps the listener's descriptor open until the op's last completion, so the
/// kernel never arms it on a new socket that got the same number.
#[test]
fn a_dropped_multishot_keeps_its_descriptor_until_its_last_completion() {
    let _serial = serial();
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let rt = runtime(Backend::IoUring);
    rt.block_on(async {
        let base = fd_count();
        let listener = TcpListener::bind(localhost()).unwrap();
        let old = listener.as_raw_fd();
        {
            let mut incoming = listener.incoming();
            let mut next = Box::pin(incoming.next());
            assert!(poll_once(&mut next).await.is_pending());
        }
        drop(listener);
        // Still this task's poll: the SQE has not reached the kernel.
        let fresh = std::net::TcpListener::bind(localhost()).unwrap();
        assert_ne!(
            fresh.as_raw_fd(),
            old,
            "the listener's number was reused while an SQE naming it was queued"
        );
        drop(fresh);
        assert!(until(|| current_stats().ops_in_flight == 0).await);
        assert_eq!(
            fd_count(),
            base,
            "the kept descriptor is closed after the last completion"
        );
    });
}

/// An op polled after its runtime was dropped fails with an error (one that never reached
/// the kernel) or completes with what the shutdown reaped; it never hangs or panics.
#[test]
fn an_op_outliving_its_runtime_fails_cleanly() {
    let _serial = serial();
    for backend in backends() {
        let (ours, _peer) = StdUnixStream::pair().unwrap();
        let a = runtime(backend);
        let s = Rc::new(a.block_on(async { UnixStream::from_std(ours).unwrap() }));
        let s2 = s.clone();
        let mut in_flight = Box::pin(async move { s2.read(vec![0u8; 8]).await });
        a.run_until_complete(async {
            assert!(poll_once(&mut in_flight).await.is_pending());
        });
        drop(a);
        let b = runtime(backend);
        let (n, _buf) = b.block_on(async {
            timeout(Duration::from_secs(10), in_flight)
                .await
                .expect("an op of a dropped runtime hung")
        });
        let e = n.unwrap_err();
        match backend {
            // The shutdown cancelled it in the kernel and reaped the cancellation.
            Backend::IoUring => assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}"),
            _ => assert!(e.to_string().contains("dropped"), "{e}"),
        }
        drop(s);
    }
}

#[test]
fn runtime_is_reusable_after_the_soundness_tests() {
    let _serial = serial();
    let rt = Runtime::new().unwrap();
    assert_eq!(rt.block_on(async { 1 + 1 }), 2);
}

/// Polls two futures in one task until both are done (what `join!` does).
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

both_backends! {
    /// A cancellation reaches every branch of a task that awaits several things at once: a
    /// `timeout` around a join of a sleep and a receive that never completes ends, and the
    /// receive is cancelled in the kernel (nothing left in flight).
    async fn a_timeout_around_a_join_of_a_sleep_and_a_receive_ends() {
        let (ours, _peer) = StdUnixStream::pair().unwrap();
        let stream = UnixStream::from_std(ours).unwrap();
        let joined = join2(
            ringloop_runtime::sleep(Duration::from_secs(3600)),
            stream.read(vec![0u8; 8]),
        );
        let r = timeout(Duration::from_millis(5), joined).await;
        assert!(r.is_err(), "the join outlived its timeout");
        assert!(until(|| current_stats().ops_in_flight == 0).await);
    }
}

both_backends! {
    /// A second cancel request while the first one's `ASYNC_CANCEL` is in flight is taken by
    /// the op too: the task sees its `Cancelled` at the op and decides, rather than being
    /// dropped as if it awaited a foreign future. (Whether the task is polled again before the
    /// cancel's completion is reaped is up to the kernel, so this pins the behaviour rather
    /// than reproducing every interleaving.)
    async fn a_second_cancel_while_an_op_is_being_cancelled_is_seen_not_dropped() {
        let (ours, _peer) = StdUnixStream::pair().unwrap();
        let task = spawn(async move {
            let stream = UnixStream::from_std(ours).unwrap();
            let me = ringloop_runtime::current_task().unwrap();
            let mut read = Box::pin(stream.read(vec![0u8; 8]));
            assert!(poll_once(&mut read).await.is_pending());
            me.cancel();
            // Takes the request: io_uring sends ASYNC_CANCEL (epoll resolves at once).
            if let Poll::Ready((r, _)) = poll_once(&mut read).await {
                assert!(ringloop_runtime::is_cancelled(&r.unwrap_err()));
                return "cancelled at once";
            }
            me.cancel();
            assert!(poll_once(&mut read).await.is_pending());
            let (r, _) = read.await;
            assert!(ringloop_runtime::is_cancelled(&r.unwrap_err()));
            "saw the cancel and decided"
        });
        let outcome = task.await.expect("the task was dropped instead of seeing its Cancelled");
        assert!(outcome.starts_with("saw") || outcome.starts_with("cancelled"));
    }
}
