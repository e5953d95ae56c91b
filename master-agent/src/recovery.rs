//! What an engine needs to take a job over after its coordinator restarted:
//! the job left on the cluster while the old coordinator stops
//! ([`MasterAgent::detach_job`]), the partitions it had placed handed to the
//! new agent ([`MasterAgent::restore_partitions`]), and what each finished
//! partition holds per subpartition ([`MasterAgent::partition_metrics`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use terrace_rpc::Peer;
use terrace_rpc::clock;
use terrace_tier_api::protocol::{PartitionMetrics, WorkerAt};
use terrace_tier_api::{
    ErrorKind, JobId, PartitionId, PartitionKey, TierError, TierResult, WorkerId,
};

use crate::agent::{MasterAgent, Shared};

/// Most workers one partition's chain of parts is followed over.
const MAX_PARTS: usize = 256;
/// Partitions asked about at once.
const CONCURRENT_QUERIES: usize = 16;

impl MasterAgent {
    /// The token of a registered job (hex; empty when the cluster has no
    /// secret): what an engine hands to the processes that place, write and
    /// read the job's partitions without the cluster secret.
    pub fn job_token(&self, job: &JobId) -> TierResult<String> {
        self.shared.check_open()?;
        self.shared
            .placements()
            .token(job)
            .ok_or_else(|| TierError::bad_input(format!("job {job} is not registered")))
    }

    /// Stops tracking `job` (its lease is no longer renewed, lost workers are
    /// no longer reported for it) without dropping its data: a coordinator
    /// that lost its leadership leaves the job to the next one, which
    /// registers it again within the masters' `job_lease`. A job nobody
    /// registers again is dropped when its lease runs out.
    pub fn detach_job(&self, job: &JobId) -> TierResult<()> {
        self.shared.check_open()?;
        let partitions = self.shared.placements().unregister(job);
        tracing::info!(job = %job, partitions = partitions.unwrap_or(0),
            "job detached: its data stays until it is registered again or its lease runs out");
        Ok(())
    }

    /// Tracks `partitions` of the registered `job`, placed by an earlier
    /// agent on the workers given (by id): their loss is reported as for
    /// partitions this agent placed.
    pub fn restore_partitions(
        &self,
        job: &JobId,
        partitions: Vec<(PartitionId, String)>,
    ) -> TierResult<()> {
        self.shared.check_open()?;
        let now = clock::now();
        let mut placements = self.shared.placements();
        for (partition, worker_id) in partitions {
            placements.add(job, partition, worker_id, now)?;
        }
        Ok(())
    }

