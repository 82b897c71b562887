//! hyper's runtime traits on ringloop (`compat::hyper`): hyper's HTTP/1 and HTTP/2 servers and
//! clients, unmodified, over an in-memory pipe, on both backends; the executor's `!Send`
//! futures and task names; the timer's order against ringloop's own timers, its resets, its
//! drops (on this thread and on others) and its cancellation rule.
//!
//! The byte stream is `tokio::io::duplex` (which needs no tokio runtime) behind a small
//! test-only `hyper::rt::Read`/`Write` adapter, so nothing here depends on the sockets crate.
//! Tests assert what happened and in which order, never how long it took: a deadline far
//! beyond what the test needs only keeps a broken run from hanging.

#![cfg(feature = "hyper")]

mod common;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::rt::{Executor, Timer};
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use common::{backends, panic_text, Log};
use ringloop_runtime::compat::hyper::{HyperExecutor, HyperSleep, HyperTimer};
use ringloop_runtime::{
    current_stats, current_task, sleep, sleep_until, spawn, timeout, Backend, Cancelled, Runtime,
    TaskError,
};

/// Far beyond anything a test waits for: only there so that a broken run fails, not hangs.
const BOUND: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn runtime(backend: Backend) -> Runtime {
    Runtime::builder().backend(backend).build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The test-only byte stream
// ---------------------------------------------------------------------------------------------

/// One end of an in-memory pipe as hyper's `Read`/`Write` (a copy through a stack buffer, so
/// no `unsafe`; good enough for tests). Once its `frozen` flag is set, it neither reads nor
/// writes any more, and never wakes: a peer that has stopped answering.
struct Io(DuplexStream, Rc<Cell<bool>>);

fn pipe() -> (Io, Io) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Io(a, Rc::default()), Io(b, Rc::default()))
}

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.1.get() {
            return Poll::Pending;
        }
        let mut tmp = [0u8; 8192];
        let n = tmp.len().min(buf.remaining());
        let mut rb = tokio::io::ReadBuf::new(&mut tmp[..n]);
        match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(rb.filled());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.1.get() {
            return Poll::Pending;
        }
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Polls `fut` once from the running task (arming whatever it arms now, without yielding to
/// the loop) and returns what it gave.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

// ---------------------------------------------------------------------------------------------
// HTTP/1 server: header-read timeout and keep-alive
// ---------------------------------------------------------------------------------------------

/// A client that sends half a request head and then stalls is disconnected once the
/// header-read timeout passes: the server's connection future ends with hyper's timeout
/// error, and the client reads end-of-stream.
#[test]
fn header_read_timeout_closes_a_connection_that_stalls_in_the_head() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let (server_io, mut client) = pipe();
            let server = spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(HyperTimer)
                    .header_read_timeout(Duration::from_millis(20))
                    .serve_connection(server_io, service)
                    .await
            });
            client
                .0
                .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n")
                .await
                .unwrap();
            // Stall: read until the server hangs up.
            let mut got = Vec::new();
            let read = timeout(BOUND, client.0.read_to_end(&mut got)).await;
            assert!(
                matches!(read, Ok(Ok(_))),
                "{backend:?}: the server closed the connection: {read:?}"
            );
            let served = timeout(BOUND, server).await.expect("the server ended");
            let err = served.unwrap().expect_err("the head never completed");
            assert!(err.is_timeout(), "{backend:?}: {err:?}");
            assert_eq!(current_stats().timers_pending, 0, "{backend:?}");
        });
    }
}

