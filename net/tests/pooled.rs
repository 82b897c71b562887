//! The pooled-receive fast path on both backends.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::{backends, localhost};
use ringloop_net::{TcpListener, TcpStream};
use ringloop_runtime::{gather, is_cancelled, sleep, spawn, yield_now, Backend, Runtime};

async fn pooled_echo_server(listener: TcpListener, connections: usize) {
    let mut handlers = Vec::new();
    for _ in 0..connections {
        let (conn, _) = listener.accept().await.unwrap();
        handlers.push(spawn(async move {
            let mut rx = conn.pooled_receiver();
            while let Some(chunk) = rx.recv().await.unwrap() {
                let (r, _) = conn.write_all(chunk).await;
                r.unwrap();
            }
        }));
    }
    gather(handlers).await.unwrap();
}

async fn client_round_trips(addr: SocketAddr, id: u32, rounds: u32, size: usize) {
    let c = TcpStream::connect(addr).await.unwrap();
    for round in 0..rounds {
        let msg: Vec<u8> = (0..size).map(|i| (i as u32 ^ id ^ round) as u8).collect();
        let (r, msg) = c.write_all(msg).await;
        r.unwrap();
        let (r, got) = c.read_exact(Vec::with_capacity(msg.len())).await;
        r.unwrap();
        assert_eq!(got, msg, "connection {id} round {round}");
    }
}

both_backends! {
    async fn pooled_echo_is_byte_exact_for_many_connections() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(pooled_echo_server(listener, 200));
        let clients: Vec<_> = (0..200u32)
            .map(|id| spawn(client_round_trips(addr, id, 5, 1000)))
            .collect();
        gather(clients).await.unwrap();
        server.await.unwrap();
        assert_eq!(ringloop_runtime::buffer_pool().out(), 0, "every buffer came back");
    }
}

/// A pool far smaller than the traffic: receives run out of buffers (ENOBUFS for io_uring's
/// multishot receives; an empty pool and a queue for buffers on epoll and for single-shot
/// receives), wait for buffers to come back, and lose no byte.
#[test]
fn pool_exhaustion_loses_nothing_on_both_backends() {
    for mode in RecvMode::tested() {
        let rt = mode.runtime(4, 512);
        let multishot = rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = spawn(pooled_echo_server(listener, 16));
            let clients: Vec<_> = (0..16u32)
                .map(|id| spawn(client_round_trips(addr, id, 4, 3000)))
                .collect();
            gather(clients).await.unwrap();
            server.await.unwrap();
            ringloop_runtime::multishot_recv()
        });
        let stats = rt.stats();
        assert_eq!(stats.pooled_buffers_out, 0, "{mode:?}: {stats:?}");
        assert_eq!(stats.ops_in_flight, 0, "{mode:?}: {stats:?}");
        if mode == RecvMode::Epoll {
            // epoll takes a buffer only once the socket is readable, from the free list: the
            // pool is never found empty by a receive in flight; receivers queue instead.
            assert_eq!(stats.buffer_exhaustions, 0, "{mode:?}: {stats:?}");
        } else if multishot {
            assert!(
                stats.buffer_exhaustions > 0,
                "the small pool did run dry: {stats:?}"
            );
        }
        // Single-shot receives may find the pool empty too: a receive is armed with a turn,
        // but the turn is used up when it is armed (an idle connection must not hold one), so
        // a receive whose data comes later can find the buffers taken; it queues again.
    }
}

/// How a pooled receive runs: io_uring's multishot receive with bundles (the default), without,
/// single-shot (what kernels before 6.10 get, forced here on any kernel), and epoll.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RecvMode {
    Bundles,
    Multishot,
    SingleShot,
    Epoll,
}

impl RecvMode {
    const ALL: [RecvMode; 4] = [
        RecvMode::Bundles,
        RecvMode::Multishot,
        RecvMode::SingleShot,
        RecvMode::Epoll,
    ];

    /// The modes this run tests (io_uring's may be left out: `common::uring_tested`).
    fn tested() -> impl Iterator<Item = RecvMode> {
        Self::ALL
            .into_iter()
            .filter(|mode| common::runs_on(mode.backend()))
    }

