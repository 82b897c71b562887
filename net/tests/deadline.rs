//! Deadlines on socket operations (`DeadlineExt::timeout` / `deadline` on reads, writes,
//! accept, connect, datagrams and pooled receives), every test on both backends.
//!
//! No test asserts a duration. Where data races the deadline, a thread writes at instants spread
//! around it, and whichever way each round goes, every byte must be read exactly once, in
//! order: by the read with the deadline, or by the next one.

mod common;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{leaked_fds, localhost, open_fds};
use ringloop_net::{
    sock_recv_into, AsSharedFd, DeadlineExt, PooledReceiver, TcpListener, TcpStream, UdpSocket,
    UnixDatagram, UnixListener, UnixStream,
};
use ringloop_runtime::{current_stats, sleep, yield_now};

fn is_timed_out(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut && e.raw_os_error() == Some(libc::ETIMEDOUT)
}

/// A socket path in the temp directory, removed when dropped.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        let p = std::env::temp_dir().join(format!(
            "ringloop-deadline-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&p);
        TempPath(p)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A thread that writes each order's bytes at its instant (spinning up to it: a sleep is too
/// coarse to land near a deadline a few hundred microseconds away).
struct Writer {
    orders: Option<mpsc::Sender<(Instant, Vec<u8>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn new<W: Write + Send + 'static>(mut w: W) -> Writer {
        let (orders, inbox) = mpsc::channel::<(Instant, Vec<u8>)>();
        let thread = std::thread::spawn(move || {
            for (at, bytes) in inbox {
                while Instant::now() < at {
                    std::hint::spin_loop();
                }
                w.write_all(&bytes).unwrap();
            }
        });
        Writer {
            orders: Some(orders),
            thread: Some(thread),
        }
    }

