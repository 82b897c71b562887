//! Sharded listening: one TCP port served by every shard of a
//! [`Shards`](ringloop_runtime::Shards) set, each shard with its own [`Server`].
//!
//! * [`ShardListeners`]: a listener per shard, all bound to the same address with
//!   `SO_REUSEPORT`; the kernel spreads the connections over them. The default for a sharded
//!   server: nothing is shared between shards, not even the accept queue. Optionally a
//!   [`Steering`] program hands each connection to the shard on the CPU that received it.
//! * [`ShardAcceptor`]: one listener; one shard (shard 0 unless
//!   [chosen](ShardAcceptorBuilder::acceptor_shard)) accepts and hands each connection to a
//!   shard ([`Distribution::RoundRobin`] or [`Distribution::LeastConnections`]). For servers
//!   whose connections are few, long and uneven, where the kernel's hash can leave one shard
//!   with most of the work. [`UnixShardAcceptor`] does the same for a Unix-domain socket
//!   (which `SO_REUSEPORT` does not spread).
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
//!
//! # One acceptor
//!
//! [`ShardAcceptor`] has one listening socket. Every shard calls
//! [`serve`](ShardAcceptor::serve): on the accepting shard (shard 0 unless
//! [`ShardAcceptorBuilder::acceptor_shard`] says otherwise) that accepts, and hands each
//! connection to a shard (itself included) by the [`Distribution`]; on the others it serves
//! what is handed over. A handed-over connection is a descriptor in the receiving shard's *inbox*, a
//! queue behind a mutex with the waker of that shard's feed task, which turns each descriptor
//! into a [`TcpStream`] on its own runtime and serves it like an accepted one (the shard's
//! [`Server`] tracks it, so the shard's shutdown waits for it). A burst of hand-overs costs the
//! receiving shard one wake-up.
//!
//! An inbox holds at most [`inbox_bound`](ShardAcceptorBuilder::inbox_bound) connections
//! ([`DEFAULT_INBOX_BOUND`]). A shard whose loop is stalled (a long computation, a blocking
//! call) does not drain its inbox; once it is full the acceptor passes that shard over, as it
//! does a shard that stopped, so round robin cannot pile connections on a shard that answers
//! none of them. (Least connections avoids it anyway: what waits in an inbox counts.)
//!
//! # No descriptor is lost
//!
//! A handed-over descriptor always has exactly one owner: the acceptor's accept task, an
//! inbox, or the receiving shard's server. An inbox is open while its shard's server takes
//! connections; closing it (the server closes, or its feed task ends in any way: shutdown,
//! cancellation, abort, the runtime dropped) and pushing into it happen under the same lock,
//! so a push either lands in an open inbox, whose owner will serve or close what it holds,
//! or is refused and the descriptor comes back to the acceptor, which gives it to another
//! shard, and serves it itself when every other shard has stopped taking connections. An
//! inbox that closes serves what it holds when its server is closing, and closes it when its
//! task is dropped. So every connection the acceptor accepts is served by one shard, or
//! closed, never leaked, even when the receiving shard stops in the middle of a hand-over.
//! The per-shard connection counts of [`Distribution::LeastConnections`] travel with the
//! descriptor and go down when its handler ends (or it is closed unserved).

use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use ringloop_runtime::{note_awaiting, AwaitName, Shard};
use socket2::Socket;

use crate::server::{Route, Server, ShutdownSignal};
use crate::tcp::{TcpListener, TcpStream};
use crate::unix::{UnixListener, UnixStream};

/// What a shard's feed task waits on in task dumps: connections handed over by the acceptor.
static HANDOFF: AwaitName = AwaitName::new("shard handoff");

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

// ---------------------------------------------------------------------------------------------
// One acceptor
// ---------------------------------------------------------------------------------------------

/// How a [`ShardAcceptor`] picks the shard for each connection. The accepting shard is a
/// candidate like the others; shards that do not take connections (not serving yet, or
/// closed) are skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distribution {
    /// Each shard in turn.
    #[default]
    RoundRobin,
    /// The shard with the fewest open connections from this acceptor (handed over and not
    /// yet ended); among equals, the next in turn.
    LeastConnections,
}

