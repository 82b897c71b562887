//! The borrowed-buffer adapters (`compat::Io`): tokio's and hyper's I/O traits over ringloop
//! streams. Every test runs on both backends, and inside each, with both mechanisms.
//!
//! Run with `cargo test -p ringloop-net --features tokio-io,hyper --test compat`.

mod common;

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::OwnedFd;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use common::{leaked_fds, localhost, open_fds, until};
use http_body_util::{BodyExt, Full};
use ringloop_net::compat::{Io, Mechanism};
use ringloop_net::{TcpListener, TcpStream, UnixStream};
use ringloop_runtime::{is_cancelled, sleep, spawn, timeout, yield_now};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MECHANISMS: [Mechanism; 2] = [Mechanism::Readiness, Mechanism::Pooled];

/// A small deterministic generator (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// `len` pseudo-random bytes: a lost, repeated or reordered piece cannot compare equal.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// A connected TCP pair, each end wrapped with `mechanism`.
async fn tcp_pair(mechanism: Mechanism) -> (Io<TcpStream>, Io<TcpStream>) {
    let (a, b) = tcp_streams().await;
    (
        Io::with_mechanism(a, mechanism),
        Io::with_mechanism(b, mechanism),
    )
}

/// A connected pair of plain TCP streams (client, server side).
async fn tcp_streams() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Polls `fut` exactly once.
async fn poll_once<F: Future + ?Sized>(fut: &mut Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Which of two futures finished first (the other one is dropped), like `tokio::select!`.
enum Either<A, B> {
    Left(A),
    Right(B),
}

async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

/// What every test checks at the end, once its streams are gone: no pool buffer is still
/// lent, and every buffer is back in the pool.
async fn assert_pool_settled(what: &str) {
    let pool = ringloop_runtime::buffer_pool();
    let settled = until(|| pool.free() == pool.count()).await;
    let stats = ringloop_runtime::current_stats();
    assert_eq!(stats.pooled_buffers_out, 0, "{what}: {stats:?}");
    assert!(
        settled,
        "{what}: {} of {} pool buffers are back",
        pool.free(),
        pool.count()
    );
}

/// Writes `data` in pieces of random sizes (some vectored), with random pauses and flushes,
/// then shuts down the write direction.
async fn write_in_pieces<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], seed: u64) {
    let mut rng = Rng(seed);
    let mut at = 0;
    while at < data.len() {
        let end = (at + rng.range(1, 20_000)).min(data.len());
        if rng.next() % 3 == 0 && end - at > 1 {
            let mid = at + (end - at) / 2;
            let bufs = [
                io::IoSlice::new(&data[at..mid]),
                io::IoSlice::new(&data[mid..end]),
            ];
            let n = w.write_vectored(&bufs).await.unwrap();
            assert!(n > 0);
            at += n;
        } else {
            w.write_all(&data[at..end]).await.unwrap();
            at = end;
        }
        match rng.next() % 8 {
            0 => sleep(Duration::from_micros(rng.range(10, 500) as u64))
                .await
                .unwrap(),
            1 => w.flush().await.unwrap(),
            2 => yield_now().await.unwrap(),
            _ => {}
        }
    }
    w.shutdown().await.unwrap();
}

