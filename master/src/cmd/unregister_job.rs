//! `UnregisterJob` → `Ack`: the job is remembered as released and listed in
//! heartbeat replies, so every worker drops its data.

use std::time::Instant;

use terrace_tier_api::protocol::{Ack, UnregisterJob};

use crate::registry::Registry;

pub(crate) fn apply(r: UnregisterJob, registry: &mut Registry, now: Instant) -> Ack {
    registry.unregister_job(r.job, now);
    Ack
}
