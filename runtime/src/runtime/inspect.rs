//! The live view's server: the listener, its connections, and the answers, all driven by the
//! loop itself between iterations (see `crate::inspect` for the protocol and the bounds).
//!
//! Nothing here is a task. The listener and each connection wait in a poll op of the loop's
//! own driver, polled with a waker that only raises a flag; the loop checks the flag once per
//! iteration (`Core::run_once`, after the timers) and then calls [`Inspector::turn`], which
//! accepts, reads and writes with non-blocking system calls until each socket would block,
//! and arms a new poll op for it. So the loop never blocks here, and a slow or stuck client
//! costs a poll op and a few hundred bytes until its deadline closes it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::Core;
use crate::driver::errno::{is_interrupted, is_would_block};
use crate::driver::{Op, SharedFd};
use crate::inspect::{self, Ready};
use crate::time::heap::{TimerAction, TimerKey};

/// Connections served at once; more are told `error: busy`.
const MAX_CONNS: usize = 8;
/// The longest request line.
const MAX_REQUEST: usize = 256;
/// How long a connection may take, request and answer together.
const CONN_DEADLINE: Duration = Duration::from_secs(10);
/// Bytes written to one connection per turn; the rest in a later iteration.
const WRITE_BUDGET: usize = 1 << 20;
/// How long the listener rests after an accept that failed for want of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The commands, for error messages.
const COMMANDS: &str = "tree, ps, stats, ops, metrics or info";

/// Counts the inspected runtimes of this process: the `<n>` of `<pid>-<n>.sock`.
static NEXT_SERIAL: AtomicU32 = AtomicU32::new(0);

/// The flag the server's waker raises: "something for the live view".
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A runtime's live view: where it is served, and the server.
pub(crate) struct Inspector {
    flag: Arc<Flag>,
    path: PathBuf,
    /// The socket's device and inode: removed at the end only if it is still ours.
    ident: (u64, u64),
    serial: u32,
    server: RefCell<Server>,
}

struct Server {
    /// The listening socket as bound, until the first turn makes it `listener` inside the
    /// runtime (so a registered file table, if any, is this runtime's).
    bound: Option<OwnedFd>,
    listener: Option<SharedFd>,
    /// The poll op the listener waits in.
    accept: Option<Op<Ready>>,
    /// Accepting failed for want of descriptors or memory: not before this.
    retry_at: Option<Instant>,
    conns: Vec<Conn>,
    waker: Waker,
}

struct Conn {
    fd: SharedFd,
    request: Vec<u8>,
    /// The request line outgrew [`MAX_REQUEST`]: answered with an error.
    too_long: bool,
    /// The answer and how much of it was written, once the request is complete.
    answer: Option<(Vec<u8>, usize)>,
    /// The poll op it waits in, when a system call would block.
    ready: Option<Op<Ready>>,
    deadline: Instant,
    timer: TimerKey,
}

/// What became of a connection in a turn.
enum Progress {
    /// Waits in its poll op (or for the next turn).
    Waiting,
    /// Answered, failed or timed out: close it.
    Done,
}

