//! `RegisterJob` → `Ack`.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::{JobId, TierResult};

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct RegisterJob {
    job: JobId,
}

impl RegisterJob {
    pub(crate) fn parse(m: pb::RegisterJob) -> TierResult<Self> {
        Ok(RegisterJob {
            job: super::job_id(m.job_id)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        match registry.register_job(self.job, now) {
            Ok(()) => Message::ack(request_id),
            Err(e) => Message::error(request_id, e.code(), e.message()),
        }
    }
}
