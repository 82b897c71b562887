//! Sharded listening: one TCP port served by every shard of a
//! [`Shards`](ringloop_runtime::Shards) set, each shard with its own [`Server`].
//!
//! [`ShardListeners`]: a listener per shard, all bound to the same address with
//! `SO_REUSEPORT`; the kernel spreads the connections over them. The default for a sharded
//! server: nothing is shared between shards, not even the accept queue. Optionally a
//! [`Steering`] program hands each connection to the shard on the CPU that received it.
//!
//! ```
//! use ringloop_net::{ShardListeners, ShutdownSignal, TcpStream};
//! use ringloop_runtime::{Placement, Shards};
//! use std::io::Read;
//! use std::time::Duration;
//!
//! async fn hello(stream: TcpStream, _: ShutdownSignal) {
//!     let _ = stream.write_all(b"hello\n".as_slice()).await;
//! }
//!
//! // Bound up front, before the shards start: port 0 resolves once, errors come back here.
//! let listeners = ShardListeners::bind("127.0.0.1:0".parse().unwrap(), 2)?;
//! let addr = listeners.local_addr();
//! let shards = Shards::builder()
//!     .count(2)
//!     .placement(Placement::Unpinned)
//!     .start(move |shard| {
//!         let listeners = listeners.clone();
//!         async move {
//!             let server = listeners.serve(&shard, hello)?;
//!             // Serves until the set is stopped (the main task is cancelled here), then
//!             // shuts down gracefully: every shard's connections get up to 5 s to finish.
//!             let _stopped = server.wait_closed().await;
//!             Ok::<_, std::io::Error>(server.shutdown(Duration::from_secs(5)).await?)
//!         }
//!     })?;
//!
//! let mut reply = String::new();
//! std::net::TcpStream::connect(addr)?.read_to_string(&mut reply)?;
//! assert_eq!(reply, "hello\n");
//!
//! shards.stop();
//! for report in shards.join().unwrap() {
//!     assert!(report?.is_graceful());
//! }
//! # Ok::<_, std::io::Error>(())
//! ```
//!
//! # A listener per shard
//!
//! [`ShardListeners::bind`] creates `count` listening sockets on one address, in index order,
//! each with `SO_REUSEPORT` and `SO_REUSEADDR`: the first resolves port 0, the others bind
//! that port. Each shard takes its own ([`take`](ShardListeners::take), or
//! [`serve`](ShardListeners::serve) to run a [`Server`] on it). The kernel picks a listener
//! for each new connection by a hash of its addresses and ports, so many connections spread
//! evenly, and a shard's accept queue, ring and buffers are its own.
//!
//! Every listener must be taken: the kernel hashes connections onto a listener whether or not
//! anyone accepts on it. One that is not taken is closed when the last clone of the group
//! goes (its queued connections are then reset). A listener that closes (its server shut
//! down) leaves the group, and new connections go to the others.
//!
//! # Steering by CPU
//!
//! With [`Steering::Cpu`], a classic BPF program (`SO_ATTACH_REUSEPORT_CBPF`) picks the
//! listener instead of the hash: a connection whose handshake the kernel processes on CPU
//! `cpus[i]` goes to listener `i`. When shard `i`'s thread is pinned to `cpus[i]`
//! ([`Placement::shard_cpus`](ringloop_runtime::Placement::shard_cpus) says where each shard
//! will be), a connection is accepted and served on the CPU whose network stack received it,
//! and its packets and its task stay on one CPU's caches. Whether that CPU is well chosen
//! depends on the NIC's receive queues and IRQ affinity (or RPS): steering pays when each
//! receive queue is handled by the CPU of one shard. A connection received on a CPU that has
//! no shard falls back to the hash. The program reads socket indices in the kernel's group,
//! which are the binding order while every listener is open; when one closes, the kernel moves
//! the last listener into its place, so during a shutdown steering is approximate (connections
//! are still served, by some shard).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ringloop_runtime::Shard;
use socket2::Socket;

use crate::server::{Server, ShutdownSignal};
use crate::tcp::{TcpListener, TcpStream};

/// Locks `m`, ignoring poisoning: every critical section here only moves values in and out
/// and cannot panic half-way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

// ---------------------------------------------------------------------------------------------
// A listener per shard
// ---------------------------------------------------------------------------------------------

/// How the kernel picks a listener of a [`ShardListeners`] group for each new connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Steering {
    /// `SO_REUSEPORT`'s own choice: a hash of the connection's addresses and ports.
    #[default]
    Hash,
    /// Listener `i` takes the connections the kernel receives on CPU `cpus[i]`
    /// (`cpus.len()` must be the number of listeners); a CPU that is not listed falls back to
    /// the hash, and a CPU listed twice goes to the first of its listeners. See
    /// [steering by CPU](self#steering-by-cpu).
    Cpu(Vec<usize>),
}

