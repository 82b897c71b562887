//! What each suspended task awaits (`TaskRef::awaiting`, the task tree's `awaiting`,
//! `await_chain` and `waited`): the leaf every kind of runtime future records, the await chain
//! through awaited tasks, and how the waiting time is kept.
//!
//! Durations are only ever bounded from the side a slow machine cannot break: a wait that
//! began before a sleep of 50 ms has waited at least about that long.

mod common;

use std::fs::File;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{backends, Gate};
use io_uring::{opcode, squeue, types};
use ringloop_runtime::sync::{
    mpsc, oneshot, BridgeQueue, Condition, Event, Lock, Queue, Semaphore,
};
use ringloop_runtime::{
    as_completed, gather, note_awaiting, shield, sleep, spawn, spawn_blocking, spawn_named,
    task_tree, timeout, wait, yield_now, AwaitName, Awaiting, Backend, Interest, LoopThread, Op,
    OpKind, Promise, ReturnWhen, Runtime, Task, TaskGroup, TaskRef, TaskState,
};

/// Runs the loop until every task has had its turn (a few iterations).
async fn settle() {
    for _ in 0..4 {
        yield_now().await.unwrap();
    }
}

fn awaiting<T>(t: &Task<T>) -> Awaiting {
    t.as_ref()
        .awaiting()
        .unwrap_or_else(|| panic!("task {} awaits nothing (state {:?})", t.id(), t.state()))
}

fn sync(primitive: &'static str) -> Awaiting {
    Awaiting::Sync { primitive }
}

// ---------------------------------------------------------------------------------------------
// I/O ops
// ---------------------------------------------------------------------------------------------

/// `read` from a pipe into an owned buffer: a user's op kind with a name of its own.
struct PipeRead {
    fd: Rc<OwnedFd>,
    buf: Vec<u8>,
}

// SAFETY: the SQE points into `self.buf`'s heap memory (owned by the op, never reallocated
// while in flight) and names `self.fd`, which the op keeps open.
unsafe impl OpKind for PipeRead {
    type Output = io::Result<usize>;
    const NAME: &'static str = "pipe_read";

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
        // SAFETY: the buffer is valid for `capacity` bytes of writes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.capacity(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as u32)
        }
    }

    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<usize> {
        result.map(|n| n as usize)
    }

    fn byte_count(&self) -> Option<usize> {
        Some(self.buf.capacity())
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> (OwnedFd, File) {
    let mut fds = [0; 2];
    // SAFETY: `pipe2` writes two descriptors into the array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

#[test]
fn an_op_shows_its_name_descriptor_and_byte_count_on_both_backends() {
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            let (r, mut w) = pipe();
            let fd = r.as_raw_fd();
            let r = Rc::new(r);
            let reader = spawn(Op::new(PipeRead {
                fd: r.clone(),
                buf: Vec::with_capacity(16),
            }));
            settle().await;
            assert_eq!(
                awaiting(&reader),
                Awaiting::Io {
                    op: "pipe_read",
                    fd: Some(fd),
                    bytes: Some(16)
                },
                "{backend}"
            );
            assert_eq!(
                awaiting(&reader).to_string(),
                format!("pipe_read on fd {fd} (16 B)")
            );
            std::io::Write::write_all(&mut w, b"x").unwrap();
            assert_eq!(reader.await.unwrap().unwrap(), 1);
        });
    }
}

/// An op kind that does not name itself is an `op`; one that moves no counted bytes says none.
#[test]
fn an_op_kind_without_a_name_is_an_op() {
    struct Unnamed(PipeRead);
    // SAFETY: delegates to `PipeRead`, whose memory and descriptor it owns.
    unsafe impl OpKind for Unnamed {
        type Output = io::Result<usize>;
        fn sqe(&mut self) -> squeue::Entry {
            self.0.sqe()
        }
        fn readiness(&self) -> (RawFd, Interest) {
            self.0.readiness()
        }
        fn attempt(&mut self) -> io::Result<u32> {
            self.0.attempt()
        }
        fn complete(self, result: io::Result<u32>, flags: u32) -> io::Result<usize> {
            self.0.complete(result, flags)
        }
    }
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            let (r, w) = pipe();
            let fd = r.as_raw_fd();
            let reader = spawn(Op::new(Unnamed(PipeRead {
                fd: Rc::new(r),
                buf: Vec::with_capacity(4),
            })));
            settle().await;
            assert_eq!(
                awaiting(&reader),
                Awaiting::Io {
                    op: "op",
                    fd: Some(fd),
                    bytes: None
                }
            );
            drop(w); // end of stream
            assert_eq!(reader.await.unwrap().unwrap(), 0);
        });
    }
}