both_backends! {
    /// Reads in random-sized pieces, abandoning reads at random in three ways: a read future
    /// polled once and dropped, one that loses a `select` against a short sleep (tokio's
    /// `timeout` style), and one that a ringloop `timeout` cancels. Every byte arrives exactly
    /// once, in order.
    async fn abandoned_reads_lose_no_byte() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let fds_before = open_fds();
            let (mut a, mut b) = tcp_pair(mechanism).await;
            let data = random_bytes(7 + i as u64, 768 * 1024);
            let sent = data.clone();
            let writer = spawn(async move {
                write_in_pieces(&mut a, &sent, 11).await;
                a
            });
            let mut rng = Rng(42);
            let mut got = Vec::with_capacity(data.len());
            let (mut abandoned, mut timed_out) = (0, 0);
            loop {
                let mut buf = vec![0u8; rng.range(1, 9000)];
                let n = match rng.next() % 4 {
                    0 => {
                        let mut read = pin!(b.read(&mut buf));
                        match poll_once(&mut read).await {
                            Poll::Ready(r) => r.unwrap(),
                            Poll::Pending => {
                                abandoned += 1;
                                continue;
                            }
                        }
                    }
                    1 => {
                        let pause = sleep(Duration::from_micros(rng.range(1, 300) as u64));
                        match select(b.read(&mut buf), pause).await {
                            Either::Left(r) => r.unwrap(),
                            Either::Right(_) => {
                                abandoned += 1;
                                continue;
                            }
                        }
                    }
                    2 => {
                        let limit = Duration::from_micros(rng.range(1, 300) as u64);
                        match timeout(limit, b.read(&mut buf)).await {
                            Ok(r) => r.unwrap(),
                            Err(_) => {
                                timed_out += 1;
                                continue;
                            }
                        }
                    }
                    _ => b.read(&mut buf).await.unwrap(),
                };
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == data, "{mechanism:?}: {} of {} bytes, not the same", got.len(), data.len());
            // How many reads were abandoned depends on timing (a slow build keeps the reader
            // behind the writer); `cancelled_read_reports_cancelled_and_loses_nothing` covers
            // each kind on an idle stream, where it is certain.
            assert!(abandoned + timed_out > 0, "{mechanism:?}: no read abandoned");
            // The end of the stream reads as 0, again and again.
            for _ in 0..3 {
                assert_eq!(b.read(&mut [0u8; 16]).await.unwrap(), 0);
            }
            drop(writer.await.unwrap());
            drop(b);
            assert_pool_settled(&format!("{mechanism:?}")).await;
            assert!(until(|| leaked_fds(&fds_before).is_empty()).await,
                "{mechanism:?}: leaked {:?}", leaked_fds(&fds_before));
        }
    }
}

/// Closes `stream` with a reset (`SO_LINGER` 0): the peer's next sends fail.
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

both_backends! {
    /// A write to a peer that reset the connection: the real errno (`EPIPE` or
    /// `ECONNRESET`) comes back from a `poll_write` (the first after the reset, or a later one
    /// if the reset was still on its way), never swallowed, through tokio's trait and hyper's.
    async fn write_error_is_reported() {
        for mechanism in MECHANISMS {
            for via_hyper in [false, true] {
                let (client, server) = tcp_streams().await;
                let mut client = Io::with_mechanism(client, mechanism);
                client.write_all(b"hello").await.unwrap();
                reset(server);
                let mut err = None;
                for _ in 0..100 {
                    let r = if via_hyper {
                        poll_fn(|cx| {
                            hyper::rt::Write::poll_write(Pin::new(&mut client), cx, b"there?")
                        })
                        .await
                    } else {
                        client.write(b"are you there?").await
                    };
                    if let Err(e) = r {
                        err = Some(e);
                        break;
                    }
                    sleep(Duration::from_millis(1)).await.unwrap();
                }
                let err = err.unwrap_or_else(|| panic!("{mechanism:?}: no error"));
                assert!(
                    matches!(err.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)),
                    "{mechanism:?}: {err:?}"
                );
                // Later writes keep failing (the kernel says so again).
                assert!(client.write(b"again").await.is_err());
            }
        }
        assert_pool_settled("reset").await;
    }
}

both_backends! {
    /// `poll_shutdown` half-closes after everything written: the peer reads it all and the
    /// end of the stream, and can still answer; we read the answer.
    async fn shutdown_half_closes() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let (mut a, mut b) = tcp_pair(mechanism).await;
            // More than the socket buffers hold: the peer reads while we write.
            let data = random_bytes(100 + i as u64, 6 * 1024 * 1024 + 123);
            let expected = data.clone();
            let peer = spawn(async move {
                let mut got = Vec::new();
                b.read_to_end(&mut got).await.unwrap();
                assert!(got == expected, "{mechanism:?}: the peer got every byte");
                b.write_all(b"got it").await.unwrap();
                b.shutdown().await.unwrap();
                b
            });
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
            let mut answer = Vec::new();
            a.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"got it", "{mechanism:?}");
            drop(peer.await.unwrap());
        }
        assert_pool_settled("shutdown").await;
    }
}

