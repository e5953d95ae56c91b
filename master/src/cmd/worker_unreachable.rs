//! `WorkerUnreachable` → `Ack`: a producer or consumer could not reach a
//! worker. A report is evidence, not a verdict: the reporting job's own
//! placements skip the worker until it heartbeats again, and the master
//! probes the worker itself; only a worker that fails the master's probe is
//! kept from everyone's placements (see `crate::probe`). So no client can
//! stop placement for other jobs by reporting every worker.

use std::time::Instant;

use terrace_rpc::Identity;
use terrace_tier_api::JobId;
use terrace_tier_api::protocol::{Ack, WorkerUnreachable};

use crate::registry::{Probe, Registry, Report};

/// A probe of a worker the master should make: now, or later
/// ([`Probe::Now`] or [`Probe::After`]; never [`Probe::Covered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeDue {
    pub(crate) worker_id: String,
    pub(crate) when: Probe,
}

/// The report as made over a connection that proved `identity`: a job's
/// token reports for its own job, whatever the message names.
pub(crate) fn reported_over(mut r: WorkerUnreachable, identity: &Identity) -> WorkerUnreachable {
    if let Identity::Job(job) = identity {
        r.job = JobId::new(job.clone()).ok();
    }
    r
}

pub(crate) fn apply(
    r: WorkerUnreachable,
    registry: &mut Registry,
    now: Instant,
) -> (Ack, Option<ProbeDue>) {
    let probe = match registry.report_unreachable(r.worker.as_str(), r.job.as_ref(), now) {
        Report::UnknownWorker => None,
        Report::Recorded { probe } => {
            tracing::info!(worker = %r.worker, job = ?r.job.as_ref().map(ToString::to_string),
                error = %r.error, probe = ?probe,
                "worker reported unreachable; the reporting job places elsewhere until it heartbeats again");
            (probe != Probe::Covered).then(|| ProbeDue {
                worker_id: r.worker.into_string(),
                when: probe,
            })
        }
    };
    (Ack, probe)
}