    fn backend(self) -> Backend {
        match self {
            RecvMode::Epoll => Backend::Epoll,
            _ => Backend::IoUring,
        }
    }

    /// A runtime in this mode with a pool of `buffers` x `buf_size`.
    fn runtime(self, buffers: u16, buf_size: usize) -> Runtime {
        Runtime::builder()
            .backend(self.backend())
            .buffer_pool(buffers, buf_size)
            .recv_bundles(self == RecvMode::Bundles)
            .multishot_recv(self != RecvMode::SingleShot)
            .build()
            .unwrap()
    }
}

/// A connection whose data is not read holds a bounded number of pool buffers: once `cap`
/// chunks wait, the receive stops and the peer is back-pressured by TCP instead of filling the
/// pool. The bound counts every buffer not free: lent to the user, or taken by the kernel and
/// queued in the receiver.
///
/// * epoll receives only when asked: at most `cap`.
/// * io_uring stops the receive with a cancel, which the kernel sees at the next enter. With
///   receive bundles (each at most `cap` buffers) one more bundle can land first: at most
///   `2 * cap + 1` (7 seen with a cap of 4).
/// * A plain multishot receive retries up to 32 times per pass while the socket has data
///   (the kernel's `MULTISHOT_MAX_RETRY`), one buffer each, so it can overshoot by two passes
///   (65 seen with a cap of 4): the reason bundles, with their length limit, are the default.
/// * Before 6.10 (no bundles) a pooled receive is single-shot, one buffer at a time: at most
///   `cap`. (Debian's 6.1 with a multishot receive: 255 of 256, the whole pool.)
#[test]
fn unread_connection_holds_a_bounded_number_of_buffers() {
    const CAP: usize = 4;
    for mode in RecvMode::tested() {
        let _serial = common::serial();
        let backend = mode.backend();
        let rt = mode.runtime(256, 1024);
        rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let writer_done = Rc::new(Cell::new(false));
            let wd = writer_done.clone();
            let writer = spawn(async move {
                let c = TcpStream::connect(addr).await.unwrap();
                // Far more than the cap's worth of buffers, and more than the socket buffers.
                let (r, _) = c.write_all(vec![7u8; 8 << 20]).await;
                wd.set(r.is_ok());
                c
            });
            let (conn, _) = listener.accept().await.unwrap();
            let mut rx = conn.pooled_receiver_with_cap(CAP);
            // Read one chunk to arm the receive, then stop reading for a while.
            let first = rx.recv().await.unwrap().unwrap();
            drop(first);
            let bound = match backend {
                Backend::IoUring if rx.is_bundled() => 2 * CAP + 1,
                // Two passes seen; one more allowed for a loaded machine.
                Backend::IoUring if ringloop_runtime::multishot_recv() => CAP + 3 * 32 + 1,
                // epoll, and single-shot receives (before 6.10, or forced): only when asked.
                _ => CAP,
            };
            for _ in 0..50 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            // Held: lent to the user, or taken by the kernel and queued in the receiver.
            let pool = ringloop_runtime::buffer_pool();
            let held = pool.count() - pool.free();
            assert!(
                held <= bound,
                "{mode:?}: {held} buffers held by one unread connection"
            );
            assert!(!writer_done.get(), "{mode:?}: the writer is back-pressured");
            // Now drain everything: nothing was lost.
            let mut total = 0usize;
            while total < (8 << 20) - 1024 {
                match rx.recv().await.unwrap() {
                    Some(chunk) => {
                        assert!(chunk.iter().all(|b| *b == 7));
                        total += chunk.len();
                    }
                    None => break,
                }
            }
            let c = writer.await.unwrap();
            assert!(writer_done.get());
            drop(c);
            while let Some(chunk) = rx.recv().await.unwrap() {
                total += chunk.len();
            }
            assert!(total >= (8 << 20) - 1024, "{mode:?}: read {total}");
        });
    }
}

