//! `PartitionMetrics`: what a partition holds per subpartition.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct PartitionMetrics {
    pub key: PartitionKey,
}

impl PartitionMetrics {
    pub(crate) fn parse(m: pb::PartitionMetrics) -> TierResult<Self> {
        Ok(PartitionMetrics {
            key: PartitionKey::try_from(m.key)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let (sealed, subpartition_bytes, next) = conn.shared.store.get(&self.key)?.metrics();
        let (next_worker_id, next_address) =
            next.map(|f| (f.worker_id, f.address)).unwrap_or_default();
        Ok(Message::PartitionMetricsReply(pb::PartitionMetricsReply {
            request_id,
            sealed,
            subpartition_bytes,
            next_address,
            next_worker_id,
        }))
    }
}
