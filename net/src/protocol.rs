//! asyncio's lower layer under its streams: [`Protocol`]s and [`Transport`]s, served without a
//! task per connection.
//!
//! A protocol is a set of callbacks the loop calls as things happen on a connection
//! ([`data_received`](Protocol::data_received), [`eof_received`](Protocol::eof_received),
//! [`connection_lost`](Protocol::connection_lost), ...); the [`Transport`] it is handed in
//! [`connection_made`](Protocol::connection_made) is how it acts on the connection. A write
//! never blocks and never waits: the bytes are queued and the loop sends them, every write
//! queued since the last send going out in one (vectored) send. [`create_server`] and
//! [`create_connection`] are asyncio's `loop.create_server` and `loop.create_connection`.
//!
//! ```
//! use ringloop_net::{create_server, Protocol, PooledBuf, TcpStream, Transport};
//!
//! /// asyncio:
//! /// ```python
//! /// class Echo(asyncio.Protocol):
//! ///     def connection_made(self, transport): self.transport = transport
//! ///     def data_received(self, data): self.transport.write(data)
//! /// ```
//! #[derive(Default)]
//! struct Echo(Option<Transport>);
//!
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, transport: &Transport) {
//!         self.0 = Some(transport.clone());
//!     }
//!     fn data_received(&mut self, data: PooledBuf) {
//!         // The received pool buffer goes back out as it is: no copy.
//!         if let Some(t) = &self.0 {
//!             t.write(data);
//!         }
//!     }
//! }
//!
//! ringloop_runtime::Runtime::new().unwrap().block_on(async {
//!     let server = create_server(Echo::default, "127.0.0.1:0".parse().unwrap())?;
//!     let client = TcpStream::connect(server.local_addr()).await?;
//!     client.write_all(b"hello".as_slice()).await.0?;
//!     let (r, buf) = client.read_exact(vec![0u8; 5]).await;
//!     r?;
//!     assert_eq!(buf, b"hello");
//!     server.close();
//!     Ok::<_, std::io::Error>(())
//! }).unwrap();
//! ```
//!
//! # How it runs without a task per connection
//!
//! Every connection of a runtime is driven by one internal task, the *dispatcher*
//! (`ringloop.protocols`). A connection is a small state object: its pooled receiver (one
//! multishot receive into the buffer pool on io_uring), its write queue, the send in flight,
//! and [`Waker`]s of its own. On io_uring its receive posts the connection's key on the
//! dispatcher's list when data comes (no waker is woken), and its send is started detached:
//! the send's completion gives the buffers back and settles the write buffer by itself. The
//! dispatcher wakes once for the whole list and drives each listed connection: it hands every
//! queued chunk to `data_received` and sends what those callbacks wrote in one send. So a
//! message costs a callback, a key on a list and a send, rather than two task wakes and two
//! task polls, and the task polls of a loop iteration are one, however many connections had
//! something to do. (Anything else that concerns a connection, and everything on epoll, wakes
//! its own wakers, which list it the same way.)
//!
//! # Where this differs from asyncio
//!
//! * [`data_received`](Protocol::data_received) gets the [`PooledBuf`] the data landed in,
//!   not a copy: write it back to echo it without a copy, drop it to give the buffer back to
//!   the pool. A chunk the protocol keeps holds a pool buffer; copy what you keep for long
//!   (`data.to_vec()`).
//! * [`pause_writing`](Protocol::pause_writing) and [`resume_writing`](Protocol::resume_writing)
//!   are never called from inside another callback of the same protocol (Rust's `&mut self`
//!   cannot be lent twice): a write from inside a callback that crosses the high-water mark
//!   gets its `pause_writing` as soon as that callback returns. A write from outside the
//!   protocol's callbacks (another task, another connection's callback) gets it at once, as in
//!   asyncio.
//! * **Writes after [`close`](Transport::close)** are dropped, from the first one (asyncio
//!   still appends them while the buffer flushes, and drops them once the connection is
//!   lost). Writes after [`abort`](Transport::abort) or once the connection is lost are
//!   dropped, as in asyncio. A write after [`write_eof`](Transport::write_eof) panics, where
//!   asyncio raises `RuntimeError`; from inside a callback that panic is a callback panic
//!   (below).
//! * **A panicking callback** is reported to the runtime's exception handler, the connection
//!   is aborted, and [`connection_lost`](Protocol::connection_lost) gets an error saying so
//!   (asyncio logs an exception raised in `data_received` and force-closes the same way).
//!   The other connections and the loop go on.
//! * **Pool share.** A connection takes no more data while its write queue holds its share of
//!   the pool (`1 / `[`POOL_SHARE`](crate::POOL_SHARE) of its buffers, 64 of the default 512,
//!   and at least its receive budget): a protocol that echoes to a peer that does not read,
//!   and ignores `pause_writing`, is back-pressured by TCP instead of emptying the shared pool.
//!   Below that, data keeps coming, as in asyncio.
//! * **The dispatcher is a task.** Cancelling it (a runtime's `block_on` does, when its main
//!   future is done) aborts every protocol connection of the runtime, each getting
//!   `connection_lost` with an error of kind `ConnectionAborted` for which [`is_cancelled`] is
//!   true; a runtime dropped with connections open (after `run_until_complete`) ends them the
//!   same way, the error saying the dispatcher was dropped. A later `create_server` or
//!   `create_connection` starts a new dispatcher. (asyncio calls nothing when its loop closes
//!   with transports open.)
//! * `get_extra_info("sockname")` (and [`Transport::local_addr`]) asks the socket, so it is
//!   `None` once the connection is lost; asyncio keeps it from the start. `"peername"` is
//!   kept, as in asyncio.
//! * [`create_connection`] returns the transport only; the protocol lives inside it (share
//!   state through an `Rc` if the caller needs it).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use io_uring::squeue;
use ringloop_runtime::{
    buffer_pool, call_exception_handler, current_backend, is_cancelled, note_awaiting, spawn_named,
    start_detached, take_cancel_request, AwaitName, Backend, BufPool, Cancelled, CompletionList,
    Detached, DetachedOp, Interest, Op, OpKind, PooledBuf, Task,
};
use slab::Slab;

use crate::buf::{IoBuf, Slice};
use crate::ops;
use crate::pooled::PooledReceiver;
use crate::socket::AsSharedFd;
use crate::tcp::{TcpListener, TcpStream};

/// asyncio's default high-water mark of a transport's write buffer.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// Iovecs in one vectored send (Linux's `UIO_MAXIOV`); more queued buffers go in the next.
const MAX_IOVECS: usize = 1024;

/// The callbacks of a connection (asyncio's `asyncio.Protocol`).
///
/// The loop calls them in this order: `connection_made` once; `data_received` any number of
/// times; `eof_received` at most once, when the peer shuts down its sending side;
/// `connection_lost` exactly once, last. `pause_writing` and `resume_writing` alternate,
/// starting with `pause_writing`, whenever the transport's write buffer crosses its water
/// marks (see [`Transport::set_write_buffer_limits`]).
///
/// Every callback may call any [`Transport`] method, including [`close`](Transport::close) and
/// [`abort`](Transport::abort); their effects that call the protocol back (`connection_lost`,
/// `pause_writing`) come after the running callback has returned. A panic in a callback is
/// caught: see the [module docs](self).
///
/// ```
/// use ringloop_net::{Protocol, PooledBuf, Transport};
/// use std::io;
///
/// /// Counts bytes, answers "bye" to the peer's end of stream, then closes.
/// #[derive(Default)]
/// struct Counter {
///     transport: Option<Transport>,
///     bytes: usize,
/// }
///
/// impl Protocol for Counter {
///     fn connection_made(&mut self, transport: &Transport) {
///         self.transport = Some(transport.clone());
///     }
///     fn data_received(&mut self, data: PooledBuf) {
///         self.bytes += data.len(); // dropping `data` gives the pool buffer back
///     }
///     fn eof_received(&mut self) -> bool {
///         let t = self.transport.as_ref().unwrap();
///         t.write(format!("bye after {} bytes", self.bytes));
///         false // close (after the write is flushed)
///     }
///     fn connection_lost(&mut self, error: Option<io::Error>) {
///         if let Some(e) = error {
///             eprintln!("lost: {e}");
///         }
///     }
/// }
/// ```
pub trait Protocol: 'static {
    /// The connection is up; `transport` is how to act on it (clone it to keep it). Called
    /// once, first.
    fn connection_made(&mut self, transport: &Transport) {
        let _ = transport;
    }

    /// Data arrived, in the pool buffer it was received into: write it back, read it, or drop
    /// it (which gives the buffer back). Not called while reading is paused
    /// ([`Transport::pause_reading`]).
    fn data_received(&mut self, data: PooledBuf);

    /// The peer shut down its sending side (it will send nothing more). Return `false`
    /// (the default) to close the transport (after flushing what is queued), `true` to keep it
    /// open for writing; the protocol then closes it when it is done.
    fn eof_received(&mut self) -> bool {
        false
    }

    /// The connection is closed: `None` after a [`close`](Transport::close) (once flushed),
    /// an [`abort`](Transport::abort), or the peer's end of stream; the error otherwise, with
    /// its real errno (`ECONNRESET`, `EPIPE`, ...). Called exactly once, last; the protocol is
    /// dropped right after it.
    fn connection_lost(&mut self, error: Option<io::Error>) {
        let _ = error;
    }

    /// The write buffer went above the high-water mark: stop writing until
    /// [`resume_writing`](Self::resume_writing). Writes still work (they are queued), so
    /// ignoring this only costs memory.
    fn pause_writing(&mut self) {}

    /// The write buffer drained to the low-water mark after a
    /// [`pause_writing`](Self::pause_writing).
    fn resume_writing(&mut self) {}
}

