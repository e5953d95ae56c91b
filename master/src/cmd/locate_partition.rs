//! `LocatePartition` → `PartitionLocated`: where a partition lives that was
//! relocated from its descriptor's worker (which was unreachable before the
//! producer pushed anything). Learnt from the producer's allocation and from
//! the new worker's heartbeats, so every master knows within a heartbeat.

use std::time::Instant;

use terrace_tier_api::protocol::{LocatePartition, PartitionLocated};

use crate::registry::Registry;

pub(crate) fn apply(r: LocatePartition, registry: &mut Registry, now: Instant) -> PartitionLocated {
    PartitionLocated {
        worker: registry
            .locate(&r.key, now)
            .map(|p| super::worker_at(p.worker_id, p.data_address)),
        restarting: r
            .worker
            .as_ref()
            .is_some_and(|w| registry.is_restarting(w.as_str(), now)),
        recovering: r
            .worker
            .as_ref()
            .is_some_and(|w| registry.is_recovering(w.as_str())),
        adopted_by: r.worker.as_ref().and_then(|w| {
            registry
                .locate_moved(&r.key, w.as_str(), now)
                .map(|p| super::worker_at(p.worker_id, p.data_address))
        }),
    }
}