#[test]
fn a_signal_wait_is_an_op_on_its_eventfd() {
    for backend in backends() {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        rt.block_on(async {
            let mut sig =
                ringloop_runtime::signal(ringloop_runtime::SignalKind::user_defined2()).unwrap();
            let t = spawn(async move { sig.recv().await });
            settle().await;
            assert!(
                matches!(
                    awaiting(&t),
                    Awaiting::Io {
                        op: "signal",
                        fd: Some(_),
                        bytes: None
                    }
                ),
                "{:?}",
                awaiting(&t)
            );
            t.cancel();
            let _ = t.await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sleep_shows_its_deadline_and_a_timeout_the_future_inside_it() {
    Runtime::new().unwrap().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let sleeper = spawn(ringloop_runtime::sleep_until(deadline));
        let event = Rc::new(Event::new());
        let e = event.clone();
        let timed = spawn(async move { timeout(Duration::from_secs(3600), e.wait()).await });
        settle().await;
        match awaiting(&sleeper) {
            Awaiting::Sleep { deadline: d } => {
                // Kept to the nanosecond since the process's reference instant.
                let diff = if d > deadline {
                    d - deadline
                } else {
                    deadline - d
                };
                assert!(diff < Duration::from_micros(1), "{d:?} vs {deadline:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(awaiting(&sleeper).to_string().starts_with("sleep, due in "));
        assert_eq!(awaiting(&timed), sync("event"));
        let json: serde_json::Value =
            serde_json::from_str(&task_tree().find(sleeper.id()).map(to_json).unwrap()).unwrap();
        assert_eq!(json["awaiting"]["kind"], "sleep");
        assert!(json["awaiting"]["due_in_ms"].as_i64().unwrap() > 3_000_000);
        sleeper.cancel();
        timed.cancel();
        let _ = sleeper.await;
        let _ = timed.await;
    });
}

fn to_json(n: &ringloop_runtime::TaskNode) -> String {
    serde_json::to_string(n).unwrap()
}

#[test]
fn a_yield_shows_as_a_yield_while_the_task_is_scheduled() {
    Runtime::new().unwrap().block_on(async {
        let t = spawn(async {
            for _ in 0..1000 {
                yield_now().await.unwrap();
            }
        });
        yield_now().await.unwrap();
        assert_eq!(t.state(), TaskState::Scheduled);
        assert_eq!(
            awaiting(&t),
            Awaiting::Other {
                what: "yield",
                count: None
            }
        );
        t.abort();
    });
}

// ---------------------------------------------------------------------------------------------
// Synchronisation primitives
// ---------------------------------------------------------------------------------------------

#[test]
fn each_sync_primitive_shows_which_one_and_which_side() {
    Runtime::new().unwrap().block_on(async {
        let lock = Rc::new(Lock::new(()));
        let held = lock.try_lock().unwrap();
        let l = lock.clone();
        let locker = spawn(async move { drop(l.lock().await) });

        let sem = Rc::new(Semaphore::new(0));
        let s = sem.clone();
        let acquirer = spawn(async move { drop(s.acquire().await) });

        let event = Rc::new(Event::new());
        let e = event.clone();
        let event_waiter = spawn(async move { e.wait().await });

        let cond = Rc::new(Condition::new(()));
        let c = cond.clone();
        let cond_waiter = spawn(async move {
            let guard = c.lock().await.unwrap();
            drop(c.wait(guard).await);
        });

        let empty: Rc<Queue<u8>> = Rc::new(Queue::new(1));
        let q = empty.clone();
        let getter = spawn(async move { q.get().await });
        let full: Rc<Queue<u8>> = Rc::new(Queue::new(1));
        full.put_nowait(1).unwrap();
        let q = full.clone();
        let putter = spawn(async move { q.put(2).await.is_ok() });
        let q = full.clone();
        let joiner = spawn(async move { q.join().await });

        let (tx, mut rx) = mpsc::channel::<u8>(1);
        let receiver = spawn(async move { rx.recv().await.ok() });
        let (tx2, _rx2) = mpsc::channel::<u8>(1);
        tx2.try_send(1).unwrap();
        let sender = spawn(async move { tx2.send(2).await.is_ok() });

        let (os_tx, os_rx) = oneshot::channel::<u8>();
        let oneshot_waiter = spawn(os_rx);

        let bridge: Rc<BridgeQueue<u8>> = Rc::new(BridgeQueue::new(1));
        let b = bridge.clone();
        let bridge_getter = spawn(async move { b.get().await.ok() });
        let full_bridge: Rc<BridgeQueue<u8>> = Rc::new(BridgeQueue::new(1));
        full_bridge.try_put(1).unwrap();
        let b = full_bridge.clone();
        let bridge_putter = spawn(async move { b.put(2).await.is_ok() });

        settle().await;
        assert_eq!(awaiting(&locker), sync("lock"));
        assert_eq!(awaiting(&acquirer), sync("semaphore"));
        assert_eq!(awaiting(&event_waiter), sync("event"));
        assert_eq!(awaiting(&cond_waiter), sync("condition"));
        assert_eq!(awaiting(&getter), sync("queue.get"));
        assert_eq!(awaiting(&putter), sync("queue.put"));
        assert_eq!(awaiting(&joiner), sync("queue.join"));
        assert_eq!(awaiting(&receiver), sync("channel.recv"));
        assert_eq!(awaiting(&sender), sync("channel.send"));
        assert_eq!(awaiting(&oneshot_waiter), sync("oneshot.recv"));
        assert_eq!(awaiting(&bridge_getter), sync("bridge_queue.get"));
        assert_eq!(awaiting(&bridge_putter), sync("bridge_queue.put"));

        // A condition waiter that was notified waits for the lock next, and says so.
        let guard = cond.lock().await.unwrap();
        cond.notify(1);
        settle().await;
        assert_eq!(awaiting(&cond_waiter), sync("lock"));
        drop(guard);

        drop(held);
        sem.add_permits(1);
        event.set();
        empty.put_nowait(1).unwrap();
        assert_eq!(full.get_nowait(), Some(1));
        full.task_done().unwrap();
        tx.try_send(1).unwrap();
        os_tx.send(1).unwrap();
        bridge.try_put(1).unwrap();
        assert_eq!(full_bridge.try_get().unwrap(), 1);
        locker.await.unwrap();
        acquirer.await.unwrap();
        event_waiter.await.unwrap().unwrap();
        cond_waiter.await.unwrap();
        getter.await.unwrap().unwrap();
        assert!(putter.await.unwrap());
        assert_eq!(full.get_nowait(), Some(2));
        full.task_done().unwrap();
        joiner.await.unwrap().unwrap();
        assert_eq!(receiver.await.unwrap(), Some(1));
        sender.cancel();
        let _ = sender.await;
        assert_eq!(oneshot_waiter.await.unwrap().unwrap(), 1);
        assert_eq!(bridge_getter.await.unwrap(), Some(1));
        assert!(bridge_putter.await.unwrap());
    });
}

// ---------------------------------------------------------------------------------------------
// Tasks and the await chain
// ---------------------------------------------------------------------------------------------

/// `outer` awaits `middle`, which awaits `inner`, which waits on an event: asyncio's pstree
/// shows the chain, and so does the tree (JSON and text).
#[test]
fn a_task_awaiting_a_task_shows_the_await_chain() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let e = event.clone();
        let inner = spawn_named("inner", async move { e.wait().await.unwrap() });
        let inner_id = inner.id();
        let middle = spawn_named("middle", async move { inner.await.unwrap() });
        let middle_id = middle.id();
        let outer = spawn_named("outer", async move { middle.await.unwrap() });
        settle().await;
        assert_eq!(awaiting(&outer), Awaiting::Task { id: middle_id });
        let tree = task_tree();
        let node = tree.find(outer.id()).unwrap();
        assert_eq!(node.await_chain, [middle_id, inner_id]);
        assert_eq!(tree.find(middle_id).unwrap().await_chain, [inner_id]);
        assert!(tree.find(inner_id).unwrap().await_chain.is_empty());
        let json: serde_json::Value = serde_json::from_str(&tree.to_json()).unwrap();
        let main = current_id();
        let outer_json = &json[main.to_string()]["children"][outer.id().to_string()];
        assert_eq!(outer_json["awaiting"]["kind"], "task");
        assert_eq!(outer_json["awaiting"]["task"], middle_id.as_u64());
        assert_eq!(
            outer_json["await_chain"],
            serde_json::json!([middle_id.as_u64(), inner_id.as_u64()])
        );
        let text = tree.to_text();
        let line = text
            .lines()
            .find(|l| l.contains(" outer ["))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.ends_with(&format!("task {middle_id} → task {inner_id} → event")),
            "{line}"
        );
        let ps = tree.ps_table();
        assert!(ps.lines().any(|l| l.contains("outer")
            && l.ends_with(&format!("task {middle_id} → task {inner_id} → event"))));
        event.set();
        outer.await.unwrap();
    });
}

fn current_id() -> ringloop_runtime::TaskId {
    ringloop_runtime::current_task().unwrap().id()
}

#[test]
fn combinators_show_how_many_tasks_they_wait_for() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let waiter = |e: &Rc<Event>| {
            let e = e.clone();
            spawn(async move { e.wait().await.unwrap() })
        };
        let tasks = vec![waiter(&event), waiter(&event), waiter(&event)];
        let gatherer = spawn(async move { gather(tasks).await.unwrap().len() });
        let tasks = vec![waiter(&event), waiter(&event)];
        let waiting = spawn(async move {
            let (done, pending) = wait(tasks, ReturnWhen::AllCompleted, None).await.unwrap();
            done.len() + pending.len()
        });
        let tasks = vec![waiter(&event), waiter(&event)];
        let completing = spawn(async move {
            let mut next = as_completed(tasks);
            let mut n = 0;
            while let Some(t) = next.next().await.unwrap() {
                t.await.unwrap();
                n += 1;
            }
            n
        });
        let e = event.clone();
        let group = spawn(async move {
            TaskGroup::scope(|g| async move {
                for _ in 0..4 {
                    let e = e.clone();
                    g.spawn(async move { e.wait().await });
                }
                Ok::<_, ringloop_runtime::Cancelled>(())
            })
            .await
            .is_ok()
        });
        let shielded_inner = waiter(&event);
        let shielded_id = shielded_inner.id();
        let shielding = spawn(async move { shielded_inner.shield().await.unwrap() });
        settle().await;
        assert_eq!(awaiting(&gatherer), Awaiting::Tasks { count: 3 });
        assert_eq!(awaiting(&waiting), Awaiting::Tasks { count: 2 });
        assert_eq!(awaiting(&completing), Awaiting::Tasks { count: 2 });
        assert_eq!(awaiting(&group), Awaiting::Tasks { count: 4 });
        assert_eq!(awaiting(&shielding), Awaiting::Task { id: shielded_id });
        event.set();
        assert_eq!(gatherer.await.unwrap(), 3);
        assert_eq!(waiting.await.unwrap(), 2);
        assert_eq!(completing.await.unwrap(), 2);
        assert!(group.await.unwrap());
        shielding.await.unwrap();
        // `shield(fut)` runs the future as a task of its own, and awaits that.
        let never = Rc::new(Event::new());
        let shielding = spawn(async move { shield(async move { never.wait().await }).await });
        settle().await;
        assert!(matches!(awaiting(&shielding), Awaiting::Task { .. }));
        shielding.cancel();
        assert!(shielding.await.is_err());
    });
}

