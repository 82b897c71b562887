//! Introspection: `task_tree()` (the live tasks as a parent/child hierarchy, in the JSON shape
//! of asyncio's task-hierarchy dumps), `Builder::keep_finished_tasks`, and `Runtime::stats()`.
//!
//! JSON is parsed with serde_json and walked, never compared as text. Stats are checked for
//! exact values in scenarios driven one `run_once` at a time.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::{yield_now, Gate};
use ringloop_runtime::{
    all_tasks, current_task, sleep, spawn, spawn_named, task_tree, Cancelled, Runtime, TaskId,
    TaskRef, TaskState, TaskTree,
};
use serde_json::Value;

fn id_of(name: &str) -> TaskId {
    all_tasks()
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no live task named {name}"))
        .id()
}

/// Looks up `{"<id>": {...}}` in a JSON object of nodes and checks the node's shape: exactly the
/// keys `name`, `state`, `polls`, `awaiting`, `waited_ms`, `await_chain` and `children`.
fn node(nodes: &Value, id: TaskId) -> &Value {
    let n = nodes
        .get(id.to_string())
        .unwrap_or_else(|| panic!("no node {id} in {nodes}"));
    let obj = n.as_object().expect("a node is an object");
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "await_chain",
            "awaiting",
            "children",
            "name",
            "polls",
            "state",
            "waited_ms"
        ],
        "node {id}: {n}"
    );
    assert!(n["children"].is_object());
    assert!(n["await_chain"].is_array());
    assert!(n["polls"].is_u64());
    n
}

fn child_ids(n: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = n["children"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().expect("children are keyed by task id"))
        .collect();
    ids.sort_unstable();
    ids
}

// ---------------------------------------------------------------------------------------------
// task_tree
// ---------------------------------------------------------------------------------------------

/// main ─┬─ server ─┬─ handler-1 ── helper
///       │          └─ handler-2
///       └─ watcher
#[test]
fn task_tree_json_nests_children_under_the_task_that_spawned_them() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let g = gate.clone();
        let server = spawn_named("server", async move {
            let g1 = g.clone();
            let h1 = spawn_named("handler-1", async move {
                spawn_named("helper", g1.wait()).await.unwrap();
            });
            let h2 = spawn_named("handler-2", g.wait());
            h1.await.unwrap();
            h2.await.unwrap();
        });
        let watcher = spawn_named("watcher", gate.wait());
        for _ in 0..3 {
            yield_now().await;
        }
        let json: Value = serde_json::from_str(&task_tree().to_json()).unwrap();
        let roots = json.as_object().unwrap();
        let main_id = current_task().unwrap().id();
        assert_eq!(roots.len(), 1, "only main is a root: {json}");
        let main = node(&json, main_id);
        assert_eq!(main["name"], "main");
        assert_eq!(
            main["state"], "running",
            "the tree was taken from inside main"
        );
        let (server_id, watcher_id) = (id_of("server"), id_of("watcher"));
        assert_eq!(child_ids(main), [server_id.as_u64(), watcher_id.as_u64()]);
        let srv = node(&main["children"], server_id);
        assert_eq!(srv["name"], "server");
        assert_eq!(srv["state"], "pending");
        let (h1_id, h2_id) = (id_of("handler-1"), id_of("handler-2"));
        assert_eq!(child_ids(srv), [h1_id.as_u64(), h2_id.as_u64()]);
        let h1 = node(&srv["children"], h1_id);
        let helper = node(&h1["children"], id_of("helper"));
        assert_eq!(helper["name"], "helper");
        assert_eq!(helper["state"], "pending");
        assert!(child_ids(helper).is_empty());
        assert!(child_ids(node(&srv["children"], h2_id)).is_empty());
        assert!(child_ids(node(&main["children"], watcher_id)).is_empty());
        // The typed tree says the same.
        let tree = task_tree();
        assert_eq!(tree.len(), 6);
        assert_eq!(tree.roots.len(), 1);
        let srv = tree.find(server_id).unwrap();
        assert_eq!(
            srv.children
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["handler-1", "handler-2"]
        );
        // (Of one snapshot: how long each task has waited changes from one to the next.)
        assert_eq!(
            serde_json::from_str::<Value>(&tree.to_json_pretty()).unwrap(),
            serde_json::from_str::<Value>(&tree.to_json()).unwrap(),
            "pretty and compact JSON agree"
        );
        gate.open();
        server.await.unwrap();
        watcher.await.unwrap();
    });
    assert!(rt.task_tree().is_empty(), "nothing alive, nothing kept");
}

#[test]
fn task_tree_states_show_scheduled_running_and_pending() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let waiting = spawn_named("waiting", gate.wait());
        yield_now().await;
        let fresh = spawn_named("fresh", async {});
        let tree = task_tree();
        let state = |id| tree.find(id).unwrap().state;
        assert_eq!(state(current_task().unwrap().id()), TaskState::Running);
        assert_eq!(state(waiting.id()), TaskState::Pending);
        assert_eq!(state(fresh.id()), TaskState::Scheduled);
        let json: Value = serde_json::from_str(&tree.to_json()).unwrap();
        let main = node(&json, current_task().unwrap().id());
        assert_eq!(node(&main["children"], waiting.id())["state"], "pending");
        assert_eq!(node(&main["children"], fresh.id())["state"], "scheduled");
        gate.open();
        waiting.await.unwrap();
        fresh.await.unwrap();
    });
}

