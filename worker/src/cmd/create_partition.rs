//! `CreatePartition`: a producer announces a partition before pushing to it.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct CreatePartition {
    pub key: PartitionKey,
    num_subpartitions: u32,
    broadcast_only: bool,
    continuation: bool,
    relocated: bool,
}

impl CreatePartition {
    pub(crate) fn parse(m: pb::CreatePartition) -> TierResult<Self> {
        Ok(CreatePartition {
            key: PartitionKey::try_from(m.key)?,
            num_subpartitions: m.num_subpartitions,
            broadcast_only: m.broadcast_only,
            continuation: m.continuation,
            relocated: m.relocated,
        })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let key = self.key;
        // A retried create of a partition already here is still answered.
        if conn.shared.decommission.is_started() && conn.shared.store.get(&key).is_err() {
            return Err(TierError::unavailable(format!(
                "{key}: worker {} is decommissioning and takes no new partitions",
                conn.shared.worker_id
            )));
        }
        let limits = &conn.shared.config.limits;
        if self.num_subpartitions > limits.max_subpartitions {
            return Err(TierError::bad_input(format!(
                "{key}: num_subpartitions {} is more than {} (limits.max_subpartitions)",
                self.num_subpartitions, limits.max_subpartitions
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
                self.num_subpartitions,
                self.broadcast_only,
                self.continuation,
                conn.shared.config.partition_wait_timeout,
            )
            .await?;
        tracing::debug!(partition = %key, subpartitions = self.num_subpartitions, broadcast_only = self.broadcast_only,
            continuation = self.continuation, relocated = self.relocated, "partition created");
        if self.relocated {
            conn.shared
                .relocated
                .lock()
                .expect("relocated lock poisoned")
                .insert(key);
        }
        Ok(Message::ack(request_id))
    }
}
