//! Why the master refuses a registration or a placement. Each becomes a
//! [`TierError`] whose kind says what the caller does (a master at its limit
//! is `Unavailable`: ask another; no worker can take a partition is
//! `NoWorkers`; a released job is `BadInput`), with the variant as the source.

use terrace_tier_api::{ErrorKind, JobId, TierError};

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("this master knows {known} workers, its limit (limits.max_workers)")]
    WorkerLimit { known: usize },
    #[error("this master holds {jobs} jobs, its limit (limits.max_jobs)")]
    JobLimit { jobs: usize },
    #[error("job {job} is unregistered; it gets no new partitions")]
    JobReleased { job: JobId },
    /// No live worker may take the partition: `reasons` counts the live
    /// workers by why each was passed over.
    #[error("{}", no_worker_text(*.live, .reasons))]
    NoWorker {
        live: usize,
        reasons: Vec<(&'static str, usize)>,
    },
}

fn no_worker_text(live: usize, reasons: &[(&'static str, usize)]) -> String {
    if live == 0 {
        return "no live worker".to_string();
    }
    let counted: Vec<String> = reasons
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    format!(
        "no live worker can take a partition ({live} live: {})",
        counted.join(", ")
    )
}

impl PlacementError {
    /// The `reason` label of a refused placement
    /// (`terrace_master_placements_refused_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            PlacementError::NoWorker { .. } => "no_workers",
            PlacementError::JobLimit { .. } => "job_limit",
            PlacementError::JobReleased { .. } => "job_released",
            PlacementError::WorkerLimit { .. } => "worker_limit",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            PlacementError::WorkerLimit { .. } | PlacementError::JobLimit { .. } => {
                ErrorKind::Unavailable
            }
            PlacementError::JobReleased { .. } => ErrorKind::BadInput,
            PlacementError::NoWorker { .. } => ErrorKind::NoWorkers,
        }
    }
}

impl From<PlacementError> for TierError {
    fn from(e: PlacementError) -> Self {
        TierError::from_cause(e.kind(), e)
    }
}

/// The placement error under `e`, if it is one (for tests).
#[cfg(test)]
pub(crate) fn placement(e: &TierError) -> Option<&PlacementError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<PlacementError>())
}
