//! Drop-in-flight: an op's future is dropped (or its task aborted) while the kernel still holds
//! the op, on both backends.
//!
//! What must hold (ARCHITECTURE.md, "Ops and their memory"):
//!
//! * on io_uring the op's buffer and descriptor outlive the future: they move into an orphaned
//!   slot with an `ASYNC_CANCEL`, and are freed exactly once, when the op's own completion
//!   arrives; on epoll nothing is in the kernel, so they may go at once — exactly once too;
//! * an orphaned accept whose connection arrived closes the new descriptor;
//! * afterwards `ops_in_flight` is 0 and the process's descriptor count is back at its baseline.
//!
//! The buffer is [`common::CountedBuf`], which counts its drops. Descriptor counts are process-wide,
//! so every test here takes [`common::serial`]'s lock and runs both backends one after the other.

mod common;

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use common::{
    backends, fd_count, leaked_fds, localhost, open_fds, read_to_end, runtime, serial, tick, until,
    CountedBuf,
};
use ringloop_net::{TcpListener, TcpStream};
use ringloop_runtime::{sleep, spawn, Backend, Runtime};

/// Runs `test` on a fresh runtime of each backend, one after the other, then checks what must
/// hold after every test: no op in flight, no task alive, and no descriptor left open (the
/// runtime's own included, once it is dropped).
fn on_both_backends(test: impl Fn(&Runtime)) {
    let _serial = serial();
    for backend in backends() {
        let fds_before = open_fds();
        {
            let rt = runtime(backend);
            test(&rt);
            let stats = rt.stats();
            assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
            assert_eq!(stats.tasks_alive, 0, "{backend}: {stats:?}");
            assert_eq!(stats.timers_pending, 0, "{backend}: {stats:?}");
        }
        let leaked = leaked_fds(&fds_before);
        assert!(
            leaked.is_empty(),
            "{backend}: descriptors leaked: {leaked:?}"
        );
    }
}

/// Polls `fut` exactly once, from the current task.
async fn poll_once<F: Future + ?Sized>(fut: &mut Pin<Box<F>>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// A listener and a connection through it (client, server side).
async fn connected() -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (listener, client, server)
}

/// Sends 256 KiB counted buffers to a peer that never reads until one send stays pending (both
/// socket buffers are full); returns how many completed and the pending send's future.
async fn send_until_one_stays_pending<'a>(
    server: &'a TcpStream,
    drops: &Rc<Cell<usize>>,
) -> (
    usize,
    Pin<Box<impl Future<Output = (std::io::Result<usize>, CountedBuf)> + 'a>>,
) {
    let mut completed = 0;
    for _ in 0..1000 {
        let mut send = Box::pin(server.write(CountedBuf::filled(256 * 1024, drops)));
        let mut done = poll_once(&mut send).await;
        if done.is_pending() {
            // Give the kernel a couple of iterations to take it.
            tick().await;
            tick().await;
            done = poll_once(&mut send).await;
        }
        match done {
            Poll::Ready((r, buf)) => {
                assert!(r.unwrap() > 0);
                drop(buf);
                completed += 1;
            }
            Poll::Pending => return (completed, send),
        }
    }
    panic!("no send ever stayed pending");
}

/// Blocks (bounded, without the loop) until `fd` is readable: data queued on a socket, or a
/// connection waiting in a listener's accept queue.
fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd; the timeout is only a guard against a hang.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "descriptor {fd} never became readable");
}

/// Whether `fd` is readable right now.
fn is_readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, no wait.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

#[test]
fn recv_future_dropped_in_flight_keeps_buffer_until_completion() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let (listener, client, server) = connected().await;
            let drops = Rc::new(Cell::new(0));
            let mut recv = Box::pin(server.read(CountedBuf::empty(4096, &drops)));
            assert!(poll_once(&mut recv).await.is_pending());
            // One iteration: io_uring hands the SQE to the kernel, which now holds the buffer.
            tick().await;
            assert!(poll_once(&mut recv).await.is_pending());
            assert_eq!(rt.stats().ops_in_flight, 1);

            drop(recv);
            if uring {
                // The kernel may still write into it: it must not be freed yet.
                assert_eq!(drops.get(), 0, "buffer freed while the kernel holds it");
                assert_eq!(rt.stats().ops_in_flight, 1, "the orphan keeps its slot");
            } else {
                assert_eq!(
                    drops.get(),
                    1,
                    "epoll: nothing in the kernel, freed at once"
                );
            }
            assert!(until(|| drops.get() == 1).await, "buffer never freed");
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            for _ in 0..5 {
                tick().await;
            }
            assert_eq!(drops.get(), 1, "freed exactly once");

            // The cancelled recv took nothing: the next read gets what the client sends.
            let (r, _) = client.write_all(b"after".as_slice()).await;
            r.unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(read_to_end(&server).await, b"after");
            drop((listener, client, server));
            assert_eq!(fd_count(), base);
        });
    });
}

