//! Protocols and transports (asyncio's `create_server` / `create_connection` layer), on both
//! backends: echo across many connections, water marks against a slow reader, a peer that
//! resets mid-write, `pause_reading` within one receive, closing and aborting, end of stream,
//! panicking callbacks, refused connects, and nothing leaked afterwards.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use common::{localhost, read_to_end, tick, until};
use ringloop_net::{
    create_connection, create_server, ExtraInfo, PooledBuf, Protocol, ProtocolServer, TcpListener,
    TcpStream, Transport,
};
use ringloop_runtime::{buffer_pool, gather, is_cancelled, set_exception_handler, sleep, spawn};

// ---- a protocol that records what happens and does what the test tells it --------------------

/// What a [`Probe`] saw, shared with the test.
#[derive(Default)]
struct Log {
    made: Cell<usize>,
    chunks: Cell<usize>,
    data: RefCell<Vec<u8>>,
    eofs: Cell<usize>,
    /// Every `connection_lost`: `None`, or the error's errno (or -1) and message.
    lost: RefCell<Vec<Option<(i32, String)>>>,
    lost_cancelled: Cell<usize>,
    pauses: Cell<usize>,
    resumes: Cell<usize>,
    /// Write-buffer sizes when `pause_writing` / `resume_writing` came.
    pause_sizes: RefCell<Vec<usize>>,
    resume_sizes: RefCell<Vec<usize>>,
    /// Callbacks that ran while another was running (must stay 0).
    nested: Cell<usize>,
    in_callback: Cell<bool>,
    /// The transports, in connection order.
    transports: RefCell<Vec<Transport>>,
    drops: Cell<usize>,
}

impl Log {
    fn lost_count(&self) -> usize {
        self.lost.borrow().len()
    }

    fn transport(&self, i: usize) -> Transport {
        self.transports.borrow()[i].clone()
    }
}

type OnData = Box<dyn FnMut(&Transport, PooledBuf)>;
type OnEvent = Box<dyn FnMut(&Transport)>;

/// A protocol whose behaviour is a few closures, and which logs every callback.
struct Probe {
    log: Rc<Log>,
    t: Option<Transport>,
    on_data: OnData,
    on_made: Option<OnEvent>,
    on_eof: Option<OnEvent>,
    on_resume: Option<OnEvent>,
    keep_open: bool,
}

impl Probe {
    fn new(log: &Rc<Log>, on_data: impl FnMut(&Transport, PooledBuf) + 'static) -> Probe {
        Probe {
            log: log.clone(),
            t: None,
            on_data: Box::new(on_data),
            on_made: None,
            on_eof: None,
            on_resume: None,
            keep_open: false,
        }
    }

    /// Echoes every chunk (the pool buffer goes straight back out).
    fn echo(log: &Rc<Log>) -> Probe {
        Probe::new(log, |t, data| t.write(data))
    }

    fn enter(&self) {
        if self.log.in_callback.replace(true) {
            self.log.nested.set(self.log.nested.get() + 1);
        }
    }

    fn leave(&self) {
        self.log.in_callback.set(false);
    }
}

impl Protocol for Probe {
    fn connection_made(&mut self, t: &Transport) {
        self.enter();
        self.log.made.set(self.log.made.get() + 1);
        self.log.transports.borrow_mut().push(t.clone());
        self.t = Some(t.clone());
        if let Some(f) = &mut self.on_made {
            f(t);
        }
        self.leave();
    }

    fn data_received(&mut self, data: PooledBuf) {
        self.enter();
        self.log.chunks.set(self.log.chunks.get() + 1);
        self.log.data.borrow_mut().extend_from_slice(&data);
        let t = self.t.clone().expect("connection_made came first");
        (self.on_data)(&t, data);
        self.leave();
    }

    fn eof_received(&mut self) -> bool {
        self.enter();
        self.log.eofs.set(self.log.eofs.get() + 1);
        if let Some(f) = &mut self.on_eof {
            f(self.t.as_ref().unwrap());
        }
        self.leave();
        self.keep_open
    }

    fn connection_lost(&mut self, error: Option<io::Error>) {
        self.enter();
        if error
            .as_ref()
            .is_some_and(|e| is_cancelled(e) && e.kind() == io::ErrorKind::ConnectionAborted)
        {
            self.log
                .lost_cancelled
                .set(self.log.lost_cancelled.get() + 1);
        }
        let entry = error.map(|e| (e.raw_os_error().unwrap_or(-1), e.to_string()));
        self.log.lost.borrow_mut().push(entry);
        self.leave();
    }