/// A connected `SOCK_SEQPACKET` Unix pair as streams: each send is one record, and a receive
/// returns at most one, so the peer sees how many sends a write took.
fn seqpacket_pair() -> (UnixStream, UnixStream) {
    let (a, b) = socket2::Socket::pair(
        socket2::Domain::UNIX,
        socket2::Type::SEQPACKET.nonblocking().cloexec(),
        None,
    )
    .unwrap();
    let wrap = |s: socket2::Socket| {
        let std: std::os::unix::net::UnixStream = OwnedFd::from(s).into();
        UnixStream::from_std(std).unwrap()
    };
    (wrap(a), wrap(b))
}

both_backends! {
    /// A vectored write goes out in one system call or one SQE: the peer of a
    /// `SOCK_SEQPACKET` pair receives all its slices as one record.
    async fn vectored_write_is_one_send() {
        for mechanism in MECHANISMS {
            let (a, b) = seqpacket_pair();
            let mut a = Io::with_mechanism(a, mechanism);
            assert!(a.is_write_vectored());
            assert!(hyper::rt::Write::is_write_vectored(&a));
            let slices = [&b"head: "[..], &b"one "[..], &b"two "[..], &b"three"[..]];
            let bufs: Vec<_> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
            let n = a.write_vectored(&bufs).await.unwrap();
            assert_eq!(n, 19, "{mechanism:?}: every slice taken");
            a.flush().await.unwrap();
            // Through hyper's trait too.
            let n = poll_fn(|cx| hyper::rt::Write::poll_write_vectored(Pin::new(&mut a), cx, &bufs))
                .await
                .unwrap();
            assert_eq!(n, 19);
            poll_fn(|cx| hyper::rt::Write::poll_flush(Pin::new(&mut a), cx)).await.unwrap();
            for _ in 0..2 {
                let (n, got) = b.read(vec![0u8; 1024]).await;
                assert_eq!(
                    &got[..n.unwrap()],
                    b"head: one two three",
                    "{mechanism:?}: one record"
                );
            }
        }
    }
}

both_backends! {
    /// Dropping an `Io` while its ops are in flight: a read waiting for data (the pooled
    /// receive, or the readiness poll) and a write waiting for room (its poll). Nothing leaks
    /// (descriptors, pool buffers, ops), and AddressSanitizer sees no bad access (run this
    /// file with `RUSTFLAGS=-Zsanitizer=address cargo +nightly test --target
    /// x86_64-unknown-linux-gnu ...`).
    async fn drop_with_ops_in_flight() {
        for mechanism in MECHANISMS {
            let fds_before = open_fds();
            // A read in flight.
            let (a, mut b) = tcp_pair(mechanism).await;
            let mut buf = [0u8; 64];
            {
                let mut read = pin!(b.read(&mut buf));
                assert!(poll_once(&mut read).await.is_pending());
            }
            drop(b);
            // Bytes that arrive after the drop land nowhere.
            drop(a);

            // A write waiting for room, to a peer that does not read: fill both socket buffers.
            let (mut a, b) = tcp_pair(mechanism).await;
            let chunk = vec![0x5a; 256 * 1024];
            loop {
                let mut write = pin!(a.write(&chunk));
                match poll_once(&mut write).await {
                    Poll::Ready(r) => {
                        r.unwrap();
                    }
                    Poll::Pending => break,
                }
            }
            drop(a);
            drop(b);
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
            assert!(until(|| ringloop_runtime::current_stats().ops_in_flight == 0).await,
                "{mechanism:?}: {:?}", ringloop_runtime::current_stats());
            assert_pool_settled(&format!("{mechanism:?}")).await;
            assert!(until(|| leaked_fds(&fds_before).is_empty()).await,
                "{mechanism:?}: leaked {:?}", leaked_fds(&fds_before));
        }
    }
}

