//! The agent's bookkeeping: registered jobs with their handlers, and where
//! each of their partitions was placed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use terrace_tier_api::{JobId, PartitionId, TierError, TierResult, TierShuffleHandler};

struct Placed {
    worker_id: String,
    placed_at: Instant,
}

struct Job {
    handler: Arc<dyn TierShuffleHandler>,
    /// Hex of the job's token from the master (empty without a cluster secret).
    token: String,
    partitions: HashMap<PartitionId, Placed>,
}

/// Partitions of one job that were on a lost worker.
pub(crate) struct LostPartitions {
    pub job: JobId,
    pub worker_id: String,
    pub handler: Arc<dyn TierShuffleHandler>,
    /// In id order.
    pub partitions: Vec<PartitionId>,
    /// The worker held later parts of them (of split chains), not the
    /// first part the agent placed.
    pub later_parts: bool,
}

#[derive(Default)]
pub(crate) struct Placements {
    jobs: HashMap<JobId, Job>,
}

impl Placements {
    /// Registers a job (replacing the handler of a job registered before).
    pub(crate) fn register(
        &mut self,
        job: JobId,
        handler: Arc<dyn TierShuffleHandler>,
        token: String,
    ) {
        match self.jobs.get_mut(&job) {
            Some(known) => {
                known.handler = handler;
                known.token = token;
            }
            None => {
                self.jobs.insert(
                    job,
                    Job {
                        handler,
                        token,
                        partitions: HashMap::new(),
                    },
                );
            }
        }
    }

    /// Forgets a job and its partitions; returns how many partitions it had.
    pub(crate) fn unregister(&mut self, job: &JobId) -> Option<usize> {
        self.jobs.remove(job).map(|j| j.partitions.len())
    }

    /// The token of a registered job (hex, empty without a secret), or
    /// `None` when the job is not registered.
    pub(crate) fn token(&self, job: &JobId) -> Option<String> {
        self.jobs.get(job).map(|j| j.token.clone())
    }

    pub(crate) fn jobs(&self) -> Vec<JobId> {
        self.jobs.keys().cloned().collect()
    }

    pub(crate) fn has_partitions(&self) -> bool {
        self.jobs.values().any(|j| !j.partitions.is_empty())
    }

    /// The worker `partition` of `job` was placed on, if this agent knows it.
    pub(crate) fn worker_of(&self, job: &JobId, partition: &PartitionId) -> Option<String> {
        let placed = self.jobs.get(job)?.partitions.get(partition)?;
        Some(placed.worker_id.clone())
    }

    /// Records that `partition` of `job` was placed on `worker_id` at `at`.
    pub(crate) fn add(
        &mut self,
        job: &JobId,
        partition: PartitionId,
        worker_id: String,
        at: Instant,
    ) -> TierResult<()> {
        let known = self
            .jobs
            .get_mut(job)
            .ok_or_else(|| TierError::bad_input(format!("job {job} is not registered")))?;
        known.partitions.insert(
            partition,
            Placed {
                worker_id,
                placed_at: at,
            },
        );
        Ok(())
    }

    /// Forgets a partition; true if it was known.
    pub(crate) fn remove(&mut self, job: &JobId, partition: &PartitionId) -> bool {
        self.jobs
            .get_mut(job)
            .is_some_and(|j| j.partitions.remove(partition).is_some())
    }

    /// Removes and returns those of `partitions` of `job` still tracked (a
    /// later part of each was on the lost `worker_id`); `None` when none is.
    pub(crate) fn take(
        &mut self,
        job: &JobId,
        worker_id: &str,
        partitions: &[PartitionId],
    ) -> Option<LostPartitions> {
        let known = self.jobs.get_mut(job)?;
        let mut taken: Vec<PartitionId> = partitions
            .iter()
            .filter(|p| known.partitions.remove(*p).is_some())
            .cloned()
            .collect();
        if taken.is_empty() {
            return None;
        }
        taken.sort();
        Some(LostPartitions {
            job: job.clone(),
            worker_id: worker_id.to_string(),
            handler: known.handler.clone(),
            partitions: taken,
            later_parts: true,
        })
    }

    /// Removes and returns the partitions placed before `listed_at` on
    /// workers missing from `live` (a worker list asked for at `listed_at`),
    /// one entry per job and worker. Later placements are left for the next
    /// list, which is sure to have been made after them.
    pub(crate) fn take_lost(
        &mut self,
        live: &HashSet<String>,
        listed_at: Instant,
    ) -> Vec<LostPartitions> {
        let mut lost = Vec::new();
        for (job, known) in &mut self.jobs {
            let mut by_worker: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
            known.partitions.retain(|partition, placed| {
                let is_lost = placed.placed_at < listed_at && !live.contains(&placed.worker_id);
                if is_lost {
                    by_worker
                        .entry(placed.worker_id.clone())
                        .or_default()
                        .push(partition.clone());
                }
                !is_lost
            });
            for (worker_id, mut partitions) in by_worker {
                partitions.sort();
                lost.push(LostPartitions {
                    job: job.clone(),
                    worker_id,
                    handler: known.handler.clone(),
                    partitions,
                    later_parts: false,
                });
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use terrace_rpc::clock;

    use super::*;

    struct Ignore;

    impl TierShuffleHandler for Ignore {
        fn on_release_partitions(&self, _partitions: Vec<PartitionId>) {}
        fn on_fatal_error(&self, _error: TierError) {}
    }

    fn pid(n: u8) -> PartitionId {
        PartitionId::new(vec![n]).expect("valid partition id")
    }

    #[test]
    fn lost_partitions_are_taken_once_per_job_and_worker() {
        let t0 = clock::now();
        let (j1, j2) = (
            JobId::new(b"j1".to_vec()).expect("id"),
            JobId::new(b"j2".to_vec()).expect("id"),
        );
        let mut p = Placements::default();
        p.register(j1.clone(), Arc::new(Ignore), String::new());
        p.register(j2.clone(), Arc::new(Ignore), String::new());
        for (job, partition, worker) in [
            (&j1, 3, "w2"),
            (&j1, 1, "w2"),
            (&j1, 2, "w1"),
            (&j2, 9, "w2"),
        ] {
            p.add(job, pid(partition), worker.into(), t0)
                .expect("registered job");
        }
        // Placed after the list was asked for: not judged by that list.
        p.add(&j1, pid(4), "w2".into(), t0 + Duration::from_millis(5))
            .expect("registered job");
        let live: HashSet<String> = ["w1".to_string()].into();

        let mut lost: Vec<(JobId, String, Vec<PartitionId>)> = p
            .take_lost(&live, t0 + Duration::from_millis(1))
            .into_iter()
            .map(|l| (l.job, l.worker_id, l.partitions))
            .collect();
        lost.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            lost,
            [
                (j1.clone(), "w2".to_string(), vec![pid(1), pid(3)]),
                (j2.clone(), "w2".to_string(), vec![pid(9)]),
            ]
        );
        assert!(
            p.take_lost(&live, t0 + Duration::from_millis(1)).is_empty(),
            "reported once"
        );
        let later: Vec<Vec<PartitionId>> = p
            .take_lost(&live, t0 + Duration::from_millis(6))
            .into_iter()
            .map(|l| l.partitions)
            .collect();
        assert_eq!(later, [vec![pid(4)]]);
        assert!(p.remove(&j1, &pid(2)));
        assert!(!p.remove(&j1, &pid(2)));
        assert!(!p.has_partitions());
        assert_eq!(p.unregister(&j1), Some(0));
        assert!(p.add(&j1, pid(5), "w1".into(), t0).is_err());
    }
}
