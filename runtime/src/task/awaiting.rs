//! What a suspended task waits on: recorded by the runtime future that returns `Pending`, read
//! by the task tree ([`TaskNode::awaiting`](super::TaskNode::awaiting)) and the live view.
//!
//! # How it is recorded, and what it costs
//!
//! Every runtime future that can suspend a task (an op, a multishot receive or accept, a sleep,
//! a lock, a queue, another [`Task`](super::Task), a [`Promise`](crate::Promise), ...) writes a
//! small `Copy` record, a *leaf*, into the header of the task being polled when it returns
//! `Pending`: which kind of wait, and a word or two about it (an op's name, descriptor and
//! byte count; a sleep's deadline; the awaited task's id). It finds the header through a
//! thread-local the loop sets beside the current-task pointer cancellation reads; nothing is
//! allocated or formatted, and a name is a pointer to a `static` ([`AwaitName`]).
//!
//! The task's poll does the rest (`Header::begin_poll_leaf` / `end_poll_leaf`): before the poll
//! it marks the leaf unset (keeping its kind aside), after a `Pending` it turns a leaf still
//! unset into [`Awaiting::Foreign`] (the task waits on a future that knows nothing of
//! ringloop), and when the wait is new it stamps the time: a millisecond tick from the loop's
//! clock, read at most once per loop iteration, never per await. A wait is new when the future
//! says so (its first `Pending`) or when its leaf differs from the one the previous poll left
//! (compared as it is written). Measured cost: about 40 user-space instructions per echoed
//! message (see runtime/DESIGN.md, "What each task awaits").
//!
//! A task that polls several runtime futures in one poll (a join, a select) shows the first one
//! that returned `Pending`: a select's main branch rather than its shutdown signal.
//! [`note_awaiting`] overrides it. A wait longer than 49 days (the tick's range) shows modulo
//! that.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::TaskId;
use crate::context;

/// A name for something a task can wait on, declared once as a `static` so that recording it
/// costs a pointer (see [`note_awaiting`]).
///
/// ```
/// use ringloop_runtime::AwaitName;
///
/// static FLUSH: AwaitName = AwaitName::new("flush barrier");
/// assert_eq!(FLUSH.as_str(), "flush barrier");
/// ```
#[derive(Debug)]
pub struct AwaitName(&'static str);

impl AwaitName {
    /// A name for task dumps.
    pub const fn new(name: &'static str) -> Self {
        AwaitName(name)
    }

    /// The name.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }
}

/// What a suspended task waits on: the runtime leaf it is suspended at, as shown by
/// [`TaskNode::awaiting`](super::TaskNode::awaiting), [`TaskRef::awaiting`](super::TaskRef::awaiting)
/// and `ringloop-ps`.
///
/// Its [`Display`](fmt::Display) is the text the task tree shows (`recv on fd 12 (2048 B)`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// An I/O op ([`Op`](crate::Op), or a multishot receive or accept).
    Io {
        /// The op kind's name ([`OpKind::NAME`](crate::OpKind::NAME)): `recv`, `send`,
        /// `accept`, ...
        op: &'static str,
        /// The descriptor it waits on, if it names one.
        fd: Option<RawFd>,
        /// The bytes it moves ([`OpKind::byte_count`](crate::OpKind::byte_count)): a send's
        /// length, a receive's room; at most `u32::MAX - 1`.
        bytes: Option<u32>,
    },
    /// A [`sleep`](crate::sleep), a [`timeout`](crate::timeout)'s or another timer's wait.
    Sleep {
        /// When it ends.
        deadline: Instant,
    },
    /// A synchronisation primitive: `lock`, `semaphore`, `event`, `condition`, `queue.get`,
    /// `channel.recv`, ...
    Sync {
        /// Which one, and which side of it.
        primitive: &'static str,
    },
    /// Another task (awaiting its [`Task`](super::Task) handle): the await chain goes on there.
    Task {
        /// The awaited task.
        id: TaskId,
    },
    /// Several tasks at once: [`gather`](crate::gather), [`wait`](crate::wait),
    /// [`as_completed`](crate::as_completed), a [`TaskGroup`](crate::TaskGroup).
    Tasks {
        /// How many of them are still running.
        count: u32,
    },
    /// A [`Promise`](crate::Promise).
    Promise,
    /// A [`spawn_blocking`](crate::spawn_blocking) call on the blocking pool.
    Blocking,
    /// A task on another loop ([`RemoteTask`](crate::RemoteTask)).
    Remote,
    /// Something named by the code that waits ([`note_awaiting`]): the protocol dispatcher,
    /// a yield, a user's own future.
    Other {
        /// Its name.
        what: &'static str,
        /// How many of it, where that says something (the dispatcher's connections).
        count: Option<u32>,
    },
    /// A future that knows nothing of ringloop: nothing recorded a leaf in the task's last poll.
    Foreign,
}

