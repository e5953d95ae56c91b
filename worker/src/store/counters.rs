//! What the worker counts as it happens: plain atomics, one relaxed add
//! per event, no lock or allocation on the push and read paths. The store,
//! the server and the stream engine count here; `crate::metrics` reads the
//! counts (with what the store holds) when Prometheus scrapes, and
//! `WorkerStats` and the heartbeats report some of them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use terrace_admin::prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use terrace_admin::prometheus_client::metrics::MetricType;
use terrace_tier_api::{ErrorKind, TierError};

use super::StoreError;
/// What the worker counts as it happens. Reported by `WorkerStats`,
/// heartbeats (rates) and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of push bodies accepted into partitions (buffer headers
    /// included, as the producer framed them).
    pub bytes_pushed: AtomicU64,
    /// Buffers in those pushes.
    pub buffers_pushed: AtomicU64,
    /// Bytes of extents sent to readers.
    pub bytes_read: AtomicU64,
    /// Buffers in those extents.
    pub buffers_read: AtomicU64,
    /// Read streams open now (see `crate::stream`).
    pub read_streams: AtomicU64,
    /// Pushes being stored now.
    pub pushes_in_flight: AtomicU64,
    /// Reads (one batch of extents each) under way now.
    pub reads_in_flight: AtomicU64,
    /// Client connections open now (past their handshake).
    pub connections: AtomicU64,
    /// Partitions whose part here ended with a split.
    pub splits: AtomicU64,
    /// Partitions adopted from decommissioning workers.
    pub adoptions: AtomicU64,
    /// Partitions this worker handed over while decommissioning.
    pub handovers: AtomicU64,
    /// Sealed parts made durable in the object store (durability =
    /// "object-store"), and bytes of their indexes written there.
    pub durable_parts: AtomicU64,
    pub durable_index_bytes: AtomicU64,
    /// Bytes of durable copies uploaded (local data copied to the store).
    pub durable_bytes: AtomicU64,
    /// Sealed parts acknowledged before they reached the object store (it
    /// failed); the migrator tries again.
    pub durable_failures: AtomicU64,
    /// Partitions adopted from the object store after their worker was lost.
    pub lost_adoptions: AtomicU64,
    /// Partitions dropped because a master had taken this running worker
    /// for lost (see `crate::heartbeat`).
    pub fenced: AtomicU64,
    /// Error replies, by what went wrong.
    pub errors: ErrorCounts,
    /// From a push's arrival (its body read) to its acknowledgement.
    pub push_seconds: Latency,
    /// From a read's start to its bytes ready to send.
    pub read_seconds: Latency,
}

impl Counters {
    fn gauge(&self, which: Occupancy) -> &AtomicU64 {
        match which {
            Occupancy::Push => &self.pushes_in_flight,
            Occupancy::Read => &self.reads_in_flight,
            Occupancy::Connection => &self.connections,
            Occupancy::Stream => &self.read_streams,
        }
    }
}

/// What an [`Occupied`] guard counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Occupancy {
    Push,
    Read,
    Connection,
    Stream,
}

/// Counts one push, read, connection or stream in its gauge while it lives.
#[derive(Debug)]
pub(crate) struct Occupied {
    counters: Arc<Counters>,
    which: Occupancy,
}

