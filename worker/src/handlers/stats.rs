//! `WorkerStats`: counters for operators and tests. `PartitionMetrics`:
//! what a partition holds per subpartition.

use std::sync::atomic::Ordering;

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::server::Connection;

pub fn handle(conn: &Connection, m: pb::WorkerStats) -> Message {
    let store = &conn.shared.store;
    Message::WorkerStatsReply(pb::WorkerStatsReply {
        request_id: m.request_id,
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

pub fn partition_metrics(conn: &Connection, m: pb::PartitionMetrics) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    let (sealed, subpartition_bytes, next) = conn.shared.store.get(&key)?.metrics();
    let (next_worker_id, next_address) = next.map(|f| (f.worker_id, f.address)).unwrap_or_default();
    Ok(Message::PartitionMetricsReply(pb::PartitionMetricsReply {
        request_id: m.request_id,
        sealed,
        subpartition_bytes,
        next_address,
        next_worker_id,
    }))
}
