//! `WorkerHeartbeat` → `HeartbeatReply`: a worker's liveness and load; the
//! reply lists the jobs it must drop. A heartbeat from an unknown worker
//! registers it, which is how a restarted master rebuilds its worker list.

use std::time::Instant;

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{HeartbeatReply, WorkerHeartbeat};

use crate::registry::Registry;

pub(crate) fn apply(
    r: WorkerHeartbeat,
    registry: &mut Registry,
    now: Instant,
) -> TierResult<HeartbeatReply> {
    tracing::trace!(worker = %r.worker, stored_bytes = r.load.stored_bytes, "heartbeat");
    let worker = r.worker.into_string();
    let (released_jobs, declared_lost) =
        registry.heartbeat(worker.clone(), r.data_address, r.load, now)?;
    for key in r.relocated {
        registry.record_relocation(key, worker.clone());
    }
    for key in &r.parts {
        registry.record_part(key, &worker);
    }
    for (key, from) in &r.adopted {
        registry.record_moved(key, from.as_str(), &worker);
    }
    Ok(HeartbeatReply {
        released_jobs,
        unknown_jobs: registry
            .unknown_jobs(&r.jobs)
            .into_iter()
            .cloned()
            .collect(),
        job_lease: Some(registry.job_lease()),
        worker_timeout: Some(registry.worker_timeout()),
        declared_lost,
    })
}