impl Inspector {
    /// Binds the socket: at `path`, or at `<socket_dir>/<pid>-<n>.sock`.
    pub(crate) fn bind(path: Option<PathBuf>) -> io::Result<Inspector> {
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let path = match path {
            Some(p) => p,
            None => {
                let dir = inspect::socket_dir();
                inspect::ensure_private_dir(&dir)?;
                dir.join(format!("{}-{serial}.sock", std::process::id()))
            }
        };
        let (listener, ident) = inspect::bind_listener(&path)?;
        let flag = Arc::new(Flag::default());
        // The first turn arms the listener's poll op.
        flag.0.store(true, Ordering::Relaxed);
        let waker = Waker::from(flag.clone());
        Ok(Inspector {
            flag,
            path,
            ident,
            serial,
            server: RefCell::new(Server {
                bound: Some(listener),
                listener: None,
                accept: None,
                retry_at: None,
                conns: Vec::new(),
                waker,
            }),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a turn is due: something woke the server, or work was left for this iteration.
    #[inline]
    pub(crate) fn pending(&self) -> bool {
        self.flag.0.load(Ordering::Relaxed)
    }

    /// Serves what is ready: new connections, requests, answers. Called by the loop when
    /// [`pending`](Self::pending), between iterations, with the loop entered.
    pub(crate) fn turn(&self, core: &Core) {
        self.flag.0.store(false, Ordering::Relaxed);
        let mut server = self.server.borrow_mut();
        let server = &mut *server;
        server.accept_new(core);
        let now = Instant::now();
        let mut snapshots = 1;
        let mut more = false;
        let waker = server.waker.clone();
        server.conns.retain_mut(|conn| {
            let progress = if now >= conn.deadline {
                Progress::Done
            } else {
                conn.progress(self, core, &waker, &mut snapshots, &mut more)
            };
            match progress {
                Progress::Waiting => true,
                Progress::Done => {
                    core.timers.cancel(conn.timer);
                    discard_input(conn.fd.raw());
                    false
                }
            }
        });
        if more {
            // Work left for the next iteration, which must not park first.
            self.flag.0.store(true, Ordering::Relaxed);
        }
    }

    /// The header line of a text answer.
    fn header(&self, core: &Core, took: Duration) -> String {
        format!(
            "# ringloop {}-{} thread '{}' {}: {} tasks, snapshot {:.3} ms\n",
            std::process::id(),
            self.serial,
            thread_name(),
            core.describe_backend(),
            core.tasks.borrow().len(),
            took.as_secs_f64() * 1e3,
        )
    }

    /// The `runtime` object of a JSON answer.
    fn info(&self, core: &Core, took: Duration) -> serde_json::Value {
        serde_json::json!({
            "pid": std::process::id(),
            "id": self.serial,
            "thread": thread_name(),
            "backend": core.describe_backend(),
            "socket": self.path.display().to_string(),
            "tasks": core.tasks.borrow().len(),
            "snapshot_us": took.as_micros() as u64,
        })
    }

    /// The answer to one request line.
    fn answer(&self, core: &Core, request: &[u8]) -> Vec<u8> {
        let line = String::from_utf8_lossy(request);
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let json = match words.next() {
            None => false,
            Some("json") => true,
            Some(other) => {
                return format!("error: unknown option {other:?} (expected json)\n").into_bytes()
            }
        };
        let start = Instant::now();
        let body: Result<(String, serde_json::Value), String> = match command {
            "tree" | "ps" => {
                let tree = core.task_tree();
                if json {
                    Ok((tree.to_json(), serde_json::Value::Null))
                } else if command == "tree" {
                    Ok((tree.to_text(), serde_json::Value::Null))
                } else {
                    Ok((tree.ps_table(), serde_json::Value::Null))
                }
            }
            "stats" => {
                let stats = core.stats();
                let value = serde_json::to_value(stats).expect("stats serialise");
                Ok((stats_text(&value), value))
            }
            "ops" => {
                let ops = ops_table(core);
                Ok((ops_text(core, &ops), ops))
            }
            "metrics" => {
                let runtime = format!("{}-{}", std::process::id(), self.serial);
                Ok((
                    core.metrics_text(&[("runtime", &runtime)]),
                    serde_json::Value::Null,
                ))
            }
            "info" => Ok((String::new(), serde_json::Value::Null)),
            "" => Err(format!("error: empty request (expected {COMMANDS})")),
            other => Err(format!(
                "error: unknown command {other:?} (expected {COMMANDS})"
            )),
        };
        let took = start.elapsed();
        match body {
            Err(e) => format!("{e}\n").into_bytes(),
            // Prometheus text, as a collector reads it: no header, never JSON.
            Ok((text, _)) if command == "metrics" => text.into_bytes(),
            Ok((text, value)) if json => {
                // `{"runtime": ..., "<key>": ...}`, the tree written straight from its own
                // serialiser (no intermediate value: it is the large one).
                let info = serde_json::to_string(&self.info(core, took)).expect("info serialises");
                let body = match command {
                    "info" => None,
                    "tree" | "ps" => Some(("tree", text)),
                    c => Some((c, serde_json::to_string(&value).expect("answers serialise"))),
                };
                let mut s = format!("{{\"runtime\":{info}");
                if let Some((key, json)) = body {
                    let _ = write!(s, ",\"{key}\":{json}");
                }
                s.push_str("}\n");
                s.into_bytes()
            }
            Ok((text, _)) => {
                let mut s = self.header(core, took);
                s.push_str(&text);
                s.into_bytes()
            }
        }
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        inspect::remove_socket(&self.path, self.ident);
    }
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

fn stats_text(value: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(map) = value.as_object() {
        let w = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let _ = writeln!(out, "{k:<w$} {v}");
        }
    }
    out
}

/// The op table: how many tasks wait on each op kind now, what each kind's ops did, and the
/// driver's count of ops in flight.
fn ops_table(core: &Core) -> serde_json::Value {
    let mut waiting: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for (_, t) in core.tasks.borrow().iter() {
        let r = crate::TaskRef::new(t.clone());
        if let Some(crate::Awaiting::Io { op, .. }) = r.awaiting() {
            *waiting.entry(op).or_default() += 1;
        }
    }
    let stats = core.stats();
    serde_json::json!({
        "in_flight": stats.ops_in_flight,
        "waiting_tasks": waiting,
        "kinds": core.op_stats(),
    })
}

/// The op table: per op kind, the tasks waiting on it now, then what its ops did since the
/// runtime started (the latencies as the upper bounds of their buckets).
fn ops_text(core: &Core, ops: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "OP", "WAITING", "COMPLETED", "IMMEDIATE", "ERRORS", "CANCELS", "DROPPED", "P50", "P99"
    );
    let kinds = core.op_stats();
    let mut names: Vec<&str> = kinds.iter().map(|k| k.op).collect();
    if let Some(map) = ops["waiting_tasks"].as_object() {
        for op in map.keys() {
            if !names.contains(&op.as_str()) {
                names.push(op);
            }
        }
    }
    let quantile = |k: Option<&crate::OpKindStats>, q| match k.map(|k| k.latency_quantile_us(q)) {
        Some(Some(us)) => format!("≤{}", Millis(Duration::from_micros(us))),
        Some(None) if k.is_some_and(|k| k.completed > k.immediate) => ">33 s".to_owned(),
        _ => "-".to_owned(),
    };
    for name in names {
        let waiting = ops["waiting_tasks"][name].as_u64().unwrap_or(0);
        let k = kinds.iter().find(|k| k.op == name);
        let n = |f: fn(&crate::OpKindStats) -> u64| k.map_or(0, f);
        let _ = writeln!(
            out,
            "{name:<16} {waiting:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10}",
            n(|k| k.completed),
            n(|k| k.immediate),
            n(|k| k.errors),
            n(|k| k.cancelled),
            n(|k| k.dropped),
            quantile(k, 0.5),
            quantile(k, 0.99),
        );
    }
    let _ = writeln!(out, "ops in flight: {}", ops["in_flight"]);
    out
}

/// A latency as `512 µs`, `1.024 ms` or `2.097 s`.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        if us < 1000 {
            write!(f, "{us} µs")
        } else if us < 1_000_000 {
            write!(f, "{}.{:03} ms", us / 1000, us % 1000)
        } else {
            write!(f, "{}.{:03} s", us / 1_000_000, (us / 1000) % 1000)
        }
    }
}