    fn pause_writing(&mut self) {
        self.enter();
        self.log.pauses.set(self.log.pauses.get() + 1);
        let size = self.t.as_ref().unwrap().get_write_buffer_size();
        self.log.pause_sizes.borrow_mut().push(size);
        self.leave();
    }

    fn resume_writing(&mut self) {
        self.enter();
        self.log.resumes.set(self.log.resumes.get() + 1);
        let t = self.t.clone().unwrap();
        self.log
            .resume_sizes
            .borrow_mut()
            .push(t.get_write_buffer_size());
        if let Some(f) = &mut self.on_resume {
            f(&t);
        }
        self.leave();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.log.drops.set(self.log.drops.get() + 1);
    }
}

fn serve(log: &Rc<Log>, make: impl Fn(&Rc<Log>) -> Probe + 'static) -> ProtocolServer {
    let log = log.clone();
    create_server(move || make(&log), localhost()).unwrap()
}

/// Runs the loop until `n` connections were lost (bounded).
async fn until_lost(log: &Log, n: usize) {
    assert!(
        until(|| log.lost_count() >= n).await,
        "{} of {n} connections lost",
        log.lost_count()
    );
}

/// Counts the reports the runtime's exception handler gets.
fn count_exceptions() -> Rc<Cell<usize>> {
    let n = Rc::new(Cell::new(0));
    let seen = n.clone();
    set_exception_handler(move |_| seen.set(seen.get() + 1));
    n
}

fn pattern(id: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + id * 13) as u8).collect()
}

// ---- echo, many connections, nothing leaked --------------------------------------------------

both_backends! {
    /// 200 connections echo messages of several sizes (some larger than a pool buffer) byte
    /// for byte; afterwards every connection was lost exactly once with `None`, every
    /// protocol dropped, and no descriptor or pool buffer is left.
    async fn echo_200_connections_byte_exact_and_nothing_leaked() {
        let fds_before = common::open_fds();
        let log = Rc::new(Log::default());
        let server = serve(&log, Probe::echo);
        let addr = server.local_addr();
        let clients: Vec<_> = (0..200usize)
            .map(|id| {
                spawn(async move {
                    let c = TcpStream::connect(addr).await.unwrap();
                    for (round, size) in [1usize, 100, 3000, 64].into_iter().enumerate() {
                        let msg = pattern(id + round, size);
                        c.write_all(msg.clone()).await.0.unwrap();
                        let (r, got) = c.read_exact(Vec::with_capacity(size)).await;
                        r.unwrap();
                        assert_eq!(got, msg, "connection {id}, message {round}");
                    }
                })
            })
            .collect();
        gather(clients).await.unwrap();
        until_lost(&log, 200).await;
        assert_eq!(log.made.get(), 200);
        assert!(log.lost.borrow().iter().all(Option::is_none), "{:?}", log.lost.borrow());
        assert_eq!(log.eofs.get(), 200);
        assert_eq!(log.drops.get(), 200, "every protocol dropped after connection_lost");
        assert_eq!(log.nested.get(), 0);
        server.close();
        assert!(until(|| !server.is_serving()).await);
        log.transports.borrow_mut().clear();
        assert_eq!(buffer_pool().out(), 0, "every pool buffer came back");
        assert!(until(|| common::leaked_fds(&fds_before).is_empty()).await,
            "leaked: {:?}", common::leaked_fds(&fds_before));
    }
}

both_backends! {
    /// Three writes in one callback go out together and in order.
    async fn writes_in_one_callback_arrive_in_order() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            Probe::new(log, |t, data| {
                t.write(b"<");
                t.writelines([data.to_vec(), b">".to_vec()]);
                drop(data);
            })
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"abc".as_slice()).await.0.unwrap();
        let (r, got) = c.read_exact(vec![0u8; 5]).await;
        r.unwrap();
        assert_eq!(got, b"<abc>");
    }
}

// ---- flow control --------------------------------------------------------------------------

const HIGH: usize = 64 * 1024;
const LOW: usize = 16 * 1024;
const CHUNK: usize = 8 * 1024;
const TOTAL: usize = 2 * 1024 * 1024;

/// Writes `CHUNK`-sized pieces of the pattern until writing is paused or `TOTAL` went out;
/// records the largest write buffer it saw.
fn produce(t: &Transport, produced: &Cell<usize>, max_buffer: &Cell<usize>) {
    while !t.is_writing_paused() && produced.get() < TOTAL {
        let start = produced.get();
        let chunk: Vec<u8> = (start..start + CHUNK).map(|i| (i % 251) as u8).collect();
        t.write(chunk);
        produced.set(start + CHUNK);
        max_buffer.set(max_buffer.get().max(t.get_write_buffer_size()));
    }
    if produced.get() >= TOTAL {
        t.close();
    }
}

