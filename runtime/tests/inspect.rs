//! The live view (`Builder::inspect`, `inspect_socket`): the tree over the socket is the tree
//! in the process, every command answers, a peer of another user is refused, the socket goes
//! with its runtime, and the environment variable turns it on.
//!
//! The client side of each test runs on the blocking pool (`spawn_blocking`), so the loop that
//! answers keeps turning while the client waits.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use common::backends;
use ringloop_runtime::sync::Event;
use ringloop_runtime::{
    current_task, sleep, spawn_blocking, spawn_named, task_tree, yield_now, Backend, Runtime,
};
use serde_json::Value;

/// A directory of this test's own under the temp dir.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringloop-inspect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends one request line and reads the whole answer (blocking; run it on the blocking pool).
/// A server that refuses a peer may close before the request is written: the write's error is
/// not the answer.
fn ask(path: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(line.as_bytes());
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

async fn ask_async(path: &Path, line: &'static str) -> String {
    let path = path.to_owned();
    spawn_blocking(move || ask(&path, line)).await.unwrap()
}

fn runtime(backend: Backend, socket: &Path) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .inspect_socket(socket)
        .build()
        .unwrap()
}

/// Drops the keys that change between two snapshots taken a moment apart: every task's
/// waiting time, and for the task that takes the in-process tree (running then, waiting on
/// the blocking pool while the socket's is taken) its state, wait and polls.
fn normalise(nodes: &mut Value, taker: u64) {
    let Some(map) = nodes.as_object_mut() else {
        return;
    };
    for (id, node) in map.iter_mut() {
        let obj = node.as_object_mut().unwrap();
        obj.remove("waited_ms");
        if id == &taker.to_string() {
            for k in ["state", "awaiting", "polls", "await_chain"] {
                obj.remove(k);
            }
        }
        if let Some(children) = obj.get_mut("children") {
            normalise(children, taker);
        }
    }
}

