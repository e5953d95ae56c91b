//! `AdoptPartition` and `MoveForward`: the receiving end of a
//! decommissioning worker's handover (see `decommission`). Both need the
//! cluster credential (checked by the caller).

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use crate::server::Connection;
use crate::store::Forward;

/// Serves a partition a decommissioning worker migrated to the object store.
pub async fn adopt(conn: &Connection, m: pb::AdoptPartition, index: Bytes) -> TierResult<Message> {
    let shared = &conn.shared;
    let key = PartitionKey::try_from(m.key)?;
    let from = super::bounded("from_worker_id", m.from_worker_id)?;
    if shared.decommission.is_started() {
        return Err(TierError::unavailable(format!(
            "worker {} is decommissioning: it adopts no partition",
            shared.worker_id
        )));
    }
    let partition = shared.store.adopt(&key, &index).await?;
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
    Ok(Message::ack(m.request_id))
}

/// Points a split partition's forward pointer at the worker that adopted
/// its next part.
pub async fn move_forward(conn: &Connection, m: pb::MoveForward) -> TierResult<Message> {
    let shared = &conn.shared;
    let key = PartitionKey::try_from(m.key)?;
    let from = super::bounded("from_worker_id", m.from_worker_id)?;
    let next = Forward {
        worker_id: super::bounded("to_worker_id", m.to_worker_id)?,
        address: super::bounded("to_address", m.to_address)?,
    };
    if let Ok(partition) = shared.store.get(&key) {
        let to = next.address.clone();
        if partition
            .move_forward(shared.store.tiers(), &from, next)
            .await?
        {
            tracing::info!(partition = %key, %from, %to, "the next part moved; forward pointer updated");
        }
    }
    Ok(Message::ack(m.request_id))
}