#[test]
fn recv_task_aborted_in_flight_keeps_buffer_until_completion() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let (listener, client, server) = connected().await;
            let drops = Rc::new(Cell::new(0));
            let d = drops.clone();
            let reader = spawn(async move {
                let (_r, _buf) = server.read(CountedBuf::empty(4096, &d)).await;
                unreachable!("the read never completes: nobody writes");
            });
            assert!(until(|| rt.stats().ops_in_flight == 1).await);
            tick().await; // the kernel holds it

            reader.abort();
            assert!(until(|| reader.is_done()).await);
            assert!(reader.is_cancelled());
            if uring {
                assert_eq!(drops.get(), 0, "buffer freed while the kernel holds it");
            }
            assert!(until(|| drops.get() == 1).await, "buffer never freed");
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            for _ in 0..5 {
                tick().await;
            }
            assert_eq!(drops.get(), 1, "freed exactly once");
            drop((listener, client));
            // The aborted task's socket was closed with it (once its op completed).
            assert_eq!(fd_count(), base);
        });
    });
}

/// A dropped recv racing data that arrives:
///
/// 1. the recv is in flight;
/// 2. its future is dropped (orphaned, cancel queued);
/// 3. data arrives in the same iteration, before the cancel reaches the kernel;
/// 4. whichever wins, the orphan's buffer was alive for the kernel to write, and is freed
///    exactly once.
#[test]
fn recv_orphan_racing_arriving_data_writes_into_live_buffer() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::bind(localhost()).unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let drops = Rc::new(Cell::new(0));

            // 1. The recv is in flight.
            let mut recv = Box::pin(server.read(CountedBuf::empty(4096, &drops)));
            assert!(poll_once(&mut recv).await.is_pending());
            tick().await;
            // 2. Its future is dropped.
            drop(recv);
            // 3. Data arrives before the loop runs again.
            client.write_all(b"data").unwrap();
            wait_readable(server.as_raw_fd());
            // 4. The completion (data or ECANCELED) frees the buffer, once.
            assert!(until(|| drops.get() == 1).await, "buffer never freed");
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            for _ in 0..5 {
                tick().await;
            }
            assert_eq!(drops.get(), 1, "freed exactly once");

            client.write_all(b"tail").unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let got = read_to_end(&server).await;
            if uring {
                // The op won (the orphan swallowed "data", as a dropped read may) or the cancel
                // did (the data is still there); nothing else.
                assert!(got == b"datatail" || got == b"tail", "{got:?}");
                eprintln!(
                    "io_uring: the {} won the race",
                    if got == b"tail" { "recv" } else { "cancel" }
                );
            } else {
                assert_eq!(got, b"datatail");
            }
            drop((listener, client, server));
            assert_eq!(fd_count(), base);
        });
    });
}

#[test]
fn send_future_dropped_in_flight_keeps_buffer_until_completion() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            // The client never reads: the server's sends fill both socket buffers, then one
            // stays pending.
            let (listener, client, server) = connected().await;
            let drops = Rc::new(Cell::new(0));
            let (completed, send) = send_until_one_stays_pending(&server, &drops).await;
            assert!(completed > 0, "the first sends fill the buffers");
            assert_eq!(drops.get(), completed);
            assert_eq!(rt.stats().ops_in_flight, 1);

            drop(send);
            if uring {
                assert_eq!(
                    drops.get(),
                    completed,
                    "buffer freed while the kernel holds it"
                );
            } else {
                assert_eq!(drops.get(), completed + 1);
            }
            assert!(
                until(|| drops.get() == completed + 1).await,
                "buffer never freed"
            );
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            for _ in 0..5 {
                tick().await;
            }
            assert_eq!(drops.get(), completed + 1, "freed exactly once");
            drop((listener, client, server));
            assert_eq!(fd_count(), base);
        });
    });
}

