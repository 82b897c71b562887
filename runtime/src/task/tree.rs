//! The task tree: live (and optionally finished) tasks as a parent/child hierarchy.

use std::collections::HashMap;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{TaskId, TaskState};

/// One task in a [`TaskTree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNode {
    /// The task's id.
    pub id: TaskId,
    /// The task's name.
    pub name: String,
    /// Its state when the tree was taken.
    pub state: TaskState,
    /// The tasks it spawned that are in the tree, in spawn order.
    pub children: Vec<TaskNode>,
}

/// A snapshot of a runtime's tasks as a hierarchy: a task's parent is the task that spawned it.
///
/// Serialises (with serde, or [`to_json`](Self::to_json)) in the shape of asyncio's task
/// hierarchy dumps, keyed by task id in spawn order:
///
/// ```json
/// {"1": {"name": "main", "state": "running", "children": {
///     "2": {"name": "server", "state": "pending", "children": {}}}}}
/// ```
///
/// A task whose parent is not in the tree (it ended and finished tasks are not kept) is a root.
/// [`Builder::keep_finished_tasks`](crate::Builder::keep_finished_tasks) keeps ended tasks in
/// the tree for post-mortem dumps.
///
/// ```
/// use ringloop_runtime::{Runtime, spawn_named, task_tree, yield_now};
///
/// Runtime::new().unwrap().block_on(async {
///     let child = spawn_named("child", async { yield_now().await.unwrap(); });
///     let tree = task_tree();
///     assert_eq!(tree.roots[0].name, "main");
///     assert_eq!(tree.roots[0].children[0].name, "child");
///     assert!(tree.to_json().contains("\"child\""));
///     child.await.unwrap();
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
}

impl TaskTree {
    pub(crate) fn build(mut tasks: Vec<FlatTask>) -> TaskTree {
        tasks.sort_by_key(|t| t.id);
        let present: std::collections::HashSet<TaskId> = tasks.iter().map(|t| t.id).collect();
        let mut children: HashMap<TaskId, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            match t.parent {
                Some(p) if present.contains(&p) && p != t.id => {
                    children.entry(p).or_default().push(i)
                }
                _ => roots.push(i),
            }
        }
        fn node(i: usize, tasks: &[FlatTask], children: &HashMap<TaskId, Vec<usize>>) -> TaskNode {
            let t = &tasks[i];
            TaskNode {
                id: t.id,
                name: t.name.clone(),
                state: t.state,
                children: children
                    .get(&t.id)
                    .map(|c| c.iter().map(|&j| node(j, tasks, children)).collect())
                    .unwrap_or_default(),
            }
        }
        TaskTree {
            roots: roots
                .into_iter()
                .map(|i| node(i, &tasks, &children))
                .collect(),
        }
    }

    /// Finds a task anywhere in the tree.
    pub fn find(&self, id: TaskId) -> Option<&TaskNode> {
        fn walk(nodes: &[TaskNode], id: TaskId) -> Option<&TaskNode> {
            nodes.iter().find_map(|n| {
                if n.id == id {
                    Some(n)
                } else {
                    walk(&n.children, id)
                }
            })
        }
        walk(&self.roots, id)
    }

    /// Number of tasks in the tree.
    pub fn len(&self) -> usize {
        fn count(nodes: &[TaskNode]) -> usize {
            nodes.iter().map(|n| 1 + count(&n.children)).sum()
        }
        count(&self.roots)
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
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("name", &self.0.name)?;
        map.serialize_entry("state", self.0.state.as_str())?;
        map.serialize_entry("children", &Children(&self.0.children))?;
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
