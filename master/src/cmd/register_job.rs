//! `RegisterJob` → `JobRegistered` (with the job's token).

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_rpc::ClusterSecret;
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

    pub(crate) fn apply(
        self,
        request_id: u64,
        registry: &mut Registry,
        now: Instant,
        secret: Option<&ClusterSecret>,
    ) -> Message {
        let job_token = secret.map_or_else(Vec::new, |secret| {
            secret.job_token(self.job.as_bytes()).as_bytes().to_vec()
        });
        match registry.register_job(self.job, now) {
            Ok(()) => Message::JobRegistered(pb::JobRegistered {
                request_id,
                job_token: job_token.into(),
                job_lease_ms: u64::try_from(registry.job_lease().as_millis()).unwrap_or(u64::MAX),
            }),
            Err(e) => e.to_reply(request_id),
        }
    }
}