/// How many connections an inbox holds for its shard by default before the acceptor gives
/// new ones to other shards (see [`ShardAcceptorBuilder::inbox_bound`]).
pub const DEFAULT_INBOX_BOUND: usize = 1024;

/// Options of a [`ShardAcceptor`] or [`UnixShardAcceptor`], then the socket to accept on.
///
/// ```
/// use ringloop_net::{Distribution, ShardAcceptor};
///
/// let acceptor = ShardAcceptor::builder(4)
///     .distribution(Distribution::LeastConnections)
///     .acceptor_shard(3)
///     .inbox_bound(64)
///     .bind("127.0.0.1:0".parse().unwrap())?;
/// assert_eq!(acceptor.acceptor_shard(), 3);
/// # Ok::<_, std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until it binds"]
pub struct ShardAcceptorBuilder {
    count: usize,
    distribution: Distribution,
    acceptor: usize,
    inbox_bound: usize,
}

impl ShardAcceptorBuilder {
    /// How it picks a shard for each connection (default: [`Distribution::RoundRobin`]).
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// The shard that accepts (default: 0). Its loop does the accepting and the hand-overs,
    /// besides serving its own share: pick the shard that has the least else to do.
    pub fn acceptor_shard(mut self, index: usize) -> Self {
        self.acceptor = index;
        self
    }

    /// How many handed-over connections may wait in one shard's inbox (default
    /// [`DEFAULT_INBOX_BOUND`], at least 1). A shard whose loop is stalled (a long
    /// computation, a blocking call) does not drain its inbox; once it holds this many, the
    /// acceptor passes that shard over and gives new connections to the others (to itself
    /// when every other inbox is full or closed), so a stalled shard cannot collect
    /// connections without bound and leave them unanswered.
    pub fn inbox_bound(mut self, bound: usize) -> Self {
        self.inbox_bound = bound.max(1);
        self
    }

    fn check(&self) -> io::Result<()> {
        if self.count == 0 {
            return Err(invalid("an acceptor needs at least one shard"));
        }
        if self.acceptor >= self.count {
            return Err(invalid(format!(
                "acceptor shard {} of {} shards",
                self.acceptor, self.count
            )));
        }
        Ok(())
    }

    fn shared(&self, listener: StdListener) -> Arc<AcceptorShared> {
        let slots = (0..self.count)
            .map(|_| Slot {
                inbox: Arc::new(Inbox::default()),
                live: Arc::new(AtomicUsize::new(0)),
                total: AtomicU64::new(0),
            })
            .collect();
        Arc::new(AcceptorShared {
            distribution: self.distribution,
            acceptor: self.acceptor,
            inbox_bound: self.inbox_bound,
            listener: Mutex::new(Some(listener)),
            slots,
            cursor: AtomicUsize::new(self.acceptor),
            socket_file: None,
        })
    }

    /// Binds `addr` (backlog 1024, `SO_REUSEADDR`).
    ///
    /// # Errors
    /// `InvalidInput` for no shard or an acceptor shard out of range; the real errno of the
    /// bind (`EADDRINUSE`, `EACCES`, ...).
    pub fn bind(self, addr: SocketAddr) -> io::Result<ShardAcceptor> {
        self.check()?;
        let socket = TcpListener::builder(addr).bind_socket()?;
        self.from_std(socket.into())
    }

    /// Accepts on `listener` (a listening socket made elsewhere; made non-blocking here).
    ///
    /// # Errors
    /// As [`bind`](Self::bind); if the socket cannot be made non-blocking or has no IP
    /// address, the real errno.
    pub fn from_std(self, listener: std::net::TcpListener) -> io::Result<ShardAcceptor> {
        self.check()?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(ShardAcceptor {
            shared: self.shared(StdListener::Tcp(listener)),
            addr,
        })
    }