both_backends! {
    /// A ringloop task cancelled while suspended in a compat read gets the cancellation from
    /// the read, as an `io::Error` carrying `Cancelled`; so does a read that a `timeout`
    /// ends, and a read future may be dropped while it waits. The bytes sent afterwards are
    /// read in full, once, by the next reads of the same `Io`.
    async fn cancelled_read_reports_cancelled_and_loses_nothing() {
        for mechanism in MECHANISMS {
            let (mut a, b) = tcp_pair(mechanism).await;
            let reader = spawn(async move {
                let mut b = b;
                let mut buf = [0u8; 64];
                // The error carries the `Cancelled`: returning it would end the task cancelled
                // (and drop `b`), so only what it says comes back.
                let r = b.read(&mut buf).await.map_err(|e| (is_cancelled(&e), e.kind()));
                (r, b)
            });
            for _ in 0..3 {
                yield_now().await.unwrap();
            }
            assert!(reader.cancel());
            let (r, mut b) = reader.await.unwrap();
            assert_eq!(r, Err((true, io::ErrorKind::Other)), "{mechanism:?}");
            // A ringloop `timeout` (a scoped cancellation) and a dropped read future (tokio's
            // `timeout` style), on the idle stream.
            let mut buf = [0u8; 64];
            let r = timeout(Duration::from_millis(2), b.read(&mut buf)).await;
            assert!(r.is_err(), "{mechanism:?}: timed out");
            {
                let mut read = pin!(b.read(&mut buf));
                assert!(poll_once(&mut read).await.is_pending());
            }
            let pause = sleep(Duration::from_millis(2));
            assert!(matches!(select(b.read(&mut buf), pause).await, Either::Right(_)));
            a.write_all(b"after the cancel").await.unwrap();
            a.flush().await.unwrap();
            let mut got = [0u8; 16];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"after the cancel");
            a.write_all(b"!").await.unwrap();
            a.shutdown().await.unwrap();
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"!", "{mechanism:?}: nothing more, nothing less");
        }
        assert_pool_settled("cancel").await;
    }
}

both_backends! {
    /// tokio's reads and writes through an `Io`, bounded with `DeadlineExt`: a read with no
    /// data and a write with no room time out (`ETIMEDOUT`) having taken or written nothing,
    /// the `Io` stays usable, and a later read, with or without a deadline, gets every byte
    /// once. Both mechanisms (the pooled one waits on its receiver, the readiness one on a
    /// poll op kept between reads, which a deadline must not follow into the next read).
    async fn reads_and_writes_with_a_deadline_lose_nothing() {
        use ringloop_net::DeadlineExt;
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let (mut a, mut b) = tcp_pair(mechanism).await;
            let mut buf = [0u8; 64];
            let e = b.read(&mut buf).timeout(Duration::from_millis(3)).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT), "{mechanism:?}");
            // The next read has no deadline: the first one's does not reach it.
            a.write_all(b"late").await.unwrap();
            let n = b.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"late", "{mechanism:?}");
            // Writes to a peer that does not read: the buffers fill, then a write times out.
            let data = random_bytes(700 + i as u64, 16 * 1024 * 1024);
            let mut sent = 0;
            loop {
                let end = (sent + 100_000).min(data.len());
                match a.write(&data[sent..end]).timeout(Duration::from_millis(5)).await {
                    Ok(n) => sent += n,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ETIMEDOUT), "{mechanism:?}");
                        break;
                    }
                }
                assert!(sent < data.len(), "{mechanism:?}: the buffers never filled");
            }
            a.shutdown().await.unwrap();
            let mut got = Vec::new();
            b.read_to_end(&mut got).timeout(Duration::from_secs(60)).await.unwrap();
            assert!(got == data[..sent], "{mechanism:?}: {} read, {sent} sent", got.len());
        }
        assert_pool_settled("deadlines").await;
    }
}

both_backends! {
    /// A task cancelled while its write waits for room (the peer does not read): the write
    /// returns the cancellation as an error and wrote nothing, so nothing is lost or sent
    /// twice: the task writes on, and the peer gets every byte once.
    async fn cancelled_write_loses_nothing() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let (a, mut b) = tcp_pair(mechanism).await;
            let data = random_bytes(300 + i as u64, 8 * 1024 * 1024);
            let sent = data.clone();
            let writer = spawn(async move {
                let mut a = a;
                let mut at = 0;
                let mut cancels = 0;
                // Keep writing through cancellations until everything is written.
                while at < sent.len() {
                    let end = (at + 100_000).min(sent.len());
                    match a.write(&sent[at..end]).await {
                        Ok(n) => at += n,
                        Err(e) if is_cancelled(&e) => cancels += 1,
                        Err(e) => panic!("{mechanism:?}: {e:?}"),
                    }
                }
                a.shutdown().await.unwrap();
                (a, cancels)
            });
            // Let the writer fill the socket buffers and wait, then cancel it a few times.
            let mut cancelled = 0;
            for _ in 0..3 {
                sleep(Duration::from_millis(20)).await.unwrap();
                if writer.cancel() {
                    cancelled += 1;
                }
            }
            assert!(cancelled > 0);
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            let (_a, cancels) = writer.await.unwrap();
            assert!(cancels > 0, "{mechanism:?}: the writer saw a cancellation");
            assert!(got == data, "{mechanism:?}: {} of {} bytes, not the same", got.len(), data.len());
        }
        assert_pool_settled("cancelled write").await;
    }
}

