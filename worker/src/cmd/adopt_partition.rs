//! `AdoptPartition`: the receiving end of a decommissioning worker's
//! handover (see `crate::decommission`): serve a partition it migrated to
//! the object store.

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct AdoptPartition {
    key: PartitionKey,
    from: String,
    /// The partition's persisted index (the frame body).
    index: Bytes,
}

impl AdoptPartition {
    pub(crate) fn parse(m: pb::AdoptPartition, index: Bytes) -> TierResult<Self> {
        Ok(AdoptPartition {
            key: PartitionKey::try_from(m.key)?,
            from: super::bounded("from_worker_id", m.from_worker_id)?,
            index,
        })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let shared = &conn.shared;
        let (key, from) = (self.key, self.from);
        if shared.decommission.is_started() {
            return Err(TierError::unavailable(format!(
                "worker {} is decommissioning: it adopts no partition",
                shared.worker_id
            )));
        }
        let partition = shared.store.adopt(&key, &self.index).await?;
        if !partition.meta().continuation {
            // Consumers whose descriptor names the old worker find it through
            // the masters, which learn of it from this worker's heartbeats.
            shared
                .relocated
                .lock()
                .expect("relocated lock poisoned")
                .insert(key.clone());
            shared.heartbeat_now.notify_waiters();
        }
        tracing::info!(partition = %key, %from, bytes = partition.stored_bytes(),
            "adopted a partition from a decommissioning worker");
        Ok(Message::ack(request_id))
    }
}