both_backends! {
    /// A producer writes 2 MiB to a peer that reads slowly through small socket buffers. The
    /// water marks pause and resume it, alternately: `pause_writing` comes above the high mark,
    /// `resume_writing` at the low mark or below, and the write buffer never holds more than
    /// the high mark plus the one write that crossed it. Every byte arrives, in order.
    async fn slow_reader_water_marks_pause_and_resume_the_writer() {
        let log = Rc::new(Log::default());
        let produced = Rc::new(Cell::new(0usize));
        let max_buffer = Rc::new(Cell::new(0usize));
        let server = {
            let (produced, max_buffer) = (produced.clone(), max_buffer.clone());
            serve(&log, move |log| {
                let mut p = Probe::new(log, |_, _| {});
                let (pr, mb) = (produced.clone(), max_buffer.clone());
                p.on_made = Some(Box::new(move |t| {
                    t.set_write_buffer_limits(Some(HIGH), Some(LOW)).unwrap();
                    if let Some(ExtraInfo::Socket(fd)) = t.get_extra_info("socket") {
                        set_buf(fd, libc::SO_SNDBUF, 4096);
                    }
                    produce(t, &pr, &mb);
                }));
                let (pr, mb) = (produced.clone(), max_buffer.clone());
                p.on_resume = Some(Box::new(move |t| produce(t, &pr, &mb)));
                p
            })
        };
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&server.local_addr().into()).unwrap();
        let client = TcpStream::from_std(socket.into()).unwrap();
        let mut got = Vec::with_capacity(TOTAL);
        loop {
            let (n, buf) = client.read(vec![0u8; 4096]).await;
            let n = n.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tick().await; // a slow reader: one read per loop iteration
        }
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "bytes in order");
        until_lost(&log, 1).await;
        assert_eq!(*log.lost.borrow(), vec![None]);
        let (pauses, resumes) = (log.pauses.get(), log.resumes.get());
        assert!(pauses >= 1, "the writer was paused");
        assert!(resumes >= 1, "and resumed");
        assert!(pauses == resumes || pauses == resumes + 1, "{pauses} pauses, {resumes} resumes");
        assert!(log.pause_sizes.borrow().iter().all(|&s| s > HIGH), "{:?}", log.pause_sizes);
        assert!(log.resume_sizes.borrow().iter().all(|&s| s <= LOW), "{:?}", log.resume_sizes);
        assert!(max_buffer.get() <= HIGH + CHUNK, "buffer peaked at {}", max_buffer.get());
        assert_eq!(log.nested.get(), 0);
        assert_eq!(buffer_pool().out(), 0);
    }
}

fn set_buf(fd: i32, opt: libc::c_int, size: libc::c_int) {
    // SAFETY: one int option from a live local on a descriptor the transport keeps open.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", io::Error::last_os_error());
}

both_backends! {
    /// `set_write_buffer_limits` defaults and checks its arguments as asyncio does.
    async fn write_buffer_limits_follow_asyncio() {
        let log = Rc::new(Log::default());
        let server = serve(&log, Probe::echo);
        let _c = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(until(|| log.made.get() == 1).await);
        let t = log.transport(0);
        assert_eq!(t.get_write_buffer_limits(), (16 * 1024, 64 * 1024));
        t.set_write_buffer_limits(Some(1000), None).unwrap();
        assert_eq!(t.get_write_buffer_limits(), (250, 1000));
        t.set_write_buffer_limits(None, Some(100)).unwrap();
        assert_eq!(t.get_write_buffer_limits(), (100, 400));
        let e = t.set_write_buffer_limits(Some(10), Some(11)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(t.get_write_buffer_limits(), (100, 400), "unchanged by the refused call");
        // A write from outside the protocol's callbacks that crosses the mark calls
        // pause_writing at once, as asyncio's write does.
        t.set_write_buffer_limits(Some(0), Some(0)).unwrap();
        t.write(b"x");
        assert_eq!(log.pauses.get(), 1, "paused inside write");
        assert!(t.is_writing_paused());
        assert!(until(|| log.resumes.get() == 1).await, "resumed once flushed");
        assert!(!t.is_writing_paused());
    }
}

both_backends! {
    /// asyncio calls `pause_writing` from inside the `write` that crosses the high-water mark.
    /// Inside one of the protocol's own callbacks that would lend its `&mut self` twice, so it
    /// comes as soon as that callback returns, before any other callback; `is_writing_paused`
    /// tells at once.
    async fn pause_writing_comes_after_the_callback_that_crossed_the_mark() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let log2 = log.clone();
            Probe::new(log, move |t, _| {
                t.set_write_buffer_limits(Some(10), Some(0)).unwrap();
                t.write(vec![0u8; 100]);
                assert!(t.is_writing_paused(), "paused from the crossing write on");
                assert_eq!(log2.pauses.get(), 0, "not from inside the callback");
            })
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"go".as_slice()).await.0.unwrap();
        assert!(until(|| log.pauses.get() == 1).await);
        assert_eq!(log.nested.get(), 0);
        let (r, _) = c.read_exact(vec![0u8; 100]).await;
        r.unwrap();
        assert!(until(|| log.resumes.get() == 1).await, "resumed once drained");
    }
}

