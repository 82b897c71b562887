//! TCP under faults, on both backends: cancelled reads, peers that reset or half-close, a
//! client that never reads, a refused connect. Errors must come back as `io::Error` with the
//! real errno, never as a panic, and a server must go on serving other clients.

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use common::{localhost, read_to_end, tick, until};
use ringloop_net::{TcpListener, TcpStream};
use ringloop_runtime::{is_cancelled, sleep, spawn};

/// Bytes queued for reading on a socket (`FIONREAD`).
fn bytes_readable(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into a live local.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

/// Waits (bounded, without the loop) until `fd` has bytes to read.
fn wait_for_bytes(fd: RawFd) {
    for _ in 0..100_000 {
        if bytes_readable(fd) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    panic!("no data ever arrived on descriptor {fd}");
}

// ---- cancellation (not drop) of a read in flight ----------------------------------------------

both_backends! {
    /// The task is suspended in a read; `cancel()` makes that read resolve to an error that
    /// `is_cancelled` recognises, with the very buffer handed in.
    async fn cancel_while_recv_in_flight_gives_the_buffer_back() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let buf = Vec::<u8>::with_capacity(4096);
        let ptr = buf.as_ptr() as usize;
        let reader = spawn(async move {
            let (r, buf) = server.read(buf).await;
            let e = r.expect_err("nobody writes: only the cancel ends the read");
            // Keep no `Cancelled` in the output: the task suppresses the cancellation.
            (is_cancelled(&e), buf)
        });
        for _ in 0..3 {
            tick().await; // the read is in flight (in the kernel on io_uring)
        }
        assert!(!reader.is_done());
        reader.cancel();
        let (cancelled, buf) = reader.await.unwrap();
        assert!(cancelled, "the read's error is a cancellation");
        assert_eq!(buf.as_ptr() as usize, ptr, "the same buffer comes back");
        assert_eq!(buf.capacity(), 4096);
        assert!(buf.is_empty());
    }
}

both_backends! {
    /// The op wins the race: data arrived before the cancelled task ran again. The data is
    /// delivered (nothing lost) and the cancellation is seen at the task's next await, here a
    /// second read, which also gives its buffer back.
    async fn cancel_racing_arrived_data_delivers_it_then_cancels_next_await() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let fd = server.as_raw_fd();
        let reader = spawn(async move {
            let (r, buf) = server.read(vec![0u8; 64]).await;
            let first = match r {
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) => Err(is_cancelled(&e)),
            };
            let (r, buf) = server.read(Vec::<u8>::with_capacity(64)).await;
            let second = match r {
                Ok(n) => Ok(n),
                Err(e) => Err(is_cancelled(&e)),
            };
            (first, second, buf.capacity())
        });
        for _ in 0..3 {
            tick().await; // the first read is in flight
        }
        // In this one iteration: data arrives, then the task is cancelled before it runs.
        client.write_all(b"hello").unwrap();
        wait_for_bytes(fd);
        reader.cancel();
        let (first, second, cap) = reader.await.unwrap();
        assert_eq!(first, Ok(b"hello".to_vec()), "the op won: its data is delivered");
        assert_eq!(second, Err(true), "the cancellation is seen at the next await");
        assert_eq!(cap, 64, "the second read's buffer comes back");
    }
}

// ---- peers that reset ---------------------------------------------------------------------------

/// What a server handler saw.
#[derive(Debug, PartialEq)]
enum Served {
    /// A whole 100-byte message, echoed back.
    Echoed,
    /// The read failed with this errno; then a write failed with that one.
    Failed {
        read: Option<i32>,
        write: Option<i32>,
    },
}