    fn write_at(&self, at: Instant, bytes: &[u8]) {
        self.orders
            .as_ref()
            .unwrap()
            .send((at, bytes.to_vec()))
            .unwrap();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.orders.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connected TCP pair: ours (non-blocking, on the runtime) and a blocking std peer.
fn tcp_pair() -> (TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind(localhost()).unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    peer.set_nodelay(true).unwrap();
    let (ours, _) = l.accept().unwrap();
    (TcpStream::from_std(ours).unwrap(), peer)
}

/// A connected Unix stream pair: ours and a blocking std peer.
fn unix_pair() -> (UnixStream, std::os::unix::net::UnixStream) {
    let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    (UnixStream::from_std(ours).unwrap(), peer)
}

/// The two byte streams, for tests that run on both.
trait Stream: AsSharedFd {
    fn receiver(&self) -> PooledReceiver;
    async fn read_exact_vec(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
}

impl Stream for TcpStream {
    fn receiver(&self) -> PooledReceiver {
        self.pooled_receiver()
    }
    async fn read_exact_vec(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.read_exact(buf).await
    }
}

impl Stream for UnixStream {
    fn receiver(&self) -> PooledReceiver {
        self.pooled_receiver()
    }
    async fn read_exact_vec(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.read_exact(buf).await
    }
}

/// How a test reads.
#[derive(Clone, Copy, Debug)]
enum How {
    /// `read` (a single-shot receive op).
    Read,
    /// `read_exact` of whole messages (a loop of receive ops; a timeout comes back with the
    /// bytes read so far).
    ReadExact,
    /// A pooled receiver (a multishot receive on io_uring: no op per read).
    Pooled,
}

/// Reads once into `got`, bounded by `deadline` if given: `Ok(true)` if bytes came,
/// `Ok(false)` on the deadline's error (whatever was read before it is in `got` too).
async fn read_once<S: Stream>(
    s: &S,
    rx: &mut Option<PooledReceiver>,
    how: How,
    msg_len: usize,
    deadline: Option<Instant>,
    got: &mut Vec<u8>,
) -> bool {
    let far = Instant::now() + Duration::from_secs(3600);
    let at = deadline.unwrap_or(far);
    let result = match how {
        How::Read => {
            let (r, buf) = sock_recv_into(s, Vec::with_capacity(64)).deadline(at).await;
            r.map(|n| got.extend_from_slice(&buf[..n]))
        }
        How::ReadExact => {
            let (r, buf) = s
                .read_exact_vec(Vec::with_capacity(msg_len))
                .deadline(at)
                .await;
            // The buffer comes back holding what was read, whatever the result.
            got.extend_from_slice(&buf);
            r
        }
        How::Pooled => {
            let rx = rx.get_or_insert_with(|| s.receiver());
            let r = rx.recv().deadline(at).await;
            r.map(|chunk| got.extend_from_slice(&chunk.expect("not the end of the stream")))
        }
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            assert!(is_timed_out(&e), "{how:?}: {e:?}");
            assert!(deadline.is_some(), "{how:?}: timed out without a deadline");
            false
        }
    }
}

/// A read with a deadline and no data times out; the peer then writes; the next reads get
/// every byte, in order; and the stream still works both ways.
async fn timeout_then_every_byte<S: Stream>(
    s: S,
    mut peer: impl Read + Write + Send + 'static,
    how: How,
) {
    let mut rx = None;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(3);
    assert!(!read_once(&s, &mut rx, how, 8, Some(deadline), &mut got).await);
    assert!(got.is_empty());
    let payload: Vec<u8> = (0..40u8).collect();
    peer.write_all(&payload).unwrap();
    while got.len() < payload.len() {
        // With a deadline far off: data wins, the deadline is disarmed.
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(read_once(&s, &mut rx, how, 8, Some(far), &mut got).await);
    }
    assert_eq!(got, payload, "{how:?}");
    // The other direction is unaffected.
    let (r, _) = ringloop_net::sock_sendall(&s, b"back".to_vec()).await;
    r.unwrap();
    let mut back = [0u8; 4];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
    drop(rx);
}

macro_rules! timeout_then_every_byte {
    ($name:ident, $pair:ident, $how:expr) => {
        both_backends! {
            async fn $name() {
                let (s, peer) = $pair();
                timeout_then_every_byte(s, peer, $how).await;
            }
        }
    };
}

timeout_then_every_byte!(tcp_read_times_out_then_gets_every_byte, tcp_pair, How::Read);
timeout_then_every_byte!(
    tcp_read_exact_times_out_then_gets_every_byte,
    tcp_pair,
    How::ReadExact
);
timeout_then_every_byte!(
    tcp_pooled_recv_times_out_then_gets_every_byte,
    tcp_pair,
    How::Pooled
);
timeout_then_every_byte!(
    unix_read_times_out_then_gets_every_byte,
    unix_pair,
    How::Read
);
timeout_then_every_byte!(
    unix_read_exact_times_out_then_gets_every_byte,
    unix_pair,
    How::ReadExact
);
timeout_then_every_byte!(
    unix_pooled_recv_times_out_then_gets_every_byte,
    unix_pair,
    How::Pooled
);

/// When round `round`'s data comes, around `deadline`: from 150 µs before it to 150 µs after
/// it in 30 µs steps (even rounds: the kernel's link timeout races the data), or to 1.5 ms
/// after it in 165 µs steps (odd rounds: epoll's waits are in whole milliseconds, so its
/// deadlines fire up to 1 ms late).
fn write_instant(deadline: Instant, round: u32) -> Instant {
    let step = if round % 2 == 0 { 30 } else { 165 };
    deadline - Duration::from_micros(150) + Duration::from_micros(u64::from(round / 2 % 11) * step)
}

/// Rounds of a read with a deadline while the peer's thread writes one message at an instant
/// around the deadline (see [`write_instant`]), in halves around that instant for
/// `read_exact`. After each round the stream is drained without a deadline: the bytes read,
/// both ways together, must be exactly those written, in order.
async fn data_at_the_deadline<S: Stream>(s: S, peer: impl Write + Send + 'static, how: How) {
    const ROUNDS: u32 = 300;
    let writer = Writer::new(peer);
    let mut rx = None;
    let (mut got, mut sent) = (Vec::new(), Vec::new());
    let (mut won, mut timed_out) = (0, 0);
    for round in 0..ROUNDS {
        let msg: Vec<u8> = (round * 2..round * 2 + 2)
            .flat_map(u32::to_be_bytes)
            .collect();
        let deadline = Instant::now() + Duration::from_micros(400);
        let at = write_instant(deadline, round);
        match how {
            How::ReadExact => {
                writer.write_at(at - Duration::from_micros(20), &msg[..4]);
                writer.write_at(at + Duration::from_micros(20), &msg[4..]);
            }
            _ => writer.write_at(at, &msg),
        }
        sent.extend_from_slice(&msg);
        if read_once(&s, &mut rx, how, msg.len(), Some(deadline), &mut got).await {
            won += 1;
        } else {
            timed_out += 1;
        }
        // `read_exact` needs the rest of this message only.
        while got.len() < sent.len() {
            let left = sent.len() - got.len();
            assert!(read_once(&s, &mut rx, how, left, None, &mut got).await);
        }
        assert_eq!(got, sent, "{how:?}: round {round}");
    }
    eprintln!("{how:?}: {won} timed reads got data, {timed_out} timed out");
    drop(writer);
    drop(rx);
}

macro_rules! data_at_the_deadline {
    ($name:ident, $pair:ident, $how:expr) => {
        both_backends! {
            async fn $name() {
                let (s, peer) = $pair();
                data_at_the_deadline(s, peer, $how).await;
            }
        }
    };
}

data_at_the_deadline!(
    tcp_read_racing_its_deadline_loses_nothing,
    tcp_pair,
    How::Read
);
data_at_the_deadline!(
    tcp_read_exact_racing_its_deadline_loses_nothing,
    tcp_pair,
    How::ReadExact
);
data_at_the_deadline!(
    tcp_pooled_recv_racing_its_deadline_loses_nothing,
    tcp_pair,
    How::Pooled
);
data_at_the_deadline!(
    unix_read_racing_its_deadline_loses_nothing,
    unix_pair,
    How::Read
);
data_at_the_deadline!(
    unix_read_exact_racing_its_deadline_loses_nothing,
    unix_pair,
    How::ReadExact
);
data_at_the_deadline!(
    unix_pooled_recv_racing_its_deadline_loses_nothing,
    unix_pair,
    How::Pooled
);

both_backends! {
    async fn tcp_accept_times_out_and_a_later_accept_gets_the_connection() {
        let before = open_fds();
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let r = listener.accept().timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let client = TcpStream::connect(addr).await.unwrap();
        let (conn, peer) = listener.accept().timeout(Duration::from_secs(60)).await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // The accept stream too (a multishot accept on io_uring).
        let mut incoming = listener.incoming();
        let r = incoming.next().timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let second = TcpStream::connect(addr).await.unwrap();
        let (conn2, _) = incoming.next().timeout(Duration::from_secs(60)).await.unwrap();
        assert_eq!(conn2.peer_addr().unwrap(), second.local_addr().unwrap());
        drop(incoming);
        drop((conn, conn2, client, second, listener));
        for _ in 0..5 {
            yield_now().await.unwrap();
        }
        assert_eq!(leaked_fds(&before), Vec::<String>::new());
    }
}

both_backends! {
    async fn unix_accept_times_out_and_a_later_accept_gets_the_connection() {
        let path = TempPath::new("accept");
        let listener = UnixListener::bind(&path.0).unwrap();
        let r = listener.accept().timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let client = UnixStream::connect(&path.0).await.unwrap();
        let (conn, _) = listener.accept().timeout(Duration::from_secs(60)).await.unwrap();
        let (r, _) = client.write_all(b"hi".to_vec()).await;
        r.unwrap();
        let (r, buf) = conn.read_exact(Vec::with_capacity(2)).await;
        r.unwrap();
        assert_eq!(buf, b"hi");
    }
}

/// Connections arrive at about the deadline of an accept, round after round: each one is
/// accepted exactly once, by the accept with the deadline or by the next one, and none is
/// dropped (no descriptor leaks, every client's byte is read).
async fn accept_racing_its_deadline(incoming: bool) {
    const ROUNDS: u32 = 150;
    let before = open_fds();
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (orders, inbox) = mpsc::channel::<(Instant, u8)>();
    let clients = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for (at, tag) in inbox {
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&[tag]).unwrap();
            kept.push(c);
        }
        kept
    });
    let mut stream = listener.incoming();
    let (mut won, mut timed_out) = (0, 0);
    for round in 0..ROUNDS {
        let deadline = Instant::now() + Duration::from_micros(400);
        let at = write_instant(deadline, round);
        orders.send((at, round as u8)).unwrap();
        let first = if incoming {
            stream.next().deadline(deadline).await
        } else {
            listener.accept().deadline(deadline).await
        };
        let conn = match first {
            Ok((conn, _)) => {
                won += 1;
                conn
            }
            Err(e) => {
                assert!(is_timed_out(&e), "{e:?}");
                timed_out += 1;
                let next = if incoming {
                    stream.next().await
                } else {
                    listener.accept().await
                };
                next.unwrap().0
            }
        };
        let (r, buf) = conn.read_exact(Vec::with_capacity(1)).await;
        r.unwrap();
        assert_eq!(
            buf,
            [round as u8],
            "round {round}: another round's connection"
        );
    }
    eprintln!("{won} timed accepts got the connection, {timed_out} timed out");
    drop(orders);
    drop(clients.join().unwrap());
    drop(stream);
    drop(listener);
    for _ in 0..5 {
        yield_now().await.unwrap();
    }
    assert_eq!(leaked_fds(&before), Vec::<String>::new());
}