/// A transport kept where a buffer's destructor can find it (a `Bytes` owner must be `Send`,
/// a transport is not).
mod reentry {
    use super::*;

    thread_local! {
        pub static TRANSPORT: RefCell<Option<Transport>> = const { RefCell::new(None) };
    }

    /// Bytes whose destructor writes to the transport: it runs when the loop drops the sent
    /// buffer, which must happen outside the transport's own borrows.
    pub struct Owner(pub Vec<u8>);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            TRANSPORT.with(|t| {
                if let Some(t) = t.borrow().as_ref() {
                    let _ = t.get_write_buffer_size();
                    t.write(b"!");
                }
            });
        }
    }
}

both_backends! {
    /// A sent buffer's destructor that writes to the same transport: the loop drops buffers
    /// outside its own borrows, so this is just one more write.
    async fn a_buffer_destructor_may_write_to_its_transport() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let mut p = Probe::new(log, |t, _| {
                t.write(bytes::Bytes::from_owner(reentry::Owner(b"data".to_vec())));
            });
            p.on_made = Some(Box::new(|t| {
                reentry::TRANSPORT.with(|slot| *slot.borrow_mut() = Some(t.clone()));
            }));
            p
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"go".as_slice()).await.0.unwrap();
        let (r, got) = c.read_exact(vec![0u8; 5]).await;
        r.unwrap();
        assert_eq!(got, b"data!");
        reentry::TRANSPORT.with(|slot| slot.borrow_mut().take());
        drop(c);
        until_lost(&log, 1).await;
        assert_eq!(*log.lost.borrow(), vec![None]);
    }
}

/// Bytes whose destructor panics (a foreign destructor the loop runs once they are sent).
struct PanickyOwner(Vec<u8>);

impl AsRef<[u8]> for PanickyOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PanickyOwner {
    fn drop(&mut self) {
        panic!("buffer destructor failed");
    }
}

both_backends! {
    /// A written buffer whose destructor panics once it has been sent: reported, that
    /// connection aborted and told why, the server goes on.
    async fn a_panicking_buffer_destructor_is_isolated() {
        let reports = count_exceptions();
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            Probe::new(log, |t, data| {
                if data.starts_with(b"bad") {
                    t.write(bytes::Bytes::from_owner(PanickyOwner(b"sent".to_vec())));
                } else {
                    t.write(data);
                }
            })
        });
        let bad = TcpStream::connect(server.local_addr()).await.unwrap();
        bad.write_all(b"bad".as_slice()).await.0.unwrap();
        until_lost(&log, 1).await;
        assert_eq!(reports.get(), 1);
        let lost = log.lost.borrow()[0].clone().expect("an error");
        assert!(lost.1.contains("buffer destructor failed"), "{lost:?}");
        let good = TcpStream::connect(server.local_addr()).await.unwrap();
        good.write_all(b"fine".as_slice()).await.0.unwrap();
        let (r, got) = good.read_exact(vec![0u8; 4]).await;
        r.unwrap();
        assert_eq!(got, b"fine");
    }
}

