//! `signal`/`Signal::recv` on both backends: a raised signal wakes a waiting `recv`, every
//! listener sees it, a delivery before `recv` is kept, deliveries between `recv`s coalesce, a
//! dropped or cancelled `recv` loses nothing and leaves no op in flight, the previous handler
//! comes back with the last listener, and the signals that must not be handled are refused.
//!
//! Signal dispositions and the listener table are process-wide, so every test takes `SERIAL`
//! first and uses its own signal where it can. SIGINT and SIGTERM are left to the test harness;
//! the signals used by default either terminate the process (SIGUSR1, SIGUSR2) only while no
//! listener exists, or are harmless (SIGWINCH, SIGURG, SIGCONT, SIGCHLD are ignored or continue
//! by default). Signals are raised with `raise` (delivered to the calling thread before it
//! returns) except where a process-directed `kill` is the point.

mod common;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use common::yield_now;
use ringloop_runtime::signal::{signal, Signal, SignalKind, MAX_LISTENERS};
use ringloop_runtime::{is_cancelled, spawn, timeout, Backend, Runtime, TimedOut};

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of this binary (a failed test poisons the lock; the others go on).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `body` on a fresh runtime of each backend, then checks that no op is left in flight.
fn each_backend(mut body: impl FnMut(&Runtime, Backend)) {
    for backend in common::backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        body(&rt, backend);
        assert_eq!(
            rt.stats().ops_in_flight,
            0,
            "{backend}: an op was left in flight"
        );
    }
}

/// Sends `signum` to this thread; it is handled before this returns.
fn raise(signum: i32) {
    // SAFETY: raise has no memory-safety preconditions.
    let rc = unsafe { libc::raise(signum) };
    assert_eq!(rc, 0);
}

/// Yields until the driver holds no op (an orphan's completion may need an iteration or two);
/// bounded in iterations, not time.
async fn settle(rt: &Runtime) {
    for _ in 0..1000 {
        if rt.stats().ops_in_flight == 0 {
            return;
        }
        yield_now().await;
    }
    panic!("ops still in flight: {:?}", rt.stats());
}

/// Whether another `recv` would have to wait (no delivery pending): a zero timeout around it.
/// Waits for `sig`'s next delivery, bounded: a broken `recv` fails the test instead of
/// hanging CI.
async fn delivered(sig: &mut Signal) {
    timeout(Duration::from_secs(30), sig.recv())
        .await
        .expect("no delivery within 30 s")
        .unwrap();
}

async fn nothing_pending(sig: &mut Signal) -> bool {
    matches!(timeout(Duration::ZERO, sig.recv()).await, Err(TimedOut))
}

#[test]
fn a_raised_sigusr1_wakes_a_task_waiting_in_recv() {
    let _serial = serial();
    each_backend(|rt, backend| {
        rt.block_on(async {
            let mut sig = signal(SignalKind::user_defined1()).unwrap();
            assert_eq!(sig.kind().as_raw(), libc::SIGUSR1);
            let waiter = spawn(async move {
                delivered(&mut sig).await;
                sig
            });
            yield_now().await; // 1. the waiter reads nothing and waits in an op
            assert_eq!(rt.stats().ops_in_flight, 1, "{backend}");
            raise(libc::SIGUSR1); // 2. the handler writes the waiter's eventfd
            let mut sig = waiter.await.unwrap(); // 3. the op completes
            assert!(nothing_pending(&mut sig).await, "{backend}");
            // And again: one wake per delivery.
            raise(libc::SIGUSR1);
            delivered(&mut sig).await;
        });
    });
}

#[test]
fn a_delivery_before_recv_is_awaited_is_not_lost() {
    let _serial = serial();
    each_backend(|rt, backend| {
        // Created outside the runtime, signalled before the loop runs.
        let mut sig = signal(libc::SIGURG).unwrap();
        raise(libc::SIGURG);
        rt.block_on(async {
            delivered(&mut sig).await;
            assert!(nothing_pending(&mut sig).await, "{backend}");
        });
    });
}

#[test]
fn deliveries_between_two_recvs_coalesce_into_one() {
    let _serial = serial();
    each_backend(|rt, backend| {
        rt.block_on(async {
            let mut sig = signal(libc::SIGCHLD).unwrap();
            raise(libc::SIGCHLD);
            raise(libc::SIGCHLD);
            raise(libc::SIGCHLD);
            delivered(&mut sig).await;
            assert!(nothing_pending(&mut sig).await, "{backend}");
        });
    });
}

