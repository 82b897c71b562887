//! What one op costs the runtime: `N` `NOP` ops awaited one after another, nothing else going
//! on, so an instruction count divided by `N` is the op future's and the driver's share. For
//! `valgrind --tool=callgrind`, whose counts do not depend on the machine's load:
//!
//! ```text
//! cargo build --release -p ringloop-runtime --example op_cost
//! for n in 100000 200000; do
//!     RINGLOOP_BACKEND=uring valgrind --tool=callgrind --callgrind-out-file=/tmp/op.$n \
//!         target/release/examples/op_cost $n
//! done
//! # instructions per op: (Ir at 200000 - Ir at 100000) / 100000 (the setup cancels out)
//! ```
//!
//! The backend comes from `RINGLOOP_BACKEND` (`uring` or `epoll`). A second argument measures
//! ops with a deadline that never passes: `deadline` (`Op::timeout`, one op) or `scope` (the op
//! inside an `async` block bounded with `DeadlineExt::timeout`).

use std::io;
use std::os::fd::RawFd;

use std::time::Duration;

use ringloop_runtime::{DeadlineExt, Interest, Op, OpKind, Runtime};

/// `IORING_OP_NOP`; on epoll an attempt that succeeds at once.
struct Nop;

// SAFETY: a NOP names no memory and no descriptor.
unsafe impl OpKind for Nop {
    type Output = io::Result<u32>;
    fn sqe(&mut self) -> io_uring::squeue::Entry {
        io_uring::opcode::Nop::new().build()
    }
    fn readiness(&self) -> (RawFd, Interest) {
        (0, Interest::Read)
    }
    fn attempt(&mut self) -> io::Result<u32> {
        Ok(0)
    }
    fn complete(self, result: io::Result<u32>, _: u32) -> io::Result<u32> {
        result
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let far = Duration::from_secs(3600);
    let rt = Runtime::new().expect("runtime");
    rt.block_on(async {
        // One loop per mode, so the plain one is the same code as before deadlines existed.
        match mode.as_str() {
            "deadline" => {
                for _ in 0..n {
                    Op::new(Nop).timeout(far).await.expect("nop");
                }
            }
            "scope" => {
                for _ in 0..n {
                    async { Op::new(Nop).await }
                        .timeout(far)
                        .await
                        .expect("nop");
                }
            }
            _ => {
                for _ in 0..n {
                    Op::new(Nop).await.expect("nop");
                }
            }
        }
    });
    println!(
        "{} ops ({}) on {}; size_of::<Op<Nop>>() = {}",
        n,
        if mode.is_empty() { "plain" } else { &mode },
        rt.backend(),
        std::mem::size_of::<Op<Nop>>()
    );
}