/// Several requests, one after the other, on one connection (keep-alive): each is answered,
/// hyper resets its header-read timer for each (in place), and when the client goes the
/// server's connection ends cleanly with no timer left armed.
#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    const REQUESTS: usize = 5;
    for backend in backends() {
        runtime(backend).block_on(async {
            let (server_io, client_io) = pipe();
            let served = Rc::new(Cell::new(0)); // the service is !Send: fine on ringloop
            let counter = served.clone();
            let server = spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.set(counter.get() + 1);
                        let body = format!("{} #{}", req.uri().path(), counter.get());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                hyper::server::conn::http1::Builder::new()
                    .timer(HyperTimer)
                    .header_read_timeout(BOUND)
                    .keep_alive(true)
                    .serve_connection(server_io, service)
                    .await
            });

            let (mut sender, conn) = hyper::client::conn::http1::handshake(client_io)
                .await
                .unwrap();
            let conn = spawn(conn);
            for i in 1..=REQUESTS {
                sender.ready().await.unwrap();
                let req = Request::get(format!("/r{i}"))
                    .header("host", "example")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = timeout(BOUND, sender.send_request(req))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(resp.status().is_success());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, format!("/r{i} #{i}"), "{backend:?}");
                // A ringloop sleep between requests: the connection stays open meanwhile.
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(served.get(), REQUESTS);
            drop(sender);
            timeout(BOUND, conn).await.unwrap().unwrap().unwrap();
            let result = timeout(BOUND, server).await.unwrap().unwrap();
            assert!(result.is_ok(), "{backend:?}: {result:?}");
            assert_eq!(current_stats().timers_pending, 0, "{backend:?}");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: server and client on the executor
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 server and client over one connection, both on [`HyperExecutor`], with several
/// requests in flight at once. Each stream's service runs in a ringloop task named
/// `hyper.h2-stream`, and the service and its futures hold `Rc`s (`!Send`).
#[test]
fn http2_server_and_client_serve_concurrent_requests_on_the_executor() {
    const REQUESTS: usize = 8;
    for backend in backends() {
        runtime(backend).block_on(async {
            let (server_io, client_io) = pipe();
            let names = Rc::new(RefCell::new(Vec::<String>::new()));
            let in_flight = Rc::new(Cell::new(0usize));
            let most_in_flight = Rc::new(Cell::new(0usize));
            let (n, f, m) = (names.clone(), in_flight.clone(), most_in_flight.clone());
            let server = spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (n, f, m) = (n.clone(), f.clone(), m.clone());
                    async move {
                        n.borrow_mut().push(current_task().unwrap().name());
                        f.set(f.get() + 1);
                        m.set(m.get().max(f.get()));
                        // Answer only once every request has arrived: they are concurrent.
                        while m.get() < REQUESTS {
                            sleep(Duration::from_millis(1)).await.unwrap();
                        }
                        f.set(f.get() - 1);
                        let body = format!("echo {}", req.uri().path());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                hyper::server::conn::http2::Builder::new(HyperExecutor)
                    .timer(HyperTimer)
                    .keep_alive_interval(Duration::from_secs(30))
                    .serve_connection(server_io, service)
                    .await
            });

            let (sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
                .timer(HyperTimer)
                .handshake::<_, Empty<Bytes>>(client_io)
                .await
                .unwrap();
            let conn = spawn(conn);
            let requests: Vec<_> = (0..REQUESTS)
                .map(|i| {
                    let mut sender = sender.clone();
                    spawn(async move {
                        sender.ready().await.unwrap();
                        let req = Request::get(format!("http://example/{i}"))
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let resp = sender.send_request(req).await.unwrap();
                        resp.into_body().collect().await.unwrap().to_bytes()
                    })
                })
                .collect();
            for (i, req) in requests.into_iter().enumerate() {
                let body = timeout(BOUND, req).await.unwrap().unwrap();
                assert_eq!(body, format!("echo /{i}"), "{backend:?}");
            }
            assert_eq!(most_in_flight.get(), REQUESTS, "{backend:?}: all at once");
            let names = names.borrow().clone();
            assert_eq!(names.len(), REQUESTS);
            assert!(
                names.iter().all(|n| n == "hyper.h2-stream"),
                "{backend:?}: {names:?}"
            );

            drop(sender);
            timeout(BOUND, conn).await.unwrap().unwrap().unwrap();
            let result = timeout(BOUND, server).await.unwrap().unwrap();
            assert!(result.is_ok(), "{backend:?}: {result:?}");
            // The keep-alive timers of both ends went with their connections.
            assert_eq!(current_stats().timers_pending, 0, "{backend:?}");
        });
    }
}

/// HTTP/2 keep-alive runs on the timer: an idle connection whose peer answers the server's
/// pings stays open for many ping intervals, and once the peer stops answering, the server
/// drops the connection when the ping's timeout passes.
#[test]
fn http2_keep_alive_pings_keep_a_live_peer_and_drop_a_silent_one() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let (server_io, client_io) = pipe();
            let freeze = client_io.1.clone();
            let server = spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"pong"))))
                });
                hyper::server::conn::http2::Builder::new(HyperExecutor)
                    .timer(HyperTimer)
                    .keep_alive_interval(Duration::from_millis(2))
                    .keep_alive_timeout(Duration::from_millis(250))
                    .serve_connection(server_io, service)
                    .await
            });
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
                .timer(HyperTimer)
                .handshake::<_, Empty<Bytes>>(client_io)
                .await
                .unwrap();
            let _conn = spawn(conn);
            let get = || Request::get("http://example/").body(Empty::new()).unwrap();

            sender.send_request(get()).await.unwrap();
            // Idle for many ping intervals; the client's connection task answers the pings.
            sleep(Duration::from_millis(30)).await.unwrap();
            assert!(
                !server.is_done(),
                "{backend:?}: a peer that answers is kept"
            );
            let resp = sender.send_request(get()).await.unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "pong");

            // The peer goes silent: its next ping goes unanswered.
            freeze.set(true);
            let result = timeout(BOUND, server).await.unwrap().unwrap();
            let err = result.expect_err("the silent peer is dropped");
            assert!(err.is_timeout(), "{backend:?}: {err:?}");
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------------------------

