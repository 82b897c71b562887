//! `tracing` (feature `tracing`): a span per task (name, id, parent), entered for its polls, and
//! events for cancel requests, delivered cancels, panics, timeouts and op errors, captured by a
//! `tracing-subscriber` layer that records what a subscriber would see.
//!
//! `cargo test -p ringloop-runtime --features tracing --test tracing`

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backends;
use io_uring::{opcode, squeue, types};
use ringloop_runtime::{
    current_task, sleep, spawn, spawn_named, timeout, yield_now, Cancelled, Interest, Op, OpKind,
    Runtime,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// What one event looked like to a subscriber: its target, level, fields (the message under
/// `message`), and the spans it happened in, innermost first, with their fields.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
    spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Seen {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }

    /// The fields of the innermost `task` span the event happened in.
    fn task(&self) -> Option<&BTreeMap<String, String>> {
        self.spans.iter().find(|(n, _)| n == "task").map(|(_, f)| f)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

/// Records every event with its span context.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl Capture {
    fn events(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn find(&self, message: &str) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| e.message() == message)
            .collect()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let f = span
                            .extensions()
                            .get::<Fields>()
                            .map(|f| f.0.clone())
                            .unwrap_or_default();
                        (span.name().to_owned(), f)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            fields: fields.0,
            spans,
        });
    }
}

/// Runs `f` with a capturing subscriber as this thread's default.
fn captured<R>(f: impl FnOnce() -> R) -> (R, Capture) {
    let capture = Capture::default();
    let subscriber = Registry::default().with(capture.clone());
    let r = tracing::subscriber::with_default(subscriber, f);
    (r, capture)
}

#[test]
fn every_task_has_a_span_with_its_name_id_and_parent_around_its_polls() {
    let ((main_id, worker_id), capture) = captured(|| {
        Runtime::new().unwrap().block_on(async {
            let main_id = current_task().unwrap().id().as_u64();
            let worker = spawn_named("worker", async {
                tracing::info!("inside");
                yield_now().await.unwrap();
                tracing::info!("inside again");
                current_task().unwrap().id().as_u64()
            });
            (main_id, worker.await.unwrap())
        })
    });
    for message in ["inside", "inside again"] {
        let seen = capture.find(message);
        assert_eq!(seen.len(), 1, "{message}");
        let task = seen[0].task().expect("in the task's span");
        assert_eq!(task["task.name"], "worker");
        assert_eq!(task["task.id"], worker_id.to_string());
        assert_eq!(task["task.parent"], main_id.to_string());
    }
    // The main task has a span too, without a parent.
    let (_, capture) = captured(|| {
        Runtime::new()
            .unwrap()
            .block_on(async { tracing::info!("in main") })
    });
    let seen = capture.find("in main");
    let task = seen[0].task().unwrap();
    assert_eq!(task["task.name"], "main");
    assert!(!task.contains_key("task.parent"));
}

#[test]
fn a_rename_is_recorded_on_the_span() {
    let (_, capture) = captured(|| {
        Runtime::new().unwrap().block_on(async {
            current_task().unwrap().set_name("renamed");
            tracing::info!("after");
        })
    });
    assert_eq!(
        capture.find("after")[0].task().unwrap()["task.name"],
        "renamed"
    );
}

#[test]
fn cancel_requests_and_deliveries_are_events() {
    let ((), capture) = captured(|| {
        Runtime::new().unwrap().block_on(async {
            let sleeper = spawn_named("sleeper", async {
                sleep(Duration::from_secs(3600)).await?;
                Ok::<_, Cancelled>(())
            });
            yield_now().await.unwrap();
            sleeper.cancel_with("enough");
            assert!(sleeper.await.unwrap_err().is_cancelled());
        })
    });
    let requested = capture.find("cancel requested");
    assert_eq!(requested.len(), 1);
    let r = &requested[0];
    assert_eq!(r.target, "ringloop::task");
    assert_eq!(r.level, tracing::Level::DEBUG);
    assert_eq!(r.fields["task.name"], "sleeper");
    assert_eq!(r.fields["message"], "cancel requested");
    assert_eq!(
        r.task().unwrap()["task.name"],
        "main",
        "requested from main"
    );
    let delivered = capture.find("cancel delivered");
    let d = delivered
        .iter()
        .find(|d| d.task().is_some_and(|t| t["task.name"] == "sleeper"))
        .expect("delivered in the sleeper's span");
    assert_eq!(d.target, "ringloop::task");
}