both_backends! {
    /// Cancelling a task that waits in `recv` loses nothing: data that arrives later is read by
    /// the next `recv` on the same receiver.
    async fn cancelled_pooled_recv_loses_nothing() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        let rx = conn.pooled_receiver();
        let waiter = spawn(async move {
            let mut rx = rx;
            let r = rx.recv().await;
            let cancelled = matches!(&r, Err(e) if is_cancelled(e));
            drop(r); // suppress the cancellation: hand the receiver back
            (rx, cancelled)
        });
        yield_now().await.unwrap();
        waiter.cancel();
        let (mut rx, cancelled) = waiter.await.unwrap();
        assert!(cancelled, "the waiting recv saw the cancellation");
        let (w, _) = client.write_all(b"after cancel".as_slice()).await;
        w.unwrap();
        let chunk = rx.recv().await.unwrap().unwrap();
        assert_eq!(&*chunk, b"after cancel");
    }
}

/// Receivers queued on a dry pool are served as buffers come back, including when some of the
/// queued receivers go away first (their turn passes on; no free buffer is stranded).
#[test]
fn receivers_queued_on_a_dry_pool_are_all_served() {
    for backend in backends() {
        let rt = Runtime::builder()
            .backend(backend)
            .buffer_pool(2, 512)
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let mut clients = Vec::new();
            let mut servers = Vec::new();
            for _ in 0..10 {
                clients.push(TcpStream::connect(addr).await.unwrap());
                servers.push(listener.accept().await.unwrap().0);
            }
            // 1. The first connection takes both buffers and holds them.
            let mut rx0 = servers[0].pooled_receiver();
            let mut held = Vec::new();
            while held.len() < 2 {
                let (r, _) = clients[0].write_all(vec![1u8; 400]).await;
                r.unwrap();
                held.push(rx0.recv().await.unwrap().unwrap());
            }
            assert_eq!(ringloop_runtime::buffer_pool().out(), 2);
            // 2. Nine more connections have data; their receivers queue for a buffer.
            let receivers: Vec<_> = servers
                .drain(1..)
                .enumerate()
                .map(|(i, conn)| {
                    spawn(async move {
                        let mut rx = conn.pooled_receiver();
                        let chunk = rx.recv().await.unwrap().unwrap();
                        assert!(chunk.iter().all(|&b| b == i as u8 + 2));
                        chunk.len()
                    })
                })
                .collect();
            for (i, client) in clients[1..].iter().enumerate() {
                let (r, _) = client.write_all(vec![i as u8 + 2; 100]).await;
                r.unwrap();
            }
            for _ in 0..20 {
                yield_now().await.unwrap();
            }
            assert_eq!(ringloop_runtime::buffer_pool().waiting(), 9, "{backend}");
            // 3. Four of the queued receivers go away; then the buffers come back.
            let mut receivers = receivers.into_iter();
            for gone in receivers.by_ref().take(4) {
                gone.abort();
            }
            yield_now().await.unwrap();
            drop(held);
            // 4. The other five all get their data, one buffer at a time.
            let rest: Vec<_> = receivers.collect();
            let lens = ringloop_runtime::timeout(Duration::from_secs(10), gather(rest))
                .await
                .expect("every queued receiver was served")
                .unwrap();
            assert_eq!(lens, vec![100; 5], "{backend}");
        });
        let stats = rt.stats();
        assert_eq!(stats.pooled_buffers_out, 0, "{backend}: {stats:?}");
    }
}

both_backends! {
    async fn write_all_vectored_sends_every_buffer_in_order() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // 1. More buffers than one sendmsg takes (1024 iovecs), then one larger than the socket
        //    buffers, so the write is split into several calls and short writes.
        let mut bufs: Vec<Vec<u8>> = (0..1500u32).map(|i| vec![(i % 251) as u8; 7]).collect();
        bufs.push((0..(4 << 20)).map(|i| (i % 253) as u8).collect());
        let expected: Vec<u8> = bufs.iter().flatten().copied().collect();
        let reader = spawn(async move {
            let (r, got) = server.read_exact(Vec::with_capacity(expected.len())).await;
            r.unwrap();
            assert!(got == expected, "the bytes arrived in order");
            got.len()
        });
        let (r, back) = client.write_all_vectored(bufs).await;
        r.unwrap();
        assert_eq!(back.len(), 1501, "every buffer is given back");
        assert_eq!(reader.await.unwrap(), 1500 * 7 + (4 << 20));
    }
}