/// `execute` spawns a detached task on this thread's runtime: the future may hold an `Rc`,
/// its output is dropped, and it runs to completion though nobody holds its handle.
#[test]
fn the_executor_runs_non_send_futures_as_named_detached_tasks() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let log = Log::default();
            let shared = Rc::new(RefCell::new(Vec::new()));
            let (l, s) = (log.clone(), shared.clone());
            HyperExecutor.execute(async move {
                l.push(current_task().unwrap().name());
                sleep(Duration::from_millis(1)).await.unwrap();
                s.borrow_mut().push("done");
                "an output nobody reads"
            });
            assert!(log.entries().is_empty(), "spawned, not run inline");
            let before = current_stats().tasks_completed;
            while shared.borrow().is_empty() {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(log.take(), ["hyper.task"]);
            sleep(Duration::ZERO).await.unwrap();
            assert_eq!(current_stats().tasks_completed, before + 1);
        });
    }
}

/// Outside a runtime there is nowhere to run the future: `execute` panics with the runtime's
/// usual message rather than dropping hyper's work.
#[test]
fn the_executor_outside_a_runtime_panics_with_a_clear_message() {
    let payload = std::panic::catch_unwind(|| HyperExecutor.execute(async {})).unwrap_err();
    let text = panic_text(&*payload);
    assert!(text.contains("ringloop runtime"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The timer
// ---------------------------------------------------------------------------------------------

/// hyper's sleeps and ringloop's share one heap and one clock: they end in deadline order,
/// ties in arming order, whichever kind each is, including sleeps whose deadline was reset
/// before their first poll and while armed.
#[test]
fn hyper_sleeps_and_ringloop_sleeps_end_in_deadline_order() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let log = Log::default();
            let base = Instant::now() + Duration::from_millis(5);
            let at = move |ms: u64| base + Duration::from_millis(ms);
            let mut tasks = Vec::new();
            let hyper_at = |name: &'static str, deadline: Instant| {
                let l = log.clone();
                spawn(async move {
                    HyperTimer.sleep_until(deadline).await;
                    l.push(name);
                })
            };
            let ringloop_at = |name: &'static str, deadline: Instant| {
                let l = log.clone();
                spawn(async move {
                    sleep_until(deadline).await.unwrap();
                    l.push(name);
                })
            };
            tasks.push(ringloop_at("r3", at(3)));
            tasks.push(hyper_at("h1", at(1)));
            tasks.push(ringloop_at("r4", at(4)));
            // Reset before its first poll, from late to early.
            let l = log.clone();
            tasks.push(spawn(async move {
                let mut s = HyperTimer.sleep_until(at(50));
                HyperTimer.reset(&mut s, at(2));
                s.await;
                l.push("h2");
            }));
            // Reset while armed, from early to late, re-aimed in place.
            let l = log.clone();
            tasks.push(spawn(async move {
                let mut s = HyperTimer.sleep_until(at(0));
                assert!(poll_once(&mut s).await.is_pending());
                let armed = current_stats().timers_pending;
                HyperTimer.reset(&mut s, at(5));
                assert_eq!(
                    current_stats().timers_pending,
                    armed,
                    "re-aimed, not re-armed"
                );
                s.await;
                l.push("h5");
            }));
            // A tie at 6: armed in this order.
            tasks.push(hyper_at("h6a", at(6)));
            tasks.push(ringloop_at("r6b", at(6)));
            tasks.push(hyper_at("h6c", at(6)));
            for t in tasks {
                timeout(BOUND, t).await.unwrap().unwrap();
            }
            assert_eq!(
                log.take(),
                ["h1", "h2", "r3", "r4", "h5", "h6a", "r6b", "h6c"],
                "{backend:?}"
            );
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// `reset` keeps the allocation hyper holds, and a reset sleep that had already ended waits
/// again, to its new deadline.
#[test]
fn reset_keeps_the_sleep_and_an_ended_sleep_waits_again() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let mut s = HyperTimer.sleep(Duration::from_millis(1));
            let addr = |s: &Pin<Box<dyn hyper::rt::Sleep>>| &**s as *const _ as *const ();
            let before = addr(&s);
            (&mut s).await;
            let again = Instant::now() + Duration::from_millis(50);
            HyperTimer.reset(&mut s, again);
            assert_eq!(addr(&s), before, "the same box");
            let ours = s.as_mut().downcast_mut_pin::<HyperSleep>().unwrap();
            assert_eq!(ours.deadline(), again);
            assert!(poll_once(&mut s).await.is_pending(), "waits again");
            assert_eq!(current_stats().timers_pending, 1);
            timeout(BOUND, &mut s).await.unwrap();
            assert!(Instant::now() >= again);
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// A hyper sleep dropped before it fires disarms its timer at once: no timer is pending.
#[test]
fn a_hyper_sleep_dropped_before_it_fires_leaves_no_timer_armed() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let mut s = HyperTimer.sleep(HOUR);
            assert_eq!(
                current_stats().timers_pending,
                0,
                "nothing before the first poll"
            );
            assert!(poll_once(&mut s).await.is_pending());
            assert_eq!(current_stats().timers_pending, 1);
            drop(s);
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// Counts the polls of the future it wraps.
struct Counted<F>(F, Rc<Cell<u32>>);

impl<F: Future + Unpin> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.1.set(self.1.get() + 1);
        Pin::new(&mut self.0).poll(cx)
    }
}