both_backends! {
    /// tokio's helpers over compat streams: `copy_bidirectional` in a proxy between two
    /// connections, `read_to_end`, several MiB byte-exact both ways, and the end of the
    /// stream read as 0 again and again.
    async fn copy_bidirectional_and_read_to_end() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            // client <-> proxy (copy_bidirectional) <-> echo server
            let (client, mut proxy_front) = tcp_pair(mechanism).await;
            let (mut proxy_back, echo) = tcp_pair(mechanism).await;
            let echo = spawn(async move {
                let (mut r, mut w) = echo.into_split();
                let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
                n
            });
            let proxy = spawn(async move {
                tokio::io::copy_bidirectional(&mut proxy_front, &mut proxy_back)
                    .await
                    .unwrap()
            });
            let data = random_bytes(500 + i as u64, 5 * 1024 * 1024 + 17);
            let (mut r, mut w) = client.into_split();
            let sent = data.clone();
            let writer = spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert!(got == data, "{mechanism:?}: {} of {} bytes, not the same", got.len(), data.len());
            for _ in 0..3 {
                assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 0);
            }
            let (up, down) = proxy.await.unwrap();
            assert_eq!((up, down), (data.len() as u64, data.len() as u64));
            assert_eq!(echo.await.unwrap(), data.len() as u64);
            drop(writer.await.unwrap());
        }
        assert_pool_settled("copy").await;
    }
}

both_backends! {
    /// Unix streams and their halves: 2 MiB one way in random pieces, the answer back after the
    /// half-close, byte-exact.
    async fn unix_streams_and_halves() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let (a, b) = UnixStream::pair().unwrap();
            let (mut ar, mut aw) = Io::with_mechanism(a, mechanism).into_split();
            let mut b = Io::with_mechanism(b, mechanism);
            let data = random_bytes(700 + i as u64, 2 * 1024 * 1024 + 5);
            let sent = data.clone();
            let writer = spawn(async move {
                write_in_pieces(&mut aw, &sent, 13).await;
                aw
            });
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            assert!(got == data, "{mechanism:?}: {} of {} bytes", got.len(), data.len());
            b.write_all(b"bye").await.unwrap();
            b.shutdown().await.unwrap();
            let mut answer = Vec::new();
            ar.read_to_end(&mut answer).await.unwrap();
            assert_eq!(answer, b"bye", "{mechanism:?}");
            drop(writer.await.unwrap());
        }
        assert_pool_settled("unix").await;
    }
}

both_backends! {
    /// `into_inner` hands unread bytes back: the rest of a partly read chunk and what the
    /// receiver had queued come back from the stream's own `read`.
    async fn into_inner_keeps_unread_bytes() {
        for mechanism in MECHANISMS {
            let (mut a, b) = tcp_pair(mechanism).await;
            a.write_all(b"0123456789").await.unwrap();
            a.flush().await.unwrap();
            let mut b = b;
            let mut two = [0u8; 2];
            b.read_exact(&mut two).await.unwrap();
            assert_eq!(&two, b"01");
            let stream = b.into_inner();
            let mut rest = Vec::new();
            while rest.len() < 8 {
                let (n, buf) = stream.read(vec![0u8; 64]).await;
                rest.extend_from_slice(&buf[..n.unwrap()]);
            }
            assert_eq!(rest, b"23456789", "{mechanism:?}");
            // And back into an Io: the readiness mechanism reads what a receiver left, too.
            a.write_all(b"abc").await.unwrap();
            a.flush().await.unwrap();
            let mut b = Io::with_mechanism(stream, mechanism);
            let mut three = [0u8; 3];
            b.read_exact(&mut three).await.unwrap();
            assert_eq!(&three, b"abc");
        }
        assert_pool_settled("into_inner").await;
    }
}

