//! `SealPartition`: the producer is done. Flush, sync, persist the index.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::server::Connection;

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
