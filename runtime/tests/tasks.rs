//! Tasks: names and ids, awaiting, panics and the exception handler, cancel/abort return values,
//! states, done callbacks, `current_task`, `all_tasks`, `try_result`.
//!
//! Every test builds its own runtime and asserts orders, counts and states, never durations.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use common::{panic_text, yield_now, Gate, Log};
use ringloop_runtime::{
    all_tasks, call_soon, current_task, set_exception_handler, sleep, spawn, spawn_named,
    Cancelled, Runtime, TaskError, TaskRef, TaskState,
};

/// What the exception handler saw, one entry per call.
#[derive(Debug, PartialEq)]
struct Report {
    message: String,
    task: Option<String>,
    panic: Option<String>,
}

fn runtime_with_reports() -> (Runtime, Rc<RefCell<Vec<Report>>>) {
    let reports = Rc::new(RefCell::new(Vec::new()));
    let r = reports.clone();
    let rt = Runtime::builder()
        .exception_handler(move |ctx| {
            r.borrow_mut().push(Report {
                message: ctx.message.to_owned(),
                task: ctx.task.as_ref().map(TaskRef::name),
                panic: ctx.panic_message().map(str::to_owned),
            })
        })
        .build()
        .unwrap();
    (rt, reports)
}

// ---------------------------------------------------------------------------------------------
// Names and ids
// ---------------------------------------------------------------------------------------------

#[test]
fn default_names_are_task_dash_id_and_ids_are_unique_and_increasing() {
    let rt = Runtime::new().unwrap();
    let other = Runtime::new().unwrap();
    let (ids, names) = rt.block_on(async {
        let tasks: Vec<_> = (0..20).map(|_| spawn(async {})).collect();
        let ids: Vec<_> = tasks.iter().map(|t| t.id()).collect();
        let names: Vec<_> = tasks.iter().map(|t| t.name()).collect();
        for t in tasks {
            t.await.unwrap();
        }
        (ids, names)
    });
    for (id, name) in ids.iter().zip(&names) {
        assert_eq!(name, &format!("Task-{id}"));
        assert_eq!(name, &format!("Task-{}", id.as_u64()));
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow in spawn order"
    );
    let other_id = other.block_on(async { current_task().unwrap().id() });
    let mut all: HashSet<_> = ids.into_iter().collect();
    assert!(all.insert(other_id), "ids are unique across runtimes");
    assert_eq!(all.len(), 21);
}

#[test]
fn spawn_named_names_the_task_and_set_name_renames_it() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(current_task().unwrap().name(), "main");
        let t = spawn_named("worker", async { current_task().unwrap().name() });
        assert_eq!(t.name(), "worker");
        t.as_ref().set_name("renamed");
        assert_eq!(t.name(), "renamed");
        assert_eq!(t.await.unwrap(), "renamed", "the task sees its new name");
    });
}

// ---------------------------------------------------------------------------------------------
// Awaiting, panics, the exception handler
// ---------------------------------------------------------------------------------------------

#[test]
fn awaiting_a_task_yields_ok_with_its_output_even_when_not_send() {
    let rt = Runtime::new().unwrap();
    let v = rt.block_on(async {
        let t = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            Rc::new(vec![1, 2, 3]) // !Send output
        });
        t.await.unwrap()
    });
    assert_eq!(*v, [1, 2, 3]);
    assert_eq!(Rc::strong_count(&v), 1);
}

#[test]
fn a_panicking_task_yields_panicked_is_reported_once_and_the_loop_goes_on() {
    let (rt, reports) = runtime_with_reports();
    let (err, after) = rt.block_on(async {
        let bad = spawn_named("worker", async {
            yield_now().await;
            panic!("boom {}", 42);
        });
        let good = spawn(async {
            sleep(Duration::from_millis(1)).await.unwrap();
            "still running"
        });
        (bad.await.unwrap_err(), good.await.unwrap())
    });
    assert_eq!(after, "still running");
    assert!(err.is_panic());
    assert!(!err.is_cancelled());
    assert_eq!(err.panic_message(), Some("boom 42"));
    assert_eq!(err.cancel_message(), None);
    assert_eq!(err.to_string(), "task panicked: boom 42");
    let payload = err.try_into_panic().unwrap();
    assert_eq!(
        panic_text(&*payload),
        "boom 42",
        "the payload is what panic! was given"
    );
    assert_eq!(
        *reports.borrow(),
        [Report {
            message: "a task panicked".into(),
            task: Some("worker".into()),
            panic: Some("boom 42".into()),
        }]
    );
    let s = rt.stats();
    assert_eq!(s.tasks_panicked, 1);
    assert_eq!(s.tasks_alive, 0);
}

