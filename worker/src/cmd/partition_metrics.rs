//! `PartitionMetrics`: what a partition holds per subpartition.

use terrace_tier_api::protocol::{PartitionMetrics, PartitionMetricsReply, WorkerAt};
use terrace_tier_api::{TierError, TierResult, WorkerId};

use crate::context::Connection;

pub(crate) fn apply(
    request: PartitionMetrics,
    conn: &Connection,
) -> TierResult<PartitionMetricsReply> {
    let key = request.key;
    let (sealed, subpartition_bytes, next) = conn.shared.store.get(&key)?.metrics();
    // A forward pointer holds the worker id its split request carried,
    // checked on receipt.
    let next = match next {
        Some(f) => {
            let id = WorkerId::new(f.worker_id).map_err(|e| {
                TierError::internal(format!("forward pointer of {key}: {}", e.message()))
            })?;
            Some(WorkerAt::new(id, f.address))
        }
        None => None,
    };
    Ok(PartitionMetricsReply {
        sealed,
        subpartition_bytes,
        next,
    })
}