both_backends! {
    async fn try_recv_drains_what_is_queued_without_waiting_or_eating_a_cancel() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut rx = server.pooled_receiver();
        // 1. Nothing sent yet: no chunk, and no wait.
        assert!(rx.try_recv().is_none());
        // 2. Three writes; one `recv`, then `try_recv` until every byte is in.
        for part in [&b"alpha"[..], b"beta", b"gamma"] {
            let (r, _) = client.write_all(part).await;
            r.unwrap();
        }
        // (On epoll a short receive means the socket was empty then, so `try_recv` says
        // `None` without asking again until the next `recv`: the loop falls back to `recv`.)
        let mut got = Vec::new();
        while got.len() < 14 {
            got.extend_from_slice(&rx.recv().await.unwrap().unwrap());
            while let Some(chunk) = rx.try_recv() {
                got.extend_from_slice(&chunk.unwrap().unwrap());
            }
        }
        assert_eq!(&got, b"alphabetagamma");
        assert!(rx.try_recv().is_none(), "all read");
        // 3. A pending cancellation is left for the next await: `try_recv` is no suspension
        //    point.
        let me = ringloop_runtime::current_task().unwrap();
        me.cancel();
        assert!(rx.try_recv().is_none());
        let e = rx.recv().await.unwrap_err();
        assert!(is_cancelled(&e), "{e}");
        drop(e);
        me.uncancel();
        // 4. The receiver goes on: later data arrives through `recv` as usual, and the end
        //    of stream through `try_recv`.
        let (r, _) = client.write_all(&b"more"[..]).await;
        r.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"more");
        drop(client);
        assert!(rx.recv().await.unwrap().is_none(), "end of stream");
        assert!(
            matches!(rx.try_recv(), Some(Ok(None))),
            "after the end, try_recv says so too"
        );
    }
}

/// A stream that brings many buffers' worth at once, read through a pooled receiver on a pool
/// of small buffers: with io_uring's receive bundles on (one completion, several buffers),
/// with them off, and on epoll. Every chunk is one pool buffer, in order, byte-exact, and
/// every buffer goes back to the pool, including those of a bundle still queued when the
/// receiver is dropped.
#[test]
fn bundled_receives_split_into_pool_buffers_in_order() {
    const TOTAL: usize = 256 << 10;
    const BUF: usize = 512;
    for mode in RecvMode::tested() {
        let _serial = common::serial();
        let (backend, bundles) = (mode.backend(), mode == RecvMode::Bundles);
        let rt = mode.runtime(64, BUF);
        let bundled = rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let pattern: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
            let expected = pattern.clone();
            let writer = spawn(async move {
                let c = TcpStream::connect(addr).await.unwrap();
                let (r, _) = c.write_all(pattern).await;
                r.unwrap();
                // Then more than one bundle's worth that nobody reads.
                let (r, _) = c.write_all(vec![9u8; 64 << 10]).await;
                r.unwrap();
                c
            });
            let (conn, _) = listener.accept().await.unwrap();
            // Let data pile up in the socket, so completions find many buffers' worth.
            for _ in 0..5 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            let mut rx = conn.pooled_receiver_with_cap(8);
            let mut got = Vec::with_capacity(TOTAL);
            while got.len() < TOTAL {
                let chunk = rx.recv().await.unwrap().expect("not at end of stream");
                assert!(chunk.len() <= BUF, "{mode:?}: a chunk is one pool buffer");
                let take = chunk.len().min(TOTAL - got.len());
                got.extend_from_slice(&chunk[..take]);
            }
            assert!(got == expected, "{mode:?}: the bytes arrived in order");
            let bundled = rx.is_bundled();
            let c = writer.await.unwrap();
            // Let the unread rest queue up (re-arming the receive if the cap had stopped it),
            // then drop the receiver with it queued.
            drop(rx.try_recv());
            for _ in 0..5 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            let pool = ringloop_runtime::buffer_pool();
            if backend == Backend::IoUring {
                let queued = pool.count() - pool.free() - pool.out();
                assert!(
                    queued > 0,
                    "{mode:?}: the unread rest waits in the receiver"
                );
            }
            // Dropping the receiver hands what it queued back to the stream (a later read
            // gets it); dropping the stream as well gives the buffers back.
            drop(rx);
            drop(conn);
            drop(c);
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
            let stats = ringloop_runtime::current_stats();
            assert_eq!(stats.pooled_buffers_out, 0, "{mode:?}: {stats:?}");
            assert_eq!(pool.free(), pool.count(), "{mode:?}: every buffer is back");
            (
                bundled,
                ringloop_runtime::recv_bundles(),
                stats.recv_bundles,
            )
        });
        drop(rt);
        let (enabled, asked, bundles_seen) = bundled;
        assert!(!enabled || (bundles && backend == Backend::IoUring));
        if asked && !enabled {
            eprintln!(
                "note: this kernel has bundles but refused their length limit; the receivers \
                 fell back to plain multishot receives (checked above: byte-exact, nothing lost)"
            );
        }
        if enabled {
            assert!(
                bundles_seen > 0,
                "{mode:?}: no completion filled more than one buffer"
            );
        } else {
            assert_eq!(bundles_seen, 0, "{mode:?}: bundles off");
            if bundles && backend == Backend::IoUring && !asked {
                eprintln!("note: this kernel has no receive bundles (6.10+); the path was not run");
            }
        }
    }
}

