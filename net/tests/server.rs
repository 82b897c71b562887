//! `Server` on both backends: serving, `close` (and the connections already in the kernel's
//! queue), `wait_closed`, `close_clients` / `abort_clients`, and `shutdown(grace)`: under load
//! with every byte accounted for, with handlers that end on the signal, answer their cancel,
//! ignore it, or sit in a foreign future.

mod common;

use std::cell::Cell;
use std::future::pending;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{localhost, read_to_end, until};
use ringloop_net::{
    start_server, start_unix_server, IoBuf, Server, ShutdownSignal, TcpListener, TcpStream,
    UnixListener, UnixStream, GRACE_OVER,
};
use ringloop_runtime::sync::Semaphore;
use ringloop_runtime::{gather, is_cancelled, sleep, spawn, timeout, yield_now, Task};

/// Longer than any test may take: a grace that only a bug would reach.
const NEVER: Duration = Duration::from_secs(3600);

/// The echo handler of these tests: echoes until the client ends its side. Cancelled (at the
/// end of a shutdown's grace), it finishes the write it was in, shuts down its write side and
/// reads what is left, so the client sees a clean end of stream rather than a reset.
async fn echo(stream: TcpStream, _shutdown: ShutdownSignal) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, b) = stream.read(buf).await;
        buf = b;
        let n = match n {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if is_cancelled(&e) => break,
            Err(_) => return,
        };
        let (r, b) = stream.write_all(buf.slice(..n)).await;
        buf = b.into_inner();
        match r {
            Ok(()) => {}
            Err(e) if is_cancelled(&e.error) => {
                // Cancelled mid-write: the rest of this chunk still goes out.
                let rest = buf[e.sent..n].to_vec();
                if stream.write_all(rest).await.0.is_err() {
                    return;
                }
                break;
            }
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let _ = read_to_end_lossy(&stream).await;
}

/// Reads to the end of the stream (or the first error), discarding.
async fn read_to_end_lossy(stream: &TcpStream) -> io::Result<()> {
    loop {
        let (n, _) = stream.read(vec![0u8; 4096]).await;
        if n? == 0 {
            return Ok(());
        }
    }
}

/// The byte at offset `pos` of connection `id`'s stream.
fn byte_at(id: usize, pos: u64) -> u8 {
    ((pos.wrapping_mul(31)).wrapping_add(id as u64 * 7) % 251) as u8
}

/// How a load client's connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of stream: the server closed with a FIN.
    Fin,
    /// `ECONNRESET`.
    Reset,
    /// Another error, or a wrong byte.
    Other(String),
}

/// What one load client saw.
#[derive(Debug)]
struct Outcome {
    sent: u64,
    echoed: u64,
    end: End,
}

/// A client under load: a writer sends 1 KiB chunks with at most `WINDOW` unechoed, a reader
/// verifies every echoed byte. When `stop` is set the writer sends nothing more and ends its
/// side; the reader reads to the server's end of stream.
async fn load_client(addr: SocketAddr, id: usize, stop: Rc<Cell<bool>>) -> Outcome {
    const CHUNK: usize = 1024;
    const WINDOW: usize = 8;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, wr) = stream.into_split();
    let window = Rc::new(Semaphore::new(WINDOW));
    let sent = Rc::new(Cell::new(0u64));
    let writer = spawn({
        let (window, sent) = (window.clone(), sent.clone());
        async move {
            let mut chunk = vec![0u8; CHUNK];
            loop {
                window.acquire().await.unwrap().forget();
                if stop.get() {
                    return; // dropping `wr` ends our side
                }
                let base = sent.get();
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = byte_at(id, base + i as u64);
                }
                let (r, c) = wr.write_all(chunk).await;
                chunk = c;
                r.unwrap();
                sent.set(base + CHUNK as u64);
            }
        }
    });
    let mut echoed = 0u64;
    let end = loop {
        let (n, buf) = rd.read(vec![0u8; 4096]).await;
        match n {
            Ok(0) => break End::Fin,
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != byte_at(id, echoed + i as u64)) {
                    break End::Other(format!("wrong byte at {}", echoed + i as u64));
                }
                let before = echoed / CHUNK as u64;
                echoed += n as u64;
                window.add_permits((echoed / CHUNK as u64 - before) as usize);
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => break End::Reset,
            Err(e) => break End::Other(e.to_string()),
        }
    };
    writer.await.unwrap();
    Outcome {
        sent: sent.get(),
        echoed,
        end,
    }
}

