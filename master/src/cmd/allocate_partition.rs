//! `AllocatePartition` → `PartitionAllocated` on the least-loaded live
//! worker, or `ErrorReply` NO_WORKERS when none is live.

use std::time::Instant;

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{AllocatePartition, PartitionAllocated};

use crate::registry::Registry;

pub(crate) fn apply(
    r: AllocatePartition,
    registry: &mut Registry,
    now: Instant,
) -> TierResult<PartitionAllocated> {
    let exclude: Vec<String> = r.exclude.into_iter().map(|w| w.into_string()).collect();
    match registry.allocate(&r.key, &exclude, now) {
        Ok(placement) => {
            if let Some(from) = &r.relocated_from {
                tracing::warn!(job = %r.key.job, partition = %r.key.partition, from = %from,
                    to = %placement.worker_id, "partition relocated: its placed worker was unreachable");
                registry.record_relocation(r.key.clone(), placement.worker_id.clone());
            } else if !exclude.is_empty() {
                // The next part of a split partition (the producer excludes
                // the workers of its earlier parts).
                registry.record_part(&r.key, &placement.worker_id);
            }
            Ok(PartitionAllocated {
                key: r.key,
                worker: super::worker_at(placement.worker_id, placement.data_address),
            })
        }
        Err(e) => {
            tracing::warn!(job = %r.key.job, partition = %r.key.partition, error = %e,
                "cannot place partition");
            Err(e)
        }
    }
}
