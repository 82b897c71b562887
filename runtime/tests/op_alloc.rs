//! An op in steady state allocates nothing, on either backend: its data goes into a box that
//! the driver kept from a finished op of the same layout.
//!
//! Counted with a global allocator that counts the allocations of the thread that asks.

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{start_counting, stop_counting};

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue};
use ringloop_runtime::{Interest, Op, OpKind, Runtime};

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
