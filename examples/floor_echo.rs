//! The floor: an echo server on io_uring with no runtime at all, to measure ringloop's own cost
//! against.
//!
//! It is what a careful hand-written C liburing server does, in one loop and one ring: a
//! multishot accept, a multishot receive per connection into a ring of provided buffers (512 of
//! 2 KiB, ringloop's default pool), and each received buffer sent straight back, one send in
//! flight per connection (a short send continues from where it stopped), the buffer returned to
//! the ring when its send completes. No tasks, no wakers, no futures, no timers: whatever
//! ringloop's echo servers spend beyond this per message is the runtime's overhead.
//! `--threads N` runs N such loops, each on its own thread with its own `SO_REUSEPORT`
//! listener: the floor of a sharded server (`c10k --threads 1,2 --server "floor=... --threads
//! {threads} --addr {addr}"`).
//!
//! ```text
//! cargo run --release --example floor_echo -- --addr 127.0.0.1:7000
//! ./target/release/examples/c10k --backends uring,protocol \
//!     --server "floor=target/release/examples/floor_echo --addr {addr}" --no-shutdown-check
//! ```
//!
//! It serves until killed. It is a measuring stick, not a server to copy: it has no shutdown
//! path, no limit on a connection's queued sends but the pool, and a client that sends without
//! reading holds buffers until TCP stops it.

#[path = "common/floor.rs"]
mod floor;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use clap::Parser;
use floor::{listen, set_nodelay, tag, untag, Buffers, GROUP};
use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue, IoUring};

#[derive(Parser, Debug)]
#[command(
    about = "echo server on io_uring with no runtime (the floor to measure ringloop against)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
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
    /// Accepted for compatibility with the other echo servers' command lines; ignored.
    #[arg(long)]
    backend: Option<String>,
    /// Accepted for compatibility; the "listening on" line is always printed.
    #[arg(long)]
    announce: bool,
    /// Threads, each with its own ring, pool and `SO_REUSEPORT` listener on `--addr` (the
    /// kernel spreads the connections over them): the floor of a sharded server.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Accepted for compatibility with `echo_server --threads N --no-pin`; nothing is pinned.
    #[arg(long)]
    no_pin: bool,
}

const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
#[derive(Default)]
struct Conn {
    /// Received buffers to send back, in order: (buffer, bytes already sent, length).
    queue: VecDeque<(u16, u32, u32)>,
    /// The front of `queue` is being sent.
    sending: bool,
    /// The multishot receive ended (end of stream or error): close once the sends are done.
    recv_done: bool,
    /// A receive ran out of buffers; arm it again once one comes back.
    starved: bool,
}

struct Server {
    ring: IoUring,
    bufs: Buffers,
    conns: Vec<Option<Conn>>,
    starved: Vec<RawFd>,
}

