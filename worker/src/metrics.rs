//! The worker's metrics, in the Prometheus text format the admin HTTP
//! port's `/metrics` serves (every name is listed in docs/operations.md,
//! "Worker metrics").
//!
//! Two kinds: what happens is counted as it happens, in plain atomics
//! ([`Counters`]: one relaxed add per event, no lock or allocation on the
//! push and read paths); what the worker holds (memory in use, partitions by
//! state, bytes per tier and directory, directory health) is read from the
//! worker's own state when Prometheus scrapes ([`WorkerCollector`]), so it is
//! never updated on the hot paths and never drifts from what the store holds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use terrace_admin::prometheus_client::collector::Collector;
use terrace_admin::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use terrace_admin::prometheus_client::metrics::MetricType;
use terrace_admin::prometheus_client::metrics::counter::ConstCounter;
use terrace_admin::prometheus_client::metrics::gauge::ConstGauge;
use terrace_admin::prometheus_client::registry::Registry;
use terrace_tier_api::{ErrorKind, TierError};

use crate::context::Shared;
use crate::store::{ObjectOp, PartitionState, StoreError};

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

    fn encode(&self, name: &str, help: &str, encoder: &mut DescriptorEncoder) -> fmt::Result {
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

/// A registry holding the worker's metrics, for the admin HTTP server.
pub(crate) fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(WorkerCollector { shared }));
    registry
}

/// Reads every worker metric when scraped.
#[derive(Debug)]
pub(crate) struct WorkerCollector {
    shared: Arc<Shared>,
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    // The encoder appends `_total` to a counter's name.
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(clamp(value)).encode(metric)
}

