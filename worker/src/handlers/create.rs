//! `CreatePartition`: a producer announces a partition before pushing to it.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::server::Connection;

pub fn handle(conn: &Connection, m: pb::CreatePartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    conn.shared
        .store
        .create(key.clone(), m.num_subpartitions, m.broadcast_only)?;
    tracing::debug!(partition = %key, subpartitions = m.num_subpartitions, broadcast_only = m.broadcast_only, "partition created");
    Ok(Message::ack(m.request_id))
}