/// Bytes queued on a transport: what [`Transport::write`] takes. Made from an owned buffer
/// without copying (`Vec<u8>`, `String`, `Box<[u8]>`, [`bytes::Bytes`], a received
/// [`PooledBuf`], [`from_static`](Self::from_static)) or by copying a borrowed slice
/// (`&[u8]`, `&[u8; N]`, `&str`), as asyncio's `write` copies into its buffer.
///
/// ```
/// use ringloop_net::WriteBuf;
///
/// assert_eq!(WriteBuf::from(b"abc").len(), 3); // copied
/// assert_eq!(WriteBuf::from(vec![1, 2]).len(), 2); // moved
/// assert_eq!(WriteBuf::from_static(b"static").len(), 6); // borrowed for ever
/// ```
pub struct WriteBuf(Repr);

enum Repr {
    Pooled(PooledBuf),
    Vec(Vec<u8>),
    Bytes(bytes::Bytes),
    Static(&'static [u8]),
}

impl WriteBuf {
    /// Static bytes, sent without a copy.
    pub fn from_static(bytes: &'static [u8]) -> WriteBuf {
        WriteBuf(Repr::Static(bytes))
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Pooled(b) => b,
            Repr::Vec(v) => v,
            Repr::Bytes(b) => b,
            Repr::Static(s) => s,
        }
    }

    fn is_pooled(&self) -> bool {
        matches!(self.0, Repr::Pooled(_))
    }
}

impl fmt::Debug for WriteBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Repr::Pooled(_) => "pooled",
            Repr::Vec(_) => "vec",
            Repr::Bytes(_) => "bytes",
            Repr::Static(_) => "static",
        };
        f.debug_struct("WriteBuf")
            .field("kind", &kind)
            .field("len", &self.len())
            .finish()
    }
}

// SAFETY: each variant's bytes live in memory that does not move when the `WriteBuf` moves and
// lives as long as it: a pool buffer (kept alive by the `PooledBuf`'s pool), a `Vec`'s or a
// `Bytes`' heap storage, or `'static` memory; all of it initialised.
unsafe impl IoBuf for WriteBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_slice().as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
}

impl From<PooledBuf> for WriteBuf {
    fn from(b: PooledBuf) -> Self {
        WriteBuf(Repr::Pooled(b))
    }
}

impl From<Vec<u8>> for WriteBuf {
    fn from(v: Vec<u8>) -> Self {
        WriteBuf(Repr::Vec(v))
    }
}

impl From<String> for WriteBuf {
    fn from(s: String) -> Self {
        WriteBuf(Repr::Vec(s.into_bytes()))
    }
}

impl From<Box<[u8]>> for WriteBuf {
    fn from(b: Box<[u8]>) -> Self {
        WriteBuf(Repr::Vec(b.into_vec()))
    }
}

impl From<bytes::Bytes> for WriteBuf {
    fn from(b: bytes::Bytes) -> Self {
        WriteBuf(Repr::Bytes(b))
    }
}

impl From<&[u8]> for WriteBuf {
    /// Copies the bytes.
    fn from(s: &[u8]) -> Self {
        WriteBuf(Repr::Vec(s.to_vec()))
    }
}

impl<const N: usize> From<&[u8; N]> for WriteBuf {
    /// Copies the bytes.
    fn from(s: &[u8; N]) -> Self {
        WriteBuf(Repr::Vec(s.to_vec()))
    }
}

impl From<&str> for WriteBuf {
    /// Copies the bytes.
    fn from(s: &str) -> Self {
        WriteBuf(Repr::Vec(s.as_bytes().to_vec()))
    }
}

// ---- the ready list: how a connection's waker reaches the dispatcher --------------------------

/// What woke a connection since the dispatcher last drove it: the bits of its pending byte
/// (see [`Ready`]).
type Woke = u8;
/// Something changed that any step of the drive may have to act on (a write from outside a
/// drive, a close, `resume_reading`): the whole drive.
const WOKE_ANY: Woke = 1;
/// Its receiver (a chunk, the end of the stream, a buffer's turn).
const WOKE_RECV: Woke = 2;
/// Its send in flight completed.
const WOKE_SEND: Woke = 4;

/// The dispatcher's ready list, shared with its connections' wakers.
///
/// A connection's wakers carry no allocation of their own: a waker's data pointer is a *tag*,
/// the address of the connection's pending byte in a [`TagBlock`] that `Ready` owns, and the
/// byte's offset in its block is the connection's slab key. The waker functions find the
/// block's header by masking the tag's address (blocks are aligned to their size), and every
/// waker counts as one reference to `Ready` (its `Arc`). So a waker's clone, wake and drop
/// touch only lines every waker shares (the block header, the `Arc` count, the list) and the
/// connection's byte, where a separate allocation per connection was a cache miss per
/// completion at 1 000 connections.
///
/// A connection has three wakers on one tag, told apart by their vtables: one for its
/// receiver, one for its send, one for everything else. A wake ORs its bit into the pending
/// byte, and lists the key only when the byte was zero: the list holds each connection at
/// most once, and the dispatcher, which swaps the byte back to zero as it takes the key, knows
/// which of the connection's parts to look at. A key is reused by the slab's next connection;
/// a stale wake of the old one then only drives the new one for nothing.
///
/// The list is behind a `Mutex` because a [`Waker`] may be woken from any thread (the runtime
/// wakes these only on their own thread; the lock is then uncontended). The pending bytes are
/// atomics for the same reason.
struct Ready {
    list: Mutex<ReadyInner>,
    /// The tag blocks, block `i` for keys `i * TAGS_PER_BLOCK ..`, each from
    /// `Box::into_raw` and freed only when `Ready` goes, so every waker's tag stays inside a
    /// live block. Only the dispatcher adds to it (and reads it through its own copy of the
    /// pointers, without the lock).
    blocks: Mutex<Vec<BlockPtr>>,
}

struct ReadyInner {
    /// Keys of the connections to drive, each at most once (see [`Ready`]).
    keys: Vec<u32>,
    /// The dispatcher task's waker, woken when the list stops being empty.
    waker: Option<Waker>,
    /// The dispatcher is gone: wakes are dropped.
    closed: bool,
}

/// Bytes of a tag block, and its alignment: masking a tag's address with this finds the block.
const TAG_BLOCK: usize = 4096;
/// Where the pending bytes (the tags) start in a block, after its header.
const TAG_OFFSET: usize = 64;
/// Connections per tag block.
const TAGS_PER_BLOCK: usize = TAG_BLOCK - TAG_OFFSET;

/// A block of wake tags (see [`Ready`]): its header, then one pending byte per connection,
/// whose address is the connection's tag.
#[repr(C, align(4096))]
struct TagBlock {
    /// The `Ready` that owns the block.
    ready: *const Ready,
    /// The key of the block's first tag.
    base: usize,
    _header: [usize; 6],
    /// What woke each connection of the block since the dispatcher last took its key
    /// ([`Woke`] bits); zero while it is not listed.
    pending: [AtomicU8; TAGS_PER_BLOCK],
}

const _: () = assert!(std::mem::size_of::<TagBlock>() == TAG_BLOCK);
const _: () = assert!(std::mem::offset_of!(TagBlock, pending) == TAG_OFFSET);

/// A tag block's address, owned by [`Ready::blocks`].
#[derive(Clone, Copy)]
struct BlockPtr(NonNull<TagBlock>);

// SAFETY: a block is written only through its atomics after its header was written, before
// any waker or copy of the pointer existed; `Ready`, which owns it, is shared by wakers that
// may travel to other threads.
unsafe impl Send for BlockPtr {}
// SAFETY: as above.
unsafe impl Sync for BlockPtr {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned list is still a valid list.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ready {
    fn new() -> Arc<Ready> {
        Arc::new(Ready {
            list: Mutex::new(ReadyInner {
                keys: Vec::new(),
                waker: None,
                closed: false,
            }),
            blocks: Mutex::new(Vec::new()),
        })
    }

    /// The tag block of key `key`, allocated (with those before it) if it is new; `cache` is
    /// the dispatcher's copy of the block pointers, brought up to date.
    fn block_for(self: &Arc<Ready>, key: usize, cache: &mut Vec<BlockPtr>) -> BlockPtr {
        if cache.len() * TAGS_PER_BLOCK <= key {
            let mut blocks = lock(&self.blocks);
            while blocks.len() * TAGS_PER_BLOCK <= key {
                let base = blocks.len() * TAGS_PER_BLOCK;
                let block = Box::new(TagBlock {
                    ready: Arc::as_ptr(self),
                    base,
                    _header: [0; 6],
                    pending: [const { AtomicU8::new(0) }; TAGS_PER_BLOCK],
                });
                blocks.push(BlockPtr(NonNull::from(Box::leak(block))));
            }
            cache.clone_from(&blocks);
        }
        cache[key / TAGS_PER_BLOCK]
    }

