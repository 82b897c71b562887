//! The runtime's counters as Prometheus text: [`RuntimeStats`] and, per op kind, counts and a
//! latency histogram ([`OpKindStats`]).
//!
//! [`Runtime::metrics_text`](crate::Runtime::metrics_text) (and [`metrics_text`](crate::metrics_text)
//! inside a runtime) give the running runtime's; the live view serves the same on its socket
//! (`ringloop-ps PID metrics`), labelled with the runtime (`runtime="<pid>-<n>"`); [`prometheus`]
//! renders any snapshot. The text is Prometheus's exposition format 0.0.4: serve it on an HTTP
//! endpoint of your own, or have a collector run `ringloop-ps`.
//!
//! ```
//! let rt = ringloop_runtime::Runtime::new().unwrap();
//! rt.block_on(async { ringloop_runtime::sleep(std::time::Duration::from_millis(1)).await.unwrap() });
//! let text = rt.metrics_text();
//! assert!(text.contains("# TYPE ringloop_tasks_spawned_total counter\nringloop_tasks_spawned_total 1\n"));
//! ```
//!
//! Counters end in `_total`; `tasks_alive`, `timers_pending`, `ops_in_flight` and
//! `pooled_buffers_out` are gauges. `ringloop_op_latency_seconds` is a
//! histogram per op kind (label `op`) with buckets at powers of two of microseconds, from 1 µs
//! to 2^25 µs (about 33.5 s): the time from an op's submission (io_uring) or readiness wait
//! (epoll) to its completion, on the loop's clock, which is read once per loop iteration.

use std::fmt::Write as _;

use crate::driver::opstats::{latency_bucket_bound_us, OpKindStats};
use crate::stats::RuntimeStats;

/// Each [`RuntimeStats`] field as a metric: its name, whether it is a gauge, and its help.
const STATS: &[(&str, bool, &str)] = &[
    ("tasks_alive", true, "Tasks spawned and not yet ended."),
    ("tasks_spawned", false, "Tasks ever spawned."),
    ("tasks_completed", false, "Tasks that returned a value."),
    (
        "tasks_cancelled",
        false,
        "Tasks that ended by cancellation.",
    ),
    ("tasks_panicked", false, "Tasks that panicked."),
    ("polls", false, "Task polls."),
    ("callbacks_run", false, "Callbacks run."),
    ("timers_pending", true, "Armed timers."),
    ("loop_iterations", false, "Loop iterations."),
    ("parks", false, "Times the loop blocked in the driver."),
    ("remote_wakes", false, "Wakes that came from other threads."),
    (
        "unparks",
        false,
        "Times another thread woke the parked loop.",
    ),
    (
        "msg_ring_wakes",
        false,
        "Wakes sent to other io_uring loops through this loop's ring.",
    ),
    (
        "kernel_enters",
        false,
        "io_uring_enter or epoll_wait calls.",
    ),
    (
        "driver_syscalls",
        false,
        "System calls of the driver and its ops.",
    ),
    (
        "ops_submitted",
        false,
        "I/O ops submitted to the kernel (io_uring).",
    ),
    (
        "ops_completed",
        false,
        "I/O op completions reaped (io_uring).",
    ),
    ("ops_cancelled", false, "I/O ops cancelled in the kernel."),
    ("ops_in_flight", true, "I/O ops in flight."),
    (
        "zero_copy_notifications",
        false,
        "Zero-copy sends whose buffer the kernel released.",
    ),
    (
        "recv_bundles",
        false,
        "Receive completions that filled more than one pool buffer.",
    ),
    (
        "cq_overflows",
        false,
        "Times the completion queue overflowed (nothing lost).",
    ),
    (
        "cq_dropped",
        false,
        "Completions the kernel dropped (out of memory).",
    ),
    (
        "ops_timed_out",
        false,
        "Ops that ended because their deadline passed first.",
    ),
    (
        "cancels_missed",
        false,
        "Cancels that found nothing to cancel.",
    ),
    (
        "buffer_exhaustions",
        false,
        "Times a receive found the buffer pool empty.",
    ),
    ("pooled_buffers_out", true, "Pool buffers lent out."),
];

/// A per-op-kind metric: its name, its help, and its value.
type PerKind = (&'static str, &'static str, fn(&OpKindStats) -> u64);