impl Awaiting {
    /// A short name of the kind: `io`, `sleep`, `sync`, `task`, `tasks`, `promise`,
    /// `blocking`, `remote`, `other` or `foreign` (the `kind` field of the JSON dumps).
    pub fn kind(&self) -> &'static str {
        match self {
            Awaiting::Io { .. } => "io",
            Awaiting::Sleep { .. } => "sleep",
            Awaiting::Sync { .. } => "sync",
            Awaiting::Task { .. } => "task",
            Awaiting::Tasks { .. } => "tasks",
            Awaiting::Promise => "promise",
            Awaiting::Blocking => "blocking",
            Awaiting::Remote => "remote",
            Awaiting::Other { .. } => "other",
            Awaiting::Foreign => "foreign",
        }
    }
}

impl fmt::Display for Awaiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Awaiting::Io { op, fd, bytes } => {
                f.write_str(op)?;
                if let Some(fd) = fd {
                    write!(f, " on fd {fd}")?;
                }
                if let Some(b) = bytes {
                    write!(f, " ({b} B)")?;
                }
                Ok(())
            }
            Awaiting::Sleep { deadline } => {
                let now = Instant::now();
                if deadline >= now {
                    write!(f, "sleep, due in {}", Millis(deadline - now))
                } else {
                    write!(f, "sleep, due {} ago", Millis(now - deadline))
                }
            }
            Awaiting::Sync { primitive } => f.write_str(primitive),
            Awaiting::Task { id } => write!(f, "task {id}"),
            Awaiting::Tasks { count } => write!(f, "{count} tasks"),
            Awaiting::Promise => f.write_str("promise"),
            Awaiting::Blocking => f.write_str("blocking call"),
            Awaiting::Remote => f.write_str("task on another loop"),
            Awaiting::Other { what, count } => {
                f.write_str(what)?;
                match count {
                    Some(n) => write!(f, " ({n})"),
                    None => Ok(()),
                }
            }
            Awaiting::Foreign => f.write_str("a foreign future"),
        }
    }
}

/// A duration shown as `1.234 s` or `12 ms`.
pub(crate) struct Millis(pub(crate) Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms >= 1000 {
            write!(f, "{}.{:03} s", ms / 1000, ms % 1000)
        } else {
            write!(f, "{ms} ms")
        }
    }
}

/// Records, for task dumps, that the current task is about to return `Pending` from a future
/// of its own that ringloop does not know: shown as [`Awaiting::Other`] with `what` (and
/// `count`, if given) instead of [`Awaiting::Foreign`]. Call it from `poll` when returning
/// `Pending`. It replaces what the runtime futures polled before it in this task poll
/// recorded (it says what the code waits on as a whole), and stands against those polled
/// after it (of several runtime futures left pending in one poll, the first one is shown).
/// Costs a few stores into the task's header; does nothing outside a task.
///
/// ```
/// use ringloop_runtime::{note_awaiting, spawn, yield_now, AwaitName, Awaiting, Runtime};
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::task::{Context, Poll};
///
/// static BARRIER: AwaitName = AwaitName::new("barrier");
///
/// struct Never;
/// impl Future for Never {
///     type Output = ();
///     fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
///         note_awaiting(&BARRIER, Some(3));
///         Poll::Pending
///     }
/// }
///
/// Runtime::new().unwrap().block_on(async {
///     let task = spawn(Never);
///     yield_now().await.unwrap();
///     assert_eq!(
///         task.as_ref().awaiting(),
///         Some(Awaiting::Other { what: "barrier", count: Some(3) })
///     );
///     task.abort();
/// });
/// ```
pub fn note_awaiting(what: &'static AwaitName, count: Option<u32>) {
    context::with_current_header(|h| {
        if let Some(h) = h {
            h.replace_leaf(Leaf::other(what, count));
        }
    });
}