    /// The waker of kind `vtable` for the connection with slab key `key`.
    fn waker(
        self: &Arc<Ready>,
        key: usize,
        cache: &mut Vec<BlockPtr>,
        vtable: &'static RawWakerVTable,
    ) -> Waker {
        let block = self.block_for(key, cache).0.as_ptr();
        // The pending byte's address, with the block's provenance, so masking it back gives a
        // pointer to the header.
        let tag = block
            .cast::<u8>()
            .wrapping_add(TAG_OFFSET + key % TAGS_PER_BLOCK)
            .cast::<()>();
        // SAFETY: `tag` lies in a block of `self`, which stays put while `self` lives; the
        // waker made here owns the reference to `self` taken just before (see `tag_vtable`).
        unsafe {
            Arc::increment_strong_count(Arc::as_ptr(self));
            Waker::from_raw(RawWaker::new(tag, vtable))
        }
    }

    /// Marks connection `key` woken by `kind` as a wake would, without listing it: whether
    /// it was not listed (then the caller drives it). `block` is the key's block.
    fn mark_woke(block: BlockPtr, key: usize, kind: Woke) -> bool {
        // SAFETY: as in `take_woke`.
        let block = unsafe { block.0.as_ref() };
        block.pending[key % TAGS_PER_BLOCK].fetch_or(kind, Ordering::AcqRel) == 0
    }

    /// Takes what woke connection `key` (zero if nothing did), so its next wake lists it
    /// again. `block` is the key's block.
    fn take_woke(block: BlockPtr, key: usize) -> Woke {
        // SAFETY: `block` comes from `block_for` of the `Ready` the caller holds, so it is
        // alive; only its atomics are touched.
        let block = unsafe { block.0.as_ref() };
        block.pending[key % TAGS_PER_BLOCK].swap(0, Ordering::AcqRel)
    }

    /// Lists connection `key` for the dispatcher, waking the dispatcher when the list stops
    /// being empty.
    fn list(&self, key: u32) {
        let mut list = lock(&self.list);
        if list.closed {
            return;
        }
        let was_empty = list.keys.is_empty();
        list.keys.push(key);
        let waker = if was_empty { list.waker.clone() } else { None };
        drop(list);
        // Outside the lock: a waker is foreign code.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let blocks = std::mem::take(
            self.blocks
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for BlockPtr(block) in blocks {
            // SAFETY: from `Box::leak` in `block_for`, freed once, here: no waker is left
            // (each held a reference to `self`), and the dispatcher's copy of the pointers
            // went with the dispatcher, which held one too.
            drop(unsafe { Box::from_raw(block.as_ptr()) });
        }
    }
}

/// The block header of a tag.
///
/// # Safety
/// `tag` comes from [`Ready::waker`] and a waker holding it is alive (so its block is).
unsafe fn tag_block<'a>(tag: *const ()) -> &'a TagBlock {
    let header = tag.cast::<u8>().map_addr(|a| a & !(TAG_BLOCK - 1));
    // SAFETY: blocks are `TAG_BLOCK`-aligned and a tag lies within its block's first
    // `TAG_BLOCK` bytes, so this is the block's start, with the block's provenance.
    unsafe { &*header.cast::<TagBlock>() }
}

/// The waker functions of a connection, one vtable per [`Woke`] kind: the data pointer is the
/// tag (see [`Ready`]), and each waker owns one strong reference to the `Ready` its block
/// names (`Arc::into_raw`'s pointer).
static WAKE_ANY_VTABLE: RawWakerVTable = RawWakerVTable::new(
    tag_clone::<WOKE_ANY>,
    tag_wake::<WOKE_ANY>,
    tag_wake_by_ref::<WOKE_ANY>,
    tag_drop,
);
static WAKE_RECV_VTABLE: RawWakerVTable = RawWakerVTable::new(
    tag_clone::<WOKE_RECV>,
    tag_wake::<WOKE_RECV>,
    tag_wake_by_ref::<WOKE_RECV>,
    tag_drop,
);
static WAKE_SEND_VTABLE: RawWakerVTable = RawWakerVTable::new(
    tag_clone::<WOKE_SEND>,
    tag_wake::<WOKE_SEND>,
    tag_wake_by_ref::<WOKE_SEND>,
    tag_drop,
);

fn tag_vtable<const KIND: Woke>() -> &'static RawWakerVTable {
    match KIND {
        WOKE_RECV => &WAKE_RECV_VTABLE,
        WOKE_SEND => &WAKE_SEND_VTABLE,
        _ => &WAKE_ANY_VTABLE,
    }
}

unsafe fn tag_clone<const KIND: Woke>(p: *const ()) -> RawWaker {
    // SAFETY: the waker being cloned keeps the block alive; the clone takes a reference of its
    // own to `Ready`.
    unsafe { Arc::increment_strong_count(tag_block(p).ready) };
    RawWaker::new(p, tag_vtable::<KIND>())
}

unsafe fn tag_wake<const KIND: Woke>(p: *const ()) {
    // SAFETY: a by-value wake is a wake by reference, then the drop of the waker.
    unsafe {
        tag_wake_by_ref::<KIND>(p);
        tag_drop(p);
    }
}

unsafe fn tag_wake_by_ref<const KIND: Woke>(p: *const ()) {
    // SAFETY: the waker keeps `Ready` (and so the block) alive during the call; the tag is
    // the address of the connection's pending byte, an atomic inside the block.
    unsafe {
        let pending = &*p.cast::<AtomicU8>();
        if pending.fetch_or(KIND, Ordering::AcqRel) != 0 {
            return; // listed already; the dispatcher sees this bit when it takes the key
        }
        let block = tag_block(p);
        let key = block.base + (p.addr() - (block as *const TagBlock).addr() - TAG_OFFSET);
        (*block.ready).list(key as u32);
    }
}

unsafe fn tag_drop(p: *const ()) {
    // SAFETY: the waker owned one reference to `Ready`. The pointer is read first: once the
    // count is released, `Ready` (and the block with it) may be gone.
    unsafe {
        let ready = tag_block(p).ready;
        Arc::decrement_strong_count(ready);
    }
}

// ---- the dispatcher ----------------------------------------------------------------------------

/// The runtime's protocol connections and the task that drives them.
struct Dispatcher {
    conns: RefCell<Slab<Rc<Conn>>>,
    ready: Arc<Ready>,
    /// Pool buffers a connection's write queue may hold before it takes no more data (see the
    /// module docs' "Pool share"): the pool's share, at least a receive budget (so a small
    /// pool still lets a connection echo).
    pool_share: usize,
    /// The runtime this dispatcher serves (its pool; held weakly, so the allocation, and so the
    /// address compared, cannot be reused while this lives).
    pool: Weak<BufPool>,
    /// False once the dispatcher task has ended or been dropped.
    alive: Cell<bool>,
    /// The batch being driven (kept to reuse its allocation).
    batch: RefCell<Vec<u32>>,
    /// The dispatcher's copy of `ready`'s tag block pointers (read without its lock).
    blocks: RefCell<Vec<BlockPtr>>,
    /// The runtime runs io_uring: sends are started detached (see [`Conn::flush`]), and
    /// receives post to `received`.
    uring: bool,
    /// Where the connections' receives post their keys when they have something (io_uring):
    /// read with the ready list, without a wake per connection.
    received: CompletionList,
    /// The keys taken from `received` (kept to reuse its allocation).
    received_keys: RefCell<Vec<u32>>,
    /// A vectored send's buffer vector, kept to reuse its allocation (one for all the
    /// connections: a connection's send gives it back when it completes).
    spare: Cell<Vec<WriteBuf>>,
    /// A cancellation of the dispatcher task that an op of a connection took (the runtime
    /// hands a task's cancel request to whichever of its futures checks first).
    cancelled: RefCell<Option<Cancelled>>,
}

thread_local! {
    /// This thread's dispatcher, for the runtime that created it.
    static CURRENT: RefCell<Option<Rc<Dispatcher>>> = const { RefCell::new(None) };
}

