//! Channels between shards: `sync::mpsc` with senders on several shards and plain threads and
//! the receiver on another shard. A burst of a million messages loses nothing and keeps each
//! sender's order; closing and cancelling lose nothing; wakes between io_uring shards go
//! through their rings, and a burst costs the receiver at most one unpark per park. Both
//! backends, and a mix.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use ringloop_runtime::sync::mpsc::{self, RecvError, SendError};
use ringloop_runtime::{
    current_stats, spawn, yield_now, Backend, Placement, Runtime, RuntimeStats, Shards,
};

/// The tests of this file run one at a time: each starts several threads on a 2-core machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The backend of each shard: the receiver's, and the senders'.
#[derive(Clone, Copy, Debug)]
struct Setup {
    receiver: Backend,
    senders: Backend,
}

/// Each backend on its own, and (where io_uring is tested) io_uring senders feeding an epoll
/// receiver, whose wakes must take the eventfd.
fn setups() -> Vec<Setup> {
    let mut v: Vec<Setup> = common::backends()
        .into_iter()
        .map(|b| Setup {
            receiver: b,
            senders: b,
        })
        .collect();
    if common::uring_tested() {
        v.push(Setup {
            receiver: Backend::Epoll,
            senders: Backend::IoUring,
        });
    }
    v
}

/// The receiving shard's last index in a set of `1 + SENDER_SHARDS`.
const SENDER_SHARDS: usize = 3;
const RECEIVER: usize = SENDER_SHARDS;
/// Senders: one per sender shard, and one plain thread.
const SENDERS: usize = SENDER_SHARDS + 1;
const TOTAL: u64 = 1_000_000;
const PER_SENDER: u64 = TOTAL / SENDERS as u64;

/// What the receiving shard saw.
#[derive(Debug)]
struct Received {
    /// Messages received from each sender.
    counts: Vec<u64>,
    /// The receiving runtime's counters at the end.
    stats: RuntimeStats,
}

fn shards_for(setup: Setup, count: usize) -> ringloop_runtime::ShardsBuilder {
    Shards::builder()
        .count(count)
        .placement(Placement::Unpinned)
        .runtime(move |i| {
            let backend = if i == RECEIVER {
                setup.receiver
            } else {
                setup.senders
            };
            Runtime::builder().backend(backend)
        })
}

/// 1. Three sender shards and a plain thread each send `PER_SENDER` messages `(sender, seq)`
///    into one bounded channel, as fast as they can (the shards with `send().await`, the
///    thread with `blocking_send`).
/// 2. The receiving shard checks every message as it comes: each sender's sequence numbers
///    arrive in order, with no gap and no repeat.
/// 3. Every message arrives; the channel then reports `Closed` (every sender is gone).
#[test]
fn a_million_messages_from_several_shards_and_a_thread_arrive_whole_and_in_order_per_sender() {
    let _serial = serial();
    for setup in setups() {
        let (tx, rx) = mpsc::channel::<(usize, u64)>(256);
        let rx = Arc::new(Mutex::new(Some(rx)));
        // A sender for each shard to take, and the thread's: once they are all dropped, the
        // channel closes.
        let txs: Vec<_> = (0..SENDER_SHARDS).map(|_| Some(tx.clone())).collect();
        let txs = Arc::new(Mutex::new(txs));
        let thread_tx = tx;
        let shards = shards_for(setup, SENDER_SHARDS + 1)
            .start(move |shard| {
                let i = shard.index();
                let rx = (i == RECEIVER).then(|| rx.lock().unwrap().take().unwrap());
                let tx = (i != RECEIVER).then(|| txs.lock().unwrap()[i].take().unwrap());
                async move {
                    match (rx, tx) {
                        (Some(rx), _) => Some(receive(rx).await),
                        (None, Some(tx)) => {
                            for seq in 0..PER_SENDER {
                                tx.send((shard.index(), seq)).await.unwrap();
                            }
                            None
                        }
                        (None, None) => unreachable!("every shard has a part"),
                    }
                }
            })
            .unwrap();
        let thread = std::thread::spawn(move || {
            for seq in 0..PER_SENDER {
                thread_tx.blocking_send((SENDER_SHARDS, seq)).unwrap();
            }
        });
        thread.join().unwrap();
        let mut results = shards.join().unwrap();
        let received = results[RECEIVER].take().unwrap();
        assert_eq!(received.counts, vec![PER_SENDER; SENDERS], "{setup:?}");
        let s = received.stats;
        // Each unpark consumed the park the loop had announced: at most one per iteration.
        assert!(
            s.unparks <= s.loop_iterations,
            "{setup:?}: {} unparks in {} iterations",
            s.unparks,
            s.loop_iterations
        );
        eprintln!(
            "{setup:?}: {TOTAL} messages, receiver: {} iterations, {} parks, {} remote wakes, \
             {} unparks",
            s.loop_iterations, s.parks, s.remote_wakes, s.unparks
        );
    }
}