both_backends! {
    /// An echo that ignores `pause_writing`, to a peer that sends and never reads: the write
    /// queue grows past the high-water mark, but once it holds the connection's share of the
    /// pool no more data is taken, so the connection never holds more than that share and its
    /// receive budget (what it queued to write, and what its receive holds), and TCP stops the
    /// peer.
    async fn a_peer_that_never_reads_holds_a_bounded_share_of_the_pool() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let mut p = Probe::echo(log);
            p.on_made = Some(Box::new(|t| {
                if let Some(ExtraInfo::Socket(fd)) = t.get_extra_info("socket") {
                    set_buf(fd, libc::SO_SNDBUF, 4096);
                }
            }));
            p
        });
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        // A fixed send buffer too: autotuned, it may grow to `tcp_wmem`'s maximum (4 MiB on
        // many kernels), enough to take everything the writer has without TCP stopping it.
        socket.set_send_buffer_size(16 * 1024).unwrap();
        socket.connect(&server.local_addr().into()).unwrap();
        let client = Rc::new(TcpStream::from_std(socket.into()).unwrap());
        let writer = {
            let client = client.clone();
            spawn(async move {
                // Chunks of up to a pool buffer each; far more than the buffers can hold.
                for i in 0..2048usize {
                    if client.write_all(pattern(i, 2000)).await.0.is_err() {
                        return;
                    }
                }
            })
        };
        let pool = buffer_pool().count();
        let budget = ringloop_net::recv_budget(ringloop_net::DEFAULT_RECV_CAP, pool);
        let share = (pool / ringloop_net::POOL_SHARE).max(budget);
        let mut most = 0;
        for _ in 0..300 {
            tick().await;
            most = most.max(buffer_pool().out());
        }
        sleep(Duration::from_millis(20)).await.unwrap();
        most = most.max(buffer_pool().out());
        assert!(!writer.is_done(), "the peer was stopped by TCP");
        assert!(log.chunks.get() > 0);
        assert!(
            most <= share + budget + 1,
            "{most} pool buffers held, share {share}, budget {budget}"
        );
        writer.abort();
        client.set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        until_lost(&log, 1).await;
        assert!(until(|| buffer_pool().out() == 0).await, "{} out", buffer_pool().out());
    }
}

// ---- pause_reading -------------------------------------------------------------------------

both_backends! {
    /// 6 KiB arrive at once: three pool buffers, one receive (a bundle, on io_uring). The
    /// protocol pauses reading in its first `data_received`: no second one comes, however
    /// long the loop runs, until it resumes; then the rest comes, in order.
    async fn pause_reading_is_honoured_within_one_receive() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| Probe::new(log, |t, _| t.pause_reading()));
        let mut client = std::net::TcpStream::connect(server.local_addr()).unwrap();
        let msg = pattern(1, 6144);
        client.write_all(&msg).unwrap();
        assert!(until(|| log.chunks.get() == 1).await);
        let t = log.transport(0);
        assert!(!t.is_reading());
        for _ in 0..50 {
            tick().await;
        }
        sleep(Duration::from_millis(20)).await.unwrap();
        assert_eq!(log.chunks.get(), 1, "no data_received while paused");
        t.resume_reading(); // the protocol pauses again at the next chunk
        assert!(until(|| log.chunks.get() == 2).await);
        for _ in 0..20 {
            tick().await;
        }
        assert_eq!(log.chunks.get(), 2);
        while log.data.borrow().len() < msg.len() {
            let before = log.chunks.get();
            t.resume_reading();
            assert!(until(|| log.chunks.get() > before).await);
        }
        assert_eq!(*log.data.borrow(), msg);
        drop(client);
        t.resume_reading();
        until_lost(&log, 1).await;
        assert_eq!(log.eofs.get(), 1);
    }
}

// ---- closing, aborting, writes after them --------------------------------------------------

both_backends! {
    /// `close()` flushes what was queued, then the peer sees end of stream; a write after it
    /// is dropped (asyncio drops writes once its flush is done; ours drops them from the
    /// close). `connection_lost(None)` comes once, after the callback, however often close and
    /// abort are called afterwards.
    async fn close_flushes_then_later_writes_are_dropped() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let log2 = log.clone();
            Probe::new(log, move |t, _| {
                t.write(b"queued");
                t.close();
                assert!(t.is_closing());
                t.write(b"dropped");
                t.close();
                assert_eq!(log2.lost_count(), 0, "connection_lost never from inside a callback");
            })
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"go".as_slice()).await.0.unwrap();
        assert_eq!(read_to_end(&c).await, b"queued");
        until_lost(&log, 1).await;
        for _ in 0..10 {
            tick().await;
        }
        assert_eq!(*log.lost.borrow(), vec![None]);
        let t = log.transport(0);
        t.write(b"after the end"); // dropped, no panic
        t.close();
        t.abort();
        assert_eq!(t.get_write_buffer_size(), 0);
        assert_eq!(log.lost_count(), 1);
    }
}

