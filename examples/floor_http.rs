//! The floor for HTTP: hyper's HTTP/1 server on io_uring with no runtime, to measure what any
//! runtime under hyper can save against.
//!
//! One loop, one ring, and the least a hyper server needs around it: a multishot accept, a
//! multishot receive per connection into a ring of provided buffers (512 of 2 KiB, as
//! ringloop's pool), hyper's reads copying out of those buffers (as ringloop's pooled reads
//! do), its writes a non-blocking `send`/`sendmsg` straight from hyper's buffer (as tokio's and
//! ringloop's adapters do), a poll op for the rare full socket buffer, and one future per
//! connection polled when a completion for it arrives. No scheduler beyond a list of woken
//! connections, no timers (so no header-read timeout: the servers it is compared with arm
//! one), no task bookkeeping, no graceful shutdown, HTTP/1 only (hyper's `http1::Builder`, not
//! the auto builder that first peeks for HTTP/2's preface). It answers from
//! `common/http_routes.rs`, the same code as `http_server` and `tokio_http_server`.
//!
//! Whatever hyper on a runtime spends per request beyond this is the runtime's (and its
//! features'); whatever this spends is hyper's and the kernel's.
//!
//! ```text
//! cargo run --release --example floor_http -- --addr 127.0.0.1:8080
//! ./target/release/examples/c10k --http-only --http-backends uring,tokio \
//!     --http-server "floor=target/release/examples/floor_http --addr {addr}"
//! ```
//!
//! It serves until killed. It is a measuring stick, not a server to copy.

#[path = "common/floor.rs"]
mod floor;
#[path = "common/http_routes.rs"]
mod http_routes;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use clap::Parser;
use floor::{listen, set_nodelay, tag, untag, Buffers, GROUP};
use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};

#[derive(Parser, Debug)]
#[command(about = "hyper's HTTP/1 server on io_uring with no runtime (the floor for HTTP)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Provided buffers (a power of two, at most 32768).
    #[arg(long, default_value_t = 512)]
    buffers: u16,
    /// Bytes per provided buffer.
    #[arg(long, default_value_t = 2048)]
    buf_size: u32,
    /// hyper-util's auto builder (HTTP/1.1, or HTTP/2 after its preface; no executor, so an
    /// HTTP/2 connection fails at its first stream) instead of hyper's `http1::Builder`, as
    /// the servers it is compared with use: to measure what the auto builder costs.
    #[arg(long)]
    auto: bool,
    /// Accepted for compatibility with the other servers' command lines; ignored.
    #[arg(long)]
    backend: Option<String>,
}

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const WRITABLE: u64 = 2;
/// What the loop and a connection's [`Io`] share about one connection.
#[derive(Default)]
struct ConnState {
    /// Received buffers not yet read by hyper: (buffer, bytes already read, length).
    chunks: VecDeque<(u16, u32, u32)>,
    /// The multishot receive ended: `Some(0)` at the end of the stream, `Some(-errno)`.
    ended: Option<i32>,
    /// The receive is in flight (armed and not ended).
    receiving: bool,
    /// A poll for writability is in flight.
    polling: bool,
    /// A receive ran out of buffers; the loop arms it again once one comes back.
    starved: bool,
    /// Woken by a completion for this connection: the receive or the writability poll.
    waker: Option<Waker>,
}

/// The loop's shared state: the ring (hyper's writes may need a poll op), the buffers, and
/// every connection's state, indexed by descriptor.
struct Shared {
    ring: RefCell<IoUring>,
    bufs: RefCell<Buffers>,
    conns: RefCell<Vec<Option<ConnState>>>,
    /// Connections whose receive starved, to arm again.
    starved: RefCell<Vec<RawFd>>,
}

impl Shared {
    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every SQE names an open descriptor of ours and no memory of ours (receives
        // select a provided buffer; polls take none).
        while unsafe { ring.submission().push(&sqe) }.is_err() {
            ring.submit().expect("io_uring_enter");
        }
    }

    fn arm_recv(&self, fd: RawFd) {
        self.push(
            opcode::RecvMulti::new(Fd(fd), GROUP)
                .build()
                .user_data(tag(RECV, fd)),
        );
    }
}