#[test]
fn accept_future_dropped_in_flight() {
    on_both_backends(|rt| {
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::bind(localhost()).unwrap();
            let mut accept = Box::pin(listener.accept());
            assert!(poll_once(&mut accept).await.is_pending());
            tick().await;
            assert_eq!(rt.stats().ops_in_flight, 1);
            drop(accept);
            assert!(until(|| rt.stats().ops_in_flight == 0).await);

            // The listener still works: the connection that comes next is accepted.
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            drop((listener, client, server));
            assert_eq!(fd_count(), base);
        });
    });
}

/// An orphaned accept whose connection arrived closes the new descriptor.
#[test]
fn accept_orphan_closes_the_connection_that_arrived() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();

            // 1. The accept is in flight: polled once, then handed to the kernel.
            let mut accept = Box::pin(listener.accept());
            assert!(poll_once(&mut accept).await.is_pending());
            tick().await;

            // 2. A client connects; the connection is in the accept queue.
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            wait_readable(listener.as_raw_fd());
            let with_client = fd_count();

            // 3. One iteration passes (io_uring reaps the accept's completion: a new descriptor
            //    exists), and the accept future is dropped before it is polled again.
            tick().await;
            if uring {
                assert_eq!(
                    fd_count(),
                    with_client + 1,
                    "the accepted descriptor exists"
                );
            }
            drop(accept);

            // 4. The orphan is finished: its new descriptor is closed, and the count is back.
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            assert_eq!(
                fd_count(),
                with_client,
                "the orphaned accept leaked its descriptor"
            );
            if uring {
                // The server side was accepted, then closed: the client sees end of stream.
                client
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut byte = [0u8; 1];
                assert_eq!(client.read(&mut byte).unwrap(), 0);
            } else {
                // epoll took nothing from the kernel: the connection is still waiting.
                let (server, peer) = listener.accept().await.unwrap();
                assert_eq!(peer, client.local_addr().unwrap());
                drop(server);
            }
            drop((listener, client));
            assert_eq!(fd_count(), base);
        });
    });
}

/// As above, but the accept future is dropped before the loop reaps anything: the cancel and
/// the arriving connection race in the kernel. Either way nothing leaks.
#[test]
fn accept_orphan_racing_arriving_connection_leaks_nothing() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();

            // 1. The accept is in flight.
            let mut accept = Box::pin(listener.accept());
            assert!(poll_once(&mut accept).await.is_pending());
            tick().await;
            // 2. A client connects.
            let client = std::net::TcpStream::connect(addr).unwrap();
            wait_readable(listener.as_raw_fd());
            let with_client = fd_count();
            // 3. The accept future is dropped in the same iteration.
            drop(accept);
            // 4. Whichever won, no descriptor is left behind.
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            assert_eq!(fd_count(), with_client);
            let still_queued = is_readable(listener.as_raw_fd());
            if uring {
                eprintln!(
                    "io_uring: the {} won the race",
                    if still_queued { "cancel" } else { "accept" }
                );
            } else {
                assert!(still_queued, "epoll never accepts for a dropped future");
            }
            if still_queued {
                let (server, _) = listener.accept().await.unwrap();
                drop(server);
            }
            drop((listener, client));
            assert_eq!(fd_count(), base);
        });
    });
}

/// A connect to a listener whose accept queue is full stays in flight (its SYNs are dropped).
#[test]
fn connect_future_dropped_in_flight_keeps_socket_until_completion() {
    on_both_backends(|rt| {
        let uring = rt.backend() == Backend::IoUring;
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::builder(localhost()).backlog(0).bind().unwrap();
            let addr = listener.local_addr().unwrap();
            // Fill the accept queue (never accepted), until a connect stays pending.
            let mut connected = Vec::new();
            let mut pending = None;
            for _ in 0..16 {
                let mut connect = Box::pin(TcpStream::connect(addr));
                let mut done = poll_once(&mut connect).await;
                if done.is_pending() {
                    for _ in 0..3 {
                        tick().await;
                    }
                    done = poll_once(&mut connect).await;
                }
                match done {
                    Poll::Ready(stream) => connected.push(stream.unwrap()),
                    Poll::Pending => {
                        pending = Some(connect);
                        break;
                    }
                }
            }
            let connect = pending.expect("no connect stayed pending behind a full backlog");
            assert_eq!(rt.stats().ops_in_flight, 1);
            let with_socket = fd_count();

            drop(connect);
            if uring {
                // The op holds the socket open until its completion arrives.
                assert_eq!(
                    fd_count(),
                    with_socket,
                    "socket closed while the kernel holds it"
                );
            } else {
                assert_eq!(fd_count(), with_socket - 1);
            }
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            assert_eq!(fd_count(), with_socket - 1);
            drop((listener, connected));
            assert_eq!(fd_count(), base);
        });
    });
}