#[test]
fn two_listeners_for_one_signal_both_see_one_delivery() {
    let _serial = serial();
    each_backend(|rt, backend| {
        rt.block_on(async {
            let mut a = signal(libc::SIGWINCH).unwrap();
            let mut b = signal(libc::SIGWINCH).unwrap();
            let wa = spawn(async move {
                delivered(&mut a).await;
                a
            });
            let wb = spawn(async move {
                delivered(&mut b).await;
                b
            });
            yield_now().await;
            assert_eq!(rt.stats().ops_in_flight, 2, "{backend}");
            raise(libc::SIGWINCH);
            let mut a = wa.await.unwrap();
            let mut b = wb.await.unwrap();
            assert!(nothing_pending(&mut a).await, "{backend}");
            assert!(nothing_pending(&mut b).await, "{backend}");
        });
    });
}

#[test]
fn a_process_directed_kill_reaches_listeners_on_two_runtime_threads() {
    let _serial = serial();
    for backend in common::backends() {
        // Both listeners exist before the kill (the barrier), so neither can miss it.
        let ready = Barrier::new(2);
        thread::scope(|s| {
            let other = s.spawn(|| {
                let rt = Runtime::builder().backend(backend).build().unwrap();
                let mut sig = signal(libc::SIGCONT).unwrap();
                ready.wait();
                rt.block_on(sig.recv()).unwrap();
            });
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let mut sig = signal(libc::SIGCONT).unwrap();
            ready.wait();
            // SAFETY: kill has no memory-safety preconditions.
            let rc = unsafe { libc::kill(libc::getpid(), libc::SIGCONT) };
            assert_eq!(rc, 0);
            rt.block_on(sig.recv()).unwrap();
            other.join().unwrap();
        });
    }
}

#[test]
fn cancelling_a_task_waiting_in_recv_resolves_it_to_cancelled_and_leaves_no_op_in_flight() {
    let _serial = serial();
    each_backend(|rt, backend| {
        rt.block_on(async {
            let mut sig = signal(libc::SIGURG).unwrap();
            let waiter = spawn(async move {
                let r = sig.recv().await;
                (r.map_err(|e| is_cancelled(&e)), sig)
            });
            yield_now().await; // 1. waiting in an op
            assert_eq!(rt.stats().ops_in_flight, 1, "{backend}");
            waiter.cancel(); // 2. cancelled in the kernel (io_uring) or at once (epoll)
            let (r, mut sig) = waiter.await.unwrap();
            assert_eq!(r, Err(true), "{backend}: the await resolves to Cancelled");
            // 3. The op's slot is gone as soon as the task has its answer.
            assert_eq!(rt.stats().ops_in_flight, 0, "{backend}");
            // 4. The listener still works.
            raise(libc::SIGURG);
            delivered(&mut sig).await;
        });
    });
}

