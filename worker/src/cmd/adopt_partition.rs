//! `AdoptPartition`: the receiving end of a decommissioning worker's
//! handover (see `crate::decommission`): serve a partition it migrated to
//! the object store.

use std::sync::atomic::Ordering;

use terrace_tier_api::protocol::{Ack, AdoptPartition};
use terrace_tier_api::{TierError, TierResult};

use crate::context::Connection;

pub(crate) async fn apply(request: AdoptPartition, conn: &Connection) -> TierResult<Ack> {
    let shared = &conn.shared;
    let (key, from) = (request.key, request.from);
    let index = request.index.into_bytes();
    if shared.draining() {
        return Err(TierError::unavailable(format!(
            "worker {} is decommissioning or restarting: it adopts no partition",
            shared.worker_id
        )));
    }
    let partition = shared.store.adopt(&key, &index).await?;
    shared.store.make_durable_or_later(&partition).await;
    shared
        .store
        .counters
        .adoptions
        .fetch_add(1, Ordering::Relaxed);
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
    Ok(Ack)
}
