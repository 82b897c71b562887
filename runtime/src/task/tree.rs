//! The task tree: live (and optionally finished) tasks as a parent/child hierarchy, with what
//! each suspended task awaits, for how long, and the await chain through awaited tasks.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::awaiting::Millis;
use super::{Awaiting, TaskId, TaskState};

/// One task in a [`TaskTree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNode {
    /// The task's id.
    pub id: TaskId,
    /// The task's name.
    pub name: String,
    /// Its state when the tree was taken.
    pub state: TaskState,
    /// What it was suspended on when the tree was taken (see [`TaskRef::awaiting`]): `None`
    /// for a task running, not polled yet, or done.
    ///
    /// [`TaskRef::awaiting`]: super::TaskRef::awaiting
    pub awaiting: Option<Awaiting>,
    /// How long it had waited on `awaiting` when the tree was taken.
    pub waited: Option<Duration>,
    /// The await chain from here: the task it awaits, the task that one awaits, and so on
    /// (asyncio's `pstree`); empty unless `awaiting` is [`Awaiting::Task`]. The last task's
    /// own `awaiting` is where the chain ends (an op, a sleep, ...).
    pub await_chain: Vec<TaskId>,
    /// How many times its future has been polled.
    pub polls: u64,
    /// The tasks it spawned that are in the tree, in spawn order.
    pub children: Vec<TaskNode>,
}

/// A snapshot of a runtime's tasks as a hierarchy: a task's parent is the task that spawned it.
///
/// Serialises (with serde, or [`to_json`](Self::to_json)) in the shape of asyncio's task
/// hierarchy dumps, keyed by task id in spawn order, with what each task awaits:
///
/// ```json
/// {"1": {"name": "main", "state": "running", "polls": 3, "awaiting": null,
///        "waited_ms": null, "await_chain": [], "children": {
///     "2": {"name": "server", "state": "pending", "polls": 1,
///           "awaiting": {"kind": "io", "op": "accept", "fd": 7, "bytes": null,
///                        "text": "accept on fd 7"},
///           "waited_ms": 1520, "await_chain": [], "children": {}}}}}
/// ```
///
/// [`to_text`](Self::to_text) draws it like `pstree`, [`ps_table`](Self::ps_table) lists it
/// like `ps`. A task whose parent is not in the tree (it ended and finished tasks are not kept)
/// is a root. [`Builder::keep_finished_tasks`](crate::Builder::keep_finished_tasks) keeps ended
/// tasks in the tree for post-mortem dumps.
///
/// ```
/// use ringloop_runtime::{Awaiting, Runtime, spawn_named, task_tree, yield_now};
///
/// Runtime::new().unwrap().block_on(async {
///     let child = spawn_named("child", async { yield_now().await.unwrap(); });
///     let waiter = spawn_named("waiter", async move { child.await.unwrap() });
///     yield_now().await.unwrap();
///     let tree = task_tree();
///     assert_eq!(tree.roots[0].name, "main");
///     assert_eq!(tree.roots[0].children[0].name, "child");
///     let w = tree.find(waiter.id()).unwrap();
///     assert!(matches!(w.awaiting, Some(Awaiting::Task { .. })));
///     assert!(tree.to_json().contains("\"child\""));
///     assert!(tree.to_text().contains("waiter"));
///     waiter.await.unwrap();
/// });
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskTree {
    /// Tasks without a parent in the tree, in spawn order.
    pub roots: Vec<TaskNode>,
}

/// A flat record the runtime hands to [`TaskTree::build`].
pub(crate) struct FlatTask {
    pub(crate) id: TaskId,
    pub(crate) parent: Option<TaskId>,
    pub(crate) name: String,
    pub(crate) state: TaskState,
    pub(crate) awaiting: Option<Awaiting>,
    pub(crate) waited: Option<Duration>,
    pub(crate) polls: u64,
}

impl FlatTask {
    /// The record of `task` now.
    pub(crate) fn of(task: &super::TaskRef, now: Instant) -> FlatTask {
        let h = task.ptr().header();
        let awaiting = task.awaiting();
        FlatTask {
            id: h.id,
            parent: h.parent,
            name: h.name(),
            state: h.state(),
            awaiting,
            waited: awaiting.map(|_| super::awaiting::waited_since(h.wait_since(), now)),
            polls: u64::from(h.polls()),
        }
    }
}

