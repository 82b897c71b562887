//! Counts and latencies per op kind, kept by each driver for [`OpKindStats`] and the metrics.
//!
//! An op counts itself once, when it finishes or when its future is dropped while it waits,
//! through the driver handle it already holds: no thread-local, no allocation after a kind's
//! first op. (When it starts waiting it only notes the time.) Kinds are told apart by their
//! name's address (the `static` every `OpKind::NAME` becomes; the kind found last is tried
//! first), then by the name's text, in a short list: a server uses a handful of kinds. Ops
//! waiting now are not counted here: the tasks suspended on them are (the live view's op
//! table), and the driver's `ops_in_flight` counts them all.
//!
//! Latency is the time from the start of the wait to the completion, both read from the loop's
//! clock, which is read at most once per loop iteration: so it is the time between the loop
//! iterations that submitted the op and saw it complete (at least one iteration for an op that
//! went to the kernel), kept in log-scaled buckets (powers of two of microseconds).

use serde::Serialize;

use crate::task::AwaitName;

/// Latency buckets: `< 1 µs`, then `[2^(i-1), 2^i) µs` for `i` in `1..=25`, then
/// `≥ 2^25 µs` (about 33.5 s).
pub const LATENCY_BUCKETS: usize = 27;

/// The upper bound of latency bucket `i`, in microseconds (`None` for the last, unbounded one).
pub fn latency_bucket_bound_us(i: usize) -> Option<u64> {
    (i + 1 < LATENCY_BUCKETS).then(|| 1u64 << i)
}

/// What one op kind did on one runtime: from [`Runtime::op_stats`](crate::Runtime::op_stats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpKindStats {
    /// The kind's [`OpKind::NAME`](crate::OpKind::NAME).
    pub op: &'static str,
    /// Ops that finished, whether or not they waited.
    pub completed: u64,
    /// Ops that finished without waiting (tried as a system call first, or refused at once).
    pub immediate: u64,
    /// Finished ops whose result was an error (cancellations not included).
    pub errors: u64,
    /// Finished ops that were cancelled (their task's cancel won the race).
    pub cancelled: u64,
    /// Ops whose future was dropped while they waited (the op was cancelled in the kernel).
    pub dropped: u64,
    /// How long the ops that waited took, from the wait's start to the completion, in
    /// microseconds: counts per bucket (see [`latency_bucket_bound_us`]).
    pub latency_buckets: [u64; LATENCY_BUCKETS],
    /// The sum of those latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl OpKindStats {
    /// The latency under which a fraction `q` (0 to 1) of the waiting ops completed, as the
    /// upper bound of its bucket in microseconds; `None` when no op waited, or when it falls in
    /// the last, unbounded bucket.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_bucket_bound_us(i);
            }
        }
        None
    }
}

/// One kind's counters, as the driver keeps them.
struct Kind {
    name: &'static AwaitName,
    completed: u64,
    immediate: u64,
    errors: u64,
    cancelled: u64,
    dropped: u64,
    buckets: [u64; LATENCY_BUCKETS],
    sum_us: u64,
}

/// How an op finished, for its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Ok,
    Error,
    Cancelled,
}

/// A driver's table of op kinds.
#[derive(Default)]
pub(crate) struct OpStatsTable {
    kinds: Vec<Kind>,
    /// The kind found last: most ops are of the kind before them (a server's sends).
    last: usize,
}

impl OpStatsTable {
    #[inline]
    fn kind(&mut self, name: &'static AwaitName) -> &mut Kind {
        if self
            .kinds
            .get(self.last)
            .is_some_and(|k| std::ptr::eq(k.name, name))
        {
            return &mut self.kinds[self.last];
        }
        self.find(name)
    }

