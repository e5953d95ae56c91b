//! `UnregisterJob` → `Ack`: the job is remembered as released and listed in
//! heartbeat replies, so every worker drops its data.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::{JobId, TierResult};

use crate::registry::Registry;

#[derive(Debug)]
pub(crate) struct UnregisterJob {
    job: JobId,
}

impl UnregisterJob {
    pub(crate) fn parse(m: pb::UnregisterJob) -> TierResult<Self> {
        Ok(UnregisterJob {
            job: super::job_id(m.job_id)?,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        registry.unregister_job(self.job, now);
        Message::ack(request_id)
    }
}
