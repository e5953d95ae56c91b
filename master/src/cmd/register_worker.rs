//! `RegisterWorker` → `Ack`: a worker announces itself (counts as a heartbeat).

use std::time::Instant;

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Ack, RegisterWorker};

use crate::registry::Registry;

pub(crate) fn apply(r: RegisterWorker, registry: &mut Registry, now: Instant) -> TierResult<Ack> {
    registry
        .register_worker(r.worker.into_string(), r.data_address, now)
        .map(|_| Ack)
}
