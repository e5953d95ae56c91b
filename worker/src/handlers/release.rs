//! `ReleasePartition` and `DropJob`: delete data in every tier (and, for a
//! split partition, on the workers holding its later parts).

use std::sync::Arc;

use terrace_proto::{Message, pb};
use terrace_rpc::Client;
use terrace_tier_api::{ErrorKind, JobId, PartitionKey, TierResult};

use crate::server::{Connection, Shared};
use crate::store::Forward;

pub async fn release_partition(conn: &Connection, m: pb::ReleasePartition) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    let next = conn.shared.store.get(&key).ok().and_then(|p| p.forward());
    conn.shared.store.release(&key).await?;
    tracing::debug!(partition = %key, "partition released");
    if let Some(next) = next {
        // The later parts of a split partition go too; the engine knows only
        // this worker. Best effort: a job's end drops every part anyway.
        let shared = Arc::clone(&conn.shared);
        tokio::spawn(async move {
            if let Err(e) = release_next_part(&shared, &key, &next).await {
                tracing::warn!(partition = %key, next = %next.address, error = %e,
                    "could not release the next part of a split partition; it goes when its job is dropped");
            }
        });
    }
    Ok(Message::ack(m.request_id))
}

/// The forward pointer came from the producer (a holder of the job's token
/// only), so the next worker is asked with the job's token, and only if it
/// proves it is the worker the pointer names.
async fn release_next_part(shared: &Shared, key: &PartitionKey, next: &Forward) -> TierResult<()> {
    let options = shared.job_peer_options(&key.job, &next.worker_id);
    let client = Client::connect(&next.address, &options).await?;
    let reply = client
        .call(terrace_tier_api::protocol::ReleasePartition { key: key.clone() })
        .await;
    client.close();
    match reply {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::PartitionNotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn drop_job(conn: &Connection, m: pb::DropJob) -> TierResult<Message> {
    let job = JobId::new(m.job_id)?;
    let count = conn.shared.store.drop_job(&job).await?;
    tracing::info!(job = %job, partitions = count, "job dropped");
    Ok(Message::ack(m.request_id))
}