/// A connection that sends one message and then waits for its echo, on `addr`: returns
/// whether the echo came back whole.
async fn one_message(client: TcpStream, id: u32) -> bool {
    let msg = id.to_le_bytes().repeat(2); // 8 bytes
    let (r, msg) = client.write_all(msg).await;
    r.unwrap();
    let (r, got) = client.read_exact(Vec::with_capacity(8)).await;
    r.is_ok() && got == msg
}

/// Many connections each send one small message at once to a pooled echo server whose pool is
/// far smaller than the burst: every message is echoed. An idle receiver must not keep a turn
/// for the pool's buffers (single-shot receives re-arm after each message, idle: holding
/// turns, they left hundreds of connections queued behind them for ever, the loop idle and
/// every buffer free).
#[test]
fn a_burst_of_one_message_per_connection_is_all_echoed_on_a_small_pool() {
    const CONNECTIONS: usize = 300;
    for mode in RecvMode::tested() {
        let _serial = common::serial();
        let rt = mode.runtime(8, 512);
        let echoed = rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = spawn(pooled_echo_server(listener, CONNECTIONS));
            let mut clients = Vec::new();
            for _ in 0..CONNECTIONS {
                clients.push(TcpStream::connect(addr).await.unwrap());
            }
            let mut second = Vec::new();
            // Let every handler arm its receive before the burst.
            for _ in 0..20 {
                yield_now().await.unwrap();
            }
            // Two bursts, each connection in one of them: the first leaves its connections
            // idle (echoed, their receives armed again while the pool is still dry) when the
            // second comes.
            second.extend(clients.split_off(CONNECTIONS / 2));
            let first: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(id, c)| spawn(one_message(c, id as u32)))
                .collect();
            let mut echoed = 0;
            for wave in [first, Vec::new()] {
                let wave = if wave.is_empty() {
                    let start = CONNECTIONS / 2;
                    second
                        .drain(..)
                        .enumerate()
                        .map(|(id, c)| spawn(one_message(c, (start + id) as u32)))
                        .collect()
                } else {
                    wave
                };
                match ringloop_runtime::timeout(Duration::from_secs(10), gather(wave)).await {
                    Ok(r) => echoed += r.unwrap().into_iter().filter(|ok| *ok).count(),
                    Err(_) => break,
                }
            }
            let echoed: Result<usize, ()> = Ok(echoed);
            // The clients are gone (closed): the handlers see the end of their streams.
            let _ = ringloop_runtime::timeout(Duration::from_secs(20), server).await;
            echoed
        });
        assert_eq!(
            echoed.ok(),
            Some(CONNECTIONS),
            "{mode:?}: every message echoed, within the bound: {:?}",
            rt.stats()
        );
    }
}