both_backends! {
    async fn shutdown_under_load_loses_no_byte_and_resets_no_connection() {
        const CLIENTS: usize = 64;
        let server = start_server(localhost(), echo).unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let stop = Rc::new(Cell::new(false));
        let clients: Vec<Task<Outcome>> = (0..CLIENTS)
            .map(|id| spawn(load_client(addr, id, stop.clone())))
            .collect();
        // 1. Every connection is open and has data in flight.
        assert!(until(|| server.connections() == CLIENTS).await);
        for _ in 0..20 {
            yield_now().await.unwrap();
        }
        // 2. The shutdown begins while every client is sending. Once it has (the handlers'
        //    signal is set), the clients stop, end their side, and read until the server's
        //    end of stream. (Stopping them first could let some handlers see their end of
        //    stream and finish before the shutdown began.)
        let shutdown = spawn({
            let server = server.clone();
            async move { server.shutdown(NEVER).await }
        });
        assert!(until(|| server.shutdown_signal().is_set()).await);
        assert_eq!(server.connections(), CLIENTS);
        stop.set(true);
        let outcomes = gather(clients).await.unwrap();
        let report = shutdown.await.unwrap().unwrap();
        // 3. Every byte sent came back, every connection ended with a FIN, and every handler
        //    ended within the grace, on its own.
        for (id, o) in outcomes.iter().enumerate() {
            assert_eq!(o.end, End::Fin, "connection {id}: {o:?}");
            assert_eq!(o.echoed, o.sent, "connection {id}: {o:?}");
        }
        assert!(outcomes.iter().all(|o| o.sent > 0));
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, CLIENTS);
        assert_eq!(server.connections(), 0);
        assert_eq!(server.accepted_total(), CLIENTS as u64);
        assert_eq!(server.closed_total(), CLIENTS as u64);
        assert!(!server.is_serving());
        assert!(server.sockets().is_empty());
        // 4. The listening socket refuses new connections.
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}

both_backends! {
    async fn handlers_that_watch_the_shutdown_signal_finish_within_the_grace() {
        let server = start_server(localhost(), |stream: TcpStream, shutdown: ShutdownSignal| async move {
            assert!(!shutdown.is_set());
            assert_eq!(shutdown.deadline(), None);
            shutdown.wait().await.unwrap();
            assert!(shutdown.deadline().is_some());
            let _ = stream.write_all(b"bye".as_slice()).await;
            let _ = stream.shutdown(Shutdown::Write);
            let _ = read_to_end_lossy(&stream).await;
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| server.connections() == 2).await);
        assert!(!server.shutdown_signal().is_set());
        let shutdown = spawn({
            let server = server.clone();
            async move { server.shutdown(NEVER).await }
        });
        for c in [&a, &b] {
            assert_eq!(read_to_end(c).await, b"bye");
        }
        drop((a, b));
        let report = shutdown.await.unwrap().unwrap();
        assert!(report.is_graceful(), "{report:?}");
        assert_eq!(report.finished, 2);
        assert!(server.shutdown_signal().is_set());
    }
}

both_backends! {
    async fn a_cancelled_handler_answers_before_it_goes() {
        let started = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let started = started.clone();
            move |stream: TcpStream, _: ShutdownSignal| {
            let started = started.clone();
            async move {
            started.set(started.get() + 1);
            // Never looks at the signal: the end of the grace cancels it in this sleep.
            let err = sleep(NEVER).await.unwrap_err();
            let answer = format!("cancelled: {}", err.message().unwrap_or(""));
            let _ = stream.write_all(answer.into_bytes()).await;
            let _ = stream.shutdown(Shutdown::Write);
            let _ = read_to_end_lossy(&stream).await;
        }}})
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        // Started: a task cancelled before it ever ran would be dropped unpolled.
        assert!(until(|| started.get() == 1).await);
        let shutdown = spawn({
            let server = server.clone();
            async move { server.shutdown_with(Duration::from_millis(1), NEVER).await }
        });
        let got = String::from_utf8(read_to_end(&client).await).unwrap();
        assert_eq!(got, format!("cancelled: {GRACE_OVER}"));
        drop(client);
        let report = shutdown.await.unwrap().unwrap();
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 1, 0), "{report:?}");
        assert!(!report.immediate);
    }
}