// ---------------------------------------------------------------------------------------------
// Promises, blocking calls, other loops, foreign futures, named waits
// ---------------------------------------------------------------------------------------------

#[test]
fn promises_blocking_calls_and_remote_tasks_say_what_they_are() {
    let lt = LoopThread::start().unwrap();
    Runtime::new().unwrap().block_on(async {
        let promise: Promise<u8> = Promise::new();
        let p = promise.clone();
        let promised = spawn(async move { p.await.unwrap() });

        let (release, released) = std::sync::mpsc::channel::<()>();
        let blocked = spawn(async move {
            spawn_blocking(move || released.recv().unwrap())
                .await
                .unwrap()
        });

        let (remote_tx, remote_rx) = std::sync::mpsc::channel::<()>();
        let remote = lt.spawn(move || async move {
            // Wait on the other loop's blocking pool, which is woken from here.
            spawn_blocking(move || remote_rx.recv().unwrap())
                .await
                .unwrap()
        });
        let remote_waiter = spawn(async move { remote.await.unwrap() });

        settle().await;
        assert_eq!(awaiting(&promised), Awaiting::Promise);
        assert_eq!(awaiting(&blocked), Awaiting::Blocking);
        assert_eq!(awaiting(&remote_waiter), Awaiting::Remote);

        promise.set_result(5).unwrap();
        release.send(()).unwrap();
        remote_tx.send(()).unwrap();
        assert_eq!(promised.await.unwrap(), 5);
        blocked.await.unwrap();
        remote_waiter.await.unwrap();
    });
    lt.stop().unwrap();
}