both_backends! {
    /// An error the connection reported after the last bytes a read returned is not lost when
    /// the `Io` gives its stream back: the stream's next read reports it.
    async fn into_inner_keeps_an_error_met_after_the_last_bytes() {
        for mechanism in MECHANISMS {
            let (a, b) = tcp_streams().await;
            let mut a = Io::new(a);
            a.write_all(b"abc").await.unwrap();
            a.flush().await.unwrap();
            reset(a.into_inner());
            // Let the data and the reset both arrive before the read.
            sleep(Duration::from_millis(50)).await.unwrap();
            let mut b = Io::with_mechanism(b, mechanism);
            let mut buf = [0u8; 16];
            let n = b.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"abc", "{mechanism:?}");
            let stream = b.into_inner();
            let (r, _) = stream.read(vec![0u8; 16]).await;
            let e = r.expect_err("the reset is reported");
            assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET), "{mechanism:?}: {e}");
        }
        assert_pool_settled("into_inner error").await;
    }
}

both_backends! {
    /// A real hyper HTTP/1 server (`serve_connection` with a `service_fn`) and a hyper client
    /// (`handshake`) over compat streams, both inside the ringloop runtime: several requests
    /// on one connection (keep-alive), bodies from empty to 1 MiB, echoed byte-exact.
    async fn hyper_client_and_server() {
        for (i, mechanism) in MECHANISMS.into_iter().enumerate() {
            let fds_before = open_fds();
            let listener = TcpListener::bind(localhost()).unwrap();
            let addr = listener.local_addr().unwrap();
            let server = spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut reply = path.into_bytes();
                        reply.extend_from_slice(&body);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(reply))))
                    },
                );
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(Io::with_mechanism(stream, mechanism), service)
                    .await
            });
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(Io::with_mechanism(stream, mechanism))
                    .await
                    .unwrap();
            let conn = spawn(conn);
            for (n, len) in [0usize, 10, 70_000, 1 << 20].into_iter().enumerate() {
                let body = random_bytes(900 + i as u64 + n as u64, len);
                let req = hyper::Request::post(format!("/r{n}"))
                    .header("host", "localhost")
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let got = resp.into_body().collect().await.unwrap().to_bytes();
                let mut expected = format!("/r{n}").into_bytes();
                expected.extend_from_slice(&body);
                assert!(got == expected, "{mechanism:?}: request {n}");
            }
            // Closing the client side ends both connection futures cleanly.
            drop(sender);
            conn.await.unwrap().unwrap();
            server.await.unwrap().unwrap();
            assert_pool_settled(&format!("hyper {mechanism:?}")).await;
            assert!(until(|| leaked_fds(&fds_before).is_empty()).await,
                "{mechanism:?}: leaked {:?}", leaked_fds(&fds_before));
        }
    }
}

both_backends! {
    /// The read traits on a half, and hyper's `Read` through a `ReadBufCursor`: reads into
    /// uninitialised memory report only what was received.
    async fn hyper_read_into_uninit_memory() {
        for mechanism in MECHANISMS {
            let (mut a, b) = tcp_pair(mechanism).await;
            let (mut r, _w) = b.into_split();
            a.write_all(b"hello").await.unwrap();
            a.flush().await.unwrap();
            let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 64];
            let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
            let mut got = 0;
            while got < 5 {
                poll_fn(|cx| hyper::rt::Read::poll_read(Pin::new(&mut r), cx, buf.unfilled()))
                    .await
                    .unwrap();
                got = buf.filled().len();
            }
            assert_eq!(buf.filled(), b"hello", "{mechanism:?}");
        }
    }
}