/// Options for binding a [`ShardListeners`] group.
///
/// ```no_run
/// use ringloop_net::{ShardListeners, Steering};
/// use ringloop_runtime::Placement;
/// # fn f() -> std::io::Result<()> {
/// let cpus = Placement::Spread.shard_cpus(4)?.expect("pinned shards");
/// let listeners = ShardListeners::builder("0.0.0.0:8080".parse().unwrap(), 4)
///     .backlog(4096)
///     .steering(Steering::Cpu(cpus))
///     .bind()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ShardListenersBuilder {
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    steering: Steering,
}

impl ShardListenersBuilder {
    /// Each listener's backlog (default 1024; the kernel caps it at `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// How connections are spread (default [`Steering::Hash`]).
    pub fn steering(mut self, steering: Steering) -> Self {
        self.steering = steering;
        self
    }

    /// Creates, binds and listens on every socket, in index order, then attaches the steering
    /// program, if any.
    ///
    /// # Errors
    /// `InvalidInput` for no listener, or a [`Steering::Cpu`] list whose length is not the
    /// number of listeners (or too long for one program: at most 2 047); otherwise the real
    /// errno of the socket calls (`EADDRINUSE`, `EACCES`, `EMFILE`, ...). Sockets already made
    /// are closed.
    pub fn bind(self) -> io::Result<ShardListeners> {
        if self.count == 0 {
            return Err(invalid("a listener group needs at least one listener"));
        }
        let program = match &self.steering {
            Steering::Hash => None,
            Steering::Cpu(cpus) if cpus.len() != self.count => {
                return Err(invalid(format!(
                    "Steering::Cpu lists {} CPUs for {} listeners",
                    cpus.len(),
                    self.count
                )))
            }
            Steering::Cpu(cpus) => Some(cpu_steering_program(cpus)?),
        };
        let mut addr = self.addr;
        let mut sockets = Vec::with_capacity(self.count);
        for _ in 0..self.count {
            let socket = TcpListener::builder(addr)
                .backlog(self.backlog)
                .reuse_port(true)
                .bind_socket()?;
            if sockets.is_empty() {
                // Port 0 resolves once: the others join the first one's port.
                let bound = socket
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("not an IP socket"))?;
                addr.set_port(bound.port());
            }
            sockets.push(socket);
        }
        if let Some(program) = program {
            // The program belongs to the whole group; any member can carry it.
            attach_reuseport_cbpf(&sockets[0], &program)?;
        }
        let sockets = sockets
            .into_iter()
            .map(|s| Some(std::net::TcpListener::from(s)))
            .collect();
        Ok(ShardListeners {
            shared: Arc::new(ListenersShared {
                addr,
                steering: self.steering,
                sockets: Mutex::new(sockets),
            }),
        })
    }
}

/// A group of listening sockets on one address, one per shard, bound with `SO_REUSEPORT`:
/// see the [module docs](self). `Send + Sync`, and cheap to clone (every clone is a handle on
/// the same group), so it goes into a [`Shards`](ringloop_runtime::Shards) factory.
#[derive(Clone)]
pub struct ShardListeners {
    shared: Arc<ListenersShared>,
}

struct ListenersShared {
    /// The address every listener is bound to (port 0 resolved).
    addr: SocketAddr,
    steering: Steering,
    /// By shard index; `None` once taken.
    sockets: Mutex<Vec<Option<std::net::TcpListener>>>,
}

impl fmt::Debug for ShardListeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sockets = lock(&self.shared.sockets);
        f.debug_struct("ShardListeners")
            .field("addr", &self.shared.addr)
            .field("count", &sockets.len())
            .field("untaken", &sockets.iter().filter(|s| s.is_some()).count())
            .field("steering", &self.shared.steering)
            .finish()
    }
}

impl ShardListeners {
    /// Binds `count` listeners on `addr` with the kernel's hash to spread connections
    /// (backlog 1024).
    ///
    /// # Errors
    /// As [`ShardListenersBuilder::bind`].
    pub fn bind(addr: SocketAddr, count: usize) -> io::Result<ShardListeners> {
        Self::builder(addr, count).bind()
    }

    /// Binds `count` listeners on `addr`, spread by `steering` (backlog 1024).
    ///
    /// # Errors
    /// As [`ShardListenersBuilder::bind`].
    pub fn bind_with(
        addr: SocketAddr,
        count: usize,
        steering: Steering,
    ) -> io::Result<ShardListeners> {
        Self::builder(addr, count).steering(steering).bind()
    }

    /// Options for binding `count` listeners on `addr`.
    pub fn builder(addr: SocketAddr, count: usize) -> ShardListenersBuilder {
        ShardListenersBuilder {
            addr,
            count,
            backlog: 1024,
            steering: Steering::Hash,
        }
    }