#[test]
fn the_exception_context_displays_the_task_and_the_message() {
    let lines = Rc::new(RefCell::new(Vec::new()));
    let l = lines.clone();
    let rt = Runtime::builder()
        .exception_handler(move |ctx| l.borrow_mut().push(ctx.to_string()))
        .build()
        .unwrap();
    let id = rt.block_on(async {
        let t = spawn_named("w", async { panic!("bad") });
        let id = t.id();
        let _ = t.await;
        call_soon(|| panic!("cb bad"));
        yield_now().await;
        id
    });
    assert_eq!(
        *lines.borrow(),
        [
            format!("a task panicked in task w (id {id}): bad"),
            "a callback panicked: cb bad".to_owned()
        ]
    );
}

#[test]
fn a_panicking_callback_is_reported_without_a_task_and_the_loop_goes_on() {
    let (rt, reports) = runtime_with_reports();
    let ran_after = Rc::new(Cell::new(false));
    let r = ran_after.clone();
    rt.call_soon(|| panic!("callback boom"));
    rt.call_soon(move || r.set(true));
    rt.run_once().unwrap();
    assert!(
        ran_after.get(),
        "the next callback in the same iteration still ran"
    );
    assert_eq!(
        *reports.borrow(),
        [Report {
            message: "a callback panicked".into(),
            task: None,
            panic: Some("callback boom".into()),
        }]
    );
    assert_eq!(rt.stats().callbacks_run, 2);
    assert_eq!(rt.stats().tasks_panicked, 0);
}

#[test]
fn a_panicking_exception_handler_does_not_take_the_loop_down() {
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let rt = Runtime::builder()
        .exception_handler(move |_| {
            c.set(c.get() + 1);
            panic!("the handler itself failed");
        })
        .build()
        .unwrap();
    let r = rt.block_on(async {
        let e = spawn(async { panic!("first") }).await.unwrap_err();
        assert_eq!(e.panic_message(), Some("first"));
        spawn(async { 3 }).await.unwrap()
    });
    assert_eq!(r, 3);
    assert_eq!(calls.get(), 1);
}

#[test]
fn a_panicking_destructor_of_a_cancelled_task_is_reported_and_the_task_ends_cancelled() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("drop failed");
        }
    }
    let (rt, reports) = runtime_with_reports();
    let t = rt.block_on(async {
        let t = spawn_named("dropper", async {
            let _p = PanicOnDrop;
            std::future::pending::<()>().await;
        });
        yield_now().await;
        assert!(t.abort());
        yield_now().await;
        t.as_ref().clone()
    });
    assert_eq!(t.state(), TaskState::Cancelled);
    assert_eq!(
        *reports.borrow(),
        [Report {
            message: "a task's destructor panicked".into(),
            task: Some("dropper".into()),
            panic: Some("drop failed".into()),
        }]
    );
}

#[test]
fn set_exception_handler_replaces_the_handler_from_inside_and_outside_the_loop() {
    let (rt, first) = runtime_with_reports();
    let second = Rc::new(Cell::new(0));
    let third = Rc::new(Cell::new(0));
    let s = second.clone();
    rt.block_on(async move {
        set_exception_handler(move |_| s.set(s.get() + 1));
        let _ = spawn(async { panic!("a") }).await;
    });
    let t = third.clone();
    rt.set_exception_handler(move |_| t.set(t.get() + 1));
    rt.block_on(async {
        let _ = spawn(async { panic!("b") }).await;
    });
    assert!(first.borrow().is_empty());
    assert_eq!((second.get(), third.get()), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// cancel / abort return values; states
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_cancel_with_and_abort_return_false_once_the_task_is_done() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let finished = spawn(async { 1 });
        let cancelled = spawn(async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        let panicked = spawn(async { panic!("p") });
        yield_now().await;
        assert!(
            cancelled.cancel(),
            "first cancel of a live task is accepted"
        );
        assert!(cancelled.cancel_with("again"), "so is a second one");
        yield_now().await;
        for t in [finished.as_ref(), cancelled.as_ref(), panicked.as_ref()] {
            assert!(t.is_done(), "{t:?}");
            assert!(!t.cancel(), "{t:?}");
            assert!(!t.cancel_with("late"), "{t:?}");
            assert!(!t.abort(), "{t:?}");
        }
    });
}

