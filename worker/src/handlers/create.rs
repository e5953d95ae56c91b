//! `CreatePartition`: a producer announces a partition before pushing to it.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use crate::server::Connection;

pub async fn handle(conn: &Connection, m: pb::CreatePartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    // A retried create of a partition already here is still answered.
    if conn.shared.decommission.is_started() && conn.shared.store.get(&key).is_err() {
        return Err(TierError::unavailable(format!(
            "{key}: worker {} is decommissioning and takes no new partitions",
            conn.shared.worker_id
        )));
    }
    let limits = &conn.shared.config.limits;
    if m.num_subpartitions > limits.max_subpartitions {
        return Err(TierError::bad_input(format!(
            "{key}: num_subpartitions {} is more than {} (limits.max_subpartitions)",
            m.num_subpartitions, limits.max_subpartitions
        )));
    }
    // Partition quotas (`max_partitions`, `max_partitions_per_job`) and the
    // metadata budget are checked by the store as it inserts. A partition
    // under the same key whose release is still deleting its files is
    // waited for: its deletion must not take the new partition's data.
    conn.shared
        .store
        .create_after_release(
            key.clone(),
            m.num_subpartitions,
            m.broadcast_only,
            m.continuation,
            conn.shared.config.partition_wait_timeout,
        )
        .await?;
    tracing::debug!(partition = %key, subpartitions = m.num_subpartitions, broadcast_only = m.broadcast_only,
        continuation = m.continuation, relocated = m.relocated, "partition created");
    if m.relocated {
        conn.shared
            .relocated
            .lock()
            .expect("relocated lock poisoned")
            .insert(key);
    }
    Ok(Message::ack(m.request_id))
}
