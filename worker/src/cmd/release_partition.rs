//! `ReleasePartition`: delete a partition's data in every tier (and, for a
//! split partition, on the workers holding its later parts).

use std::sync::Arc;

use terrace_rpc::Client;
use terrace_tier_api::protocol::{Ack, ReleasePartition};
use terrace_tier_api::{ErrorKind, PartitionKey, TierResult};

use crate::context::{Connection, Shared};
use crate::store::Forward;

pub(crate) async fn apply(request: ReleasePartition, conn: &Connection) -> TierResult<Ack> {
    let key = request.key;
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
    Ok(Ack)
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
