//! `WorkerUnreachable` → `Ack`: a producer (or any agent) could not reach a
//! worker; the master stops placing on it until it heartbeats again, instead
//! of waiting for `worker_timeout`.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_tier_api::TierResult;

use crate::registry::Registry;

/// Longest error text taken into the master's log.
const MAX_ERROR_BYTES: usize = 1024;

#[derive(Debug)]
pub(crate) struct WorkerUnreachable {
    worker_id: String,
    error: String,
}

impl WorkerUnreachable {
    pub(crate) fn parse(m: pb::WorkerUnreachable) -> TierResult<Self> {
        let mut error = m.error;
        if error.len() > MAX_ERROR_BYTES {
            let mut end = MAX_ERROR_BYTES;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        Ok(WorkerUnreachable {
            worker_id: super::worker_id(m.worker_id)?,
            error,
        })
    }

    pub(crate) fn apply(self, request_id: u64, registry: &mut Registry, now: Instant) -> Message {
        if registry.report_unreachable(&self.worker_id, now) {
            tracing::warn!(worker = %self.worker_id, error = %self.error,
                "worker reported unreachable; no placements on it until it heartbeats again");
        }
        Message::ack(request_id)
    }
}