both_backends! {
    /// `abort()` drops what is queued: the peer gets no byte of it, and `connection_lost(None)`
    /// comes once.
    async fn abort_drops_queued_data() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            Probe::new(log, |t, _| {
                t.write(vec![1u8; 100_000]);
                t.abort();
                t.write(b"dropped");
                assert_eq!(t.get_write_buffer_size(), 0);
            })
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"go".as_slice()).await.0.unwrap();
        until_lost(&log, 1).await;
        assert_eq!(*log.lost.borrow(), vec![None]);
        let mut got = 0;
        loop {
            let (n, _) = c.read(vec![0u8; 65536]).await;
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got < 100_000, "the aborted data did not all go out ({got} bytes)");
        assert_eq!(buffer_pool().out(), 0);
    }
}

both_backends! {
    /// A write after `write_eof` panics (asyncio raises `RuntimeError`); inside a callback
    /// that is a panicking callback: reported, the connection aborted, `connection_lost` told
    /// why. Before it, `write_eof` sent what was queued and then end of stream.
    async fn write_after_write_eof_panics_and_aborts() {
        let reports = count_exceptions();
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            Probe::new(log, |t, _| {
                assert!(t.can_write_eof());
                t.write(b"before eof");
                t.write_eof();
                t.write(b"after eof");
            })
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"go".as_slice()).await.0.unwrap();
        until_lost(&log, 1).await;
        assert_eq!(reports.get(), 1);
        let lost = log.lost.borrow()[0].clone().expect("an error");
        assert!(lost.1.contains("data_received panicked"), "{lost:?}");
        assert!(lost.1.contains("write after write_eof"), "{lost:?}");
        let (n, _) = c.read(vec![0u8; 64]).await;
        assert!(matches!(n, Ok(0) | Err(_)), "aborted before anything was sent: {n:?}");
    }
}

both_backends! {
    /// `write_eof` without a panic: the queued bytes, then end of stream; reading goes on and
    /// the peer's reply arrives.
    async fn write_eof_half_closes() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let mut p = Probe::new(log, |_, _| {});
            p.on_made = Some(Box::new(|t| {
                t.write(b"request");
                t.write_eof();
            }));
            p
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        assert_eq!(read_to_end(&c).await, b"request");
        c.write_all(b"reply".as_slice()).await.0.unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        until_lost(&log, 1).await;
        assert_eq!(*log.data.borrow(), b"reply");
        assert_eq!(*log.lost.borrow(), vec![None]);
    }
}

// ---- end of stream -------------------------------------------------------------------------

both_backends! {
    /// `eof_received` returning false (the default) closes the transport: the peer's half
    /// close is answered with end of stream, and `connection_lost(None)` comes once.
    async fn eof_received_false_closes() {
        let log = Rc::new(Log::default());
        let server = serve(&log, Probe::echo);
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"last words".as_slice()).await.0.unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&c).await, b"last words");
        until_lost(&log, 1).await;
        assert_eq!(log.eofs.get(), 1);
        assert_eq!(*log.lost.borrow(), vec![None]);
    }
}

both_backends! {
    /// `eof_received` returning true keeps the transport open for writing: the protocol answers
    /// after the peer's end of stream, later writes still go out, and its own `close()` ends
    /// the connection.
    async fn eof_received_true_keeps_it_open() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let mut p = Probe::new(log, |_, _| {});
            p.keep_open = true;
            p.on_eof = Some(Box::new(|t| t.write(b"bye;")));
            p
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        c.write_all(b"hello".as_slice()).await.0.unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert!(until(|| log.eofs.get() == 1).await);
        for _ in 0..10 {
            tick().await;
        }
        let t = log.transport(0);
        assert!(!t.is_closing(), "kept open");
        assert_eq!(log.lost_count(), 0);
        t.write(b"later;");
        t.close();
        assert_eq!(read_to_end(&c).await, b"bye;later;");
        until_lost(&log, 1).await;
        assert_eq!(*log.lost.borrow(), vec![None]);
        assert_eq!(*log.data.borrow(), b"hello");
    }
}

// ---- errors --------------------------------------------------------------------------------

both_backends! {
    /// The peer resets while 8 MiB are queued for it: `connection_lost` gets the real errno
    /// (`ECONNRESET`, or `EPIPE` if the send saw it first), once, and the queue is dropped.
    async fn peer_reset_mid_write_reports_the_errno() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            let mut p = Probe::new(log, |_, _| {});
            p.on_made = Some(Box::new(|t| t.write(vec![7u8; 8 << 20])));
            p
        });
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        let (n, _) = c.read(vec![0u8; 1024]).await;
        assert!(n.unwrap() > 0, "the write is under way");
        c.set_linger(Some(Duration::ZERO)).unwrap();
        drop(c); // RST
        until_lost(&log, 1).await;
        let lost = log.lost.borrow()[0].clone().expect("an error");
        assert!(
            lost.0 == libc::ECONNRESET || lost.0 == libc::EPIPE,
            "errno {} ({})",
            lost.0,
            lost.1
        );
        let t = log.transport(0);
        assert_eq!(t.get_write_buffer_size(), 0);
        t.write(b"ignored");
        assert_eq!(log.lost_count(), 1);
        assert_eq!(buffer_pool().out(), 0);
    }
}