/// One connection's stream as hyper sees it.
struct Io {
    fd: RawFd,
    shared: Rc<Shared>,
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut cursor: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut conns = self.shared.conns.borrow_mut();
        let conn = conns[self.fd as usize].as_mut().expect("a live connection");
        let mut copied = 0usize;
        let mut returned = false;
        {
            let mut bufs = self.shared.bufs.borrow_mut();
            // SAFETY: hyper's cursor; we only write initialised bytes into it, then advance.
            let dst: &mut [MaybeUninit<u8>] = unsafe { cursor.as_mut() };
            while copied < dst.len() {
                let Some(front) = conn.chunks.front_mut() else {
                    break;
                };
                let (bid, off, len) = *front;
                let n = ((len - off) as usize).min(dst.len() - copied);
                // SAFETY: `off + n` ≤ `len` ≤ the buffer's size; `dst` has room for `n`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bufs.addr(bid).add(off as usize),
                        dst.as_mut_ptr().add(copied).cast::<u8>(),
                        n,
                    )
                };
                copied += n;
                if off as usize + n == len as usize {
                    conn.chunks.pop_front();
                    bufs.push(bid);
                    returned = true;
                } else {
                    front.1 = off + n as u32;
                }
            }
            if returned {
                bufs.publish();
            }
        }
        if copied > 0 {
            // SAFETY: `copied` bytes were written above.
            unsafe { cursor.advance(copied) };
            return Poll::Ready(Ok(()));
        }
        match conn.ended {
            Some(0) => Poll::Ready(Ok(())),
            Some(e) => Poll::Ready(Err(io::Error::from_raw_os_error(-e))),
            None => {
                conn.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Io {
    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        let n = if bufs.len() == 1 {
            // SAFETY: the slice is valid for its length for the call.
            unsafe { libc::send(self.fd, bufs[0].as_ptr().cast(), bufs[0].len(), flags) }
        } else {
            // SAFETY: a zeroed msghdr is valid; `IoSlice` is ABI-compatible with `iovec`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len().min(1024);
            // SAFETY: `msg` points at `bufs`, valid for the call.
            unsafe { libc::sendmsg(self.fd, &msg, flags) }
        };
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Poll::Ready(Err(err));
        }
        let mut conns = self.shared.conns.borrow_mut();
        let conn = conns[self.fd as usize].as_mut().expect("a live connection");
        conn.waker = Some(cx.waker().clone());
        if !conn.polling {
            conn.polling = true;
            drop(conns);
            self.shared.push(
                opcode::PollAdd::new(Fd(self.fd), libc::POLLOUT as u32)
                    .build()
                    .user_data(tag(WRITABLE, self.fd)),
            );
        }
        Poll::Pending
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: our descriptor.
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// Connections woken since the loop last polled, by descriptor.
    static WOKEN: RefCell<Vec<RawFd>> = const { RefCell::new(Vec::new()) };
}

/// A connection's waker: queues the connection once until the loop polls it.
struct ConnWaker {
    fd: RawFd,
    queued: AtomicBool,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::Relaxed) {
            WOKEN.with(|w| w.borrow_mut().push(self.fd));
        }
    }
}

/// A connection's future (hyper's `serve_connection`) and its waker.
struct Task {
    fut: Pin<Box<dyn Future<Output = ()>>>,
    waker: Arc<ConnWaker>,
    done: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let listener = listen(args.addr, args.backlog, false)?;
    let lfd = listener.as_raw_fd();

    let ring = floor::ring()?;
    let bufs = Buffers::new(args.buffers, args.buf_size)?;
    // SAFETY: `bufs` outlives the io_uring: `Shared` drops `ring` before `bufs` (field order),
    // and the loop never returns while ops are in flight.
    unsafe { bufs.register(&ring)? };
    let shared = Rc::new(Shared {
        ring: RefCell::new(ring),
        bufs: RefCell::new(bufs),
        conns: RefCell::new(Vec::new()),
        starved: RefCell::new(Vec::new()),
    });
    let mut tasks: Vec<Option<Task>> = Vec::new();
    // Leaked: the auto builder's connections borrow it for their whole life.
    let http: &'static Builders = Box::leak(Box::new(Builders {
        http1: hyper::server::conn::http1::Builder::new(),
        auto: args
            .auto
            .then(|| hyper_util::server::conn::auto::Builder::new(NoExecutor)),
    }));
    shared.push(opcode::AcceptMulti::new(Fd(lfd)).build().user_data(ACCEPT));
    println!(
        "listening on {} (floor: hyper HTTP/1 on io_uring, no runtime)",
        listener.local_addr()?
    );

    let mut done = Vec::with_capacity(4096);
    let mut woken = Vec::with_capacity(4096);
    loop {
        // Poll every woken connection (and those its poll woke).
        loop {
            WOKEN.with(|w| std::mem::swap(&mut *w.borrow_mut(), &mut woken));
            if woken.is_empty() {
                break;
            }
            for fd in woken.drain(..) {
                let Some(task) = tasks.get_mut(fd as usize).and_then(|t| t.as_mut()) else {
                    continue;
                };
                task.waker.queued.store(false, Ordering::Relaxed);
                if task.done {
                    continue;
                }
                let waker = Waker::from(task.waker.clone());
                let mut cx = Context::from_waker(&waker);
                if task.fut.as_mut().poll(&mut cx).is_ready() {
                    task.done = true;
                    finish(&shared, &mut tasks, fd);
                }
            }
        }
        let starved: Vec<RawFd> = shared.starved.borrow_mut().drain(..).collect();
        for fd in starved {
            let mut conns = shared.conns.borrow_mut();
            if let Some(c) = conns[fd as usize].as_mut() {
                c.starved = false;
                c.receiving = true;
                drop(conns);
                shared.arm_recv(fd);
            }
        }

        match shared.ring.borrow_mut().submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.extend(
            shared
                .ring
                .borrow_mut()
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (user_data, res, flags) in done.drain(..) {
            let (kind, fd) = untag(user_data);
            match kind {
                ACCEPT => {
                    if res >= 0 {
                        accept(&shared, &mut tasks, http, res);
                    }
                    if !cqueue::more(flags) {
                        shared.push(opcode::AcceptMulti::new(Fd(lfd)).build().user_data(ACCEPT));
                    }
                }
                RECV => {
                    let mut conns = shared.conns.borrow_mut();
                    let conn = conns[fd as usize].as_mut().expect("a receive's connection");
                    if res > 0 {
                        let bid = cqueue::buffer_select(flags).expect("a receive names its buffer");
                        conn.chunks.push_back((bid, 0, res as u32));
                        if !cqueue::more(flags) {
                            drop(conns);
                            shared.arm_recv(fd);
                            conns = shared.conns.borrow_mut();
                        }
                    } else if res == -libc::ENOBUFS {
                        conn.receiving = false;
                        if !conn.starved {
                            conn.starved = true;
                            shared.starved.borrow_mut().push(fd);
                        }
                        continue;
                    } else {
                        conn.receiving = false;
                        conn.ended = Some(res);
                    }
                    let conn = conns[fd as usize].as_mut().expect("a receive's connection");
                    if let Some(w) = conn.waker.take() {
                        drop(conns);
                        w.wake();
                    }
                    maybe_close(&shared, &mut tasks, fd);
                }
                WRITABLE => {
                    let mut conns = shared.conns.borrow_mut();
                    let conn = conns[fd as usize].as_mut().expect("a poll's connection");
                    conn.polling = false;
                    if let Some(w) = conn.waker.take() {
                        drop(conns);
                        w.wake();
                    }
                    maybe_close(&shared, &mut tasks, fd);
                }
                _ => unreachable!("unknown tag {user_data:#x}"),
            }
        }
    }
}