both_backends! {
    async fn an_accept_racing_its_deadline_never_drops_a_connection() {
        accept_racing_its_deadline(false).await;
    }
}

both_backends! {
    async fn an_accept_stream_racing_its_deadline_never_drops_a_connection() {
        accept_racing_its_deadline(true).await;
    }
}

both_backends! {
    /// A TCP listener with a backlog of 0 keeps one connection in its accept queue; with that one
    /// unaccepted, the kernel drops every further SYN, and a connect waits (for the SYN's
    /// retransmissions, minutes) until its deadline.
    async fn tcp_connect_times_out_against_a_full_accept_queue() {
        let before = open_fds();
        let listener = TcpListener::builder(localhost()).backlog(0).bind().unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let r = TcpStream::connect(addr).timeout(Duration::from_millis(20)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        assert_eq!(current_stats().ops_timed_out, 1);
        // Accepting makes room: the next connect goes through.
        let (first, _) = listener.accept().await.unwrap();
        let c = TcpStream::connect(addr).timeout(Duration::from_secs(60)).await.unwrap();
        let (second, _) = listener.accept().await.unwrap();
        assert_eq!(second.peer_addr().unwrap(), c.local_addr().unwrap());
        drop((first, second, c, queued, listener));
        for _ in 0..5 {
            yield_now().await.unwrap();
        }
        assert_eq!(leaked_fds(&before), Vec::<String>::new());
    }
}

both_backends! {
    /// A Unix listener with a backlog of 0 and one connection queued refuses more with `EAGAIN`;
    /// the connect retries on a timer, until its deadline.
    async fn unix_connect_times_out_against_a_full_backlog() {
        let path = TempPath::new("connect");
        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket.bind(&socket2::SockAddr::unix(&path.0).unwrap()).unwrap();
        socket.listen(0).unwrap();
        let listener = UnixListener::from_std(socket.into()).unwrap();
        let _queued = UnixStream::connect(&path.0).await.unwrap();
        let r = UnixStream::connect(&path.0).timeout(Duration::from_millis(10)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let _ = listener.accept().await.unwrap();
        UnixStream::connect(&path.0).timeout(Duration::from_secs(60)).await.unwrap();
    }
}

both_backends! {
    /// A peer that does not read: `write_all` with a deadline fills both socket buffers and times
    /// out partway, saying how many bytes went; a single `write` and a gather write then time out
    /// with what they sent (nothing, unless the kernel made room). The peer then reads everything:
    /// exactly the bytes reported sent, in order.
    async fn tcp_write_all_that_times_out_reports_exactly_what_was_sent() {
        let (s, peer) = tcp_pair();
        write_then_count(s, peer).await;
    }
}

both_backends! {
    async fn unix_write_all_that_times_out_reports_exactly_what_was_sent() {
        let (s, peer) = unix_pair();
        write_then_count(s, peer).await;
    }
}

/// See the tests above: the peer reads only once the writes have timed out.
async fn write_then_count<S: Stream>(s: S, mut peer: impl Read + Send + 'static) {
    let payload: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    // 1. `write_all` of more than both socket buffers hold: it times out partway.
    let (r, back) = ringloop_net::sock_sendall(&s, payload.clone())
        .timeout(Duration::from_millis(20))
        .await;
    let e = r.unwrap_err();
    assert!(is_timed_out(&e.error), "{e:?}");
    assert!(e.sent > 0 && e.sent < payload.len(), "{}", e.sent);
    assert_eq!(back.len(), payload.len(), "the buffer comes back whole");
    let mut sent = e.sent;
    // 2. A single write with no room: nothing sent, and it says so.
    let (r, _) = ringloop_net::sock_send(&s, payload[sent..].to_vec())
        .timeout(Duration::from_millis(5))
        .await;
    match r {
        Err(e) => assert!(is_timed_out(&e), "{e:?}"),
        // Room came (the kernel grew a buffer): what it took is counted.
        Ok(n) => sent += n,
    }
    // 3. A gather write the same way.
    let chunks: Vec<Vec<u8>> = payload[sent..]
        .chunks(1 << 16)
        .map(<[u8]>::to_vec)
        .collect();
    let (r, _) = ringloop_net::sock_sendall_vectored(&s, chunks)
        .timeout(Duration::from_millis(5))
        .await;
    let e = r.unwrap_err();
    assert!(is_timed_out(&e.error), "{e:?}");
    sent += e.sent;
    // 3½. A file sent with a deadline (`send_file` through `sock_sendfile`): the same.
    let path = std::env::temp_dir().join(format!(
        "ringloop-deadline-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, &payload[sent..]).unwrap();
    let file = ringloop_runtime::SharedFd::new(std::os::fd::OwnedFd::from(
        std::fs::File::open(&path).unwrap(),
    ));
    std::fs::remove_file(&path).unwrap();
    let r = ringloop_net::sock_sendfile(&s, &file, 0, payload.len() - sent)
        .timeout(Duration::from_millis(5))
        .await;
    match r {
        Err(e) => {
            assert!(is_timed_out(&e.error), "{e:?}");
            sent += e.sent;
        }
        Ok(n) => panic!("{n} bytes sent to a peer that does not read"),
    }
    drop(file);
    // 4. The peer reads everything there is: exactly what was reported sent.
    drop(s);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        got
    });
    let got = loop {
        if reader.is_finished() {
            break reader.join().unwrap();
        }
        sleep(Duration::from_millis(1)).await.unwrap();
    };
    assert_eq!(got.len(), sent);
    assert!(
        got == payload[..sent],
        "the bytes read are the payload's first ones"
    );
}

both_backends! {
    async fn udp_recv_from_times_out_then_gets_the_datagram() {
        let a = UdpSocket::bind(localhost()).unwrap();
        let b = UdpSocket::bind(localhost()).unwrap();
        let (r, buf) = b.recv_from(vec![0u8; 64]).timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        assert_eq!(buf.len(), 64, "the buffer comes back");
        let (r, _) = a
            .send_to(b"late".to_vec(), b.local_addr().unwrap())
            .timeout(Duration::from_secs(60))
            .await;
        assert_eq!(r.unwrap(), 4);
        let (r, buf) = b.recv_from(vec![0u8; 64]).timeout(Duration::from_secs(60)).await;
        let (n, from): (usize, SocketAddr) = r.unwrap();
        assert_eq!((&buf[..n], from), (&b"late"[..], a.local_addr().unwrap()));
        // Connected: `recv` and `send`.
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let (r, _) = a.recv(vec![0u8; 8]).timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let (r, _) = b.send(b"x".to_vec()).timeout(Duration::from_secs(60)).await;
        r.unwrap();
        let (r, _) = a.recv(vec![0u8; 8]).await;
        assert_eq!(r.unwrap(), 1);
    }
}

both_backends! {
    /// A connected Unix datagram pair whose receiver does not read: sends fill its queue, then a
    /// send with a deadline times out (nothing sent); the receiver then gets exactly the datagrams
    /// reported sent.
    async fn unix_datagram_send_and_recv_time_out_and_lose_nothing() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let (r, _) = b.recv(vec![0u8; 8]).timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let (r, _) = b.recv_from(vec![0u8; 8]).timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()));
        let mut sent = 0u32;
        loop {
            let (r, _) = a
                .send(sent.to_le_bytes().to_vec())
                .timeout(Duration::from_millis(5))
                .await;
            match r {
                Ok(4) => sent += 1,
                Err(e) => {
                    assert!(is_timed_out(&e), "{e:?}");
                    break;
                }
                Ok(n) => panic!("a datagram of {n} bytes"),
            }
            assert!(sent < 1 << 20, "the receiver's queue never filled");
        }
        for i in 0..sent {
            let (r, buf) = b.recv(vec![0u8; 8]).timeout(Duration::from_secs(60)).await;
            assert_eq!((r.unwrap(), &buf[..4]), (4, &i.to_le_bytes()[..]));
        }
        let (r, _) = b.recv(vec![0u8; 8]).timeout(Duration::from_millis(3)).await;
        assert!(is_timed_out(&r.unwrap_err()), "no datagram beyond those reported sent");
    }
}

