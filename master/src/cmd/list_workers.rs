//! `ListWorkers` → `WorkerList`: live workers with their load and heartbeat
//! age, and the registered jobs.

use std::time::Instant;

use terrace_tier_api::protocol::{ListWorkers, WorkerInfo, WorkerList};

use crate::registry::Registry;

pub(crate) fn apply(_: ListWorkers, registry: &mut Registry, now: Instant) -> WorkerList {
    let workers = registry
        .live_workers(now)
        .into_iter()
        .map(|w| WorkerInfo {
            worker: super::worker_at(w.id, w.data_address),
            load: w.load,
            since_heartbeat: w.since_heartbeat,
        })
        .collect();
    WorkerList {
        workers,
        jobs: registry.jobs(),
        settled: registry.settled(now),
    }
}