/// Counts drops: a handler holds one, so a test sees when (and that) it was dropped. The
/// handler makes it when it starts (`DropCount::started`), so a test can also wait until the
/// handler has run: a task cancelled before it ever ran is dropped unpolled, as asyncio never
/// starts a coroutine cancelled before its first step.
struct DropCount(Rc<Cell<usize>>);

impl DropCount {
    /// Made when the handler starts: counts the start in `started`.
    fn started(drops: Rc<Cell<usize>>, started: &Cell<usize>) -> DropCount {
        started.set(started.get() + 1);
        DropCount(drops)
    }
}

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

both_backends! {
    async fn a_handler_that_ignores_its_cancel_is_dropped_after_the_cancel_grace() {
        let cancels = Rc::new(Cell::new(0usize));
        let drops = Rc::new(Cell::new(0usize));
        let started = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let (cancels, drops, started) = (cancels.clone(), drops.clone(), started.clone());
            move |_stream: TcpStream, _: ShutdownSignal| {
                let (cancels, drops, started) = (cancels.clone(), drops.clone(), started.clone());
                async move {
                    let _alive = DropCount::started(drops, &started);
                    loop {
                        // Catches every cancellation and carries on.
                        if sleep(NEVER).await.is_err() {
                            cancels.set(cancels.get() + 1);
                        }
                    }
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| started.get() == 1).await);
        let report = server
            .shutdown_with(Duration::from_millis(1), Duration::from_millis(1))
            .await
            .unwrap();
        // It saw the one cancellation, ignored it, and was dropped.
        assert_eq!(cancels.get(), 1);
        assert_eq!(drops.get(), 1);
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 0, 1), "{report:?}");
        assert_eq!(server.connections(), 0);
        // Its socket closed with it: nothing was left unread, so the client sees a FIN.
        assert_eq!(read_to_end(&client).await, b"");
    }
}

both_backends! {
    async fn a_handler_stuck_in_a_foreign_future_still_ends_at_the_cancel() {
        let drops = Rc::new(Cell::new(0usize));
        let started = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let (drops, started) = (drops.clone(), started.clone());
            move |_stream: TcpStream, _: ShutdownSignal| {
                let (drops, started) = (drops.clone(), started.clone());
                async move {
                    let _alive = DropCount::started(drops, &started);
                    // Knows nothing of ringloop's cancellation.
                    pending::<()>().await;
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| started.get() == 1).await);
        // The cancel grace is never reached: the runtime drops a task whose cancellation
        // nothing can observe.
        let report = server
            .shutdown_with(Duration::from_millis(1), NEVER)
            .await
            .unwrap();
        assert_eq!(drops.get(), 1);
        assert_eq!((report.finished, report.cancelled, report.aborted), (0, 1, 0), "{report:?}");
    }
}

both_backends! {
    async fn a_cancelled_shutdown_turns_immediate_and_hands_the_cancel_back() {
        let drops = Rc::new(Cell::new(0usize));
        let started = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let (drops, started) = (drops.clone(), started.clone());
            move |_stream: TcpStream, _: ShutdownSignal| {
                let (drops, started) = (drops.clone(), started.clone());
                async move {
                    let _alive = DropCount::started(drops, &started);
                    let _ = sleep(NEVER).await;
                    let _ = sleep(NEVER).await;
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| started.get() == 1).await);
        let shutdown = spawn({
            let server = server.clone();
            async move { server.shutdown(NEVER).await.map(|_| ()) }
        });
        assert!(until(|| server.shutdown_signal().is_set()).await);
        shutdown.cancel_with("stop now");
        let err = shutdown.await.unwrap_err();
        assert_eq!(err.cancel_message(), Some("stop now"));
        assert_eq!(drops.get(), 1);
        assert_eq!(server.connections(), 0);
        server.wait_closed().await.unwrap();
    }
}