both_backends! {
    /// Reads that find nothing several times in one task poll, as hyper's do after each request
    /// (the pooled mechanism answers the repeats without asking the ring again), and a read
    /// that takes the last chunk queued, then finds nothing in the same poll: each poll writes
    /// the next byte from the peer after its reads, and the task still wakes for it. 100
    /// rounds, every byte once and in order.
    async fn reads_that_find_nothing_twice_in_one_poll_still_wake_for_data() {
        for mechanism in MECHANISMS {
            let (mut a, mut b) = tcp_pair(mechanism).await;
            let mut got = Vec::new();
            let mut sent = 0u8;
            let mut polls = 0;
            let done = timeout(
                Duration::from_secs(10),
                poll_fn(|cx| {
                    polls += 1;
                    let mut storage = [0u8; 64];
                    for _ in 0..3 {
                        let mut buf = tokio::io::ReadBuf::new(&mut storage);
                        match Pin::new(&mut b).poll_read(cx, &mut buf) {
                            Poll::Ready(r) => {
                                r.unwrap();
                                assert!(!buf.filled().is_empty(), "{mechanism:?}: end of stream");
                                got.extend_from_slice(buf.filled());
                            }
                            Poll::Pending => {}
                        }
                    }
                    if sent == 100 {
                        return if got.len() == 100 { Poll::Ready(()) } else { Poll::Pending };
                    }
                    // The next byte only once the last one arrived: it comes after this poll's
                    // reads, which have all found nothing.
                    if got.len() == usize::from(sent) {
                        let w = Pin::new(&mut a).poll_write(cx, &[sent]);
                        assert!(matches!(w, Poll::Ready(Ok(1))), "{mechanism:?}: {w:?}");
                        sent += 1;
                    }
                    Poll::Pending
                }),
            )
            .await;
            assert!(done.is_ok(), "{mechanism:?}: stuck after {} of 100 bytes", got.len());
            assert_eq!(got, (0..100).collect::<Vec<u8>>(), "{mechanism:?}");
            assert!(polls <= 400, "{mechanism:?}: {polls} polls for 100 bytes");
        }
        assert_pool_settled("repeated reads").await;
    }
}

both_backends! {
    /// A cancel requested between two reads of one task poll, the first of which found
    /// nothing, is not lost: the second read answers with it, or (readiness) returns `Pending`
    /// and the next poll's read does.
    async fn a_cancel_between_two_reads_of_one_poll_is_not_lost() {
        for mechanism in MECHANISMS {
            let (_a, b) = tcp_pair(mechanism).await;
            let task = spawn(async move {
                let mut b = b;
                let mut storage = [0u8; 16];
                let mut first = true;
                poll_fn(|cx| {
                    let mut buf = tokio::io::ReadBuf::new(&mut storage);
                    if first {
                        first = false;
                        assert!(Pin::new(&mut b).poll_read(cx, &mut buf).is_pending());
                        ringloop_runtime::current_task().unwrap().cancel();
                    }
                    match Pin::new(&mut b).poll_read(cx, &mut buf) {
                        Poll::Ready(Err(e)) => Poll::Ready(e),
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(())) => panic!("{mechanism:?}: a read with no data"),
                    }
                })
                .await
            });
            // The task took the cancellation from a read: it ends cancelled.
            match timeout(Duration::from_secs(10), task).await.unwrap() {
                Ok(e) => assert!(is_cancelled(&e), "{mechanism:?}: {e:?}"),
                Err(e) => assert!(
                    matches!(e, ringloop_runtime::TaskError::Cancelled(_)),
                    "{mechanism:?}: {e:?}"
                ),
            }
        }
        assert_pool_settled("cancel between reads").await;
    }
}