/// The connection builders: hyper's HTTP/1 one, and hyper-util's auto one with `--auto`.
struct Builders {
    http1: hyper::server::conn::http1::Builder,
    auto: Option<hyper_util::server::conn::auto::Builder<NoExecutor>>,
}

/// The auto builder's executor, for HTTP/2's streams, which this floor does not serve.
#[derive(Clone, Copy)]
struct NoExecutor;

impl<F: Future + 'static> hyper::rt::Executor<F> for NoExecutor {
    fn execute(&self, _fut: F) {
        panic!("floor_http serves HTTP/1 only");
    }
}

/// A new connection: its state, its receive, and hyper's future, polled once to start it.
fn accept(shared: &Rc<Shared>, tasks: &mut Vec<Option<Task>>, http: &'static Builders, fd: RawFd) {
    set_nodelay(fd);
    let i = fd as usize;
    {
        let mut conns = shared.conns.borrow_mut();
        if conns.len() <= i {
            conns.resize_with(i + 1, || None);
        }
        conns[i] = Some(ConnState {
            receiving: true,
            ..ConnState::default()
        });
    }
    if tasks.len() <= i {
        tasks.resize_with(i + 1, || None);
    }
    shared.arm_recv(fd);
    let io = Io {
        fd,
        shared: shared.clone(),
    };
    let service = hyper::service::service_fn(|req| async move {
        Ok::<_, std::convert::Infallible>(http_routes::respond(req))
    });
    let fut: Pin<Box<dyn Future<Output = ()>>> = match &http.auto {
        Some(auto) => {
            let conn = auto.serve_connection(io, service);
            Box::pin(async move {
                let _ = conn.await;
            })
        }
        None => {
            let conn = http.http1.serve_connection(io, service);
            Box::pin(async move {
                let _ = conn.await;
            })
        }
    };
    let waker = Arc::new(ConnWaker {
        fd,
        queued: AtomicBool::new(true),
    });
    tasks[i] = Some(Task {
        fut,
        waker,
        done: false,
    });
    WOKEN.with(|w| w.borrow_mut().push(fd));
}

/// hyper is done with the connection: end its receive (a shutdown ends a multishot receive)
/// and close once nothing of ours is in flight on it.
fn finish(shared: &Rc<Shared>, tasks: &mut [Option<Task>], fd: RawFd) {
    // SAFETY: our descriptor, still open.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    maybe_close(shared, tasks, fd);
}

fn maybe_close(shared: &Rc<Shared>, tasks: &mut [Option<Task>], fd: RawFd) {
    let i = fd as usize;
    if !tasks[i].as_ref().is_some_and(|t| t.done) {
        return;
    }
    let mut conns = shared.conns.borrow_mut();
    let c = conns[i].as_ref().expect("a finished connection's state");
    if c.receiving || c.polling || c.starved {
        return;
    }
    let c = conns[i].take().expect("checked above");
    drop(conns);
    let mut bufs = shared.bufs.borrow_mut();
    for (bid, _, _) in c.chunks {
        bufs.push(bid);
    }
    bufs.publish();
    drop(bufs);
    // The future (and its `Io`) goes before the descriptor does.
    tasks[i] = None;
    // SAFETY: we own `fd`; nothing of ours is in flight on it.
    unsafe { libc::close(fd) };
}
