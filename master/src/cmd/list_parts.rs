//! `ListParts` → `PartsListed`: the partitions of a job with a later part
//! (of a split chain) on a worker. Learnt from producers' allocations of
//! next parts and from the workers' heartbeats; a master agent asks when
//! the worker is lost, and reports those partitions to the engine.

use terrace_tier_api::protocol::{ListParts, MAX_LISTED_PARTS, PartsListed};

use crate::registry::Registry;

pub(crate) fn apply(r: ListParts, registry: &Registry) -> PartsListed {
    let (partitions, truncated) = registry.parts_on(&r.job, r.worker.as_str(), MAX_LISTED_PARTS);
    if truncated {
        tracing::warn!(job = %r.job, worker = %r.worker, listed = partitions.len(),
            "more partition parts on the worker than one reply lists");
    }
    PartsListed {
        partitions,
        truncated,
    }
}