    /// Binds a Unix-domain socket at `path` (the file must not exist). The file is removed
    /// when the last handle on the acceptor goes, if it is still the one this call made.
    ///
    /// # Errors
    /// As [`bind`](Self::bind) (`EADDRINUSE` if the file exists).
    pub fn bind_unix(self, path: impl AsRef<Path>) -> io::Result<UnixShardAcceptor> {
        self.check()?;
        let path = path.as_ref();
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let file = std::fs::metadata(path).ok().map(|m| SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        });
        let mut acceptor = self.from_std_unix(listener)?;
        Arc::get_mut(&mut acceptor.shared)
            .expect("a new acceptor has one handle")
            .socket_file = file;
        Ok(acceptor)
    }

    /// Accepts on a Unix-domain `listener` made elsewhere (made non-blocking here; its
    /// socket file, if any, is left in place).
    ///
    /// # Errors
    /// As [`bind`](Self::bind); if the socket cannot be made non-blocking, the real errno.
    pub fn from_std_unix(
        self,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<UnixShardAcceptor> {
        self.check()?;
        listener.set_nonblocking(true)?;
        let path = listener.local_addr()?.as_pathname().map(Path::to_path_buf);
        Ok(UnixShardAcceptor {
            shared: self.shared(StdListener::Unix(listener)),
            path,
        })
    }
}

/// One listening socket whose connections one shard (shard 0 unless
/// [chosen](ShardAcceptorBuilder::acceptor_shard)) accepts and hands to the shards: see
/// [one acceptor](self#one-acceptor). `Send + Sync`, and cheap to clone (every clone is a
/// handle on the same group). [`UnixShardAcceptor`] is the same for a Unix-domain socket.
///
/// ```
/// use ringloop_net::{Distribution, ShardAcceptor, ShutdownSignal, TcpStream};
/// use ringloop_runtime::{Placement, Shards};
/// use std::io::Read;
/// use std::time::Duration;
///
/// let acceptor = ShardAcceptor::bind("127.0.0.1:0".parse().unwrap(), 2, Distribution::LeastConnections)?;
/// let addr = acceptor.local_addr();
/// let shards = Shards::builder()
///     .count(2)
///     .placement(Placement::Unpinned)
///     .start({
///         let acceptor = acceptor.clone();
///         move |shard| {
///             let acceptor = acceptor.clone();
///             async move {
///                 let index = shard.index();
///                 let server = acceptor.serve(&shard, move |stream: TcpStream, _: ShutdownSignal| async move {
///                     let _ = stream.write_all(vec![index as u8]).await;
///                 })?;
///                 let _stopped = server.wait_closed().await;
///                 Ok::<_, std::io::Error>(server.shutdown(Duration::from_secs(5)).await?)
///             }
///         }
///     })?;
///
/// let mut served_by = Vec::new();
/// std::net::TcpStream::connect(addr)?.read_to_end(&mut served_by)?;
/// assert_eq!(served_by.len(), 1); // one shard served it
///
/// shards.stop();
/// shards.join().unwrap();
/// assert_eq!(acceptor.assigned_total().iter().sum::<u64>(), 1);
/// # Ok::<_, std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ShardAcceptor {
    shared: Arc<AcceptorShared>,
    addr: SocketAddr,
}

/// A [`ShardAcceptor`] on a Unix-domain socket: one shard accepts, and hands each connection
/// to a shard, whose handler gets a [`UnixStream`]. Made by
/// [`ShardAcceptorBuilder::bind_unix`] or [`from_std_unix`](ShardAcceptorBuilder::from_std_unix).
#[derive(Clone)]
pub struct UnixShardAcceptor {
    shared: Arc<AcceptorShared>,
    path: Option<PathBuf>,
}

/// The listening socket, until the accepting shard serves.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// The socket file [`ShardAcceptorBuilder::bind_unix`] made, removed with the acceptor if it
/// is still that file.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

struct AcceptorShared {
    distribution: Distribution,
    /// The shard that accepts.
    acceptor: usize,
    /// How many connections an inbox may hold.
    inbox_bound: usize,
    /// Until the accepting shard serves.
    listener: Mutex<Option<StdListener>>,
    /// By shard index.
    slots: Box<[Slot]>,
    /// Where the next pick starts looking (round robin's turn, least connections' tie-break).
    /// Only the accepting shard moves it.
    cursor: AtomicUsize,
    socket_file: Option<SocketFile>,
}