/// Records, for task dumps, that the current task is about to return `Pending` from a future
/// that waits on an I/O operation ringloop does not run itself (a system call on the blocking
/// pool, say): shown as [`Awaiting::Io`] with the op's name, descriptor and byte count, as a
/// ring op would be, so that one operation shows the same on both backends. Like the runtime's
/// own futures, the first pending future of a task poll stands: this records nothing if one
/// polled before it recorded its leaf, and a later one does not replace it. `first` says this
/// is the future's first `Pending` for this operation: the time it has waited starts now (later
/// calls for the same operation pass `false` and keep it). Does nothing outside a task.
///
/// ```
/// use ringloop_runtime::{note_awaiting_io, spawn, yield_now, AwaitName, Awaiting, Runtime};
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::task::{Context, Poll};
///
/// static PREAD: AwaitName = AwaitName::new("pread");
///
/// struct OnAThread;
/// impl Future for OnAThread {
///     type Output = ();
///     fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
///         note_awaiting_io(&PREAD, Some(7), Some(4096), true);
///         Poll::Pending
///     }
/// }
///
/// Runtime::new().unwrap().block_on(async {
///     let task = spawn(OnAThread);
///     yield_now().await.unwrap();
///     assert_eq!(
///         task.as_ref().awaiting(),
///         Some(Awaiting::Io { op: "pread", fd: Some(7), bytes: Some(4096) })
///     );
///     task.abort();
/// });
/// ```
#[inline]
pub fn note_awaiting_io(
    op: &'static AwaitName,
    fd: Option<RawFd>,
    bytes: Option<usize>,
    first: bool,
) {
    note(Leaf::io(op, fd.unwrap_or(-1), bytes), first);
}

/// Records `leaf` in the current task's header (nothing outside a task), unless a runtime
/// future polled earlier in this task poll recorded one: the first pending future stands.
/// `new` says the future has just started this wait (its first `Pending`), so its waiting time
/// starts now.
#[inline]
pub(crate) fn note(leaf: Leaf, new: bool) {
    note_with(move || leaf, new);
}

/// [`note`], with the leaf made only if it is recorded: for a leaf that costs something to
/// make (a sleep's deadline in nanoseconds), where a future polled earlier in the same task
/// poll has usually recorded its own already (hyper polls its header timer after its read).
#[inline]
pub(crate) fn note_with(leaf: impl FnOnce() -> Leaf, new: bool) {
    // `--cfg ringloop_no_leaves` compiles the recording out, to measure what it costs.
    #[cfg(ringloop_no_leaves)]
    if true {
        let _ = (leaf, new);
        return;
    }
    context::with_current_header(|h| {
        if let Some(h) = h {
            if h.leaf_unset() {
                h.set_leaf(leaf(), new);
            }
        }
    });
}

/// The leaf's kind, as the header keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LeafKind {
    /// Never suspended: not polled yet.
    None,
    /// Marked before each poll; a leaf still unset after a `Pending` becomes `Foreign`.
    Unset,
    Io,
    Sleep,
    Sync,
    Task,
    Tasks,
    Promise,
    Blocking,
    Remote,
    Other,
    Foreign,
}

/// A leaf's payload: a name (`Io`, `Sync`, `Other`) or a number (`Sleep`: nanoseconds since
/// [`epoch`]; `Task`: the task id). Which one is told by the leaf's kind, which is always written
/// with it.
#[derive(Clone, Copy)]
pub(crate) union LeafData {
    name: &'static AwaitName,
    n: u64,
}

/// What a runtime future records when it returns `Pending`: a few words, `Copy`, no allocation.
/// The header keeps its fields apart, so that the kind packs with the header's other bytes.
#[derive(Clone, Copy)]
pub(crate) struct Leaf {
    pub(crate) kind: LeafKind,
    /// `Io`: the descriptor (`NONE` if none); `Tasks` and `Other`: a count (`NONE`: none).
    pub(crate) arg: u32,
    /// `Io`: the bytes it moves (`NONE`: unknown), saturated below `NONE`.
    pub(crate) len: u32,
    pub(crate) data: LeafData,
}

/// "No value" in [`Leaf::arg`] and [`Leaf::len`].
const NONE: u32 = u32::MAX;

impl Leaf {
    const fn bare(kind: LeafKind) -> Leaf {
        Leaf {
            kind,
            arg: NONE,
            len: NONE,
            data: LeafData { n: 0 },
        }
    }

    /// The leaf of a task not polled yet.
    pub(crate) const NONE: Leaf = Leaf::bare(LeafKind::None);
    pub(crate) const PROMISE: Leaf = Leaf::bare(LeafKind::Promise);
    pub(crate) const BLOCKING: Leaf = Leaf::bare(LeafKind::Blocking);
    pub(crate) const REMOTE: Leaf = Leaf::bare(LeafKind::Remote);
    pub(crate) const FOREIGN: Leaf = Leaf::bare(LeafKind::Foreign);