#[test]
fn a_future_unknown_to_ringloop_is_foreign_unless_it_names_itself() {
    static BARRIER: AwaitName = AwaitName::new("barrier");
    Runtime::new().unwrap().block_on(async {
        let gate = Gate::default();
        let foreign = spawn(gate.wait());
        let named = spawn(poll_fn(|_| {
            note_awaiting(&BARRIER, Some(2));
            Poll::<()>::Pending
        }));
        // A note stands against the runtime futures polled after it, and replaces those
        // polled before it.
        let event = Rc::new(Event::new());
        let e = event.clone();
        let noted_first = spawn(async move {
            let mut wait = pin!(e.wait());
            poll_fn(|cx| {
                note_awaiting(&BARRIER, None);
                wait.as_mut().poll(cx).map(drop)
            })
            .await
        });
        let e = event.clone();
        let noted_last = spawn(async move {
            let mut wait = pin!(e.wait());
            poll_fn(|cx| {
                let polled = wait.as_mut().poll(cx).map(drop);
                note_awaiting(&BARRIER, Some(1));
                polled
            })
            .await
        });
        settle().await;
        assert_eq!(awaiting(&foreign), Awaiting::Foreign);
        assert_eq!(awaiting(&foreign).to_string(), "a foreign future");
        assert_eq!(
            awaiting(&named),
            Awaiting::Other {
                what: "barrier",
                count: Some(2)
            }
        );
        assert_eq!(awaiting(&named).to_string(), "barrier (2)");
        assert_eq!(
            awaiting(&noted_first),
            Awaiting::Other {
                what: "barrier",
                count: None
            }
        );
        assert_eq!(
            awaiting(&noted_last),
            Awaiting::Other {
                what: "barrier",
                count: Some(1)
            }
        );
        gate.open();
        event.set();
        foreign.await.unwrap();
        noted_first.await.unwrap();
        noted_last.await.unwrap();
        named.abort();
    });
}

