//! `WorkerStats`: counters for operators and tests.

use std::sync::atomic::Ordering;

use terrace_proto::{Message, pb};
use terrace_tier_api::protocol::WorkerStats;

use crate::context::Connection;

/// The reply stays a wire message: the load it carries is the heartbeat's
/// (`crate::heartbeat::load`), still built as one.
pub(crate) fn apply(_: WorkerStats, request_id: u64, conn: &Connection) -> Message {
    let store = &conn.shared.store;
    Message::WorkerStatsReply(pb::WorkerStatsReply {
        request_id,
        load: Some(crate::heartbeat::load(&conn.shared).into()),
        bytes_pushed: store.counters.bytes_pushed.load(Ordering::Relaxed),
        bytes_read: store.counters.bytes_read.load(Ordering::Relaxed),
        memory_budget_bytes: store.budget().total(),
        memory_peak_bytes: store.budget().peak(),
        partitions: store.partition_count() as u32,
        metadata_bytes: store.metadata().used(),
        metadata_peak_bytes: store.metadata().peak(),
        metadata_limit_bytes: store.metadata().limit(),
    })
}
