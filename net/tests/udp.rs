//! UDP on both backends.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use common::{backends, localhost, runtime, CountedBuf};
use ringloop_net::{IoBuf, UdpSocket};
use ringloop_runtime::{gather, is_cancelled, sleep, spawn, timeout, Backend, TaskError};

fn v6() -> SocketAddr {
    "[::1]:0".parse().unwrap()
}

/// Binds on `[::1]`, or `None` (with a note) where the host has no IPv6 loopback.
fn bind_v6() -> Option<UdpSocket> {
    match UdpSocket::bind(v6()) {
        Ok(s) => Some(s),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
            ) =>
        {
            eprintln!("note: no IPv6 loopback here ({e}); skipping the [::1] test");
            None
        }
        Err(e) => panic!("bind [::1]: {e}"),
    }
}

async fn round_trip(a: UdpSocket, b: UdpSocket) {
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let (r, _) = a.send_to(b"hello from a".as_slice(), b_addr).await;
    assert_eq!(r.unwrap(), 12);
    let (r, buf) = b.recv_from(vec![0u8; 1500]).await;
    let (n, from) = r.unwrap();
    assert_eq!(&buf[..n], b"hello from a");
    assert_eq!(from, a_addr);

    // And back, to the address the datagram came from.
    let (r, _) = b.send_to(b"reply".to_vec(), from).await;
    assert_eq!(r.unwrap(), 5);
    let (r, buf) = a.recv_from(Vec::with_capacity(64)).await;
    let (n, from) = r.unwrap();
    assert_eq!(&buf[..n], b"reply");
    assert_eq!(buf.len(), n, "the received bytes are marked initialised");
    assert_eq!(from, b_addr);
}

both_backends! {
    async fn send_to_recv_from_round_trip_v4() {
        round_trip(UdpSocket::bind(localhost()).unwrap(), UdpSocket::bind(localhost()).unwrap()).await;
    }
}

both_backends! {
    async fn send_to_recv_from_round_trip_v6() {
        let Some(a) = bind_v6() else { return };
        let b = UdpSocket::bind(v6()).unwrap();
        assert!(a.local_addr().unwrap().is_ipv6());
        round_trip(a, b).await;
    }
}

both_backends! {
    async fn connected_send_recv_only_sees_the_peer() {
        let a = UdpSocket::bind(localhost()).unwrap();
        let b = UdpSocket::bind(localhost()).unwrap();
        let intruder = UdpSocket::bind(localhost()).unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        assert_eq!(a.peer_addr().unwrap(), b.local_addr().unwrap());

        // 1. A datagram from a third socket is not delivered to a connected socket...
        let (r, _) = intruder.send_to(b"intruder".as_slice(), a.local_addr().unwrap()).await;
        r.unwrap();
        // 2. ...so the first datagram `a` receives is its peer's.
        let (r, _) = b.send(b"from b".as_slice()).await;
        assert_eq!(r.unwrap(), 6);
        let (r, buf) = a.recv(vec![0u8; 64]).await;
        assert_eq!(&buf[..r.unwrap()], b"from b");

        let (r, _) = a.send(b"from a".as_slice()).await;
        r.unwrap();
        let (r, buf) = b.recv_from(vec![0u8; 64]).await;
        let (n, from) = r.unwrap();
        assert_eq!((&buf[..n], from), (&b"from a"[..], a.local_addr().unwrap()));
    }
}

both_backends! {
    async fn datagram_boundaries_are_preserved() {
        let a = UdpSocket::bind(localhost()).unwrap();
        let b = UdpSocket::bind(localhost()).unwrap();
        let to = b.local_addr().unwrap();
        let big: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for msg in [big.clone(), b"seven!!".to_vec(), Vec::new(), b"0123456789".to_vec()] {
            let len = msg.len();
            let (r, _) = a.send_to(msg, to).await;
            assert_eq!(r.unwrap(), len);
        }
        let (r, buf) = b.recv_from(vec![0u8; 4096]).await;
        assert_eq!(&buf[..r.unwrap().0], &big[..]);
        let (r, buf) = b.recv_from(vec![0u8; 4096]).await;
        assert_eq!(&buf[..r.unwrap().0], b"seven!!");
        // An empty datagram is a datagram (0 is not end of stream on UDP).
        let (r, _) = b.recv_from(vec![0u8; 4096]).await;
        assert_eq!(r.unwrap().0, 0);
        // A datagram longer than the buffer is truncated; the next one is intact.
        let (r, _) = a.send_to(b"next".as_slice(), to).await;
        r.unwrap();
        let (r, buf) = b.recv_from(Vec::with_capacity(4)).await;
        assert_eq!((r.unwrap().0, &buf[..]), (4, &b"0123"[..]));
        let (r, buf) = b.recv_from(vec![0u8; 64]).await;
        assert_eq!(&buf[..r.unwrap().0], b"next");
    }
}