    /// An I/O op named `name` on `fd` (negative: none) moving `len` bytes.
    #[inline]
    pub(crate) fn io(name: &'static AwaitName, fd: RawFd, len: Option<usize>) -> Leaf {
        Leaf {
            kind: LeafKind::Io,
            arg: if fd < 0 { NONE } else { fd as u32 },
            len: len.map_or(NONE, |n| n.min(NONE as usize - 1) as u32),
            data: LeafData { name },
        }
    }

    #[inline]
    pub(crate) fn sleep(deadline: Instant) -> Leaf {
        Leaf {
            data: LeafData {
                n: nanos_since_epoch(deadline),
            },
            ..Leaf::bare(LeafKind::Sleep)
        }
    }

    #[inline]
    pub(crate) fn sync(name: &'static AwaitName) -> Leaf {
        Leaf {
            data: LeafData { name },
            ..Leaf::bare(LeafKind::Sync)
        }
    }

    #[inline]
    pub(crate) fn task(id: TaskId) -> Leaf {
        Leaf {
            data: LeafData { n: id.as_u64() },
            ..Leaf::bare(LeafKind::Task)
        }
    }

    #[inline]
    pub(crate) fn tasks(count: usize) -> Leaf {
        Leaf {
            arg: count.min(NONE as usize - 1) as u32,
            ..Leaf::bare(LeafKind::Tasks)
        }
    }

    #[inline]
    pub(crate) fn other(name: &'static AwaitName, count: Option<u32>) -> Leaf {
        Leaf {
            arg: count.map_or(NONE, |n| n.min(NONE - 1)),
            data: LeafData { name },
            ..Leaf::bare(LeafKind::Other)
        }
    }

    fn name(&self) -> Option<&'static AwaitName> {
        match self.kind {
            // SAFETY: these kinds are only ever written with `data.name` (the constructors
            // above are the only writers of `data`).
            LeafKind::Io | LeafKind::Sync | LeafKind::Other => Some(unsafe { self.data.name }),
            _ => None,
        }
    }

    fn number(&self) -> u64 {
        match self.kind {
            // SAFETY: every other kind is written with `data.n` (the constructors above).
            LeafKind::Io | LeafKind::Sync | LeafKind::Other => 0,
            _ => unsafe { self.data.n },
        }
    }

    /// Whether two leaves describe the same wait (names compared by text: one name may sit at
    /// two addresses when its constant is used from two crates).
    #[inline]
    pub(crate) fn same_as(&self, other: &Leaf) -> bool {
        self.kind == other.kind
            && self.arg == other.arg
            && self.len == other.len
            && match (self.name(), other.name()) {
                (Some(a), Some(b)) => std::ptr::eq(a, b) || a.0 == b.0,
                (None, None) => self.number() == other.number(),
                _ => false,
            }
    }

    /// What the leaf says, for dumps; `None` for a task not suspended yet (or being polled).
    pub(crate) fn awaiting(&self) -> Option<Awaiting> {
        let opt = |v: u32| (v != NONE).then_some(v);
        Some(match self.kind {
            LeafKind::None | LeafKind::Unset => return None,
            LeafKind::Io => Awaiting::Io {
                op: self.name()?.0,
                fd: opt(self.arg).map(|fd| fd as RawFd),
                bytes: opt(self.len),
            },
            LeafKind::Sleep => Awaiting::Sleep {
                deadline: epoch() + Duration::from_nanos(self.number()),
            },
            LeafKind::Sync => Awaiting::Sync {
                primitive: self.name()?.0,
            },
            LeafKind::Task => Awaiting::Task {
                id: TaskId(std::num::NonZeroU64::new(self.number())?),
            },
            LeafKind::Tasks => Awaiting::Tasks { count: self.arg },
            LeafKind::Promise => Awaiting::Promise,
            LeafKind::Blocking => Awaiting::Blocking,
            LeafKind::Remote => Awaiting::Remote,
            LeafKind::Other => Awaiting::Other {
                what: self.name()?.0,
                count: opt(self.arg),
            },
            LeafKind::Foreign => Awaiting::Foreign,
        })
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("kind", &self.kind)
            .field("awaiting", &self.awaiting())
            .finish()
    }
}

/// The process's reference instant for wait ticks and sleep deadlines in leaves.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` as a millisecond tick since [`epoch`], wrapping every 49.7 days.
pub(crate) fn tick_of(t: Instant) -> u32 {
    t.saturating_duration_since(epoch()).as_millis() as u32
}

