//! `WorkerHeartbeat` → `HeartbeatReply`: a worker's liveness and load; the
//! reply lists the jobs it must drop. A heartbeat from an unknown worker
//! registers it, which is how a restarted master rebuilds its worker list.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::{JobId, PartitionKey, TierError, TierResult};

use crate::registry::{Registry, WorkerLoad};

#[derive(Debug)]
pub(crate) struct Heartbeat {
    worker_id: String,
    data_address: String,
    load: WorkerLoad,
    jobs: Vec<JobId>,
    relocated: Vec<PartitionKey>,
}

/// Most jobs one heartbeat may ask about.
pub(crate) const MAX_HEARTBEAT_JOBS: usize = 4096;

impl Heartbeat {
    pub(crate) fn parse(m: pb::WorkerHeartbeat) -> TierResult<Self> {
        if m.relocated.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} relocated partitions, more than {MAX_HEARTBEAT_JOBS}",
                m.relocated.len()
            )));
        }
        if m.jobs.len() > MAX_HEARTBEAT_JOBS {
            return Err(TierError::bad_input(format!(
                "a heartbeat names {} jobs, more than {MAX_HEARTBEAT_JOBS}",
                m.jobs.len()
            )));
        }
        Ok(Heartbeat {
            worker_id: super::worker_id(m.worker_id)?,
            data_address: super::data_address(m.data_address)?,
            load: super::worker_load(m.load)?,
            jobs: m
                .jobs
                .into_iter()
                .map(JobId::new)
                .collect::<TierResult<_>>()?,
            relocated: m
                .relocated
                .into_iter()
                .map(PartitionKey::try_from)
                .collect::<TierResult<_>>()?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        tracing::trace!(worker = %self.worker_id, stored_bytes = self.load.stored_bytes, "heartbeat");
        let worker = self.worker_id.clone();
        let released = match registry.heartbeat(self.worker_id, self.data_address, self.load, now) {
            Ok(released) => released,
            Err(e) => return e.to_reply(request_id),
        };
        for key in self.relocated {
            registry.record_relocation(key, worker.clone());
        }
        Message::HeartbeatReply(pb::HeartbeatReply {
            request_id,
            released_jobs: released
                .into_iter()
                .map(|job| job.as_bytes().clone())
                .collect(),
            unknown_jobs: registry
                .unknown_jobs(&self.jobs)
                .into_iter()
                .map(|job| job.as_bytes().clone())
                .collect(),
            job_lease_ms: registry.job_lease().as_millis() as u64,
            worker_timeout_ms: u64::try_from(registry.worker_timeout().as_millis())
                .unwrap_or(u64::MAX),
        })
    }
}