both_backends! {
    /// Unlike `ringloop_runtime::timeout` (asyncio's `timeout`/`wait_for`), a deadline delivers no
    /// cancellation: the code inside goes on after the op's timeout, and its sleeps still sleep.
    async fn a_deadline_delivers_no_cancellation() {
        let (s, _peer) = tcp_pair();
        let (r, slept) = async {
            let (r, _) = s.read(vec![0u8; 8]).await;
            // A runtime `timeout` would have cancelled this sleep too.
            let slept = sleep(Duration::from_millis(1)).await;
            (r, slept)
        }
        .timeout(Duration::from_millis(2))
        .await;
        assert!(is_timed_out(&r.unwrap_err()));
        assert_eq!(slept, Ok(()));
        // The task was not cancelled either.
        assert_eq!(ringloop_runtime::current_task().unwrap().cancelling(), 0);
    }
}

both_backends! {
    /// A file sent with a deadline to a peer that reads as fast as it can: the deadline passes
    /// at any point of the transfer (right away, during a `sendfile` call, at the yield it
    /// makes every 4 MiB, while it waits for room), and whatever the point, the count it
    /// reports is exactly what the peer receives.
    async fn a_send_file_to_a_fast_reader_reports_what_it_sent_wherever_its_deadline_falls() {
        const LEN: usize = 32 << 20;
        let path = std::env::temp_dir().join(format!(
            "ringloop-deadline-sendfile-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, vec![3u8; LEN]).unwrap();
        let file = ringloop_runtime::SharedFd::new(std::os::fd::OwnedFd::from(
            std::fs::File::open(&path).unwrap(),
        ));
        std::fs::remove_file(&path).unwrap();
        for round in 0..24u64 {
            let (s, mut peer) = tcp_pair();
            // Buffers that take more than a yield's 4 MiB in one `sendfile` call, so that the
            // deadline can fall at a yield too (root only: `SO_*BUFFORCE`; else the kernel's
            // limits, and the deadline falls elsewhere).
            force_buffer(s.as_raw_fd(), libc::SO_SNDBUFFORCE, 4 << 20);
            force_buffer(peer.as_raw_fd(), libc::SO_RCVBUFFORCE, 4 << 20);
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0usize;
                loop {
                    match peer.read(&mut buf) {
                        Ok(0) | Err(_) => return total,
                        Ok(n) => total += n,
                    }
                }
            });
            let budget = Duration::from_micros(round * round * 50);
            let sent = match s.send_file(&file, 0, LEN).timeout(budget).await {
                Ok(n) => {
                    assert_eq!(n, LEN, "round {round}");
                    n
                }
                Err(e) => {
                    assert!(is_timed_out(&e.error), "round {round}: {e:?}");
                    e.sent
                }
            };
            drop(s);
            while !reader.is_finished() {
                sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(reader.join().unwrap(), sent, "round {round}: received vs reported");
        }
    }
}

/// `setsockopt(fd, SOL_SOCKET, opt, bytes)`, ignoring a refusal (not root).
fn force_buffer(fd: std::os::fd::RawFd, opt: libc::c_int, bytes: libc::c_int) {
    // SAFETY: a plain setsockopt with a valid pointer to an int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