/// How long ago `since` (a tick) was, at `now`.
pub(crate) fn waited_since(since: u32, now: Instant) -> Duration {
    Duration::from_millis(u64::from(tick_of(now).wrapping_sub(since)))
}

pub(crate) fn nanos_since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The names the runtime's own futures record.
pub(crate) mod names {
    use super::AwaitName;

    pub(crate) static LOCK: AwaitName = AwaitName::new("lock");
    pub(crate) static SEMAPHORE: AwaitName = AwaitName::new("semaphore");
    pub(crate) static EVENT: AwaitName = AwaitName::new("event");
    pub(crate) static CONDITION: AwaitName = AwaitName::new("condition");
    pub(crate) static QUEUE_GET: AwaitName = AwaitName::new("queue.get");
    pub(crate) static QUEUE_PUT: AwaitName = AwaitName::new("queue.put");
    pub(crate) static QUEUE_JOIN: AwaitName = AwaitName::new("queue.join");
    pub(crate) static CHANNEL_RECV: AwaitName = AwaitName::new("channel.recv");
    pub(crate) static CHANNEL_SEND: AwaitName = AwaitName::new("channel.send");
    pub(crate) static ONESHOT: AwaitName = AwaitName::new("oneshot.recv");
    pub(crate) static BRIDGE_GET: AwaitName = AwaitName::new("bridge_queue.get");
    pub(crate) static BRIDGE_PUT: AwaitName = AwaitName::new("bridge_queue.put");
    pub(crate) static YIELD: AwaitName = AwaitName::new("yield");
    /// A multishot receive: the same name as the receive ops that stand for it on epoll.
    pub(crate) static RECV: AwaitName = AwaitName::new("recv");
    /// A multishot accept: the same name as the accept op that stands for it on epoll.
    pub(crate) static ACCEPT: AwaitName = AwaitName::new("accept");
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: AwaitName = AwaitName::new("recv");

    #[test]
    fn leaves_round_trip_to_what_they_describe() {
        let io = Leaf::io(&A, 12, Some(2048));
        assert_eq!(
            io.awaiting(),
            Some(Awaiting::Io {
                op: "recv",
                fd: Some(12),
                bytes: Some(2048)
            })
        );
        assert_eq!(io.awaiting().unwrap().to_string(), "recv on fd 12 (2048 B)");
        let none = Leaf::io(&A, -1, None).awaiting().unwrap();
        assert_eq!(none.to_string(), "recv");
        let big = Leaf::io(&A, 3, Some(usize::MAX)).awaiting().unwrap();
        assert!(matches!(big, Awaiting::Io { bytes: Some(b), .. } if b == u32::MAX - 1));
        let id = TaskId(std::num::NonZeroU64::new(77).unwrap());
        assert_eq!(Leaf::task(id).awaiting(), Some(Awaiting::Task { id }));
        assert_eq!(
            Leaf::tasks(3).awaiting(),
            Some(Awaiting::Tasks { count: 3 })
        );
        assert_eq!(Leaf::NONE.awaiting(), None);
        assert_eq!(Leaf::FOREIGN.awaiting(), Some(Awaiting::Foreign));
        let deadline = epoch() + Duration::from_millis(1500);
        match Leaf::sleep(deadline).awaiting() {
            Some(Awaiting::Sleep { deadline: d }) => assert_eq!(d, deadline),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_as_compares_what_the_leaf_says() {
        static B: AwaitName = AwaitName::new("recv");
        static C: AwaitName = AwaitName::new("send");
        assert!(Leaf::io(&A, 1, None).same_as(&Leaf::io(&B, 1, None)));
        assert!(!Leaf::io(&A, 1, None).same_as(&Leaf::io(&C, 1, None)));
        assert!(!Leaf::io(&A, 1, None).same_as(&Leaf::io(&A, 2, None)));
        assert!(!Leaf::sync(&A).same_as(&Leaf::other(&A, None)));
        let id = |n| TaskId(std::num::NonZeroU64::new(n).unwrap());
        assert!(Leaf::task(id(4)).same_as(&Leaf::task(id(4))));
        assert!(!Leaf::task(id(4)).same_as(&Leaf::task(id(5))));
    }

    #[test]
    fn ticks_wrap_without_losing_short_waits() {
        let now = epoch() + Duration::from_secs(10);
        let since = tick_of(now) - 250;
        assert_eq!(waited_since(since, now), Duration::from_millis(250));
        // A tick taken just before the wrap, read just after it.
        assert_eq!(
            Duration::from_millis(u64::from(5u32.wrapping_sub(u32::MAX - 4))),
            Duration::from_millis(10)
        );
    }
}