/// A future that ends once `flag` is set (by the test, which then wakes it).
fn until_set(flag: Rc<(Cell<bool>, RefCell<Option<Waker>>)>) -> impl Future<Output = ()> + Unpin {
    poll_fn(move |cx| {
        if flag.0.get() {
            return Poll::Ready(());
        }
        *flag.1.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
}

fn set(flag: &(Cell<bool>, RefCell<Option<Waker>>)) {
    flag.0.set(true);
    if let Some(w) = flag.1.borrow_mut().take() {
        w.wake();
    }
}

/// The timer of a dropped hyper sleep is kept for the next hyper sleep armed in the same task
/// poll (hyper drops its header timer and arms the next in one poll) and moved to the new
/// deadline, earlier or later: that sleep ends at its own deadline, woken once. In another
/// task, a dropped sleep's timer never wakes the task that dropped it.
#[test]
fn a_dropped_hyper_sleeps_timer_is_reused_and_wakes_only_the_new_sleeps_task() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let base = Instant::now();
            let at = move |ms: u64| base + Duration::from_millis(ms);
            // One task: dropped at 1 ms, the next at 30 ms (later: the old heap node moves
            // when it surfaces), then dropped at an hour, the next at 5 ms (earlier).
            for (first, second) in [(at(1), at(30)), (base + HOUR, at(5))] {
                let mut a = HyperTimer.sleep_until(first);
                assert!(poll_once(&mut a).await.is_pending());
                drop(a);
                let polls = Rc::new(Cell::new(0));
                let b = Counted(HyperTimer.sleep_until(second), polls.clone());
                timeout(BOUND, b).await.unwrap();
                assert!(Instant::now() >= second, "{backend:?}: ended early");
                assert_eq!(polls.get(), 2, "{backend:?}: armed, then woken once");
                assert_eq!(current_stats().timers_pending, 0);
            }
            // Two tasks that run in one loop iteration: A drops its sleep (due at 1 ms) and
            // waits for the flag; B arms its own (30 ms) in its poll after A's.
            let flag = Rc::new((Cell::new(false), RefCell::new(None)));
            let a_polls = Rc::new(Cell::new(0));
            let a = {
                let (flag, polls) = (flag.clone(), a_polls.clone());
                spawn(async move {
                    let mut s = HyperTimer.sleep_until(Instant::now() + Duration::from_millis(1));
                    assert!(poll_once(&mut s).await.is_pending());
                    drop(s);
                    Counted(until_set(flag), polls).await;
                })
            };
            let b_end = Instant::now() + Duration::from_millis(30);
            let b = spawn(async move {
                HyperTimer.sleep_until(b_end).await;
                Instant::now()
            });
            let ended = timeout(BOUND, b).await.unwrap().unwrap();
            assert!(ended >= b_end, "{backend:?}: B ended early");
            set(&flag);
            timeout(BOUND, a).await.unwrap().unwrap();
            assert_eq!(
                a_polls.get(),
                2,
                "{backend:?}: A was polled for its flag only, never woken by its old timer"
            );
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// A dropped hyper sleep's timer that no other sleep takes is gone when the task poll ends: it
/// never wakes the task that armed it.
#[test]
fn a_dropped_hyper_sleeps_timer_nobody_reuses_never_fires() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let flag = Rc::new((Cell::new(false), RefCell::new(None)));
            let polls = Rc::new(Cell::new(0));
            let task = {
                let (flag, polls) = (flag.clone(), polls.clone());
                spawn(async move {
                    let mut s = HyperTimer.sleep(Duration::from_millis(1));
                    assert!(poll_once(&mut s).await.is_pending());
                    drop(s);
                    Counted(until_set(flag), polls).await;
                })
            };
            // Well past the dropped sleep's deadline.
            sleep(Duration::from_millis(30)).await.unwrap();
            assert_eq!(
                polls.get(),
                1,
                "{backend:?}: woken by a dropped sleep's timer"
            );
            set(&flag);
            timeout(BOUND, task).await.unwrap().unwrap();
            assert_eq!(polls.get(), 2);
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// A sleep armed on runtime A, moved to another thread and dropped there, under runtime B or
/// under none: nothing crashes, B's timers are untouched (B's first timer has the same slot
/// and sequence number as A's), and A's heap stays consistent: the abandoned timer is removed
/// when it fires, and A's other timers run as usual.
#[test]
fn a_hyper_sleep_dropped_on_another_thread_touches_no_other_runtimes_timers() {
    for backend in backends() {
        let a = runtime(backend);
        let far = Instant::now() + Duration::from_millis(10);
        let (armed_on_a, also_armed_on_a) = a.block_on(async move {
            let mut s1 = HyperSleep::new(far);
            let mut s2 = HyperSleep::new(far);
            assert!(poll_once(&mut s1).await.is_pending());
            assert!(poll_once(&mut s2).await.is_pending());
            (s1, s2)
        });
        assert_eq!(a.stats().timers_pending, 2);

        // Dropped under runtime B, whose only timer is armed when the sleep is dropped.
        thread::spawn(move || {
            let b = runtime(backend);
            b.block_on(async move {
                let mut mine = pin!(sleep(Duration::from_millis(1)));
                assert!(poll_once(&mut mine).await.is_pending());
                assert_eq!(current_stats().timers_pending, 1);
                drop(armed_on_a);
                assert_eq!(
                    current_stats().timers_pending,
                    1,
                    "B's timer is still armed"
                );
                timeout(BOUND, mine).await.unwrap().unwrap();
            });
            assert_eq!(b.stats().timers_pending, 0);
        })
        .join()
        .unwrap();
        // Dropped on a thread with no runtime at all.
        thread::spawn(move || drop(also_armed_on_a)).join().unwrap();

        assert_eq!(
            a.stats().timers_pending,
            2,
            "out of reach, still armed on A"
        );
        a.block_on(async move {
            let mut ours = pin!(sleep_until(far + Duration::from_millis(1)));
            timeout(BOUND, &mut ours).await.unwrap().unwrap();
        });
        assert_eq!(a.stats().timers_pending, 0, "fired and gone");
    }
}

/// A sleep armed on runtime A and then polled on another thread's runtime B arms there and
/// ends by B's heap; A drops its abandoned timer when it fires.
#[test]
fn a_hyper_sleep_moved_to_another_runtime_ends_there() {
    for backend in backends() {
        let a = runtime(backend);
        let deadline = Instant::now() + Duration::from_millis(20);
        #[allow(clippy::async_yields_async)] // the sleep is carried out, to another thread
        let s = a.block_on(async move {
            let mut s = HyperSleep::new(deadline);
            assert!(poll_once(&mut s).await.is_pending());
            s
        });
        thread::spawn(move || {
            let b = runtime(backend);
            b.block_on(async move {
                let mut s = s;
                if poll_once(&mut s).await.is_pending() {
                    assert_eq!(current_stats().timers_pending, 1, "armed on B too");
                    timeout(BOUND, s).await.unwrap();
                } // else the deadline passed before B first polled it: no timer needed
                assert_eq!(current_stats().timers_pending, 0);
                assert!(Instant::now() >= deadline);
            });
            assert_eq!(b.stats().timers_pending, 0);
        })
        .join()
        .unwrap();
        a.block_on(async move {
            sleep_until(deadline + Duration::from_millis(1))
                .await
                .unwrap();
        });
        assert_eq!(a.stats().timers_pending, 0);
    }
}

/// Polled where no ringloop runtime runs, a sleep that has to arm its timer panics with the
/// runtime's usual message (as `sleep` does).
#[test]
fn a_hyper_sleep_polled_outside_a_runtime_panics_with_a_clear_message() {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut s = HyperTimer.sleep(HOUR);
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = s.as_mut().poll(&mut Context::from_waker(&waker));
    }))
    .unwrap_err();
    let text = panic_text(&*payload);
    assert!(text.contains("ringloop runtime"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

/// A task cancelled while it waits on a hyper sleep: the sleep neither completes nor takes
/// the request, and the next cancellation point the task reaches (here a ringloop sleep of an
/// hour, as hyper's read would be) sees the request at once.
#[test]
fn a_cancel_while_a_hyper_sleep_waits_is_left_for_the_next_cancellation_point() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let log = Log::default();
            let l = log.clone();
            let task = spawn(async move {
                let mut hs = HyperTimer.sleep(HOUR);
                let mut polls = 0;
                // Wait on the hyper sleep; when woken (by the cancel), look once more and move
                // on, as hyper moves on to its read after polling its timer.
                poll_fn(|cx| {
                    polls += 1;
                    let ready = hs.as_mut().poll(cx).is_ready();
                    l.push(format!("poll {polls}: hyper sleep ready: {ready}"));
                    if polls == 1 {
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await;
                let cancelling = current_task().unwrap().cancelling();
                l.push(format!("cancelling: {cancelling}"));
                let r = sleep(HOUR).await;
                l.push(format!("next sleep: {r:?}"));
                r
            });
            sleep(Duration::from_millis(1)).await.unwrap();
            task.cancel();
            let r = timeout(BOUND, task).await.unwrap();
            assert!(matches!(r, Err(TaskError::Cancelled(_))), "{r:?}");
            assert_eq!(
                log.take(),
                [
                    "poll 1: hyper sleep ready: false",
                    "poll 2: hyper sleep ready: false",
                    "cancelling: 1",
                    "next sleep: Err(Cancelled { message: None })",
                ],
                "{backend:?}"
            );
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}

/// Beside a cancellation point in the same poll (hyper polls its timer and its read
/// together), the request goes to the cancellation point and the hyper sleep stays pending.
#[test]
fn a_hyper_sleep_beside_a_cancellation_point_leaves_the_request_to_it() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let task = spawn(async {
                let mut hs = HyperTimer.sleep(HOUR);
                let mut point = pin!(sleep(HOUR));
                poll_fn(|cx| {
                    if hs.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok("the hyper sleep ended"));
                    }
                    match point.as_mut().poll(cx) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ok("the ringloop sleep ended")),
                        Poll::Ready(Err(c)) => Poll::Ready(Err::<&str, Cancelled>(c)),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            });
            sleep(Duration::from_millis(1)).await.unwrap();
            task.cancel();
            let r = timeout(BOUND, task).await.unwrap();
            assert!(
                matches!(r, Err(TaskError::Cancelled(_))),
                "{backend:?}: {r:?}"
            );
        });
    }
}

/// Suspended on nothing but a hyper sleep, a task cannot see its cancel request: the runtime
/// drops it, as it does a task suspended on any foreign future. The sleep never completed, and
/// its timer goes with it.
#[test]
fn a_task_suspended_only_on_a_hyper_sleep_is_dropped_when_cancelled() {
    for backend in backends() {
        runtime(backend).block_on(async {
            let ended = Rc::new(Cell::new(false));
            let e = ended.clone();
            let task = spawn(async move {
                HyperTimer.sleep(HOUR).await;
                e.set(true);
            });
            sleep(Duration::from_millis(1)).await.unwrap();
            assert_eq!(current_stats().timers_pending, 1);
            task.cancel();
            let r = timeout(BOUND, task).await.unwrap();
            assert!(
                matches!(r, Err(TaskError::Cancelled(_))),
                "{backend:?}: {r:?}"
            );
            assert!(!ended.get(), "the sleep did not complete");
            assert_eq!(current_stats().timers_pending, 0);
        });
    }
}
