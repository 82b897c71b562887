//! An op in steady state allocates nothing, on either backend: its data goes into a box that
//! the driver kept from a finished op of the same layout.
//!
//! Counted with a global allocator that counts the allocations of the thread that asks.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue};
use ringloop_runtime::{Interest, Op, OpKind, Runtime};

struct Counting;

thread_local! {
    /// Allocations on this thread while counting is on; `None` when off.
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn bump() {
    // `try_with`: the allocator may run while the thread's locals are being torn down.
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a thread-local
// `Cell` that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts counting this thread's allocations (the loop's included: it runs on this thread).
fn start_counting() {
    COUNT.with(|c| c.set(Some(0)));
}

/// Stops counting; the allocations since [`start_counting`].
fn stop_counting() -> usize {
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

/// A no-op with some data, like a send holding its buffer and descriptor.
struct Nop {
    payload: [u64; 6],
}

// SAFETY: a NOP names no memory and no descriptor.
unsafe impl OpKind for Nop {
    type Output = io::Result<u64>;

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Nop::new().build()
    }

    fn readiness(&self) -> (RawFd, Interest) {
        (0, Interest::Read)
    }

    fn attempt(&mut self) -> io::Result<u32> {
        Ok(0)
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<u64> {
        result.map(|_| self.payload.iter().sum())
    }
}

#[test]
fn ops_in_steady_state_allocate_nothing() {
    for backend in common::backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            // Warm up: the driver's free list, the ready queue and the completion tables reach
            // their working size.
            for i in 0..100u64 {
                let sum = Op::new(Nop { payload: [i; 6] }).await.unwrap();
                assert_eq!(sum, 6 * i);
            }
            start_counting();
            for i in 0..1000u64 {
                let sum = Op::new(Nop { payload: [i; 6] }).await.unwrap();
                assert_eq!(sum, 6 * i);
            }
            let allocations = stop_counting();
            assert_eq!(
                allocations, 0,
                "{backend:?}: 1000 ops in steady state allocated {allocations} times"
            );
        });
    }
}
