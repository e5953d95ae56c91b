//! `SealPartition`: the producer is done. Flush, sync, persist the index.

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Ack, SealPartition};

use crate::context::Connection;

pub(crate) async fn apply(request: SealPartition, conn: &Connection) -> TierResult<Ack> {
    let key = request.key;
    let partition = conn.shared.store.get(&key)?;
    conn.shared
        .store
        .seal(&partition)
        .await
        .map_err(|e| e.context("seal"))?;
    tracing::debug!(partition = %key, bytes = partition.stored_bytes(), "partition sealed");
    Ok(Ack)
}