/// A task not polled yet, the task being polled, and a task that ended await nothing.
#[test]
fn only_a_suspended_task_awaits_something() {
    Runtime::new().unwrap().block_on(async {
        let fresh = spawn(async {});
        assert_eq!(fresh.as_ref().awaiting(), None, "not polled yet");
        assert_eq!(fresh.as_ref().waited(), None);
        let me: TaskRef = ringloop_runtime::current_task().unwrap();
        assert_eq!(me.awaiting(), None, "running");
        let tree = task_tree();
        let node = tree.find(me.id()).unwrap();
        assert_eq!((node.awaiting, node.waited), (None, None));
        fresh.await.unwrap();
        let done = spawn(async {});
        let done_ref = done.as_ref().clone();
        done.await.unwrap();
        assert_eq!(done_ref.awaiting(), None, "done");
    });
}

/// Every poll is counted, however it ends.
#[test]
fn polls_are_counted_per_task() {
    Runtime::new().unwrap().block_on(async {
        let t = spawn(async {
            for _ in 0..5 {
                yield_now().await.unwrap();
            }
        });
        let r = t.as_ref().clone();
        t.await.unwrap();
        assert_eq!(r.polls(), 6);
        let tree = task_tree();
        let me = tree.find(current_id()).unwrap();
        assert!(me.polls >= 2, "{}", me.polls);
    });
}

// ---------------------------------------------------------------------------------------------
// How long a task has waited
// ---------------------------------------------------------------------------------------------

/// A task polled again and again while it goes on waiting on the same thing (another branch
/// of its join wakes it) keeps the start of its wait: its waiting time grows across polls.
#[test]
fn a_wait_is_timed_from_its_start_not_from_each_poll() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let e = event.clone();
        let t = spawn(async move {
            let mut wait = pin!(e.wait());
            poll_fn(|cx| {
                // The other branch: wakes the task at once, every time.
                cx.waker().wake_by_ref();
                wait.as_mut().poll(cx).map(drop)
            })
            .await
        });
        settle().await;
        let polls_before = t.as_ref().polls();
        sleep(Duration::from_millis(60)).await.unwrap();
        assert!(t.as_ref().polls() > polls_before, "polled meanwhile");
        assert_eq!(awaiting(&t), sync("event"));
        let waited = t.as_ref().waited().unwrap();
        assert!(waited >= Duration::from_millis(55), "{waited:?}");
        event.set();
        t.await.unwrap();
    });
}

