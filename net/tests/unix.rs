//! Unix domain sockets on both backends.

mod common;

use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringloop_net::{IoBuf, UnixDatagram, UnixListener, UnixStream};
use ringloop_runtime::{gather, sleep, spawn, timeout, yield_now};

/// A unique socket path under the temp dir, removed on drop (also when the test fails).
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ringloop-{}-{tag}-{n}.sock", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    /// Removes the socket file, asserting that the socket had created it.
    fn remove(&self) {
        std::fs::remove_file(&self.0).expect("the socket file existed");
        assert!(!self.0.exists());
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

/// Echoes everything until end of stream, then ends.
async fn echo(conn: UnixStream) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, b) = conn.read(buf).await;
        let n = n.unwrap();
        if n == 0 {
            return;
        }
        let (r, b) = conn.write_all(b.slice(..n)).await;
        r.unwrap();
        buf = b.into_inner();
    }
}

both_backends! {
    async fn stream_echo_byte_exact() {
        let path = TempPath::new("echo");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(path.as_ref()));
        let server = spawn(async move {
            let (conn, peer) = listener.accept().await.unwrap();
            assert!(peer.is_unnamed(), "the client never bound: {peer:?}");
            echo(conn).await;
        });
        let client = UnixStream::connect(&path).await.unwrap();
        assert_eq!(client.peer_addr().unwrap().as_pathname(), Some(path.as_ref()));
        assert!(client.local_addr().unwrap().is_unnamed());
        let (reader, writer) = client.into_split();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        // Write from one task while reading from another: 100 KB is more than the socket
        // buffers hold, so a single task writing everything first would deadlock the echo.
        let sender = spawn(async move {
            let (r, _) = writer.write_all(payload).await;
            r.unwrap();
            // Dropping the write half shuts down writing: the server sees end of stream.
        });
        let mut got = Vec::new();
        loop {
            let (n, b) = reader.read(vec![0u8; 8192]).await;
            let n = n.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "echoed bytes differ");
        sender.await.unwrap();
        server.await.unwrap();
        path.remove();
    }
}

both_backends! {
    async fn pair_round_trip_and_read_exact() {
        let (a, b) = UnixStream::pair().unwrap();
        assert!(a.local_addr().unwrap().is_unnamed());
        assert!(a.peer_addr().unwrap().is_unnamed());
        let (r, _) = a.write_all(b"hello, pair".as_slice()).await;
        r.unwrap();
        let (r, buf) = b.read_exact(Vec::with_capacity(11)).await;
        r.unwrap();
        assert_eq!(buf, b"hello, pair");
        let (r, _) = b.write(b"back".to_vec()).await;
        assert_eq!(r.unwrap(), 4);
        drop(b);
        // read_exact past the end of stream.
        let (r, buf) = a.read_exact(Vec::with_capacity(10)).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, b"back", "what arrived before the end is kept");
    }
}

both_backends! {
    async fn listener_accepts_fifty_concurrent_clients() {
        const CLIENTS: u32 = 50;
        let path = TempPath::new("fifty");
        let listener = UnixListener::bind(&path).unwrap();
        let server = spawn(async move {
            let mut handlers = Vec::new();
            for _ in 0..CLIENTS {
                let (conn, _) = listener.accept().await.unwrap();
                handlers.push(spawn(echo(conn)));
            }
            gather(handlers).await.unwrap();
        });
        let target = path.0.clone();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let target = target.clone();
                spawn(async move {
                    let c = UnixStream::connect(&target).await.unwrap();
                    for round in 0..3u32 {
                        let msg = format!("client {i} round {round}").into_bytes();
                        let (r, msg) = c.write_all(msg).await;
                        r.unwrap();
                        let (r, got) = c.read_exact(Vec::with_capacity(msg.len())).await;
                        r.unwrap();
                        assert_eq!(got, msg);
                    }
                    c.shutdown(Shutdown::Write).unwrap();
                    let (n, _) = c.read(vec![0u8; 16]).await;
                    assert_eq!(n.unwrap(), 0, "the server closed after our end of stream");
                })
            })
            .collect();
        gather(clients).await.unwrap();
        server.await.unwrap();
        path.remove();
    }
}

