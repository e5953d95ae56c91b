//! `ReleasePartition` and `DropJob`: delete data in every tier.

use terrace_proto::{Message, pb};
use terrace_tier_api::{JobId, PartitionKey, TierResult};

use crate::server::Connection;

pub async fn release_partition(conn: &Connection, m: pb::ReleasePartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    conn.shared.store.release(&key).await?;
    tracing::debug!(partition = %key, "partition released");
    Ok(Message::ack(m.request_id))
}

pub async fn drop_job(conn: &Connection, m: pb::DropJob) -> TierResult<Message> {
    let job = JobId::new(m.job_id)?;
    let count = conn.shared.store.drop_job(&job).await?;
    tracing::info!(job = %job, partitions = count, "job dropped");
    Ok(Message::ack(m.request_id))
}