/// The receiving side of the burst: checks each sender's order as messages come, until every
/// sender is gone.
async fn receive(mut rx: mpsc::Receiver<(usize, u64)>) -> Received {
    let mut next = vec![0u64; SENDERS];
    loop {
        match rx.recv().await {
            Ok((sender, seq)) => {
                assert_eq!(seq, next[sender], "sender {sender}: out of order or lost");
                next[sender] += 1;
            }
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    Received {
        counts: next,
        stats: current_stats(),
    }
}

/// Where the cancel tests put their two ends.
const SENDING: usize = 0;
const RECEIVING: usize = 1;

/// 1. A sender shard streams `N` numbers into a small channel.
/// 2. The receiving shard receives each in a task of its own, and cancels every other such
///    task right after it starts waiting: its receive ends with the value it found, or
///    `Cancelled` having taken none.
/// 3. Every number arrives exactly once, in order.
#[test]
fn cancelled_receives_on_the_receiving_shard_lose_nothing() {
    const N: u64 = 20_000;
    let _serial = serial();
    for setup in setups() {
        let (tx, rx) = mpsc::channel::<u64>(4);
        let ends = Arc::new(Mutex::new((Some(tx), Some(rx))));
        let shards = shards_for_two(setup)
            .start(move |shard| {
                let (tx, rx) = {
                    let mut ends = ends.lock().unwrap();
                    match shard.index() {
                        SENDING => (ends.0.take(), None),
                        _ => (None, ends.1.take()),
                    }
                };
                async move {
                    if let Some(tx) = tx {
                        for i in 0..N {
                            tx.send(i).await.unwrap();
                        }
                        return (Vec::new(), 0);
                    }
                    let mut rx = rx.unwrap();
                    let (mut got, mut cancelled) = (Vec::new(), 0u64);
                    for round in 0.. {
                        let started = Rc::new(Cell::new(false));
                        let s = started.clone();
                        let receive = spawn(async move {
                            s.set(true);
                            // The task handles its cancel (a `Cancelled` that escaped would end
                            // it cancelled, and drop the receiver with its output).
                            let r = rx.recv().await.map_err(|e| e.is_cancelled());
                            (r, rx)
                        });
                        if round % 2 == 0 {
                            // Cancel once the receive has begun (a task cancelled before its
                            // first step never runs, and would drop the receiver unused).
                            while !started.get() {
                                yield_now().await.unwrap();
                            }
                            receive.cancel();
                        }
                        let (r, back) = receive.await.unwrap();
                        rx = back;
                        match r {
                            Ok(v) => got.push(v),
                            Err(true) => cancelled += 1,
                            Err(false) => break, // closed: every value received
                        }
                    }
                    (got, cancelled)
                }
            })
            .unwrap();
        let results = shards.join().unwrap();
        let (got, cancelled) = &results[RECEIVING];
        assert_eq!(*got, (0..N).collect::<Vec<_>>(), "{setup:?}");
        eprintln!("{setup:?}: {cancelled} receives cancelled while waiting");
    }
}

/// 1. A sender shard fills a channel of one, then starts a send that waits for room, and
///    cancels it.
/// 2. The cancelled send either gives its value back (`SendError::Cancelled`) or, if the
///    receiving shard made room first, reports it sent; the shard then sends the rest.
/// 3. The receiving shard gets every value that was reported sent, in order, and no other.
#[test]
fn a_cancelled_send_on_a_sender_shard_gives_its_value_back_or_sent_it() {
    const N: u64 = 1_000;
    let _serial = serial();
    for setup in setups() {
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel::<u64>(1);
            let ends = Arc::new(Mutex::new((Some(tx), Some(rx))));
            let shards = shards_for_two(setup)
                .start(move |shard| {
                    let (tx, rx) = {
                        let mut ends = ends.lock().unwrap();
                        match shard.index() {
                            SENDING => (ends.0.take(), None),
                            _ => (None, ends.1.take()),
                        }
                    };
                    async move {
                        if let Some(tx) = tx {
                            let tx = Rc::new(tx);
                            tx.send(0).await.unwrap(); // the channel is full now (or drained)
                            let t = tx.clone();
                            let started = Rc::new(Cell::new(false));
                            let s = started.clone();
                            let waiting = spawn(async move {
                                s.set(true);
                                // The cancel is handled here: the value comes back, and the
                                // task ends normally with it.
                                match t.send(1).await {
                                    Ok(()) => None,
                                    Err(SendError::Cancelled { value, .. }) => Some(value),
                                    Err(e) => panic!("{e}"),
                                }
                            });
                            while !started.get() {
                                yield_now().await.unwrap();
                            }
                            waiting.cancel();
                            let sent_1 = match waiting.await.unwrap() {
                                None => true,
                                Some(value) => {
                                    assert_eq!(value, 1, "the value comes back");
                                    false
                                }
                            };
                            for i in 2..N {
                                tx.send(i).await.unwrap();
                            }
                            return (sent_1, Vec::new());
                        }
                        let mut rx = rx.unwrap();
                        let mut got = Vec::new();
                        while let Ok(v) = rx.recv().await {
                            got.push(v);
                        }
                        (false, got)
                    }
                })
                .unwrap();
            let results = shards.join().unwrap();
            let sent_1 = results[SENDING].0;
            let got = &results[RECEIVING].1;
            let expected: Vec<u64> = (0..N).filter(|&i| i != 1 || sent_1).collect();
            assert_eq!(*got, expected, "{setup:?}, value 1 sent: {sent_1}");
        }
    }
}

/// Two shards, `SENDING` on the senders' backend and `RECEIVING` on the receiver's.
fn shards_for_two(setup: Setup) -> ringloop_runtime::ShardsBuilder {
    Shards::builder()
        .count(2)
        .placement(Placement::Unpinned)
        .runtime(move |i| {
            Runtime::builder().backend(if i == RECEIVING {
                setup.receiver
            } else {
                setup.senders
            })
        })
}