/// The bytes `0..len` of a test stream (a pattern that shows loss, duplication and reorder).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Dropping a pooled receiver loses nothing a later read could still get: what it had
/// queued, and what its receive was still bringing, go back to the stream, and a plain
/// `read` (or a new receiver) returns them first, every byte once, in order.
#[test]
fn a_dropped_receiver_hands_its_unread_data_back_to_the_stream() {
    const LEN: usize = 6000;
    for mode in RecvMode::tested() {
        for by_receiver in [false, true] {
            let _serial = common::serial();
            let rt = mode.runtime(64, 256);
            rt.block_on(async {
                let listener = TcpListener::bind(localhost()).unwrap();
                let addr = listener.local_addr().unwrap();
                let client = TcpStream::connect(addr).await.unwrap();
                let (conn, _) = listener.accept().await.unwrap();
                let (r, _) = client.write_all(pattern(LEN)).await;
                r.unwrap();
                for _ in 0..5 {
                    sleep(Duration::from_millis(1)).await.unwrap();
                }
                // 1. A receiver reads one chunk, lets more queue, and goes away.
                let mut rx = conn.pooled_receiver();
                let mut got = rx.recv().await.unwrap().unwrap().to_vec();
                if let Some(chunk) = rx.try_recv() {
                    got.extend_from_slice(&chunk.unwrap().unwrap());
                }
                for _ in 0..5 {
                    sleep(Duration::from_millis(1)).await.unwrap();
                }
                drop(rx);
                // 2. The rest, by plain reads (with a buffer smaller than a chunk, so a chunk
                //    is split) or by a new receiver.
                drop(client);
                if by_receiver {
                    let mut rx = conn.pooled_receiver();
                    while let Some(chunk) = rx.recv().await.unwrap() {
                        got.extend_from_slice(&chunk);
                    }
                } else {
                    loop {
                        let (n, buf) = conn.read(Vec::with_capacity(100)).await;
                        if n.unwrap() == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf);
                    }
                }
                assert_eq!(got.len(), LEN, "{mode:?} by_receiver={by_receiver}");
                assert!(got == pattern(LEN), "{mode:?}: every byte once, in order");
                drop(conn);
                for _ in 0..5 {
                    yield_now().await.unwrap();
                }
                let pool = ringloop_runtime::buffer_pool();
                assert_eq!(pool.free(), pool.count(), "{mode:?}: every buffer is back");
            });
        }
    }
}

both_backends! {
    /// Two live receivers on one stream would race for its data: the second one's receives
    /// fail (the first goes on); once the first is dropped, a new one works.
    async fn a_second_live_receiver_of_a_stream_is_refused() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        let mut first = conn.pooled_receiver();
        let mut second = conn.pooled_receiver();
        let (r, _) = client.write_all(&b"one"[..]).await;
        r.unwrap();
        let e = second.recv().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        assert!(second.try_recv().is_some_and(|r| r.is_err()));
        assert_eq!(&*first.recv().await.unwrap().unwrap(), b"one");
        drop(second);
        drop(first);
        let mut third = conn.pooled_receiver();
        let (r, _) = client.write_all(&b"two"[..]).await;
        r.unwrap();
        assert_eq!(&*third.recv().await.unwrap().unwrap(), b"two");
    }
}