both_backends! {
    async fn close_serves_the_connections_already_in_the_kernel_queue() {
        let server = start_server(localhost(), echo).unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        // 1. Clients connect and send while the accept task has not run once: each
        //    connection completes its handshake in the kernel and waits in its queue.
        let clients: Vec<TcpStream> = (0..8u8)
            .map(|i| {
                let c = std::net::TcpStream::connect(addr).unwrap();
                std::io::Write::write_all(&mut &c, &[i; 100]).unwrap();
                TcpStream::from_std(c).unwrap()
            })
            .collect();
        assert_eq!(server.accepted_total(), 0);
        // 2. Closed now: asyncio would reset these eight; here they are served.
        server.close();
        assert!(!server.is_serving());
        assert_eq!(
            TcpStream::connect(addr).await.unwrap_err().raw_os_error(),
            Some(libc::ECONNREFUSED)
        );
        for (i, c) in clients.iter().enumerate() {
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_end(c).await, vec![i as u8; 100], "client {i}");
        }
        server.wait_closed().await.unwrap();
        assert_eq!(server.accepted_total(), 8);
        assert_eq!(server.closed_total(), 8);
    }
}

both_backends! {
    async fn close_while_connections_are_being_accepted() {
        const CLIENTS: usize = 64;
        let server = start_server(localhost(), echo).unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        // Clients connect in a burst; the server is closed part-way, with connections in
        // every state: served, accepted and not yet served, queued in the kernel, not begun.
        let clients: Vec<Task<Result<(), i32>>> = (0..CLIENTS)
            .map(|i| {
                spawn(async move {
                    // Spread the connects over several loop iterations.
                    for _ in 0..i % 8 {
                        yield_now().await.unwrap();
                    }
                    let c = match TcpStream::connect(addr).await {
                        Ok(c) => c,
                        Err(e) => return Err(e.raw_os_error().unwrap_or(0)),
                    };
                    let payload = vec![i as u8; 3000];
                    c.write_all(payload.clone()).await.0.unwrap();
                    c.shutdown(Shutdown::Write).unwrap();
                    // Served in full and closed with a FIN, or the test fails here.
                    assert_eq!(read_to_end(&c).await, payload, "client {i}");
                    Ok(())
                })
            })
            .collect();
        for _ in 0..4 {
            yield_now().await.unwrap();
        }
        server.close();
        let results = gather(clients).await.unwrap();
        let served = results.iter().filter(|r| r.is_ok()).count();
        for r in &results {
            assert!(matches!(r, Ok(()) | Err(libc::ECONNREFUSED)), "{r:?}");
        }
        server.wait_closed().await.unwrap();
        assert_eq!(server.accepted_total(), served as u64);
        assert_eq!(server.closed_total(), served as u64);
    }
}