impl Drop for AcceptorShared {
    fn drop(&mut self) {
        if let Some(f) = &self.socket_file {
            if std::fs::symlink_metadata(&f.path)
                .is_ok_and(|m| m.dev() == f.dev && m.ino() == f.ino)
            {
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }
}

/// What the acceptor knows of one shard.
struct Slot {
    /// Where connections for this shard wait for it (unused for the accepting shard).
    inbox: Arc<Inbox>,
    /// Connections assigned to this shard whose handler has not ended.
    live: Arc<AtomicUsize>,
    /// Connections ever assigned to this shard.
    total: AtomicU64,
}

impl fmt::Debug for ShardAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardAcceptor")
            .field("addr", &self.addr)
            .field("distribution", &self.shared.distribution)
            .field("acceptor_shard", &self.shared.acceptor)
            .field("connections", &self.connections())
            .field("assigned_total", &self.assigned_total())
            .finish()
    }
}

impl fmt::Debug for UnixShardAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixShardAcceptor")
            .field("path", &self.path)
            .field("distribution", &self.shared.distribution)
            .field("acceptor_shard", &self.shared.acceptor)
            .field("connections", &self.connections())
            .field("assigned_total", &self.assigned_total())
            .finish()
    }
}

impl ShardAcceptor {
    /// Options first: the accepting shard, the inbox bound; then `bind`, `from_std` or, for
    /// a Unix-domain socket, `bind_unix`.
    pub fn builder(count: usize) -> ShardAcceptorBuilder {
        ShardAcceptorBuilder {
            count,
            distribution: Distribution::default(),
            acceptor: 0,
            inbox_bound: DEFAULT_INBOX_BOUND,
        }
    }

    /// Binds `addr` (backlog 1024, `SO_REUSEADDR`) for `count` shards, shard 0 accepting.
    ///
    /// # Errors
    /// `InvalidInput` for no shard; the real errno of the bind (`EADDRINUSE`, `EACCES`, ...).
    pub fn bind(
        addr: SocketAddr,
        count: usize,
        distribution: Distribution,
    ) -> io::Result<ShardAcceptor> {
        Self::builder(count).distribution(distribution).bind(addr)
    }

    /// Accepts on `listener` (a listening socket made elsewhere; made non-blocking here) for
    /// `count` shards, shard 0 accepting.
    ///
    /// # Errors
    /// `InvalidInput` for no shard; if the socket cannot be made non-blocking or has no IP
    /// address, the real errno.
    pub fn from_std(
        listener: std::net::TcpListener,
        count: usize,
        distribution: Distribution,
    ) -> io::Result<ShardAcceptor> {
        Self::builder(count)
            .distribution(distribution)
            .from_std(listener)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many shards it hands connections to.
    pub fn count(&self) -> usize {
        self.shared.slots.len()
    }

    /// How it picks a shard.
    pub fn distribution(&self) -> Distribution {
        self.shared.distribution
    }

    /// The shard that accepts.
    pub fn acceptor_shard(&self) -> usize {
        self.shared.acceptor
    }

    /// Serves this shard's share with `handler`, a task per connection, and on the accepting
    /// shard accepts for every shard. Call it on every shard: a shard takes connections from
    /// when it serves until its server closes. The returned [`Server`] is this shard's: its
    /// shutdown waits for the connections handed to it, and its `accepted_total` counts them
    /// (on the accepting shard, those it serves itself).
    ///
    /// Closing the accepting shard's server stops accepting for all; the others serve on until
    /// their own servers close. A connection accepted while no other shard takes connections
    /// (or every other inbox is full) is served on the accepting shard.
    ///
    /// # Errors
    /// `InvalidInput` if the set has another number of shards than the acceptor, or this
    /// shard already serves.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub fn serve<H, Fut>(&self, shard: &Shard, handler: H) -> io::Result<Server>
    where
        H: Fn(TcpStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        match self.shared.join(shard)? {
            Joined::Acceptor(StdListener::Tcp(l), route) => Ok(Server::tcp_sharded(
                handler,
                Some((TcpListener::from_std(l)?, route)),
                None,
            )),
            Joined::Acceptor(StdListener::Unix(_), _) => unreachable!("a TCP acceptor"),
            Joined::Inbox(inbox) => Ok(Server::tcp_sharded(handler, None, Some(inbox))),
        }
    }

    /// Open connections per shard, by index: assigned to it and not yet ended (those waiting
    /// in a shard's inbox count).
    pub fn connections(&self) -> Vec<usize> {
        self.shared.connections()
    }

    /// Connections ever assigned to each shard, by index.
    pub fn assigned_total(&self) -> Vec<u64> {
        self.shared.assigned_total()
    }
}

impl UnixShardAcceptor {
    /// Binds a Unix-domain socket at `path` for `count` shards, shard 0 accepting (see
    /// [`ShardAcceptorBuilder::bind_unix`] for the options).
    ///
    /// # Errors
    /// `InvalidInput` for no shard; the real errno of the bind (`EADDRINUSE` if the file
    /// exists).
    pub fn bind(
        path: impl AsRef<Path>,
        count: usize,
        distribution: Distribution,
    ) -> io::Result<UnixShardAcceptor> {
        ShardAcceptor::builder(count)
            .distribution(distribution)
            .bind_unix(path)
    }