    /// Stored bytes per subpartition of each of `partitions` of `job` that is
    /// finished: found on the cluster with every part of it sealed. Only
    /// partitions this agent placed or was given by
    /// [`MasterAgent::restore_partitions`] can be found. Those not found,
    /// unsealed, or not answered within `timeout` are left out (an engine
    /// runs their producers again).
    pub fn partition_metrics(
        &self,
        job: &JobId,
        partitions: &[PartitionId],
        timeout: Duration,
    ) -> TierResult<BTreeMap<PartitionId, Vec<u64>>> {
        self.shared.check_open()?;
        let shared = Arc::clone(&self.shared);
        let keys: Vec<PartitionKey> = partitions
            .iter()
            .map(|partition| PartitionKey {
                job: job.clone(),
                partition: partition.clone(),
            })
            .collect();
        // Where each partition's first part is: on the worker it was placed
        // on (wherever that worker listens now), unless it was relocated.
        let placed: Vec<Option<String>> = {
            let placements = self.shared.placements();
            partitions
                .iter()
                .map(|p| placements.worker_of(job, p))
                .collect()
        };
        let found = crate::agent::block_on(async move {
            let deadline = clock::now() + timeout;
            let addresses: std::collections::HashMap<String, String> =
                clock::timeout_at(deadline, shared.list_workers())
                    .await
                    .map_err(|_| {
                        TierError::unavailable(format!("no worker list within {timeout:?}"))
                    })??
                    .workers
                    .into_iter()
                    .map(|w| (w.worker.id.into_string(), w.worker.address))
                    .collect();
            let addresses = Arc::new(addresses);
            let mut out = BTreeMap::new();
            let mut queries = tokio::task::JoinSet::new();
            let mut keys = keys.into_iter().zip(placed);
            loop {
                while queries.len() < CONCURRENT_QUERIES {
                    let Some((key, placed_on)) = keys.next() else {
                        break;
                    };
                    let shared = Arc::clone(&shared);
                    let placed_at = placed_on.and_then(|id| {
                        let address = addresses.get(&id)?;
                        Some(WorkerAt::new(WorkerId::new(id).ok()?, address))
                    });
                    let known = Arc::clone(&addresses);
                    queries.spawn(async move {
                        let metrics = clock::timeout_at(
                            deadline,
                            finished_bytes(&shared, &key, placed_at, &known),
                        )
                        .await;
                        (key, metrics)
                    });
                }
                let Some(joined) = queries.join_next().await else {
                    break;
                };
                let (key, metrics) = joined
                    .map_err(|e| TierError::with_source(ErrorKind::Internal, "metrics task", e))?;
                match metrics {
                    Ok(Ok(Some(bytes))) => {
                        out.insert(key.partition, bytes);
                    }
                    Ok(Ok(None)) => {
                        tracing::info!(partition = %key, "partition not finished on the cluster")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(partition = %key, error = %e, "cannot get partition metrics")
                    }
                    Err(_) => {
                        tracing::warn!(partition = %key, "no partition metrics within {timeout:?}")
                    }
                }
            }
            Ok::<_, TierError>(out)
        })?;
        Ok(found)
    }
}

/// The stored bytes per subpartition of a partition whose every part is
/// sealed, summed over its parts; `None` when it is missing or unfinished.
/// Its first part is where the masters say it was relocated, else at
/// `placed_at`. A later part is followed only to a worker the masters list
/// (`known`: id to address) at the address a part names: the agent presents
/// the cluster secret there, and a part's forward pointer came from a
/// producer, which holds only the job's token.
async fn finished_bytes(
    shared: &Shared,
    key: &PartitionKey,
    placed_at: Option<WorkerAt>,
    known: &std::collections::HashMap<String, String>,
) -> TierResult<Option<Vec<u64>>> {
    let Some(mut worker) = shared.locate(key).await.or(placed_at) else {
        return Ok(None);
    };
    let mut total: Option<Vec<u64>> = None;
    for _ in 0..MAX_PARTS {
        let reply = shared
            .workers
            .call(
                &Peer::worker(&worker),
                PartitionMetrics { key: key.clone() },
            )
            .await;
        let part = match reply {
            Ok(part) => part,
            Err(e) if e.kind() == terrace_tier_api::ErrorKind::PartitionNotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !part.sealed {
            return Ok(None);
        }
        match &mut total {
            None => total = Some(part.subpartition_bytes),
            Some(sum) => {
                if sum.len() != part.subpartition_bytes.len() {
                    return Err(TierError::corruption(format!(
                        "the parts of {key} disagree on its subpartitions ({} and {})",
                        sum.len(),
                        part.subpartition_bytes.len()
                    )));
                }
                for (s, b) in sum.iter_mut().zip(part.subpartition_bytes) {
                    *s = s.saturating_add(b);
                }
            }
        }
        let Some(next) = part.next else {
            return Ok(total);
        };
        if known.get(next.id.as_str()) != Some(&next.address) {
            return Err(TierError::permission_denied(format!(
                "{worker} says the next part of {key} is on worker {:?} at {:?}, which the masters do not list there: not followed",
                next.id.as_str(),
                next.address
            )));
        }
        worker = next;
    }
    Err(TierError::internal(format!(
        "{key} is split over more than {MAX_PARTS} workers"
    )))
}