/// Renders `stats` and `ops` as Prometheus text, every sample labelled with `labels` (e.g.
/// `[("runtime", "4242-0")]`; empty for none).
pub fn prometheus(stats: &RuntimeStats, ops: &[OpKindStats], labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(4096 + ops.len() * 2048);
    let base = label_set(labels, &[]);
    let values = serde_json::to_value(stats).expect("stats serialise");
    for &(field, gauge, help) in STATS {
        let value = values[field].as_u64().unwrap_or(0);
        let name = if gauge {
            format!("ringloop_{field}")
        } else {
            format!("ringloop_{field}_total")
        };
        header(
            &mut out,
            &name,
            if gauge { "gauge" } else { "counter" },
            help,
        );
        let _ = writeln!(out, "{name}{base} {value}");
    }
    let per_kind: [PerKind; 5] = [
        (
            "ringloop_op_completed_total",
            "Ops that finished, per op kind.",
            |k| k.completed,
        ),
        (
            "ringloop_op_immediate_total",
            "Ops that finished without waiting, per op kind.",
            |k| k.immediate,
        ),
        (
            "ringloop_op_errors_total",
            "Ops that finished with an error, per op kind.",
            |k| k.errors,
        ),
        (
            "ringloop_op_cancelled_total",
            "Ops that were cancelled, per op kind.",
            |k| k.cancelled,
        ),
        (
            "ringloop_op_dropped_total",
            "Ops whose future was dropped while they waited, per op kind.",
            |k| k.dropped,
        ),
    ];
    if !ops.is_empty() {
        for (name, help, get) in per_kind {
            header(&mut out, name, "counter", help);
            for k in ops {
                let l = label_set(labels, &[("op", k.op)]);
                let _ = writeln!(out, "{name}{l} {}", get(k));
            }
        }
        let name = "ringloop_op_latency_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from an op's submission or readiness wait to its completion, on the loop's \
             clock (read once per loop iteration), per op kind.",
        );
        for k in ops {
            let mut cumulative = 0;
            for (i, n) in k.latency_buckets.iter().enumerate() {
                cumulative += n;
                let le = match latency_bucket_bound_us(i) {
                    Some(us) => seconds(us),
                    None => "+Inf".to_owned(),
                };
                let l = label_set(labels, &[("op", k.op), ("le", &le)]);
                let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
            }
            let l = label_set(labels, &[("op", k.op)]);
            let _ = writeln!(out, "{name}_sum{l} {}", seconds(k.latency_sum_us));
            let _ = writeln!(out, "{name}_count{l} {cumulative}");
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="x",b="y"}`, or nothing for no labels.
fn label_set(base: &[(&str, &str)], more: &[(&str, &str)]) -> String {
    if base.is_empty() && more.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in base.iter().chain(more).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// `us` microseconds in seconds, exactly (`0.000512`).
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stats_field_is_a_metric() {
        let value = serde_json::to_value(RuntimeStats::default()).unwrap();
        let fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let named: Vec<&str> = STATS.iter().map(|s| s.0).collect();
        for f in &fields {
            assert!(named.contains(f), "RuntimeStats::{f} has no metric");
        }
        assert_eq!(fields.len(), named.len());
    }

    #[test]
    fn the_text_is_prometheus_exposition_format() {
        let stats = RuntimeStats {
            tasks_alive: 3,
            polls: 40,
            ..RuntimeStats::default()
        };
        let mut send = OpKindStats {
            op: "send",
            completed: 3,
            immediate: 1,
            errors: 0,
            cancelled: 0,
            dropped: 0,
            latency_buckets: [0; crate::driver::opstats::LATENCY_BUCKETS],
            latency_sum_us: 1_500_003,
        };
        send.latency_buckets[0] = 1;
        send.latency_buckets[21] = 1;
        let text = prometheus(&stats, &[send], &[("runtime", "7-0")]);
        assert!(text.contains(
            "# TYPE ringloop_tasks_alive gauge\nringloop_tasks_alive{runtime=\"7-0\"} 3\n"
        ));
        assert!(text.contains("ringloop_polls_total{runtime=\"7-0\"} 40\n"));
        assert!(text.contains("ringloop_op_completed_total{runtime=\"7-0\",op=\"send\"} 3\n"));
        assert!(text.contains(
            "ringloop_op_latency_seconds_bucket{runtime=\"7-0\",op=\"send\",le=\"0.000001\"} 1\n"
        ));
        assert!(text.contains(
            "ringloop_op_latency_seconds_bucket{runtime=\"7-0\",op=\"send\",le=\"1.048576\"} 1\n"
        ));
        assert!(text.contains(
            "ringloop_op_latency_seconds_bucket{runtime=\"7-0\",op=\"send\",le=\"2.097152\"} 2\n"
        ));
        assert!(text.contains(
            "ringloop_op_latency_seconds_bucket{runtime=\"7-0\",op=\"send\",le=\"+Inf\"} 2\n"
        ));
        assert!(text
            .contains("ringloop_op_latency_seconds_sum{runtime=\"7-0\",op=\"send\"} 1.500003\n"));
        assert!(text.contains("ringloop_op_latency_seconds_count{runtime=\"7-0\",op=\"send\"} 2\n"));
        // Every sample line is `name{labels} value`, and every metric has one TYPE line.
        let mut types = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(
                    types.insert(rest.split(' ').next().unwrap().to_owned()),
                    "{line}"
                );
            } else if !line.starts_with("# HELP ") {
                let (_, value) = line.rsplit_once(' ').unwrap();
                value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            label_set(&[("a", "x\"y\\z\n")], &[]),
            "{a=\"x\\\"y\\\\z\\n\"}"
        );
        assert_eq!(label_set(&[], &[]), "");
    }
}