both_backends! {
    async fn wait_closed_waits_for_the_close_and_for_every_handler() {
        let release = Rc::new(ringloop_runtime::sync::Event::new());
        let server = start_server(localhost(), {
            let release = release.clone();
            move |_stream: TcpStream, _: ShutdownSignal| {
                let release = release.clone();
                async move {
                    let _ = release.wait().await;
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| server.connections() == 1).await);
        // Not closed yet.
        assert!(timeout(Duration::ZERO, server.wait_closed()).await.is_err());
        server.close();
        // Closed, but a handler runs.
        assert!(timeout(Duration::ZERO, server.wait_closed()).await.is_err());
        assert_eq!(server.connections(), 1);
        release.set();
        server.wait_closed().await.unwrap();
        assert_eq!(server.connections(), 0);
    }
}

both_backends! {
    async fn close_clients_half_closes_and_the_handler_still_reads() {
        let read = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let read = read.clone();
            move |stream: TcpStream, _: ShutdownSignal| {
                let read = read.clone();
                async move {
                    loop {
                        let (n, _) = stream.read(vec![0u8; 1024]).await;
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.set(read.get() + n),
                        }
                    }
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| server.connections() == 1).await);
        server.close_clients();
        // The client sees the end of the stream, and can still send.
        assert_eq!(read_to_end(&client).await, b"");
        client.write_all(b"after".as_slice()).await.0.unwrap();
        assert!(until(|| read.get() == 5).await);
        assert_eq!(server.connections(), 1);
        drop(client);
        assert!(until(|| server.connections() == 0).await);
    }
}

both_backends! {
    async fn abort_clients_resets_tcp_connections() {
        let handler_error = Rc::new(Cell::new(None));
        let server = start_server(localhost(), {
            let handler_error = handler_error.clone();
            move |stream: TcpStream, _: ShutdownSignal| {
                let handler_error = handler_error.clone();
                async move {
                    let (n, _) = stream.read(vec![0u8; 1024]).await;
                    handler_error.set(Some(n.map_err(|e| e.raw_os_error())));
                }
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        assert!(until(|| server.connections() == 1).await);
        server.abort_clients();
        let (r, _) = client.read(vec![0u8; 16]).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ECONNRESET));
        assert!(until(|| server.connections() == 0).await);
        // Not cancelled: its read failed.
        assert_eq!(handler_error.get(), Some(Err(Some(libc::ECONNRESET))));
        server.close();
        server.wait_closed().await.unwrap();
    }
}

both_backends! {
    async fn a_panicking_handler_ends_only_its_connection() {
        let server = start_server(localhost(), |stream: TcpStream, s: ShutdownSignal| async move {
            let (n, buf) = stream.read(vec![0u8; 16]).await;
            let n = n.unwrap();
            if &buf[..n] == b"panic" {
                panic!("handler panicked on purpose");
            }
            stream.write_all(buf[..n].to_vec()).await.0.unwrap();
            echo(stream, s).await;
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let bad = TcpStream::connect(addr).await.unwrap();
        bad.write_all(b"panic".as_slice()).await.0.unwrap();
        assert!(until(|| server.closed_total() == 1).await);
        let good = TcpStream::connect(addr).await.unwrap();
        good.write_all(b"hello".as_slice()).await.0.unwrap();
        good.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&good).await, b"hello");
        assert!(server.is_serving());
        let report = server.shutdown(NEVER).await.unwrap();
        assert!(report.is_graceful(), "{report:?}");
    }
}

both_backends! {
    async fn a_handler_that_panics_before_returning_its_future_ends_only_its_connection() {
        let calls = Rc::new(Cell::new(0usize));
        let server = start_server(localhost(), {
            let calls = calls.clone();
            move |stream: TcpStream, s: ShutdownSignal| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    panic!("the handler function itself panicked");
                }
                echo(stream, s)
            }
        })
        .unwrap();
        let addr = server.sockets()[0].as_tcp().unwrap();
        let first = TcpStream::connect(addr).await.unwrap();
        // Its task ended with the panic; the socket went with it.
        assert_eq!(read_to_end(&first).await, b"");
        assert!(server.is_serving());
        let second = TcpStream::connect(addr).await.unwrap();
        second.write_all(b"still serving".as_slice()).await.0.unwrap();
        second.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&second).await, b"still serving");
        assert_eq!(server.accepted_total(), 2);
        server.shutdown(NEVER).await.unwrap();
    }
}

both_backends! {
    async fn a_server_leaks_no_descriptor() {
        let before = common::open_fds();
        {
            let server = start_server(localhost(), echo).unwrap();
            let addr = server.sockets()[0].as_tcp().unwrap();
            let clients: Vec<TcpStream> = {
                let mut v = Vec::new();
                for _ in 0..10 {
                    v.push(TcpStream::connect(addr).await.unwrap());
                }
                v
            };
            assert!(until(|| server.connections() == 10).await);
            let shutdown = spawn({
                let server = server.clone();
                async move { server.shutdown(NEVER).await }
            });
            for c in &clients {
                c.shutdown(Shutdown::Write).unwrap();
                assert_eq!(read_to_end(c).await, b"");
            }
            drop(clients);
            shutdown.await.unwrap().unwrap();
        }
        // The listener's last holder (an accept op or the multishot's slot) lets go once its
        // last completion is in: a few iterations at most.
        assert!(until(|| common::leaked_fds(&before).is_empty()).await, "{:?}", common::leaked_fds(&before));
    }
}