/// Gauges stay in the non-negative `i64` range Prometheus clients expect.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One metric family of `kind`, a sample per label set.
fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[([(&str, &str); N], u64)],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let member = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(member)?,
            _ => ConstGauge::new(clamp(*value)).encode(member)?,
        }
    }
    Ok(())
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let shared = &self.shared;
        let store = &shared.store;
        let c = &store.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let e = &mut encoder;

        counter(
            e,
            "terrace_worker_pushed_bytes",
            "Bytes of pushed data accepted into partitions (buffer headers included).",
            load(&c.bytes_pushed),
        )?;
        counter(
            e,
            "terrace_worker_pushed_buffers",
            "Buffers in the pushes accepted.",
            load(&c.buffers_pushed),
        )?;
        counter(
            e,
            "terrace_worker_read_bytes",
            "Bytes of stored data sent to readers.",
            load(&c.bytes_read),
        )?;
        counter(
            e,
            "terrace_worker_read_buffers",
            "Buffers in the data sent to readers.",
            load(&c.buffers_read),
        )?;

        // One pass over the partitions: state counts and bytes in memory.
        let mut states = [0u64; 3];
        let mut memory_bytes = 0u64;
        for partition in store.partitions() {
            match partition.state() {
                PartitionState::Open => states[0] += 1,
                PartitionState::Sealed => states[1] += 1,
                PartitionState::Failed => states[2] += 1,
                PartitionState::Released => {}
            }
            memory_bytes += partition.tier_bytes().memory;
        }
        let tiers = store.tiers();
        let dirs: Vec<(String, u64, u64, bool)> = tiers
            .dirs
            .iter()
            .map(|(_, d)| {
                (
                    d.path.display().to_string(),
                    d.used(),
                    d.capacity(),
                    d.is_healthy(),
                )
            })
            .collect();
        let object = tiers.object.as_ref().map(|o| &o.counters);
        let object_load =
            |f: fn(&crate::store::ObjectCounters) -> &AtomicU64| object.map_or(0, |o| load(f(o)));

        let mut stored: Vec<([(&str, &str); 2], u64)> = vec![
            ([("tier", "memory"), ("dir", "")], memory_bytes),
            (
                [("tier", "object_store"), ("dir", "")],
                object_load(|o| &o.bytes),
            ),
        ];
        for (path, used, _, _) in &dirs {
            stored.push(([("tier", "disk"), ("dir", path.as_str())], *used));
        }
        family(
            e,
            "terrace_worker_stored_bytes",
            "Bytes of partition data held, per tier (memory, disk per data directory, object_store).",
            MetricType::Gauge,
            &stored,
        )?;
        let capacity: Vec<([(&str, &str); 1], u64)> = dirs
            .iter()
            .map(|(path, _, capacity, _)| ([("dir", path.as_str())], *capacity))
            .collect();
        family(
            e,
            "terrace_worker_disk_capacity_bytes",
            "Bytes of data files a data directory may hold: its used bytes plus the room the filesystem and dir_capacity leave.",
            MetricType::Gauge,
            &capacity,
        )?;
        let health: Vec<([(&str, &str); 1], u64)> = dirs
            .iter()
            .map(|(path, _, _, healthy)| ([("dir", path.as_str())], u64::from(*healthy)))
            .collect();
        family(
            e,
            "terrace_worker_disk_healthy",
            "1 while a data directory takes new data; 0 once a write failed there (or it was missing at start).",
            MetricType::Gauge,
            &health,
        )?;

        counter(
            e,
            "terrace_worker_migrated_bytes",
            "Bytes of sealed partitions moved from local directories to the object store.",
            object_load(|o| &o.bytes_migrated),
        )?;
        counter(
            e,
            "terrace_worker_overflowed_bytes",
            "Bytes flushed straight to the object store because no local directory had room.",
            object_load(|o| &o.bytes_overflowed),
        )?;
        let failures: Vec<([(&str, &str); 1], u64)> = ObjectOp::ALL
            .iter()
            .map(|op| {
                let n = tiers
                    .object
                    .as_ref()
                    .map_or(0, |o| o.counters.failures_of(*op));
                ([("op", op.as_str())], n)
            })
            .collect();
        family(
            e,
            "terrace_worker_object_store_failures",
            "Object-store requests that failed for good (after every retry, or with an error retrying cannot fix), by operation.",
            MetricType::Counter,
            &failures,
        )?;

        gauge(
            e,
            "terrace_worker_pushes_in_flight",
            "Pushes being stored now.",
            load(&c.pushes_in_flight),
        )?;
        gauge(
            e,
            "terrace_worker_reads_in_flight",
            "Reads (one batch of extents each) under way now.",
            load(&c.reads_in_flight),
        )?;

        let budget = store.budget();
        gauge(
            e,
            "terrace_worker_memory_budget_bytes",
            "The memory budget for pushed data (memory_budget).",
            budget.total(),
        )?;
        gauge(
            e,
            "terrace_worker_memory_used_bytes",
            "Bytes of the memory budget in use.",
            budget.used(),
        )?;
        gauge(
            e,
            "terrace_worker_memory_peak_bytes",
            "Most bytes of the memory budget in use at once since the worker started.",
            budget.peak(),
        )?;
        gauge(
            e,
            "terrace_worker_read_budget_bytes",
            "Bytes of read data the worker may hold at once (read_memory).",
            shared.read_budget_total(),
        )?;
        gauge(
            e,
            "terrace_worker_read_budget_used_bytes",
            "Bytes of read_memory in use: read for readers and not sent yet.",
            shared.read_budget_used(),
        )?;
        let metadata = store.metadata();
        gauge(
            e,
            "terrace_worker_metadata_used_bytes",
            "Bytes of metadata memory in use (indexes, streams, released keys).",
            metadata.used(),
        )?;
        gauge(
            e,
            "terrace_worker_metadata_limit_bytes",
            "The metadata memory limit (limits.metadata_memory).",
            metadata.limit(),
        )?;

        family(
            e,
            "terrace_worker_partitions",
            "Partitions held, by state.",
            MetricType::Gauge,
            &[
                ([("state", "open")], states[0]),
                ([("state", "sealed")], states[1]),
                ([("state", "failed")], states[2]),
            ],
        )?;
        gauge(
            e,
            "terrace_worker_jobs",
            "Jobs with at least one partition here.",
            store.job_count() as u64,
        )?;
        gauge(
            e,
            "terrace_worker_streams_open",
            "Read streams open now.",
            load(&c.read_streams),
        )?;
        gauge(
            e,
            "terrace_worker_connections_open",
            "Client connections open now (past their handshake).",
            load(&c.connections),
        )?;

        let errors: Vec<([(&str, &str); 1], u64)> = ErrorClass::ALL
            .iter()
            .map(|class| ([("kind", class.as_str())], c.errors.get(*class)))
            .collect();
        family(
            e,
            "terrace_worker_errors",
            "Error replies sent (requests, read streams, protocol violations), by kind.",
            MetricType::Counter,
            &errors,
        )?;

        c.push_seconds.encode(
            "terrace_worker_push_duration_seconds",
            "Time from a push's body received to its acknowledgement (stored in memory, or written when write_on_push).",
            e,
        )?;
        c.read_seconds.encode(
            "terrace_worker_read_duration_seconds",
            "Time to read one batch of extents for a reader, from whichever tier holds it.",
            e,
        )?;

        counter(
            e,
            "terrace_worker_splits",
            "Partitions whose part here ended with a split (its producer went on on another worker).",
            load(&c.splits),
        )?;
        counter(
            e,
            "terrace_worker_adoptions",
            "Partitions adopted from decommissioning workers.",
            load(&c.adoptions),
        )?;
        counter(
            e,
            "terrace_worker_handovers",
            "Partitions handed over to other workers while decommissioning.",
            load(&c.handovers),
        )?;
        gauge(
            e,
            "terrace_worker_draining",
            "1 once the worker is decommissioning (taking no new partitions), else 0.",
            u64::from(shared.decommission.is_started()),
        )?;
        Ok(())
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