/// A combinator's per-future waker (as `FuturesUnordered` makes): a wake marks the sub-future
/// ready and wakes the task; the combinator polls ready sub-futures again within the same task
/// poll.
struct SubWaker {
    ready: std::sync::atomic::AtomicBool,
    parent: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for SubWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.parent.lock().unwrap().as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A pooled read that queued for a buffer (the pool dry) and is woken within the same task poll
/// by a buffer another sub-future of the task gives back, then polled again in that poll by a
/// combinator with its per-future waker: the read takes the buffer and gets its bytes (it
/// must not answer from what the first poll found).
#[test]
fn a_read_woken_by_a_buffer_in_the_same_poll_goes_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Waker};

    for backend in common::backends() {
        let _serial = common::serial();
        let rt = ringloop_runtime::Runtime::builder()
            .backend(backend)
            .buffer_pool(2, 512)
            .build()
            .unwrap();
        rt.block_on(async {
            let (c0, s0) = tcp_streams().await;
            let (c1, s1) = tcp_streams().await;
            // Another receiver takes both pool buffers and holds them.
            let mut rx0 = s0.pooled_receiver();
            let mut held = Vec::new();
            while held.len() < 2 {
                c0.write_all(vec![1u8; 400]).await.0.unwrap();
                held.push(rx0.recv().await.unwrap().unwrap());
            }
            let mut io1 = Io::with_mechanism(s1, Mechanism::Pooled);
            c1.write_all(vec![7u8; 100]).await.0.unwrap();
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
            let sub = Arc::new(SubWaker {
                ready: AtomicBool::new(true),
                parent: Mutex::new(None),
            });
            let sub_waker = Waker::from(sub.clone());
            let mut got = Vec::new();
            let done = timeout(
                Duration::from_secs(10),
                poll_fn(|cx| {
                    *sub.parent.lock().unwrap() = Some(cx.waker().clone());
                    let mut sub_cx = Context::from_waker(&sub_waker);
                    let mut storage = [0u8; 512];
                    while sub.ready.swap(false, Ordering::SeqCst) {
                        let mut buf = tokio::io::ReadBuf::new(&mut storage);
                        match Pin::new(&mut io1).poll_read(&mut sub_cx, &mut buf) {
                            Poll::Ready(r) => {
                                r.unwrap();
                                got.extend_from_slice(buf.filled());
                                if got.len() >= 100 {
                                    return Poll::Ready(());
                                }
                                sub.ready.store(true, Ordering::SeqCst);
                            }
                            // Another sub-future gives a buffer back now: the pool hands it to
                            // the queued read and wakes its waker at once.
                            Poll::Pending => drop(held.pop()),
                        }
                    }
                    Poll::Pending
                }),
            )
            .await;
            assert!(
                done.is_ok(),
                "{backend}: stuck after {} of 100 bytes",
                got.len()
            );
            assert_eq!(got, vec![7u8; 100], "{backend}");
            drop(held);
        });
    }
}

/// Splits over `tokio::io::split` as well (two tasks share one `Io` behind tokio's lock).
#[test]
fn tokio_split_halves_in_two_tasks() {
    for backend in common::backends() {
        common::run(backend, || async move {
            for mechanism in MECHANISMS {
                let (a, b) = tcp_pair(mechanism).await;
                let (mut br, mut bw) = tokio::io::split(b);
                let echo = spawn(async move {
                    tokio::io::copy(&mut br, &mut bw).await.unwrap();
                    bw.shutdown().await.unwrap();
                });
                let (mut ar, mut aw) = tokio::io::split(a);
                let data = random_bytes(77, 300_000);
                let sent = data.clone();
                let writer = spawn(async move {
                    aw.write_all(&sent).await.unwrap();
                    aw.shutdown().await.unwrap();
                });
                let mut got = Vec::new();
                ar.read_to_end(&mut got).await.unwrap();
                assert!(got == data, "{backend}/{mechanism:?}");
                writer.await.unwrap();
                echo.await.unwrap();
            }
        });
    }
}

/// `Io` is usable as a trait object of both libraries' traits (and `Unpin`).
#[allow(dead_code)]
fn the_traits_are_implemented() {
    fn tokio_io<T: AsyncRead + AsyncWrite + Unpin>() {}
    fn hyper_io<T: hyper::rt::Read + hyper::rt::Write + Unpin>() {}
    tokio_io::<Io<TcpStream>>();
    tokio_io::<Io<UnixStream>>();
    hyper_io::<Io<TcpStream>>();
    hyper_io::<Io<UnixStream>>();
    fn reads<T: AsyncRead + hyper::rt::Read>() {}
    fn writes<T: AsyncWrite + hyper::rt::Write>() {}
    reads::<Io<ringloop_net::OwnedReadHalf>>();
    writes::<Io<ringloop_net::OwnedWriteHalf>>();
    reads::<Io<ringloop_net::unix::OwnedReadHalf>>();
    writes::<Io<ringloop_net::unix::OwnedWriteHalf>>();
}