/// A task whose parent has ended (and is not kept) is shown as a root.
#[test]
fn a_task_whose_parent_ended_becomes_a_root() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Gate::default();
        let g = gate.clone();
        let parent = spawn_named("parent", async move {
            spawn_named("orphan", g.wait()).as_ref().clone()
        });
        let parent_id = parent.id();
        let orphan: TaskRef = parent.await.unwrap();
        yield_now().await;
        assert_eq!(
            orphan.parent_id(),
            Some(parent_id),
            "the parent is still recorded"
        );
        let json: Value = serde_json::from_str(&task_tree().to_json()).unwrap();
        let main_id = current_task().unwrap().id();
        let mut roots: Vec<u64> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        roots.sort_unstable();
        assert_eq!(roots, [main_id.as_u64(), orphan.id().as_u64()]);
        assert_eq!(node(&json, orphan.id())["name"], "orphan");
        assert!(child_ids(node(&json, main_id)).is_empty());
        gate.open();
        yield_now().await;
    });
}

#[test]
fn parent_ids_are_the_spawning_task_and_none_for_tasks_spawned_from_outside() {
    let rt = Runtime::new().unwrap();
    let outside = rt.spawn(async { current_task().unwrap().parent_id() });
    let (main_id, inner_parent, grandchild_parent, child_id) = rt.block_on(async {
        let main_id = current_task().unwrap().id();
        let child = spawn(async {
            let me = current_task().unwrap();
            let gc = spawn(async { current_task().unwrap().parent_id() });
            (me.parent_id(), gc.await.unwrap(), me.id())
        });
        let (p, gp, cid) = child.await.unwrap();
        (main_id, p, gp, cid)
    });
    assert_eq!(inner_parent, Some(main_id));
    assert_eq!(grandchild_parent, Some(child_id));
    assert!(rt.block_on(outside).unwrap().is_none());
}

/// `keep_finished_tasks(true)`: ended tasks stay in the tree with their final states and their
/// place in the hierarchy, for post-mortem dumps.
#[test]
fn keep_finished_tasks_keeps_ended_tasks_with_their_final_states() {
    let rt = Runtime::builder()
        .keep_finished_tasks(true)
        .exception_handler(|_| {})
        .build()
        .unwrap();
    let ids = rt.block_on(async {
        let ok = spawn_named("ok", async {
            spawn_named("ok-child", async {}).await.unwrap();
        });
        let cancelled = spawn_named("cancelled", async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        let panicked = spawn_named("panicked", async { panic!("post-mortem") });
        let leftover = spawn_named("leftover", async {
            sleep(Duration::from_secs(3600)).await?;
            Ok::<_, Cancelled>(())
        });
        yield_now().await;
        cancelled.cancel();
        let ids = [
            current_task().unwrap().id(),
            ok.id(),
            cancelled.id(),
            panicked.id(),
            leftover.id(),
        ];
        ok.await.unwrap();
        let _ = cancelled.await;
        let _ = panicked.await;
        ids // `leftover` is cancelled by block_on's shutdown
    });
    let [main_id, ok_id, cancelled_id, panicked_id, leftover_id] = ids;
    let tree: TaskTree = rt.task_tree();
    assert_eq!(tree.len(), 6);
    assert_eq!(tree.roots.len(), 1);
    let json: Value = serde_json::from_str(&tree.to_json()).unwrap();
    let main = node(&json, main_id);
    assert_eq!(main["name"], "main");
    assert_eq!(main["state"], "finished");
    let kids = &main["children"];
    assert_eq!(
        child_ids(main),
        [
            ok_id.as_u64(),
            cancelled_id.as_u64(),
            panicked_id.as_u64(),
            leftover_id.as_u64()
        ]
    );
    let ok = node(kids, ok_id);
    assert_eq!(ok["state"], "finished");
    let ok_child = &ok["children"].as_object().unwrap();
    assert_eq!(ok_child.len(), 1);
    let (_, grandchild) = ok_child.iter().next().unwrap();
    assert_eq!(grandchild["name"], "ok-child");
    assert_eq!(grandchild["state"], "finished");
    assert_eq!(node(kids, cancelled_id)["state"], "cancelled");
    assert_eq!(node(kids, panicked_id)["state"], "panicked");
    assert_eq!(node(kids, leftover_id)["state"], "cancelled");
    assert_eq!(node(kids, panicked_id)["name"], "panicked");
}

#[test]
fn without_keep_finished_tasks_ended_tasks_leave_the_tree() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let t = spawn_named("short", async {});
        yield_now().await;
        assert!(t.is_done());
        assert!(task_tree().find(t.id()).is_none());
        assert_eq!(task_tree().len(), 1, "main only");
    });
    assert!(rt.task_tree().is_empty());
    assert_eq!(rt.task_tree().to_json(), "{}");
}

