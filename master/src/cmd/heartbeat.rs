//! `WorkerHeartbeat` → `HeartbeatReply`: a worker's liveness and load; the
//! reply lists the jobs it must drop. A heartbeat from an unknown worker
//! registers it, which is how a restarted master rebuilds its worker list.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::TierResult;

use crate::registry::{Registry, WorkerLoad};

#[derive(Debug)]
pub(crate) struct Heartbeat {
    worker_id: String,
    data_address: String,
    load: WorkerLoad,
}

impl Heartbeat {
    pub(crate) fn parse(m: pb::WorkerHeartbeat) -> TierResult<Self> {
        Ok(Heartbeat {
            worker_id: super::worker_id(m.worker_id)?,
            data_address: super::data_address(m.data_address)?,
            load: super::worker_load(m.load)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        tracing::trace!(worker = %self.worker_id, stored_bytes = self.load.stored_bytes, "heartbeat");
        let released = match registry.heartbeat(self.worker_id, self.data_address, self.load, now) {
            Ok(released) => released,
            Err(e) => return Message::error(request_id, e.code(), e.message()),
        };
        Message::HeartbeatReply(pb::HeartbeatReply {
            request_id,
            released_jobs: released
                .into_iter()
                .map(|job| job.as_bytes().clone())
                .collect(),
        })
    }
}
