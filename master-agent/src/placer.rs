//! [`JobPlacer`]: places partitions of one job with the job's token only.
//!
//! An engine whose tasks create their own partitions (Spark: each map task
//! attempt writes one partition, and no coordinator knows the attempts in
//! advance) places them from the task's process. That process holds the
//! job's token, never the cluster secret: `AllocatePartition` is a job-level
//! request, so the token is all a master asks for.

use std::sync::Arc;

use terrace_rpc::{ClientOptions, ExpectedServer, ServerIdentity, io_runtime};
use terrace_tier_api::protocol::AllocatePartition;
use terrace_tier_api::{
    AgentConfig, JobId, PartitionId, PartitionKey, ShuffleDescriptor, TierError, TierResult,
};

use crate::masters::Masters;

/// Places the partitions of one job through the masters, presenting the
/// job's token. Its connection to a master is opened on first use and
/// shared by every placement; it fails over to the next master like the
/// master agent.
pub struct JobPlacer {
    masters: Masters,
    job: JobId,
    token: String,
}

impl std::fmt::Debug for JobPlacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPlacer")
            .field("job", &self.job)
            .field("masters", &self.masters.addresses())
            .finish_non_exhaustive()
    }
}

impl JobPlacer {
    /// A placer for `job`, whose token (hex, empty when the cluster has no
    /// secret) the masters gave its coordinator.
    pub fn new(config: &AgentConfig, job: JobId, token: String) -> TierResult<Self> {
        config.validate()?;
        if config.master_addresses.is_empty() {
            return Err(TierError::bad_input("master_addresses is empty"));
        }
        // Only the descriptor's job and token matter to the credential.
        let credential_of = ShuffleDescriptor {
            job: job.to_hex(),
            partition: "00".into(),
            worker_id: String::new(),
            worker_address: String::new(),
            token: token.clone(),
        };
        let options = ClientOptions::for_agent(config, format!("placer {job}"))?
            .with_job_token(&credential_of)?
            .expecting(ExpectedServer::Is(ServerIdentity::Master));
        let masters = Masters::new(
            config.master_addresses.clone(),
            options,
            Arc::new(Vec::new),
            config.job_renew_interval,
        );
        Ok(JobPlacer {
            masters,
            job,
            token,
        })
    }

    /// Places `partition` of the job on a worker and returns its descriptor
    /// (carrying the job's token). Blocks the calling thread: never call it
    /// from a tokio runtime's worker thread.
    pub fn place(
        &self,
        partition: &PartitionId,
        num_subpartitions: u32,
    ) -> TierResult<ShuffleDescriptor> {
        if num_subpartitions == 0 {
            return Err(TierError::bad_input(
                "a partition needs at least one subpartition",
            ));
        }
        let key = PartitionKey {
            job: self.job.clone(),
            partition: partition.clone(),
        };
        let allocated = io_runtime()
            .block_on(self.masters.request(AllocatePartition {
                key: key.clone(),
                num_subpartitions,
                exclude: Vec::new(),
                relocated_from: None,
            }))
            .map_err(|e| e.context(format!("place {key}")))?;
        if allocated.key != key {
            return Err(TierError::internal(format!(
                "place {key}: the master placed {} instead",
                allocated.key
            )));
        }
        let worker = allocated.worker;
        Ok(
            ShuffleDescriptor::new(&key, worker.id.into_string(), worker.address)
                .with_token(self.token.clone()),
        )
    }

    /// Closes the connection to the masters.
    pub fn close(&self) {
        self.masters.close();
    }
}
