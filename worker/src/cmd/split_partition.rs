//! `SplitPartition`: like a seal, for a part of a split partition: this
//! worker's part ends here, and readers of later segments go to the next
//! worker.

use std::sync::atomic::Ordering;

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Ack, SplitPartition};

use crate::context::Connection;
use crate::store::Forward;

pub(crate) async fn apply(request: SplitPartition, conn: &Connection) -> TierResult<Ack> {
    let key = request.key;
    let next = Forward {
        worker_id: request.next.id.into_string(),
        address: request.next.address,
    };
    let partition = conn.shared.store.get(&key)?;
    conn.shared
        .store
        .split(&partition, next.clone())
        .await
        .map_err(|e| e.context("split"))?;
    conn.shared
        .store
        .counters
        .splits
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(partition = %key, bytes = partition.stored_bytes(), next = %next.address, "partition split");
    Ok(Ack)
}