both_backends! {
    async fn recv_datagram_reports_truncation() {
        let a = UdpSocket::bind(localhost()).unwrap();
        let b = UdpSocket::bind(localhost()).unwrap();
        let to = b.local_addr().unwrap();
        let (r, _) = a.send_to(b"0123456789".as_slice(), to).await;
        r.unwrap();
        let (r, _) = a.send_to(b"fits".as_slice(), to).await;
        r.unwrap();
        // 1. Ten bytes into a four-byte buffer: four stored, ten reported, the rest gone.
        let (meta, buf) = b.recv_datagram(Vec::with_capacity(4)).await;
        let meta = meta.unwrap();
        assert_eq!((meta.len, meta.datagram_len), (4, 10));
        assert!(meta.is_truncated());
        assert_eq!(meta.from, a.local_addr().unwrap());
        assert_eq!(&buf[..], b"0123");
        // 2. The next datagram is intact and not truncated.
        let (meta, buf) = b.recv_datagram(vec![0u8; 64]).await;
        let meta = meta.unwrap();
        assert_eq!((meta.len, meta.datagram_len), (4, 4));
        assert!(!meta.is_truncated());
        assert_eq!(&buf[..meta.len], b"fits");
    }
}

both_backends! {
    async fn connected_socket_to_a_closed_port_gets_econnrefused() {
        // A port that was free a moment ago: bind, note it, close.
        let closed = {
            let s = UdpSocket::bind(localhost()).unwrap();
            s.local_addr().unwrap()
        };
        let sock = UdpSocket::bind(localhost()).unwrap();
        sock.connect(closed).unwrap();
        // Linux reports the ICMP port unreachable on a connected UDP socket: the next call
        // fails with ECONNREFUSED. Loopback ICMP is not rate-limited, but retry the send a
        // few times rather than trust a single datagram.
        let mut refused = None;
        for _ in 0..10 {
            let (r, _) = sock.send(b"anyone?".as_slice()).await;
            if let Err(e) = r {
                refused = Some(e);
                break;
            }
            match timeout(Duration::from_secs(1), sock.recv(vec![0u8; 64])).await {
                Ok((Err(e), _)) => {
                    refused = Some(e);
                    break;
                }
                Ok((Ok(n), _)) => panic!("received {n} bytes from a closed port"),
                Err(_timed_out) => continue,
            }
        }
        let e = refused.expect("no ECONNREFUSED after 10 datagrams");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
    }
}

both_backends! {
    async fn errors_carry_the_real_errno() {
        let v4sock = UdpSocket::bind(localhost()).unwrap();
        // An IPv6 destination from an IPv4 socket.
        let (r, buf) = v4sock.send_to(b"x".as_slice(), "[::1]:9".parse().unwrap()).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EAFNOSUPPORT));
        assert_eq!(buf, b"x", "the buffer comes back on error");
        // `send` on a socket that is not connected.
        let (r, _) = v4sock.send(b"x".as_slice()).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EDESTADDRREQ));
        assert_eq!(v4sock.peer_addr().unwrap_err().raw_os_error(), Some(libc::ENOTCONN));
        // A port in use.
        let taken = v4sock.local_addr().unwrap();
        assert_eq!(
            UdpSocket::bind(taken).unwrap_err().raw_os_error(),
            Some(libc::EADDRINUSE)
        );
        // Broadcast needs SO_BROADCAST.
        assert!(!v4sock.broadcast().unwrap());
        let bcast: SocketAddr = "255.255.255.255:9".parse().unwrap();
        let (r, _) = v4sock.send_to(b"x".as_slice(), bcast).await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EACCES));
        v4sock.set_broadcast(true).unwrap();
        assert!(v4sock.broadcast().unwrap());
        assert!(v4sock.take_error().unwrap().is_none());
    }
}

