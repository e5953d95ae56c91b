//! `SealPartition`: the producer is done. Flush, sync, persist the index.
//! `SplitPartition`: the same for a part of a split partition, with a
//! forward pointer to the next part.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::server::Connection;
use crate::store::Forward;

pub async fn handle(conn: &Connection, m: pb::SealPartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    let partition = conn.shared.store.get(&key)?;
    conn.shared
        .store
        .seal(&partition)
        .await
        .map_err(|e| e.context("seal"))?;
    tracing::debug!(partition = %key, bytes = partition.stored_bytes(), "partition sealed");
    Ok(Message::ack(m.request_id))
}

/// `SplitPartition`: this worker's part ends here; readers of later segments
/// go to the next worker.
pub async fn split(conn: &Connection, m: pb::SplitPartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    let next = Forward {
        worker_id: super::bounded("next_worker_id", m.next_worker_id)?,
        address: super::bounded("next_address", m.next_address)?,
    };
    let partition = conn.shared.store.get(&key)?;
    conn.shared
        .store
        .split(&partition, next.clone())
        .await
        .map_err(|e| e.context("split"))?;
    tracing::info!(partition = %key, bytes = partition.stored_bytes(), next = %next.address, "partition split");
    Ok(Message::ack(m.request_id))
}
