//! `WorkerUnreachable` → `Ack`: a producer or consumer could not reach a
//! worker. A report is evidence, not a verdict: the reporting job's own
//! placements skip the worker until it heartbeats again, and the master
//! probes the worker itself; only a worker that fails the master's probe is
//! kept from everyone's placements (see `crate::probe`). So no client can
//! stop placement for other jobs by reporting every worker.

use std::time::Instant;

use terrace_proto::{Message, pb};
use terrace_rpc::Identity;
use terrace_tier_api::{JobId, TierResult};

use crate::registry::{Registry, Report};

/// Longest error text taken into the master's log.
const MAX_ERROR_BYTES: usize = 1024;

#[derive(Debug)]
pub(crate) struct WorkerUnreachable {
    worker_id: String,
    error: String,
    /// The job the report names (replaced by the connection's own job when
    /// it holds a job's token: see [`WorkerUnreachable::reported_over`]).
    job: Option<JobId>,
}

/// A worker the master should probe now: its id and data address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeDue {
    pub(crate) worker_id: String,
    pub(crate) address: String,
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
        let job = if m.job_id.is_empty() {
            None
        } else {
            Some(super::job_id(m.job_id)?)
        };
        Ok(WorkerUnreachable {
            worker_id: super::worker_id(m.worker_id)?,
            error,
            job,
        })
    }

    /// The report as made over a connection that proved `identity`: a job's
    /// token reports for its own job, whatever the message names.
    pub(crate) fn reported_over(mut self, identity: &Identity) -> Self {
        if let Identity::Job(job) = identity {
            self.job = JobId::new(job.clone()).ok();
        }
        self
    }

    pub(crate) fn apply(
        self,
        request_id: u64,
        registry: &mut Registry,
        now: Instant,
    ) -> (Message, Option<ProbeDue>) {
        let probe = match registry.report_unreachable(&self.worker_id, self.job.as_ref(), now) {
            Report::UnknownWorker => None,
            Report::Recorded { probe } => {
                tracing::info!(worker = %self.worker_id, job = ?self.job.as_ref().map(ToString::to_string),
                    error = %self.error, probing = probe.is_some(),
                    "worker reported unreachable; the reporting job places elsewhere until it heartbeats again");
                probe.map(|address| ProbeDue {
                    worker_id: self.worker_id.clone(),
                    address,
                })
            }
        };
        (Message::ack(request_id), probe)
    }
}