impl Occupied {
    pub(crate) fn new(counters: &Arc<Counters>, which: Occupancy) -> Self {
        counters.gauge(which).fetch_add(1, Ordering::Relaxed);
        Occupied {
            counters: Arc::clone(counters),
            which,
        }
    }
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.counters
            .gauge(self.which)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 100 µs to 10 s.
/// A push into memory takes tens of microseconds, one written on push or a
/// read from disk a millisecond or so, an object-store read tens of
/// milliseconds, and a wait behind a full budget or a failing store
/// seconds.
const LATENCY_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram in atomics: one bucket add and one sum add per
/// observation, no lock. Encoded at scrape time.
#[derive(Debug, Default)]
pub struct Latency {
    /// Non-cumulative counts; the last is past the largest bound (+Inf).
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn encode(
        &self,
        name: &str,
        help: &str,
        encoder: &mut DescriptorEncoder,
    ) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = LATENCY_BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
                (bound, count.load(Ordering::Relaxed))
            })
            .collect();
        // The count is the buckets' total, so the +Inf bucket always equals it.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// What went wrong, as `terrace_worker_errors_total`'s `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    BadInput,
    Unauthorized,
    StorageFull,
    Corrupt,
    /// The object store failed (after its retries) under the request.
    ObjectStore,
    Unavailable,
    NotFound,
    Sealed,
    Closed,
    Internal,
    /// A connection-level protocol violation that closed the connection.
    Protocol,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::BadInput,
        ErrorClass::Unauthorized,
        ErrorClass::StorageFull,
        ErrorClass::Corrupt,
        ErrorClass::ObjectStore,
        ErrorClass::Unavailable,
        ErrorClass::NotFound,
        ErrorClass::Sealed,
        ErrorClass::Closed,
        ErrorClass::Internal,
        ErrorClass::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::BadInput => "bad_input",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::StorageFull => "storage_full",
            ErrorClass::Corrupt => "corrupt",
            ErrorClass::ObjectStore => "object_store",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Sealed => "sealed",
            ErrorClass::Closed => "closed",
            ErrorClass::Internal => "internal",
            ErrorClass::Protocol => "protocol",
        }
    }

    /// The class of an error the worker replies with: its kind, except that
    /// a failure caused by the object store is `object_store` (a full
    /// worker stays `storage_full`, whatever its object store does).
    pub fn of(error: &TierError) -> ErrorClass {
        if error.kind() != ErrorKind::StorageFull && caused_by_object_store(error) {
            return ErrorClass::ObjectStore;
        }
        match error.kind() {
            ErrorKind::BadInput => ErrorClass::BadInput,
            ErrorKind::PermissionDenied => ErrorClass::Unauthorized,
            ErrorKind::StorageFull => ErrorClass::StorageFull,
            ErrorKind::DataCorruption => ErrorClass::Corrupt,
            ErrorKind::Unavailable | ErrorKind::NoWorkers => ErrorClass::Unavailable,
            ErrorKind::PartitionNotFound => ErrorClass::NotFound,
            ErrorKind::PartitionSealed => ErrorClass::Sealed,
            ErrorKind::Closed => ErrorClass::Closed,
            ErrorKind::Internal => ErrorClass::Internal,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Whether an object-store failure is among `error`'s causes.
fn caused_by_object_store(error: &TierError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        let from_store = e.is::<object_store::Error>()
            || e.downcast_ref::<StoreError>().is_some_and(|s| {
                matches!(
                    s,
                    StoreError::ObjectStore { .. } | StoreError::ObjectStoreFailed(_)
                )
            });
        if from_store {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Error replies by [`ErrorClass`].
#[derive(Debug, Default)]
pub struct ErrorCounts([AtomicU64; ErrorClass::ALL.len()]);

impl ErrorCounts {
    /// Counts one error reply (or stream error) about to be sent.
    pub fn count(&self, error: &TierError) {
        self.add(ErrorClass::of(error));
    }

    pub fn add(&self, class: ErrorClass) {
        self.0[class.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, class: ErrorClass) -> u64 {
        self.0[class.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_their_buckets_and_count_once() {
        let latency = Latency::default();
        latency.observe(Duration::from_micros(50));
        latency.observe(Duration::from_micros(100));
        latency.observe(Duration::from_millis(3));
        latency.observe(Duration::from_secs(60));
        assert_eq!(latency.count(), 4);
        let counts: Vec<u64> = latency
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        // 50 µs and 100 µs in the first bucket (le 0.0001), 3 ms in le 0.005,
        // a minute past the last bound.
        assert_eq!(counts[0], 2);
        assert_eq!(counts[5], 1);
        assert_eq!(counts[LATENCY_BOUNDS_NS.len()], 1);
        assert_eq!(
            latency.sum_ns.load(Ordering::Relaxed),
            150_000 + 3_000_000 + 60_000_000_000
        );
    }

    #[test]
    fn object_store_failures_are_their_own_class_except_when_the_worker_is_full() {
        let source = object_store::Error::Generic {
            store: "test",
            source: "boom".into(),
        };
        let failed = TierError::with_source(ErrorKind::Unavailable, "get failed", source);
        assert_eq!(ErrorClass::of(&failed), ErrorClass::ObjectStore);
        let wrapped = TierError::from(StoreError::ObjectStore {
            url: "memory://".into(),
            op: "get",
            key: "k".into(),
            source: object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
        })
        .context("read");
        assert_eq!(ErrorClass::of(&wrapped), ErrorClass::ObjectStore);
        let full = TierError::from(StoreError::StorageFull { object_store: None });
        assert_eq!(ErrorClass::of(&full), ErrorClass::StorageFull);
        assert_eq!(
            ErrorClass::of(&TierError::bad_input("x")),
            ErrorClass::BadInput
        );
        assert_eq!(
            ErrorClass::of(&TierError::permission_denied("x")),
            ErrorClass::Unauthorized
        );
        assert_eq!(
            ErrorClass::of(&TierError::corruption("x")),
            ErrorClass::Corrupt
        );
        let names: std::collections::HashSet<&str> =
            ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorClass::ALL.len(), "labels are distinct");
        for (i, class) in ErrorClass::ALL.iter().enumerate() {
            assert_eq!(class.index(), i, "ALL is in declaration order");
        }
    }
}
