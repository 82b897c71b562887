//! `Server::shutdown_on_signals` on both backends, with the signals sent while the loop is
//! parked in the kernel (`io_uring_enter` or `epoll_wait`): a `SIGTERM` to the process starts
//! the graceful stop, and a second signal aimed at the parked thread itself (its wait ends
//! with `EINTR`) makes it immediate.
//!
//! A binary of its own: it sends `SIGTERM` and `SIGINT`, which no other test may see. A signal
//! is only sent while a listener for it exists (the server waits for it), so the process is
//! never terminated by one.

mod common;

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{localhost, read_to_end, until};
use ringloop_net::{start_server, ShutdownSignal, TcpStream};
use ringloop_runtime::signal::SignalKind;
use ringloop_runtime::{sleep, spawn};

/// Longer than any test may take.
const NEVER: Duration = Duration::from_secs(3600);

/// The system calls the loop parks in.
fn parking_syscalls() -> Vec<i64> {
    let mut v = vec![libc::SYS_io_uring_enter, libc::SYS_epoll_pwait];
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    v.push(libc::SYS_epoll_wait);
    v
}

/// Whether thread `tid` of this process is blocked in one of [`parking_syscalls`], from
/// `/proc/self/task/TID/syscall` (its first field is the number of the system call the
/// thread is blocked in).
fn in_parking_syscall(tid: libc::pid_t) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return false;
    };
    let Some(nr) = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok())
    else {
        return false;
    };
    parking_syscalls().contains(&nr)
}

/// Waits (at most 30 s) until thread `tid` is parked: seen in a parking system call five
/// times in a row, a millisecond apart (a loop that only passes through one, to submit, is not
/// seen there five times running).
fn wait_until_parked(tid: libc::pid_t) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < 5 {
        assert!(Instant::now() < deadline, "the loop never parked");
        seen = if in_parking_syscall(tid) { seen + 1 } else { 0 };
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits (at most 30 s) until `flag` is set.
fn wait_for(flag: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the flag was never set");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Echoes until the client ends its side.
async fn echo(stream: TcpStream, _: ShutdownSignal) {
    loop {
        let (n, buf) = stream.read(vec![0u8; 4096]).await;
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(buf[..n].to_vec()).await.0.is_err() {
                    return;
                }
            }
        }
    }
}

both_backends! {
    async fn sigterm_while_the_loop_is_parked_starts_a_graceful_shutdown() {
        let server = start_server(localhost(), echo).unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let stopping = server.shutdown_on_signals(NEVER).unwrap();
        // A client that ends its side once the shutdown begins, and checks that what it sent
        // comes back in full before the server's end of stream.
        let client = spawn({
            let signal = server.shutdown_signal();
            async move {
                let c = TcpStream::connect(addr).await.unwrap();
                c.write_all(b"before the signal".as_slice()).await.0.unwrap();
                signal.wait().await.unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                read_to_end(&c).await
            }
        });
        assert!(until(|| server.connections() == 1).await);
        // Another thread sends SIGTERM to the process once this loop is parked.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let sender = thread::spawn(move || {
            wait_until_parked(tid);
            // SAFETY: kill has no memory-safety preconditions.
            assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        });
        let report = stopping.await.unwrap();
        sender.join().unwrap();
        assert_eq!(client.await.unwrap(), b"before the signal");
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 1);
        assert!(!server.is_serving());
        assert_eq!(
            TcpStream::connect(addr).await.unwrap_err().raw_os_error(),
            Some(libc::ECONNREFUSED)
        );
    }
}

both_backends! {
    async fn a_second_signal_at_the_parked_thread_makes_the_shutdown_immediate() {
        // A handler that hears the shutdown and keeps its connection anyway: only an
        // immediate stop ends it before the (hour-long) grace does.
        let began = Arc::new(AtomicBool::new(false));
        let server = start_server(localhost(), {
            let began = began.clone();
            move |_stream: TcpStream, shutdown: ShutdownSignal| {
                let began = began.clone();
                async move {
                    shutdown.wait().await.unwrap();
                    began.store(true, Ordering::SeqCst);
                    let _ = sleep(NEVER).await;
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let stopping = server.shutdown_on_signals(NEVER).unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| server.connections() == 1).await);
        // Both signals go to this very thread while it is parked: its wait in the kernel is
        // interrupted (EINTR) and the handler runs on it.
        // SAFETY: gettid and pthread_self have no preconditions.
        let (tid, me) = unsafe { (libc::gettid(), libc::pthread_self()) };
        let sender = thread::spawn(move || {
            wait_until_parked(tid);
            // SAFETY: `me` is a live thread (it waits for this one to be joined).
            assert_eq!(unsafe { libc::pthread_kill(me, libc::SIGTERM) }, 0);
            wait_for(&began);
            wait_until_parked(tid);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::pthread_kill(me, libc::SIGINT) }, 0);
        });
        let report = stopping.await.unwrap();
        sender.join().unwrap();
        assert!(report.immediate, "{report:?}");
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 0, 1), "{report:?}");
        assert_eq!(server.connections(), 0);
        // Dropped, its socket closed: the client sees the end of the stream.
        assert_eq!(read_to_end(&client).await, b"");
    }
}

both_backends! {
    async fn shutdown_on_needs_a_signal_and_takes_any_kind() {
        let server = start_server(localhost(), echo).unwrap();
        let err = server.shutdown_on([], NEVER).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        // SIGKILL cannot be caught: refused up front.
        assert!(server.shutdown_on([SignalKind::from_raw(libc::SIGKILL)], NEVER).is_err());
        let stopping = server.shutdown_on([SignalKind::user_defined2()], NEVER).unwrap();
        // SAFETY: raise has no memory-safety preconditions; a listener for SIGUSR2 exists.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let report = stopping.await.unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert!(!server.is_serving());
    }
}