#[test]
fn the_tree_over_the_socket_is_the_tree_in_the_process() {
    for backend in backends() {
        let dir = test_dir(&format!("tree-{backend}"));
        let path = dir.join("rt.sock");
        let rt = runtime(backend, &path);
        rt.block_on(async {
            let event = Rc::new(Event::new());
            let mut tasks = Vec::new();
            for i in 0..5 {
                let e = event.clone();
                tasks.push(spawn_named(format!("worker-{i}"), async move {
                    let e2 = e.clone();
                    spawn_named("helper", async move { e2.wait().await.unwrap() })
                        .await
                        .unwrap();
                    e.wait().await.unwrap();
                }));
            }
            for _ in 0..4 {
                yield_now().await.unwrap();
            }
            let mut local: Value = serde_json::from_str(&task_tree().to_json()).unwrap();
            let answer = ask_async(&path, "tree json\n").await;
            let answer: Value = serde_json::from_str(&answer).unwrap();
            let mut remote = answer["tree"].clone();
            let me = current_task().unwrap().id().as_u64();
            normalise(&mut local, me);
            normalise(&mut remote, me);
            assert_eq!(local, remote, "{backend}");
            assert_eq!(answer["runtime"]["pid"], std::process::id());
            assert_eq!(answer["runtime"]["socket"], path.display().to_string());
            assert!(answer["runtime"]["snapshot_us"].is_u64());
            // The text forms come from the same tree.
            let text = ask_async(&path, "tree\n").await;
            assert!(text.starts_with("# ringloop "), "{text}");
            assert_eq!(text.lines().filter(|l| l.contains(" helper [")).count(), 5);
            let ps = ask_async(&path, "ps\n").await;
            let rows: Vec<&str> = ps.lines().skip(2).collect();
            assert_eq!(rows.len(), 11, "main, 5 workers, 5 helpers: {ps}");
            event.set();
            for t in tasks {
                t.await.unwrap();
            }
        });
        drop(rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn every_command_answers_and_a_wrong_one_gets_an_error() {
    for backend in backends() {
        let dir = test_dir(&format!("commands-{backend}"));
        let path = dir.join("rt.sock");
        let rt = runtime(backend, &path);
        rt.block_on(async {
            let stats: Value =
                serde_json::from_str(&ask_async(&path, "stats json\n").await).unwrap();
            assert!(stats["stats"]["tasks_alive"].as_u64().unwrap() >= 1);
            assert!(stats["stats"]["loop_iterations"].is_u64());
            let text = ask_async(&path, "stats\n").await;
            assert!(
                text.lines().any(|l| l.starts_with("tasks_alive ")),
                "{text}"
            );

            let ops: Value = serde_json::from_str(&ask_async(&path, "ops json\n").await).unwrap();
            assert!(ops["ops"]["in_flight"].is_u64(), "{ops}");
            assert!(ops["ops"]["waiting_tasks"].is_object(), "{ops}");
            let text = ask_async(&path, "ops\n").await;
            assert!(text.contains("ops in flight: "), "{text}");

            let info: Value = serde_json::from_str(&ask_async(&path, "info json\n").await).unwrap();
            assert_eq!(
                info["runtime"]["backend"]
                    .as_str()
                    .unwrap()
                    .starts_with("io_uring"),
                backend == Backend::IoUring
            );
            let line = ask_async(&path, "info\n").await;
            assert_eq!(line.lines().count(), 1, "{line}");

            for (request, expected) in [
                ("nonsense\n", "error: unknown command \"nonsense\""),
                ("tree yaml\n", "error: unknown option \"yaml\""),
                ("\n", "error: empty request"),
            ] {
                let answer = ask_async(&path, request).await;
                assert!(answer.starts_with(expected), "{request:?}: {answer}");
            }
            // A request line past the limit is refused, not buffered.
            let answer = {
                let path = path.clone();
                spawn_blocking(move || ask(&path, &"x".repeat(1000)))
                    .await
                    .unwrap()
            };
            assert!(answer.starts_with("error: request longer than"), "{answer}");
            // A client that connects and says nothing does not stall anyone else.
            let silent = {
                let path = path.clone();
                spawn_blocking(move || UnixStream::connect(&path).unwrap())
                    .await
                    .unwrap()
            };
            let answer = ask_async(&path, "info\n").await;
            assert!(answer.starts_with("# ringloop "), "{answer}");
            drop(silent);
        });
        drop(rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn the_socket_goes_with_its_runtime_and_replaces_a_stale_one() {
    let dir = test_dir("lifetime");
    let path = dir.join("rt.sock");
    // A socket left by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let rt = Runtime::builder().inspect_socket(&path).build().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(rt.inspect_socket(), Some(path.as_path()));
    rt.block_on(async {
        let answer = ask_async(&path, "info\n").await;
        assert!(answer.starts_with("# ringloop "), "{answer}");
    });
    drop(rt);
    assert!(!path.exists(), "removed when the runtime was dropped");
    // A path that holds something else is refused.
    std::fs::write(&path, b"not a socket").unwrap();
    let e = Runtime::builder()
        .inspect_socket(&path)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without the builder's say, the environment variable decides; an explicit `false` wins.
/// Run in a child process, so that the variable touches nothing else.
#[test]
fn the_environment_variable_turns_the_live_view_on() {
    if std::env::var_os("RINGLOOP_INSPECT_CHILD").is_some() {
        let rt = Runtime::new().unwrap();
        let path = rt
            .inspect_socket()
            .expect("on through the environment")
            .to_owned();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{}-0.sock", std::process::id())
        );
        assert!(path.exists());
        let off = Runtime::builder().inspect(false).build().unwrap();
        assert!(off.inspect_socket().is_none());
        let second = Runtime::new().unwrap();
        assert_eq!(
            second
                .inspect_socket()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap(),
            format!("{}-1.sock", std::process::id())
        );
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        drop(rt);
        assert!(!path.exists());
        println!("child ok");
        return;
    }
    let dir = test_dir("env");
    let sockets = dir.join("sockets");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_environment_variable_turns_the_live_view_on",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RINGLOOP_INSPECT_CHILD", "1")
        .env("RINGLOOP_INSPECT", "1")
        .env("RINGLOOP_INSPECT_DIR", &sockets)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A peer whose effective uid is not this process's is refused by `SO_PEERCRED`, whatever
/// the file modes let through. As root, a thread of this process takes another effective uid
/// for itself (the raw system call changes one thread only) and connects; the socket and its
/// directory are opened to everyone for the test, so only the credential check can refuse it.
/// Not as root, the unit tests of the check itself stand for this.
#[test]
fn a_peer_of_another_user_is_refused() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, cannot connect as another user; the unit tests check the rule");
        return;
    }
    for backend in backends() {
        let dir = test_dir(&format!("peer-{backend}"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.join("rt.sock");
        let rt = runtime(backend, &path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        rt.block_on(async {
            let p = path.clone();
            let answer = spawn_blocking(move || {
                std::thread::spawn(move || {
                    // SAFETY: changes this thread's effective uid only (the raw system call,
                    // not glibc's process-wide `setresuid`); the thread ends right after.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_setresuid,
                            -1i64 as libc::c_long,
                            65534,
                            -1i64 as libc::c_long,
                        )
                    };
                    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
                    ask(&p, "tree\n")
                })
                .join()
                .unwrap()
            })
            .await
            .unwrap();
            assert_eq!(
                answer, "refused: peer uid 65534 is not this process's uid 0\n",
                "{backend}"
            );
            // The same user is still served.
            let answer = ask_async(&path, "info\n").await;
            assert!(answer.starts_with("# ringloop "), "{answer}");
        });
        drop(rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A client that reads its answer slowly (the server's socket buffer fills, and the answer is
/// finished when there is room again) gets all of it.
#[test]
fn a_slow_reader_gets_the_whole_answer() {
    for backend in backends() {
        let dir = test_dir(&format!("slow-{backend}"));
        let path = dir.join("rt.sock");
        let rt = runtime(backend, &path);
        rt.block_on(async {
            let event = Rc::new(Event::new());
            let mut tasks = Vec::new();
            // Enough tasks for an answer larger than a socket buffer.
            for i in 0..3000 {
                let e = event.clone();
                tasks.push(spawn_named(
                    format!("task-with-a-longish-name-{i}"),
                    async move { e.wait().await.unwrap() },
                ));
            }
            yield_now().await.unwrap();
            let p = path.clone();
            let answer = spawn_blocking(move || {
                let mut s = UnixStream::connect(&p).unwrap();
                s.write_all(b"tree json\n").unwrap();
                std::thread::sleep(Duration::from_millis(100)); // the server's buffer fills
                let mut out = Vec::new();
                let mut buf = [0u8; 1000];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                out
            })
            .await
            .unwrap();
            assert!(answer.len() > 300_000, "{}", answer.len());
            let v: Value = serde_json::from_slice(&answer).unwrap();
            assert!(v["tree"].is_object());
            sleep(Duration::from_millis(1)).await.unwrap();
            event.set();
            for t in tasks {
                t.await.unwrap();
            }
        });
        drop(rt);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