both_backends! {
    async fn connect_errors_carry_the_real_errno() {
        // 1. Nothing at the path.
        let missing = TempPath::new("missing");
        let e = UnixStream::connect(&missing).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

        // 2. A socket file that nobody listens on any more.
        let stale = TempPath::new("stale");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(stale.0.exists());
        let e = UnixStream::connect(&stale).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");

        // 3. Binding where the file exists.
        let e = UnixListener::bind(&stale).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        stale.remove();

        // 4. A path too long for a sockaddr_un.
        let long = std::env::temp_dir().join("x".repeat(200));
        let e = UnixStream::connect(&long).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");

        // 5. A stream connect to a datagram socket.
        let dgram = TempPath::new("proto");
        let _d = UnixDatagram::bind(&dgram).unwrap();
        let e = UnixStream::connect(&dgram).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPROTOTYPE), "{e}");
        dgram.remove();
    }
}

both_backends! {
    async fn half_close_then_reply() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _) = a.write_all(b"request".as_slice()).await;
        r.unwrap();
        a.shutdown(Shutdown::Write).unwrap();
        // The peer reads the request, then end of stream...
        let (r, buf) = b.read(vec![0u8; 64]).await;
        assert_eq!(&buf[..r.unwrap()], b"request");
        let (r, _) = b.read(vec![0u8; 64]).await;
        assert_eq!(r.unwrap(), 0);
        // ...and can still answer on its own direction.
        let (r, _) = b.write_all(b"response".as_slice()).await;
        r.unwrap();
        let (r, buf) = a.read(vec![0u8; 64]).await;
        assert_eq!(&buf[..r.unwrap()], b"response");
        // Writing after our own shutdown is EPIPE (never a SIGPIPE).
        let (r, _) = a.write(b"late".as_slice()).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPIPE));
    }
}

both_backends! {
    async fn write_to_a_closed_peer_is_epipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let (r, buf) = a.write_all(vec![7u8; 1024]).await;
        let e = r.unwrap_err();
        assert_eq!(e.sent, 0);
        assert_eq!(e.error.raw_os_error(), Some(libc::EPIPE), "{e}");
        assert_eq!(buf.len(), 1024, "the buffer comes back");
    }
}

both_backends! {
    async fn split_halves_from_two_tasks() {
        let (a, b) = UnixStream::pair().unwrap();
        let (ra, wa) = a.into_split();
        // `b` echoes in its own task while `a`'s halves write and read in two others.
        let echoer = spawn(echo(b));
        let writer = spawn(async move {
            for i in 0..100u32 {
                let (r, _) = wa.write_all(i.to_le_bytes().to_vec()).await;
                r.unwrap();
            }
            // `wa` drops here: end of stream for the echoer, which then closes.
        });
        let reader = spawn(async move {
            let (r, buf) = ra.read_exact(Vec::with_capacity(400)).await;
            r.unwrap();
            let want: Vec<u8> = (0..100u32).flat_map(|i| i.to_le_bytes()).collect();
            assert_eq!(buf, want);
            let (n, _) = ra.read(vec![0u8; 4]).await;
            assert_eq!(n.unwrap(), 0);
        });
        gather(vec![writer, reader]).await.unwrap();
        echoer.await.unwrap();
    }
}

both_backends! {
    async fn datagram_pair_round_trip_keeps_boundaries() {
        let (a, b) = UnixDatagram::pair().unwrap();
        for msg in [&b"one"[..], &b""[..], &b"three three"[..]] {
            let (r, _) = a.send(msg.to_vec()).await;
            assert_eq!(r.unwrap(), msg.len());
        }
        for want in [&b"one"[..], &b""[..], &b"three three"[..]] {
            let (r, buf) = b.recv(vec![0u8; 64]).await;
            assert_eq!(&buf[..r.unwrap()], want);
        }
        // From a pair, the sender is unnamed.
        let (r, _) = b.send(b"x".as_slice()).await;
        r.unwrap();
        let (r, _) = a.recv_from(vec![0u8; 8]).await;
        let (n, from) = r.unwrap();
        assert_eq!(n, 1);
        assert!(from.is_unnamed(), "{from:?}");
    }
}

both_backends! {
    async fn datagram_recv_datagram_reports_truncation() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let (r, _) = a.send(b"abcdefgh".as_slice()).await;
        r.unwrap();
        let (meta, buf) = b.recv_datagram(Vec::with_capacity(3)).await;
        let meta = meta.unwrap();
        assert_eq!((meta.len, meta.datagram_len, meta.is_truncated()), (3, 8, true));
        assert!(meta.from.is_unnamed());
        assert_eq!(&buf[..], b"abc");
    }
}