both_backends! {
    async fn echo_with_twenty_concurrent_clients() {
        let server = UdpSocket::bind(localhost()).unwrap();
        server.set_ttl(16).unwrap();
        let addr = server.local_addr().unwrap();
        const CLIENTS: u32 = 20;
        const ROUNDS: u32 = 5;
        let echo = spawn(async move {
            let mut buf = vec![0u8; 256];
            for _ in 0..CLIENTS * ROUNDS {
                let (r, b) = server.recv_from(buf).await;
                let (n, from) = r.unwrap();
                let (r, b) = server.send_to(b.slice(..n), from).await;
                assert_eq!(r.unwrap(), n);
                buf = b.into_inner();
            }
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                spawn(async move {
                    let c = UdpSocket::bind(localhost()).unwrap();
                    c.connect(addr).unwrap();
                    for round in 0..ROUNDS {
                        let msg = format!("client {i} round {round}").into_bytes();
                        let (r, msg) = c.send(msg).await;
                        r.unwrap();
                        let (r, got) = c.recv(vec![0u8; 256]).await;
                        assert_eq!(&got[..r.unwrap()], &msg[..]);
                    }
                })
            })
            .collect();
        gather(clients).await.unwrap();
        echo.await.unwrap();
    }
}

both_backends! {
    async fn from_std_and_into_std() {
        let std_sock = std::net::UdpSocket::bind(localhost()).unwrap();
        let addr = std_sock.local_addr().unwrap();
        let sock = UdpSocket::from_std(std_sock).unwrap();
        let peer = UdpSocket::bind(localhost()).unwrap();
        let (r, _) = peer.send_to(b"via std".as_slice(), addr).await;
        r.unwrap();
        let (r, buf) = sock.recv_from(vec![0u8; 16]).await;
        assert_eq!(&buf[..r.unwrap().0], b"via std");
        let back = sock.into_std().unwrap();
        assert_eq!(back.local_addr().unwrap(), addr);
    }
}

#[test]
fn recv_from_cancelled_by_task_cancel() {
    let _serial = common::serial();
    for backend in backends() {
        let rt = runtime(backend);
        rt.block_on(async {
            let sock = Rc::new(UdpSocket::bind(localhost()).unwrap());
            let s = sock.clone();
            // 1. A task waits for a datagram that never comes.
            let task = spawn(async move {
                let (r, buf) = s.recv_from(Vec::with_capacity(64)).await;
                let e = r.expect_err("nobody sent anything");
                assert!(is_cancelled(&e), "{e:?}");
                assert_eq!(buf.len(), 0, "nothing was written into the buffer");
                "suppressed"
            });
            // 2. Let it reach the recv (submitted / waiting for readiness).
            for _ in 0..3 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert!(!task.is_done());
            // 3. Cancel: the recv resolves at once with the cancellation, which the task
            //    suppresses (it returns a value).
            task.cancel();
            let out = timeout(Duration::from_secs(10), task)
                .await
                .expect("the cancelled recv_from returned promptly");
            assert_eq!(out.unwrap(), "suppressed");

            // 4. The socket is still usable, and no datagram was lost.
            let peer = UdpSocket::bind(localhost()).unwrap();
            let (r, _) = peer
                .send_to(b"after".as_slice(), sock.local_addr().unwrap())
                .await;
            r.unwrap();
            let (r, buf) = sock.recv_from(vec![0u8; 64]).await;
            assert_eq!(&buf[..r.unwrap().0], b"after");
        });
        let stats = rt.stats();
        assert_eq!(stats.ops_in_flight, 0, "{backend}: {stats:?}");
        assert_eq!(stats.tasks_alive, 0, "{backend}: {stats:?}");
    }
}

