//! A global allocator that counts the allocations of the thread that asks, for tests that pin
//! "no allocation in steady state". Shared by the runtime's and the net crate's tests (the net
//! tests include this file by path); each test binary that declares this module gets the
//! allocator as its `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

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

/// Starts counting this thread's allocations (a loop running on this thread included).
pub fn start_counting() {
    COUNT.with(|c| c.set(Some(0)));
}

/// Stops counting; the allocations since [`start_counting`].
pub fn stop_counting() -> usize {
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}