#[test]
fn task_states_go_scheduled_running_pending_scheduled_finished() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let seen_inside = Rc::new(Cell::new(None));
        let (g, s) = (gate.clone(), seen_inside.clone());
        let t = spawn(async move {
            s.set(Some(current_task().unwrap().state()));
            g.wait().await;
            5
        });
        assert_eq!(t.state(), TaskState::Scheduled, "queued, not yet run");
        assert!(!t.is_done());
        yield_now().await;
        assert_eq!(seen_inside.get(), Some(TaskState::Running));
        assert_eq!(t.state(), TaskState::Pending, "suspended on the gate");
        gate.open();
        assert_eq!(t.state(), TaskState::Scheduled, "woken");
        yield_now().await;
        assert_eq!(t.state(), TaskState::Finished);
        assert!(t.is_done());
        assert!(!t.is_cancelled());
        assert_eq!(t.await.unwrap(), 5);
    });
}

#[test]
fn cancelled_and_panicked_states_and_is_cancelled() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let c = spawn(async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        let p = spawn(async {
            yield_now().await;
            panic!("p");
        });
        yield_now().await;
        assert_eq!(c.state(), TaskState::Pending);
        c.cancel();
        assert_eq!(
            c.state(),
            TaskState::Scheduled,
            "a cancel wakes the task to deliver the request"
        );
        assert!(!c.is_cancelled(), "requested, not yet ended");
        yield_now().await;
        yield_now().await;
        assert_eq!(c.state(), TaskState::Cancelled);
        assert!(c.is_cancelled() && c.is_done());
        assert_eq!(p.state(), TaskState::Panicked);
        assert!(p.is_done() && !p.is_cancelled());
        assert_eq!(TaskState::Panicked.as_str(), "panicked");
        assert!(TaskState::Cancelled.is_done() && !TaskState::Scheduled.is_done());
    });
}

// ---------------------------------------------------------------------------------------------
// Done callbacks
// ---------------------------------------------------------------------------------------------

/// Done callbacks are scheduled with call_soon when the task ends, never run inline: after the
/// iteration in which the task finished, the callback has not run; it runs in the next one.
#[test]
fn done_callback_runs_via_call_soon_in_the_next_iteration_not_inline() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    let t = rt.spawn(async move {
        l.push("body");
        9
    });
    let l = log.clone();
    t.add_done_callback(move |t| {
        assert!(current_task().is_none(), "callbacks run outside any task");
        l.push(format!("done callback: {:?}", t.state()));
    });
    rt.run_once().unwrap();
    assert!(t.is_done());
    assert_eq!(log.take(), ["body"], "not run inline at completion");
    rt.run_once().unwrap();
    assert_eq!(log.take(), ["done callback: Finished"]);
    assert_eq!(rt.stats().callbacks_run, 1);
}

#[test]
fn done_callbacks_run_after_the_awaiter_resumes_and_in_registration_order() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let l2 = l.clone();
        let child = spawn(async move {
            l2.push("child body");
            yield_now().await;
            l2.push("child returns");
        });
        for i in 1..=3 {
            let l = l.clone();
            child.add_done_callback(move |_| l.push(format!("callback {i}")));
        }
        child.await.unwrap();
        l.push("main resumed");
        yield_now().await;
    });
    assert_eq!(
        log.take(),
        [
            "child body",
            "child returns",
            "main resumed",
            "callback 1",
            "callback 2",
            "callback 3"
        ]
    );
}

#[test]
fn done_callback_on_an_already_done_task_is_scheduled_not_run_inline() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let t = spawn(async {});
        yield_now().await;
        assert!(t.is_done());
        let l2 = l.clone();
        t.add_done_callback(move |t| l2.push(format!("late callback: {:?}", t.state())));
        l.push("after add_done_callback");
        yield_now().await;
        l.push("next iteration");
    });
    assert_eq!(
        log.take(),
        [
            "after add_done_callback",
            "late callback: Finished",
            "next iteration"
        ]
    );
}