#[test]
fn a_recv_future_dropped_in_flight_consumes_no_delivery() {
    let _serial = serial();
    each_backend(|rt, backend| {
        rt.block_on(async {
            let mut sig = signal(libc::SIGWINCH).unwrap();
            {
                // 1. Poll once, so that the wait is in flight, then drop it.
                let mut recv = pin!(sig.recv());
                std::future::poll_fn(|cx| {
                    assert!(recv.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
                assert_eq!(rt.stats().ops_in_flight, 1, "{backend}");
            }
            // 2. The delivery arrives while the dropped wait may still be in the kernel.
            raise(libc::SIGWINCH);
            // 3. It is there for the next recv.
            delivered(&mut sig).await;
            settle(rt).await;
        });
    });
}

#[test]
fn recv_works_when_descriptors_live_in_the_registered_file_table() {
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let _serial = serial();
    let rt = Runtime::builder()
        .backend(Backend::IoUring)
        .registered_fds(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut sig = signal(libc::SIGUSR1).unwrap();
        let waiter = spawn(async move { sig.recv().await });
        yield_now().await;
        raise(libc::SIGUSR1);
        waiter.await.unwrap().unwrap();
    });
    assert_eq!(rt.stats().ops_in_flight, 0);
}

static HITS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_hit(_: libc::c_int) {
    HITS.fetch_add(1, SeqCst);
}

/// The handler installed for `signum` now.
fn current_handler(signum: i32) -> libc::sighandler_t {
    // SAFETY: all-zero bytes are a valid `sigaction`; the kernel overwrites it.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `now` is a live local.
    let rc = unsafe { libc::sigaction(signum, std::ptr::null(), &mut now) };
    assert_eq!(rc, 0);
    now.sa_sigaction
}

#[test]
fn dropping_the_last_listener_restores_the_previous_handler() {
    let _serial = serial();
    let counting = count_hit as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // 1. A handler of the application's own.
    // SAFETY: all-zero bytes are a valid `sigaction` (empty mask, no flags).
    let mut custom: libc::sigaction = unsafe { std::mem::zeroed() };
    custom.sa_sigaction = counting;
    // SAFETY: as above; the kernel overwrites it.
    let mut original: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are live locals; `count_hit` only touches an atomic, so it is
    // async-signal-safe.
    let rc = unsafe { libc::sigaction(libc::SIGUSR2, &custom, &mut original) };
    assert_eq!(rc, 0);
    each_backend(|rt, backend| {
        let before = HITS.load(SeqCst);
        // 2. Two listeners replace it; dropping one leaves ringloop's handler in place.
        let first = signal(libc::SIGUSR2).unwrap();
        let mut second = signal(libc::SIGUSR2).unwrap();
        assert_ne!(current_handler(libc::SIGUSR2), counting, "{backend}");
        drop(first);
        assert_ne!(current_handler(libc::SIGUSR2), counting, "{backend}");
        raise(libc::SIGUSR2);
        rt.block_on(second.recv()).unwrap();
        assert_eq!(
            HITS.load(SeqCst),
            before,
            "{backend}: the replaced handler is not called"
        );
        // 3. The last one gone, the application's handler is back and gets the next delivery.
        drop(second);
        assert_eq!(current_handler(libc::SIGUSR2), counting, "{backend}");
        raise(libc::SIGUSR2);
        assert_eq!(HITS.load(SeqCst), before + 1, "{backend}");
    });
    // SAFETY: `original` is what `sigaction` gave back above.
    let rc = unsafe { libc::sigaction(libc::SIGUSR2, &original, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

#[test]
fn sigkill_and_the_signals_that_must_not_be_handled_are_refused() {
    let _serial = serial();
    let refused = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        0,
        -1,
        libc::SIGRTMAX() + 1,
        i32::MAX,
    ];
    for signum in refused {
        let err = signal(signum).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{signum}: {err}");
    }

    assert_eq!(current_handler(libc::SIGKILL), libc::SIG_DFL);
}

#[test]
fn the_listener_table_is_bounded_and_says_so() {
    let _serial = serial();
    // The C library's own signals (glibc's SIGCANCEL and SIGSETXID, just below SIGRTMIN) pass
    // our checks, but `sigaction` refuses them after a slot was taken: the slot must be freed
    // again, or the table below would hold fewer than MAX_LISTENERS.
    if cfg!(target_env = "gnu") {
        for signum in [32, 33] {
            let err = signal(signum).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{signum}: {err}");
        }
    }
    let mut listeners = Vec::new();
    let err = loop {
        match signal(libc::SIGURG) {
            Ok(s) => listeners.push(s),
            Err(e) => break e,
        }
        assert!(listeners.len() <= MAX_LISTENERS);
    };
    assert_eq!(listeners.len(), MAX_LISTENERS);
    assert!(err.to_string().contains("slots"), "{err}");
    // A freed slot can be used again.
    listeners.pop();
    listeners.push(signal(libc::SIGURG).unwrap());
    drop(listeners);
    let rt = Runtime::new().unwrap();
    let mut sig = signal(libc::SIGURG).unwrap();
    raise(libc::SIGURG);
    rt.block_on(sig.recv()).unwrap();
}

#[test]
fn recv_outside_a_runtime_is_an_error_not_a_panic() {
    let _serial = serial();
    let mut sig = signal(libc::SIGWINCH).unwrap();
    let mut recv = pin!(sig.recv());
    let mut cx = Context::from_waker(Waker::noop());
    match recv.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.to_string().contains("ringloop runtime"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
}