impl Dispatcher {
    /// The running runtime's dispatcher, started if it has none (or its task has ended).
    ///
    /// The runtime is recognised by its buffer pool's address: the dispatcher holds the pool
    /// weakly, which keeps the allocation (so no later pool can have the same address) but
    /// not the pool.
    ///
    /// # Panics
    /// Outside a running ringloop runtime.
    fn current() -> Rc<Dispatcher> {
        let pool = buffer_pool();
        let found = CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|d| d.alive.get() && std::ptr::eq(d.pool.as_ptr(), Rc::as_ptr(&pool)))
                .cloned()
        });
        if let Some(d) = found {
            return d;
        }
        let d = Rc::new(Dispatcher {
            conns: RefCell::new(Slab::new()),
            ready: Ready::new(),
            pool_share: (pool.count() / crate::POOL_SHARE)
                .max(crate::recv_budget(crate::DEFAULT_RECV_CAP, pool.count())),
            pool: Rc::downgrade(&pool),
            alive: Cell::new(true),
            batch: RefCell::new(Vec::new()),
            blocks: RefCell::new(Vec::new()),
            uring: current_backend() == Backend::IoUring,
            received: CompletionList::new(),
            received_keys: RefCell::new(Vec::new()),
            spare: Cell::new(Vec::new()),
            cancelled: RefCell::new(None),
        });
        // Detached: it ends when cancelled (a runtime's shutdown does it).
        drop(spawn_named(
            "ringloop.protocols",
            DispatchTask { d: Some(d.clone()) },
        ));
        let old = CURRENT.with(|c| c.borrow_mut().replace(d.clone()));
        drop(old); // outside the borrow
        d
    }

    /// Adds a connection: calls `connection_made` and schedules its first drive (which arms
    /// its receive).
    fn register(
        self: &Rc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        protocol: Box<dyn Protocol>,
    ) -> Transport {
        // asyncio sets TCP_NODELAY on every TCP transport.
        let _ = stream.set_nodelay(true);
        let rx = stream.pooled_receiver();
        let zero_copy = ops::zero_copy_for(stream.as_shared_fd());
        let conn = {
            let mut conns = self.conns.borrow_mut();
            let entry = conns.vacant_entry();
            let conn = Rc::new(Conn {
                waker: self.ready.waker(
                    entry.key(),
                    &mut self.blocks.borrow_mut(),
                    &WAKE_ANY_VTABLE,
                ),
                key: entry.key(),
                starved: Cell::new(false),
                zero_copy,
                protocol: Cell::new(Some(protocol)),
                driving: Cell::new(false),
                dirty: Cell::new(false),
                peer,
                st: RefCell::new(State {
                    stream: Some(stream),
                    rx: Some(rx),
                    queue: WriteQueue::default(),
                    skip: 0,
                    buffered: 0,
                    pooled: 0,
                    flight: Flight::Idle,
                    flight_skip: 0,
                    high: DEFAULT_HIGH_WATER,
                    low: DEFAULT_HIGH_WATER / 4,
                    reading: true,
                    closing: false,
                    eof_requested: false,
                    eof_done: false,
                    writing_paused: false,
                    lost: Lost::No,
                }),
            });
            entry.insert(conn.clone());
            conn
        };
        let transport = Transport { conn };
        transport.conn.invoke(
            |p| p.connection_made(&transport),
            "the protocol's connection_made",
        );
        transport.conn.touch();
        transport
    }

    /// Removes a connection whose `connection_lost` was delivered.
    fn remove(&self, conn: &Conn) {
        let removed = {
            let mut conns = self.conns.borrow_mut();
            match conns.get(conn.key) {
                Some(c) if std::ptr::eq(&**c, conn) => Some(conns.remove(conn.key)),
                _ => None,
            }
        };
        drop(removed); // outside the borrow: the last reference may go here
    }

    /// Notes a cancellation an op took from the dispatcher task (see `cancelled`).
    fn note_cancel(&self, e: &io::Error) {
        let c = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Cancelled>())
            .cloned();
        if let Some(c) = c {
            self.cancelled.borrow_mut().get_or_insert(c);
        }
    }

    /// Stops taking wakes and takes every connection out (the dispatcher is ending).
    fn close(&self) -> Vec<Rc<Conn>> {
        self.alive.set(false);
        let old = {
            let mut list = lock(&self.ready.list);
            list.closed = true;
            list.keys.clear();
            list.waker.take()
        };
        drop(old);
        self.received.clear();
        let conns: Vec<Rc<Conn>> = self.conns.borrow_mut().drain().collect();
        conns
    }

    /// The dispatcher task ends (cancelled, or dropped): abort every connection, each getting
    /// `connection_lost` with an error of kind `ConnectionAborted` whose source is the
    /// cancellation (`why`) or says the dispatcher was dropped.
    fn shut_down(&self, why: Option<Cancelled>) {
        for conn in self.close() {
            let e = match &why {
                Some(c) => io::Error::new(io::ErrorKind::ConnectionAborted, c.clone()),
                None => io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the runtime's protocol dispatcher was dropped",
                ),
            };
            conn.fail(e);
            conn.deliver_lost(None);
        }
    }
}

/// The dispatcher's task: drives the connections on the ready list, one batch per poll.
struct DispatchTask {
    d: Option<Rc<Dispatcher>>,
}

impl Future for DispatchTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(d) = self.d.clone() else {
            return Poll::Ready(());
        };
        if let Some(c) = take_cancel_request() {
            d.shut_down(Some(c));
            self.d = None;
            return Poll::Ready(());
        }
        let mut batch = std::mem::take(&mut *d.batch.borrow_mut());
        let old = {
            let mut list = lock(&d.ready.list);
            std::mem::swap(&mut list.keys, &mut batch);
            match &list.waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => list.waker.replace(cx.waker().clone()),
            }
        };
        drop(old);
        // The receives that have something, posted by the driver: listed as a wake of the
        // receiver would list them (a connection already listed is not listed twice).
        let mut received = std::mem::take(&mut *d.received_keys.borrow_mut());
        d.received.take(cx, &mut received);
        {
            let blocks = d.blocks.borrow();
            for key in received.drain(..) {
                let key = key as usize;
                if let Some(&block) = blocks.get(key / TAGS_PER_BLOCK) {
                    if Ready::mark_woke(block, key, WOKE_RECV) {
                        batch.push(key as u32);
                    }
                }
            }
        }
        *d.received_keys.borrow_mut() = received;
        for &key in &batch {
            let key = key as usize;
            let Some(&block) = d.blocks.borrow().get(key / TAGS_PER_BLOCK) else {
                continue; // not a key of ours (cannot happen: every waker comes from `register`)
            };
            let woke = Ready::take_woke(block, key);
            let conn = d.conns.borrow().get(key).cloned();
            if let Some(conn) = conn {
                // Every callback's panic is caught where it is called; this catches what
                // other foreign code could do inside a drive (a written buffer's destructor,
                // a waker of another executor woken by a buffer returned to the pool): that
                // connection fails, the others go on.
                let drive = panic::catch_unwind(AssertUnwindSafe(|| conn.drive(&d, woke)));
                if let Err(payload) = drive {
                    conn.driving.set(false);
                    let what = "foreign code run by the protocol transport (a buffer's \
                                destructor, another executor's waker)";
                    conn.callback_panicked(what, payload);
                }
            }
            if d.cancelled.borrow().is_some() {
                break;
            }
        }
        batch.clear();
        *d.batch.borrow_mut() = batch;
        // A cancellation an op took (and so kept from us), or one an op that won its race
        // with it put back: the task is ending.
        let taken = d.cancelled.borrow_mut().take();
        if let Some(c) = taken.or_else(take_cancel_request) {
            d.shut_down(Some(c));
            self.d = None;
            return Poll::Ready(());
        }
        // Over the leaves of the connections' ops it polled: the task waits on all of them.
        let conns = d.conns.borrow().len();
        note_awaiting(&DISPATCHER, Some(u32::try_from(conns).unwrap_or(u32::MAX)));
        Poll::Pending
    }
}

/// What the dispatcher's task waits on, in task dumps (with its connection count).
static DISPATCHER: AwaitName = AwaitName::new("protocol dispatcher");

impl Drop for DispatchTask {
    /// Dropped without having ended (the runtime was dropped, the task was aborted, or it was
    /// cancelled before its first poll): the connections end as for a cancellation, so
    /// `connection_lost` still comes exactly once, and each protocol is dropped after it
    /// (which breaks the cycle of a protocol that keeps its transport). Every callback's
    /// panic is caught, as always.
    fn drop(&mut self) {
        if let Some(d) = self.d.take() {
            d.shut_down(None);
        }
    }
}

// ---- a connection ------------------------------------------------------------------------------

/// Whether `connection_lost` is due or done.
enum Lost {
    No,
    /// Due, with this error (`None`: a clean close).
    Pending(Option<io::Error>),
    Done,
}

/// The send in flight.
enum Flight {
    Idle,
    One(Op<ops::Send<Slice<WriteBuf>>>),
    Many(Op<ops::SendVectored<WriteBuf>>),
    /// io_uring: a [`ConnSend`], whose completion settles the connection.
    Detached(DetachedOp),
}

/// A send of a connection's queue: one buffer, or a vectored send of several.
enum SendKind {
    One(ops::Send<Slice<WriteBuf>>),
    Many(ops::SendVectored<WriteBuf>),
}

/// The two sends of [`SendKind`], for code that handles either.
trait QueueSend: OpKind + Sized {
    fn sent(output: Self::Output) -> Sent;
    fn flight(op: Op<Self>) -> Flight;
}

impl QueueSend for ops::Send<Slice<WriteBuf>> {
    fn sent(output: Self::Output) -> Sent {
        Sent::One(output)
    }
    fn flight(op: Op<Self>) -> Flight {
        Flight::One(op)
    }
}

impl QueueSend for ops::SendVectored<WriteBuf> {
    fn sent(output: Self::Output) -> Sent {
        Sent::Many(output)
    }
    fn flight(op: Op<Self>) -> Flight {
        Flight::Many(op)
    }
}

/// A connection's send started detached (io_uring, see [`start_detached`]): its completion
/// settles the connection ([`Conn::detached_sent`]) without a wake and a drive, unless
/// something is left to do. Generic rather than over [`SendKind`], so a plain send does not
/// carry (and move) the room of a vectored one.
struct ConnSend<K> {
    conn: Rc<Conn>,
    d: Rc<Dispatcher>,
    send: K,
}

// SAFETY: the entry is the inner send's, built by its own `sqe` with `self` (and so the send,
// a field of it) at its final address: every pointer in it points into memory the send owns
// and every descriptor in it is one the send keeps open, as the inner op kind's own contract
// says.
unsafe impl<K: QueueSend> OpKind for ConnSend<K> {
    type Output = ();
    const NAME: &'static str = K::NAME;

    #[inline]
    fn byte_count(&self) -> Option<usize> {
        self.send.byte_count()
    }

    fn sqe(&mut self) -> squeue::Entry {
        self.send.sqe()
    }

    fn readiness(&self) -> (RawFd, Interest) {
        self.send.readiness()
    }

    fn attempt(&mut self) -> io::Result<u32> {
        self.send.attempt()
    }

    fn try_first(&self) -> bool {
        // With more than two connections the ring is never "nearly idle" (each has its
        // receive armed), so the runtime's look at it is skipped.
        self.send.try_first() && self.d.conns.borrow().len() <= 2
    }