#[test]
fn done_callbacks_see_cancelled_and_panicked_outcomes() {
    let rt = Runtime::new().unwrap();
    let log = Log::default();
    let l = log.clone();
    rt.block_on(async move {
        let c = spawn_named("c", async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        let p = spawn_named("p", async { panic!("x") });
        for t in [c.as_ref(), p.as_ref()] {
            let l = l.clone();
            t.add_done_callback(move |t| l.push(format!("{}: {:?}", t.name(), t.state())));
        }
        yield_now().await;
        c.cancel();
        let _ = c.await;
        let _ = p.await;
        yield_now().await;
    });
    assert_eq!(log.take(), ["p: Panicked", "c: Cancelled"]);
}

// ---------------------------------------------------------------------------------------------
// current_task, all_tasks, try_result
// ---------------------------------------------------------------------------------------------

#[test]
fn current_task_is_the_polled_task_and_none_in_a_callback() {
    let rt = Runtime::new().unwrap();
    let in_callback = Rc::new(Cell::new(Some(true)));
    let ic = in_callback.clone();
    rt.call_soon(move || ic.set(Some(current_task().is_some())));
    rt.block_on(async {
        let main = current_task().unwrap();
        assert_eq!(main.name(), "main");
        assert_eq!(main.state(), TaskState::Running);
        let t = spawn(async { current_task().unwrap().id() });
        let id = t.id();
        assert_eq!(t.await.unwrap(), id);
        assert_eq!(
            current_task().unwrap(),
            main,
            "back in main after the await"
        );
    });
    assert_eq!(in_callback.get(), Some(false));
}

#[test]
fn all_tasks_lists_live_tasks_in_spawn_order() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let a = spawn_named("a", gate.wait());
        let done = spawn_named("done", async {});
        let b = spawn_named("b", gate.wait());
        yield_now().await;
        let names: Vec<_> = all_tasks().iter().map(TaskRef::name).collect();
        assert_eq!(names, ["main", "a", "b"], "finished tasks are not listed");
        gate.open();
        a.await.unwrap();
        b.await.unwrap();
        done.await.unwrap();
        let names: Vec<_> = all_tasks().iter().map(TaskRef::name).collect();
        assert_eq!(names, ["main"]);
    });
}

#[test]
fn try_result_is_none_while_running_then_yields_the_output_once() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let g = gate.clone();
        let mut t = spawn(async move {
            g.wait().await;
            String::from("out")
        });
        assert!(t.try_result().is_none());
        yield_now().await;
        assert!(t.try_result().is_none());
        gate.open();
        yield_now().await;
        assert_eq!(t.try_result().unwrap().unwrap(), "out");
        assert!(t.try_result().is_none(), "the output is taken once");
        assert!(t.is_done());
    });
}

#[test]
fn try_result_of_a_cancelled_task_carries_the_message() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let mut t = spawn(async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        yield_now().await;
        t.cancel_with("enough");
        yield_now().await;
        match t.try_result() {
            Some(Err(TaskError::Cancelled(c))) => assert_eq!(c.message(), Some("enough")),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn task_errors_convert_into_io_errors() {
    let rt = Runtime::new().unwrap();
    let (c, p) = rt.block_on(async {
        let c = spawn(async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        let p = spawn(async { panic!("oops") });
        yield_now().await;
        c.cancel_with("why");
        (c.await.unwrap_err(), p.await.unwrap_err())
    });
    assert_eq!(c.to_string(), "task was cancelled: why");
    let io: std::io::Error = c.into();
    assert_eq!(io.kind(), std::io::ErrorKind::Other);
    assert_eq!(io.to_string(), "task was cancelled: why");
    let io: std::io::Error = p.into();
    assert_eq!(io.to_string(), "task panicked: oops");
}

/// `poll_id`: the same number throughout one task poll, a new one at every poll, never the same
/// for two polls (of one task or of several in one loop iteration), and `None` in a callback.
#[test]
fn poll_id_names_one_task_poll_and_no_other() {
    Runtime::new().unwrap().block_on(async {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let seen = seen.clone();
            tasks.push(spawn(async move {
                for _ in 0..3 {
                    let id = ringloop_runtime::poll_id().expect("in a task poll");
                    assert_eq!(
                        ringloop_runtime::poll_id(),
                        Some(id),
                        "stable within a poll"
                    );
                    seen.borrow_mut().push(id);
                    yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let seen = seen.borrow().clone();
        assert_eq!(seen.len(), 12);
        let distinct: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            12,
            "every poll has its own number: {seen:?}"
        );
        let in_callback = Rc::new(Cell::new(Some(0)));
        let c = in_callback.clone();
        call_soon(move || c.set(ringloop_runtime::poll_id()));
        yield_now().await;
        yield_now().await;
        assert_eq!(in_callback.get(), None, "a callback is not a task poll");
    });
}