impl TaskTree {
    pub(crate) fn build(mut tasks: Vec<FlatTask>) -> TaskTree {
        tasks.sort_by_key(|t| t.id);
        let index: HashMap<TaskId, usize> =
            tasks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let mut children: HashMap<TaskId, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            match t.parent {
                Some(p) if index.contains_key(&p) && p != t.id => {
                    children.entry(p).or_default().push(i)
                }
                _ => roots.push(i),
            }
        }
        let chain = |start: &FlatTask| {
            let mut chain = Vec::new();
            if !matches!(start.awaiting, Some(Awaiting::Task { .. })) {
                return chain;
            }
            let mut seen = HashSet::from([start.id]);
            let mut next = start.awaiting;
            while let Some(Awaiting::Task { id }) = next {
                chain.push(id);
                if !seen.insert(id) {
                    break; // a cycle (a task awaiting itself, or two awaiting each other)
                }
                next = index.get(&id).and_then(|&i| tasks[i].awaiting);
            }
            chain
        };
        // Built bottom-up without recursion: a chain of spawns as deep as the tree is tall
        // must not overflow the loop's stack.
        let mut built: Vec<Option<TaskNode>> = Vec::with_capacity(tasks.len());
        for t in &tasks {
            built.push(Some(TaskNode {
                id: t.id,
                name: t.name.clone(),
                state: t.state,
                awaiting: t.awaiting,
                waited: t.waited,
                await_chain: chain(t),
                polls: t.polls,
                children: Vec::new(),
            }));
        }
        // Children have larger ids than their parents (ids only grow, and a task exists before
        // it spawns), so going from the last task to the first finishes every child first.
        for i in (0..tasks.len()).rev() {
            if let Some(kids) = children.get(&tasks[i].id) {
                let nodes: Vec<TaskNode> = kids.iter().filter_map(|&k| built[k].take()).collect();
                if let Some(n) = built[i].as_mut() {
                    n.children = nodes;
                }
            }
        }
        TaskTree {
            roots: roots.into_iter().filter_map(|i| built[i].take()).collect(),
        }
    }

    /// Finds a task anywhere in the tree.
    pub fn find(&self, id: TaskId) -> Option<&TaskNode> {
        self.iter().find(|n| n.id == id)
    }

    /// Every task in the tree, depth first, each before its children.
    pub fn iter(&self) -> impl Iterator<Item = &TaskNode> + '_ {
        let mut stack: Vec<&TaskNode> = self.roots.iter().rev().collect();
        std::iter::from_fn(move || {
            let n = stack.pop()?;
            stack.extend(n.children.iter().rev());
            Some(n)
        })
    }

    /// Number of tasks in the tree.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether the tree holds no task.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The tree as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a task tree always serialises")
    }

    /// The tree as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a task tree always serialises")
    }

    /// What a task awaits at the end of its await chain (the leaf of the last task in
    /// [`TaskNode::await_chain`], or its own), as text: `task 9 → task 12 → recv on fd 12`.
    fn chain_text(&self, n: &TaskNode, index: &HashMap<TaskId, &TaskNode>) -> String {
        let Some(awaiting) = n.awaiting else {
            return "-".to_owned();
        };
        if n.await_chain.is_empty() {
            return awaiting.to_string();
        }
        let mut s = String::new();
        for (i, id) in n.await_chain.iter().enumerate() {
            if i > 0 {
                s.push_str(" → ");
            }
            let _ = write!(s, "task {id}");
        }
        if let Some(end) = n.await_chain.last().and_then(|id| index.get(id)) {
            match end.awaiting {
                Some(Awaiting::Task { .. }) | None => {}
                Some(a) => {
                    let _ = write!(s, " → {a}");
                }
            }
        }
        s
    }

    fn index(&self) -> HashMap<TaskId, &TaskNode> {
        self.iter().map(|n| (n.id, n)).collect()
    }

    /// The tree drawn like `pstree`: one line per task (id, name, state, how long it has
    /// waited, polls) followed by what it awaits, through its await chain.
    ///
    /// ```text
    /// 1 main [running, 3 polls]
    /// ├─ 2 server [pending 1.520 s, 1 poll] accept on fd 7
    /// └─ 3 conn-1 [pending 12 ms, 5 polls] task 4 → recv on fd 9 (2048 B)
    ///    └─ 4 reader [pending 12 ms, 9 polls] recv on fd 9 (2048 B)
    /// ```
    pub fn to_text(&self) -> String {
        let index = self.index();
        let mut out = String::new();
        // (node, prefix for its children, its own connector)
        let mut stack: Vec<(&TaskNode, String, &str)> = self
            .roots
            .iter()
            .rev()
            .map(|n| (n, String::new(), ""))
            .collect();
        while let Some((n, prefix, connector)) = stack.pop() {
            let _ = write!(out, "{prefix}{connector}{} {} [", n.id, n.name);
            out.push_str(n.state.as_str());
            if let Some(w) = n.waited {
                let _ = write!(out, " {}", Millis(w));
            }
            let _ = write!(
                out,
                ", {} poll{}]",
                n.polls,
                if n.polls == 1 { "" } else { "s" }
            );
            if n.awaiting.is_some() {
                out.push(' ');
                out.push_str(&self.chain_text(n, &index));
            }
            out.push('\n');
            let child_prefix = match connector {
                "" => prefix.clone(),
                "├─ " => format!("{prefix}│  "),
                _ => format!("{prefix}   "),
            };
            let last = n.children.len().saturating_sub(1);
            for (i, c) in n.children.iter().enumerate().rev() {
                let conn = if i == last { "└─ " } else { "├─ " };
                stack.push((c, child_prefix.clone(), conn));
            }
        }
        out
    }

    /// The tasks as a flat table like `ps`, in id order: id, parent, state, how long it has
    /// waited, polls, name, and what it awaits (through its await chain).
    ///
    /// ```text
    ///    ID PARENT STATE       WAITED   POLLS NAME      AWAITING
    ///     1      - running          -       3 main      -
    ///     2      1 pending    1.520 s       1 server    accept on fd 7
    /// ```
    pub fn ps_table(&self) -> String {
        let index = self.index();
        let mut rows: Vec<(&TaskNode, Option<TaskId>)> = Vec::new();
        let mut stack: Vec<(&TaskNode, Option<TaskId>)> =
            self.roots.iter().rev().map(|n| (n, None)).collect();
        while let Some((n, parent)) = stack.pop() {
            rows.push((n, parent));
            stack.extend(n.children.iter().rev().map(|c| (c, Some(n.id))));
        }
        rows.sort_by_key(|(n, _)| n.id);
        let name_w = rows
            .iter()
            .map(|(n, _)| n.name.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 32);
        let mut out = format!(
            "{:>8} {:>8} {:<9} {:>10} {:>8} {:<name_w$} AWAITING\n",
            "ID", "PARENT", "STATE", "WAITED", "POLLS", "NAME"
        );
        for (n, parent) in rows {
            let name: String = if n.name.chars().count() > name_w {
                let mut s: String = n.name.chars().take(name_w - 1).collect();
                s.push('…');
                s
            } else {
                n.name.clone()
            };
            let _ = writeln!(
                out,
                "{:>8} {:>8} {:<9} {:>10} {:>8} {:<name_w$} {}",
                n.id,
                parent.map_or("-".to_owned(), |p| p.to_string()),
                n.state.as_str(),
                n.waited.map_or("-".to_owned(), |w| Millis(w).to_string()),
                n.polls,
                name,
                self.chain_text(n, &index),
            );
        }
        out
    }
}