/// A socket path in the temp directory, removed on drop if it is still there.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ringloop-server-{}-{tag}-{n}.sock", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }
}

impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn unix_echo(stream: UnixStream, _: ShutdownSignal) {
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

/// Reads a Unix stream to its end.
async fn unix_read_to_end(stream: &UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let (n, buf) = stream.read(vec![0u8; 4096]).await;
        let n = n.unwrap();
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

both_backends! {
    async fn a_unix_server_serves_shuts_down_and_removes_its_socket_file() {
        let path = TempPath::new("start");
        let server = start_unix_server(&path, unix_echo).unwrap();
        let listening = server.sockets()[0].as_unix().unwrap().as_pathname().unwrap().to_path_buf();
        assert_eq!(listening, path.0);
        let client = UnixStream::connect(&path).await.unwrap();
        client.write_all(b"ping".as_slice()).await.0.unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(unix_read_to_end(&client).await, b"ping");
        // The handler ended before the shutdown began: nothing left to wait for.
        assert!(until(|| server.connections() == 0).await);
        let report = server.shutdown(NEVER).await.unwrap();
        assert_eq!(report.connections(), 0);
        assert_eq!(server.closed_total(), 1);
        assert!(!path.0.exists(), "start_unix_server's file is removed at close");
    }
}

both_backends! {
    async fn a_unix_server_serves_its_queue_at_close_and_refuses_after() {
        let path = TempPath::new("queue");
        // Made here, not by the server: the file stays.
        let server = Server::unix(UnixListener::bind(&path).unwrap(), unix_echo);
        let clients: Vec<UnixStream> = (0..8u8)
            .map(|i| {
                let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
                std::io::Write::write_all(&mut &c, &[i; 100]).unwrap();
                UnixStream::from_std(c).unwrap()
            })
            .collect();
        server.close();
        let refused = UnixStream::connect(&path).await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ECONNREFUSED));
        for (i, c) in clients.iter().enumerate() {
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(unix_read_to_end(c).await, vec![i as u8; 100], "client {i}");
        }
        server.wait_closed().await.unwrap();
        assert_eq!(server.accepted_total(), 8);
        assert!(path.0.exists(), "a listener made elsewhere keeps its file");
    }
}

both_backends! {
    async fn unix_close_clients_and_abort_clients_shut_the_connections_down() {
        let path = TempPath::new("clients");
        let server = start_unix_server(&path, |stream: UnixStream, _: ShutdownSignal| async move {
            let _ = stream.read(vec![0u8; 16]).await;
            // Hold the connection until the client goes.
            let _ = stream.read(vec![0u8; 16]).await;
        })
        .unwrap();
        let a = UnixStream::connect(&path).await.unwrap();
        assert!(until(|| server.connections() == 1).await);
        server.close_clients();
        assert_eq!(unix_read_to_end(&a).await, b"");
        a.write_all(b"x".as_slice()).await.0.unwrap();
        let b = UnixStream::connect(&path).await.unwrap();
        assert!(until(|| server.connections() == 2).await);
        server.abort_clients();
        // No reset on a Unix socket: the end of the stream, and writes fail.
        assert_eq!(unix_read_to_end(&b).await, b"");
        assert!(until(|| server.connections() == 0).await);
        let (r, _) = b.write_all(b"y".as_slice()).await;
        assert_eq!(r.unwrap_err().error.raw_os_error(), Some(libc::EPIPE));
        drop((a, b));
        server.shutdown(NEVER).await.unwrap();
    }
}

both_backends! {
    async fn a_listener_built_with_options_serves_too() {
        let listener = TcpListener::builder(localhost()).backlog(16).bind().unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::tcp(listener, echo);
        assert_eq!(server.sockets()[0].as_tcp(), Some(addr));
        let c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"abc".as_slice()).await.0.unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&c).await, b"abc");
        assert!(format!("{server:?}").contains("accepted_total: 1"));
        server.shutdown(NEVER).await.unwrap();
    }
}