// ---------------------------------------------------------------------------------------------
// stats
// ---------------------------------------------------------------------------------------------

/// Every counter checked exactly, one loop iteration at a time.
#[test]
fn stats_counters_match_exact_expectations_iteration_by_iteration() {
    let reports = Rc::new(Cell::new(0));
    let r = reports.clone();
    let rt = Runtime::builder()
        .exception_handler(move |_| r.set(r.get() + 1))
        .build()
        .unwrap();
    let s = rt.stats();
    assert_eq!(
        (s.tasks_alive, s.tasks_spawned, s.polls, s.loop_iterations),
        (0, 0, 0, 0)
    );

    // Iteration 1: a task that finishes at once, a task that sleeps, a callback.
    let quick = rt.spawn(async { 1 });
    quick.add_done_callback(|_| {});
    let sleeper = rt.spawn(async {
        sleep(Duration::from_secs(3600)).await?;
        Ok::<_, Cancelled>(())
    });
    rt.call_soon(|| {});
    let s = rt.stats();
    assert_eq!((s.tasks_spawned, s.tasks_alive, s.polls), (2, 2, 0));
    rt.run_once().unwrap();
    let s = rt.stats();
    assert_eq!(s.loop_iterations, 1);
    assert_eq!(s.tasks_spawned, 2);
    assert_eq!(s.tasks_alive, 1);
    assert_eq!(s.tasks_completed, 1);
    assert_eq!(s.polls, 2);
    assert_eq!(
        s.callbacks_run, 1,
        "the done callback waits for the next iteration"
    );
    assert_eq!(s.timers_pending, 1);
    assert_eq!(s.parks, 0);
    assert_eq!(s.remote_wakes, 0);

    // Iteration 2: the sleeper is cancelled from outside the loop (through the injector), and
    // the done callback runs. Nothing blocks: the injected wake counts, not a park.
    assert!(sleeper.cancel());
    rt.run_once().unwrap();
    let s = rt.stats();
    assert_eq!(s.loop_iterations, 2);
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.tasks_cancelled, 1);
    assert_eq!(s.polls, 3);
    assert_eq!(s.callbacks_run, 2);
    assert_eq!(s.timers_pending, 0);
    assert_eq!(s.remote_wakes, 1);
    assert_eq!(s.parks, 0);

    // Iteration 3: a panicking task.
    let _p = rt.spawn(async { panic!("counted") });
    rt.run_once().unwrap();
    let s = rt.stats();
    assert_eq!(s.loop_iterations, 3);
    assert_eq!(s.tasks_panicked, 1);
    assert_eq!(s.polls, 4);
    assert_eq!(reports.get(), 1);

    // Iterations 4 and 5: a task arms a timer, then the loop parks until it fires.
    let t = rt.spawn(async { sleep(Duration::from_millis(20)).await.unwrap() });
    rt.run_once().unwrap();
    assert_eq!(rt.stats().timers_pending, 1);
    while !t.is_done() {
        rt.run_once().unwrap();
    }
    let s = rt.stats();
    // One park suffices on a real clock (the wait is rounded up, never short). Under an
    // emulated CPU the guest's clock was seen to end a wait just short of the deadline (5.10
    // in `.ci/kernels`): that costs another park, never a busy loop or an early poll.
    let extra_parks = s.loop_iterations - 5;
    assert!(extra_parks <= 2, "woken early again and again: {s:?}");
    assert_eq!(
        s.parks,
        1 + extra_parks,
        "every later iteration parked: {s:?}"
    );
    assert_eq!(
        s.polls, 6,
        "the task was polled once more, when its timer fired"
    );
    assert_eq!(s.timers_pending, 0);
    assert_eq!(
        (
            s.tasks_spawned,
            s.tasks_completed,
            s.tasks_cancelled,
            s.tasks_panicked
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(s.tasks_alive, 0);
    assert_eq!(s.callbacks_run, 2);
}

#[test]
fn stats_of_a_block_on_count_the_main_task_and_its_children() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let a = spawn(async { yield_now().await });
        let b = spawn(async {});
        a.await.unwrap();
        b.await.unwrap();
    });
    let s = rt.stats();
    assert_eq!(s.tasks_spawned, 3);
    assert_eq!(s.tasks_completed, 3);
    assert_eq!(s.tasks_alive, 0);
    // main: 2 polls (start; after `a` ends, when `b` is already done), `a`: 2 (it yields
    // once), `b`: 1.
    assert_eq!(s.polls, 5);
}

#[test]
fn stats_serialise_to_json_with_every_counter() {
    let rt = Runtime::new().unwrap();
    rt.block_on(async {});
    let json: Value = serde_json::to_value(rt.stats()).unwrap();
    for key in [
        "tasks_alive",
        "tasks_spawned",
        "tasks_completed",
        "tasks_cancelled",
        "tasks_panicked",
        "polls",
        "callbacks_run",
        "timers_pending",
        "loop_iterations",
        "parks",
        "remote_wakes",
        "unparks",
        "msg_ring_wakes",
    ] {
        assert!(json[key].is_u64(), "{key} missing in {json}");
    }
    assert_eq!(json["tasks_spawned"], 1);
}