/// Reads one 100-byte message and echoes it; on a read error, tries to write anyway.
async fn serve_one(conn: TcpStream) -> Served {
    let (r, buf) = conn.read_exact(Vec::with_capacity(100)).await;
    match r {
        Ok(()) => {
            let (w, _) = conn.write_all(buf).await;
            w.unwrap();
            Served::Echoed
        }
        Err(e) => {
            let (w, _) = conn.write_all(vec![7u8; 1 << 20]).await;
            Served::Failed {
                read: e.raw_os_error(),
                write: w.err().and_then(|e| e.error.raw_os_error()),
            }
        }
    }
}

both_backends! {
    /// A client resets (SO_LINGER 0, then close) halfway through its message: the server's
    /// read gets ECONNRESET and a later write EPIPE (or ECONNRESET), never a panic; the accept
    /// loop goes on and serves the next client.
    async fn peer_reset_mid_message_and_the_server_goes_on() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Rc::new(RefCell::new(Vec::new()));
        let s = served.clone();
        let server = spawn(async move {
            let mut incoming = listener.incoming();
            let mut handlers = Vec::new();
            for _ in 0..2 {
                let (conn, _) = incoming.next().await.unwrap();
                let s = s.clone();
                handlers.push(spawn(async move {
                    let outcome = serve_one(conn).await;
                    s.borrow_mut().push(outcome);
                }));
            }
            for h in handlers {
                h.await.unwrap();
            }
        });

        // Client A: half a message, then a reset.
        let a = TcpStream::connect(addr).await.unwrap();
        let (w, _) = a.write_all(vec![1u8; 50]).await;
        w.unwrap();
        for _ in 0..3 {
            tick().await; // the server's read waits for the rest
        }
        a.set_linger(Some(Duration::ZERO)).unwrap();
        drop(a);
        assert!(until(|| served.borrow().len() == 1).await);
        match &served.borrow()[0] {
            Served::Failed { read, write } => {
                assert_eq!(*read, Some(libc::ECONNRESET));
                assert!(
                    matches!(write, Some(libc::EPIPE) | Some(libc::ECONNRESET)),
                    "write after reset: {write:?}"
                );
            }
            other => panic!("{other:?}"),
        }

        // Client B is served as if nothing happened.
        let b = TcpStream::connect(addr).await.unwrap();
        let msg: Vec<u8> = (0..100u8).collect();
        let (w, msg) = b.write_all(msg).await;
        w.unwrap();
        let (r, echo) = b.read_exact(Vec::with_capacity(100)).await;
        r.unwrap();
        assert_eq!(echo, msg);
        server.await.unwrap();
        assert_eq!(served.borrow()[1], Served::Echoed);
    }
}

both_backends! {
    /// A client resets while the server is blocked writing to it (it never read): the
    /// server's `write_all` fails with ECONNRESET or EPIPE and says how much went out.
    async fn peer_reset_while_the_server_writes() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let total = 64 << 20;
        let writer = spawn(async move {
            let (r, buf) = server.write_all(vec![3u8; total]).await;
            let e = r.expect_err("the peer reset");
            (e.sent, e.error.raw_os_error(), buf.len())
        });
        // Until the write is stuck on a full socket.
        let fd = client.as_raw_fd();
        assert!(until(|| bytes_readable(fd) > 0).await);
        for _ in 0..10 {
            tick().await;
        }
        assert!(!writer.is_done(), "64 MiB cannot fit in loopback socket buffers");
        client.set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        let (sent, errno, len) = writer.await.unwrap();
        assert!(
            matches!(errno, Some(libc::ECONNRESET) | Some(libc::EPIPE)),
            "{errno:?}"
        );
        assert!(sent > 0 && sent < total, "sent {sent}");
        assert_eq!(len, total, "the buffer comes back whole");
    }
}