    /// The path it listens on (`None` for an unnamed or abstract socket).
    pub fn local_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many shards it hands connections to.
    pub fn count(&self) -> usize {
        self.shared.slots.len()
    }

    /// How it picks a shard.
    pub fn distribution(&self) -> Distribution {
        self.shared.distribution
    }

    /// The shard that accepts.
    pub fn acceptor_shard(&self) -> usize {
        self.shared.acceptor
    }

    /// As [`ShardAcceptor::serve`], with [`UnixStream`]s.
    ///
    /// # Errors
    /// As [`ShardAcceptor::serve`].
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    pub fn serve<H, Fut>(&self, shard: &Shard, handler: H) -> io::Result<Server>
    where
        H: Fn(UnixStream, ShutdownSignal) -> Fut + 'static,
        Fut: Future + 'static,
    {
        match self.shared.join(shard)? {
            Joined::Acceptor(StdListener::Unix(l), route) => Ok(Server::unix_sharded(
                handler,
                Some((UnixListener::from_std(l)?, route)),
                None,
            )),
            Joined::Acceptor(StdListener::Tcp(_), _) => unreachable!("a Unix acceptor"),
            Joined::Inbox(inbox) => Ok(Server::unix_sharded(handler, None, Some(inbox))),
        }
    }

    /// As [`ShardAcceptor::connections`].
    pub fn connections(&self) -> Vec<usize> {
        self.shared.connections()
    }

    /// As [`ShardAcceptor::assigned_total`].
    pub fn assigned_total(&self) -> Vec<u64> {
        self.shared.assigned_total()
    }
}

/// What a shard gets when it starts serving an acceptor.
enum Joined {
    /// The accepting shard: the listener, and where to send what it accepts.
    Acceptor(StdListener, Box<Route>),
    /// Another shard: its inbox, opened.
    Inbox(Arc<Inbox>),
}

impl AcceptorShared {
    /// Starts `shard`'s part.
    fn join(self: &Arc<Self>, shard: &Shard) -> io::Result<Joined> {
        let count = self.slots.len();
        if shard.count() != count {
            return Err(invalid(format!(
                "{} shards for an acceptor of {count}",
                shard.count()
            )));
        }
        let index = shard.index();
        if index == self.acceptor {
            let listener = lock(&self.listener)
                .take()
                .ok_or_else(|| invalid(format!("shard {index} already serves this acceptor")))?;
            let shared = self.clone();
            Ok(Joined::Acceptor(
                listener,
                Box::new(move |fd| shared.route(fd)),
            ))
        } else {
            let inbox = &self.slots[index].inbox;
            if !inbox.open() {
                return Err(invalid(format!(
                    "shard {index} already serves this acceptor"
                )));
            }
            Ok(Joined::Inbox(inbox.clone()))
        }
    }

    fn connections(&self) -> Vec<usize> {
        self.slots
            .iter()
            .map(|s| s.live.load(Ordering::Acquire))
            .collect()
    }

    fn assigned_total(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.total.load(Ordering::Acquire))
            .collect()
    }