both_backends! {
    async fn datagram_send_to_recv_from_by_path() {
        let server_path = TempPath::new("dgram-srv");
        let client_path = TempPath::new("dgram-cli");
        let server = UnixDatagram::bind(&server_path).unwrap();
        let client = UnixDatagram::bind(&client_path).unwrap();
        assert_eq!(server.local_addr().unwrap().as_pathname(), Some(server_path.as_ref()));

        // Request, with the sender's path, and a reply to that path.
        let (r, _) = client.send_to(b"ping".as_slice(), &server_path).await;
        assert_eq!(r.unwrap(), 4);
        let (r, buf) = server.recv_from(vec![0u8; 64]).await;
        let (n, from) = r.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from.as_pathname(), Some(client_path.as_ref()));
        let (r, _) = server.send_to(b"pong".as_slice(), from.as_pathname().unwrap()).await;
        r.unwrap();
        let (r, buf) = client.recv_from(vec![0u8; 64]).await;
        let (n, from) = r.unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(from.as_pathname(), Some(server_path.as_ref()));

        // An unbound sender shows up unnamed.
        let anon = UnixDatagram::unbound().unwrap();
        let (r, _) = anon.send_to(b"anon".as_slice(), &server_path).await;
        r.unwrap();
        let (r, _) = server.recv_from(vec![0u8; 64]).await;
        assert!(r.unwrap().1.is_unnamed());

        // Connected: send/recv, peer_addr.
        anon.connect(&server_path).unwrap();
        assert_eq!(anon.peer_addr().unwrap().as_pathname(), Some(server_path.as_ref()));
        let (r, _) = anon.send(b"connected".as_slice()).await;
        r.unwrap();
        let (r, buf) = server.recv(vec![0u8; 64]).await;
        assert_eq!(&buf[..r.unwrap()], b"connected");

        // Errors: nobody at the path; not connected.
        let missing = TempPath::new("dgram-missing");
        let (r, _) = anon.send_to(b"x".as_slice(), &missing).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT));
        let (r, _) = UnixDatagram::unbound().unwrap().send(b"x".as_slice()).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOTCONN));

        drop((server, client));
        server_path.remove();
        client_path.remove();
    }
}

both_backends! {
    async fn from_std_and_into_std() {
        let path = TempPath::new("std");
        let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let listener = UnixListener::from_std(std_listener).unwrap();
        let std_client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let client = UnixStream::from_std(std_client).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (r, _) = client.write_all(b"std".as_slice()).await;
        r.unwrap();
        let (r, buf) = server.read_exact(Vec::with_capacity(3)).await;
        r.unwrap();
        assert_eq!(buf, b"std");
        let back = server.into_std().unwrap();
        assert!(back.local_addr().unwrap().as_pathname().is_some());
        path.remove();
    }
}

/// Sends 2 000 datagrams to a receiver that reads slowly: its queue (`net.unix.max_dgram_qlen`,
/// 10 by default) fills again and again, and the sender must wait, never lose or mangle a
/// datagram. On io_uring this pins the `EAGAIN` handling of `send_datagram`: letting the
/// kernel retry a Unix datagram send by itself sends an empty datagram instead.
async fn backpressure(connected: bool) {
    const COUNT: u32 = 2000;
    let path = TempPath::new(if connected { "bp-conn" } else { "bp-unconn" });
    let rx = UnixDatagram::bind(&path).unwrap();
    let tx = UnixDatagram::unbound().unwrap();
    if connected {
        tx.connect(&path).unwrap();
    }
    let target = path.0.clone();
    let sender = spawn(async move {
        for i in 0..COUNT {
            let msg = i.to_le_bytes().to_vec();
            let (r, _) = if connected {
                tx.send(msg).await
            } else {
                tx.send_to(msg, &target).await
            };
            assert_eq!(r.unwrap(), 4, "datagram {i}");
        }
    });
    let received = timeout(Duration::from_secs(60), async {
        for i in 0..COUNT {
            // Read slower than the sender writes.
            for _ in 0..3 {
                yield_now().await.unwrap();
            }
            let (r, buf) = rx.recv(vec![0u8; 8]).await;
            assert_eq!(
                (r.unwrap(), &buf[..4]),
                (4, &i.to_le_bytes()[..]),
                "datagram {i}"
            );
        }
    })
    .await;
    received.expect("all datagrams arrived in time");
    sender.await.unwrap();
    drop(rx);
    path.remove();
}

both_backends! {
    async fn datagram_backpressure_connected() {
        backpressure(true).await;
    }
}

both_backends! {
    async fn datagram_backpressure_unconnected() {
        backpressure(false).await;
    }
}