struct Children<'a>(&'a [TaskNode]);

impl Serialize for Children<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for n in self.0 {
            map.serialize_entry(&n.id.to_string(), &NodeBody(n))?;
        }
        map.end()
    }
}

struct NodeBody<'a>(&'a TaskNode);

impl Serialize for NodeBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("name", &n.name)?;
        map.serialize_entry("state", n.state.as_str())?;
        map.serialize_entry("polls", &n.polls)?;
        map.serialize_entry("awaiting", &n.awaiting)?;
        map.serialize_entry("waited_ms", &n.waited.map(|w| w.as_millis() as u64))?;
        map.serialize_entry("await_chain", &n.await_chain)?;
        map.serialize_entry("children", &Children(&n.children))?;
        map.end()
    }
}

impl Serialize for TaskTree {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Children(&self.roots).serialize(s)
    }
}

impl Serialize for TaskNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        NodeBody(self).serialize(s)
    }
}

/// `{"kind": "io", "op": "recv", "fd": 12, "bytes": 2048, "text": "recv on fd 12 (2048 B)"}`:
/// the kind ([`Awaiting::kind`]), its fields (a sleep's deadline as `due_in_ms`, negative once
/// past, from the moment it is serialised), and the text the task tree shows.
impl Serialize for Awaiting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("kind", self.kind())?;
        match *self {
            Awaiting::Io { op, fd, bytes } => {
                map.serialize_entry("op", op)?;
                map.serialize_entry("fd", &fd)?;
                map.serialize_entry("bytes", &bytes)?;
            }
            Awaiting::Sleep { deadline } => {
                let now = Instant::now();
                let ms = if deadline >= now {
                    (deadline - now).as_millis() as i64
                } else {
                    -((now - deadline).as_millis() as i64)
                };
                map.serialize_entry("due_in_ms", &ms)?;
            }
            Awaiting::Sync { primitive } => map.serialize_entry("primitive", primitive)?,
            Awaiting::Task { id } => map.serialize_entry("task", &id)?,
            Awaiting::Tasks { count } => map.serialize_entry("count", &count)?,
            Awaiting::Other { what, count } => {
                map.serialize_entry("what", what)?;
                map.serialize_entry("count", &count)?;
            }
            Awaiting::Promise | Awaiting::Blocking | Awaiting::Remote | Awaiting::Foreign => {}
        }
        map.serialize_entry("text", &self.to_string())?;
        map.end()
    }
}
