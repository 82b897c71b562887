//! A connection echoing messages in steady state allocates nothing per message on either
//! backend: the receive comes from the buffer pool, the send op's box is one the driver kept
//! from a finished op, and a wake moves a task reference.
//!
//! Counted with a global allocator that counts the allocations of the thread that asks; the
//! loop, the server and the client all run on that thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::localhost;
use ringloop_net::{TcpListener, TcpStream};
use ringloop_runtime::spawn;

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

const WARM_UP: usize = 200;
const COUNTED: usize = 1000;

both_backends! {
    async fn an_echo_in_steady_state_allocates_nothing_per_message() {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut rx = conn.pooled_receiver();
            while let Some(chunk) = rx.recv().await.unwrap() {
                let (r, _) = conn.write_all(chunk).await;
                r.unwrap();
            }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let mut msg = vec![0u8; 64];
        let mut reply = Vec::with_capacity(64);
        let mut allocations = 0;
        for round in 0..WARM_UP + COUNTED {
            if round == WARM_UP {
                COUNT.with(|c| c.set(Some(0)));
            }
            msg.fill(round as u8);
            let (r, m) = client.write_all(msg).await;
            r.unwrap();
            msg = m;
            reply.clear();
            let (r, got) = client.read_exact(reply).await;
            r.unwrap();
            assert_eq!(got, msg, "round {round}");
            reply = got;
        }
        allocations += COUNT.with(|c| c.replace(None)).unwrap_or(0);
        drop(client);
        server.await.unwrap();
        assert!(
            allocations == 0,
            "{COUNTED} echoed messages allocated {allocations} times"
        );
    }
}
