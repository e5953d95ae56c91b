//! `AllocatePartition` → `PartitionAllocated` on the least-loaded live
//! worker, or `ErrorReply` NO_WORKERS when none is live.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierError, TierResult};

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct AllocatePartition {
    pub(crate) key: PartitionKey,
    exclude: Vec<String>,
    /// The unreachable worker the partition moves away from, if any.
    relocated_from: Option<String>,
}

/// Most workers an allocation may exclude (the parts of a split chain).
const MAX_EXCLUDED: usize = 64;

impl AllocatePartition {
    pub(crate) fn parse(m: pb::AllocatePartition) -> TierResult<Self> {
        if m.num_subpartitions == 0 {
            return Err(TierError::bad_input(
                "a partition needs at least one subpartition",
            ));
        }
        if m.exclude_workers.len() > MAX_EXCLUDED {
            return Err(TierError::bad_input(format!(
                "exclude_workers has {} ids, more than {MAX_EXCLUDED}",
                m.exclude_workers.len()
            )));
        }
        let exclude = m
            .exclude_workers
            .into_iter()
            .map(super::worker_id)
            .collect::<TierResult<Vec<_>>>()?;
        let relocated_from = if m.relocated_from.is_empty() {
            None
        } else {
            Some(super::worker_id(m.relocated_from)?)
        };
        Ok(AllocatePartition {
            key: PartitionKey::try_from(m.key)?,
            exclude,
            relocated_from,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        match registry.allocate(&self.key, &self.exclude, now) {
            Ok(placement) => {
                if let Some(from) = &self.relocated_from {
                    tracing::warn!(job = %self.key.job, partition = %self.key.partition, from = %from,
                        to = %placement.worker_id, "partition relocated: its placed worker was unreachable");
                    registry.record_relocation(self.key.clone(), placement.worker_id.clone());
                }
                Message::PartitionAllocated(pb::PartitionAllocated {
                    request_id,
                    key: Some((&self.key).into()),
                    worker_id: placement.worker_id,
                    worker_address: placement.data_address,
                })
            }
            Err(e) => {
                tracing::warn!(job = %self.key.job, partition = %self.key.partition, error = %e,
                    "cannot place partition");
                e.to_reply(request_id)
            }
        }
    }
}