    fn complete(self, result: io::Result<u32>, flags: u32) {
        let done = K::sent(self.send.complete(result, flags));
        self.conn.detached_sent(&self.d, done);
    }
}

/// The buffers waiting to be sent, in order. The first is kept inline: a connection that has
/// one write at a time (a request/response protocol) never allocates for its queue, where a
/// `VecDeque` kept a 160-byte allocation per connection from its first write on.
#[derive(Default)]
struct WriteQueue {
    first: Option<WriteBuf>,
    rest: VecDeque<WriteBuf>,
}

impl WriteQueue {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_back(&mut self, buf: WriteBuf) {
        if self.first.is_none() {
            self.first = Some(buf);
        } else {
            self.rest.push_back(buf);
        }
    }

    fn push_front(&mut self, buf: WriteBuf) {
        if let Some(old) = self.first.replace(buf) {
            self.rest.push_front(old);
        }
    }

    fn pop_front(&mut self) -> Option<WriteBuf> {
        let buf = self.first.take()?;
        self.first = self.rest.pop_front();
        Some(buf)
    }
}

/// A connection's mutable state; borrowed briefly, never across a callback.
struct State {
    /// `None` once the connection is lost (the socket is closed then).
    stream: Option<TcpStream>,
    /// `None` once reading has ended for good (end of stream, close, error).
    rx: Option<PooledReceiver>,
    /// Buffers waiting to be sent, after the send in flight.
    queue: WriteQueue,
    /// Bytes of `queue`'s first buffer already sent.
    skip: usize,
    /// Bytes not yet sent: the queue's and the send in flight's (asyncio's write buffer size).
    buffered: usize,
    /// Pool buffers among the queue's and the send in flight's.
    pooled: usize,
    flight: Flight,
    /// Bytes of the vectored send's first buffer already sent before it.
    flight_skip: usize,
    high: usize,
    low: usize,
    /// Not paused by `pause_reading`.
    reading: bool,
    /// `close` or `abort` was called, or the connection failed.
    closing: bool,
    /// `write_eof` was called.
    eof_requested: bool,
    /// The write side was shut down.
    eof_done: bool,
    /// The protocol was told `pause_writing` (and not yet `resume_writing`).
    writing_paused: bool,
    lost: Lost,
}

impl State {
    fn is_open(&self) -> bool {
        matches!(self.lost, Lost::No)
    }

    /// Whether [`Conn::finish_writes`] has something to do: everything queued has gone out
    /// and a `write_eof` or a close waits for that.
    fn wants_finish(&self) -> bool {
        (self.closing || (self.eof_requested && !self.eof_done))
            && self.is_open()
            && matches!(self.flight, Flight::Idle)
            && self.queue.is_empty()
    }

    /// Whether the write buffer crossed a water mark the protocol has not been told about.
    fn crossed_a_mark(&self) -> bool {
        let crossed = if self.writing_paused {
            self.buffered <= self.low
        } else {
            self.buffered > self.high
        };
        crossed && self.is_open() && !self.closing
    }

    /// Everything the connection holds for I/O, taken out to be dropped after the borrow ends
    /// (a buffer may run foreign code when dropped).
    fn take_io(&mut self) -> TakenIo {
        if let Flight::Detached(op) = &self.flight {
            op.cancel(); // its completion finds the connection lost and drops the buffers
        }
        self.buffered = 0;
        self.pooled = 0;
        TakenIo {
            _rx: self.rx.take(),
            _queue: std::mem::take(&mut self.queue),
            _flight: std::mem::replace(&mut self.flight, Flight::Idle),
        }
    }
}

/// What [`State::take_io`] took; dropped outside the state's borrow.
struct TakenIo {
    _rx: Option<PooledReceiver>,
    _queue: WriteQueue,
    _flight: Flight,
}

struct Conn {
    /// Its waker for anything the whole drive may have to act on ([`WOKE_ANY`]); its other
    /// wakers share its tag ([`Conn::waker_of`]).
    waker: Waker,
    /// Its slab key (and its wakers' tag).
    key: usize,
    /// The last read stopped because the write queue held the connection's share of the
    /// pool: the drive after a send completes reads again, without a wake of the receiver.
    starved: Cell<bool>,
    /// Sends use `SEND_ZC` (the runtime's option, for an inet socket), decided once.
    zero_copy: bool,
    /// Taken out while one of its callbacks runs (so a nested call finds it busy).
    protocol: Cell<Option<Box<dyn Protocol>>>,
    /// A drive is running: what a callback changes is seen by it, no wake needed.
    driving: Cell<bool>,
    /// Something changed during the drive: it goes round once more.
    dirty: Cell<bool>,
    peer: SocketAddr,
    st: RefCell<State>,
}

/// Chunks handed to `data_received` per drive at most, so one busy connection cannot hold
/// up the others (the connection is listed again for the next batch). As many as the echo
/// server writes back in one gather write: a bulk stream's writes then go out in sends of
/// that size (with the receive budget's 16, sends were 12 chunks on average, and a 64 KiB
/// echo cost 2.7 sends instead of 1.4).
const CHUNKS_PER_DRIVE: usize = 64;

impl Conn {
    /// The connection's waker of kind `vtable` (its receiver's or its send's), lent for one
    /// poll: it shares the tag of `self.waker` and is never dropped.
    fn waker_of(&self, vtable: &'static RawWakerVTable) -> ManuallyDrop<Waker> {
        // SAFETY: the data pointer is `self.waker`'s tag, kept alive by the reference to
        // `Ready` that `self.waker` owns for as long as `self` lives, which outlives the lent
        // waker (it is only lent by reference to polls that run while `self` is borrowed). The
        // waker owns no reference of its own and is never dropped (`ManuallyDrop`), so it
        // releases none; a clone takes its own (`tag_clone`).
        ManuallyDrop::new(unsafe { Waker::from_raw(RawWaker::new(self.waker.data(), vtable)) })
    }

    /// Something for the loop to do on this connection: a drive in progress goes round again;
    /// otherwise the connection is listed for the dispatcher.
    fn touch(&self) {
        if self.driving.get() {
            self.dirty.set(true);
        } else {
            self.waker.wake_by_ref();
        }
    }

    /// Calls a protocol callback, unless another of its callbacks is running (then `None`)
    /// or the protocol is gone. A panic is reported and aborts the connection.
    fn invoke<R>(&self, f: impl FnOnce(&mut dyn Protocol) -> R, what: &str) -> Option<R> {
        let mut p = self.protocol.take()?;
        let r = panic::catch_unwind(AssertUnwindSafe(|| f(&mut *p)));
        self.protocol.set(Some(p));
        match r {
            Ok(r) => {
                self.sync_writing();
                Some(r)
            }
            Err(payload) => {
                self.callback_panicked(what, payload);
                None
            }
        }
    }

