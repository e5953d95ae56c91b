//! `RegisterWorker` → `Ack`: a worker announces itself (counts as a heartbeat).

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::TierResult;

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct RegisterWorker {
    worker_id: String,
    data_address: String,
}

impl RegisterWorker {
    pub(crate) fn parse(m: pb::RegisterWorker) -> TierResult<Self> {
        Ok(RegisterWorker {
            worker_id: super::worker_id(m.worker_id)?,
            data_address: super::data_address(m.data_address)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        match registry.register_worker(self.worker_id, self.data_address, now) {
            Ok(_) => Message::ack(request_id),
            Err(e) => e.to_reply(request_id),
        }
    }
}