    /// Gives an accepted connection to a shard: into another shard's inbox (`None`), or back
    /// to the accepting shard to serve (with its place in that shard's count).
    fn route(&self, mut fd: OwnedFd) -> Option<(OwnedFd, Assigned)> {
        // Each refusal means an inbox closed or filled, and such an inbox is not picked again
        // while it stays so, so this ends within one round; the bound is for an inbox that
        // reopens or drains meanwhile.
        for _ in 0..self.slots.len() {
            let index = self.pick();
            let slot = &self.slots[index];
            // Counted before the push: once pushed, the connection may be served (and its
            // client answered) before this thread runs again.
            let assigned = Assigned::new(&slot.live);
            slot.total.fetch_add(1, Ordering::AcqRel);
            self.cursor.store(index + 1, Ordering::Relaxed);
            if index == self.acceptor {
                return Some((fd, assigned));
            }
            match slot.inbox.push(fd, assigned, self.inbox_bound) {
                Ok(()) => return None,
                // That shard stopped taking connections just now, or its inbox is full:
                // another one.
                Err((back, _unassigned)) => {
                    slot.total.fetch_sub(1, Ordering::AcqRel);
                    fd = back;
                }
            }
        }
        let slot = &self.slots[self.acceptor];
        slot.total.fetch_add(1, Ordering::AcqRel);
        Some((fd, Assigned::new(&slot.live)))
    }

    /// The shard for the next connection.
    fn pick(&self) -> usize {
        let n = self.slots.len();
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let mut candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| i == self.acceptor || self.slots[i].inbox.takes(self.inbox_bound));
        match self.distribution {
            Distribution::RoundRobin => candidates.next(),
            // The first of the least loaded, counting from the turn.
            Distribution::LeastConnections => {
                candidates.min_by_key(|&i| self.slots[i].live.load(Ordering::Acquire))
            }
        }
        .unwrap_or(self.acceptor)
    }
}

/// A connection's place in its shard's count of open connections ([`ShardAcceptor`]):
/// counted while this lives. It travels with the descriptor and is kept by the server with
/// the connection until the handler ends.
#[derive(Debug)]
pub(crate) struct Assigned {
    live: Arc<AtomicUsize>,
}

impl Assigned {
    fn new(live: &Arc<AtomicUsize>) -> Assigned {
        live.fetch_add(1, Ordering::AcqRel);
        Assigned { live: live.clone() }
    }
}

impl Drop for Assigned {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the accepting shard leaves connections for another shard: see
/// [no descriptor is lost](self#no-descriptor-is-lost).
#[derive(Default)]
pub(crate) struct Inbox {
    /// Mirrors `state.open`, for the acceptor's picks without the lock (a pick that reads it
    /// stale is corrected by `push`, which reads the real one).
    open: AtomicBool,
    /// Mirrors `state.queue.len()`, likewise.
    queued: AtomicUsize,
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    /// A server takes what is pushed.
    open: bool,
    queue: VecDeque<(OwnedFd, Assigned)>,
    /// The feed task, while it waits for the queue to fill.
    waker: Option<Waker>,
}

impl Inbox {
    /// Opens it for a server; false if it is open already.
    fn open(&self) -> bool {
        let mut st = lock(&self.state);
        if st.open {
            return false;
        }
        st.open = true;
        self.open.store(true, Ordering::Release);
        true
    }

    /// Whether it takes connections, by the mirrors: open, and fewer than `bound` waiting.
    fn takes(&self, bound: usize) -> bool {
        self.open.load(Ordering::Acquire) && self.queued.load(Ordering::Acquire) < bound
    }