/// A wait that ends and a new one on the same thing: the clock starts again with the new
/// wait, even though the leaf is the same.
#[test]
fn a_new_wait_on_the_same_thing_restarts_the_clock() {
    Runtime::new().unwrap().block_on(async {
        let queue: Rc<Queue<u8>> = Rc::new(Queue::unbounded());
        let q = queue.clone();
        let consumer = spawn(async move {
            let mut n = 0;
            while q.get().await.unwrap() != 0 {
                n += 1;
            }
            n
        });
        settle().await;
        sleep(Duration::from_millis(60)).await.unwrap();
        assert!(consumer.as_ref().waited().unwrap() >= Duration::from_millis(55));
        // Items taken at once, then a new wait on the same queue.
        let before_new_wait = Instant::now();
        for i in 1..=3 {
            queue.put_nowait(i).unwrap();
        }
        settle().await;
        assert_eq!(awaiting(&consumer), sync("queue.get"));
        let waited = consumer.as_ref().waited().unwrap();
        // The new wait began after `before_new_wait` (the tick is in whole milliseconds).
        assert!(
            waited <= before_new_wait.elapsed() + Duration::from_millis(1),
            "{waited:?}"
        );
        queue.put_nowait(0).unwrap();
        assert_eq!(consumer.await.unwrap(), 3);
    });
}

/// The tree shows each suspended task's wait with how long it has lasted; the text forms
/// show it too.
#[test]
fn the_tree_and_its_text_forms_show_waits() {
    Runtime::new().unwrap().block_on(async {
        let event = Rc::new(Event::new());
        let e = event.clone();
        let t = spawn_named("waiter", async move { e.wait().await.unwrap() });
        settle().await;
        sleep(Duration::from_millis(20)).await.unwrap();
        let tree = task_tree();
        let node = tree.find(t.id()).unwrap();
        assert_eq!(node.awaiting, Some(sync("event")));
        assert!(node.waited.unwrap() >= Duration::from_millis(15));
        assert!(node.polls >= 1);
        let json: serde_json::Value = serde_json::from_str(&to_json(node)).unwrap();
        assert!(json["waited_ms"].as_u64().unwrap() >= 15);
        assert_eq!(json["awaiting"]["kind"], "sync");
        assert_eq!(json["awaiting"]["primitive"], "event");
        assert_eq!(json["awaiting"]["text"], "event");
        let text = tree.to_text();
        let line = text.lines().find(|l| l.contains(" waiter [")).unwrap();
        assert!(line.contains("[pending "), "{line}");
        assert!(line.ends_with(" event"), "{line}");
        let ps = tree.ps_table();
        let mut lines = ps.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "PARENT", "STATE", "WAITED", "POLLS", "NAME", "AWAITING"]
        );
        let row = lines.find(|l| l.contains("waiter")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], t.id().to_string());
        assert_eq!(cols[1], current_id().to_string());
        assert_eq!(cols[2], "pending");
        assert_eq!(*cols.last().unwrap(), "event");
        event.set();
        t.await.unwrap();
    });
}

/// Unused backends still compile the helpers (the epoll-only kernel run).
#[allow(dead_code)]
fn _uses(_: Backend) {}

/// Of several runtime futures a poll leaves pending (a select polled in order), the first one
/// is shown: the main branch, not the shutdown signal beside it.
#[test]
fn of_several_pending_futures_the_first_one_polled_is_shown() {
    Runtime::new().unwrap().block_on(async {
        let work: Rc<Queue<u8>> = Rc::new(Queue::unbounded());
        let shutdown = Rc::new(Event::new());
        let (q, s) = (work.clone(), shutdown.clone());
        let t = spawn(async move {
            let mut get = pin!(q.get());
            let mut stop = pin!(s.wait());
            poll_fn(|cx| {
                if let Poll::Ready(item) = get.as_mut().poll(cx) {
                    return Poll::Ready(item.ok());
                }
                stop.as_mut().poll(cx).map(|_| None)
            })
            .await
        });
        settle().await;
        assert_eq!(awaiting(&t), sync("queue.get"));
        shutdown.set();
        assert_eq!(t.await.unwrap(), None);
    });
}