/// Connections whose handlers stop reading hold at most their budget of the shared pool
/// (queued and lent together), so a few of them cannot take it all: another connection is
/// still served.
///
/// Not in the plain multishot mode (bundles off on a kernel that has them, or refused): there
/// the kernel's retry loop takes up to 32 buffers per pass before the cap's cancel is seen,
/// whatever the budget (see `unread_connection_holds_a_bounded_number_of_buffers`).
#[test]
fn stalled_connections_cannot_hold_the_whole_pool() {
    const STALLED: usize = 4;
    for mode in RecvMode::tested().filter(|m| *m != RecvMode::Multishot) {
        let _serial = common::serial();
        let rt = mode.runtime(64, 1024);
        rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let mut writers = Vec::new();
            let mut stalled = Vec::new();
            for _ in 0..STALLED {
                writers.push(spawn(async move {
                    let c = TcpStream::connect(addr).await.unwrap();
                    // Far more than the pool: back-pressured once the handler stops reading.
                    let (r, _) = c.write_all(vec![3u8; 4 << 20]).await;
                    drop(r);
                    c
                }));
                let (conn, _) = listener.accept().await.unwrap();
                // The handler reads one chunk, keeps it, and stops reading.
                let mut rx = conn.pooled_receiver();
                let first = ringloop_runtime::timeout(Duration::from_secs(10), rx.recv()).await;
                let held = first
                    .unwrap_or_else(|_| panic!("{mode:?}: the stalled connections took the pool"))
                    .unwrap()
                    .unwrap();
                stalled.push((conn, rx, held));
            }
            for _ in 0..30 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            let pool = ringloop_runtime::buffer_pool();
            let budget = stalled[0].1.budget();
            assert_eq!(budget, ringloop_net::recv_budget(16, 64));
            assert!(
                pool.count() - pool.free() < pool.count(),
                "{mode:?}: {STALLED} stalled connections hold the whole pool"
            );
            // Another connection is served.
            let client = TcpStream::connect(addr).await.unwrap();
            let (conn, _) = listener.accept().await.unwrap();
            let served = spawn(async move {
                let mut rx = conn.pooled_receiver();
                let chunk = rx.recv().await.unwrap().unwrap();
                let (r, _) = conn.write_all(chunk).await;
                r.unwrap();
            });
            let (r, _) = client.write_all(&b"still served"[..]).await;
            r.unwrap();
            let echo = ringloop_runtime::timeout(
                Duration::from_secs(10),
                client.read_exact(Vec::with_capacity(12)),
            )
            .await;
            let stats = ringloop_runtime::current_stats();
            let (r, got) = echo.unwrap_or_else(|_| panic!("{mode:?}: not served: {stats:?}"));
            r.unwrap();
            assert_eq!(&got, b"still served");
            served.await.unwrap();
            // Let the writers go.
            drop(stalled);
            for w in writers {
                w.abort();
            }
        });
    }
}

/// The deterministic core of the burst above: on a dry pool, an idle connection queued first
/// and a connection with data queued behind it. The buffer that comes back goes to the idle
/// one first (first come, first served); it must not keep that turn while it waits for data,
/// or the connection whose data waits is never served.
#[test]
fn an_idle_receiver_given_a_turn_does_not_keep_it() {
    for mode in RecvMode::tested() {
        let _serial = common::serial();
        let rt = mode.runtime(1, 512);
        rt.block_on(async {
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let mut clients = Vec::new();
            let mut servers = Vec::new();
            for _ in 0..3 {
                clients.push(TcpStream::connect(addr).await.unwrap());
                servers.push(listener.accept().await.unwrap().0);
            }
            // 1. The first connection takes the pool's only buffer and holds it.
            let mut rx0 = servers[0].pooled_receiver();
            let (r, _) = clients[0].write_all(vec![1u8; 100]).await;
            r.unwrap();
            let held = rx0.recv().await.unwrap().unwrap();
            // 2. An idle connection's receiver queues first, then one whose data waits.
            let mut servers = servers.drain(1..);
            let idle_conn = servers.next().unwrap();
            let idle = spawn(async move {
                let mut rx = idle_conn.pooled_receiver();
                rx.recv().await.map(|c| c.map(|c| c.len()))
            });
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
            let busy_conn = servers.next().unwrap();
            let (r, _) = clients[2].write_all(vec![2u8; 100]).await;
            r.unwrap();
            let busy = spawn(async move {
                let mut rx = busy_conn.pooled_receiver();
                let chunk = rx.recv().await.unwrap().unwrap();
                chunk.len()
            });
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
            // 3. The buffer comes back: the connection with data is served.
            drop(held);
            let got = ringloop_runtime::timeout(Duration::from_secs(5), busy).await;
            assert!(
                matches!(got, Ok(Ok(100))),
                "{mode:?}: the receiver with data waits behind an idle one: {:?}",
                ringloop_runtime::current_stats()
            );
            idle.abort();
        });
    }
}
