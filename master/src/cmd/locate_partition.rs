//! `LocatePartition` → `PartitionLocated`: where a partition lives that was
//! relocated from its descriptor's worker (which was unreachable before the
//! producer pushed anything). Learnt from the producer's allocation and from
//! the new worker's heartbeats, so every master knows within a heartbeat.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct LocatePartition {
    pub(crate) key: PartitionKey,
}

impl LocatePartition {
    pub(crate) fn parse(m: pb::LocatePartition) -> TierResult<Self> {
        Ok(LocatePartition {
            key: PartitionKey::try_from(m.key)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        let (worker_id, worker_address) = registry
            .locate(&self.key, now)
            .map(|p| (p.worker_id, p.data_address))
            .unwrap_or_default();
        Message::PartitionLocated(pb::PartitionLocated {
            request_id,
            worker_id,
            worker_address,
        })
    }
}
