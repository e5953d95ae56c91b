//! `DropJob`: delete every partition of a job in every tier.

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Ack, DropJob};

use crate::context::Connection;

pub(crate) async fn apply(request: DropJob, conn: &Connection) -> TierResult<Ack> {
    let job = request.job;
    let count = conn.shared.store.drop_job(&job).await?;
    tracing::info!(job = %job, partitions = count, "job dropped");
    Ok(Ack)
}
