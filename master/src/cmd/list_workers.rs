//! `ListWorkers` → `WorkerList`: live workers with their load and heartbeat
//! age, and the registered jobs.

use std::time::Instant;

use terrace_proto::{Message, pb};

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct ListWorkers;

impl ListWorkers {
    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        let workers = registry
            .live_workers(now)
            .into_iter()
            .map(|w| pb::WorkerInfo {
                worker_id: w.id,
                data_address: w.data_address,
                load: Some(w.load),
                millis_since_heartbeat: u64::try_from(w.since_heartbeat.as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        Message::WorkerList(pb::WorkerList {
            request_id,
            settled: registry.settled(now),
            workers,
            jobs: registry
                .jobs()
                .into_iter()
                .map(|job| job.as_bytes().clone())
                .collect(),
        })
    }
}