/// The op won the race against the cancellation (the datagram was already there): its result
/// is delivered, and the request must stay pending for the task's *next* await (ARCHITECTURE:
/// "the request stays pending for the next await"), which then resolves to `Cancelled` in the
/// task's own code.
///
/// (This failed on io_uring until `Op` delivered a pending cancellation on its first poll.)
#[test]
fn cancellation_after_a_won_race_reaches_the_next_recv() {
    let _serial = common::serial();
    for backend in backends() {
        let rt = runtime(backend);
        rt.block_on(async {
            let sock = UdpSocket::bind(localhost()).unwrap();
            let addr = sock.local_addr().unwrap();
            let task = spawn(async move {
                let (first, _) = sock.recv_from(vec![0u8; 64]).await;
                let (second, _) = sock.recv_from(vec![0u8; 64]).await;
                let cancelled =
                    |r: &std::io::Result<(usize, SocketAddr)>| r.as_ref().is_err_and(is_cancelled);
                // Exactly one of the two awaits observes the cancellation, and the datagram
                // is never lost.
                match (cancelled(&first), cancelled(&second)) {
                    (false, true) => assert_eq!(first.unwrap().0, 4),
                    (true, false) => assert_eq!(second.unwrap().0, 4),
                    other => panic!("{other:?}"),
                }
                "observed"
            });
            // 1. The task waits in its first recv_from.
            for _ in 0..3 {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            // 2. A datagram arrives and the task is cancelled before it runs again.
            let sender = std::net::UdpSocket::bind(localhost()).unwrap();
            sender.send_to(b"data", addr).unwrap();
            task.cancel();
            // 3. The task's own code sees the cancellation.
            let out = timeout(Duration::from_secs(5), task).await;
            assert!(matches!(out, Ok(Ok("observed"))), "{backend}: {out:?}");
        });
        assert_eq!(rt.stats().ops_in_flight, 0, "{backend}");
    }
}

#[test]
fn cancellation_escaping_through_io_error_cancels_the_task() {
    let _serial = common::serial();
    for backend in backends() {
        let rt = runtime(backend);
        let fds_before = common::fd_count();
        rt.block_on(async {
            let sock = UdpSocket::bind(localhost()).unwrap();
            let task = spawn(async move {
                let (r, _) = sock.recv_from(vec![0u8; 64]).await;
                r?;
                Ok::<_, std::io::Error>(())
            });
            sleep(Duration::from_millis(2)).await.unwrap();
            task.cancel_with("stop");
            match timeout(Duration::from_secs(10), task).await.unwrap() {
                Err(TaskError::Cancelled(c)) => assert_eq!(c.message(), Some("stop")),
                other => panic!("{backend}: {other:?}"),
            }
        });
        assert_eq!(rt.stats().ops_in_flight, 0, "{backend}");
        assert_eq!(
            common::fd_count(),
            fds_before,
            "{backend}: the socket was closed"
        );
    }
}

#[test]
fn dropped_recv_from_keeps_its_buffer_until_the_completion() {
    let _serial = common::serial();
    for backend in backends() {
        let rt = runtime(backend);
        // The buffer holds a clone of `alive` while it lives: its strong count tells.
        let alive = Rc::new(Cell::new(0));
        let fds_before = common::fd_count();
        rt.block_on(async {
            let sock = UdpSocket::bind(localhost()).unwrap();
            let buf = CountedBuf::filled(64, &alive);
            // 1. Poll the recv once, so that it is submitted (io_uring) or waits for
            //    readiness (epoll), then drop it.
            {
                let mut fut = pin!(sock.recv_from(buf));
                std::future::poll_fn(|cx| {
                    assert!(fut.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
            }
            // 2. io_uring: the kernel may still write into the buffer, so the orphaned op
            //    keeps it (and the socket) until its own completion; epoll: nothing is in
            //    flight, it is freed at once.
            let expected = match backend {
                Backend::IoUring => 2,
                _ => 1,
            };
            assert_eq!(Rc::strong_count(&alive), expected, "{backend}");
            drop(sock);
            // 3. The cancel's completion arrives within a few loop iterations.
            for _ in 0..1000 {
                if Rc::strong_count(&alive) == 1 {
                    break;
                }
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(Rc::strong_count(&alive), 1, "{backend}: buffer freed");
        });
        assert_eq!(rt.stats().ops_in_flight, 0, "{backend}");
        assert_eq!(
            common::fd_count(),
            fds_before,
            "{backend}: the socket was closed"
        );
    }
}
