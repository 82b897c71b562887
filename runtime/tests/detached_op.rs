//! Ops started with `start_detached`: nobody awaits them, the loop runs their `complete` when
//! the completion comes, and their memory lives until then, whatever the caller drops.

mod common;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::{opcode, squeue, types};
use ringloop_runtime::{start_detached, Backend, Detached, Interest, OpKind, Runtime};

/// A read from a pipe into an owned buffer, whose completion records its result (the op's
/// effect) and whose buffer counts how many places hold it.
struct PipeRead {
    fd: Rc<OwnedFd>,
    buf: Vec<u8>,
    /// Counts the places that hold the op's data.
    _alive: Rc<()>,
    done: Rc<RefCell<Option<io::Result<Vec<u8>>>>>,
    panic: bool,
}

// SAFETY: the SQE points into `self.buf`'s heap memory (owned by the op, never reallocated
// while in flight) and names `self.fd`, which the op keeps open.
unsafe impl OpKind for PipeRead {
    type Output = ();

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.fd.as_raw_fd()),
            self.buf.as_mut_ptr(),
            self.buf.capacity() as u32,
        )
        .build()
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (self.fd.as_raw_fd(), Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        unreachable!("a detached op on io_uring that does not ask to be tried first")
    }

    fn complete(mut self, result: io::Result<u32>, _flags: u32) {
        let result = result.map(|n| {
            // SAFETY: the kernel wrote `n` bytes at the start of the buffer.
            unsafe { self.buf.set_len(n as usize) };
            std::mem::take(&mut self.buf)
        });
        *self.done.borrow_mut() = Some(result);
        if self.panic {
            panic!("a detached op's completion panics");
        }
    }
}

type Done = Rc<RefCell<Option<io::Result<Vec<u8>>>>>;

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (Rc<OwnedFd>, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors `pipe2` writes.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        0
    );
    // SAFETY: both are fresh descriptors nobody else owns.
    unsafe {
        (
            Rc::new(OwnedFd::from_raw_fd(fds[0])),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn write(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: `bytes` is valid for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

fn read_op(fd: &Rc<OwnedFd>, panic: bool) -> (PipeRead, Rc<()>, Done) {
    let alive = Rc::new(());
    let done = Done::default();
    let op = PipeRead {
        fd: fd.clone(),
        buf: Vec::with_capacity(16),
        _alive: alive.clone(),
        done: done.clone(),
        panic,
    };
    (op, alive, done)
}

fn uring() -> Option<Runtime> {
    common::runs_on(Backend::IoUring).then(|| {
        Runtime::builder()
            .backend(Backend::IoUring)
            .build()
            .unwrap()
    })
}

#[test]
fn a_detached_op_completes_by_itself_and_its_data_lives_until_then() {
    let Some(rt) = uring() else { return };
    let (rx, tx) = pipe();
    rt.block_on(async {
        let (op, alive, done) = read_op(&rx, false);
        // 1. Nothing to read: the op goes to the kernel, and the caller keeps no part of it.
        let running = match start_detached(op) {
            Ok(Detached::Running(running)) => running,
            _ => panic!("an empty pipe's read waits"),
        };
        drop(running); // dropping the handle leaves the op running
        for _ in 0..3 {
            common::yield_now().await;
        }
        assert!(done.borrow().is_none());
        assert_eq!(
            Rc::strong_count(&alive),
            2,
            "the op table holds the op's data"
        );
        // 2. Data comes: the loop runs `complete`, and the data goes right after it.
        write(&tx, b"detached");
        for _ in 0..20 {
            if done.borrow().is_some() {
                break;
            }
            ringloop_runtime::sleep(Duration::from_millis(1))
                .await
                .unwrap();
        }
        let got = done.borrow_mut().take().expect("completed").unwrap();
        assert_eq!(got, b"detached");
        assert_eq!(Rc::strong_count(&alive), 1, "finished and freed");
    });
    assert_eq!(rt.stats().ops_in_flight, 0);
}

#[test]
fn a_cancelled_detached_op_still_completes_once() {
    let Some(rt) = uring() else { return };
    let (rx, _tx) = pipe();
    let alive = rt.block_on(async {
        let (op, alive, done) = read_op(&rx, false);
        let Ok(Detached::Running(running)) = start_detached(op) else {
            panic!("an empty pipe's read waits");
        };
        common::yield_now().await;
        running.cancel();
        running.cancel(); // one cancel is enough; a second one changes nothing
        for _ in 0..20 {
            if done.borrow().is_some() {
                break;
            }
            ringloop_runtime::sleep(Duration::from_millis(1))
                .await
                .unwrap();
        }
        let err = done.borrow_mut().take().expect("completed").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
        running.cancel(); // after the completion: nothing to cancel
        alive
    });
    assert_eq!(Rc::strong_count(&alive), 1);
    assert_eq!(rt.stats().ops_in_flight, 0);
}

#[test]
fn a_runtime_dropped_with_a_detached_op_in_flight_completes_it_first() {
    let Some(rt) = uring() else { return };
    let (rx, _tx) = pipe();
    let (alive, done) = rt.block_on(async {
        let (op, alive, done) = read_op(&rx, false);
        assert!(matches!(start_detached(op), Ok(Detached::Running(_))));
        (alive, done)
    });
    assert_eq!(Rc::strong_count(&alive), 2);
    drop(rt);
    let err = done.borrow_mut().take().expect("completed").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECANCELED));
    assert_eq!(Rc::strong_count(&alive), 1);
}

#[test]
fn a_panicking_completion_is_reported_and_the_loop_goes_on() {
    if !common::runs_on(Backend::IoUring) {
        return;
    }
    let reported = Rc::new(Cell::new(0));
    let seen = reported.clone();
    let rt = Runtime::builder()
        .backend(Backend::IoUring)
        .exception_handler(move |ctx| {
            assert_eq!(
                ctx.panic_message(),
                Some("a detached op's completion panics")
            );
            seen.set(seen.get() + 1);
        })
        .build()
        .unwrap();
    let (rx, tx) = pipe();
    rt.block_on(async {
        let (op, alive, done) = read_op(&rx, true);
        assert!(matches!(start_detached(op), Ok(Detached::Running(_))));
        write(&tx, b"x");
        for _ in 0..20 {
            if done.borrow().is_some() {
                break;
            }
            ringloop_runtime::sleep(Duration::from_millis(1))
                .await
                .unwrap();
        }
        common::yield_now().await;
        assert!(done.borrow().is_some());
        assert_eq!(Rc::strong_count(&alive), 1, "freed despite the panic");
    });
    assert_eq!(reported.get(), 1);
}

#[test]
fn on_epoll_the_op_comes_back_unstarted() {
    let rt = Runtime::builder().backend(Backend::Epoll).build().unwrap();
    let (rx, _tx) = pipe();
    rt.block_on(async {
        let (op, alive, done) = read_op(&rx, false);
        let Err(op) = start_detached(op) else {
            panic!("epoll cannot run a detached op");
        };
        assert_eq!(Rc::strong_count(&alive), 2);
        drop(op);
        assert_eq!(Rc::strong_count(&alive), 1);
        assert!(done.borrow().is_none(), "never completed");
    });
}
