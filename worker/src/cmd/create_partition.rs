//! `CreatePartition`: a producer announces a partition before pushing to it.

use terrace_tier_api::protocol::{Ack, CreatePartition};
use terrace_tier_api::{TierError, TierResult};

use crate::context::Connection;

pub(crate) async fn apply(request: CreatePartition, conn: &Connection) -> TierResult<Ack> {
    let key = request.key;
    // A retried create of a partition already here is still answered.
    if conn.shared.draining() && conn.shared.store.get(&key).is_err() {
        let why = if conn.shared.decommission.is_started() {
            "decommissioning"
        } else {
            "stopping for a restart"
        };
        return Err(TierError::unavailable(format!(
            "{key}: worker {} is {why} and takes no new partitions",
            conn.shared.worker_id
        )));
    }
    let limits = &conn.shared.config.limits;
    if request.num_subpartitions > limits.max_subpartitions {
        return Err(TierError::bad_input(format!(
            "{key}: num_subpartitions {} is more than {} (limits.max_subpartitions)",
            request.num_subpartitions, limits.max_subpartitions
        )));
    }
    // Partition quotas (`max_partitions`, `max_partitions_per_job`) and the
    // metadata budget are checked by the store as it inserts. A partition
    // under the same key whose release is still deleting its files is
    // waited for: its deletion must not take the new partition's data.
    let partition = conn
        .shared
        .store
        .create_after_release(
            key.clone(),
            request.num_subpartitions,
            request.broadcast_only,
            request.continuation,
            conn.shared.config.partition_wait_timeout,
        )
        .await?;
    tracing::debug!(partition = %key, subpartitions = request.num_subpartitions, broadcast_only = request.broadcast_only,
            continuation = request.continuation, relocated = request.relocated, "partition created");
    if request.relocated {
        partition.mark_relocated();
        conn.shared
            .relocated
            .lock()
            .expect("relocated lock poisoned")
            .insert(key);
    }
    Ok(Ack)
}