both_backends! {
    /// A panicking `data_received` is reported to the exception handler, its connection is
    /// aborted and told why, and the server goes on serving another connection.
    async fn panicking_callback_is_reported_and_isolated() {
        let reports = count_exceptions();
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| {
            Probe::new(log, |t, data| {
                if data.starts_with(b"boom") {
                    panic!("the protocol blew up");
                }
                t.write(data);
            })
        });
        let bad = TcpStream::connect(server.local_addr()).await.unwrap();
        let good = TcpStream::connect(server.local_addr()).await.unwrap();
        bad.write_all(b"boom".as_slice()).await.0.unwrap();
        until_lost(&log, 1).await;
        assert_eq!(reports.get(), 1);
        let lost = log.lost.borrow()[0].clone().expect("an error");
        assert!(lost.1.contains("the protocol blew up"), "{lost:?}");
        assert!(read_to_end(&bad).await.is_empty());
        good.write_all(b"still here".as_slice()).await.0.unwrap();
        let (r, got) = good.read_exact(vec![0u8; 10]).await;
        r.unwrap();
        assert_eq!(got, b"still here");
        drop(good);
        until_lost(&log, 2).await;
        assert_eq!(log.lost.borrow()[1], None);
        assert_eq!(log.drops.get(), 2);
    }
}

both_backends! {
    /// A panicking `connection_made` aborts its connection the same way; the factory panicking
    /// closes that one connection and the server goes on.
    async fn panicking_connection_made_and_factory() {
        let reports = count_exceptions();
        let log = Rc::new(Log::default());
        let made = Rc::new(Cell::new(0));
        let server = {
            let made = made.clone();
            serve(&log, move |log| {
                made.set(made.get() + 1);
                match made.get() {
                    1 => panic!("factory failed"),
                    2 => {
                        let mut p = Probe::new(log, |_, _| {});
                        p.on_made = Some(Box::new(|_| panic!("connection_made failed")));
                        p
                    }
                    _ => Probe::echo(log),
                }
            })
        };
        let first = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(read_to_end(&first).await.is_empty(), "closed: no protocol");
        let second = TcpStream::connect(server.local_addr()).await.unwrap();
        until_lost(&log, 1).await;
        assert!(read_to_end(&second).await.is_empty());
        let lost = log.lost.borrow()[0].clone().expect("an error");
        assert!(lost.1.contains("connection_made panicked"), "{lost:?}");
        let third = TcpStream::connect(server.local_addr()).await.unwrap();
        third.write_all(b"ok".as_slice()).await.0.unwrap();
        let (r, got) = third.read_exact(vec![0u8; 2]).await;
        r.unwrap();
        assert_eq!(got, b"ok");
        assert_eq!(reports.get(), 2);
    }
}

// ---- clients -------------------------------------------------------------------------------

both_backends! {
    /// `create_connection` to a port nobody listens on fails with `ECONNREFUSED`, and the
    /// factory is never called.
    async fn create_connection_refused_gives_the_errno() {
        let addr: SocketAddr = {
            let l = TcpListener::bind(localhost()).unwrap();
            l.local_addr().unwrap()
        };
        let called = Rc::new(Cell::new(false));
        let c = called.clone();
        let log = Rc::new(Log::default());
        let e = create_connection(
            move || {
                c.set(true);
                Probe::echo(&log)
            },
            addr,
        )
        .await
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        assert!(!called.get());
    }
}

