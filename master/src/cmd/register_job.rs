//! `RegisterJob` → `JobRegistered` (with the job's token).

use std::time::Instant;

use bytes::Bytes;
use terrace_rpc::ClusterSecret;
use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{JobRegistered, RegisterJob};

use crate::registry::Registry;

pub(crate) fn apply(
    r: RegisterJob,
    registry: &mut Registry,
    now: Instant,
    secret: Option<&ClusterSecret>,
) -> TierResult<JobRegistered> {
    let token =
        secret.map(|secret| Bytes::copy_from_slice(secret.job_token(r.job.as_bytes()).as_bytes()));
    registry.register_job(r.job, now)?;
    Ok(JobRegistered {
        token,
        job_lease: Some(registry.job_lease()),
    })
}