impl Server {
    /// Accepts what waits in the listener's backlog, then waits in a new poll op.
    fn accept_new(&mut self, core: &Core) {
        if let Some(fd) = self.bound.take() {
            self.listener = Some(SharedFd::new(fd));
        }
        let Some(listener) = self.listener.clone() else {
            return;
        };
        if let Some(op) = &mut self.accept {
            if poll(op, &self.waker).is_pending() {
                return;
            }
            self.accept = None;
        }
        if let Some(at) = self.retry_at {
            if Instant::now() < at {
                return; // backing off (below); the timer wakes us
            }
            self.retry_at = None;
        }
        loop {
            // SAFETY: accepting on a descriptor the listener keeps open; the new descriptor
            // is owned at once.
            let fd = unsafe {
                libc::accept4(
                    listener.raw(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if is_interrupted(&e) {
                    continue;
                }
                if is_would_block(&e) {
                    break; // drained
                }
                // Out of descriptors (`EMFILE`) or memory: the connection stays in the
                // backlog, and the poll op would fire again at once, turning the loop without
                // rest. Try again in a while instead, woken by a timer.
                let at = Instant::now() + ACCEPT_BACKOFF;
                self.retry_at = Some(at);
                core.timers.add(at, TimerAction::Wake(self.waker.clone()));
                return;
            }
            // SAFETY: `fd` is fresh and ours.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `geteuid` cannot fail.
            let me = unsafe { libc::geteuid() };
            let allowed = inspect::peer_credentials(fd.as_raw_fd())
                .map_err(|e| format!("refused: cannot read the peer's credentials: {e}"))
                .and_then(|cred| inspect::peer_allowed(&cred, me));
            if let Err(why) = allowed {
                say_and_close(fd, &why);
                continue;
            }
            if self.conns.len() >= MAX_CONNS {
                say_and_close(fd, "error: busy (too many live-view connections)");
                continue;
            }
            let deadline = Instant::now() + CONN_DEADLINE;
            let timer = core
                .timers
                .add(deadline, TimerAction::Wake(self.waker.clone()));
            self.conns.push(Conn {
                fd: SharedFd::new(fd),
                request: Vec::new(),
                too_long: false,
                answer: None,
                ready: None,
                deadline,
                timer,
            });
        }
        let mut op = Op::new(Ready {
            fd: listener,
            events: libc::POLLIN,
        });
        if poll(&mut op, &self.waker).is_pending() {
            self.accept = Some(op);
        } else {
            // Ready at once (epoll's first check): come back next iteration.
            self.waker.wake_by_ref();
        }
    }
}

impl Conn {
    fn progress(
        &mut self,
        inspector: &Inspector,
        core: &Core,
        waker: &Waker,
        snapshots: &mut u32,
        more: &mut bool,
    ) -> Progress {
        if let Some(op) = &mut self.ready {
            match poll(op, waker) {
                Poll::Pending => return Progress::Waiting,
                Poll::Ready(_) => self.ready = None,
            }
        }
        if self.answer.is_none() {
            match self.read() {
                Ok(Some(true)) => {}
                Ok(Some(false)) => return self.wait(libc::POLLIN, waker),
                Ok(None) | Err(_) => return Progress::Done,
            }
            if *snapshots == 0 {
                *more = true;
                return Progress::Waiting;
            }
            *snapshots -= 1;
            let answer = if self.too_long {
                format!("error: request longer than {MAX_REQUEST} bytes\n").into_bytes()
            } else {
                let line = self.request.split(|&b| b == b'\n').next().unwrap_or(&[]);
                inspector.answer(core, line)
            };
            self.answer = Some((answer, 0));
        }
        let Some((answer, written)) = &mut self.answer else {
            return Progress::Done;
        };
        let mut budget = WRITE_BUDGET;
        while *written < answer.len() {
            if budget == 0 {
                *more = true;
                return Progress::Waiting;
            }
            let chunk = &answer[*written..];
            let chunk = &chunk[..chunk.len().min(budget)];
            // SAFETY: sends from a live slice on a descriptor we keep open; never blocks.
            let n = unsafe {
                libc::send(
                    self.fd.raw(),
                    chunk.as_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if is_interrupted(&e) {
                    continue;
                }
                if is_would_block(&e) {
                    return self.wait(libc::POLLOUT, waker);
                }
                return Progress::Done;
            }
            *written += n as usize;
            budget -= n as usize;
        }
        Progress::Done
    }

    /// Reads what has come of the request: `Some(true)` once it is complete (a newline, or the
    /// end of the stream after some bytes), `Some(false)` if more must come, `None` if the
    /// peer went without a request. A request too long is answered with an error.
    fn read(&mut self) -> io::Result<Option<bool>> {
        let mut buf = [0u8; MAX_REQUEST];
        loop {
            let room = MAX_REQUEST - self.request.len();
            if room == 0 {
                self.too_long = true;
                return Ok(Some(true));
            }
            // SAFETY: reads into a live local buffer of at least `room` bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.raw(),
                    buf.as_mut_ptr().cast(),
                    room,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if is_interrupted(&e) {
                    continue;
                }
                if is_would_block(&e) {
                    return Ok(Some(false));
                }
                return Err(e);
            }
            if n == 0 {
                return Ok((!self.request.is_empty()).then_some(true));
            }
            let got = &buf[..n as usize];
            self.request.extend_from_slice(got);
            if got.contains(&b'\n') {
                return Ok(Some(true));
            }
        }
    }

    /// Waits in a new poll op for `events`.
    fn wait(&mut self, events: i16, waker: &Waker) -> Progress {
        let mut op = Op::new(Ready {
            fd: self.fd.clone(),
            events,
        });
        if poll(&mut op, waker).is_pending() {
            self.ready = Some(op);
        } else {
            // Ready at once (epoll's first check): come back next iteration.
            waker.wake_by_ref();
        }
        Progress::Waiting
    }
}

/// Polls an op with the server's waker.
fn poll(op: &mut Op<Ready>, waker: &Waker) -> Poll<io::Result<()>> {
    Pin::new(op).poll(&mut Context::from_waker(waker))
}

/// Best effort: one line to a peer we will not serve, then close.
fn say_and_close(fd: OwnedFd, line: &str) {
    let line = format!("{line}\n");
    // SAFETY: sends from a live buffer on a descriptor we own; never blocks.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            line.as_ptr().cast(),
            line.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    discard_input(fd.as_raw_fd());
}

/// Reads and drops what the peer sent and we did not read (at most 64 KiB, never waiting)
/// before a close: a Unix socket closed with unread data makes the peer's next read fail with
/// `ECONNRESET`, which could hide the answer it has not read yet.
fn discard_input(fd: std::os::fd::RawFd) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: reads into a live local buffer; never blocks.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return;
        }
    }
}