both_backends! {
    /// A protocol client against a protocol server: `connection_made` has run when
    /// `create_connection` returns, the echo comes back, the addresses match both ways, and
    /// closing the client ends both connections with `None`.
    async fn client_and_server_protocols_talk() {
        let slog = Rc::new(Log::default());
        let server = serve(&slog, Probe::echo);
        let clog = Rc::new(Log::default());
        let l = clog.clone();
        let t = create_connection(move || Probe::new(&l, |_, _| {}), server.local_addr())
            .await
            .unwrap();
        assert_eq!(clog.made.get(), 1);
        assert_eq!(t.peer_addr(), server.local_addr());
        assert_eq!(t.get_extra_info("peername"), Some(ExtraInfo::PeerName(server.local_addr())));
        t.write(b"ping");
        assert!(until(|| clog.data.borrow().len() == 4).await);
        assert_eq!(*clog.data.borrow(), b"ping");
        let st = slog.transport(0);
        assert_eq!(st.get_extra_info("peername"), Some(ExtraInfo::PeerName(t.local_addr().unwrap())));
        assert_eq!(st.get_extra_info("sockname"), Some(ExtraInfo::SockName(server.local_addr())));
        assert!(matches!(st.get_extra_info("socket"), Some(ExtraInfo::Socket(fd)) if fd >= 0));
        assert_eq!(st.get_extra_info("compression"), None);
        t.close();
        until_lost(&clog, 1).await;
        until_lost(&slog, 1).await;
        assert_eq!(*clog.lost.borrow(), vec![None]);
        assert_eq!(*slog.lost.borrow(), vec![None]);
        assert_eq!(t.get_extra_info("socket"), None, "gone with the connection");
        assert_eq!(t.local_addr(), None, "asked of the socket, which is closed");
        assert_eq!(t.peer_addr(), server.local_addr(), "kept");
    }
}

// ---- the dispatcher's end ------------------------------------------------------------------

/// When `block_on`'s future is done the runtime cancels its tasks, the protocol dispatcher
/// among them: every open connection is lost, once, with `ConnectionAborted` carrying the
/// cancellation. A runtime dropped with connections open (after `run_until_complete`, which
/// cancels nothing) ends them the same way (the error says the dispatcher was dropped), and
/// every protocol is dropped after its `connection_lost` (no cycle through a kept transport
/// leaks), and so is every socket.
#[test]
fn runtime_shutdown_ends_protocol_connections_on_both_backends() {
    for backend in common::backends() {
        let _serial = common::serial();
        let fds_before = common::open_fds();
        let log = Rc::new(Log::default());
        {
            let rt = common::runtime(backend);
            let l = log.clone();
            // The client stays open past the end of block_on.
            let client = rt.block_on(async move {
                let server = serve(&l, Probe::echo);
                let c = TcpStream::connect(server.local_addr()).await.unwrap();
                c.write_all(b"x".as_slice()).await.0.unwrap();
                assert!(until(|| l.chunks.get() == 1).await);
                c
            });
            assert_eq!(rt.stats().tasks_alive, 0, "{backend}");
            drop(client);
        }
        assert_eq!(log.lost_count(), 1, "{backend}");
        assert_eq!(
            log.lost_cancelled.get(),
            1,
            "{backend}: {:?}",
            log.lost.borrow()
        );
        assert_eq!(log.drops.get(), 1, "{backend}");

        let log = Rc::new(Log::default());
        {
            let rt = common::runtime(backend);
            let l = log.clone();
            let client = rt.run_until_complete(async move {
                let server = serve(&l, Probe::echo);
                let c = TcpStream::connect(server.local_addr()).await.unwrap();
                c.write_all(b"x".as_slice()).await.0.unwrap();
                assert!(until(|| l.chunks.get() == 1).await);
                drop(server); // detached: it serves on
                c
            });
            drop(client);
            drop(rt);
        }
        let lost = log.lost.borrow().clone();
        assert_eq!(lost.len(), 1, "{backend}");
        assert!(
            lost[0]
                .as_ref()
                .unwrap()
                .1
                .contains("dispatcher was dropped"),
            "{lost:?}"
        );
        log.transports.borrow_mut().clear();
        assert_eq!(log.drops.get(), 1, "{backend}: the protocol was dropped");
        let leaked = common::leaked_fds(&fds_before);
        assert!(leaked.is_empty(), "{backend}: {leaked:?}");
    }
}

both_backends! {
    /// A transport used from a task, not a callback: writes from there are flushed by the
    /// loop, and `connection_lost` still comes from the loop, never from inside `close`.
    async fn transport_used_from_a_task() {
        let log = Rc::new(Log::default());
        let server = serve(&log, |log| Probe::new(log, |_, _| {}));
        let c = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(until(|| log.made.get() == 1).await);
        let t = log.transport(0);
        let l = log.clone();
        let writer = spawn(async move {
            for i in 0..10u8 {
                t.write(vec![i; 10]);
                if i % 3 == 0 {
                    tick().await;
                }
            }
            t.close();
            assert_eq!(l.lost_count(), 0, "not from inside close");
        });
        writer.await.unwrap();
        let got = read_to_end(&c).await;
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 10]).collect();
        assert_eq!(got, want);
        until_lost(&log, 1).await;
    }
}