    /// Leaves a connection for the shard and wakes its feed task; gives it back if the inbox
    /// is closed or holds `bound` connections already.
    fn push(
        &self,
        fd: OwnedFd,
        assigned: Assigned,
        bound: usize,
    ) -> Result<(), (OwnedFd, Assigned)> {
        let waker = {
            let mut st = lock(&self.state);
            if !st.open || st.queue.len() >= bound {
                return Err((fd, assigned));
            }
            st.queue.push_back((fd, assigned));
            self.queued.store(st.queue.len(), Ordering::Release);
            st.waker.take()
        };
        // Outside the lock: a ringloop waker on another thread goes through that runtime's
        // injector, and one wake covers everything queued until the feed task runs.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Everything queued, once there is something.
    pub(crate) fn recv(&self) -> impl Future<Output = VecDeque<(OwnedFd, Assigned)>> + '_ {
        poll_fn(|cx| {
            let mut st = lock(&self.state);
            if !st.queue.is_empty() {
                self.queued.store(0, Ordering::Release);
                return Poll::Ready(std::mem::take(&mut st.queue));
            }
            match &st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.waker = Some(cx.waker().clone()),
            }
            note_awaiting(&HANDOFF, None);
            Poll::Pending
        })
    }

    /// Refuses every later push, and gives back what is queued (to serve, or to drop, which
    /// closes the descriptors).
    pub(crate) fn close(&self) -> VecDeque<(OwnedFd, Assigned)> {
        let (queue, waker) = {
            let mut st = lock(&self.state);
            st.open = false;
            self.open.store(false, Ordering::Release);
            self.queued.store(0, Ordering::Release);
            (std::mem::take(&mut st.queue), st.waker.take())
        };
        drop(waker);
        queue
    }
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

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn an_inbox_refuses_pushes_once_closed_and_gives_back_what_it_held() {
        let live = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::default();
        // Not open yet: refused, and the count goes back down with the refused one.
        let (_fd, a) = inbox.push(fd(), Assigned::new(&live), 8).unwrap_err();
        drop(a);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert!(inbox.open());
        assert!(!inbox.open(), "opened twice");
        inbox.push(fd(), Assigned::new(&live), 8).unwrap();
        inbox.push(fd(), Assigned::new(&live), 8).unwrap();
        assert_eq!(live.load(Ordering::SeqCst), 2);
        let held = inbox.close();
        assert_eq!(held.len(), 2);
        assert!(inbox.push(fd(), Assigned::new(&live), 8).is_err());
        drop(held);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert!(!inbox.takes(8));
    }

    #[test]
    fn a_full_inbox_refuses_pushes_until_its_shard_takes_them() {
        let live = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::default();
        assert!(inbox.open());
        for _ in 0..3 {
            inbox.push(fd(), Assigned::new(&live), 3).unwrap();
        }
        assert!(!inbox.takes(3), "full");
        assert!(inbox.takes(4), "a larger bound takes one more");
        let (_fd, a) = inbox.push(fd(), Assigned::new(&live), 3).unwrap_err();
        drop(a);
        assert_eq!(
            live.load(Ordering::SeqCst),
            3,
            "the refused one is not counted"
        );
        let waker = std::task::Waker::noop();
        let mut recv = std::pin::pin!(inbox.recv());
        let Poll::Ready(taken) = recv
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        else {
            panic!("three were waiting");
        };
        assert_eq!(taken.len(), 3);
        assert!(inbox.takes(3), "drained");
        inbox.push(fd(), Assigned::new(&live), 3).unwrap();
    }

    #[test]
    fn an_inbox_is_closed_with_its_runtime_even_if_its_server_never_ran() {
        for backend in [
            ringloop_runtime::Backend::IoUring,
            ringloop_runtime::Backend::Epoll,
        ] {
            let Ok(rt) = ringloop_runtime::Runtime::builder()
                .backend(backend)
                .build()
            else {
                continue; // no io_uring here: the epoll half still runs
            };
            let live = Arc::new(AtomicUsize::new(0));
            let inbox = Arc::new(Inbox::default());
            assert!(inbox.open());
            inbox.push(fd(), Assigned::new(&live), 8).unwrap();
            // The feed task is spawned, and the runtime goes before it ever runs.
            rt.run_until_complete(async {
                let noop = |_: TcpStream, _: ShutdownSignal| async {};
                let _server = Server::tcp_sharded(noop, None, Some(inbox.clone()));
            });
            drop(rt);
            assert!(!inbox.takes(8), "{backend}");
            assert_eq!(
                live.load(Ordering::SeqCst),
                0,
                "{backend}: the descriptor is closed"
            );
            assert!(inbox.push(fd(), Assigned::new(&live), 8).is_err());
        }
    }
}
