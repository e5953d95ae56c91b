//! `SplitPartition`: like a seal, for a part of a split partition: this
//! worker's part ends here, and readers of later segments go to the next
//! worker.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::context::Connection;
use crate::store::Forward;

#[derive(Debug)]
pub(crate) struct SplitPartition {
    pub key: PartitionKey,
    next: Forward,
}

impl SplitPartition {
    pub(crate) fn parse(m: pb::SplitPartition) -> TierResult<Self> {
        let key = PartitionKey::try_from(m.key)?;
        let next = Forward {
            worker_id: super::bounded("next_worker_id", m.next_worker_id)?,
            address: super::bounded("next_address", m.next_address)?,
        };
        Ok(SplitPartition { key, next })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let (key, next) = (self.key, self.next);
        let partition = conn.shared.store.get(&key)?;
        conn.shared
            .store
            .split(&partition, next.clone())
            .await
            .map_err(|e| e.context("split"))?;
        tracing::info!(partition = %key, bytes = partition.stored_bytes(), next = %next.address, "partition split");
        Ok(Message::ack(request_id))
    }
}