    /// `what` panicked (with `payload`): reported, and the connection fails with an error
    /// that says so.
    fn callback_panicked(&self, what: &str, payload: Box<dyn std::any::Any + Send>) {
        call_exception_handler(&format!("{what} panicked"), &*payload);
        let msg = match (
            payload.downcast_ref::<&str>(),
            payload.downcast_ref::<String>(),
        ) {
            (Some(s), _) => (*s).to_owned(),
            (_, Some(s)) => s.clone(),
            _ => "(no message)".to_owned(),
        };
        // The payload goes here, after the error is built: its destructor is foreign code.
        let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(payload)));
        drop(dropped);
        self.fail(io::Error::other(format!("{what} panicked: {msg}")));
    }

    /// Tells the protocol `pause_writing` / `resume_writing` when the buffer crossed a water
    /// mark, unless one of its callbacks is running (its caller calls this when it returns).
    #[inline]
    fn sync_writing(&self) {
        if self.st.borrow().crossed_a_mark() {
            self.tell_writing();
        }
    }

    /// [`sync_writing`](Self::sync_writing) once a mark was crossed.
    #[cold]
    fn tell_writing(&self) {
        loop {
            let Some(mut p) = self.protocol.take() else {
                return;
            };
            let pause = {
                let mut st = self.st.borrow_mut();
                if !st.is_open() || st.closing {
                    None
                } else if !st.writing_paused && st.buffered > st.high {
                    st.writing_paused = true;
                    Some(true)
                } else if st.writing_paused && st.buffered <= st.low {
                    st.writing_paused = false;
                    Some(false)
                } else {
                    None
                }
            };
            let Some(pause) = pause else {
                self.protocol.set(Some(p));
                return;
            };
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                if pause {
                    p.pause_writing()
                } else {
                    p.resume_writing()
                }
            }));
            self.protocol.set(Some(p));
            if let Err(payload) = r {
                let what = if pause {
                    "the protocol's pause_writing"
                } else {
                    "the protocol's resume_writing"
                };
                self.callback_panicked(what, payload);
                return;
            }
        }
    }

    /// Aborts with `error` (unless already lost): queued data is dropped, reading stops, and
    /// `connection_lost(Some(error))` is delivered by the next drive.
    fn fail(&self, error: io::Error) {
        let taken = {
            let mut st = self.st.borrow_mut();
            if !st.is_open() {
                return;
            }
            st.closing = true;
            st.lost = Lost::Pending(Some(error));
            st.take_io()
        };
        drop_reporting("a dropped write buffer's destructor panicked", taken);
        self.touch();
    }

    /// Runs what is ready on this connection: the send that completed, the chunks received
    /// (each to `data_received`), the writes those queued (one send), closing. `woke` says
    /// what woke it: the receiver is polled only when it did, or when reading had stopped for
    /// want of pool share, and the send only when it completed.
    fn drive(self: &Rc<Self>, d: &Rc<Dispatcher>, mut woke: Woke) {
        struct Driving<'a>(&'a Cell<bool>);
        impl Drop for Driving<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        self.driving.set(true);
        let _driving = Driving(&self.driving);
        let mut delivered = 0;
        let limit = CHUNKS_PER_DRIVE;
        loop {
            // 1. The send that completed: what went out is dropped, what did not goes back.
            if woke & (WOKE_ANY | WOKE_SEND) != 0 {
                self.poll_flight(d);
            }
            if matches!(self.st.borrow().lost, Lost::Pending(_)) {
                self.deliver_lost(Some(d));
                return;
            }
            // 2. What was received, to `data_received`.
            if delivered < limit && (woke & (WOKE_ANY | WOKE_RECV) != 0 || self.starved.get()) {
                delivered += self.read(d, limit - delivered);
            }
            // 3. One send for everything those callbacks (and anyone before) wrote: their
            // writes need no other pass, so what marks the drive dirty from here on is new.
            self.dirty.set(false);
            let mut again = self.flush(d);
            let quiet = {
                let st = self.st.borrow();
                !st.crossed_a_mark() && !st.wants_finish() && matches!(st.lost, Lost::No)
            };
            if quiet && !again && !self.dirty.get() {
                break; // the usual end: nothing below has anything to do
            }
            // What went out may have drained the buffer to the low-water mark.
            self.sync_writing();
            again |= self.finish_writes();
            if d.cancelled.borrow().is_some() {
                return; // the dispatcher is shutting down
            }
            if !again && !self.dirty.get() && !matches!(self.st.borrow().lost, Lost::Pending(_)) {
                break;
            }
            // Round again: everything if a callback changed something; else (a send that
            // completed at once, a close) the steps above run without new polls.
            woke = if self.dirty.get() { WOKE_ANY } else { 0 };
        }
        if delivered >= limit {
            // More may be queued: after the other connections of this batch.
            self.waker_of(&WAKE_RECV_VTABLE).wake_by_ref();
        }
    }

    /// Polls the send in flight, and handles its completion.
    fn poll_flight(&self, d: &Dispatcher) {
        let waker = self.waker_of(&WAKE_SEND_VTABLE);
        let cx = &mut Context::from_waker(&waker);
        let done = {
            let mut st = self.st.borrow_mut();
            match &mut st.flight {
                // A detached send settles the connection from its completion.
                Flight::Idle | Flight::Detached(_) => return,
                // Our own op kinds: polling them runs no foreign code but a wake of our waker.
                Flight::One(op) => match Pin::new(op).poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(r) => {
                        st.flight = Flight::Idle;
                        Sent::One(r)
                    }
                },
                Flight::Many(op) => match Pin::new(op).poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(r) => {
                        st.flight = Flight::Idle;
                        Sent::Many(r)
                    }
                },
            }
        };
        self.sent(done, d);
    }

    /// Starts a send of everything queued, if none is in flight; whether it completed at once
    /// (then what is queued since, or a close, needs another pass).
    ///
    /// On io_uring the send is started detached: its completion settles the connection
    /// itself ([`detached_sent`](Self::detached_sent)), with no wake of the connection and no
    /// drive unless something is left to do. On epoll it is an [`Op`] the drive polls (a send
    /// there usually completes at once).
    fn flush(self: &Rc<Self>, d: &Rc<Dispatcher>) -> bool {
        let send = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if !matches!(st.flight, Flight::Idle) || st.queue.is_empty() || !st.is_open() {
                return false;
            }
            let Some(stream) = &st.stream else {
                return false;
            };
            let fd = stream.as_shared_fd().clone();
            if st.queue.len() == 1 {
                let buf = st.queue.pop_front().expect("one buffer queued");
                let skip = std::mem::take(&mut st.skip);
                SendKind::One(ops::Send::with_zero_copy(
                    fd,
                    buf.slice(skip..),
                    self.zero_copy,
                ))
            } else {
                let mut bufs = d.spare.take();
                while bufs.len() < MAX_IOVECS {
                    match st.queue.pop_front() {
                        Some(b) => bufs.push(b),
                        None => break,
                    }
                }
                let skip = std::mem::take(&mut st.skip);
                st.flight_skip = skip;
                SendKind::Many(ops::SendVectored::new(fd, bufs, skip))
            }
        };
        match send {
            SendKind::One(send) => self.start_send(d, send),
            SendKind::Many(send) => self.start_send(d, send),
        }
    }

    /// Starts `send`, taken out of the queue by [`flush`](Self::flush), detached on io_uring
    /// or as an [`Op`]; whether it completed at once.
    fn start_send<K: QueueSend>(self: &Rc<Self>, d: &Rc<Dispatcher>, send: K) -> bool {
        // Between the borrow in `flush` and the one below the flight looks idle: only our own
        // op kinds' code runs there, which never reaches this connection.
        let send = if d.uring {
            let kind = ConnSend {
                conn: self.clone(),
                d: d.clone(),
                send,
            };
            match start_detached(kind) {
                Ok(Detached::Running(op)) => {
                    self.st.borrow_mut().flight = Flight::Detached(op);
                    return false;
                }
                // Done at once, and its completion has settled it (and marked this drive
                // dirty if anything is left to do).
                Ok(Detached::Done(())) => return true,
                Err(kind) => kind.send,
            }
        } else {
            send
        };
        let waker = self.waker_of(&WAKE_SEND_VTABLE);
        let cx = &mut Context::from_waker(&waker);
        // Our own op kinds: polling them runs no foreign code but a wake of our waker.
        let mut op = Op::new(send);
        match Pin::new(&mut op).poll(cx) {
            Poll::Pending => {
                self.st.borrow_mut().flight = K::flight(op);
                false
            }
            Poll::Ready(r) => {
                self.sent(K::sent(r), d);
                true
            }
        }
    }

    /// The completion of a send started detached (io_uring), run by the loop outside any
    /// drive (or inside this connection's, when the send did not have to wait): settles the
    /// write buffer as the drive would, and lists the connection only if something is left
    /// to do (more to send, a water mark crossed, a close to finish, reading held back by the
    /// pool share).
    #[inline]
    fn detached_sent(&self, d: &Dispatcher, done: Sent) {
        let open = {
            let mut st = self.st.borrow_mut();
            if matches!(st.flight, Flight::Detached(_)) {
                st.flight = Flight::Idle;
            }
            st.is_open()
        };
        if !open {
            // Aborted or lost meanwhile: its buffers were already counted out.
            drop_reporting("a dropped write buffer's destructor panicked", done);
            return;
        }
        // As in a drive: foreign code run here (a buffer's destructor, a waker woken by a
        // buffer returned to the pool) that panics fails this connection only.
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| self.sent(done, d))) {
            let what = "foreign code run by the protocol transport (a buffer's destructor, \
                        another executor's waker)";
            self.callback_panicked(what, payload);
            return;
        }
        let more = {
            let st = self.st.borrow();
            !matches!(st.lost, Lost::No)
                || !st.queue.is_empty()
                || st.crossed_a_mark()
                || st.closing
                || (st.eof_requested && !st.eof_done)
        };
        if more || self.starved.get() {
            if self.driving.get() {
                self.dirty.set(true);
            } else {
                self.waker_of(&WAKE_SEND_VTABLE).wake_by_ref();
            }
        }
    }

    /// A send completed: drops what went out, puts back what did not, reports an error.
    #[inline]
    fn sent(&self, done: Sent, d: &Dispatcher) {
        match done {
            Sent::One((r, slice)) => {
                let skip = slice.begin();
                let buf = slice.into_inner();
                let n = match r {
                    Ok(n) if n > 0 => n,
                    r => {
                        drop(buf);
                        return self.send_failed(r, d);
                    }
                };
                let finished = {
                    let mut st = self.st.borrow_mut();
                    st.buffered = st.buffered.saturating_sub(n);
                    if skip + n < buf.len() {
                        st.skip = skip + n;
                        st.queue.push_front(buf);
                        None
                    } else {
                        if buf.is_pooled() {
                            st.pooled = st.pooled.saturating_sub(1);
                        }
                        Some(buf)
                    }
                };
                drop(finished);
            }
            Sent::Many((r, mut bufs)) => {
                let n = match r {
                    Ok(n) if n > 0 => n,
                    r => {
                        drop(bufs);
                        return self.send_failed(r, d);
                    }
                };
                {
                    let mut st = self.st.borrow_mut();
                    st.buffered = st.buffered.saturating_sub(n);
                    let mut rest = st.flight_skip + n;
                    let mut k = 0;
                    while k < bufs.len() && rest >= bufs[k].len() {
                        rest -= bufs[k].len();
                        k += 1;
                    }
                    if k < bufs.len() {
                        for b in bufs.drain(k..).rev() {
                            st.queue.push_front(b);
                        }
                        st.skip = rest;
                    }
                    let pooled = bufs.iter().filter(|b| b.is_pooled()).count();
                    st.pooled = st.pooled.saturating_sub(pooled);
                }
                bufs.clear(); // outside the borrow
                d.spare.set(bufs);
            }
        }
    }

    fn send_failed(&self, r: io::Result<usize>, d: &Dispatcher) {
        let e = match r {
            Err(e) => e,
            Ok(_) => io::Error::new(io::ErrorKind::WriteZero, "the peer accepted no bytes"),
        };
        if is_cancelled(&e) {
            d.note_cancel(&e);
        } else {
            self.fail(e);
        }
    }

    /// Hands the chunks received to `data_received` (at most `limit`), and the end of stream
    /// to `eof_received`; returns how many chunks.
    fn read(&self, d: &Dispatcher, limit: usize) -> usize {
        let waker = self.waker_of(&WAKE_RECV_VTABLE);
        let cx = &mut Context::from_waker(&waker);
        self.starved.set(false);
        let mut n = 0;
        while n < limit {
            let (polled, more) = {
                let mut st = self.st.borrow_mut();
                if !st.reading || st.closing || !st.is_open() {
                    break;
                }
                if st.pooled >= d.pool_share {
                    self.starved.set(true);
                    break;
                }
                let Some(rx) = st.rx.as_mut() else {
                    break;
                };
                // io_uring: the receive posts the key when it has something (see `received`).
                let post = d.uring.then_some((&d.received, self.key as u32));
                let polled = rx.poll_recv_quiet(cx, post);
                (polled, rx.may_have_more())
            };
            match polled {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(chunk))) => {
                    n += 1;
                    self.invoke(|p| p.data_received(chunk), "the protocol's data_received");
                    if !more {
                        break; // nothing else queued, and the receiver's waker is set
                    }
                }
                Poll::Ready(Ok(None)) => {
                    let rx = self.st.borrow_mut().rx.take();
                    drop(rx);
                    let keep_open =
                        self.invoke(|p| p.eof_received(), "the protocol's eof_received");
                    if keep_open == Some(false) {
                        self.close();
                    }
                }
                Poll::Ready(Err(e)) if is_cancelled(&e) => {
                    d.note_cancel(&e);
                    break;
                }
                Poll::Ready(Err(e)) => self.fail(e),
            }
        }
        n
    }

    /// Once everything queued has gone out: the write side's shutdown (`write_eof`), and the
    /// end of a closing connection.
    fn finish_writes(&self) -> bool {
        let mut st = self.st.borrow_mut();
        if !st.is_open() || !matches!(st.flight, Flight::Idle) || !st.queue.is_empty() {
            return false;
        }
        let mut progress = false;
        if st.eof_requested && !st.eof_done {
            st.eof_done = true;
            if let Some(s) = &st.stream {
                // An error (the peer is gone) shows up on the receive side as well.
                let _ = s.shutdown(Shutdown::Write);
            }
            progress = true;
        }
        if st.closing {
            st.lost = Lost::Pending(None);
            progress = true;
        }
        progress
    }

    fn close(&self) {
        let rx = {
            let mut st = self.st.borrow_mut();
            if st.closing || !st.is_open() {
                return;
            }
            st.closing = true;
            st.rx.take()
        };
        drop(rx);
        self.touch();
    }

    /// Delivers `connection_lost` (with the error it is due with, or `None`), then closes the
    /// socket and drops the protocol. With `d`, the connection leaves it.
    fn deliver_lost(&self, d: Option<&Dispatcher>) {
        let (error, taken, stream) = {
            let mut st = self.st.borrow_mut();
            let error = match std::mem::replace(&mut st.lost, Lost::Done) {
                Lost::Done => return,
                Lost::Pending(e) => e,
                Lost::No => None,
            };
            st.closing = true;
            (error, st.take_io(), st.stream.take())
        };
        drop_reporting("a dropped write buffer's destructor panicked", taken);
        if let Some(mut p) = self.protocol.take() {
            let r = panic::catch_unwind(AssertUnwindSafe(|| p.connection_lost(error)));
            if let Err(payload) = r {
                call_exception_handler("the protocol's connection_lost panicked", &*payload);
                drop_reporting("a panic payload's destructor panicked", payload);
            }
            // The protocol goes now, and with it a transport it kept (the reference cycle).
            drop_reporting("a protocol's destructor panicked", p);
        }
        // asyncio closes the socket after connection_lost.
        drop(stream);
        if let Some(d) = d {
            d.remove(self);
        }
    }
}