#[test]
fn a_panic_is_an_error_event() {
    let ((), capture) = captured(|| {
        let rt = Runtime::builder()
            .exception_handler(|_| {})
            .build()
            .unwrap();
        rt.block_on(async {
            let t = spawn_named("doomed", async { panic!("boom") });
            assert!(t.await.unwrap_err().is_panic());
        })
    });
    let errors: Vec<Seen> = capture
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.target, "ringloop::task");
    assert_eq!(e.message(), "a task panicked");
    assert_eq!(e.fields["panic"], "boom");
    assert_eq!(e.fields["task.name"], "doomed");
}

#[test]
fn a_timeout_that_expires_is_an_event_in_its_task() {
    let ((), capture) = captured(|| {
        Runtime::new().unwrap().block_on(async {
            let t = spawn_named("impatient", async {
                timeout(Duration::from_millis(5), sleep(Duration::from_secs(3600))).await
            });
            assert!(t.await.unwrap().is_err());
        })
    });
    let seen = capture.find("timeout expired: cancelling the future inside it");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "ringloop::time");
    assert_eq!(seen[0].task().unwrap()["task.name"], "impatient");
}

/// `read` from a descriptor that cannot be read: the op fails with `EBADF`.
struct BadRead(Arc<OwnedFd>, Vec<u8>);

// SAFETY: the SQE points into `self.1`'s heap memory and names `self.0`, both owned by the op.
unsafe impl OpKind for BadRead {
    type Output = io::Result<u32>;
    const NAME: &'static str = "bad_read";

    fn sqe(&mut self) -> squeue::Entry {
        opcode::Read::new(types::Fd(self.0.as_raw_fd()), self.1.as_mut_ptr(), 1).build()
    }
    fn readiness(&self) -> (RawFd, Interest) {
        (self.0.as_raw_fd(), Interest::Read)
    }
    fn attempt(&mut self) -> io::Result<u32> {
        // SAFETY: one byte into a buffer with room for it.
        let n = unsafe { libc::read(self.0.as_raw_fd(), self.1.as_mut_ptr().cast(), 1) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as u32)
        }
    }
    fn complete(self, result: io::Result<u32>, _flags: u32) -> io::Result<u32> {
        result
    }
}

#[test]
fn an_op_error_is_an_event_with_the_op_and_the_error_on_both_backends() {
    for backend in backends() {
        let ((), capture) = captured(|| {
            Runtime::builder()
                .backend(backend)
                .build()
                .unwrap()
                .block_on(async {
                    // The write end of a pipe: reading it fails.
                    let mut fds = [0; 2];
                    // SAFETY: `pipe2` writes two descriptors into the array.
                    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                    // SAFETY: fresh descriptors of ours.
                    let (_r, w) =
                        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
                    let reader = spawn(Op::new(BadRead(Arc::new(w), Vec::with_capacity(1))));
                    assert!(reader.await.unwrap().is_err());
                })
        });
        let seen = capture.find("op failed");
        assert_eq!(seen.len(), 1, "{backend}");
        assert_eq!(seen[0].target, "ringloop::op");
        assert_eq!(seen[0].fields["op"], "bad_read");
        assert!(
            seen[0].fields["error"].contains("Bad file descriptor"),
            "{:?}",
            seen[0]
        );
        assert!(seen[0].task().is_some(), "in the reading task's span");
    }
}