both_backends! {
    async fn connect_waits_while_the_backlog_is_full() {
        // A listener with a backlog of 0 queues one connection; the next connect gets EAGAIN
        // until the first is accepted, and is retried (on a timer) meanwhile.
        let path = TempPath::new("backlog");
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
        socket.listen(0).unwrap();
        let listener = UnixListener::from_std(socket.into()).unwrap();

        let first = UnixStream::connect(&path).await.unwrap();
        let target = path.0.clone();
        let second = spawn(async move { UnixStream::connect(&target).await });
        // 1. The backlog is full: the second connect keeps waiting.
        for _ in 0..5 {
            sleep(Duration::from_millis(2)).await.unwrap();
        }
        assert!(!second.is_done(), "connected although the backlog was full");
        // 2. Accepting the first makes room; the second gets through.
        let (a, _) = listener.accept().await.unwrap();
        let second = timeout(Duration::from_secs(10), second).await.unwrap().unwrap().unwrap();
        let (b, _) = listener.accept().await.unwrap();
        // 3. Both connections work.
        for (client, server) in [(&first, &a), (&second, &b)] {
            let (r, _) = client.write_all(b"hi".as_slice()).await;
            r.unwrap();
            let (r, buf) = server.read_exact(Vec::with_capacity(2)).await;
            r.unwrap();
            assert_eq!(buf, b"hi");
        }
        path.remove();
    }
}

/// Echoes through a pooled receiver, writing back every queued chunk in one gather write.
async fn pooled_echo(conn: UnixStream) {
    let mut rx = conn.pooled_receiver();
    while let Some(first) = rx.recv().await.unwrap() {
        let mut chunks = vec![first];
        while let Some(Ok(Some(more))) = rx.try_recv() {
            chunks.push(more);
        }
        let (r, _) = conn.write_all_vectored(chunks).await;
        r.unwrap();
    }
}

both_backends! {
    /// The pooled receiver and gather writes work on Unix streams as on TCP, and so do the
    /// halves' versions of both: 200 KiB in mixed-size pieces come back byte-exact.
    async fn pooled_receiver_and_gather_writes_on_streams_and_halves() {
        let (a, b) = UnixStream::pair().unwrap();
        let echoer = spawn(pooled_echo(b));
        let (ra, wa) = a.into_split();
        let payload: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 253) as u8).collect();
        let pieces: Vec<Vec<u8>> = payload
            .chunks(3000)
            .map(|c| c.to_vec())
            .collect();
        let writer = spawn(async move {
            for batch in pieces.chunks(7) {
                let (r, _) = wa.write_all_vectored(batch.to_vec()).await;
                r.unwrap();
            }
        });
        let total = payload.len();
        let reader = spawn(async move {
            let mut rx = ra.pooled_receiver_with_cap(4);
            let mut got = Vec::with_capacity(total);
            while let Some(chunk) = rx.recv().await.unwrap() {
                got.extend_from_slice(&chunk);
            }
            got
        });
        writer.await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), total);
        assert!(got == payload, "the echo differs from what was sent");
        echoer.await.unwrap();
    }
}

both_backends! {
    /// A gather write to a peer that shut its write side and reads late still waits for room:
    /// the peer's half-close makes the socket report `EPOLLRDHUP`, which io_uring's internal
    /// poll of a waiting `sendmsg` fires on at once, so after its retries the kernel runs the
    /// send on a worker, where a non-blocking socket's `sendmsg` answers `EAGAIN`. That is a
    /// wait, not an error.
    async fn a_gather_write_to_a_half_closed_peer_that_reads_late_waits_for_room() {
        let (a, b) = UnixStream::pair().unwrap();
        b.shutdown(Shutdown::Write).unwrap();
        let chunks: Vec<Vec<u8>> = (0..64u32).map(|i| vec![i as u8; 64 * 1024]).collect();
        let total: usize = chunks.iter().map(Vec::len).sum();
        let writer = spawn(async move {
            let (r, _) = a.write_all_vectored(chunks).await;
            r.map_err(|e| e.to_string())
        });
        for _ in 0..20 {
            sleep(Duration::from_millis(1)).await.unwrap();
        }
        let mut got = 0usize;
        let mut expect = 0u8;
        let mut seen = 0usize;
        while got < total {
            let (n, buf) = b.read(Vec::with_capacity(256 * 1024)).await;
            let n = n.unwrap();
            assert!(n > 0, "early end of stream after {got} bytes");
            for &byte in &buf {
                assert_eq!(byte, expect, "byte {}", got + seen);
                seen += 1;
                if seen == 64 * 1024 {
                    seen = 0;
                    expect = expect.wrapping_add(1);
                }
            }
            got += n;
        }
        assert_eq!(writer.await.unwrap(), Ok(()));
    }
}