/// Drops `x` (foreign code: a buffer's or a protocol's destructor) with a panic caught and
/// reported as `what`, so a teardown always runs to its end.
fn drop_reporting<T>(what: &str, x: T) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| drop(x))) {
        call_exception_handler(what, &*payload);
        let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(payload)));
    }
}

/// A completed send's output.
enum Sent {
    One((io::Result<usize>, Slice<WriteBuf>)),
    Many((io::Result<usize>, Vec<WriteBuf>)),
}

// ---- the transport -----------------------------------------------------------------------------

/// A connection as its [`Protocol`] sees it (asyncio's `asyncio.Transport`): queue writes,
/// close, pause reading, watch the write buffer. A cheap handle (clone it freely); `!Send`,
/// like the runtime's other resources.
///
/// Every method works at any time: once the connection is closing or lost, writes are dropped
/// and the rest do nothing (see the [module docs](self) for where that differs from asyncio).
#[derive(Clone)]
pub struct Transport {
    conn: Rc<Conn>,
}

/// What [`Transport::get_extra_info`] gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtraInfo {
    /// `"peername"`: the peer's address.
    PeerName(SocketAddr),
    /// `"sockname"`: the local address (until the connection is lost).
    SockName(SocketAddr),
    /// `"socket"`: the socket's descriptor (until the connection is lost).
    Socket(RawFd),
}

impl Transport {
    /// Queues `data` to be sent; never blocks and never fails. The loop sends everything
    /// queued since its last send in one (vectored) send. A [`PooledBuf`] from
    /// [`data_received`](Protocol::data_received) goes out without a copy.
    ///
    /// Dropped once the transport is closing ([`close`](Self::close), [`abort`](Self::abort),
    /// an error) or the connection is lost, as asyncio drops writes once the connection is
    /// lost (asyncio still queues them between `close()` and the end of its flush). Empty
    /// data is ignored.
    ///
    /// Crossing the high-water mark calls the protocol's
    /// [`pause_writing`](Protocol::pause_writing): at once, or, when this is called from one
    /// of the protocol's own callbacks, as soon as that callback returns.
    ///
    /// # Panics
    /// After [`write_eof`](Self::write_eof) (asyncio raises `RuntimeError`).
    pub fn write(&self, data: impl Into<WriteBuf>) {
        let data = data.into();
        let len = data.len();
        let c = &self.conn;
        let ignored = {
            let mut st = c.st.borrow_mut();
            if st.closing || !st.is_open() || len == 0 {
                Some(data)
            } else if st.eof_requested {
                drop(st);
                drop(data);
                panic!("Transport::write after write_eof");
            } else {
                st.buffered += len;
                st.pooled += usize::from(data.is_pooled());
                st.queue.push_back(data);
                None
            }
        };
        if ignored.is_some() {
            drop(ignored); // outside the borrow
            return;
        }
        c.touch();
        c.sync_writing();
    }

    /// Queues every buffer, in order (asyncio's `writelines`); see [`write`](Self::write).
    ///
    /// # Panics
    /// As [`write`](Self::write).
    pub fn writelines<I>(&self, data: I)
    where
        I: IntoIterator,
        I::Item: Into<WriteBuf>,
    {
        for d in data {
            self.write(d);
        }
    }

    /// Shuts down the sending side once what is queued has gone out (the peer sees end of
    /// stream); reading goes on. Does nothing when closing or already called.
    pub fn write_eof(&self) {
        {
            let mut st = self.conn.st.borrow_mut();
            if st.closing || st.eof_requested || !st.is_open() {
                return;
            }
            st.eof_requested = true;
        }
        self.conn.touch();
    }

    /// Whether [`write_eof`](Self::write_eof) is supported: always, for TCP.
    pub fn can_write_eof(&self) -> bool {
        true
    }

    /// Closes the connection once what is queued has gone out: no more data is received,
    /// further writes are dropped, then [`connection_lost(None)`](Protocol::connection_lost)
    /// is called (soon, never from inside this call). A second call does nothing.
    pub fn close(&self) {
        self.conn.close();
    }

    /// Closes the connection now: queued data is dropped (a send in flight is cancelled),
    /// then [`connection_lost(None)`](Protocol::connection_lost) is called (soon, never from
    /// inside this call).
    pub fn abort(&self) {
        let taken = {
            let mut st = self.conn.st.borrow_mut();
            if !st.is_open() {
                return;
            }
            st.closing = true;
            st.lost = Lost::Pending(None);
            st.take_io()
        };
        drop_reporting("a dropped write buffer's destructor panicked", taken);
        self.conn.touch();
    }

    /// Whether the transport is closing or closed.
    pub fn is_closing(&self) -> bool {
        let st = self.conn.st.borrow();
        st.closing || !st.is_open()
    }

    /// Stops calling [`data_received`](Protocol::data_received) until
    /// [`resume_reading`](Self::resume_reading): from the next chunk on, even one already
    /// received. What arrives meanwhile waits in the connection's receive queue, up to its
    /// budget, then in the socket (TCP stops the peer). Does nothing if already paused or
    /// closing.
    pub fn pause_reading(&self) {
        self.conn.st.borrow_mut().reading = false;
    }

    /// Resumes [`data_received`](Protocol::data_received) after
    /// [`pause_reading`](Self::pause_reading), starting with what waited.
    pub fn resume_reading(&self) {
        {
            let mut st = self.conn.st.borrow_mut();
            if st.reading || st.closing || !st.is_open() {
                return;
            }
            st.reading = true;
        }
        self.conn.touch();
    }

    /// Whether data is being delivered (not paused, not closing).
    pub fn is_reading(&self) -> bool {
        let st = self.conn.st.borrow();
        st.reading && !st.closing && st.is_open() && st.rx.is_some()
    }