#[test]
fn connect_future_dropped_right_after_first_poll() {
    on_both_backends(|rt| {
        rt.block_on(async {
            let base = fd_count();
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            for _ in 0..20 {
                let mut connect = Box::pin(TcpStream::connect(addr));
                if let Poll::Ready(stream) = poll_once(&mut connect).await {
                    drop(stream.unwrap());
                }
                drop(connect);
            }
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            // Drain what made it into the accept queue.
            while is_readable(listener.as_raw_fd()) {
                drop(listener.accept().await.unwrap());
            }
            drop(listener);
            assert_eq!(fd_count(), base);
        });
    });
}

#[test]
fn sleep_dropped_in_flight_disarms_its_timer() {
    on_both_backends(|rt| {
        rt.block_on(async {
            let timers = rt.stats().timers_pending;
            let mut nap = Box::pin(sleep(Duration::from_secs(3600)));
            assert!(poll_once(&mut nap).await.is_pending());
            assert_eq!(rt.stats().timers_pending, timers + 1);
            drop(nap);
            assert_eq!(rt.stats().timers_pending, timers);

            let sleeper = spawn(async {
                sleep(Duration::from_secs(3600)).await.unwrap();
                unreachable!("aborted first");
            });
            assert!(until(|| rt.stats().timers_pending == timers + 1).await);
            sleeper.abort();
            assert!(until(|| sleeper.is_done()).await);
            assert!(sleeper.is_cancelled());
            assert_eq!(rt.stats().timers_pending, timers);
        });
    });
}

/// Thousands of recvs in flight on one socket, all aborted at once: more SQEs (recvs, then
/// cancels) than the SQ holds (1024), so the submit-when-full path runs for both, and up to
/// two completions each (an `ECANCELED` and a cancel result), which may exceed the CQ (8192;
/// on Linux 6.18 the kernel posts them in batches and it did not overflow). Every buffer is
/// freed exactly once: no completion and no cancel is lost.
#[test]
fn thousands_of_recvs_aborted_at_once_lose_no_completion() {
    const N: usize = 5000;
    on_both_backends(|rt| {
        rt.block_on(async {
            let base = fd_count();
            let (listener, client, server) = connected().await;
            let server = Rc::new(server);
            let drops = Rc::new(Cell::new(0));
            let readers: Vec<_> = (0..N)
                .map(|_| {
                    let server = server.clone();
                    let d = drops.clone();
                    spawn(async move {
                        let (_r, _buf) = server.read(CountedBuf::empty(64, &d)).await;
                        unreachable!("nobody writes");
                    })
                })
                .collect();
            assert!(until(|| rt.stats().ops_in_flight == N as u64).await);
            tick().await;
            for r in &readers {
                r.abort();
            }
            assert!(until(|| readers.iter().all(|r| r.is_done())).await);
            assert!(
                until(|| drops.get() == N).await,
                "{} of {N} freed",
                drops.get()
            );
            assert!(until(|| rt.stats().ops_in_flight == 0).await);
            for _ in 0..5 {
                tick().await;
            }
            assert_eq!(drops.get(), N, "each freed exactly once");
            drop((readers, listener, client, server));
            assert_eq!(fd_count(), base);
        });
    });
}

/// A runtime dropped while a task's recv is in flight cancels it and reaps its completion
/// before the ring goes: the buffer is freed once and the socket closed.
#[test]
fn runtime_dropped_with_recv_in_flight_frees_buffer_and_socket() {
    let _serial = serial();
    for backend in backends() {
        let base = fd_count();
        let drops = Rc::new(Cell::new(0));
        {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let d = drops.clone();
            rt.run_until_complete(async move {
                let (listener, client, server) = connected().await;
                spawn(async move {
                    let _keep = (listener, client);
                    let (_r, _buf) = server.read(CountedBuf::empty(4096, &d)).await;
                    unreachable!("nobody writes");
                });
                for _ in 0..3 {
                    tick().await;
                }
            });
            assert_eq!(rt.stats().ops_in_flight, 1, "{backend}");
            assert_eq!(drops.get(), 0, "{backend}");
        }
        assert_eq!(drops.get(), 1, "{backend}: buffer not freed exactly once");
        assert_eq!(fd_count(), base, "{backend}: a descriptor leaked");
    }
}

