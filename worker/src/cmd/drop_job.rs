//! `DropJob`: delete every partition of a job in every tier.

use terrace_proto::{Message, pb};
use terrace_tier_api::{JobId, TierResult};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct DropJob {
    pub job: JobId,
}

impl DropJob {
    pub(crate) fn parse(m: pb::DropJob) -> TierResult<Self> {
        Ok(DropJob {
            job: JobId::new(m.job_id)?,
        })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let job = self.job;
        let count = conn.shared.store.drop_job(&job).await?;
        tracing::info!(job = %job, partitions = count, "job dropped");
        Ok(Message::ack(request_id))
    }
}