impl Server {
    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: every SQE names an open descriptor we own and, for sends, a buffer of the
        // pool that stays out of the ring until the send's completion gives it back.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit().expect("io_uring_enter");
        }
    }

    fn arm_recv(&mut self, fd: RawFd) {
        self.push(
            opcode::RecvMulti::new(Fd(fd), GROUP)
                .build()
                .user_data(tag(RECV, fd)),
        );
    }

    fn send_front(&mut self, fd: RawFd) {
        let conn = self.conns[fd as usize].as_mut().unwrap();
        let Some(&(bid, off, len)) = conn.queue.front() else {
            conn.sending = false;
            return;
        };
        conn.sending = true;
        // SAFETY: `off` < `len` ≤ the buffer's size.
        let p = unsafe { self.bufs.addr(bid).add(off as usize) };
        let sqe = opcode::Send::new(Fd(fd), p, len - off)
            .build()
            .user_data(tag(SEND, fd));
        self.push(sqe);
    }

    fn give_back(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.bufs.publish();
        while let Some(fd) = self.starved.pop() {
            if let Some(c) = self.conns[fd as usize].as_mut() {
                c.starved = false;
                self.arm_recv(fd);
            }
        }
    }

    fn maybe_close(&mut self, fd: RawFd) {
        let c = self.conns[fd as usize].as_ref().unwrap();
        if c.recv_done && !c.sending && c.queue.is_empty() {
            self.conns[fd as usize] = None;
            // SAFETY: we own `fd`; no op on it is in flight (its receive ended, no send).
            unsafe { libc::close(fd) };
        }
    }

    fn complete(&mut self, listener: RawFd, user_data: u64, res: i32, flags: u32) {
        let (kind, fd) = untag(user_data);
        match kind {
            ACCEPT => {
                if res >= 0 {
                    set_nodelay(res);
                    if self.conns.len() <= res as usize {
                        self.conns.resize_with(res as usize + 1, || None);
                    }
                    self.conns[res as usize] = Some(Conn::default());
                    self.arm_recv(res);
                }
                if !cqueue::more(flags) {
                    self.push(
                        opcode::AcceptMulti::new(Fd(listener))
                            .build()
                            .user_data(ACCEPT),
                    );
                }
            }
            RECV => {
                if res > 0 {
                    let bid = cqueue::buffer_select(flags).expect("a receive names its buffer");
                    let conn = self.conns[fd as usize].as_mut().unwrap();
                    conn.queue.push_back((bid, 0, res as u32));
                    if !conn.sending {
                        self.send_front(fd);
                    }
                    if !cqueue::more(flags) {
                        self.arm_recv(fd);
                    }
                } else if res == -libc::ENOBUFS {
                    let conn = self.conns[fd as usize].as_mut().unwrap();
                    if !conn.starved {
                        conn.starved = true;
                        self.starved.push(fd);
                    }
                } else {
                    self.conns[fd as usize].as_mut().unwrap().recv_done = true;
                    self.maybe_close(fd);
                }
            }
            SEND => {
                let conn = self.conns[fd as usize].as_mut().unwrap();
                let (bid, off, len) = conn.queue.front_mut().map(|e| *e).unwrap();
                if res < 0 {
                    // The peer is gone: drop what was queued; the receive ends by itself.
                    let bids: Vec<u16> = conn.queue.drain(..).map(|(b, _, _)| b).collect();
                    conn.sending = false;
                    for b in bids {
                        self.give_back(b);
                    }
                    self.maybe_close(fd);
                } else if off + (res as u32) < len {
                    conn.queue.front_mut().unwrap().1 = off + res as u32;
                    self.send_front(fd);
                } else {
                    conn.queue.pop_front();
                    self.give_back(bid);
                    self.send_front(fd);
                    self.maybe_close(fd);
                }
            }
            _ => unreachable!("unknown tag {user_data:#x}"),
        }
    }
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let threads = args.threads.max(1);
    let first = listen(args.addr, args.backlog, threads > 1)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listen(addr, args.backlog, true)?);
    }
    println!("listening on {addr} (floor: io_uring, no runtime, {threads} thread(s))");
    let (buffers, buf_size) = (args.buffers, args.buf_size);
    let mut handles = Vec::new();
    for listener in listeners.split_off(1) {
        handles.push(std::thread::spawn(move || {
            serve(listener, buffers, buf_size)
        }));
    }
    serve(listeners.pop().unwrap(), buffers, buf_size)?;
    for h in handles {
        h.join().expect("a floor thread panicked")?;
    }
    Ok(())
}

/// One thread's loop: its own ring and provided buffers, serving `listener` until killed.
fn serve(listener: std::net::TcpListener, buffers: u16, buf_size: u32) -> io::Result<()> {
    let lfd = listener.as_raw_fd();
    let ring = floor::ring()?;
    let bufs = Buffers::new(buffers, buf_size)?;
    // SAFETY: `bufs` outlives the io_uring (dropped after it, as `server` drops its fields in
    // order: `ring` first).
    unsafe { bufs.register(&ring)? };
    let mut server = Server {
        ring,
        bufs,
        conns: Vec::new(),
        starved: Vec::new(),
    };
    server.push(opcode::AcceptMulti::new(Fd(lfd)).build().user_data(ACCEPT));

    let mut done = Vec::with_capacity(4096);
    loop {
        match server.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        done.extend(
            server
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (user_data, res, flags) in done.drain(..) {
            server.complete(lfd, user_data, res, flags);
        }
    }
}