/// A socket that waited on the loop is dropped outside the runtime (between two `block_on`s),
/// where no driver can be told; its descriptor number is then reused by a new socket, which
/// must still be woken when it becomes ready.
#[test]
fn descriptor_number_reused_after_a_drop_outside_the_runtime() {
    on_both_backends(|rt| {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let old = rt.block_on(async {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            // The server waits for readability once (on epoll: registers its descriptor).
            let reader = spawn(async move {
                let (n, _) = server.read(vec![0u8; 16]).await;
                assert_eq!(n.unwrap(), 2);
                server
            });
            for _ in 0..3 {
                tick().await;
            }
            let (r, _) = client.write_all(b"hi".as_slice()).await;
            r.unwrap();
            (client, reader.await.unwrap())
        });
        let old_fds = [old.0.as_raw_fd(), old.1.as_raw_fd()];
        // Dropped outside the runtime: no driver to tell.
        drop(old);
        rt.block_on(async {
            // Bounded: a socket that is never woken must fail the test, not hang it.
            let body = spawn(async move {
                let client = TcpStream::connect(addr).await.unwrap();
                let (server, _) = listener.accept().await.unwrap();
                assert!(
                    old_fds.contains(&server.as_raw_fd()),
                    "descriptor numbers {old_fds:?} not reused: the test proves nothing"
                );
                let reader = spawn(async move {
                    let (n, _) = server.read(vec![0u8; 16]).await;
                    n.unwrap()
                });
                for _ in 0..3 {
                    tick().await;
                }
                let (r, _) = client.write_all(b"hi".as_slice()).await;
                r.unwrap();
                reader.await.unwrap()
            });
            let woken = until(|| body.is_done()).await;
            if !woken {
                body.abort();
            }
            assert!(
                woken,
                "{}: a socket that reused a descriptor number was never woken",
                rt.backend()
            );
            assert_eq!(body.await.unwrap(), 2);
        });
    });
}

/// A zero-copy send (`Builder::zero_copy_send`, io_uring) dropped in flight: its buffer stays
/// alive through both of its completions (the result, then the notification that the kernel
/// no longer reads it). Pages of a zero-copy send stay referenced by data the peer has not read,
/// so here the buffer lives until the connection closes, and is then freed exactly once.
#[test]
fn zero_copy_send_dropped_in_flight_keeps_buffer_until_notification() {
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let _serial = serial();
    let fds_before = open_fds();
    let rt = Runtime::builder()
        .backend(Backend::IoUring)
        .zero_copy_send(true)
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(ringloop_runtime::zero_copy_send());
        let (listener, client, server) = connected().await;
        let drops = Rc::new(Cell::new(0));
        let (completed, send) = send_until_one_stays_pending(&server, &drops).await;
        assert_eq!(
            drops.get(),
            completed,
            "completed sends gave their buffers back"
        );
        drop(send);
        assert_eq!(
            drops.get(),
            completed,
            "buffer freed while the kernel holds it"
        );
        // With zero copy the kernel reads our pages in place: data the peer has not read yet
        // still references them, so the buffer must outlive the dropped future for as long as
        // the connection holds that data.
        for _ in 0..20 {
            tick().await;
        }
        assert_eq!(
            drops.get(),
            completed,
            "buffer freed while unread data references it"
        );
        drop((listener, client, server));
        assert!(
            until(|| drops.get() == completed + 1).await,
            "buffer never freed after the connection closed"
        );
        for _ in 0..5 {
            tick().await;
        }
        assert_eq!(drops.get(), completed + 1, "freed exactly once");
    });
    let stats = rt.stats();
    assert_eq!(stats.ops_in_flight, 0, "{stats:?}");
    assert!(stats.zero_copy_notifications > 0, "{stats:?}");
    drop(rt);
    let leaked = leaked_fds(&fds_before);
    assert!(leaked.is_empty(), "descriptors leaked: {leaked:?}");
}