    /// The address every listener is bound to, with the port the kernel chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// How many listeners the group has.
    pub fn count(&self) -> usize {
        lock(&self.shared.sockets).len()
    }

    /// Listener `index`, for the shard of that index to accept on, on its own runtime. Each
    /// is taken once.
    ///
    /// # Errors
    /// `InvalidInput` if `index` is out of range or the listener was already taken.
    pub fn take(&self, index: usize) -> io::Result<TcpListener> {
        let socket = {
            let mut sockets = lock(&self.shared.sockets);
            let count = sockets.len();
            sockets
                .get_mut(index)
                .ok_or_else(|| invalid(format!("no listener {index} in a group of {count}")))?
                .take()
                .ok_or_else(|| invalid(format!("listener {index} was already taken")))?
        };
        TcpListener::from_std(socket)
    }

    /// Serves `shard`'s listener with `handler`, a task per connection:
    /// [`Server::tcp`]`(self.take(shard.index())?, handler)`.
    ///
    /// # Errors
    /// As [`take`](Self::take), and `InvalidInput` if the set has another number of shards
    /// than the group has listeners.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub fn serve<H, Fut>(&self, shard: &Shard, handler: H) -> io::Result<Server>
    where
        H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        let count = self.count();
        if shard.count() != count {
            return Err(invalid(format!(
                "{} shards for a group of {count} listeners",
                shard.count()
            )));
        }
        Ok(Server::tcp(self.take(shard.index())?, handler))
    }
}

/// One classic BPF instruction.
fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        // The codes are below 0x100 (class | size | mode or op | source).
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The steering program of [`Steering::Cpu`]: `A = cpu; if A == cpus[0] return 0; ...;
/// return 0xffffffff` (an index past the group: the kernel falls back to its hash).
fn cpu_steering_program(cpus: &[usize]) -> io::Result<Vec<libc::sock_filter>> {
    let len = 2 * cpus.len() + 2;
    if len > libc::BPF_MAXINSNS as usize {
        return Err(invalid(format!(
            "Steering::Cpu takes at most {} listeners",
            (libc::BPF_MAXINSNS as usize - 2) / 2
        )));
    }
    let mut program = Vec::with_capacity(len);
    // The ancillary load of the CPU the packet is processed on (`SKF_AD_OFF` is negative: the
    // offset is its two's complement, as in the kernel's own headers).
    let cpu_load = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
    program.push(bpf(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        cpu_load,
        0,
        0,
    ));
    for (index, &cpu) in cpus.iter().enumerate() {
        let cpu = u32::try_from(cpu).map_err(|_| invalid(format!("no CPU {cpu}")))?;
        // Equal: fall through to the return of `index`; else skip it.
        program.push(bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, cpu, 0, 1));
        program.push(bpf(libc::BPF_RET | libc::BPF_K, index as u32, 0, 0));
    }
    program.push(bpf(libc::BPF_RET | libc::BPF_K, u32::MAX, 0, 0));
    Ok(program)
}

/// Attaches a classic BPF program that picks the listener of `socket`'s reuseport group.
fn attach_reuseport_cbpf(socket: &Socket, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        // The kernel only reads through it.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`'s `len` instructions, which live across the call
    // (the kernel copies the program and keeps no pointer into our memory); the option length
    // is `prog`'s size; the descriptor is open while `socket` lives.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program of the instructions `cpu_steering_program` uses, with the
    /// ancillary CPU load answering `cpu`.
    fn run(program: &[libc::sock_filter], cpu: u32) -> u32 {
        let cpu_load = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
        let mut a = 0u32;
        let mut pc = 0;
        loop {
            let ins = program[pc];
            let code = u32::from(ins.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                assert_eq!(ins.k, cpu_load);
                a = cpu;
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += usize::from(if a == ins.k { ins.jt } else { ins.jf });
            } else if code == libc::BPF_RET | libc::BPF_K {
                return ins.k;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    #[test]
    fn the_steering_program_returns_the_index_of_the_cpu_and_falls_back_past_the_group() {
        let program = cpu_steering_program(&[3, 1, 7, 1]).unwrap();
        assert_eq!(program.len(), 10);
        assert_eq!(run(&program, 3), 0);
        assert_eq!(run(&program, 1), 1); // listed twice: the first
        assert_eq!(run(&program, 7), 2);
        assert_eq!(run(&program, 0), u32::MAX);
        assert_eq!(run(&program, 5), u32::MAX);
    }

    #[test]
    fn the_steering_program_fits_the_kernel_limit() {
        let max = (libc::BPF_MAXINSNS as usize - 2) / 2;
        let cpus: Vec<usize> = (0..max).collect();
        assert_eq!(cpu_steering_program(&cpus).unwrap().len(), 4096);
        let too_many: Vec<usize> = (0..=max).collect();
        let e = cpu_steering_program(&too_many).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