    /// Whether writing is paused: the write buffer went above the high-water mark and has not
    /// drained to the low one since. It turns true with the write that crosses the mark, so a
    /// protocol that writes in a loop inside one of its own callbacks (where
    /// [`pause_writing`](Protocol::pause_writing) comes only after the callback returns)
    /// checks this instead; not in asyncio, whose `pause_writing` comes from inside `write`.
    ///
    /// ```
    /// # use ringloop_net::Transport;
    /// fn produce(t: &Transport, next: &mut impl Iterator<Item = Vec<u8>>) {
    ///     while !t.is_writing_paused() {
    ///         match next.next() {
    ///             Some(chunk) => t.write(chunk),
    ///             None => return t.close(),
    ///         }
    ///     }
    ///     // Called again from `resume_writing`.
    /// }
    /// ```
    pub fn is_writing_paused(&self) -> bool {
        let st = self.conn.st.borrow();
        st.writing_paused || st.buffered > st.high
    }

    /// Bytes queued and not yet sent.
    pub fn get_write_buffer_size(&self) -> usize {
        self.conn.st.borrow().buffered
    }

    /// The water marks `(low, high)`.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        let st = self.conn.st.borrow();
        (st.low, st.high)
    }

    /// Sets the water marks of the write buffer, asyncio's way: `high` defaults to 64 KiB (or
    /// 4 × `low` when only `low` is given), `low` to `high / 4`. Above `high` the protocol is
    /// told [`pause_writing`](Protocol::pause_writing); drained to `low` or below,
    /// [`resume_writing`](Protocol::resume_writing). `high = Some(0)` pauses whenever
    /// anything is queued.
    ///
    /// ```
    /// # fn f(t: &ringloop_net::Transport) -> std::io::Result<()> {
    /// t.set_write_buffer_limits(Some(256 * 1024), None)?;
    /// assert_eq!(t.get_write_buffer_limits(), (64 * 1024, 256 * 1024));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `InvalidInput` if `low` exceeds `high` (asyncio's `ValueError`).
    pub fn set_write_buffer_limits(
        &self,
        high: Option<usize>,
        low: Option<usize>,
    ) -> io::Result<()> {
        let high = high.unwrap_or(match low {
            Some(low) => low.saturating_mul(4),
            None => DEFAULT_HIGH_WATER,
        });
        let low = low.unwrap_or(high / 4);
        if low > high {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("high ({high}) must be >= low ({low})"),
            ));
        }
        {
            let mut st = self.conn.st.borrow_mut();
            st.high = high;
            st.low = low;
        }
        self.conn.sync_writing();
        Ok(())
    }

    /// asyncio's `get_extra_info(name)`: `"peername"`, `"sockname"` or `"socket"`; `None` for
    /// other names (and for `"socket"` once the connection is lost).
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "peername" => Some(ExtraInfo::PeerName(self.conn.peer)),
            "sockname" => self.local_addr().map(ExtraInfo::SockName),
            "socket" => {
                let st = self.conn.st.borrow();
                st.stream.as_ref().map(|s| ExtraInfo::Socket(s.as_raw_fd()))
            }
            _ => None,
        }
    }

    /// The peer's address (`get_extra_info("peername")`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// The local address (`get_extra_info("sockname")`), asked of the socket: `None` once the
    /// connection is lost (asyncio keeps it from the start; at 10 000 connections that is
    /// 320 KB kept for an address few protocols ask for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let st = self.conn.st.borrow();
        st.stream.as_ref().and_then(|s| s.local_addr().ok())
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.conn.peer)
            .field("closing", &self.is_closing())
            .field("write_buffer_size", &self.get_write_buffer_size())
            .finish_non_exhaustive()
    }
}

// ---- servers and clients -----------------------------------------------------------------------

/// A listening server whose connections are served by protocols (asyncio's `Server`, from
/// [`create_server`]).
///
/// Dropping the handle leaves the server running, as in asyncio (and as a dropped
/// [`Task`] runs on); [`close`](Self::close) stops it.
#[derive(Debug)]
pub struct ProtocolServer {
    accept: Task<()>,
    addr: SocketAddr,
}

impl ProtocolServer {
    /// Stops listening (the listening socket is closed once the accept loop has seen the
    /// request, at the loop's next iteration). Connections already made go on, as in asyncio.
    pub fn close(&self) {
        self.accept.cancel();
    }

    /// Whether it still accepts connections.
    pub fn is_serving(&self) -> bool {
        !self.accept.is_done()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Listens on `addr` and serves every connection with a new protocol from `factory`
/// (asyncio's `loop.create_server`); see the [module docs](self) for an example. Binds with
/// [`TcpListener::bind`]'s defaults; [`create_server_on`] takes a listener of your own.
///
/// # Errors
/// The bind's real errno (`EADDRINUSE`, ...).
///
/// # Panics
/// Outside a running ringloop runtime.
pub fn create_server<P, F>(factory: F, addr: SocketAddr) -> io::Result<ProtocolServer>
where
    P: Protocol,
    F: Fn() -> P + 'static,
{
    create_server_on(factory, TcpListener::bind(addr)?)
}

/// [`create_server`] on a listener bound elsewhere (with a backlog or `SO_REUSEPORT` of your
/// choosing; asyncio's `create_server(sock=...)`).
///
/// The accept loop survives the errors a server must ride out (see
/// [`TcpListener::incoming`]); a factory that panics is reported to the exception handler
/// and that one connection is closed. Another accept error stops the server and is reported.
///
/// ```no_run
/// use ringloop_net::{create_server_on, Protocol, PooledBuf, TcpListener};
///
/// struct Discard;
/// impl Protocol for Discard {
///     fn data_received(&mut self, _data: PooledBuf) {}
/// }
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let listener = TcpListener::builder("0.0.0.0:9".parse().unwrap())
///         .backlog(4096)
///         .bind()?;
///     let _server = create_server_on(|| Discard, listener)?;
///     std::future::pending::<()>().await;
///     Ok::<_, std::io::Error>(())
/// }).unwrap();
/// ```
///
/// # Errors
/// If the listener's address cannot be read.
///
/// # Panics
/// Outside a running ringloop runtime.
pub fn create_server_on<P, F>(factory: F, listener: TcpListener) -> io::Result<ProtocolServer>
where
    P: Protocol,
    F: Fn() -> P + 'static,
{
    let addr = listener.local_addr()?;
    let accept = spawn_named(format!("ringloop.protocol-server {addr}"), async move {
        let mut incoming = listener.incoming();
        loop {
            match incoming.next().await {
                Ok((stream, peer)) => match panic::catch_unwind(AssertUnwindSafe(&factory)) {
                    Ok(p) => drop(Dispatcher::current().register(stream, peer, Box::new(p))),
                    Err(payload) => {
                        call_exception_handler("a protocol factory panicked", &*payload);
                        let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(payload)));
                    }
                },
                Err(e) if is_cancelled(&e) => return,
                Err(e) => {
                    let msg = format!("accept failed ({e}); the protocol server on {addr} stopped");
                    call_exception_handler(&msg, &msg);
                    return;
                }
            }
        }
    });
    Ok(ProtocolServer { accept, addr })
}

/// Connects to `addr` and serves the connection with the protocol `factory` makes (asyncio's
/// `loop.create_connection`). `connection_made` has been called when this returns.
///
/// ```
/// use ringloop_net::{create_connection, create_server, Protocol, PooledBuf, Transport};
/// use std::{cell::RefCell, rc::Rc};
///
/// struct Echo(Option<Transport>);
/// impl Protocol for Echo {
///     fn connection_made(&mut self, t: &Transport) { self.0 = Some(t.clone()); }
///     fn data_received(&mut self, data: PooledBuf) { self.0.as_ref().unwrap().write(data); }
/// }
///
/// /// Keeps what it receives where the caller can see it.
/// struct Collect(Rc<RefCell<Vec<u8>>>);
/// impl Protocol for Collect {
///     fn data_received(&mut self, data: PooledBuf) { self.0.borrow_mut().extend_from_slice(&data); }
/// }
///
/// ringloop_runtime::Runtime::new().unwrap().block_on(async {
///     let server = create_server(|| Echo(None), "127.0.0.1:0".parse().unwrap())?;
///     let got = Rc::new(RefCell::new(Vec::new()));
///     let sink = got.clone();
///     let client = create_connection(move || Collect(sink), server.local_addr()).await?;
///     client.write(b"ping");
///     while got.borrow().len() < 4 {
///         ringloop_runtime::sleep(std::time::Duration::from_millis(1)).await.unwrap();
///     }
///     assert_eq!(&*got.borrow(), b"ping");
///     client.close();
///     Ok::<_, std::io::Error>(())
/// }).unwrap();
/// ```
///
/// # Errors
/// The connect's real errno (`ECONNREFUSED`, `ETIMEDOUT`, ...); the factory is not called
/// then.
///
/// # Panics
/// Outside a running ringloop runtime; if `factory` panics (in the caller's task, as an
/// exception from asyncio's factory propagates out of `create_connection`).
pub async fn create_connection<P, F>(factory: F, addr: SocketAddr) -> io::Result<Transport>
where
    P: Protocol,
    F: FnOnce() -> P,
{
    let stream = TcpStream::connect(addr).await?;
    let peer = stream.peer_addr().unwrap_or(addr);
    let protocol = factory();
    Ok(Dispatcher::current().register(stream, peer, Box::new(protocol)))
}
