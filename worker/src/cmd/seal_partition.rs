//! `SealPartition`: the producer is done. Flush, sync, persist the index.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct SealPartition {
    pub key: PartitionKey,
}

impl SealPartition {
    pub(crate) fn parse(m: pb::SealPartition) -> TierResult<Self> {
        Ok(SealPartition {
            key: PartitionKey::try_from(m.key)?,
        })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let key = self.key;
        let partition = conn.shared.store.get(&key)?;
        conn.shared
            .store
            .seal(&partition)
            .await
            .map_err(|e| e.context("seal"))?;
        tracing::debug!(partition = %key, bytes = partition.stored_bytes(), "partition sealed");
        Ok(Message::ack(request_id))
    }
}