both_backends! {
    /// A client connects and resets before the server takes it from the accept stream: the
    /// stream must not end with an error (only `ECONNABORTED`-like trouble of one connection);
    /// the next client is served.
    async fn incoming_survives_a_peer_that_reset_before_being_taken() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = listener.incoming();
        let first = TcpStream::connect(addr).await.unwrap();
        let (conn, peer) = incoming.next().await.unwrap();
        assert_eq!(peer, first.local_addr().unwrap());
        drop((first, conn));

        // Accepted by the kernel (io_uring: by the armed multishot accept), then reset.
        let gone = TcpStream::connect(addr).await.unwrap();
        gone.set_linger(Some(Duration::ZERO)).unwrap();
        drop(gone);
        for _ in 0..3 {
            tick().await;
        }
        let next = TcpStream::connect(addr).await.unwrap();
        let (w, _) = next.write_all(b"hello".as_slice()).await;
        w.unwrap();
        next.shutdown(Shutdown::Write).unwrap();

        // The reset connection may or may not come out of the stream (as a socket that reads
        // ECONNRESET or end of stream); the next client must.
        let mut served_next = false;
        for _ in 0..2 {
            let (conn, _) = incoming
                .next()
                .await
                .expect("a reset peer must not end the accept stream");
            let (n, buf) = conn.read(vec![0u8; 16]).await;
            if matches!(n, Ok(5)) {
                assert_eq!(&buf[..5], b"hello");
                served_next = true;
                break;
            }
        }
        assert!(served_next);
    }
}

// ---- half-closed peers --------------------------------------------------------------------------

both_backends! {
    /// The client shuts down its write side: the server reads the request, then 0 (end of
    /// stream), and can still write its reply, which the client reads.
    async fn half_closed_peer_still_gets_the_reply() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let handler = spawn(async move {
            let request = read_to_end(&server).await;
            // Reading again at end of stream gives 0 again, not an error.
            let (n, _) = server.read(vec![0u8; 16]).await;
            assert_eq!(n.unwrap(), 0);
            let mut reply = b"reply to ".to_vec();
            reply.extend_from_slice(&request);
            let (w, _) = server.write_all(reply).await;
            w.unwrap();
            server.shutdown(Shutdown::Write).unwrap();
        });
        let (w, _) = client.write_all(b"request".as_slice()).await;
        w.unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&client).await, b"reply to request");
        handler.await.unwrap();
    }
}

// ---- a client that never reads ------------------------------------------------------------------

both_backends! {
    /// `write_all` to a client that never reads stays pending (the kernel back-pressures; no
    /// unbounded buffer anywhere), and cancelling it says how many bytes went out.
    async fn non_reading_client_back_pressures_write_all() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let total = 64 << 20;
        let writer = spawn(async move {
            let (r, buf) = server.write_all(vec![9u8; total]).await;
            let e = r.expect_err("only the cancel ends it");
            (e.sent, is_cancelled(&e.error), buf.len(), server)
        });
        let fd = client.as_raw_fd();
        assert!(until(|| bytes_readable(fd) > 0).await, "nothing was ever sent");
        for i in 0..200 {
            if i % 10 == 0 {
                sleep(Duration::from_millis(1)).await.unwrap();
            } else {
                tick().await;
            }
            assert!(!writer.is_done(), "write_all finished to a client that never reads");
        }
        let queued = bytes_readable(fd);
        writer.cancel();
        let (sent, cancelled, len, _server) = writer.await.unwrap();
        assert!(cancelled, "the error is the cancellation");
        assert!(sent > 0, "some bytes went out");
        assert!(sent < total, "sent {sent} of {total}");
        assert!(sent >= queued, "the client holds {queued} bytes, more than sent {sent}");
        assert_eq!(len, total, "the buffer comes back whole");
    }
}

// ---- refused connect ----------------------------------------------------------------------------

both_backends! {
    /// Connecting to a closed port on 127.0.0.1 fails with ECONNREFUSED.
    async fn connect_to_a_closed_port_is_refused() {
        let port = {
            let listener = TcpListener::bind(localhost()).unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let err = TcpStream::connect(addr).await.expect_err("nothing listens there");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
        // And again: the failure left nothing behind that breaks the next attempt.
        let err = TcpStream::connect(addr).await.expect_err("nothing listens there");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
    }
}
