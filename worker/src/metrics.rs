//! The worker's metrics, in the Prometheus text format the admin HTTP
//! port's `/metrics` serves (every name is listed in docs/operations.md,
//! "Worker metrics").
//!
//! Two kinds: what happens is counted as it happens, in plain atomics
//! (`crate::store::counters`: one relaxed add per event, no lock or allocation on the
//! push and read paths); what the worker holds (memory in use, partitions by
//! state, bytes per tier and directory, directory health) is read from the
//! worker's own state when Prometheus scrapes ([`WorkerCollector`]), so it is
//! never updated on the hot paths and never drifts from what the store holds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use terrace_admin::prometheus_client::collector::Collector;
use terrace_admin::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use terrace_admin::prometheus_client::metrics::MetricType;
use terrace_admin::prometheus_client::metrics::counter::ConstCounter;
use terrace_admin::prometheus_client::metrics::gauge::ConstGauge;
use terrace_admin::prometheus_client::registry::Registry;

use crate::context::Shared;
use crate::store::ObjectOp;
use crate::store::counters::ErrorClass;

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
        let (states, bytes) = store.census();
        let memory_bytes = bytes.memory;
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
            "terrace_worker_compacted_bytes",
            "Bytes of sealed partitions rewritten in the object store by compaction (overflow objects laid out again segment by segment).",
            object_load(|o| &o.bytes_compacted),
        )?;
        counter(
            e,
            "terrace_worker_object_gets",
            "Ranged GETs the worker sent to the object store.",
            object_load(|o| &o.gets),
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
        counter(
            e,
            "terrace_worker_durable_parts",
            "Sealed partition parts made durable in the object store, data and index (durability = \"object-store\").",
            load(&c.durable_parts),
        )?;
        counter(
            e,
            "terrace_worker_durable_bytes",
            "Bytes of sealed parts' local data copied to the object store for durability (reads stay local).",
            load(&c.durable_bytes),
        )?;
        counter(
            e,
            "terrace_worker_durable_index_bytes",
            "Bytes of partition indexes written to the object store for durability.",
            load(&c.durable_index_bytes),
        )?;
        counter(
            e,
            "terrace_worker_durability_failures",
            "Seals acknowledged before the part reached the object store (the store failed); the migrator tries again.",
            load(&c.durable_failures),
        )?;
        counter(
            e,
            "terrace_worker_lost_adoptions",
            "Partitions adopted from the object store after the worker holding them was lost.",
            load(&c.lost_adoptions),
        )?;
        counter(
            e,
            "terrace_worker_fenced_partitions",
            "Partitions dropped because a master had taken this running worker for lost (paused or cut off past the worker timeout) and reported them to the engines.",
            load(&c.fenced),
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
