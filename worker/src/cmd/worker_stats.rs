//! `WorkerStats`: counters for operators and tests.

use std::sync::atomic::Ordering;

use terrace_tier_api::protocol::{WorkerStats, WorkerStatsReply};

use crate::context::Connection;

/// The counters, with the load the worker reports in its heartbeats
/// (`crate::heartbeat::load`).
pub(crate) fn apply(_: WorkerStats, conn: &Connection) -> WorkerStatsReply {
    let store = &conn.shared.store;
    WorkerStatsReply {
        load: crate::heartbeat::load(&conn.shared),
        bytes_pushed: store.counters.bytes_pushed.load(Ordering::Relaxed),
        bytes_read: store.counters.bytes_read.load(Ordering::Relaxed),
        memory_budget_bytes: store.budget().total(),
        memory_peak_bytes: store.budget().peak(),
        partitions: store.partition_count() as u32,
        metadata_bytes: store.metadata().used(),
        metadata_peak_bytes: store.metadata().peak(),
        metadata_limit_bytes: store.metadata().limit(),
    }
}