    #[cold]
    fn find(&mut self, name: &'static AwaitName) -> &mut Kind {
        let i = match self
            .kinds
            .iter()
            .position(|k| std::ptr::eq(k.name, name) || k.name.as_str() == name.as_str())
        {
            Some(i) => i,
            None => {
                self.kinds.push(Kind {
                    name,
                    completed: 0,
                    immediate: 0,
                    errors: 0,
                    cancelled: 0,
                    dropped: 0,
                    buckets: [0; LATENCY_BUCKETS],
                    sum_us: 0,
                });
                self.kinds.len() - 1
            }
        };
        self.last = i;
        &mut self.kinds[i]
    }

    /// An op of kind `name` finished; `waited_ns` is how long it waited, if it did.
    #[inline]
    pub(crate) fn finished(
        &mut self,
        name: &'static AwaitName,
        waited_ns: Option<u64>,
        how: Finish,
    ) {
        let k = self.kind(name);
        k.completed += 1;
        match how {
            Finish::Ok => {}
            Finish::Error => k.errors += 1,
            Finish::Cancelled => k.cancelled += 1,
        }
        match waited_ns {
            None => k.immediate += 1,
            Some(ns) => {
                let us = ns / 1000;
                k.sum_us += us;
                k.buckets[bucket_of(us)] += 1;
            }
        }
    }

    /// An op of kind `name` was dropped while it waited.
    #[inline]
    pub(crate) fn dropped(&mut self, name: &'static AwaitName) {
        self.kind(name).dropped += 1;
    }

    /// A snapshot, in the order the kinds were first seen.
    pub(crate) fn snapshot(&self) -> Vec<OpKindStats> {
        self.kinds
            .iter()
            .map(|k| OpKindStats {
                op: k.name.as_str(),
                completed: k.completed,
                immediate: k.immediate,
                errors: k.errors,
                cancelled: k.cancelled,
                dropped: k.dropped,
                latency_buckets: k.buckets,
                latency_sum_us: k.sum_us,
            })
            .collect()
    }
}

/// The bucket of a latency of `us` microseconds.
#[inline]
fn bucket_of(us: u64) -> usize {
    // 0 → 0; [2^(i-1), 2^i) → i; capped at the last bucket.
    ((64 - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEND: AwaitName = AwaitName::new("send");
    static SEND_AGAIN: AwaitName = AwaitName::new("send");
    static RECV: AwaitName = AwaitName::new("recv");

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(1023), 10);
        assert_eq!(bucket_of(1024), 11);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket_bound_us(0), Some(1));
        assert_eq!(latency_bucket_bound_us(10), Some(1024));
        assert_eq!(latency_bucket_bound_us(LATENCY_BUCKETS - 1), None);
        // Each bucket's bound is the first latency of the next one.
        for i in 0..LATENCY_BUCKETS - 1 {
            let bound = latency_bucket_bound_us(i).unwrap();
            assert_eq!(bucket_of(bound - 1), i);
            assert_eq!(bucket_of(bound), i + 1);
        }
    }

    #[test]
    fn kinds_are_counted_apart_and_by_name() {
        let mut t = OpStatsTable::default();
        t.finished(&SEND, Some(1_500), Finish::Ok); // 1 µs
        t.finished(&SEND_AGAIN, None, Finish::Error); // the same name at another address
        t.finished(&RECV, Some(3_000_000), Finish::Cancelled); // 3 ms
        t.dropped(&SEND);
        let s = t.snapshot();
        assert_eq!(s.len(), 2);
        let send = &s[0];
        assert_eq!(send.op, "send");
        assert_eq!(
            (send.completed, send.immediate, send.errors, send.dropped),
            (2, 1, 1, 1)
        );
        assert_eq!(send.latency_buckets[1], 1);
        assert_eq!(send.latency_sum_us, 1);
        assert_eq!(send.latency_quantile_us(0.5), Some(2));
        let recv = &s[1];
        assert_eq!((recv.cancelled, recv.completed), (1, 1));
        assert_eq!(recv.latency_quantile_us(0.99), Some(4096));
        assert_eq!(recv.latency_sum_us, 3000);
    }
}
